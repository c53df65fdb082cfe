"""Images link to procedures as they arrive over a real association, and again when a report is filed or changed.

The four vendor ultrasound files (GE, Philips, SonoSite) are re-stamped with new UIDs, patient, accession, visit,
laterality, markers and times, then sent with pynetdicom or dcmtk's storescu to the running SCP. Local times are
America/Chicago (the example report's -05:00 on 2025-03-14 is CDT there).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from service.config import Settings
from service.models import AuditEvent
from tests.dicomutil import storescu_cmd
from tests.dicomutil import uid as _uid
from tests.procedureutil import EXAMPLE, full_report, scheduled

MRN = EXAMPLE["patient"]["identifier"]["value"]
INJECTED = "20250314091630"  # the example's injection time, local


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings.for_tests(tmp_path, database_url=database_url, timezone="America/Chicago")


def _create(client, auth, body: dict[str, Any]) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    resp = client.post("/api/procedures", json=body, headers=auth["clinician"])
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()  # type: ignore[no-any-return]


def _image(client, auth, uid: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    resp = client.get(f"/api/images/{uid}", headers=auth["clinician"])
    assert resp.status_code == 200
    return resp.get_json()  # type: ignore[no-any-return]


def _linked(client, auth, pid: str) -> dict[str, tuple[str, str]]:  # type: ignore[no-untyped-def]
    resp = client.get(f"/api/procedures/{pid}/images", headers=auth["clinician"])
    assert resp.status_code == 200
    return {i["sop_instance_uid"]: (i["image_role"], i["link_method"]) for i in resp.get_json()}


def _queue(client, auth, **query: str) -> set[str]:  # type: ignore[no-untyped-def]
    resp = client.get("/api/images", query_string={"linked": "false", **query}, headers=auth["clinician"])
    assert resp.status_code == 200
    return {i["sop_instance_uid"] for i in resp.get_json()["items"]}


# --- the three rules (and the visit number) ----------------------------------------------------------------------


def test_by_accession_number_and_the_procedure_is_then_in_progress(client, auth, modality):
    proc = _create(client, auth, scheduled(accession_number="ACC-L1"))
    assert proc["status"] == "scheduled"
    image = modality.image("ge_jpeg2k", AccessionNumber="ACC-L1", PatientID="")
    modality.send(image)
    # A scheduled order has no injection time yet: an unmarked image is "other" until the report gives one.
    assert _linked(client, auth, proc["id"]) == {_uid(image): ("other", "accession")}
    got = client.get(f"/api/procedures/{proc['id']}", headers=auth["clinician"]).get_json()
    assert got["status"] == "in_progress" and got["image_count"] == 1


def test_by_study_instance_uid_when_the_accession_number_is_missing(client, auth, modality):
    study = "1.2.826.0.1.3680043.8.498.777001"
    proc = _create(client, auth, scheduled(study_instance_uid=study))
    assert proc["study_instance_uid"] == study
    image = modality.image("philips_palette", StudyInstanceUID=study, PatientID="")
    modality.send(image)
    assert _linked(client, auth, proc["id"]) == {_uid(image): ("other", "study")}


def test_by_visit_number_without_an_order(client, auth, modality):
    body = {"patient": {"identifier": EXAMPLE["patient"]["identifier"]}, "encounter_identifier": {"value": "V-9001"}}
    proc = _create(client, auth, body)
    image = modality.image("sonosite_cine", AdmissionID="V-9001", at="20250320110000")
    modality.send(image)
    assert _linked(client, auth, proc["id"]) == {_uid(image): ("other", "visit")}


def test_by_patient_within_the_time_window_only(client, auth, modality):
    proc = _create(client, auth, full_report(accession_number=None))
    near = modality.image("ge_rgb", at="20250314150000")  # 6 h after the procedure ended: within 12 h
    far = modality.image("ge_rgb", at="20250316091600")  # two days later
    modality.send(near, far)
    assert _linked(client, auth, proc["id"]) == {_uid(near): ("post", "patient_time")}
    assert _uid(far) in _queue(client, auth, link_status="unmatched")
    assert _image(client, auth, _uid(far))["link_detail"].startswith("no procedure matches")


def test_images_that_arrive_first_link_when_the_report_is_filed(client, auth, modality):
    image = modality.image("ge_rgb", AccessionNumber="ACC-LATE")
    modality.send(image)
    assert _uid(image) in _queue(client, auth)
    proc = _create(client, auth, full_report(accession_number="ACC-LATE"))
    assert _linked(client, auth, proc["id"]) == {_uid(image): ("pre", "accession")}
    assert _uid(image) not in _queue(client, auth)


def test_a_changed_accession_number_moves_the_link(client, auth, modality):
    created = client.post("/api/procedures", json=scheduled(accession_number="ACC-OLD"), headers=auth["clinician"])
    pid, etag = created.get_json()["id"], created.headers["ETag"]
    old, new = modality.image(AccessionNumber="ACC-OLD"), modality.image(AccessionNumber="ACC-NEW", PatientID="")
    modality.send(old, new)
    assert set(_linked(client, auth, pid)) == {_uid(old)}
    resp = client.patch(
        f"/api/procedures/{pid}", json={"accession_number": "ACC-NEW"}, headers={**auth["clinician"], "If-Match": etag}
    )
    assert resp.status_code == 200
    # The old image still matches by patient and time; the new one by accession.
    assert _linked(client, auth, pid) == {_uid(old): ("other", "patient_time"), _uid(new): ("other", "accession")}


# --- ambiguous, contradicting, manual ----------------------------------------------------------------------------


def test_two_procedures_of_the_patient_that_day_make_an_image_ambiguous(client, auth, modality):
    knee = _create(client, auth, full_report(accession_number="ACC-K"))
    hip = full_report(accession_number="ACC-H", site="hip_joint", laterality="right")
    hip["indications"] = [{"code": "M16.11"}]
    hip = _create(client, auth, hip)
    image = modality.image("ge_rgb")
    modality.send(image)
    uid = _uid(image)
    assert uid in _queue(client, auth, link_status="ambiguous")
    detail = _image(client, auth, uid)["link_detail"]
    assert knee["id"] in detail and hip["id"] in detail

    # A person resolves it, choosing the role too; then takes it back off.
    put = client.put(f"/api/procedures/{knee['id']}/images/{uid}", json={"role": "post"}, headers=auth["clinician"])
    assert put.status_code == 200 and put.get_json()["link_method"] == "manual"
    assert _linked(client, auth, knee["id"]) == {uid: ("post", "manual")}
    assert uid not in _queue(client, auth)
    gone = client.delete(f"/api/procedures/{knee['id']}/images/{uid}", headers=auth["clinician"])
    assert gone.status_code == 204
    assert uid in _queue(client, auth, link_status="unlinked") and _linked(client, auth, knee["id"]) == {}
    # Unlinked by a person: a later change of the procedure, or the other one's cancellation, leaves it alone.
    etag = client.get(f"/api/procedures/{knee['id']}", headers=auth["clinician"]).headers["ETag"]
    headers = {**auth["clinician"], "If-Match": etag}
    assert (
        client.patch(f"/api/procedures/{knee['id']}", json={"place_of_service": "22"}, headers=headers).status_code
        == 200
    )
    cancel = client.post(f"/api/procedures/{hip['id']}/cancel", json={"reason": "not done"}, headers=auth["ehr"])
    assert cancel.status_code == 200
    assert uid in _queue(client, auth, link_status="unlinked")


def test_a_left_and_a_right_procedure_on_one_order_are_told_apart_by_the_images_side(client, auth, modality):
    right = _create(client, auth, full_report(accession_number="ACC-BI"))
    left = full_report(accession_number="ACC-BI", laterality="left", indications=[{"code": "M17.12"}])
    left = _create(client, auth, left)
    img_l = modality.image("ge_rgb", AccessionNumber="ACC-BI", ImageLaterality="L")
    img_r = modality.image("ge_rgb", AccessionNumber="ACC-BI", ImageLaterality="R")
    img_u = modality.image("ge_rgb", AccessionNumber="ACC-BI")
    modality.send(img_l, img_r, img_u)
    assert set(_linked(client, auth, left["id"])) == {_uid(img_l)}
    assert set(_linked(client, auth, right["id"])) == {_uid(img_r)}
    assert _uid(img_u) in _queue(client, auth, link_status="ambiguous")


def test_a_contradicting_patient_or_side_is_flagged_never_linked(client, auth, modality):
    proc = _create(client, auth, full_report(accession_number="ACC-C"))  # right knee of MRN-0042917
    other_patient = modality.image("ge_rgb", AccessionNumber="ACC-C", PatientID="MRN-9999999")
    wrong_side = modality.image("ge_rgb", AccessionNumber="ACC-C", ImageLaterality="L")
    modality.send(other_patient, wrong_side)
    flagged = _queue(client, auth, link_status="contradiction")
    assert {_uid(other_patient), _uid(wrong_side)} <= flagged
    assert "Patient ID differs" in _image(client, auth, _uid(other_patient))["link_detail"]
    assert "left side" in _image(client, auth, _uid(wrong_side))["link_detail"]
    assert _linked(client, auth, proc["id"]) == {}

    url = f"/api/procedures/{proc['id']}/images/{_uid(wrong_side)}"
    refused = client.put(url, json={}, headers=auth["clinician"])
    assert refused.status_code == 409 and "accept_contradiction" in refused.get_json()["message"]
    forced = client.put(url, json={"accept_contradiction": True}, headers=auth["clinician"])
    assert forced.status_code == 200 and "despite" in forced.get_json()["link_detail"]
    assert set(_linked(client, auth, proc["id"])) == {_uid(wrong_side)}


def test_manual_link_of_an_unknown_image_or_procedure_is_404(client, auth, modality):
    proc = _create(client, auth, scheduled())
    assert (
        client.put(f"/api/procedures/{proc['id']}/images/1.2.3.4", json={}, headers=auth["clinician"]).status_code
        == 404
    )
    image = modality.image()
    modality.send(image)
    assert (
        client.put(f"/api/procedures/nope/images/{_uid(image)}", json={}, headers=auth["clinician"]).status_code == 404
    )
    bad_role = client.put(
        f"/api/procedures/{proc['id']}/images/{_uid(image)}", json={"role": "during"}, headers=auth["clinician"]
    )
    assert bad_role.status_code == 400 and "role" in bad_role.get_json()["errors"]


# --- pre / post ----------------------------------------------------------------------------------------------------


def test_roles_from_markers_then_from_time_then_other(client, auth, modality):
    proc = _create(client, auth, full_report(accession_number="ACC-R"))
    marked_pre = modality.image("ge_jpeg2k", AccessionNumber="ACC-R", SeriesDescription="PRE", at="20250314092000")
    marked_post = modality.image("philips_palette", AccessionNumber="ACC-R", ImageComments="needle in recess")
    before = modality.image("ge_rgb", AccessionNumber="ACC-R", at="20250314091500")
    after = modality.image("sonosite_cine", AccessionNumber="ACC-R", at="20250314091700")
    # dcmtk's storescu as the sender for one of them: a second real client.
    import shutil

    storescu = shutil.which("storescu")
    assert storescu
    modality.send(marked_pre, marked_post, before)
    subprocess.run(storescu_cmd(storescu, modality.port, after), check=True, capture_output=True, timeout=60)
    linked = _linked(client, auth, proc["id"])
    assert linked == {
        _uid(marked_pre): ("pre", "accession"),  # the marker wins over the time (09:20, after the injection)
        _uid(marked_post): ("post", "accession"),
        _uid(before): ("pre", "accession"),
        _uid(after): ("post", "accession"),
    }
    reasons = {uid: _image(client, auth, uid)["role_source"] for uid in linked}
    assert reasons == {
        _uid(marked_pre): "marker",
        _uid(marked_post): "marker",
        _uid(before): "time",
        _uid(after): "time",
    }

    # Without an injection time (a scheduled order), an unmarked image is "other".
    order = _create(client, auth, scheduled(accession_number="ACC-O"))
    unmarked = modality.image("ge_rgb", AccessionNumber="ACC-O")
    modality.send(unmarked)
    assert _linked(client, auth, order["id"]) == {_uid(unmarked): ("other", "accession")}


def test_a_changed_injection_time_reclassifies_but_a_persons_role_stands(client, auth, modality, services):
    created = client.post("/api/procedures", json=full_report(accession_number="ACC-T"), headers=auth["clinician"])
    pid = created.get_json()["id"]
    a = modality.image("ge_rgb", AccessionNumber="ACC-T", at="20250314091500")
    b = modality.image("ge_rgb", AccessionNumber="ACC-T", at="20250314091600")
    modality.send(a, b)
    assert _linked(client, auth, pid) == {_uid(a): ("pre", "accession"), _uid(b): ("pre", "accession")}
    override = client.put(f"/api/procedures/{pid}/images/{_uid(b)}", json={"role": "other"}, headers=auth["clinician"])
    assert override.status_code == 200
    times = {**EXAMPLE["times"], "injected_at": "2025-03-14T09:14:00-05:00"}
    etag = client.get(f"/api/procedures/{pid}", headers=auth["clinician"]).headers["ETag"]
    patched = client.patch(
        f"/api/procedures/{pid}", json={"times": times}, headers={**auth["clinician"], "If-Match": etag}
    )
    assert patched.status_code == 200
    assert _linked(client, auth, pid) == {_uid(a): ("post", "accession"), _uid(b): ("other", "manual")}
    with services.session_factory() as s:
        event = s.scalars(select(AuditEvent).where(AuditEvent.action == "link_image")).one()
    assert event.detail["role_overridden"] is True and event.detail["before"]["role"] == "pre"
    assert event.detail["sop_instance_uid"] == _uid(b) and event.actor == "test-clinician"


def test_a_failing_linker_never_costs_an_image(client, auth, modality, services, monkeypatch):
    import service.ingest
    from service.db import unit_of_work
    from service.procedures.linker import link_pending

    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("simulated linker failure")

    proc = _create(client, auth, full_report(accession_number="ACC-F"))
    monkeypatch.setattr(service.ingest, "link_columns", broken)
    image = modality.image("ge_rgb", AccessionNumber="ACC-F")
    modality.send(image)  # acknowledged 0x0000: stored and indexed, only not linked yet
    pending = _image(client, auth, _uid(image))
    assert pending["link_status"] is None and pending["linked"] is False and pending["sha256"]
    monkeypatch.undo()
    with unit_of_work(services.session_factory) as s:
        assert link_pending(s, services.link_settings) == 1
    assert _linked(client, auth, proc["id"]) == {_uid(image): ("pre", "accession")}


# --- the whole path: order, worklist, images ---------------------------------------------------------------------


def test_the_machine_takes_its_worklist_item_and_the_images_it_stamps_link_by_themselves(
    client, auth, modality, tmp_path, dcmtk, services
):
    from pydicom import dcmread
    from pydicom.dataset import Dataset
    from pynetdicom import AE
    from pynetdicom.sop_class import ModalityWorklistInformationFind

    order = _create(client, auth, scheduled(accession_number=None, scheduled_station_ae_title="US_ROOM_2"))
    _create(client, auth, scheduled(accession_number=None, scheduled_station_ae_title="US_ROOM_9"))

    # dcmtk findscu, as the machine in room 2 asks for its own worklist
    out = tmp_path / "mwl"
    out.mkdir()
    keys = [
        "ScheduledProcedureStepSequence[0].ScheduledStationAETitle=US_ROOM_2",
        "ScheduledProcedureStepSequence[0].Modality=US",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20250314",
        "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyInstanceUID",
        "RequestedProcedureDescription",
    ]  # fmt: skip
    args = [dcmtk["findscu"], "-W", "-aet", "FINDSCU", "-aec", "USGI", "-X", "-od", str(out)]
    for key in keys:
        args += ["-k", key]
    done = subprocess.run([*args, "127.0.0.1", str(modality.port)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    [rsp] = [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
    assert rsp.AccessionNumber == order["accession_number"] and rsp.StudyInstanceUID == order["study_instance_uid"]
    assert rsp.PatientID == MRN and str(rsp.PatientName) == "Example^Margaret A" and rsp.PatientSex == "F"
    assert rsp.RequestedProcedureDescription == "US-guided injection, right knee joint"
    # What the worklist disclosed, to whom, is in the audit trail (without the demographics themselves).
    with services.session_factory() as s:
        [event] = s.scalars(select(AuditEvent).where(AuditEvent.action == "worklist_query")).all()
    assert event.actor == "dicom:FINDSCU" and event.source == "127.0.0.1"
    assert event.detail == {"returned": 1, "procedures": [order["id"]]}

    # the same through a pynetdicom SCU
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(ModalityWorklistInformationFind)
    query = Dataset()
    query.AccessionNumber = rsp.AccessionNumber
    query.PatientName = ""
    query.StudyInstanceUID = ""
    assoc = ae.associate("127.0.0.1", modality.port, ae_title="USGI")
    assert assoc.is_established
    found = [i for s, i in assoc.send_c_find(query, ModalityWorklistInformationFind) if s.Status == 0xFF00]
    assoc.release()
    assert [(i.StudyInstanceUID, str(i.PatientName)) for i in found] == [(rsp.StudyInstanceUID, "Example^Margaret A")]

    # The machine stamps what it was given on the images it saves, and sends them with storescu.
    import shutil

    stamped = {
        "PatientID": rsp.PatientID, "PatientName": rsp.PatientName, "AccessionNumber": rsp.AccessionNumber,
        "StudyInstanceUID": rsp.StudyInstanceUID,
    }  # fmt: skip
    pre = modality.image("ge_jpeg2k", SeriesDescription="PRE", **stamped)
    post = modality.image("sonosite_cine", SeriesDescription="POST", **stamped)
    storescu = shutil.which("storescu")
    assert storescu
    for path in (pre, post):
        subprocess.run(storescu_cmd(storescu, modality.port, path), check=True, capture_output=True, timeout=60)
    assert _linked(client, auth, order["id"]) == {_uid(pre): ("pre", "accession"), _uid(post): ("post", "accession")}
    now = client.get(f"/api/procedures/{order['id']}", headers=auth["clinician"]).get_json()
    assert now["status"] == "in_progress"
