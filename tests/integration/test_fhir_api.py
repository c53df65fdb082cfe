"""The read-only FHIR R4 API under /fhir over what finalising published: metadata, read, vread, history, search
(each parameter, date prefixes, paging, _include, lenient vs strict), errors as OperationOutcome, the audit trail,
and two real FHIR clients (fhirclient, fhirpy) over a real HTTP server. Everything the API returns passes
fhir.resources (R4B models) and the independent validator."""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from werkzeug.serving import make_server

from service.config import Settings
from service.fhir.mapping import to_model
from service.models import AuditEvent
from tests.fhirvalidate import fhir_validator, validate_resources  # noqa: F401  (fixture)
from tests.procedureutil import EXAMPLE, full_report

PUBLIC = "https://usgi.clinic.example"
ID_SYSTEM = "https://clinic.example.org/usgi"
CPT = "http://www.ama-assn.org/go/cpt"


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings.for_tests(
        tmp_path,
        database_url=database_url,
        timezone="America/Chicago",
        ehr_fhir_base="",  # nothing queued: this is the read side
        public_url=PUBLIC,
        identifier_system=ID_SYSTEM,
    )


@dataclass
class World:
    """Three finalised procedures: A (2025-03-14, images, 20611), B (2025-03-20, no images, 20610) and
    C (2025-04-02, educational: no Claim), each with its own patient."""

    a: str
    b: str
    c: str
    etag_a: str
    seen: list[dict[str, Any]] = field(default_factory=list)  # every body the API returned, for the validators

    def patient(self, pid: str) -> str:
        return f"Patient/{pid}-patient"


def _report(day: str, mrn: str, accession: str, **changes: Any) -> dict[str, Any]:
    body = json.loads(json.dumps(full_report(**changes)).replace("2025-03-14", day))
    body["patient"]["identifier"]["value"] = mrn
    body["accession_number"] = accession
    return body  # type: ignore[no-any-return]


def _final(client, auth, body):  # type: ignore[no-untyped-def]
    created = client.post("/api/procedures", json=body, headers=auth["clinician"])
    assert created.status_code == 201, created.get_json()
    done = client.post(f"/api/procedures/{created.get_json()['id']}/finalize", headers=auth["clinician"])
    assert done.status_code == 200, done.get_json()
    return done


@pytest.fixture
def world(client, auth, modality) -> World:  # type: ignore[no-untyped-def]
    study = {"AccessionNumber": "ACC25031401", "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.4242"}
    modality.send(
        modality.image("ge_jpeg2k", SeriesDescription="PRE", **study),
        modality.image("sonosite_cine", SeriesDescription="POST", **study),
    )
    a = _final(client, auth, full_report())
    b = _final(client, auth, _report("2025-03-20", "MRN-0050001", "ACC25032001"))
    c = _final(client, auth, _report("2025-04-02", "MRN-0050002", "ACC25040201", educational=True))
    return World(a.get_json()["id"], b.get_json()["id"], c.get_json()["id"], a.headers["ETag"])


def _get(client, world: World, url: str, headers: dict[str, str], status: int = 200) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    resp = client.get(url.removeprefix(PUBLIC), headers=headers)
    assert resp.status_code == status, (url, resp.status_code, resp.get_data(as_text=True)[:500])
    assert resp.mimetype == "application/fhir+json", url
    body: dict[str, Any] = resp.get_json()
    world.seen.append(body)
    return body


def _ids(bundle: dict[str, Any], mode: str = "match") -> set[str]:
    return {
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle.get("entry", ())
        if e["search"]["mode"] == mode
    }


def _check_all(world: World, validator: Path) -> None:
    """Every body passes fhir.resources (R4B models) and, in one call, the independent R4 validator."""
    for body in world.seen:
        to_model(body)
    verdict = validate_resources(
        world.seen, validator, names=[f"{i}-{b['resourceType']}" for i, b in enumerate(world.seen)]
    )
    assert verdict.ok, verdict.report()


# --- metadata, read, vread, history ------------------------------------------------------------------------------


