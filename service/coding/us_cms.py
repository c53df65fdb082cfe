"""The ``us-cms`` rule set: CPT procedure and guidance lines, modifiers, ABN, diagnoses and pointers.

Rule ids (DOMAIN.md §10 where it names them; ours otherwise):

- ``US-GUIDED-JOINT``: arthrocentesis family with US guidance documented -> 20604/20606/20611 by the site's size class.
  "Documented" = at least one linked image, real-time needle guidance, a guidance description, and (our house
  standard, on by default) a ``pre`` and a ``post`` image.
- ``US-NOT-RECORDED-DOWNCODE``: US used but any of those missing -> 20600/20605/20610 and a warning naming the gap.
- ``FLUORO-CT-MR``: arthrocentesis under fluoroscopy/CT/MR -> the without-US code plus 77002/77012/77021.
- ``NO-GUIDANCE-1``: no image guidance -> the without-US (or family) code.
- ``SIZE-CLASS-1``: a payer-configured size class (thumb CMC, pes anserine ...) uses the catalog default; info.
- ``NON-JOINT-US``: 20526, 20550, 20551, 20552/20553, 20612, 64450, 64455 plus 76942 when guidance is documented;
  ``NON-JOINT-US-GAP``: the family code alone, with a warning, when it is not. Other modalities with these families
  get no guidance code (DOMAIN.md only gives them for the joint family; conservative) and a warning.
- ``TRIGGER-1``: the report has no muscle count, so trigger points are coded 20552 (1-2 muscles), with a warning.
- ``PRP-1``: PRP is 0232T, one per session (image guidance, harvesting and preparation included): no 76942 and no
  2060x/20550/20551 at the site (``0232T-BUNDLE-1``); bilateral gets no 50 (the code covers "injection(s), any site").
- ``76942-BUNDLE-1``: never 76942 with 2060x, 0232T or the listed nerve-block codes; a guard pass removes it.
- ``76942-UNITS-1``: 76942 is one unit per encounter, without laterality modifiers.
- ``PCTC-1`` / ``PCTC-2``: 76942 global when the ultrasound is office-owned, 26 when facility-owned; ``PCTC-3``:
  never 26/TC on 20604/20606/20611 (PC/TC indicator 0: the physician bills the plain code at the facility rate).
  ``PCTC-POS-1``: the ownership disagrees with the place of service (DOC-14), a warning. 26 also goes on
  77002/77012/77021 in a facility place of service (same PC/TC logic; our reading).
- ``LAT-1`` / ``LAT-2``: RT/LT on a paired site; ``LAT-3``: bilateral -> one line, modifier 50, 1 unit (Medicare).
- ``DIG-1`` / ``DIG-2``: the finger/toe modifier (FA, F1-F9 / TA, T1-T9) instead of RT/LT; a bilateral digit
  procedure (same digit both sides) takes 50 only.
- ``ABN-1`` / ``ABN-2``: Medicare (and Medicare Advantage, as :func:`schemas.procedures.report_warnings` does)
  expected non-coverage -> GA with an ABN on file, else GZ with a warning. Expected non-covered: PRP (0232T),
  hyaluronan outside the knee (its lines and the procedure lines), and knee hyaluronan outside LCD A56157
  (``HA-LCD-1``: no M17 knee-OA code, or under 3 months of conservative care).
- ``DX-1``: diagnoses in report order (at most 12); each line points (at most 4) at the diagnoses whose side agrees
  with its modifier; ``ICD-LAT-1``: side contradictions (error) and unspecified sides (warning), §5.1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from service.coding.catalog import Catalog, Site
from service.coding.diagnoses import diagnoses_and_pointers
from service.coding.result import ClaimLine, CodingInput, Trace, line
from service.coding.ruletables import RuleTables
from service.coding.units import drug_lines

FACILITY_POS = frozenset({"19", "21", "22", "23", "24"})
MEDICARE = frozenset({"medicare", "medicare_advantage"})
_GUIDED_JOINT = frozenset({"20604", "20606", "20611"})
_ORDER = {"26": 0, "TC": 0, "50": 0, "JW": 2, "JZ": 2, "GA": 3, "GZ": 3}  # pricing, anatomic (1), waste, ABN


def _ordered(mods: Sequence[str]) -> tuple[str, ...]:
    return tuple(sorted(dict.fromkeys(mods), key=lambda m: _ORDER.get(m, 1)))


def guidance_gaps(facts: CodingInput, house_pre_post: bool = True) -> list[str]:
    """What keeps US guidance from being reportable (DOMAIN.md §1.3, §2.1; DOC-03, DOC-04); empty when none."""
    gaps = []
    if facts.image_count < 1:
        gaps.append("no permanently recorded image linked to the procedure")
    elif house_pre_post and not (facts.has_pre and facts.has_post):
        missing = [r for r, ok in (("pre", facts.has_pre), ("post", facts.has_post)) if not ok]
        gaps.append(f"no {' or '.join(missing)} image (house standard: a pre and a post image)")
    if facts.realtime_needle_guidance is not True:
        gaps.append("real-time needle guidance not documented (pre-marking only is not guidance)")
    if not facts.guidance_described:
        gaps.append("no written description of the localisation and needle guidance")
    return gaps


def _gap_facts(facts: CodingInput) -> dict[str, object]:
    return {
        "modality": facts.modality,
        "image_count": facts.image_count,
        "has_pre": facts.has_pre,
        "has_post": facts.has_post,
        "realtime_needle_guidance": facts.realtime_needle_guidance,
        "guidance_described": facts.guidance_described,
    }


def _laterality(
    facts: CodingInput, site: Site, tables: RuleTables, trace: Trace
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(modifiers, rule ids) for the procedure line's side (LAT-1..3, DIG-1/2)."""
    side = facts.laterality
    if not site.paired or side not in ("left", "right", "bilateral"):
        return (), ()
    if side == "bilateral":
        return ("50",), ("LAT-3",)
    if site.digit != "none":
        rule = "DIG-1" if site.digit == "finger" else "DIG-2"
        if facts.digit is None:
            trace.add(rule, "error", f"{site.label}: no digit recorded, so no {site.digit} modifier", ("DOC-05",))
            return ("RT" if side == "right" else "LT",), (rule,)
        return (tables.digit_modifiers[site.digit][side][facts.digit - 1],), (rule,)
    return ("RT",) if side == "right" else ("LT",), ("LAT-1",) if side == "right" else ("LAT-2",)


