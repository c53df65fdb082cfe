"""Finalising publishes: the report is coded, mapped to FHIR, each resource versioned, and (with an EHR) queued
in the outbox, all in the finalising transaction. Every stored resource passes fhir.resources and the independent
validator."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from sqlalchemy import select

from service.config import Settings
from service.fhir.mapping import to_model
from service.fhir.transaction import full_url
from service.models import FhirResource, OutboxMessage, ProcedureVersion
from tests.fhirvalidate import fhir_validator, validate_resources  # noqa: F401  (fixture)
from tests.procedureutil import EXAMPLE, full_report

EHR = "http://ehr.example.org/fhir"


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings.for_tests(
        tmp_path,
        database_url=database_url,
        timezone="America/Chicago",
        ehr_fhir_base=EHR,
        public_url="https://usgi.clinic.example",
        identifier_system="https://clinic.example.org/usgi",
    )


def _final(client, auth, body):  # type: ignore[no-untyped-def]
    created = client.post("/api/procedures", json=body, headers=auth["clinician"])
    assert created.status_code == 201, created.get_json()
    done = client.post(f"/api/procedures/{created.get_json()['id']}/finalize", headers=auth["clinician"])
    assert done.status_code == 200, done.get_json()
    return done


def _current(services, pid: str) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    with services.session_factory() as s:
        rows = s.scalars(select(FhirResource).where(FhirResource.current.is_(True))).all()
        return {f"{r.resource_type}/{r.resource_id}": r.body for r in rows if r.procedure_id in (pid, None)}


def _claim_codes(resources: dict[str, dict]) -> list[tuple[str, tuple[str, ...]]]:
    [claim] = [r for k, r in resources.items() if k.startswith("Claim/")]
    return [
        (i["productOrService"]["coding"][0]["code"], tuple(m["coding"][0]["code"] for m in i.get("modifier", [])))
        for i in claim["item"]
    ]


def test_a_final_report_with_pre_and_post_images_is_coded_guided_and_published(
    client,
    auth,
    modality,
    services,
    fhir_validator,  # noqa: F811
):
    study = {"AccessionNumber": "ACC25031401", "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.4242"}
    pre = modality.image("ge_jpeg2k", SeriesDescription="PRE", **study)
    post = modality.image("sonosite_cine", SeriesDescription="POST", **study)
    modality.send(pre, post)
    pid = _final(client, auth, full_report()).get_json()["id"]

    resources = _current(services, pid)
    kinds = {k.split("/")[0] for k in resources}
    assert {"Patient", "Practitioner", "Organization", "Coverage", "Procedure", "MedicationAdministration"} <= kinds
    assert {"ImagingStudy", "DocumentReference", "Consent", "Claim"} <= kinds
    assert _claim_codes(resources) == [("20611", ("RT",)), ("J3301", ("JZ",))]
    [study] = [r for k, r in resources.items() if k.startswith("ImagingStudy/")]
    assert study["numberOfInstances"] == 2
    assert all(r["meta"]["versionId"] == "1" and r["meta"]["lastUpdated"].endswith("Z") for r in resources.values())
    with services.session_factory() as s:
        coding = s.scalars(select(ProcedureVersion.coding).where(ProcedureVersion.version == 2)).one()
    assert [line["code"] for line in coding["lines"]] == ["20611", "J3301"]
    # The same coding, with the rules behind it, is what an auditor reads on the procedure.
    shown = client.get(f"/api/procedures/{pid}", headers=auth["auditor"]).get_json()["coding"]
    assert shown == coding and "US-GUIDED-JOINT" in shown["lines"][0]["rules"]

    for body in resources.values():
        to_model(body)  # fhir.resources R4B accepts every one
    verdict = validate_resources(resources.values(), fhir_validator)
    assert verdict.ok, verdict.report()


def test_without_recorded_images_the_joint_is_down_coded(client, auth, services):
    final = _final(client, auth, full_report()).get_json()
    assert _claim_codes(_current(services, final["id"]))[0] == ("20610", ("RT",))
    [finding] = [f for f in final["coding"]["findings"] if f["rule"] == "US-NOT-RECORDED-DOWNCODE"]
    assert finding["severity"] == "warning"
    draft = client.post("/api/procedures", json=full_report(), headers=auth["clinician"]).get_json()
    assert draft["coding"] is None  # a draft is not coded


def test_an_amendment_versions_only_what_changed_and_queues_the_whole_set(client, auth, services):
    final = _final(client, auth, full_report())
    pid = final.get_json()["id"]
    before = _current(services, pid)
    injectates = copy.deepcopy(EXAMPLE["injectates"])
    injectates[0]["lot_number"] = "KX2418"
    amended = client.post(
        f"/api/procedures/{pid}/amend",
        json={"reason": "lot number", "changes": {"injectates": injectates}},
        headers={**auth["clinician"], "If-Match": final.headers["ETag"]},
    )
    assert amended.status_code == 200, amended.get_json()
    after = _current(services, pid)
    assert set(after) == set(before)  # the same resources, not new ones
    bumped = {k for k in after if after[k]["meta"]["versionId"] == "2"}
    assert next(k for k in after if k.startswith("Patient/")) not in bumped
    medadmin = next(k for k in after if k.endswith("-medadmin-1"))
    assert medadmin in bumped and "KX2418" in repr(after[medadmin]) and "KX2481" in repr(before[medadmin])
    with services.session_factory() as s:
        history = s.scalars(select(FhirResource.version_id).where(FhirResource.resource_id == after[medadmin]["id"]))
        assert sorted(history) == [1, 2]
        messages = s.scalars(select(OutboxMessage).order_by(OutboxMessage.id)).all()
        assert [(m.status, m.version) for m in messages] == [("pending", 2), ("pending", 3)]
        first, second = (m.bundle for m in messages)
    # Each message stands alone: the whole set the EHR holds (not our CodeSystems), conditional on identifiers.
    pushed = [k for k in before if not k.startswith("CodeSystem/")]
    for bundle in (first, second):
        assert bundle["type"] == "transaction" and len(bundle["entry"]) == len(pushed)
        assert all("ifNoneExist" in e["request"] or "?identifier=" in e["request"]["url"] for e in bundle["entry"])
    # What differs between the two is exactly what the amendment changed.
    differ = [n for n, (a, b) in enumerate(zip(first["entry"], second["entry"], strict=True)) if a != b]
    assert sorted(second["entry"][n]["fullUrl"] for n in differ) == sorted(full_url(*k.split("/")) for k in bumped)
    [med] = [e for e in second["entry"] if e["fullUrl"] == full_url(*medadmin.split("/"))]
    assert "KX2418" in repr(med["resource"])


def test_an_educational_procedure_has_no_claim_and_nothing_is_queued_without_an_ehr(
    client, auth, services, tmp_path, database_url
):
    pid = _final(client, auth, full_report(educational=True)).get_json()["id"]
    resources = _current(services, pid)
    assert "Procedure/" + pid + "-procedure" in resources
    assert not any(k.startswith("Claim/") for k in resources)
