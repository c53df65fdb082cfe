"""The coding rules engine: one finalised procedure in, claim lines and findings out (DOMAIN.md §1-§5, §7, §10).

Entry point: :func:`code_procedure`. Build its input with :func:`service.coding.result.coding_input` from a loaded
report and the linked-images summary. Pure functions: no database, no HTTP, no I/O after the catalog and the rule
tables (``data/rules.yaml``) are loaded once. Every rule has a stable id (:data:`RULES`); every line lists the rules
that produced or shaped it with the facts they read, and every finding names its rule, so an auditor can see why a
line is there or missing. The rule sets live in :mod:`~service.coding.us_cms` (with :mod:`~service.coding.units`
for drugs) and :mod:`~service.coding.uk_nhs`; their docstrings list each rule.

Readings where DOMAIN.md is ambiguous or unverified (§11), all chosen conservatively:

- the guided joint code (and 76942) needs, besides a recorded image, real-time guidance and a description, a ``pre``
  and a ``post`` image (our house standard; ``house_pre_post=False`` applies the bare CPT bar);
- facility-owned ultrasound: 26 on 76942 only; 20604/20606/20611 are billed plain (PC/TC indicator 0, PCTC-3);
- JZ when a single-dose container's waste rounds to no whole billing unit (units module docstring);
- trigger points are 20552 (the report carries no muscle count); PRP is one 0232T per session, no 50;
- the nerve-block codes 64415-64448 are treated as bundling 76942 (§2.2, confidence L);
- local anaesthetics (including the payer-dependent bupivacaine/ropivacaine) are never billed as drug lines;
- J1010 is taken at 1 mg per unit (§4.2, M; one source says 10 mg);
- an off-label product without a disclosed off-label consent is an error finding (DOC-08, §8.4); a Zilretta repeat
  dose needs history this input does not carry and is left to the audit rules;
- uk-nhs: W90.1 is UNVERIFIED (warning), no OPCS-4 code is guessed for soft-tissue sites, diagnoses are not
  converted to WHO ICD-10, and the HNY criteria are read strictly (uk_nhs module docstring).
"""

from __future__ import annotations

from collections.abc import Mapping

from service.coding.catalog import Catalog
from service.coding.result import ClaimLine, CodingInput, CodingResult, Commissioning, OffLabel, Trace
from service.coding.ruletables import RuleTables, default_rule_tables
from service.coding.uk_nhs import code_uk_nhs
from service.coding.us_cms import code_us_cms

RULE_SETS = ("us-cms", "uk-nhs")

#: Every rule id the engine can report, with a one-line summary (DOMAIN.md section or §10 id).
RULES: Mapping[str, str] = {
    "EDU-1": "an educational (teaching) procedure is never coded for billing: no lines, one info finding",
    "DOS-1": "the date of service comes from times.injected_at, else started_at, else scheduled_at",
    "SITE-1": "the site must be in the catalog before any procedure code is chosen",
    "OFFLABEL-1": "HA or Zilretta outside the knee, or PRP anywhere, needs a disclosed off-label consent (§8.4)",
    "US-GUIDED-JOINT": "arthrocentesis with documented, recorded US guidance -> 20604/20606/20611 (§1.3, §10)",
    "US-NOT-RECORDED-DOWNCODE": "US used but not documented/recorded -> 20600/20605/20610, never 76942 (§1.3, §10)",
    "FLUORO-CT-MR": "arthrocentesis under fluoroscopy/CT/MR -> without-US code + 77002/77012/77021 (§1.1, §10)",
    "NO-GUIDANCE-1": "no image guidance -> the without-US or family code alone",
    "SIZE-CLASS-1": "payer-configured size class: the catalog default class is used (§1.2)",
    "NON-JOINT-US": "20526/20550/20551/20552/20612/64450/64455 + 76942 when US guidance is documented (§2.3, §10)",
    "NON-JOINT-US-GAP": "non-joint family with US (or other) guidance not reportable: the family code alone",
    "TRIGGER-1": "no muscle count in the report: trigger points coded 20552 (§2.3)",
    "PRP-1": "PRP is 0232T, one per session, guidance included (§4.2)",
    "0232T-BUNDLE-1": "no 2060x/20550/20551/76942/77002/77012/77021 with 0232T at the same site (§2.2)",
    "76942-BUNDLE-1": "never 76942 with 20600-20611, 0232T or the listed nerve blocks (§2.2)",
    "76942-UNITS-1": "76942: one unit per encounter (§2.1)",
    "PCTC-1": "76942 global (no modifier) with office-owned ultrasound (§3)",
    "PCTC-2": "76942 (and 77002/77012/77021 in a facility) with modifier 26 when facility-owned (§3)",
    "PCTC-3": "never 26/TC on 20604/20606/20611 (§3)",
    "PCTC-POS-1": "equipment ownership must match the place of service (DOC-14)",
    "LAT-1": "RT on a right-sided paired site (§3)",
    "LAT-2": "LT on a left-sided paired site (§3)",
    "LAT-3": "bilateral: one line, modifier 50, 1 unit (Medicare, §3)",
    "DIG-1": "finger modifiers FA, F1-F9 instead of RT/LT (§3)",
    "DIG-2": "toe modifiers TA, T1-T9 instead of RT/LT (§3)",
    "DRUG-CODE-1": "the drug's HCPCS code valid on the date of service (§4.2)",
    "UNITS-1": "drug units = ceil(dose / billing unit), minimum 1; per-dose codes 1 per dose (§4.1, §4.3)",
    "WASTE-1": "JZ: single-dose container, nothing discarded (§3, §10)",
    "WASTE-2": "JW line for the discarded billing units of a single-dose container (§4.1, §10)",
    "WASTE-3": "multi-dose container: neither JW nor JZ (§10)",
    "WASTE-4": "packaged drug: neither JW nor JZ (§10)",
    "LOCAL-1": "no separate line for a local anaesthetic used as such (§4.2)",
    "NDC-1": "NDC (11-digit) on the drug line; warning when missing (§4.1, DOC-06)",
    "ABN-1": "expected Medicare non-coverage with an ABN on file: GA (§3)",
    "ABN-2": "expected Medicare non-coverage without an ABN: GZ (§3)",
    "HA-LCD-1": "knee hyaluronan needs knee OA (M17) and >= 3 months of conservative care (LCD A56157, §4.3)",
    "DX-1": "diagnoses in report order (<= 12), pointers (<= 4) to the diagnoses that support each line (§8.1)",
    "ICD-LAT-1": "ICD-10-CM side agrees with RT/LT/50; unspecified side is an audit flag (§5.1)",
    "UK-OPCS-1": "OPCS-4 W90.3 joint injection / W90.1 joint aspiration (§7.2)",
    "UK-OPCS-2": "no verified OPCS-4 code for the site: code by hand (§7.2)",
    "UK-Y53-1": "Y53.2 approach under ultrasonic control (Y53.4 fluoroscopic) after the main code (§7.2)",
    "UK-SITE-1": "OPCS-4 Z site code where verified (Z84.3 hip) (§7.2)",
    "UK-Z94-1": "OPCS-4 laterality Z94.1 bilateral, Z94.2 right, Z94.3 left (§7.2)",
    "UK-DX-1": "UK diagnoses are WHO ICD-10: the ICD-10-CM codes are not carried over (§5.2 UK note)",
    "HNY-USGI-1": "HNY ICB USGI commissioning criteria (§7.1, DOC-15)",
}