def _ownership(facts: CodingInput, trace: Trace) -> None:
    own, pos = facts.equipment_ownership, facts.place_of_service
    if own is None:
        trace.add(
            "PCTC-1", "error", "equipment ownership not recorded: 76942 global vs 26 cannot be decided", ("DOC-14",)
        )
    elif (own == "office_owned" and pos in FACILITY_POS) or (own == "facility_owned" and pos == "11"):
        trace.add(
            "PCTC-POS-1",
            "warning",
            f"equipment ownership {own} does not match place of service {pos}",
            ("DOC-14",),
            equipment_ownership=own,
            place_of_service=pos,
        )


def _procedure_lines(
    facts: CodingInput, site: Site, catalog: Catalog, tables: RuleTables, trace: Trace, house_pre_post: bool
) -> list[ClaimLine]:
    lat_mods, lat_rules = _laterality(facts, site, tables, trace)
    base = {"site": site.key, "family": site.family, "laterality": facts.laterality, "modality": facts.modality}
    prp = [i for i in facts.injectates if (d := catalog.drugs.get(i.drug)) is not None and d.kind == "prp"]
    if prp:
        mods = tuple(m for m in lat_mods if m != "50")
        trace.add(
            "0232T-BUNDLE-1",
            "info",
            "PRP is 0232T, which includes image guidance, harvesting and preparation: no 76942 and no "
            "2060x/20550/20551 for the same site",
            **base,
        )
        rules = ("PRP-1", "0232T-BUNDLE-1", "76942-BUNDLE-1") + tuple(r for r in lat_rules if r != "LAT-3")
        return [line("CPT", "0232T", rules=rules, modifiers=mods, **base)]
    gaps = guidance_gaps(facts, house_pre_post) if facts.modality == "ultrasound" else []
    us_ok = facts.modality == "ultrasound" and not gaps
    facility = facts.equipment_ownership == "facility_owned"
    other = facts.modality in ("fluoroscopy", "ct", "mr")
    lines: list[ClaimLine] = []
    if site.family == "arthrocentesis":
        pair = catalog.joint_codes(site.key)
        assert pair is not None
        base["size_class"] = pair.size_class
        rules: tuple[str, ...]
        if site.size_class == "payer_config":
            trace.add(
                "SIZE-CLASS-1",
                "info",
                f"{site.label}: payer-dependent size class; default {pair.size_class} used",
                **base,
            )
        if us_ok:
            code, rules = pair.us_recorded, ("US-GUIDED-JOINT", "76942-BUNDLE-1")
            if facility:
                rules += ("PCTC-3",)
                trace.add(
                    "PCTC-3",
                    "info",
                    f"{code}: no 26/TC on the guided joint code (no PC/TC split) even with "
                    "facility-owned ultrasound; the physician bills the plain code",
                    ("DOC-14",),
                    **base,
                )
        elif facts.modality == "ultrasound":
            code, rules = pair.no_us, ("US-NOT-RECORDED-DOWNCODE", "76942-BUNDLE-1")
            trace.add(
                "US-NOT-RECORDED-DOWNCODE",
                "warning",
                f"ultrasound guidance not reportable ({'; '.join(gaps)}): coded {pair.no_us} instead of "
                f"{pair.us_recorded}, and never 76942 with it",
                ("DOC-03", "DOC-04"),
                **_gap_facts(facts),
                gaps=gaps,
            )
        elif other:
            code, rules = pair.no_us, ("FLUORO-CT-MR",)
        else:
            code, rules = pair.no_us, ("NO-GUIDANCE-1",)
        if facts.modality == "ultrasound":
            trace.add(
                "76942-BUNDLE-1",
                "info",
                f"76942 not reported: never with {code} (CPT parenthetical, NCCI)",
                ("DOC-10",),
                code=code,
            )
        lines.append(line("CPT", code, rules=rules + lat_rules, modifiers=lat_mods, **base))
        if other:
            guide = tables.guidance_codes[facts.modality or ""]
            pc = facts.place_of_service in FACILITY_POS
            lines.append(
                line(
                    "CPT",
                    guide,
                    rules=("FLUORO-CT-MR",) + (("PCTC-2",) if pc else ()),
                    modifiers=("26",) if pc else (),
                    **base,
                )
            )
        return lines
    fam = tables.family_codes[site.family]
    code = fam.codes[0]
    guided = facts.modality == "ultrasound" or other
    rules = ("NON-JOINT-US",) if us_ok else ("NON-JOINT-US-GAP",) if guided else ()
    if len(fam.codes) > 1:
        rules += ("TRIGGER-1",)
        trace.add(
            "TRIGGER-1",
            "warning",
            f"the report has no muscle count: coded {code} (one or two muscles); {fam.codes[1]} needs three or more",
            **base,
        )
    if facts.modality in (None, "none"):
        rules += ("NO-GUIDANCE-1",)
    lines.append(line("CPT", code, rules=rules + lat_rules, modifiers=lat_mods, **base))
    if us_ok:
        mods, pctc = (("26",), "PCTC-2") if facility else ((), "PCTC-1")
        lines.append(
            line(
                "CPT",
                fam.us_guidance,
                rules=("NON-JOINT-US", "76942-UNITS-1", pctc),
                modifiers=mods,
                equipment_ownership=facts.equipment_ownership,
                family_code=code,
            )
        )
    elif facts.modality == "ultrasound":
        trace.add(
            "NON-JOINT-US-GAP",
            "warning",
            f"ultrasound guidance not reportable ({'; '.join(gaps)}): {code} without {fam.us_guidance}",
            ("DOC-03", "DOC-04"),
            **_gap_facts(facts),
            gaps=gaps,
        )
    elif other:
        trace.add(
            "NON-JOINT-US-GAP",
            "warning",
            f"{facts.modality} guidance with {code}: no guidance code emitted "
            "(DOMAIN.md gives 77002/77012/77021 for the joint family only); code it by hand",
            ("DOC-10",),
            modality=facts.modality,
        )
    return lines


