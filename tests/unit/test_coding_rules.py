"""The coding rules engine, table-driven: each case is the README example report with changes, loaded with
ProcedureCreateSchema (so the input is exactly what the service stores), coded, and compared line by line.

A line is written ``SYSTEM CODE-MOD-MOD xUNITS``; findings as ``RULE:severity``. The last tests check that every
rule id of :data:`service.coding.rules.RULES` is exercised by some case, and that every result is JSON.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

import pytest

from schemas.procedures import ProcedureCreateSchema
from service.coding.catalog import Catalog, load_catalog
from service.coding.result import ClaimLine, CodingInput, CodingResult, Trace, coding_input, line
from service.coding.rules import RULES, code_procedure
from service.coding.ruletables import default_rule_tables
from service.coding.us_cms import apply_bundling
from tests.procedureutil import EXAMPLE

CATALOG: Catalog = load_catalog()
DELETE = object()
FIRED: set[str] = set()  # every rule id any case produced: checked by test_every_rule_is_exercised

NOT_US = {"guidance.approach": DELETE, "guidance.probe_type": DELETE, "guidance.probe_frequency_mhz": DELETE}
NO_GUIDANCE = {
    **NOT_US,
    "guidance.modality": "none",
    "guidance.realtime_needle_guidance": False,
    "guidance.needle_tip_visualised": False,
}
ALL_IMAGES, NO_IMAGES = (3, True, True), (0, False, False)


def _set(doc: Any, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        doc = doc[int(part)] if isinstance(doc, list) else doc.setdefault(part, {})
    if isinstance(doc, list):
        doc[int(last)] = value
    elif value is DELETE:
        doc.pop(last, None)
    else:
        doc[last] = value


def report(changes: dict[str, Any]) -> dict[str, Any]:
    """The example report with dotted-path changes (``injectates.0.dose``), DELETE removing a field."""
    doc = copy.deepcopy(EXAMPLE)
    for path, value in changes.items():
        _set(doc, path, value if value is DELETE else copy.deepcopy(value))
    return doc


def facts_of(changes: dict[str, Any], images: tuple[int, bool, bool] = ALL_IMAGES) -> CodingInput:
    return coding_input(ProcedureCreateSchema().load(report(changes)), *images)


def run(facts: CodingInput, rule_set: str = "us-cms", **kwargs: Any) -> CodingResult:
    result = code_procedure(facts, CATALOG, rule_set, **kwargs)
    FIRED.update(result.rules_fired)
    json.dumps(result.to_dict())  # JSON-serialisable, always
    return result


def show(ln: ClaimLine) -> str:
    return f"{ln.system} {'-'.join((ln.code, *ln.modifiers))} x{ln.units}"


def on(day: str) -> dict[str, Any]:
    """Every time of the report on ``day`` (the date of service)."""
    return {
        "times": {
            "scheduled_at": f"{day}T09:00:00-05:00",
            "started_at": f"{day}T09:12:00-05:00",
            "injected_at": f"{day}T09:16:00-05:00",
            "ended_at": f"{day}T09:21:00-05:00",
        },
        "consent.obtained_at": f"{day}T09:05:00-05:00",
    }


def drug(key: str, dose: float, unit: str = "mg", **more: Any) -> dict[str, Any]:
    """An injectate row: single-dose, nothing discarded, unless ``more`` says otherwise."""
    row = {"drug": key, "dose": dose, "dose_unit": unit, "volume_ml": 1, "ndc": "0003-0293-05", "lot_number": "L1",
           "expiry_date": "2027-01-31", "container_type": "single_dose", "container_amount": dose,
           "discarded_amount": 0}  # fmt: skip
    row.update(more)
    return {k: v for k, v in row.items() if v is not None}


def knee(*rows: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {"injectates": list(rows), **changes}


OFF_LABEL_OK = {"consent.off_label_disclosed": True}
FACILITY = {"equipment_ownership": "facility_owned", "place_of_service": "22"}
STEROID = drug("triamcinolone_acetonide", 40)

# (id, changes, images, expected lines in order, findings that must be present)
US_CASES: list[tuple[str, dict[str, Any], tuple[int, bool, bool], list[str], set[str]]] = [
    ("example-right-knee", {}, ALL_IMAGES, ["CPT 20611-RT x1", "HCPCS J3301-JZ x4"],
     {"76942-BUNDLE-1:info", "LOCAL-1:info", "WASTE-4:info"}),
    ("images-missing-downcode", {}, NO_IMAGES, ["CPT 20610-RT x1", "HCPCS J3301-JZ x4"],
     {"US-NOT-RECORDED-DOWNCODE:warning", "76942-BUNDLE-1:info"}),
    ("no-post-image-downcode", {}, (2, True, False), ["CPT 20610-RT x1", "HCPCS J3301-JZ x4"],
     {"US-NOT-RECORDED-DOWNCODE:warning"}),
    ("no-realtime-downcode", {"guidance.realtime_needle_guidance": False}, ALL_IMAGES,
     ["CPT 20610-RT x1", "HCPCS J3301-JZ x4"], {"US-NOT-RECORDED-DOWNCODE:warning"}),
    ("no-description-downcode", {"guidance.description": DELETE}, ALL_IMAGES,
     ["CPT 20610-RT x1", "HCPCS J3301-JZ x4"], {"US-NOT-RECORDED-DOWNCODE:warning"}),
    ("facility-owned-joint-plain-code", FACILITY, ALL_IMAGES, ["CPT 20611-RT x1", "HCPCS J3301-JZ x4"],
     {"PCTC-3:info"}),
    ("ownership-vs-pos", {"place_of_service": "22"}, ALL_IMAGES, ["CPT 20611-RT x1", "HCPCS J3301-JZ x4"],
     {"PCTC-POS-1:warning"}),
    ("bilateral-knee", {"laterality": "bilateral", "indications": [{"code": "M17.0"}]}, ALL_IMAGES,
     ["CPT 20611-50 x1", "HCPCS J3301-JZ x4"], set()),
    ("left-knee", {"laterality": "left", "indications": [{"code": "M17.12"}]}, ALL_IMAGES,
     ["CPT 20611-LT x1", "HCPCS J3301-JZ x4"], set()),
    ("unspecified-side-dx", {"indications": [{"code": "M17.10"}]}, ALL_IMAGES,
     ["CPT 20611-RT x1", "HCPCS J3301-JZ x4"], {"ICD-LAT-1:warning"}),
    ("no-diagnosis", {"indications": []}, ALL_IMAGES, ["CPT 20611-RT x1", "HCPCS J3301-JZ x4"], {"DX-1:error"}),
    ("hip-major", {"site": "hip_joint", "indications": [{"code": "M16.11"}]}, ALL_IMAGES,
     ["CPT 20611-RT x1", "HCPCS J3301-JZ x4"], set()),
    ("wrist-intermediate", {"site": "wrist_joint", "indications": [{"code": "M25.531"}]}, ALL_IMAGES,
     ["CPT 20606-RT x1", "HCPCS J3301-JZ x4"], set()),
    ("thumb-cmc-payer-config", {"site": "thumb_cmc", "indications": [{"code": "M18.11"}]}, ALL_IMAGES,
     ["CPT 20604-RT x1", "HCPCS J3301-JZ x4"], {"SIZE-CLASS-1:info"}),
    ("finger-right-index", {"site": "finger_ip_mcp", "digit": 2, "indications": [{"code": "M19.041"}]}, ALL_IMAGES,
     ["CPT 20604-F6 x1", "HCPCS J3301-JZ x4"], set()),
    ("finger-left-thumb", {"site": "finger_ip_mcp", "digit": 1, "laterality": "left",
                           "indications": [{"code": "M19.042"}]}, ALL_IMAGES,
     ["CPT 20604-FA x1", "HCPCS J3301-JZ x4"], set()),
    ("toe-left-great", {"site": "toe_ip_mtp", "digit": 1, "laterality": "left",
                        "indications": [{"code": "M19.072"}]}, ALL_IMAGES,
     ["CPT 20604-TA x1", "HCPCS J3301-JZ x4"], set()),
    ("toe-right-little", {"site": "toe_ip_mtp", "digit": 5, "indications": [{"code": "M19.071"}]}, ALL_IMAGES,
     ["CPT 20604-T9 x1", "HCPCS J3301-JZ x4"], set()),
    ("trigger-finger-middle", {"site": "trigger_finger_sheath", "digit": 3, "indications": [{"code": "M65.331"}]},
     ALL_IMAGES, ["CPT 20550-F7 x1", "CPT 76942 x1", "HCPCS J3301-JZ x4"], set()),
    ("carpal-tunnel-facility", {"site": "carpal_tunnel", "indications": [{"code": "G56.01"}], **FACILITY},
     ALL_IMAGES, ["CPT 20526-RT x1", "CPT 76942-26 x1", "HCPCS J3301-JZ x4"], set()),
    ("plantar-fascia", {"site": "plantar_fascia", "indications": [{"code": "M72.2"}]}, ALL_IMAGES,
     ["CPT 20550-RT x1", "CPT 76942 x1", "HCPCS J3301-JZ x4"], set()),
    ("lateral-epicondyle", {"site": "lateral_epicondyle", "indications": [{"code": "M77.11"}]}, ALL_IMAGES,
     ["CPT 20551-RT x1", "CPT 76942 x1", "HCPCS J3301-JZ x4"], set()),
    ("ganglion", {"site": "ganglion_cyst", "indications": [{"code": "M67.431"}]}, ALL_IMAGES,
     ["CPT 20612-RT x1", "CPT 76942 x1", "HCPCS J3301-JZ x4"], set()),
    ("trigger-points", {"site": "trigger_points", "laterality": "not_applicable",
                        "indications": [{"code": "M79.18"}]}, ALL_IMAGES,
     ["CPT 20552 x1", "CPT 76942 x1", "HCPCS J3301-JZ x4"], {"TRIGGER-1:warning"}),
    ("peripheral-nerve", {"site": "peripheral_nerve", "indications": [{"code": "G57.91"}]}, ALL_IMAGES,
     ["CPT 64450-RT x1", "CPT 76942 x1", "HCPCS J3301-JZ x4"], set()),
    ("mortons-neuroma", {"site": "mortons_neuroma", "indications": [{"code": "G57.61"}]}, ALL_IMAGES,
     ["CPT 64455-RT x1", "CPT 76942 x1", "HCPCS J3301-JZ x4"], set()),
    ("non-joint-images-missing", {"site": "plantar_fascia", "indications": [{"code": "M72.2"}]}, NO_IMAGES,
     ["CPT 20550-RT x1", "HCPCS J3301-JZ x4"], {"NON-JOINT-US-GAP:warning"}),
    ("non-joint-fluoroscopy", {"site": "plantar_fascia", "indications": [{"code": "M72.2"}], **NOT_US,
                               "guidance.modality": "fluoroscopy"}, NO_IMAGES,
     ["CPT 20550-RT x1", "HCPCS J3301-JZ x4"], {"NON-JOINT-US-GAP:warning"}),
    ("fluoroscopy-knee-facility", {**NOT_US, "guidance.modality": "fluoroscopy", **FACILITY}, NO_IMAGES,
     ["CPT 20610-RT x1", "CPT 77002-26 x1", "HCPCS J3301-JZ x4"], set()),
    ("ct-knee-office", {**NOT_US, "guidance.modality": "ct"}, NO_IMAGES,
     ["CPT 20610-RT x1", "CPT 77012 x1", "HCPCS J3301-JZ x4"], set()),
    ("no-guidance", NO_GUIDANCE, NO_IMAGES, ["CPT 20610-RT x1", "HCPCS J3301-JZ x4"], set()),
    # drugs (DOMAIN.md §4): codes by date of service, units, JW/JZ
    ("methylpred-40-before-2024-04", knee(drug("methylprednisolone_acetate", 40), **on("2024-03-29")), ALL_IMAGES,
     ["CPT 20611-RT x1", "HCPCS J1030-JZ x1"], set()),
    ("methylpred-80-before-2024-04", knee(drug("methylprednisolone_acetate", 80), **on("2023-06-01")), ALL_IMAGES,
     ["CPT 20611-RT x1", "HCPCS J1040-JZ x1"], set()),
    ("methylpred-60-before-2024-04", knee(drug("methylprednisolone_acetate", 60), **on("2023-06-01")), ALL_IMAGES,
     ["CPT 20611-RT x1", "HCPCS J1020-JZ x3"], set()),
    ("methylpred-40-from-2024-04", knee(drug("methylprednisolone_acetate", 40), **on("2024-04-01")), ALL_IMAGES,
     ["CPT 20611-RT x1", "HCPCS J1010-JZ x40"], set()),
    ("synvisc-one-48", knee(drug("synvisc_one", 48)), ALL_IMAGES, ["CPT 20611-RT x1", "HCPCS J7325-JZ x48"], set()),
    ("gelsyn-16.8", knee(drug("gelsyn_3", 16.8)), ALL_IMAGES, ["CPT 20611-RT x1", "HCPCS J7328-JZ x168"], set()),
    ("betamethasone-12", knee(drug("betamethasone_acetate_sodium_phosphate", 12)), ALL_IMAGES,
     ["CPT 20611-RT x1", "HCPCS J0702-JZ x2"], set()),
    ("euflexxa-bilateral", knee(drug("euflexxa", 20), laterality="bilateral", indications=[{"code": "M17.0"}]),
     ALL_IMAGES, ["CPT 20611-50 x1", "HCPCS J7323-JZ x2"], {"UNITS-1:info"}),
    ("jw-half-vial", knee(drug("triamcinolone_acetonide", 20, container_amount=40, discarded_amount=20)),
     ALL_IMAGES, ["CPT 20611-RT x1", "HCPCS J3301 x2", "HCPCS J3301-JW x2"], set()),
    ("jw-rounding-cap", knee(drug("triamcinolone_acetonide", 25, container_amount=40, discarded_amount=15)),
     ALL_IMAGES, ["CPT 20611-RT x1", "HCPCS J3301 x3", "HCPCS J3301-JW x1"], set()),
    ("jw-below-one-unit", knee(drug("triamcinolone_acetonide", 5, container_amount=10, discarded_amount=5)),
     ALL_IMAGES, ["CPT 20611-RT x1", "HCPCS J3301-JZ x1"], {"WASTE-2:info"}),
    ("multi-dose-no-jw-jz", knee(drug("triamcinolone_acetonide", 40, container_type="multi_dose",
                                      container_amount=None, discarded_amount=None)), ALL_IMAGES,
     ["CPT 20611-RT x1", "HCPCS J3301 x4"], set()),
    ("single-dose-amounts-missing", knee(drug("triamcinolone_acetonide", 40, container_amount=None,
                                              discarded_amount=None)), ALL_IMAGES,
     ["CPT 20611-RT x1", "HCPCS J3301 x4"], {"WASTE-2:error"}),
    ("two-vials-one-line", knee(STEROID, STEROID), ALL_IMAGES, ["CPT 20611-RT x1", "HCPCS J3301-JZ x8"], set()),
    ("bupivacaine-local", knee(STEROID, drug("bupivacaine", 25, container_type="multi_dose", container_amount=None,
                                             discarded_amount=None)), ALL_IMAGES,
     ["CPT 20611-RT x1", "HCPCS J3301-JZ x4"], {"LOCAL-1:info"}),
    ("no-ndc", knee(drug("triamcinolone_acetonide", 40, ndc=None)), ALL_IMAGES,
     ["CPT 20611-RT x1", "HCPCS J3301-JZ x4"], {"NDC-1:warning"}),
    ("visco3-before-its-code", knee(drug("visco_3", 30), **on("2021-01-15")), ALL_IMAGES,
     ["CPT 20611-RT x1"], {"DRUG-CODE-1:error"}),
    ("no-date-of-service", {"times": DELETE, "consent.obtained_at": DELETE}, ALL_IMAGES, ["CPT 20611-RT x1"],
     {"DOS-1:error", "DRUG-CODE-1:error"}),
    # off-label, ABN and LCD (DOMAIN.md §3, §4.3, §8.4)
    ("ha-hip-abn", knee(drug("durolane", 60), site="hip_joint", indications=[{"code": "M16.11"}],
                        **OFF_LABEL_OK, **{"consent.abn_signed": True}), ALL_IMAGES,
     ["CPT 20611-RT-GA x1", "HCPCS J7318-JZ-GA x60"], {"OFFLABEL-1:info"}),
    ("ha-hip-no-abn", knee(drug("durolane", 60), site="hip_joint", indications=[{"code": "M16.11"}],
                           **OFF_LABEL_OK), ALL_IMAGES,
     ["CPT 20611-RT-GZ x1", "HCPCS J7318-JZ-GZ x60"], {"ABN-2:warning", "OFFLABEL-1:info"}),
    ("ha-hip-no-consent", knee(drug("durolane", 60), site="hip_joint", indications=[{"code": "M16.11"}],
                               consent=DELETE), ALL_IMAGES,
     ["CPT 20611-RT-GZ x1", "HCPCS J7318-JZ-GZ x60"], {"OFFLABEL-1:error"}),
    ("ha-knee-short-conservative", knee(drug("synvisc_one", 48), **{"guidance.conservative_treatment_months": 1}),
     ALL_IMAGES, ["CPT 20611-RT-GZ x1", "HCPCS J7325-JZ-GZ x48"], {"HA-LCD-1:warning", "ABN-2:warning"}),
    ("prp-knee-abn", knee(drug("prp_autologous", 4, "mL", ndc=None), **OFF_LABEL_OK,
                          **{"consent.abn_signed": True}), ALL_IMAGES,
     ["CPT 0232T-RT-GA x1"], {"0232T-BUNDLE-1:info", "OFFLABEL-1:info"}),
    ("prp-bilateral-no-abn", knee(drug("prp_autologous", 4, "mL", ndc=None), **OFF_LABEL_OK, laterality="bilateral",
                                  indications=[{"code": "M17.0"}]), ALL_IMAGES,
     ["CPT 0232T-GZ x1"], {"ABN-2:warning"}),
    ("commercial-prp-no-abn-modifier", knee(drug("prp_autologous", 4, "mL", ndc=None), **OFF_LABEL_OK,
                                            coverage={"kind": "commercial", "payer": "Aetna", "member_id": "W1"}),
     ALL_IMAGES, ["CPT 0232T-RT x1"], set()),
]  # fmt: skip


@pytest.mark.parametrize(("changes", "images", "expected", "findings"), [c[1:] for c in US_CASES],
                         ids=[c[0] for c in US_CASES])  # fmt: skip
def test_us_cms(
    changes: dict[str, Any], images: tuple[int, bool, bool], expected: list[str], findings: set[str]
) -> None:
    result = run(facts_of(changes, images))
    assert [show(ln) for ln in result.lines] == expected
    got = {f"{f.rule}:{f.severity}" for f in result.findings}
    assert findings <= got, got
    for ln in result.lines:
        assert ln.rules, f"{show(ln)} says no rule"
        assert all(r in RULES for r in ln.rules)
        assert len(ln.modifiers) <= 4 and len(ln.diagnosis_pointers) <= 4
        if result.diagnoses:
            assert ln.diagnosis_pointers and max(ln.diagnosis_pointers) <= len(result.diagnoses)
    assert all(f.rule in RULES for f in result.findings)
    assert "CPT 76942" not in " ".join(show(ln) for ln in result.lines) or not (
        {ln.code for ln in result.lines} & default_rule_tables().never_with_76942
    )


def test_example_line_details() -> None:
    """The README example, field by field: rules, pointers, NDC in the 11-digit form, diagnoses."""
    result = run(facts_of({}))
    cpt, drug_line = result.lines
    assert cpt.rules[:3] == ("US-GUIDED-JOINT", "76942-BUNDLE-1", "LAT-1")
    assert cpt.facts["size_class"] == "major" and cpt.diagnosis_pointers == (1,)
    assert drug_line.ndc == "00003029305" and drug_line.drug == "triamcinolone_acetonide"
    assert {"DRUG-CODE-1", "UNITS-1", "WASTE-1", "NDC-1"} <= set(drug_line.rules)
    assert result.diagnoses == ("M17.11",) and result.off_label.off_label is False
    assert result.date_of_service.isoformat() == "2025-03-14"  # type: ignore[union-attr]
    assert result.to_dict()["lines"][0]["modifiers"] == ["RT"]


def test_house_standard_can_be_relaxed_to_the_cpt_bar() -> None:
    """One recorded image without a post image: 20611 under the bare CPT bar, 20610 under our house standard."""
    facts = facts_of({}, (1, True, False))
    assert show(run(facts).lines[0]) == "CPT 20610-RT x1"
    assert show(run(facts, house_pre_post=False).lines[0]) == "CPT 20611-RT x1"


def test_educational_is_never_coded() -> None:
    result = run(facts_of({"educational": True}))
    assert result.lines == () and result.diagnoses == () and result.educational
    assert [(f.rule, f.severity) for f in result.findings] == [("EDU-1", "info")]
    assert run(facts_of({"educational": True}), "uk-nhs").lines == ()


def test_office_owned_76942_is_global() -> None:
    result = run(facts_of({"site": "carpal_tunnel", "indications": [{"code": "G56.01"}]}))
    guidance = result.lines[1]
    assert show(guidance) == "CPT 76942 x1" and "PCTC-1" in guidance.rules and "76942-UNITS-1" in guidance.rules


def test_bilateral_76942_is_one_unit_without_side() -> None:
    result = run(facts_of({"site": "carpal_tunnel", "laterality": "bilateral", "indications": [{"code": "G56.03"}]}))
    assert [show(ln) for ln in result.lines[:2]] == ["CPT 20526-50 x1", "CPT 76942 x1"]


# --- facts the schema refuses, set after loading ------------------------------------------------------------------


def test_side_contradiction_is_an_error_and_pointers_fall_back() -> None:
    facts = dataclasses.replace(facts_of({}), indications=("M17.12",))
    result = run(facts)
    assert {"ICD-LAT-1:error"} <= {f"{f.rule}:{f.severity}" for f in result.findings}
    assert result.lines[0].diagnosis_pointers == (1,)


def test_pointers_skip_a_diagnosis_of_the_other_side() -> None:
    facts = dataclasses.replace(facts_of({}), indications=("M17.12", "M17.11"))
    assert run(facts).lines[0].diagnosis_pointers == (2,)


def test_unknown_site_and_missing_digit() -> None:
    assert "SITE-1" in run(dataclasses.replace(facts_of({}), site="nowhere")).rules_fired
    finger = facts_of({"site": "finger_ip_mcp", "digit": 2, "indications": [{"code": "M19.041"}]})
    result = run(dataclasses.replace(finger, digit=None))
    assert show(result.lines[0]) == "CPT 20604-RT x1" and "DIG-1:error" in {
        f"{f.rule}:{f.severity}" for f in result.findings
    }


def test_dose_in_ml_without_concentration_is_an_error() -> None:
    facts = facts_of({})
    steroid = dataclasses.replace(facts.injectates[0], dose_unit="mL", concentration_mg_per_ml=None)
    result = run(dataclasses.replace(facts, injectates=(steroid,)))
    assert [show(ln) for ln in result.lines] == ["CPT 20611-RT x1"]
    assert "UNITS-1:error" in {f"{f.rule}:{f.severity}" for f in result.findings}
    no_dose = dataclasses.replace(steroid, dose=None, dose_unit=None)
    assert len(run(dataclasses.replace(facts, injectates=(no_dose,))).lines) == 1
    with_conc = dataclasses.replace(steroid, dose=1, concentration_mg_per_ml=40)
    assert show(run(dataclasses.replace(facts, injectates=(with_conc,))).lines[1]) == "HCPCS J3301-JZ x4"


def test_missing_container_type_and_ownership() -> None:
    facts = facts_of({"site": "plantar_fascia", "indications": [{"code": "M72.2"}]})
    steroid = dataclasses.replace(facts.injectates[0], container_type=None)
    result = run(dataclasses.replace(facts, injectates=(steroid,), equipment_ownership=None))
    got = {f"{f.rule}:{f.severity}" for f in result.findings}
    assert {"WASTE-1:error", "PCTC-1:error"} <= got


def test_bundling_guard_drops_76942_and_0232t_column_two() -> None:
    """76942-BUNDLE-1 / 0232T-BUNDLE-1 as a guard over finished lines (the PTP pairs are data)."""
    tables, trace = default_rule_tables(), Trace()
    lines = [line("CPT", "20611", rules=("X",)), line("CPT", "76942", rules=("X",))]
    assert [ln.code for ln in apply_bundling(lines, tables, trace)] == ["20611"]
    lines = [line("CPT", "0232T", rules=("X",)), line("CPT", "20610", rules=("X",))]
    assert [ln.code for ln in apply_bundling(lines, tables, trace)] == ["0232T"]
    assert [(f.rule, f.severity) for f in trace.findings] == [("76942-BUNDLE-1", "error"), ("0232T-BUNDLE-1", "error")]
    FIRED.update(f.rule for f in trace.findings)


def test_unknown_rule_set() -> None:
    with pytest.raises(ValueError, match="unknown rule set"):
        code_procedure(facts_of({}), CATALOG, "us-aetna")


# --- uk-nhs: OPCS-4 and the HNY ICB criteria (DOMAIN.md §7) -------------------------------------------------------

ASPIRATION = {"volume_ml": 12, "appearance": "straw", "sent_for_analysis": False}
NHS = {"coverage": {"kind": "nhs", "payer": "NHS England"}}

UK_CASES: list[tuple[str, dict[str, Any], list[str], str, set[str]]] = [
    ("example-knee", NHS, ["W90.3", "Y53.2", "Z94.2"], "met", {"UK-SITE-1:info", "UK-DX-1:info", "HNY-USGI-1:info"}),
    ("hip-site-code", {**NHS, "site": "hip_joint", "indications": [{"code": "M16.12"}], "laterality": "left"},
     ["W90.3", "Y53.2", "Z84.3", "Z94.3"], "met", set()),
    ("bilateral", {**NHS, "laterality": "bilateral", "indications": [{"code": "M17.0"}]},
     ["W90.3", "Y53.2", "Z94.1"], "met", set()),
    ("aspiration-and-injection", {**NHS, "kind": "aspiration_and_injection", "aspiration": ASPIRATION},
     ["W90.1", "Y53.2", "Z94.2", "W90.3", "Y53.2", "Z94.2"], "met", {"UK-OPCS-1:warning"}),
    ("aspiration-only-failed-landmark", {**NHS, "kind": "aspiration", "aspiration": ASPIRATION, "injectates": DELETE,
                                         "times.injected_at": DELETE,
                                         "guidance.reasons": ["failed_landmark_aspiration"],
                                         "guidance.prior_landmark_attempts": 1,
                                         "guidance.conservative_treatment_months": 0},
     ["W90.1", "Y53.2", "Z94.2"], "met", set()),
    ("steroid-reason-not-in-policy", {**NHS, "guidance.reasons": ["deep_joint"]}, ["W90.3", "Y53.2", "Z94.2"],
     "not_met", {"HNY-USGI-1:warning"}),
    ("steroid-short-conservative-care", {**NHS, "guidance.conservative_treatment_months": 2},
     ["W90.3", "Y53.2", "Z94.2"], "not_met", {"HNY-USGI-1:warning"}),
    ("two-landmark-injections-claimed-one-recorded",
     {**NHS, "guidance.reasons": ["no_relief_after_2_landmark_injections"], "guidance.prior_landmark_attempts": 1},
     ["W90.3", "Y53.2", "Z94.2"], "not_met", {"HNY-USGI-1:warning"}),
    ("hyaluronan-outside-policy", {**NHS, "injectates": [drug("synvisc_one", 48)]}, ["W90.3", "Y53.2", "Z94.2"],
     "not_applicable", {"HNY-USGI-1:warning"}),
    ("bursa-no-opcs", {**NHS, "site": "subacromial_bursa", "indications": [{"code": "M75.51"}]}, [], "met",
     {"UK-OPCS-2:warning"}),
    ("fluoroscopy", {**NHS, **NOT_US, "guidance.modality": "fluoroscopy"}, ["W90.3", "Y53.4", "Z94.2"],
     "not_applicable", set()),
    ("no-realtime", {**NHS, "guidance.realtime_needle_guidance": False}, ["W90.3", "Z94.2"], "met",
     {"UK-Y53-1:warning"}),
]  # fmt: skip


@pytest.mark.parametrize(("changes", "codes", "status", "findings"), [c[1:] for c in UK_CASES],
                         ids=[c[0] for c in UK_CASES])  # fmt: skip
def test_uk_nhs(changes: dict[str, Any], codes: list[str], status: str, findings: set[str]) -> None:
    result = run(facts_of(changes), "uk-nhs")
    assert [ln.code for ln in result.lines] == codes
    assert all(ln.system == "OPCS-4" and ln.rules for ln in result.lines)
    assert result.commissioning is not None and result.commissioning.status == status
    assert result.diagnoses == ()
    assert findings <= {f"{f.rule}:{f.severity}" for f in result.findings}


def test_uk_commissioning_names_each_criterion() -> None:
    result = run(facts_of({**NHS, "kind": "aspiration_and_injection", "aspiration": ASPIRATION}), "uk-nhs")
    assert result.commissioning is not None
    assert result.commissioning.pathways == ("aspiration", "steroid_injection")
    met = {c.id for c in result.commissioning.criteria if c.met}
    assert met == {"aspiration.b", "steroid_injection.b", "steroid_injection.c", "steroid_injection.conservative"}
    assert result.to_dict()["commissioning"]["status"] == "met"


def test_uk_images_missing_is_a_documentation_warning() -> None:
    result = run(facts_of(NHS, NO_IMAGES), "uk-nhs")
    assert [ln.code for ln in result.lines] == ["W90.3", "Y53.2", "Z94.2"]
    assert any(f.rule == "UK-Y53-1" and "DOC-03" in f.checks for f in result.findings)


# --- last: the registry -------------------------------------------------------------------------------------------


def test_every_rule_is_exercised() -> None:
    """Every rule id of RULES fires in some case of this module, and no unknown id does (self-contained: reruns all)."""
    FIRED.clear()
    for case in US_CASES:
        test_us_cms(*case[1:])
    for uk in UK_CASES:
        test_uk_nhs(*uk[1:])
    for name, test in sorted(globals().items()):
        if name.startswith("test_") and name not in ("test_us_cms", "test_uk_nhs", "test_every_rule_is_exercised"):
            test()
    assert set(RULES) - FIRED == set()
    assert FIRED - set(RULES) == set()