def test_metadata_is_a_truthful_capability_statement_and_needs_a_token(client, auth, world, fhir_validator):  # noqa: F811
    assert client.get("/fhir/metadata").status_code == 401
    cs = _get(client, world, "/fhir/metadata", auth["admin"])  # any role: no patient data in it
    assert cs["resourceType"] == "CapabilityStatement" and cs["fhirVersion"] == "4.0.1"
    assert cs["status"] == "active" and cs["kind"] == "instance" and "json" in cs["format"]
    [rest] = cs["rest"]
    assert rest["mode"] == "server" and rest["security"]["service"][0]["text"] == "Bearer token"
    by_type = {r["type"]: r for r in rest["resource"]}
    assert {"Procedure", "ImagingStudy", "DocumentReference", "Consent", "Claim", "Patient", "Practitioner"} <= set(
        by_type
    )
    assert {"Organization", "Coverage", "MedicationAdministration", "CodeSystem"} <= set(by_type)
    for r in by_type.values():
        assert [i["code"] for i in r["interaction"]] == ["read", "vread", "history-instance", "search-type"]
        assert {"_id", "_lastUpdated"} <= {p["name"] for p in r["searchParam"]}
    assert {p["name"] for p in by_type["Procedure"]["searchParam"]} == {
        "_id",
        "_lastUpdated",
        "identifier",
        "patient",
        "date",
        "code",
        "status",
    }
    assert {"Claim:patient", "Claim:procedure"} <= set(by_type["Claim"]["searchInclude"])
    # Each type it claims is really served.
    for rtype in by_type:
        assert _get(client, world, f"/fhir/{rtype}?_count=1", auth["ehr"])["type"] == "searchset"
    _check_all(world, fhir_validator)


def test_read_vread_and_history_after_an_amendment(client, auth, world, services, fhir_validator):  # noqa: F811
    medadmin = f"MedicationAdministration/{world.a}-medadmin-1"
    first = client.get(f"/fhir/{medadmin}", headers=auth["ehr"])
    assert first.status_code == 200 and first.headers["ETag"] == 'W/"1"' and first.headers["Last-Modified"]
    assert first.get_json()["meta"]["versionId"] == "1"

    injectates = copy.deepcopy(EXAMPLE["injectates"])
    injectates[0]["lot_number"] = "KX2418"
    amended = client.post(
        f"/api/procedures/{world.a}/amend",
        json={"reason": "lot number", "changes": {"injectates": injectates}},
        headers={**auth["clinician"], "If-Match": world.etag_a},
    )
    assert amended.status_code == 200, amended.get_json()

    current = client.get(f"/fhir/{medadmin}", headers=auth["auditor"])
    assert current.headers["ETag"] == 'W/"2"' and "KX2418" in current.get_data(as_text=True)
    world.seen.append(current.get_json())
    v1 = _get(client, world, f"/fhir/{medadmin}/_history/1", auth["ehr"])
    assert v1["meta"]["versionId"] == "1" and "KX2481" in json.dumps(v1)
    assert _get(client, world, f"/fhir/{medadmin}/_history/2", auth["ehr"])["meta"]["versionId"] == "2"
    _get(client, world, f"/fhir/{medadmin}/_history/3", auth["ehr"], 404)

    hist = _get(client, world, f"/fhir/{medadmin}/_history", auth["ehr"])
    assert hist["type"] == "history" and hist["total"] == 2
    assert [e["resource"]["meta"]["versionId"] for e in hist["entry"]] == ["2", "1"]  # newest first
    assert [e["request"]["method"] for e in hist["entry"]] == ["PUT", "POST"]
    assert all(e["fullUrl"] == f"{PUBLIC}/fhir/{medadmin}" for e in hist["entry"])
    # An unchanged resource kept its single version.
    assert _get(client, world, f"/fhir/Patient/{world.a}-patient/_history", auth["ehr"])["total"] == 1
    # A shared CodeSystem is served too.
    code_systems = _get(client, world, "/fhir/CodeSystem", auth["ehr"])
    assert code_systems["total"] >= 1
    _check_all(world, fhir_validator)


# --- search --------------------------------------------------------------------------------------------------------


