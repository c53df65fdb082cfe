"""Diagnoses and diagnosis pointers of a US claim (DOMAIN.md §5.1, §8.1).

- ``DX-1``: the report's ICD-10-CM codes in report order, at most 12 (837P HI segment); each line points at most 4,
  the diagnoses whose side agrees with the line's side (RT/LT, F/T digit modifiers, 50; lines without a side use the
  procedure line's). A code that does not fit the site (catalog ``icd10_check``) is an error finding.
- ``ICD-LAT-1``: a code of the other side is an error (and, when no code agrees, the line points at all of them so
  the claim stays well-formed while the finding blocks it); an unspecified-side code for a documented side is a
  warning (an audit flag, Official Guidelines I.B.13).
"""

from __future__ import annotations

from dataclasses import replace

from service.coding.catalog import WARNING_PREFIX, Catalog
from service.coding.result import ClaimLine, CodingInput, Trace
from service.coding.ruletables import RuleTables


def _line_side(ln: ClaimLine, tables: RuleTables) -> str | None:
    for m in ln.modifiers:
        if m in ("RT", "LT"):
            return "right" if m == "RT" else "left"
        if m == "50":
            return "bilateral"
        for sides in tables.digit_modifiers.values():
            for side, mods in sides.items():
                if m in mods:
                    return side
    return None


def diagnoses_and_pointers(
    lines: list[ClaimLine], facts: CodingInput, catalog: Catalog, tables: RuleTables, trace: Trace
) -> tuple[list[ClaimLine], tuple[str, ...]]:
    """The claim's diagnoses (report order, at most 12) and each line's pointers (DX-1, ICD-LAT-1)."""
    diagnoses = facts.indications[:12]
    if len(facts.indications) > 12:
        trace.add("DX-1", "warning", "more than 12 diagnoses: only the first 12 go on the claim", ("DOC-01",))
    if not diagnoses:
        trace.add(
            "DX-1", "error", "no diagnosis: every line needs a pointer to a supporting ICD-10-CM code", ("DOC-01",)
        )
    for code in diagnoses:
        for problem in catalog.icd10_check(code, facts.site, facts.laterality):
            warning = problem.startswith(WARNING_PREFIX)
            rule = "ICD-LAT-1" if warning or " side but " in problem else "DX-1"
            trace.add(
                rule,
                "warning" if warning else "error",
                problem.removeprefix(WARNING_PREFIX),
                ("DOC-05",),
                code=code,
                site=facts.site,
                laterality=facts.laterality,
            )
    procedure_side = next((s for ln in lines if ln.system == "CPT" and (s := _line_side(ln, tables))), None)
    out: list[ClaimLine] = []
    for ln in lines:
        side = _line_side(ln, tables) or procedure_side
        fits = [
            i + 1
            for i, c in enumerate(diagnoses)
            if side in (None, "bilateral") or catalog.icd10_laterality(c) in (None, "unspecified", "bilateral", side)
        ]
        if diagnoses and not fits:
            trace.add(
                "ICD-LAT-1",
                "error",
                f"{ln.code}: no diagnosis agrees with the {side} side",
                ("DOC-05",),
                code=ln.code,
                side=side,
                diagnoses=list(diagnoses),
            )
            fits = list(range(1, len(diagnoses) + 1))
        out.append(replace(ln, diagnosis_pointers=tuple(fits[:4]), rules=ln.rules + (("DX-1",) if fits else ())))
    return out, diagnoses
