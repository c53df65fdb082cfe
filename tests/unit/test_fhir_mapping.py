"""FHIR R4 mapping of a procedure: golden files, R4B round trip, stable ids, and the independent Node validator.

Golden files live in tests/fhir/golden/<case>.json (the mapped resources as a JSON array). Rewrite them with
``USGI_UPDATE_GOLDEN=1 pytest tests/unit/test_fhir_mapping.py`` and read the diff before keeping it.
"""

from __future__ import annotations

import base64
import copy
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from schemas.procedures import ProcedureCreateSchema
from service.coding.catalog import default_catalog
from service.coding.result import coding_input
from service.coding.rules import code_procedure
from service.fhir import ProcedureRecord, map_json, map_procedure, to_bundle, to_json
from service.fhir.mapping import model_class
from service.fhir.transaction import ehr_transaction, plan, stage_bundle
from tests.fhirvalidate import fhir_validator, validate_resources  # noqa: F401  (fixture)
from tests.procedureutil import full_report

GOLDEN = Path(__file__).resolve().parents[1] / "fhir" / "golden"
UPDATE = os.environ.get("USGI_UPDATE_GOLDEN") == "1"
PID = "3f2a9c01d4e5b6a7"
BASE_URL = "https://usgi.example.org"
ID_SYSTEM = "https://clinic.example.org/usgi"
STUDY = "2.25.112233445566778899001122334455667788"
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


def image(n: int, role: str, when: str, *, series: int = 1, frames: int = 1, side: str = "R") -> dict[str, Any]:
    return {
        "sop_instance_uid": f"{STUDY}.{series}.{n}",
        "sop_class_uid": US_MULTIFRAME if frames > 1 else US_IMAGE,
        "study_instance_uid": STUDY,
        "series_instance_uid": f"{STUDY}.{series}",
        "accession_number": "ACC25031401",
        "modality": "US",
        "laterality": side,
        "series_description": "Cine" if frames > 1 else "Knee",
        "number_of_frames": frames,
        "acquisition_datetime": when,
        "image_role": role,
    }


IMAGES = [
    image(1, "pre", "2025-03-14T09:14:10"),
    image(1, "other", "2025-03-14T09:16:05", series=2, frames=48),
    image(2, "post", "2025-03-14T09:18:30"),
]
PERFORMER_SIGNED = [{"capacity": "performer", "signer": "Dana Rivera", "signed_at": "2025-03-14T09:40:00-05:00"}]


def record(
    report: dict[str, Any],
    *,
    images: list[dict[str, Any]] = IMAGES,
    version: int = 1,
    status: str = "final",
    signatures: list[dict[str, Any]] = PERFORMER_SIGNED,
) -> ProcedureRecord:
    loaded = ProcedureCreateSchema().load(report)
    roles = {i["image_role"] for i in images}
    result = code_procedure(coding_input(loaded, len(images), "pre" in roles, "post" in roles), default_catalog())
    return ProcedureRecord(
        procedure_id=PID,
        version=version,
        status=status,
        report=report,
        coding=result,
        base_url=BASE_URL,
        identifier_system=ID_SYSTEM,
        signatures=signatures,
        images=images,
    )


def _bilateral() -> ProcedureRecord:
    report = full_report(
        laterality="bilateral",
        indications=[{"code": "M17.0", "description": "Bilateral primary osteoarthritis of knee"}],
    )
    bilateral = [
        *IMAGES,
        image(3, "pre", "2025-03-14T09:19:00", side="L"),
        image(4, "post", "2025-03-14T09:20:30", side="L"),
    ]
    return record(report, images=bilateral)


def _trainee() -> ProcedureRecord:
    report = full_report(
        performer={"name": "Sam Okafor", "local_id": "RES-0193", "credentials": "MD", "in_training": True},
        supervisor={"name": "Dana Rivera", "npi": "1234567893", "credentials": "MD"},
    )
    signatures = [
        {"capacity": "performer", "signer": "Sam Okafor", "signed_at": "2025-03-14T09:35:00-05:00"},
        {"capacity": "supervisor", "signer": "Dana Rivera", "signed_at": "2025-03-14T11:02:00-05:00"},
    ]
    return record(report, signatures=signatures)


def _representative() -> ProcedureRecord:
    consent = copy.deepcopy(full_report()["consent"]) | {
        "signer": "representative",
        "representative_name": "Robert Example",
        "representative_relationship": "son (health care power of attorney)",
        "document": {"content_type": "application/pdf", "data": base64.b64encode(PDF).decode(), "title": "Consent"},
    }
    return record(full_report(consent=consent))


def _prp() -> ProcedureRecord:
    injectates = [{"drug": "prp_autologous", "dose": 4, "dose_unit": "mL", "volume_ml": 4}]
    consent = copy.deepcopy(full_report()["consent"]) | {"off_label_disclosed": True, "abn_signed": True}
    return record(full_report(injectates=injectates, consent=consent))


def _self_pay() -> ProcedureRecord:
    return record(full_report(coverage={"kind": "self_pay"}))


def _educational() -> ProcedureRecord:
    return record(full_report(educational=True))


