"""The ``uk-nhs`` rule set: OPCS-4 codes and the HNY ICB USGI commissioning criteria (DOMAIN.md §7).

Rule ids (ours; DOMAIN.md §10 names none for the UK):

- ``UK-OPCS-1``: a joint site: W90.3 for an injection, W90.1 for an aspiration, both (aspiration first) for an
  aspiration and injection. W90.1 is L/UNVERIFIED in DOMAIN.md §7.2, so its line also raises a warning.
- ``UK-OPCS-2``: bursae, cysts, sheaths, tunnels and nerves have no verified OPCS-4 code (§7.2, §11 item 6): no
  line, a warning to code by hand. Conservative: we do not guess chapter T codes.
- ``UK-Y53-1``: Y53.2 after each main code when the needle was guided in real time under ultrasound (Y53.4 for
  fluoroscopy); not for pre-marking only. Missing images do not remove Y53.2 but raise a DOC-03 warning.
- ``UK-SITE-1``: the Z site code where one is verified (Z84.3 hip); elsewhere none, with one info finding.
- ``UK-Z94-1``: Z94.1 bilateral, Z94.2 right, Z94.3 left, last in each group (pattern main, Y53.2, Z-site, Z94.x).
- ``UK-DX-1``: NHS secondary care codes diagnoses in WHO ICD-10, not ICD-10-CM; the report's codes are not
  converted (clinical coders assign them), so the result's diagnosis list is empty.
- ``HNY-USGI-1``: the HNY ICB policy (§7.1, DOC-15; policy number 142 UNVERIFIED). Steroid injection: one of
  (a) severe trauma, (b) landmarks unidentifiable, (c) no relief after two landmark-guided injections, (d) significant
  adverse effect of a landmark-guided injection, AND at least 3 months of failed conservative care. Aspiration: one of
  (a), (b), (c) a failed landmark-guided aspiration, (d) an abandoned landmark-guided attempt. Conservative
  readings: reason (c) of the steroid pathway also needs ``prior_landmark_attempts`` >= 2 when recorded, the
  aspiration reasons (c)/(d) >= 1; an aspiration and steroid injection must meet both pathways; an injection with no
  corticosteroid (hyaluronan, PRP) is outside this policy (``not_applicable`` with a warning).
"""

from __future__ import annotations

from service.coding.catalog import Catalog
from service.coding.result import ClaimLine, CodingInput, Commissioning, Criterion, Trace, line
from service.coding.ruletables import RuleTables
from service.coding.us_cms import guidance_gaps

_LETTERS = "abcd"
_MIN_ATTEMPTS = {
    "no_relief_after_2_landmark_injections": 2,
    "failed_landmark_aspiration": 1,
    "abandoned_landmark_attempt_adverse_effects": 1,
}


def _opcs_lines(facts: CodingInput, catalog: Catalog, tables: RuleTables, trace: Trace) -> list[ClaimLine]:
    site = catalog.sites.get(facts.site or "")
    if site is None:
        trace.add("SITE-1", "error", f"unknown or missing site {facts.site!r}: no OPCS-4 code", ("DOC-05",))
        return []
    opcs = tables.opcs4
    if site.key not in opcs["joint_sites"]:
        trace.add(
            "UK-OPCS-2",
            "warning",
            f"{site.label}: no verified OPCS-4 code (W90 covers joints only; chapter T soft-tissue codes are "
            "UNVERIFIED): code by hand from the OPCS-4.10 browser",
            site=site.key,
        )
        return []
    mains: list[tuple[str, str]] = []
    if facts.kind in ("aspiration", "aspiration_and_injection"):
        mains.append((opcs["aspiration_joint"]["code"], opcs["aspiration_joint"]["conf"]))
        trace.add("UK-OPCS-1", "warning", f"{mains[-1][0]} (aspiration of joint) is UNVERIFIED (DOMAIN.md §7.2)")
    if facts.kind in ("injection", "aspiration_and_injection"):
        mains.append((opcs["injection_joint"]["code"], opcs["injection_joint"]["conf"]))
    approach: tuple[str, str] | None = None
    if facts.modality == "ultrasound":
        if facts.realtime_needle_guidance is True:
            approach = (opcs["approach"]["ultrasound"], "UK-Y53-1")
        else:
            trace.add("UK-Y53-1", "warning", "no Y53.2: real-time needle guidance not documented", ("DOC-04",))
        gaps = [g for g in guidance_gaps(facts) if "real-time" not in g]
        if gaps:
            trace.add("UK-Y53-1", "warning", f"ultrasound documentation gaps: {'; '.join(gaps)}", ("DOC-03", "DOC-04"))
    elif facts.modality == "fluoroscopy":
        approach = (opcs["approach"]["fluoroscopy"], "UK-Y53-1")
    site_code = opcs["site_codes"].get(site.key)
    if site_code is None:
        trace.add("UK-SITE-1", "info", f"{site.label}: no verified OPCS-4 Z site code; none added", site=site.key)
    side = opcs["laterality"].get(facts.laterality or "") if site.paired else None
    lines: list[ClaimLine] = []
    for code, conf in mains:
        base = {"site": site.key, "kind": facts.kind, "laterality": facts.laterality, "conf": conf}
        lines.append(line("OPCS-4", code, rules=("UK-OPCS-1",), **base))
        if approach:
            lines.append(line("OPCS-4", approach[0], rules=(approach[1],), modality=facts.modality, main=code))
        if site_code:
            lines.append(line("OPCS-4", site_code, rules=("UK-SITE-1",), site=site.key, main=code))
        if side:
            lines.append(line("OPCS-4", side, rules=("UK-Z94-1",), laterality=facts.laterality, main=code))
    return lines