def test_search_by_every_parameter(client, auth, world, fhir_validator):  # noqa: F811
    a, b, c = world.a, world.b, world.c
    ehr = auth["ehr"]

    def found(query: str) -> set[str]:
        bundle = _get(client, world, f"/fhir/{query}", ehr)
        assert bundle["type"] == "searchset" and bundle["total"] == len(_ids(bundle))
        for e in bundle.get("entry", ()):
            assert e["fullUrl"] == f"{PUBLIC}/fhir/{e['resource']['resourceType']}/{e['resource']['id']}"
        # The procedure each match belongs to (our ids are "{procedure id}-{role}").
        return {k.split("/", 1)[1].split("-", 1)[0] for k in _ids(bundle)}

    # Procedure: patient (reference, bare id, our absolute URL), date (prefixes), code, status.
    assert found(f"Procedure?patient={world.patient(a)}") == {a}
    assert found(f"Procedure?patient={b}-patient") == {b}
    assert found(f"Procedure?patient={PUBLIC}/fhir/{world.patient(c)}") == {c}
    assert found(f"Procedure?patient={world.patient(a)},{world.patient(b)}") == {a, b}
    assert found("Procedure?patient=Patient/nobody") == set()
    assert found("Procedure?date=2025-03-14") == {a}
    assert found("Procedure?date=eq2025-03") == {a, b}
    assert found("Procedure?date=ge2025-03-20") == {b, c}
    assert found("Procedure?date=gt2025-03-14") == {b, c}
    assert found("Procedure?date=le2025-03-20") == {a, b}
    assert found("Procedure?date=lt2025-03-20") == {a}
    assert found("Procedure?date=ne2025-03-14") == {b, c}
    assert found("Procedure?date=sa2025-03-31") == {c}
    assert found("Procedure?date=eb2025-03-15") == {a}
    assert found("Procedure?date=ge2025-03-14T09:10:00-05:00&date=lt2025-03-14T09:15:00-05:00") == {a}
    assert found("Procedure?date=lt2025-03-14T09:12:00-05:00") == set()  # it started at 09:12
    # An unencoded '+' of an offset arrives as a space; it is read as the '+' it was.
    assert found("Procedure?date=lt2025-03-14T14:15:00+00:00") == {a}
    assert found("Procedure?date=2024") == set()
    assert found(f"Procedure?code={CPT}|20611") == {a}
    assert b in found("Procedure?code=20610") and a not in found("Procedure?code=20610")
    assert found("Procedure?code=http://snomed.info/sct|20611") == set()
    assert found("Procedure?status=completed") == {a, b, c}
    assert found("Procedure?status=http://hl7.org/fhir/event-status|completed") == {a, b, c}
    assert found("Procedure?status=in-progress") == set()
    assert found(f"Procedure?status=completed&patient={world.patient(b)}") == {b}

    # Claim: patient, created, use (and procedure); C is educational: no claim.
    claim_a = _get(client, world, f"/fhir/Claim/{a}-claim", ehr)
    assert found(f"Claim?patient={world.patient(a)}") == {a}
    assert found(f"Claim?patient={world.patient(c)}") == set()
    assert found(f"Claim?created={claim_a['created']}") == {a, b}
    assert found("Claim?created=ge2020-01-01") == {a, b}
    assert found("Claim?created=lt2020-01-01") == set()
    assert found("Claim?use=claim") == {a, b}
    assert found("Claim?use=preauthorization") == set()
    assert found(f"Claim?procedure=Procedure/{b}-procedure") == {b}

    # Consent: patient, status.
    assert found(f"Consent?patient={world.patient(b)}") == {b}
    assert found("Consent?status=active") == {a, b, c}
    assert found("Consent?status=rejected") == set()

    # ImagingStudy: patient, started (only A had images, 09:14 Chicago time).
    assert found(f"ImagingStudy?patient={world.patient(a)}") == {a}
    assert found(f"ImagingStudy?patient={world.patient(b)}") == set()
    assert found("ImagingStudy?started=2025-03-14") == {a}
    assert found("ImagingStudy?started=lt2025-03-01") == set()

    # DocumentReference: patient, type.
    assert found(f"DocumentReference?patient={world.patient(c)}") == {c}
    assert found("DocumentReference?type=http://loinc.org|28570-0") == {a, b, c}
    assert found("DocumentReference?type=11506-3") == set()

    # _id and _lastUpdated, on any type.
    assert found(f"Procedure?_id={a}-procedure,{c}-procedure") == {a, c}
    assert found(f"Patient?_id={b}-patient") == {b}
    assert found("Patient?_id=nobody") == set()
    assert found("Coverage?_lastUpdated=gt2020-01-01") == {a, b, c}
    assert found("Coverage?_lastUpdated=lt2020-01-01") == set()

    # identifier on every type, and the patient chained to its MRN (each procedure has its own Patient here).
    assert found(f"Procedure?identifier={ID_SYSTEM}/procedure|{b}") == {b}
    assert found(f"Procedure?identifier={b}") == {b}  # any system
    assert found(f"Procedure?identifier=urn:other|{b}") == set()
    assert found(f"Claim?identifier={ID_SYSTEM}/claim|{a},{ID_SYSTEM}/claim|{b}") == {a, b}
    mrn_system = EXAMPLE["patient"]["identifier"]["system"]
    assert found(f"Patient?identifier={mrn_system}|MRN-0050001") == {b}
    assert found(f"Procedure?patient.identifier={mrn_system}|MRN-0050002") == {c}
    assert found("Procedure?patient.identifier=MRN-0050001,MRN-0050002") == {b, c}
    assert found(f"Claim?patient.identifier={mrn_system}|MRN-0050002") == set()  # C is educational
    assert found("Procedure?patient.identifier=MRN-nobody") == set()
    _get(client, world, "/fhir/Procedure?patient.name=x", ehr, 400)
    _get(client, world, "/fhir/Procedure?code.identifier=x", ehr, 400)
    _check_all(world, fhir_validator)


