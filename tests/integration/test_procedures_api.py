"""Procedure reports over HTTP: create, validate (400 naming fields), edit with If-Match, sign, co-sign, amend,
cancel, versions, and the audit trail, on the real database (SQLite or PostgreSQL)."""

from __future__ import annotations

import copy

from sqlalchemy import func, select

from service.auth import Role, create_token
from service.models import AuditEvent, Procedure, ProcedureVersion
from tests.procedureutil import EXAMPLE, documenting_part, full_report, scheduled


def _create(client, headers, body):  # type: ignore[no-untyped-def]
    resp = client.post("/api/procedures", json=body, headers=headers)
    assert resp.status_code == 201, resp.get_json()
    return resp


def _count(services, model) -> int:  # type: ignore[no-untyped-def]
    with services.session_factory() as s:
        return s.scalar(select(func.count()).select_from(model)) or 0


def _patch(client, headers, pid, body, etag):  # type: ignore[no-untyped-def]
    return client.patch(f"/api/procedures/{pid}", json=body, headers={**headers, "If-Match": etag})


# --- creating ----------------------------------------------------------------------------------------------------


def test_a_complete_report_is_created_as_a_draft_with_its_identifiers(client, auth):
    resp = _create(client, auth["clinician"], full_report())
    body = resp.get_json()
    assert body["status"] == "documented" and body["version"] == 1
    assert resp.headers["ETag"] == '"1"'
    assert resp.headers["Location"] == f"/api/procedures/{body['id']}"
    assert body["accession_number"] == "ACC25031401"
    assert body["study_instance_uid"].startswith("2.25.")
    assert body["finalisation_problems"] == {}
    report = body["report"]
    assert report["site"] == "knee_joint" and report["laterality"] == "right"
    assert report["injectates"][0]["lot_number"] == "KX2481" and report["injectates"][0]["dose"] == 40
    assert report["consent"]["obtained_at"] == "2025-03-14T09:05:00-05:00"
    got = client.get(f"/api/procedures/{body['id']}", headers=auth["auditor"])
    assert got.status_code == 200 and got.get_json()["report"] == report and got.headers["ETag"] == '"1"'


def test_an_order_without_report_is_scheduled_and_gets_an_accession_number(client, auth):
    body = _create(client, auth["ehr"], scheduled(accession_number=None)).get_json()
    assert body["status"] == "scheduled"
    assert 1 <= len(body["accession_number"]) <= 16 and body["accession_number"] == body["report"]["accession_number"]
    assert "guidance" in body["finalisation_problems"] and "consent" in body["finalisation_problems"]
    other = _create(client, auth["ehr"], scheduled(accession_number=None)).get_json()
    assert other["accession_number"] != body["accession_number"]
    assert other["study_instance_uid"] != body["study_instance_uid"]


def test_a_visit_number_alone_is_enough_to_create_a_procedure(client, auth):
    body = {"patient": {"identifier": EXAMPLE["patient"]["identifier"]}, "encounter_identifier": {"value": "V77"}}
    created = _create(client, auth["clinician"], body).get_json()
    assert created["status"] == "scheduled" and created["report"]["encounter_identifier"] == {"value": "V77"}


def test_an_invalid_body_is_400_naming_every_bad_field_and_saves_nothing(client, auth, services):
    body = full_report(laterality=None)
    body["patient"] = {**body["patient"], "birth_date": "19/07/1956"}
    body["injectates"] = copy.deepcopy(body["injectates"])
    body["injectates"][1]["dose_unit"] = "tablets"
    body["guidance"] = {**body["guidance"], "needle_gauge": 50}
    body["indications"] = [{"code": "M17.12"}]
    resp = client.post("/api/procedures", json=body, headers=auth["clinician"])
    assert resp.status_code == 400
    err = resp.get_json()
    assert err["code"] == "bad_request" and err["status"] == 400
    assert set(err["errors"]) >= {"patient.birth_date", "injectates.1.dose_unit", "guidance.needle_gauge", "laterality"}
    assert "paired site knee_joint" in " ".join(err["errors"]["laterality"])
    assert _count(services, Procedure) == 0 and _count(services, ProcedureVersion) == 0


def test_an_icd10_side_that_contradicts_the_laterality_is_refused_with_a_clear_message(client, auth):
    resp = client.post("/api/procedures", json=full_report(indications=[{"code": "M17.12"}]), headers=auth["clinician"])
    assert resp.status_code == 400
    message = " ".join(resp.get_json()["errors"]["indications.0.code"])
    assert "left" in message and "right" in message


