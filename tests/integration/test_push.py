"""The outbox reaches the EHR: a real FHIR R4 server (the sandbox, Medplum's router) on loopback, with outages.

The EHR assigns its own ids: every resource is found there by its business identifier, once, and references point
at the EHR's ids; the EHR's own Patient is matched, never overwritten. Nothing is lost across 503s, 429s and
dropped connections; a resend after a lost answer changes nothing; versions of a procedure arrive in order; a
refused Bundle waits for an administrator; concurrent workers send each message once; `usgi worker` runs as its
own process and stops cleanly on SIGTERM. Deliveries run at the default ``USGI_PUSH_MAX_ENTRIES`` (8, Medplum's
cap, which the sandbox enforces), so a procedure's resources go as several transactions.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import select

from service.bootstrap import build_services
from service.config import Settings
from service.db import stored_utc
from service.fhir import push, transaction
from service.fhir.mapping import to_model
from service.models import FhirResource, OutboxMessage
from tests import fhirsandbox
from tests.fhirsandbox import Sandbox
from tests.fhirvalidate import fhir_validator, validate_resources  # noqa: F401  (fixture)
from tests.procedureutil import EXAMPLE, full_report

ROOT = Path(__file__).resolve().parents[2]
# The sandbox fixtures, under the names the tests ask for.
sandbox_server = fhirsandbox.sandbox_server
sandbox = fhirsandbox.sandbox
FAST = {"push_timeout_seconds": 5.0, "push_backoff_seconds": 0.05, "push_backoff_max_seconds": 0.4}


@pytest.fixture
def settings(tmp_path: Path, database_url: str, sandbox: Sandbox) -> Settings:
    return Settings.for_tests(
        tmp_path,
        database_url=database_url,
        ehr_fhir_base=sandbox.base,
        public_url="https://usgi.clinic.example",
        identifier_system="https://clinic.example.org/usgi",
        **FAST,
    )


def _final(client, auth) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    created = client.post("/api/procedures", json=full_report(), headers=auth["clinician"])
    assert created.status_code == 201, created.get_json()
    pid = created.get_json()["id"]
    done = client.post(f"/api/procedures/{pid}/finalize", headers=auth["clinician"])
    assert done.status_code == 200, done.get_json()
    return pid, done.headers["ETag"]


def _amend(client, auth, pid: str, etag: str, lot: str) -> str:  # type: ignore[no-untyped-def]
    injectates = copy.deepcopy(EXAMPLE["injectates"])
    injectates[0]["lot_number"] = lot
    amended = client.post(
        f"/api/procedures/{pid}/amend",
        json={"reason": "lot number", "changes": {"injectates": injectates}},
        headers={**auth["clinician"], "If-Match": etag},
    )
    assert amended.status_code == 200, amended.get_json()
    return amended.headers["ETag"]


def _messages(services) -> list[OutboxMessage]:  # type: ignore[no-untyped-def]
    with services.session_factory() as s:
        return list(s.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))


def _drain(services) -> list[str]:  # type: ignore[no-untyped-def]
    """Deliver everything due now, one message at a time; the statuses the attempts came to."""
    seen: list[str] = []
    while outcomes := push.push_due(services, limit=1):
        seen += [o.status for o in outcomes]
    return seen


def _wait(condition: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def _our_resources(services) -> dict[str, dict[str, Any]]:  # type: ignore[no-untyped-def]
    """Our current resources that go to the EHR, by our ``Type/id``."""
    with services.session_factory() as s:
        rows = s.scalars(select(FhirResource).where(FhirResource.current.is_(True)))
        pushed = [r for r in rows if r.resource_type not in transaction.NOT_PUSHED]
        return {f"{r.resource_type}/{r.resource_id}": r.body for r in pushed}


def _content(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in ("id", "meta")}


def _in_ehr(sandbox: Sandbox, services, body: dict[str, Any]) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """The EHR's one resource with ``body``'s key identifier (fails when there are none or several)."""
    system, value = transaction.match_key(body, services.settings.identifier_system)
    found = sandbox.find(body["resourceType"], system, value)
    assert len(found) == 1, (body["resourceType"], len(found))
    return found[0]


def _ehr_id(sandbox: Sandbox, services, key: str) -> str:  # type: ignore[no-untyped-def]
    hit = _in_ehr(sandbox, services, _our_resources(services)[key])
    return f"{hit['resourceType']}/{hit['id']}"


def _stages(services, message: OutboxMessage) -> int:  # type: ignore[no-untyped-def]
    return len(transaction.plan(message.bundle, services.settings.push_max_entries))


def _assert_sandbox_holds_exactly(sandbox: Sandbox, services) -> None:  # type: ignore[no-untyped-def]
    """Each of our current resources is in the EHR once, found by its identifier, with our content and the EHR's
    ids in its references; no type holds anything else (one Patient for one MRN, however many procedures)."""
    assert all(m.status == "delivered" for m in _messages(services))
    ours = _our_resources(services)
    found = {key: _in_ehr(sandbox, services, body) for key, body in ours.items()}
    ids = {key: f"{hit['resourceType']}/{hit['id']}" for key, hit in found.items()}
    for key, body in ours.items():
        assert _content(found[key]) == _content(transaction.rewrite_references(body, ids)), key
        assert not [r for r in transaction.references(found[key]) if r in ours], key  # no reference to our ids
    for rtype in {k.split("/")[0] for k in ours}:
        assert sandbox.search_total(rtype) == len({v for k, v in ids.items() if k.startswith(f"{rtype}/")}), rtype


def test_a_final_report_is_delivered_once_and_the_ehr_holds_its_resources(
    client,
    auth,
    services,
    sandbox,
    fhir_validator,  # noqa: F811
):
    pid, _ = _final(client, auth)
    [queued] = _messages(services)
    assert queued.status == "pending" and queued.attempts == 0
    # What the EHR is sent is valid R4 for fhir.resources and for the independent validator.
    to_model(queued.bundle)
    verdict = validate_resources([queued.bundle], fhir_validator, ["outbox-bundle"])
    assert verdict.ok, verdict.report()

    assert _drain(services) == ["delivered"]
    assert _drain(services) == []  # nothing left, nothing sent again
    [m] = _messages(services)
    assert (m.status, m.attempts, m.last_status, m.last_error) == ("delivered", 1, 200, None)
    assert m.delivered_at is not None

    # More than Medplum's 8 conditional entries: several transactions, referenced resources first.
    stages = transaction.plan(queued.bundle, 8)
    assert len(stages) > 1 and all(len(stage) <= 8 for stage in stages)
    txs = sandbox.transactions()
    assert [tx["status"] for tx in txs] == [200] * len(stages)
    assert [tx["entries"] for tx in txs] == [len(stage) for stage in stages]
    ours = _our_resources(services)
    procedure = _in_ehr(sandbox, services, ours[f"Procedure/{pid}-procedure"])
    assert procedure["status"] == "completed" and procedure["id"] != f"{pid}-procedure"  # the EHR's own id
    claim = _in_ehr(sandbox, services, ours[f"Claim/{pid}-claim"])
    assert claim["patient"]["reference"] == _ehr_id(sandbox, services, f"Patient/{pid}-patient")
    assert claim["procedure"][0]["procedureReference"]["reference"] == f"Procedure/{procedure['id']}"
    assert "CodeSystem" not in {e["resource"]["resourceType"] for e in queued.bundle["entry"]}
    _assert_sandbox_holds_exactly(sandbox, services)


def test_a_repeated_delivery_changes_nothing_and_the_ehrs_patient_is_kept(client, auth, services, sandbox):
    # The EHR already knows the patient (same MRN), under its own id and with its own spelling of the name.
    mrn = EXAMPLE["patient"]["identifier"]
    theirs = {
        "resourceType": "Patient",
        "identifier": [{"system": mrn["system"], "value": mrn["value"]}],
        "name": [{"family": "EHR-SPELLING", "given": ["Kept"]}],
        "gender": "female",
    }
    created = sandbox.http.post(
        f"{sandbox.base}/Patient", json=theirs, headers={"Content-Type": "application/fhir+json"}
    )
    assert created.status_code == 201
    patient_id = created.json()["id"]

    pid, _ = _final(client, auth)
    assert _drain(services) == ["delivered"]
    ours = _our_resources(services)
    snapshot = {key: _in_ehr(sandbox, services, body) for key, body in ours.items()}
    [patient] = sandbox.find("Patient", mrn["system"], mrn["value"])
    assert patient["id"] == patient_id and patient["name"][0]["family"] == "EHR-SPELLING"  # matched, not touched
    assert snapshot[f"Procedure/{pid}-procedure"]["subject"]["reference"] == f"Patient/{patient_id}"

    # The same Bundle again (an administrator's resend, a lost answer): the same resources, the same content.
    [m] = _messages(services)
    assert push._attempt(services, requests.Session(), m.bundle, 2).status == "delivered"  # noqa: SLF001
    for key, before in snapshot.items():
        after = _in_ehr(sandbox, services, ours[key])
        assert after["id"] == before["id"] and _content(after) == _content(before), key
    assert sandbox.search_total("Patient") == 1
    assert sandbox.get(f"Patient/{patient_id}").json()["meta"]["versionId"] == created.json()["meta"]["versionId"]


def test_small_transactions_still_resolve_every_reference(client, auth, services, sandbox, modality):
    services.settings = dataclasses.replace(services.settings, push_max_entries=2)
    study = {"AccessionNumber": EXAMPLE["accession_number"], "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.4343"}
    modality.send(
        modality.image("ge_jpeg2k", SeriesDescription="PRE", **study),
        modality.image("sonosite_cine", SeriesDescription="POST", **study),
    )
    pid, _ = _final(client, auth)
    [m] = _messages(services)
    stages = transaction.plan(m.bundle, 2)
    assert _drain(services) == ["delivered"]
    assert [tx["entries"] for tx in sandbox.transactions()] == [len(stage) for stage in stages]
    assert len(stages) >= 5
    # The procedure, its report and the imaging study reference each other: one stage, larger than the cap (the
    # EHR resolves that cycle itself); every other stage keeps to the cap.
    kinds = [[m.bundle["entry"][n]["resource"]["resourceType"] for n in stage] for stage in stages]
    cycle = next(k for k in kinds if "Procedure" in k)
    assert sorted(cycle) == ["DocumentReference", "ImagingStudy", "Procedure"]
    assert all(len(k) <= 2 for k in kinds if k is not cycle)
    ours = _our_resources(services)
    study_in_ehr = _in_ehr(sandbox, services, ours[f"ImagingStudy/{pid}-imagingstudy"])
    assert study_in_ehr["procedureReference"]["reference"] == _ehr_id(sandbox, services, f"Procedure/{pid}-procedure")
    assert study_in_ehr["numberOfInstances"] == 2
    _assert_sandbox_holds_exactly(sandbox, services)


def test_an_outage_loses_nothing_and_duplicates_nothing(client, auth, services, sandbox):
    sandbox.outage("503")
    pusher = push.Pusher(services, interval=0.05)
    pusher.start()
    try:
        pids = [_final(client, auth)[0] for _ in range(3)]

        def answered(mode: str, n: int) -> Callable[[], bool]:
            return lambda: sum(r.get("outage") == mode for r in sandbox.requests()) >= n

        _wait(answered("503", 4), "503s")
        sandbox.outage("429", retry_after=1)
        _wait(answered("429", 3), "429s")
        sandbox.outage("reset")
        _wait(answered("reset", 3), "dropped connections")
        assert all(m.status == "pending" for m in _messages(services))  # nothing got through, nothing given up
        # A lost answer: the EHR applied the Bundle, we never heard; the resend must change nothing.
        sandbox.outage("reset-after", count=1)
        _wait(answered("reset-after", 1), "a lost answer")
        sandbox.end_outage()
        _wait(lambda: all(m.status == "delivered" for m in _messages(services)), "every delivery", timeout=40)
    finally:
        pusher.stop()

    messages = _messages(services)
    assert len(messages) == 3 and all(m.attempts > 1 for m in messages)
    applied = sandbox.applied()
    # Each message applied once (in its stages), plus the stages resent after the lost answer: conditional
    # entries, so the resend created nothing (the last check).
    stages = _stages(services, messages[0])
    assert 3 * stages < len(applied) <= 4 * stages
    assert [r for r in applied if r["status"] is None][0]["applied"] == 200  # the lost answer
    ours = _our_resources(services)
    for pid in pids:
        assert _in_ehr(sandbox, services, ours[f"Procedure/{pid}-procedure"])["status"] == "completed"
    assert sandbox.search_total("Patient") == 1  # one MRN, three procedures
    _assert_sandbox_holds_exactly(sandbox, services)


def test_retry_after_is_honoured(client, auth, services, sandbox):
    sandbox.outage("429", count=1, retry_after=30)
    _final(client, auth)
    before = services.clock()
    [outcome] = push.push_due(services)
    assert (outcome.status, outcome.http_status) == ("retry", 429) and outcome.delay >= 30
    [m] = _messages(services)
    assert m.status == "pending" and m.last_status == 429 and "throttled" in (m.last_error or "")
    wait = stored_utc(m.next_attempt_at) - before
    assert timedelta(seconds=30) <= wait < timedelta(seconds=31)
    assert push.push_due(services) == []  # not before the server said
    later = services.clock() + timedelta(seconds=31)
    services.clock = lambda: later
    assert _drain(services) == ["delivered"]


def test_an_amendment_arrives_after_the_original_as_new_versions(client, auth, services, sandbox):
    pid, etag = _final(client, auth)
    assert _drain(services) == ["delivered"]
    medadmin = _ehr_id(sandbox, services, f"MedicationAdministration/{pid}-medadmin-1")
    first_version = sandbox.get(medadmin).json()["meta"]["versionId"]
    assert first_version

    # Amended twice while the EHR is down: v3 must not overtake v2, nor v4 v3.
    sandbox.outage("503", retry_after=0)
    _amend(client, auth, pid, _amend(client, auth, pid, etag, "KX2418"), "KX2419")
    assert [o.status for o in push.push_due(services, limit=10)] == ["retry"]  # v3 only
    assert [m.attempts for m in _messages(services)] == [1, 1, 0]  # v4 held back, not even tried
    sandbox.end_outage()
    later = services.clock() + timedelta(seconds=5)
    services.clock = lambda: later
    assert _drain(services) == ["delivered", "delivered"]

    versions = [(m.version, m.status) for m in _messages(services)]
    assert versions == [(2, "delivered"), (3, "delivered"), (4, "delivered")]
    delivered = [m.delivered_at for m in _messages(services)]
    assert delivered == sorted(delivered)
    stages = _stages(services, _messages(services)[0])
    assert [r["status"] for r in sandbox.transactions()] == [200] * stages + [503] + [200] * 2 * stages
    now = sandbox.get(medadmin).json()
    assert "KX2419" in repr(now) and now["meta"]["versionId"] != first_version
    history = sandbox.get(f"{medadmin}/_history").json()
    lots = [repr(e["resource"]) for e in history["entry"]]  # newest first
    assert ["KX2419" in x for x in lots] == [True, False, False] and "KX2418" in lots[1]
    _assert_sandbox_holds_exactly(sandbox, services)


def test_a_refused_bundle_fails_with_the_outcome_and_an_admin_can_retry_it(
    client,
    auth,
    services,
    sandbox,
):
    pid, etag = _final(client, auth)
    # Corrupt the queued Bundle the way a mapping bug would: an element R4 does not have.
    [queued] = _messages(services)
    good = queued.bundle
    bad = copy.deepcopy(good)
    proc_entry = next(e for e in bad["entry"] if e["resource"]["resourceType"] == "Procedure")
    proc_entry["resource"]["surgeonMood"] = "cheerful"
    with services.write_lock, services.session_factory() as s, s.begin():
        s.get(OutboxMessage, queued.id).bundle = bad
    _amend(client, auth, pid, etag, "KX2418")  # v3 queued behind the refused v2

    assert _drain(services) == ["failed"]
    first, second = _messages(services)
    assert (first.status, first.last_status, first.attempts) == ("failed", 400, 1)
    assert "surgeonMood" in (first.last_error or "") and "HTTP 400: error" in first.last_error
    assert second.status == "pending" and second.attempts == 0  # held back: v3 must not land before v2
    assert sandbox.search_total("Procedure") == 0  # the procedure's transaction was refused as a whole
    assert _drain(services) == []  # no automatic retry

    listed = client.get("/api/outbox?status=failed", headers=auth["admin"])
    assert listed.status_code == 200
    [row] = listed.get_json()
    assert row["id"] == first.id and row["procedure_id"] == pid and row["version"] == 2
    assert row["status"] == "failed" and row["last_status"] == 400 and "surgeonMood" in row["last_error"]
    assert row["next_attempt_at"].endswith("+00:00") and "bundle" not in row
    assert len(client.get("/api/outbox", headers=auth["admin"]).get_json()) == 2
    assert client.get("/api/outbox?status=lost", headers=auth["admin"]).status_code == 400
    assert client.get("/api/outbox?status=failed", headers=auth["clinician"]).status_code == 403

    # The cause fixed (here: the Bundle), the administrator puts it back; then v2 and v3 arrive in order.
    with services.write_lock, services.session_factory() as s, s.begin():
        s.get(OutboxMessage, first.id).bundle = good
    retried = client.post(f"/api/outbox/{first.id}/retry", headers=auth["admin"])
    assert retried.status_code == 200 and retried.get_json()["status"] == "pending"
    assert client.post(f"/api/outbox/{first.id}/retry", headers=auth["admin"]).status_code == 409
    assert client.post("/api/outbox/999999/retry", headers=auth["admin"]).status_code == 404
    assert client.get("/api/outbox?status=failed", headers=auth["admin"]).get_json() == []
    assert _drain(services) == ["delivered", "delivered"]
    assert [m.status for m in _messages(services)] == ["delivered", "delivered"]
    _assert_sandbox_holds_exactly(sandbox, services)


def test_a_dead_workers_claim_runs_out_and_its_late_answer_is_ignored(client, auth, services, sandbox):
    _final(client, auth)
    [dead] = push.claim_next(services)  # claimed, then the worker vanished before sending
    assert push.push_due(services) == []  # leased: hidden from the other workers
    [m] = _messages(services)
    lease = push.lease_for(services.settings.push_timeout_seconds) * _stages(services, m)  # one per stage
    later = services.clock() + lease + timedelta(seconds=1)
    services.clock = lambda: later
    assert _drain(services) == ["delivered"]
    # The dead worker's claim was superseded: what it would record now is dropped.
    assert push.deliver(services, dead).status == "stale"
    [m] = _messages(services)
    assert (m.status, m.attempts) == ("delivered", 2)
    assert len(sandbox.applied()) == 2 * _stages(services, m)  # the late resend was harmless
    _assert_sandbox_holds_exactly(sandbox, services)


def test_two_workers_send_each_message_once(client, auth, settings, services, sandbox):
    for _ in range(6):
        _final(client, auth)
    # Two workers as two processes would have them: their own engines (and SQLite write-lock handles).
    others = [build_services(settings) for _ in range(2)]
    pushers = [push.Pusher(svc, interval=0.01, name=f"worker-{i}") for i, svc in enumerate(others)]
    start = threading.Barrier(len(pushers))
    for p in pushers:
        threading.Thread(target=lambda p=p: (start.wait(), p.start())).start()
    try:
        _wait(lambda: all(m.status == "delivered" for m in _messages(services)), "every delivery")
    finally:
        for p in pushers:
            p.stop()
        for svc in others:
            svc.close()
    messages = _messages(services)
    assert len(messages) == 6 and all(m.attempts == 1 for m in messages)
    assert len(sandbox.transactions()) == 6 * _stages(services, messages[0])
    _assert_sandbox_holds_exactly(sandbox, services)


def test_usgi_worker_delivers_the_queue_and_stops_on_sigterm(client, auth, settings, services, sandbox, tmp_path):
    _final(client, auth)
    env = {
        **os.environ,
        "USGI_DATA_DIR": str(tmp_path),
        "USGI_DATABASE_URL": settings.database_url,
        "USGI_EHR_FHIR_BASE": sandbox.base,
        "USGI_IDENTIFIER_SYSTEM": settings.identifier_system,
        "USGI_PUSH_BACKOFF_SECONDS": "0.05",
        "USGI_PUSH_BACKOFF_MAX_SECONDS": "0.4",
        "USGI_LOG_LEVEL": "DEBUG",
        "PYTHONUNBUFFERED": "1",
    }
    log_file = tmp_path / "worker.log"
    with log_file.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "worker"], env=env, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        _wait(lambda: [m.status for m in _messages(services)] == ["delivered"], "the queued report")
        # A report finalised while the worker runs (the API queues it) goes out too, after an outage.
        sandbox.outage("503", count=2, retry_after=0)
        _final(client, auth)
        _wait(lambda: [m.status for m in _messages(services)] == ["delivered"] * 2, "the new report")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log_file.read_text()
    assert "worker delivering the FHIR outbox" in output and "received SIGTERM" in output and "stopped" in output
    # Ids, versions and statuses only: nothing of the patient.
    patient = EXAMPLE["patient"]
    for secret in (patient["identifier"]["value"], patient["name"]["family"], patient["birth_date"]):
        assert secret not in output
    assert len(sandbox.applied()) == 2 * _stages(services, _messages(services)[0])
    _assert_sandbox_holds_exactly(sandbox, services)


def test_usgi_worker_without_an_ehr_is_a_usage_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("USGI_")} | {"USGI_DATA_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "worker"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "USGI_EHR_FHIR_BASE" in done.stderr


def test_usgi_serve_pushes_in_the_background_when_an_ehr_is_set(settings, services, tokens, sandbox, tmp_path):
    env = {
        **os.environ,
        "USGI_DATA_DIR": str(tmp_path),
        "USGI_DATABASE_URL": settings.database_url,
        "USGI_EHR_FHIR_BASE": sandbox.base,
        "USGI_IDENTIFIER_SYSTEM": settings.identifier_system,
        "USGI_HTTP_PORT": "0",
        "USGI_DICOM_HOST": "127.0.0.1",
        "USGI_DICOM_PORT": "0",
        "USGI_SHUTDOWN_GRACE_SECONDS": "2",
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("usgi-docs HTTP"), line
        url = line.split()[2].rstrip("/")
        headers = {"Authorization": f"Bearer {tokens['clinician']}"}
        with requests.Session() as http:
            created = http.post(f"{url}/api/procedures", json=full_report(), headers=headers, timeout=30)
            assert created.status_code == 201, created.text
            pid = created.json()["id"]
            done = http.post(f"{url}/api/procedures/{pid}/finalize", headers=headers, timeout=30)
            assert done.status_code == 200, done.text
        _wait(lambda: [m.status for m in _messages(services)] == ["delivered"], "the background delivery")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    [m] = _messages(services)
    assert len(sandbox.applied()) == _stages(services, m)
    assert _in_ehr(sandbox, services, _our_resources(services)[f"Procedure/{pid}-procedure"])["status"] == "completed"