def test_paging_follows_next_links_to_the_end(client, auth, world, fhir_validator):  # noqa: F811
    url: str | None = f"{PUBLIC}/fhir/Procedure?status=completed&_count=1"
    pages, seen = 0, []
    while url:
        bundle = _get(client, world, url, auth["ehr"])
        assert bundle["total"] == 3 and len(bundle["entry"]) == 1
        links = {link["relation"]: link["url"] for link in bundle["link"]}
        assert links["self"].startswith(f"{PUBLIC}/fhir/Procedure?status=completed&_count=1")
        entry = bundle["entry"][0]
        assert entry["search"]["mode"] == "match"
        assert entry["fullUrl"] == f"{PUBLIC}/fhir/Procedure/{entry['resource']['id']}"
        seen.append(entry["resource"]["id"])
        url = links.get("next")
        pages += 1
    assert pages == 3 and sorted(seen) == sorted(f"{p}-procedure" for p in (world.a, world.b, world.c))
    big = _get(client, world, "/fhir/Procedure?_count=5000", auth["ehr"])
    assert len(big["entry"]) == 3 and "_count=500" in big["link"][0]["url"]  # capped at 500
    only_total = _get(client, world, "/fhir/Procedure?_count=0", auth["ehr"])
    assert only_total["total"] == 3 and "entry" not in only_total
    _check_all(world, fhir_validator)


def test_include_adds_the_referenced_resources_once(client, auth, world, fhir_validator):  # noqa: F811
    a, b = world.a, world.b
    bundle = _get(client, world, "/fhir/Claim?_include=Claim:patient&_include=Claim:procedure", auth["ehr"])
    assert _ids(bundle) == {f"Claim/{a}-claim", f"Claim/{b}-claim"} and bundle["total"] == 2
    assert _ids(bundle, "include") == {
        world.patient(a), world.patient(b), f"Procedure/{a}-procedure", f"Procedure/{b}-procedure"
    }  # fmt: skip
    one = _get(client, world, f"/fhir/Procedure?patient={world.patient(a)}&_include=Procedure:patient", auth["ehr"])
    assert _ids(one) == {f"Procedure/{a}-procedure"} and _ids(one, "include") == {world.patient(a)}
    typed = _get(client, world, "/fhir/ImagingStudy?_include=ImagingStudy:patient:Patient", auth["ehr"])
    assert _ids(typed, "include") == {world.patient(a)}
    assert "_include=ImagingStudy%3Apatient%3APatient" in typed["link"][0]["url"]
    # An _include this server does not know is ignored (lenient) and left out of the self link.
    other = _get(client, world, "/fhir/Procedure?_include=Procedure:performer&_count=1", auth["ehr"])
    assert not _ids(other, "include") and "_include" not in other["link"][0]["url"]
    _check_all(world, fhir_validator)