def apply_bundling(lines: Sequence[ClaimLine], tables: RuleTables, trace: Trace) -> list[ClaimLine]:
    """Drop 76942 next to a code it is never reported with, and 0232T's column-2 codes (76942-BUNDLE-1, 0232T-BUNDLE-1).

    A guard over the finished lines: the NCCI PTP pairs are data (rules.yaml), so a payer's table can add pairs.
    """
    codes = {ln.code for ln in lines}
    drop: set[str] = set()
    if "76942" in codes and codes & tables.never_with_76942:
        drop.add("76942")
        trace.add(
            "76942-BUNDLE-1",
            "error",
            f"76942 removed: never with {sorted(codes & tables.never_with_76942)}",
            ("DOC-10",),
        )
    if "0232T" in codes and codes & tables.never_with_0232t:
        drop |= codes & tables.never_with_0232t
        trace.add(
            "0232T-BUNDLE-1", "error", f"removed with 0232T: {sorted(codes & tables.never_with_0232t)}", ("DOC-10",)
        )
    return [ln for ln in lines if ln.system != "CPT" or ln.code not in drop]


def _noncovered(facts: CodingInput, catalog: Catalog, site: Site | None, trace: Trace) -> tuple[set[str], bool]:
    """(drug keys expected non-covered by Medicare, whether the procedure lines are too)."""
    drugs: set[str] = set()
    procedure = False
    for inj in facts.injectates:
        drug = catalog.drugs.get(inj.drug)
        if drug is None or site is None:
            continue
        if drug.investigational:
            drugs.add(drug.key)
            procedure = True
        elif drug.kind == "hyaluronan":
            knee_oa = any(c.startswith("M17") for c in facts.indications)
            months = facts.conservative_treatment_months
            if catalog.off_label_reason(drug.key, site.key):
                drugs.add(drug.key)
                procedure = True
            elif not knee_oa or months is None or months < 3:
                drugs.add(drug.key)
                procedure = True
                trace.add(
                    "HA-LCD-1",
                    "warning",
                    f"{drug.label}: knee hyaluronan outside LCD A56157 (needs a knee OA "
                    "code M17 and at least 3 months of failed conservative care)",
                    ("DOC-01",),
                    knee_oa_code=knee_oa,
                    conservative_treatment_months=months,
                )
    return drugs, procedure