def _amended() -> ProcedureRecord:
    instructions = "Relative rest of the right knee for 72 hours; ice as needed. Review in 4 weeks."
    signatures = [
        *PERFORMER_SIGNED,
        {"capacity": "performer", "signer": "Dana Rivera", "signed_at": "2025-03-15T08:10:00-05:00"},
    ]
    signatures[0] = signatures[0] | {"voided_at": "2025-03-15T08:00:00-05:00"}
    return record(
        full_report(post_procedure_instructions=instructions), version=3, status="amended", signatures=signatures
    )


CASES: dict[str, Callable[[], ProcedureRecord]] = {
    "example": lambda: record(full_report()),
    "bilateral_knee": _bilateral,
    "trainee_supervisor": _trainee,
    "representative_consent": _representative,
    "prp_off_label": _prp,
    "self_pay": _self_pay,
    "educational": _educational,
    "amended": _amended,
}


def _by_type(resources: list[dict[str, Any]], resource_type: str) -> list[dict[str, Any]]:
    return [r for r in resources if r["resourceType"] == resource_type]


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    resources = [to_json(r) for r in map_procedure(CASES[case]())]
    path = GOLDEN / f"{case}.json"
    text = json.dumps(resources, indent=2, ensure_ascii=False) + "\n"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"no golden file {path}: run with USGI_UPDATE_GOLDEN=1 and review it"
    assert json.loads(path.read_text()) == resources, f"{case} differs from {path.name} (USGI_UPDATE_GOLDEN=1)"


@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip_r4b(case: str) -> None:
    for data in map_json(CASES[case]()):
        model = model_class(data["resourceType"]).model_validate(data)
        assert to_json(model) == data, f"{data['resourceType']}/{data['id']} changes in an R4B round trip"


def test_mapping_is_deterministic_and_amendment_keeps_ids() -> None:
    first, again = map_json(CASES["example"]()), map_json(CASES["example"]())
    assert first == again
    amended = map_json(CASES["amended"]())
    assert [(r["resourceType"], r["id"]) for r in amended] == [(r["resourceType"], r["id"]) for r in first]
    assert {r["meta"]["versionId"] for r in amended if r["resourceType"] != "CodeSystem"} == {"3"}
    assert first != amended


def test_educational_has_no_claim_and_self_pay_coverage_is_patient_paid() -> None:
    assert not _by_type(map_json(CASES["educational"]()), "Claim")
    resources = map_json(CASES["self_pay"]())
    (cov,) = _by_type(resources, "Coverage")
    assert cov["type"]["coding"][0]["code"] == "pay" and cov["payor"] == [{"reference": f"Patient/{PID}-patient"}]
    (claim,) = _by_type(resources, "Claim")
    assert claim["insurance"][0]["coverage"]["reference"] == f"Coverage/{PID}-coverage"


def test_example_claim_and_procedure_carry_the_coding() -> None:
    resources = map_json(CASES["example"]())
    (claim,) = _by_type(resources, "Claim")
    codes = [
        (i["productOrService"]["coding"][0]["code"], [m["coding"][0]["code"] for m in i.get("modifier", [])])
        for i in claim["item"]
    ]
    assert codes == [("20611", ["RT"]), ("J3301", ["JZ"])]
    (proc,) = _by_type(resources, "Procedure")
    assert [c["code"] for c in proc["code"]["coding"]] == ["20611", "231274008"]
    (study,) = _by_type(resources, "ImagingStudy")
    roles = [i["extension"][0]["valueCoding"]["code"] for s in study["series"] for i in s["instance"]]
    assert sorted(roles) == ["other", "post", "pre"]
    meds = _by_type(resources, "MedicationAdministration")
    assert [m["contained"][0]["batch"]["lotNumber"] for m in meds] == ["KX2481", "LD7731"]


def test_bundle() -> None:
    bundle = to_json(to_bundle(map_procedure(CASES["example"]()), base_url=BASE_URL))
    assert bundle["type"] == "collection"
    assert bundle["entry"][0]["fullUrl"].startswith(f"{BASE_URL}/fhir/CodeSystem/")


def test_independent_validator_accepts_every_golden_file(fhir_validator: Path) -> None:  # noqa: F811
    resources: list[dict[str, Any]] = []
    names: list[str] = []
    for case in sorted(CASES):
        for data in json.loads((GOLDEN / f"{case}.json").read_text()):
            resources.append(data)
            names.append(f"{case}-{data['resourceType']}-{data['id']}")
    # Plus what goes to the EHR: each case's transaction Bundle, whole and in Medplum-sized stages, so the Bundle
    # rules (fullUrl, request, urn:uuid references) are proven too.
    for case in sorted(CASES):
        bundle = ehr_transaction(map_json(CASES[case]()), ID_SYSTEM)
        resources.append(bundle)
        names.append(f"{case}-ehr-transaction")
        answered: dict[str, str] = {}  # the ids an EHR would have given the entries of the earlier stages
        for n, stage in enumerate(plan(bundle, 8), 1):
            resources.append(stage_bundle(bundle, stage, answered))
            names.append(f"{case}-ehr-stage-{n}")
            for i in stage:
                entry = bundle["entry"][i]
                answered[entry["fullUrl"]] = f"{entry['resource']['resourceType']}/ehr-{i}"
    verdict = validate_resources(resources, fhir_validator, names)
    assert verdict.ok, "the independent FHIR validator refused the golden output:\n" + verdict.report()