def test_unknown_parameters_are_ignored_unless_strict_handling_is_asked(client, auth, world, fhir_validator):  # noqa: F811
    lenient = _get(client, world, "/fhir/Procedure?status=completed&colour=blue&_sort=date", auth["ehr"])
    assert lenient["total"] == 3
    self_link = lenient["link"][0]["url"]
    assert "status=completed" in self_link and "colour" not in self_link and "_sort" not in self_link
    strict = {**auth["ehr"], "Prefer": "handling=strict"}
    outcome = _get(client, world, "/fhir/Procedure?status=completed&colour=blue", strict, 400)
    assert outcome["resourceType"] == "OperationOutcome" and "colour" in outcome["issue"][0]["diagnostics"]
    assert _get(client, world, "/fhir/Procedure?status=completed", strict)["total"] == 3
    explicit = {**auth["ehr"], "Prefer": "handling=lenient"}
    assert _get(client, world, "/fhir/Procedure?colour=blue", explicit)["total"] == 3
    _check_all(world, fhir_validator)


# --- errors --------------------------------------------------------------------------------------------------------


def _outcome(resp, status: int, code: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    assert resp.status_code == status, (resp.status_code, resp.get_data(as_text=True)[:300])
    assert resp.mimetype == "application/fhir+json"
    body: dict[str, Any] = resp.get_json()
    assert body["resourceType"] == "OperationOutcome"
    [issue] = body["issue"]
    assert issue["severity"] == "error" and issue["code"] == code and issue["diagnostics"], body
    return body


def test_every_error_is_an_operation_outcome(client, auth, world, fhir_validator):  # noqa: F811
    ehr = auth["ehr"]
    out = [
        _outcome(client.get(f"/fhir/Procedure/{world.a}-nothing", headers=ehr), 404, "not-found"),
        _outcome(client.get("/fhir/Procedure/no-such/_history", headers=ehr), 404, "not-found"),
        _outcome(client.get(f"/fhir/Procedure/{world.a}-procedure/_history/x", headers=ehr), 404, "not-found"),
        _outcome(client.get("/fhir/Observation/x", headers=ehr), 404, "not-supported"),
        _outcome(client.get("/fhir/Observation?code=1", headers=ehr), 404, "not-supported"),
        _outcome(client.get("/fhir/Procedure/a/b/c/d", headers=ehr), 404, "not-found"),
        _outcome(client.get("/fhir/Procedure?date=2025-13-01", headers=ehr), 400, "invalid"),
        _outcome(client.get("/fhir/Procedure?date=yesterday", headers=ehr), 400, "invalid"),
        _outcome(client.get("/fhir/Procedure?date=ap2025-03-14", headers=ehr), 400, "not-supported"),
        _outcome(client.get("/fhir/Procedure?_count=-1", headers=ehr), 400, "invalid"),
        _outcome(client.get("/fhir/Procedure?status:not=completed", headers=ehr), 400, "not-supported"),
        _outcome(client.get("/fhir/Procedure?_format=xml", headers=ehr), 406, "not-supported"),
        _outcome(
            client.get("/fhir/Procedure", headers={**ehr, "Accept": "application/fhir+xml"}), 406, "not-supported"
        ),
        _outcome(client.post("/fhir/Procedure", json={"resourceType": "Procedure"}, headers=ehr), 405, "not-supported"),
        _outcome(client.put(f"/fhir/Procedure/{world.a}-procedure", json={}, headers=ehr), 405, "not-supported"),
        _outcome(client.delete(f"/fhir/Procedure/{world.a}-procedure", headers=ehr), 405, "not-supported"),
        _outcome(client.get("/fhir/Procedure"), 401, "login"),
        _outcome(client.get("/fhir/Procedure", headers={"Authorization": "Bearer usgi_nope"}), 401, "login"),
        _outcome(client.get(f"/fhir/Procedure/{world.a}-procedure", headers=auth["clinician"]), 403, "forbidden"),
        _outcome(client.get("/fhir/Procedure", headers=auth["admin"]), 403, "forbidden"),
    ]
    bad_date = out[6]["issue"][0]
    assert "date" in bad_date["diagnostics"] and bad_date["expression"] == ["date"]
    assert "Observation" in out[3]["issue"][0]["diagnostics"]
    assert client.get("/fhir/Procedure").headers["WWW-Authenticate"].startswith("Bearer")
    # /api keeps its own JSON errors.
    api = client.get("/api/procedures/nope", headers=auth["clinician"])
    assert api.status_code == 404 and api.get_json()["code"]
    assert client.get("/api/procedures").get_json()["code"] == "unauthorized"
    # JSON is accepted under its other names.
    for fmt in ("json", "application/json", "application/fhir%2Bjson"):
        assert client.get(f"/fhir/Procedure?_format={fmt}", headers=ehr).status_code == 200, fmt
    assert client.get("/fhir/Procedure", headers={**ehr, "Accept": "application/json"}).status_code == 200
    world.seen.extend(out)
    _check_all(world, fhir_validator)


# --- the audit trail -----------------------------------------------------------------------------------------------


def test_every_read_search_and_history_is_in_the_audit_trail(client, auth, world, services):
    ehr, auditor = auth["ehr"], auth["auditor"]
    proc = f"Procedure/{world.a}-procedure"
    assert client.get(f"/fhir/{proc}", headers=ehr).status_code == 200
    assert client.get(f"/fhir/{proc}/_history/1", headers=auditor).status_code == 200
    assert client.get(f"/fhir/{proc}/_history", headers=ehr).status_code == 200
    assert client.get(f"/fhir/Procedure?patient={world.patient(world.a)}", headers=ehr).status_code == 200
    assert client.get("/fhir/metadata", headers=ehr).status_code == 200
    with services.session_factory() as s:
        events = s.scalars(select(AuditEvent).where(AuditEvent.entity_type == "fhir").order_by(AuditEvent.id)).all()
    got = [(e.actor, e.role, e.action, e.entity_id) for e in events]
    assert got == [
        ("test-ehr", "ehr", "read", proc),
        ("test-auditor", "auditor", "vread", proc),
        ("test-ehr", "ehr", "history", proc),
        ("test-ehr", "ehr", "search", "Procedure"),
    ]
    assert all(e.source == "127.0.0.1" for e in events)
    search = events[-1].detail or {}
    assert search["params"] == ["patient"] and search["total"] == 1
    # No patient data in the detail: not the patient's reference, not the MRN.
    assert "patient" not in json.dumps(search).replace('"patient"', "") and "MRN" not in json.dumps(search)


# --- real FHIR clients over real HTTP ------------------------------------------------------------------------------


@pytest.fixture
def live_fhir(app) -> Iterator[str]:  # type: ignore[no-untyped-def]
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="fhir-live", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/fhir"
    server.shutdown()
    thread.join(timeout=10)
    server.server_close()


def test_fhirpy_searches_and_reads(live_fhir, tokens, world):
    from fhirpy import SyncFHIRClient

    client = SyncFHIRClient(live_fhir, authorization=f"Bearer {tokens['ehr']}")
    procedures = client.resources("Procedure").search(patient=world.patient(world.a)).fetch()
    assert [p["id"] for p in procedures] == [f"{world.a}-procedure"]
    assert procedures[0]["subject"]["reference"] == world.patient(world.a)
    claim = client.reference("Claim", f"{world.b}-claim").to_resource()
    assert claim["resourceType"] == "Claim" and claim["patient"]["reference"] == world.patient(world.b)
    assert client.resources("Claim").search(use="claim").count() == 2


def test_fhirclient_searches_and_reads(live_fhir, tokens, world):
    from fhirclient.models.claim import Claim
    from fhirclient.models.procedure import Procedure
    from fhirclient.server import FHIRServer

    server = FHIRServer(None, base_uri=live_fhir)
    server.session.headers["Authorization"] = f"Bearer {tokens['ehr']}"
    try:
        [bundle] = Procedure.where({"patient": world.patient(world.b)}).perform_iter(server)  # one page
        assert bundle.total == 1 and [e.resource.id for e in bundle.entry] == [f"{world.b}-procedure"]
        assert isinstance(bundle.entry[0].resource, Procedure)
        claim = Claim.read(f"{world.a}-claim", server)
        assert claim.use == "claim" and claim.patient.reference == world.patient(world.a)
        assert [i.productOrService.coding[0].code for i in claim.item][0] == "20611"
        assert server.capabilityStatement.fhirVersion == "4.0.1"  # parsed by its R4 models
    finally:
        server.session.close()