def test_a_body_that_is_not_a_json_object_is_400(client, auth):
    h = auth["clinician"]
    assert (
        client.post("/api/procedures", data="{not json", headers={**h, "Content-Type": "application/json"}).status_code
        == 400
    )
    resp = client.post("/api/procedures", json=[1, 2], headers=h)
    assert resp.status_code == 400 and resp.get_json()["errors"]
    resp = client.post("/api/procedures", json={**full_report(), "colour": "blue"}, headers=h)
    assert resp.status_code == 400 and "colour" in resp.get_json()["errors"]


def test_an_unknown_procedure_is_a_404_json_error(client, auth):
    resp = client.get("/api/procedures/doesnotexist", headers=auth["clinician"])
    assert resp.status_code == 404 and resp.get_json()["code"] == "not_found"


# --- editing -----------------------------------------------------------------------------------------------------


def test_patch_needs_if_match_and_a_stale_one_is_412(client, auth, services):
    h = auth["clinician"]
    created = _create(client, h, scheduled())
    pid, etag = created.get_json()["id"], created.headers["ETag"]
    no_match = client.patch(f"/api/procedures/{pid}", json={"place_of_service": "22"}, headers=h)
    assert no_match.status_code == 428 and no_match.get_json()["code"] == "precondition_required"
    first = _patch(client, h, pid, {"place_of_service": "22"}, etag)
    assert first.status_code == 200 and first.headers["ETag"] == '"2"'
    # A second editor who read version 1 does not overwrite the first one's change.
    second = _patch(client, h, pid, {"place_of_service": "24"}, etag)
    assert second.status_code == 412 and second.get_json()["code"] == "precondition_failed"
    now = client.get(f"/api/procedures/{pid}", headers=h).get_json()
    assert now["report"]["place_of_service"] == "22" and now["version"] == 2


def test_patch_documents_an_order_and_an_invalid_merge_changes_nothing(client, auth):
    h = auth["clinician"]
    created = _create(client, h, scheduled())
    pid, etag = created.get_json()["id"], created.headers["ETag"]
    bad = _patch(client, h, pid, {"laterality": "left"}, etag)  # M17.11 is the right knee
    assert bad.status_code == 400 and "indications.0.code" in bad.get_json()["errors"]
    unchanged = client.get(f"/api/procedures/{pid}", headers=h)
    assert unchanged.headers["ETag"] == etag and unchanged.get_json()["report"]["laterality"] == "right"
    done = _patch(client, h, pid, documenting_part(), etag)
    assert done.status_code == 200, done.get_json()
    assert done.get_json()["status"] == "documented" and done.get_json()["finalisation_problems"] == {}
    assert _patch(client, h, pid, {}, done.headers["ETag"]).status_code == 400


# --- signing, amending, cancelling -------------------------------------------------------------------------------


def test_finalize_refuses_an_incomplete_report_naming_what_is_missing(client, auth):
    h = auth["clinician"]
    body = full_report(post_procedure_instructions=None)
    pid = _create(client, h, body).get_json()["id"]
    resp = client.post(f"/api/procedures/{pid}/finalize", headers=h)
    assert resp.status_code == 422
    assert resp.get_json()["code"] == "incomplete" and set(resp.get_json()["errors"]) == {"post_procedure_instructions"}
    assert client.get(f"/api/procedures/{pid}", headers=h).get_json()["status"] == "documented"