def _off_label(facts: CodingInput, catalog: Catalog, trace: Trace) -> OffLabel:
    if facts.site not in catalog.sites:
        return OffLabel(disclosed=facts.off_label_disclosed)
    reasons = tuple(
        r for i in facts.injectates if i.drug in catalog.drugs and (r := catalog.off_label_reason(i.drug, facts.site))
    )
    if reasons and facts.off_label_disclosed is not True and not facts.educational:
        trace.add(
            "OFFLABEL-1",
            "error",
            f"off-label use without a disclosed off-label consent: {'; '.join(reasons)}",
            ("DOC-08",),
            off_label_disclosed=facts.off_label_disclosed,
            site=facts.site,
            drugs=[i.drug for i in facts.injectates],
        )
    elif reasons:
        trace.add("OFFLABEL-1", "info", f"off-label use, disclosed: {'; '.join(reasons)}", ("DOC-08",))
    return OffLabel(bool(reasons), reasons, facts.off_label_disclosed)


def code_procedure(
    facts: CodingInput,
    catalog: Catalog,
    rule_set: str = "us-cms",
    *,
    tables: RuleTables | None = None,
    house_pre_post: bool = True,
) -> CodingResult:
    """Code one finalised procedure under a rule set.

    Parameters
    ----------
    facts
        From :func:`service.coding.result.coding_input`.
    catalog
        The site/drug/ICD-10-CM catalog (:func:`service.coding.catalog.load_catalog`).
    rule_set
        ``us-cms`` (CPT/HCPCS/ICD-10-CM claim lines) or ``uk-nhs`` (OPCS-4 and the HNY commissioning criteria);
        ``USGI_PAYER_RULES`` (DESIGN.md §3).
    tables
        The rule tables; default the shipped ``data/rules.yaml``.
    house_pre_post
        Require a ``pre`` and a ``post`` image for the guided codes (our standard; CPT needs one recorded image).

    Returns
    -------
    CodingResult
        An educational procedure has no lines and one ``EDU-1`` info finding.
    """
    if rule_set not in RULE_SETS:
        raise ValueError(f"unknown rule set {rule_set!r}: expected one of {', '.join(RULE_SETS)}")
    tables = tables or default_rule_tables()
    trace = Trace()
    if facts.educational:
        trace.add("EDU-1", "info", "educational (teaching) procedure: never coded for billing", educational=True)
        off_label = _off_label(facts, catalog, Trace())  # reported in off_label only: one finding in all
        return CodingResult(rule_set, facts.date_of_service, True, (), (), tuple(trace.findings), off_label)
    if facts.date_of_service is None:
        trace.add("DOS-1", "error", "no procedure time: the date of service is unknown", ("DOC-06",))
    off_label = _off_label(facts, catalog, trace)
    lines: list[ClaimLine]
    diagnoses: tuple[str, ...] = ()
    commissioning: Commissioning | None = None
    if rule_set == "us-cms":
        lines, diagnoses = code_us_cms(facts, catalog, tables, trace, house_pre_post)
    else:
        lines, commissioning = code_uk_nhs(facts, catalog, tables, trace)
    return CodingResult(
        rule_set,
        facts.date_of_service,
        False,
        tuple(lines),
        tuple(diagnoses),
        tuple(trace.findings),
        off_label,
        commissioning,
    )