def _abn(
    lines: list[ClaimLine], facts: CodingInput, catalog: Catalog, site: Site | None, trace: Trace
) -> list[ClaimLine]:
    if facts.coverage_kind not in MEDICARE:
        return lines
    drugs, procedure = _noncovered(facts, catalog, site, trace)
    if not drugs and not procedure:
        return lines
    signed = facts.abn_signed is True
    mod, rule = ("GA", "ABN-1") if signed else ("GZ", "ABN-2")
    if not signed:
        trace.add(
            "ABN-2",
            "warning",
            "expected Medicare non-coverage without an ABN on file: GZ (provider liable)",
            ("DOC-08",),
            drugs=sorted(drugs),
            abn_signed=facts.abn_signed,
        )
    out: list[ClaimLine] = []
    for ln in lines:
        hit = ln.drug in drugs if ln.system == "HCPCS" else procedure
        out.append(replace(ln, modifiers=_ordered(ln.modifiers + (mod,)), rules=ln.rules + (rule,)) if hit else ln)
    return out


def code_us_cms(
    facts: CodingInput, catalog: Catalog, tables: RuleTables, trace: Trace, house_pre_post: bool = True
) -> tuple[list[ClaimLine], tuple[str, ...]]:
    """The US claim lines and diagnoses of one procedure (rules in the module docstring)."""
    site = catalog.sites.get(facts.site or "")
    lines: list[ClaimLine] = []
    if site is None:
        trace.add("SITE-1", "error", f"unknown or missing site {facts.site!r}: no procedure code", ("DOC-05",))
    else:
        lines = _procedure_lines(facts, site, catalog, tables, trace, house_pre_post)
    if facts.modality == "ultrasound":
        _ownership(facts, trace)
    us_payer = facts.coverage_kind not in ("nhs", "self_pay")
    lines += drug_lines(
        facts.injectates, catalog, facts.date_of_service, facts.laterality == "bilateral", us_payer, trace
    )
    lines = apply_bundling(lines, tables, trace)
    lines = _abn(lines, facts, catalog, site, trace)
    lines = [replace(ln, modifiers=_ordered(ln.modifiers)) for ln in lines]
    return diagnoses_and_pointers(lines, facts, catalog, tables, trace)