def test_finalize_signs_and_a_final_report_changes_only_by_amendment(client, auth):
    h = auth["clinician"]
    pid = _create(client, h, full_report()).get_json()["id"]
    final = client.post(f"/api/procedures/{pid}/finalize", headers=h)
    assert final.status_code == 200
    body = final.get_json()
    assert body["status"] == "final" and body["version"] == 2
    [signature] = body["signatures"]
    assert (
        signature["capacity"] == "performer" and signature["signer"] == "test-clinician" and signature["version"] == 1
    )
    etag = final.headers["ETag"]
    assert _patch(client, h, pid, {"place_of_service": "22"}, etag).status_code == 409
    assert client.post(f"/api/procedures/{pid}/finalize", headers=h).status_code == 409
    assert client.post(f"/api/procedures/{pid}/cancel", json={"reason": "x"}, headers=h).status_code == 409

    amend = {
        "reason": "lot number transcribed wrongly",
        "changes": {"injectates": copy.deepcopy(EXAMPLE["injectates"])},
    }
    amend["changes"]["injectates"][0]["lot_number"] = "KX2418"
    assert client.post(f"/api/procedures/{pid}/amend", json=amend, headers=h).status_code == 428
    assert (
        client.post(f"/api/procedures/{pid}/amend", json={"changes": {}}, headers={**h, "If-Match": etag}).status_code
        == 400
    )
    amended = client.post(f"/api/procedures/{pid}/amend", json=amend, headers={**h, "If-Match": etag})
    assert amended.status_code == 200, amended.get_json()
    assert amended.get_json()["status"] == "amended" and amended.headers["ETag"] == '"3"'
    assert amended.get_json()["signatures"][-1]["capacity"] == "amender"

    versions = client.get(f"/api/procedures/{pid}/versions", headers=auth["auditor"]).get_json()
    assert [(v["version"], v["status"], v["action"]) for v in versions] == [
        (1, "documented", "create"),
        (2, "final", "finalize"),
        (3, "amended", "amend"),
    ]
    assert versions[1]["report"]["injectates"][0]["lot_number"] == "KX2481"
    assert versions[2]["report"]["injectates"][0]["lot_number"] == "KX2418"
    assert versions[2]["reason"] == "lot number transcribed wrongly"


def test_a_trainees_report_is_final_only_with_the_supervisors_co_signature(client, auth, services):
    h = auth["clinician"]
    supervisor = {"Authorization": f"Bearer {create_token(services, Role.CLINICIAN, 'dr-supervisor')}"}
    performer = {**EXAMPLE["performer"], "in_training": True, "name": "Ari Trainee"}
    sup = {"name": "Sam Okafor", "npi": "1456789019", "credentials": "MD"}
    created = _create(client, h, full_report(performer=performer, supervisor=sup))
    pid = created.get_json()["id"]
    assert client.post(f"/api/procedures/{pid}/cosign", headers=supervisor).status_code == 409  # nothing signed yet
    signed = client.post(f"/api/procedures/{pid}/finalize", headers=h)
    assert signed.status_code == 200
    assert signed.get_json()["status"] == "documented" and signed.get_json()["awaiting_signature"] == "supervisor"
    same_person = client.post(f"/api/procedures/{pid}/cosign", headers=h)
    assert same_person.status_code == 409 and "another person" in same_person.get_json()["message"]
    # An edit after the trainee signed voids that signature: the trainee signs the new version again.
    edited = _patch(client, h, pid, {"place_of_service": "22"}, signed.headers["ETag"])
    assert edited.status_code == 200 and edited.get_json()["awaiting_signature"] is None
    assert edited.get_json()["signatures"][0]["voided_at"] is not None
    assert client.post(f"/api/procedures/{pid}/cosign", headers=supervisor).status_code == 409
    assert client.post(f"/api/procedures/{pid}/finalize", headers=h).status_code == 200
    final = client.post(f"/api/procedures/{pid}/cosign", headers=supervisor)
    assert final.status_code == 200 and final.get_json()["status"] == "final"
    live = [(g["capacity"], g["signer"]) for g in final.get_json()["signatures"] if g["voided_at"] is None]
    assert live == [("performer", "test-clinician"), ("supervisor", "dr-supervisor")]


def test_a_report_without_a_trainee_is_not_co_signed(client, auth):
    pid = _create(client, auth["clinician"], full_report()).get_json()["id"]
    resp = client.post(f"/api/procedures/{pid}/cosign", headers=auth["clinician"])
    assert resp.status_code == 409


def test_an_educational_procedure_is_kept_as_such(client, auth):
    body = _create(client, auth["clinician"], full_report(educational=True)).get_json()
    assert body["educational"] is True
    final = client.post(f"/api/procedures/{body['id']}/finalize", headers=auth["clinician"]).get_json()
    assert final["status"] == "final" and final["educational"] is True


def test_cancel_needs_a_reason_and_takes_the_procedure_off_its_path(client, auth):
    h = auth["ehr"]
    pid = _create(client, h, scheduled()).get_json()["id"]
    assert client.post(f"/api/procedures/{pid}/cancel", json={}, headers=h).status_code == 400
    resp = client.post(f"/api/procedures/{pid}/cancel", json={"reason": "patient declined"}, headers=h)
    assert resp.status_code == 200 and resp.get_json()["status"] == "cancelled"
    assert resp.get_json()["cancel_reason"] == "patient declined"
    assert _patch(client, auth["clinician"], pid, {"place_of_service": "22"}, resp.headers["ETag"]).status_code == 409


