"""Drug lines for a US claim: the HCPCS code valid on the date of service, units, JW/JZ and the NDC (DOMAIN.md §4).

Rules (ids as DOMAIN.md §10 gives them, else ours):

- ``DRUG-CODE-1``: the drug's HCPCS code valid on the date of service (methylprednisolone J1020/J1030/J1040 up to
  2024-03-31, J1010 from 2024-04-01). With several valid codes, the one billing the least amount at or above the
  dose wins, then the fewest units (80 mg -> J1040 x1, not J1030 x2; 60 mg -> J1020 x3). No valid code: an error.
- ``UNITS-1``: ``units = ceil(dose / unit amount)``, at least 1 (§4.1). A dose in mL of a per-mg code is converted
  with the recorded concentration. Per-dose codes (J7321, J7323 ...) bill 1 per injectate row; a bilateral procedure
  with a single row bills 2 (one dose per side; §4.3 "J7323 x2") and says so in an info finding. Rows of the same
  code are one line with the total units (§4.3).
- ``WASTE-1`` JZ: single-dose container of a separately payable drug, nothing discarded (§3, §4.1).
- ``WASTE-2`` JW: discarded amount > 0 and at least one billing unit administered: a second line, same code + JW,
  whose units are the whole billing units discarded, capped so administered + discarded units do not exceed the
  container's units (§4.1). When rounding the administered dose up leaves no discarded billing unit (or the dose is
  below one unit), no JW line is allowed; we then put JZ on the line, as the CMS JW/JZ FAQ does for "no billing
  units discarded". This last step is our conservative reading (DOMAIN.md only defines JZ as "zero discarded"):
  a claim with neither modifier is returned as unprocessable since 2023-10-01; verify with the MAC.
- ``WASTE-3``: multi-dose container: neither JW nor JZ. ``WASTE-4``: packaged drugs: neither, and no line.
- ``LOCAL-1``: local anaesthetics used as such (lidocaine; bupivacaine and ropivacaine, "payer dependent") get no
  line: Medicare treats local anaesthesia as part of the procedure (§4.2). Conservative: never billed here.
- ``NDC-1``: the NDC, in the 11-digit 5-4-2 billing form, on every drug line; a warning when it is missing (CO-16).

PRP (``0232T``) is a procedure code, made by :mod:`service.coding.us_cms`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import date

from service.coding.catalog import BillingCode, Catalog, Drug
from service.coding.result import ClaimLine, InjectateFacts, Trace, line

_DOC_DRUG, _DOC_WASTE = ("DOC-06",), ("DOC-07",)


def ndc_11(ndc: str) -> str:
    """An NDC in the 11-digit 5-4-2 billing form (837P loop 2410; DOMAIN.md §4.1): pad the short segment."""
    parts = ndc.split("-")
    if len(parts) != 3:
        return ndc
    labeler, product, package = parts
    return labeler.zfill(5) + product.zfill(4) + package.zfill(2)


def _ceil_units(amount: float, unit: float) -> int:
    # round first: 16.8 / 0.1 is 168.00000000000003 in floating point, not 169 units
    return max(1, math.ceil(round(amount / unit, 6)))


@dataclass(frozen=True)
class _Row:
    """One injectate row priced in one billing code."""

    code: BillingCode
    units: int
    waste_units: int
    jz: bool
    waste_rules: tuple[str, ...]
    ndc: str | None
    dose: float | None
    dose_unit: str | None


def _mg(amount: float | None, inj: InjectateFacts) -> float | None:
    if amount is None or inj.dose_unit in (None, "mg"):
        return amount
    return amount * inj.concentration_mg_per_ml if inj.concentration_mg_per_ml else None


def _choose(codes: tuple[BillingCode, ...], dose_mg: float | None) -> tuple[BillingCode, int] | None:
    if dose_mg is None:
        per_dose = [c for c in codes if c.unit != "mg"]
        return (per_dose[0], 1) if per_dose else None
    priced = [(c, _ceil_units(dose_mg, c.unit_amount)) for c in codes if c.unit == "mg" and c.unit_amount]
    priced += [(c, 1) for c in codes if c.unit != "mg"]
    if not priced:
        return None
    return min(priced, key=lambda cu: ((cu[0].unit_amount or 0) * cu[1], cu[1]))


def _waste(
    drug: Drug, inj: InjectateFacts, code: BillingCode, units: int, trace: Trace
) -> tuple[int, bool, tuple[str, ...]]:
    """(JW units, JZ?, rule ids) for one row (WASTE-1..3)."""
    facts = {"drug": drug.key, "container_type": inj.container_type}
    if inj.container_type == "multi_dose":
        return 0, False, ("WASTE-3",)
    if inj.container_type != "single_dose":
        trace.add(
            "WASTE-1",
            "error",
            f"{drug.label}: container type not recorded, JW/JZ cannot be decided",
            _DOC_WASTE,
            **facts,
        )
        return 0, False, ()
    if inj.discarded_amount is None or inj.container_amount is None:
        trace.add(
            "WASTE-2",
            "error",
            f"{drug.label}: single-dose container without container or discarded amount; JW/JZ cannot be decided "
            "(claims lacking JW/JZ are returned as unprocessable)",
            _DOC_WASTE,
            **facts,
            container_amount=inj.container_amount,
            discarded_amount=inj.discarded_amount,
        )
        return 0, False, ()
    if inj.discarded_amount <= 0:
        return 0, True, ("WASTE-1",)
    discarded, container = _mg(inj.discarded_amount, inj), _mg(inj.container_amount, inj)
    waste_units = 0
    if code.unit == "mg" and code.unit_amount and discarded is not None and container is not None:
        cap = math.ceil(round(container / code.unit_amount, 6)) - units
        waste_units = max(0, min(math.ceil(round(discarded / code.unit_amount, 6)), cap))
    dose = _mg(inj.dose, inj)
    below_one_unit = code.unit == "mg" and dose is not None and dose < (code.unit_amount or 0)
    if waste_units and not below_one_unit:
        return waste_units, False, ("WASTE-2",)
    trace.add(
        "WASTE-2",
        "info",
        f"{drug.label}: {inj.discarded_amount:g} {inj.dose_unit} discarded, but no whole billing unit is left to "
        "report with JW after rounding the administered dose up; JZ is reported (CMS JW/JZ FAQ reading, verify)",
        _DOC_WASTE,
        **facts,
        administered_units=units,
        discarded_amount=inj.discarded_amount,
        container_amount=inj.container_amount,
    )
    return 0, True, ("WASTE-2",)


def drug_lines(
    injectates: Iterable[InjectateFacts],
    catalog: Catalog,
    day: date | None,
    bilateral: bool,
    us_payer: bool,
    trace: Trace,
) -> list[ClaimLine]:
    """The HCPCS drug lines (administered, then JW) for the injectates, in report order of first appearance."""
    rows: dict[str, list[_Row]] = {}
    drugs: dict[str, Drug] = {}
    for inj in injectates:
        drug = catalog.drugs.get(inj.drug)
        if drug is None:
            trace.add("DRUG-CODE-1", "error", f"unknown drug {inj.drug!r}: not in the drug catalog", _DOC_DRUG)
            continue
        if drug.kind == "prp":
            continue  # 0232T, a procedure code (PRP-1)
        if drug.kind == "local_anaesthetic" or drug.packaged or drug.separately_billable == "no":
            trace.add(
                "LOCAL-1",
                "info",
                f"{drug.label}: no separate line; a local anaesthetic used as such is part of the procedure "
                f"(separately billable: {drug.separately_billable}; packaged: {drug.packaged})",
                _DOC_DRUG,
                drug=drug.key,
            )
            if drug.packaged and inj.container_type == "single_dose":
                trace.add("WASTE-4", "info", f"{drug.label}: packaged, so neither JW nor JZ", _DOC_WASTE, drug=drug.key)
            continue
        if day is None:
            trace.add("DRUG-CODE-1", "error", f"{drug.label}: no date of service, so no HCPCS code can be chosen")
            continue
        valid = tuple(c for c in drug.codes_on(day) if c.system == "hcpcs")
        dose = _mg(inj.dose, inj)
        if inj.dose is not None and dose is None:
            trace.add(
                "UNITS-1",
                "error",
                f"{drug.label}: dose {inj.dose:g} {inj.dose_unit} cannot be converted to mg (no concentration)",
                _DOC_DRUG,
                drug=drug.key,
                dose=inj.dose,
                dose_unit=inj.dose_unit,
            )
            continue
        if dose is None and any(c.unit == "mg" for c in valid):
            trace.add("UNITS-1", "error", f"{drug.label}: no dose recorded, so no units", _DOC_DRUG, drug=drug.key)
            continue
        chosen = _choose(valid, dose)
        if chosen is None:
            all_codes = ", ".join(f"{c.code} ({c.effective_from}..{c.effective_to})" for c in drug.codes) or "none"
            trace.add(
                "DRUG-CODE-1",
                "error",
                f"{drug.label}: no HCPCS code valid on {day} that fits the dose (codes: {all_codes})",
                _DOC_DRUG,
                drug=drug.key,
                date_of_service=day,
                dose=inj.dose,
            )
            continue
        code, units = chosen
        waste_units, jz, waste_rules = _waste(drug, inj, code, units, trace)
        drugs[code.code] = drug
        rows.setdefault(code.code, []).append(
            _Row(code, units, waste_units, jz, waste_rules, inj.ndc, inj.dose, inj.dose_unit)
        )
    lines: list[ClaimLine] = []
    for code_key, group in rows.items():
        drug, code = drugs[code_key], group[0].code
        units = sum(r.units for r in group)
        unit_rules: tuple[str, ...] = ("DRUG-CODE-1", "UNITS-1")
        if code.unit != "mg" and bilateral and len(group) == 1:
            units = 2
            trace.add(
                "UNITS-1",
                "info",
                f"{drug.label}: a per-dose code on a bilateral procedure with one injectate row; billed as one dose "
                "per side (2 units)",
                _DOC_DRUG,
                code=code.code,
            )
        ndc = next((r.ndc for r in group if r.ndc), None)
        if ndc is None and us_payer:
            trace.add(
                "NDC-1",
                "warning",
                f"{drug.label} ({code.code}): no NDC recorded; most payers want it (CO-16)",
                _DOC_DRUG,
            )
        jz = all(r.jz for r in group)
        waste = sum(r.waste_units for r in group)
        rules = (
            unit_rules + tuple(dict.fromkeys(r for row in group for r in row.waste_rules)) + (("NDC-1",) if ndc else ())
        )
        facts = {
            "doses": [f"{r.dose:g} {r.dose_unit}" if r.dose is not None else None for r in group],
            "row_units": [r.units for r in group],  # before the bilateral per-dose rule
            "unit": code.unit if code.unit != "mg" else f"{code.unit_amount:g} mg",
            "date_of_service": day,
            "code_valid": [code.effective_from, code.effective_to],
            "ndc_as_recorded": ndc,
        }
        main = line("HCPCS", code.code, rules=rules, units=units, ndc=ndc and ndc_11(ndc), drug=drug.key, **facts)
        lines.append(replace(main, modifiers=("JZ",)) if jz else main)
        if waste:
            lines.append(
                line(
                    "HCPCS",
                    code.code,
                    rules=("WASTE-2", "UNITS-1") + (("NDC-1",) if ndc else ()),
                    units=waste,
                    modifiers=("JW",),
                    ndc=ndc and ndc_11(ndc),
                    drug=drug.key,
                    **facts,
                )
            )
    return lines