def _pathway_criteria(facts: CodingInput, pathway: str, tables: RuleTables) -> tuple[list[Criterion], bool]:
    spec = tables.hny_pathways[pathway]
    criteria: list[Criterion] = []
    attempts = facts.prior_landmark_attempts
    for letter, reason in zip(_LETTERS, spec.any_of, strict=False):
        given = reason in facts.guidance_reasons
        need = _MIN_ATTEMPTS.get(reason)
        short = given and need is not None and attempts is not None and attempts < need
        description = reason.replace("_", " ") + (f" (recorded landmark attempts {attempts} < {need})" if short else "")
        criteria.append(
            Criterion(
                f"{pathway}.{letter}",
                given and not short,
                description,
                {"reason_given": given, "prior_landmark_attempts": attempts},
            )
        )
    any_met = any(c.met for c in criteria)
    months_ok = True
    if spec.conservative_treatment_min_months is not None:
        months = facts.conservative_treatment_months
        months_ok = months is not None and months >= spec.conservative_treatment_min_months
        criteria.append(
            Criterion(
                f"{pathway}.conservative",
                months_ok,
                f"no response to conservative treatment over >= {spec.conservative_treatment_min_months} months",
                {"conservative_treatment_months": months},
            )
        )
    return criteria, any_met and months_ok


def commissioning(facts: CodingInput, catalog: Catalog, tables: RuleTables, trace: Trace) -> Commissioning:
    """The HNY ICB USGI policy evaluation (HNY-USGI-1; module docstring)."""
    policy = f"{tables.hny_policy_name} (policy {tables.hny_policy_number})"
    if facts.modality != "ultrasound":
        reason = f"no ultrasound guidance (modality {facts.modality}): the USGI policy does not apply"
        return Commissioning(policy, "not_applicable", (), (), reason)
    kinds = {catalog.drugs[i.drug].kind for i in facts.injectates if i.drug in catalog.drugs}
    pathways = []
    if facts.kind in ("aspiration", "aspiration_and_injection"):
        pathways.append("aspiration")
    if facts.kind in ("injection", "aspiration_and_injection") and "corticosteroid" in kinds:
        pathways.append("steroid_injection")
    if not pathways:
        reason = f"the policy covers corticosteroid injection and joint aspiration only (injectates: {sorted(kinds)})"
        trace.add(
            "HNY-USGI-1", "warning", f"USGI outside the HNY policy: {reason}; check the applicable policy", ("DOC-15",)
        )
        return Commissioning(policy, "not_applicable", (), (), reason)
    criteria: list[Criterion] = []
    met_all = True
    for pathway in pathways:
        found, met = _pathway_criteria(facts, pathway, tables)
        criteria += found
        met_all = met_all and met
    if met_all:
        reason = "criteria met: " + ", ".join(c.id for c in criteria if c.met)
        trace.add("HNY-USGI-1", "info", f"HNY USGI {reason}", ("DOC-15",), pathways=pathways)
    else:
        unmet = ", ".join(c.id for c in criteria if not c.met)
        reason = f"criteria not met for {' and '.join(pathways)} (unmet: {unmet})"
        trace.add(
            "HNY-USGI-1",
            "warning",
            f"HNY USGI {reason}: prior approval needed",
            ("DOC-15", "DOC-02"),
            reasons=list(facts.guidance_reasons),
            prior_landmark_attempts=facts.prior_landmark_attempts,
            conservative_treatment_months=facts.conservative_treatment_months,
        )
    return Commissioning(policy, "met" if met_all else "not_met", tuple(pathways), tuple(criteria), reason)


def code_uk_nhs(
    facts: CodingInput, catalog: Catalog, tables: RuleTables, trace: Trace
) -> tuple[list[ClaimLine], Commissioning]:
    """The OPCS-4 lines and the commissioning evaluation of one procedure (module docstring)."""
    if facts.indications:
        trace.add(
            "UK-DX-1",
            "info",
            "diagnoses are WHO ICD-10 in NHS secondary care: the ICD-10-CM codes of the report are not carried over",
            indications=list(facts.indications),
        )
    return _opcs_lines(facts, catalog, tables, trace), commissioning(facts, catalog, tables, trace)