def test_a_finalize_based_on_an_old_version_is_412(client, auth):
    h = auth["clinician"]
    created = _create(client, h, full_report())
    pid, etag = created.get_json()["id"], created.headers["ETag"]
    assert _patch(client, h, pid, {"place_of_service": "22"}, etag).status_code == 200
    assert client.post(f"/api/procedures/{pid}/finalize", headers={**h, "If-Match": etag}).status_code == 412


# --- listing, roles and the audit trail --------------------------------------------------------------------------


def test_list_filters_by_patient_status_and_accession(client, auth):
    h = auth["clinician"]
    _create(client, h, full_report())
    _create(client, h, scheduled(accession_number="ACC2"))
    other = scheduled(accession_number="ACC3")
    other["patient"] = {"identifier": {"system": "urn:oid:1.2.3", "value": "OTHER"}}
    _create(client, h, other)

    def ids(**query):  # type: ignore[no-untyped-def]
        resp = client.get("/api/procedures", query_string=query, headers=auth["auditor"])
        assert resp.status_code == 200
        return sorted(p["accession_number"] for p in resp.get_json()["items"])

    assert ids(patient_id="MRN-0042917") == ["ACC2", "ACC25031401"]
    assert ids(status="scheduled") == ["ACC2", "ACC3"]
    assert ids(accession_number="ACC3") == ["ACC3"]
    assert client.get("/api/procedures?patientid=X", headers=h).status_code == 400


def test_reads_and_changes_are_in_the_audit_trail_without_patient_data(client, auth, services):
    h = auth["clinician"]
    created = _create(client, h, full_report())
    pid = created.get_json()["id"]
    _patch(client, h, pid, {"place_of_service": "22"}, created.headers["ETag"])
    client.get(f"/api/procedures/{pid}", headers=auth["auditor"])
    client.get(f"/api/procedures/{pid}/versions", headers=auth["auditor"])
    with services.session_factory() as s:
        events = s.scalars(select(AuditEvent).where(AuditEvent.entity_id == pid).order_by(AuditEvent.id)).all()
        trail = [(e.action, e.actor, e.role, e.source) for e in events]
        details = [e.detail for e in events]
    assert trail == [
        ("create", "test-clinician", "clinician", "127.0.0.1"),
        ("update", "test-clinician", "clinician", "127.0.0.1"),
        ("read", "test-auditor", "auditor", "127.0.0.1"),
        ("read_versions", "test-auditor", "auditor", "127.0.0.1"),
    ]
    assert details[1]["fields"] == ["place_of_service"]
    assert "MRN-0042917" not in repr(details) and "Margaret" not in repr(details)


def test_the_openapi_document_publishes_the_report_schema(client, auth):
    spec = client.get("/openapi.json", headers=auth["clinician"]).get_json()
    schemas = spec["components"]["schemas"]
    assert {"ProcedureCreate", "ProcedurePatch", "Amend", "ImageLink", "Procedure"} <= set(schemas)
    props = schemas["ProcedureCreate"]["properties"]
    assert {"patient", "site", "laterality", "guidance", "injectates", "indications", "consent", "times"} <= set(props)
    assert "If-Match" in {p["name"] for p in spec["paths"]["/api/procedures/{procedure_id}"]["patch"]["parameters"]}


def test_two_editors_at_the_same_moment_one_wins_the_other_gets_412(app, auth):
    import threading

    setup = app.test_client()
    created = _create(setup, auth["clinician"], scheduled())
    pid = created.get_json()["id"]
    for round_ in range(5):
        etag = setup.get(f"/api/procedures/{pid}", headers=auth["clinician"]).headers["ETag"]
        barrier = threading.Barrier(2)
        codes: list[int] = []

        def edit(value: str, barrier: threading.Barrier, codes: list[int], etag: str) -> None:
            client = app.test_client()  # one per thread, as two browsers would be
            barrier.wait()
            codes.append(_patch(client, auth["clinician"], pid, {"place_of_service": value}, etag).status_code)

        threads = [threading.Thread(target=edit, args=(v, barrier, codes, etag)) for v in ("22", "24")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert sorted(codes) == [200, 412], round_
    assert setup.get(f"/api/procedures/{pid}", headers=auth["clinician"]).get_json()["version"] == 6
