"""The images API over real vendor files received by the DICOM server: search filters, paging, metadata,
the stored object, previews, the audit trail; readiness, the OpenAPI document and the peers API."""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from sqlalchemy import select, update

from service.models import AuditEvent, Instance
from tests.dicomutil import VENDOR_FILES, dataset_bytes, restamp, send, sha256, vendor_path


@dataclass
class Stored:
    key: str
    path: Path
    uid: str
    study_uid: str
    patient_id: str
    accession: str
    when: datetime  # acquisition, else content, else study time


# Five objects, sent in this order (so newest first is the reverse). Each one's search time comes from a
# different source; the decoy dates (2030 study, 2020 content) would match the wrong filters if the
# fallback order acquisition -> content -> study were not followed.
CORPUS: list[tuple[str, dict[str, str], datetime]] = [
    (
        "ge_rgb",
        {
            "PatientID": "PAT-A",
            "AccessionNumber": "ACC-1",
            "AcquisitionDate": "20240110",
            "AcquisitionTime": "100000",
            "StudyDate": "20300101",
            "StudyTime": "000000",
            "ImageLaterality": "L",
            "BodyPartExamined": "KNEE",
        },
        datetime(2024, 1, 10, 10, 0, 0),
    ),
    (
        "ge_jpeg2k",
        {
            "PatientID": "PAT-A",
            "AccessionNumber": "ACC-2",
            "ContentDate": "20240111",
            "ContentTime": "090000",
            "StudyDate": "20300101",
            "StudyTime": "000000",
        },
        datetime(2024, 1, 11, 9, 0, 0),
    ),
    (
        "philips_palette",
        {
            "PatientID": "PAT-B",
            "AccessionNumber": "ACC-3",
            "AcquisitionDateTime": "20240112080000",
            "AcquisitionDate": "20240112",
            "AcquisitionTime": "080000",
            "ContentDate": "20200101",
            "ContentTime": "000000",
            "StudyDate": "20200101",
            "StudyTime": "000000",
        },
        datetime(2024, 1, 12, 8, 0, 0),
    ),
    (
        "sonosite_cine",
        {
            "PatientID": "PAT-C",
            "AccessionNumber": "ACC-4",
            "ContentDate": "20240113",
            "ContentTime": "120000",
            "StudyDate": "20200101",
            "StudyTime": "000000",
            "Laterality": "R",
        },
        datetime(2024, 1, 13, 12, 0, 0),
    ),
    (
        "ge_rgb",
        {"PatientID": "PAT-C", "AccessionNumber": "ACC-5", "StudyDate": "20240114", "StudyTime": "070000"},
        datetime(2024, 1, 14, 7, 0, 0),
    ),
]


def _store(port: int, tmp_path: Path) -> list[Stored]:
    out = []
    for i, (key, attrs, when) in enumerate(CORPUS):
        path = restamp(vendor_path(key), tmp_path / "in" / f"{i}-{key}.dcm", **attrs)
        ds = dcmread(path, stop_before_pixels=True)
        out.append(
            Stored(
                key,
                path,
                str(ds.SOPInstanceUID),
                str(ds.StudyInstanceUID),
                attrs["PatientID"],
                attrs["AccessionNumber"],
                when,
            )
        )
    assert send(port, [s.path for s in out]) == [0x0000] * len(out)
    return out


@pytest.fixture
def corpus(dicom_server, tmp_path) -> list[Stored]:  # type: ignore[no-untyped-def]
    return _store(dicom_server.port, tmp_path)


def _search(client, headers, **params: Any) -> dict:  # type: ignore[no-untyped-def]
    resp = client.get("/api/images", query_string=params, headers=headers)
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def _uids(client, headers, **params: Any) -> set[str]:  # type: ignore[no-untyped-def]
    body = _search(client, headers, **params)
    assert body["meta"]["total"] == len(body["items"])
    return {i["sop_instance_uid"] for i in body["items"]}


def _row(services, uid: str) -> Instance:  # type: ignore[no-untyped-def]
    with services.session_factory() as s:
        return s.scalars(select(Instance).where(Instance.sop_instance_uid == uid).order_by(Instance.id.desc())).first()


def _png(data: bytes) -> Image.Image:
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        assert im.format == "PNG"
        return im.copy()


# --- search


def test_search_filters_by_patient_accession_and_study(client, auth, corpus):
    h = auth["clinician"]
    uid = [s.uid for s in corpus]
    assert _uids(client, h) == set(uid)
    assert _uids(client, h, patient_id="PAT-A") == {uid[0], uid[1]}
    assert _uids(client, h, patient_id="PAT-C") == {uid[3], uid[4]}
    assert _uids(client, h, patient_id="NOBODY") == set()
    assert _uids(client, h, accession_number="ACC-3") == {uid[2]}
    assert _uids(client, h, study_instance_uid=corpus[3].study_uid) == {uid[3]}
    # Filters combine with AND.
    assert _uids(client, h, patient_id="PAT-A", accession_number="ACC-2") == {uid[1]}
    assert _uids(client, h, patient_id="PAT-A", accession_number="ACC-3") == set()
    item = _search(client, h, accession_number="ACC-1")["items"][0]
    assert item["patient_id"] == "PAT-A" and item["accession_number"] == "ACC-1"
    assert item["study_instance_uid"] == corpus[0].study_uid
    # A misspelt filter is refused, naming it: silently ignoring it would list every patient's images.
    r = client.get("/api/images", query_string={"patientid": "PAT-A"}, headers=h)
    assert r.status_code == 400 and "patientid" in r.json["errors"]
    # A bare date_to covers the whole day.
    day = corpus[0].when.date().isoformat()
    assert uid[0] in _uids(client, h, date_from=day, date_to=day)


def test_date_filters_are_inclusive_on_acquisition_then_content_then_study_time(client, auth, corpus):
    h = auth["auditor"]
    uid = [s.uid for s in corpus]
    iso = [s.when.isoformat() for s in corpus]
    # Both bounds inclusive, to the second.
    assert _uids(client, h, date_from=iso[1], date_to=iso[3]) == {uid[1], uid[2], uid[3]}
    assert _uids(client, h, date_from=iso[2], date_to=iso[2]) == {uid[2]}
    assert _uids(client, h, date_from="2024-01-11T09:00:01") == {uid[2], uid[3], uid[4]}
    assert _uids(client, h, date_to="2024-01-12T07:59:59") == {uid[0], uid[1]}
    assert _uids(client, h, date_to=iso[0]) == {uid[0]}
    # A study-time-only object is found by its study time.
    assert _uids(client, h, date_from=iso[4]) == {uid[4]}
    # The decoy study (2030) and content/study (2020) times are not used where a better time exists.
    assert _uids(client, h, date_from="2029-01-01T00:00:00") == set()
    assert _uids(client, h, date_to="2023-12-31T23:59:59") == set()
    # An offset is accepted; DICOM wall-clock times are compared as they are.
    assert _uids(client, h, date_from="2024-01-13T12:00:00Z") == {uid[3], uid[4]}
    # The times the filter uses are the ones in the index.
    by_uid = {i["sop_instance_uid"]: i for i in _search(client, h)["items"]}
    assert by_uid[uid[0]]["acquisition_datetime"].startswith("2024-01-10T10:00:00")
    assert by_uid[uid[1]]["acquisition_datetime"] is None
    assert by_uid[uid[1]]["content_datetime"].startswith("2024-01-11T09:00:00")
    assert by_uid[uid[2]]["acquisition_datetime"].startswith("2024-01-12T08:00:00")
    assert by_uid[uid[3]]["content_datetime"].startswith("2024-01-13T12:00:00")
    assert by_uid[uid[4]]["study_datetime"].startswith("2024-01-14T07:00:00")


def test_linked_filter_is_the_unlinked_queue(client, auth, services, corpus):
    h = auth["clinician"]
    uid = [s.uid for s in corpus]
    assert _uids(client, h, linked="false") == set(uid)
    assert _uids(client, h, linked="true") == set()
    assert all(i["linked"] is False for i in _search(client, h)["items"])
    # Simulate the linker (a later release) setting the procedure of one image.
    with services.session_factory() as s:
        s.execute(update(Instance).where(Instance.sop_instance_uid == uid[2]).values(procedure_id="PROC-1"))
        s.commit()
    assert _uids(client, h, linked="true") == {uid[2]}
    assert _uids(client, h, linked="false") == set(uid) - {uid[2]}
    assert _uids(client, h, linked="false", patient_id="PAT-B") == set()
    body = client.get(f"/api/images/{uid[2]}", headers=h).get_json()
    assert body["linked"] is True and body["procedure_id"] == "PROC-1"


def test_conflict_filter_and_latest_version_only(client, auth, services, dicom_server, corpus, tmp_path):
    h = auth["auditor"]
    uid = [s.uid for s in corpus]
    assert _uids(client, h, conflict="false") == set(uid)
    assert _uids(client, h, conflict="true") == set()
    # The same SOP Instance UID re-sent with different content: both kept, flagged, listed once.
    ds = dcmread(corpus[0].path)
    ds.SeriesDescription = "re-sent with a change"
    changed = tmp_path / "changed.dcm"
    ds.save_as(changed, enforce_file_format=True)
    assert send(dicom_server.port, [changed]) == [0x0000]
    assert _uids(client, h, conflict="true") == {uid[0]}
    assert _uids(client, h, conflict="false") == set(uid) - {uid[0]}
    body = _search(client, h)
    assert body["meta"]["total"] == 5
    assert body["items"][0]["sop_instance_uid"] == uid[0]  # its latest version is now the newest
    assert body["items"][0]["series_description"] == "re-sent with a change"


def test_paging_newest_first_without_duplicates(client, auth, corpus):
    h = auth["clinician"]
    newest_first = [s.uid for s in reversed(corpus)]
    seen: list[str] = []
    for page, size in ((1, 2), (2, 2), (3, 1)):
        body = _search(client, h, per_page=2, page=page)
        assert body["meta"] == {"page": page, "per_page": 2, "total": 5}
        assert len(body["items"]) == size
        seen += [i["sop_instance_uid"] for i in body["items"]]
    assert seen == newest_first
    assert len(set(seen)) == 5
    beyond = _search(client, h, per_page=2, page=4)
    assert beyond["items"] == [] and beyond["meta"]["total"] == 5
    assert [i["sop_instance_uid"] for i in _search(client, h)["items"]] == newest_first
    assert _search(client, h)["meta"] == {"page": 1, "per_page": 50, "total": 5}


BAD_QUERIES: list[tuple[dict[str, str], str]] = [
    ({"per_page": "0"}, "per_page"),
    ({"per_page": "501"}, "per_page"),
    ({"per_page": "ten"}, "per_page"),
    ({"page": "0"}, "page"),
    ({"date_from": "not-a-date"}, "date_from"),
    ({"date_to": "2024-13-45T00:00:00"}, "date_to"),
    ({"date_from": "2024-01-02T00:00:00", "date_to": "2024-01-01T00:00:00"}, "date_from"),
    ({"linked": "maybe"}, "linked"),
    ({"conflict": "sometimes"}, "conflict"),
    ({"accession_number": "X" * 17}, "accession_number"),
    ({"patient_id": ""}, "patient_id"),
]


def test_a_bad_query_is_400_naming_the_field(client, auth):
    for query, field in BAD_QUERIES:
        resp = client.get("/api/images", query_string=query, headers=auth["clinician"])
        assert resp.status_code == 400, query
        body = resp.get_json()
        assert body["code"] == "bad_request" and body["status"] == 400 and body["message"], query
        assert set(body["errors"]) == {field}, (query, body)
        assert body["errors"][field], query


# --- one image


INDEX_FIELDS = (
    "sop_instance_uid",
    "sop_class_uid",
    "study_instance_uid",
    "series_instance_uid",
    "accession_number",
    "patient_id",
    "laterality",
    "body_part",
    "number_of_frames",
    "rows",
    "columns",
    "transfer_syntax_uid",
    "sha256",
    "size_bytes",
    "calling_ae_title",
    "received_at",
)


def test_metadata_and_stored_object_of_each_image(client, auth, services, corpus):
    for s in corpus:
        resp = client.get(f"/api/images/{s.uid}", headers=auth["auditor"])
        assert resp.status_code == 200
        body = resp.get_json()
        assert set(INDEX_FIELDS) <= set(body)
        ds = dcmread(s.path, stop_before_pixels=True)
        row = _row(services, s.uid)
        assert body["sop_instance_uid"] == s.uid
        assert body["sop_class_uid"] == ds.SOPClassUID
        assert body["study_instance_uid"] == ds.StudyInstanceUID == s.study_uid
        assert body["series_instance_uid"] == ds.SeriesInstanceUID
        assert body["accession_number"] == s.accession and body["patient_id"] == s.patient_id
        assert body["number_of_frames"] == int(ds.get("NumberOfFrames", 1))
        assert (body["rows"], body["columns"]) == (ds.Rows, ds.Columns)
        assert body["transfer_syntax_uid"] == ds.file_meta.TransferSyntaxUID
        assert body["sha256"] == row.sha256 == sha256(dataset_bytes(s.path))
        assert body["size_bytes"] == row.size_bytes == services.store.path(row.storage_key).stat().st_size
        assert body["calling_ae_title"] == "TESTSCU"
        assert datetime.fromisoformat(body["received_at"])
        assert body["is_image"] is True and body["linked"] is False and body["conflict"] is False
        assert body["version"] == 1 and len(body["versions"]) == 1
        assert body["versions"][0]["sha256"] == row.sha256
        base = f"/api/images/{s.uid}"
        assert body["links"] == {"self": base, "dicom": f"{base}/dicom", "preview": f"{base}/preview.png"}
        # The object itself: the stored file, byte for byte (the sent dataset behind a file meta header).
        stored = services.store.path(row.storage_key).read_bytes()
        with client.get(body["links"]["dicom"], headers=auth["clinician"]) as resp:
            assert resp.status_code == 200
            assert resp.mimetype == "application/dicom"
            assert resp.data == stored
            assert resp.data.endswith(dataset_bytes(s.path))
    by_key = {
        s.key + s.accession: client.get(f"/api/images/{s.uid}", headers=auth["auditor"]).get_json() for s in corpus
    }
    assert (by_key["ge_rgbACC-1"]["laterality"], by_key["ge_rgbACC-1"]["body_part"]) == ("L", "KNEE")
    assert by_key["sonosite_cineACC-4"]["laterality"] == "R"  # from Laterality when ImageLaterality is absent
    assert by_key["sonosite_cineACC-4"]["number_of_frames"] == 30
    assert by_key["ge_jpeg2kACC-2"]["laterality"] is None and by_key["ge_jpeg2kACC-2"]["body_part"] is None
    missing = client.get(f"/api/images/{corpus[0].uid}?version=2", headers=auth["auditor"])
    assert missing.status_code == 404 and missing.get_json()["code"] == "not_found"


def test_unknown_uid_is_a_json_404_on_every_image_route(client, auth):
    for suffix in ("", "/dicom", "/preview.png"):
        resp = client.get(f"/api/images/1.2.3.4.5.404{suffix}", headers=auth["clinician"])
        assert resp.status_code == 404 and resp.is_json, suffix
        body = resp.get_json()
        assert body["code"] == "not_found" and body["status"] == 404 and body["message"]


def test_preview_of_each_vendor_file_and_of_cine_frames(client, auth, corpus):
    seen_keys = set()
    for s in corpus:
        ds = dcmread(s.path, stop_before_pixels=True)
        resp = client.get(f"/api/images/{s.uid}/preview.png", headers=auth["clinician"])
        assert resp.status_code == 200, (s.key, resp.get_data(as_text=True)[:300])
        assert resp.mimetype == "image/png"
        assert _png(resp.data).size == (ds.Columns, ds.Rows), s.key
        seen_keys.add(s.key)
    assert seen_keys == set(VENDOR_FILES)
    jpeg2k = next(s for s in corpus if s.key == "ge_jpeg2k")  # 640 x 480
    small = client.get(f"/api/images/{jpeg2k.uid}/preview.png?size=100", headers=auth["auditor"])
    assert small.status_code == 200 and _png(small.data).size == (100, 75)

    # The 30-frame SonoSite cine: any frame can be shown; one past the last is refused with a message.
    cine = next(s for s in corpus if s.key == "sonosite_cine")
    h = auth["clinician"]
    first = client.get(f"/api/images/{cine.uid}/preview.png?frame=0", headers=h)
    last = client.get(f"/api/images/{cine.uid}/preview.png?frame=29", headers=h)
    assert first.status_code == last.status_code == 200
    a, b = np.asarray(_png(first.data)), np.asarray(_png(last.data))
    assert a.shape == b.shape == (240, 320, 3)
    assert not np.array_equal(a, b)
    for frame in ("30", "1000"):
        bad = client.get(f"/api/images/{cine.uid}/preview.png?frame={frame}", headers=h)
        assert bad.status_code == 422 and bad.is_json, frame
        body = bad.get_json()
        assert body["code"] == "rejected" and "frame" in body["message"], body
    neg = client.get(f"/api/images/{cine.uid}/preview.png?frame=-1", headers=h)
    assert neg.status_code == 400 and "frame" in neg.get_json()["errors"]
    single = next(s for s in corpus if s.key == "ge_rgb")
    assert client.get(f"/api/images/{single.uid}/preview.png?frame=1", headers=h).status_code == 422


def test_preview_of_a_non_image_object_is_422(client, auth, dicom_server, tmp_path):
    private_class = "1.2.840.113619.4.27"
    src = restamp(vendor_path("ge_rgb"), tmp_path / "priv.dcm", SOPClassUID=private_class)
    ds = dcmread(src)
    ds.file_meta.MediaStorageSOPClassUID = private_class
    ds.save_as(src, enforce_file_format=True)
    assert send(dicom_server.port, [src]) == [0x0000]
    uid = str(ds.SOPInstanceUID)
    meta = client.get(f"/api/images/{uid}", headers=auth["clinician"]).get_json()
    assert meta["is_image"] is False and "preview" not in meta["links"]
    resp = client.get(f"/api/images/{uid}/preview.png", headers=auth["clinician"])
    assert resp.status_code == 422 and resp.is_json
    assert resp.get_json()["code"] == "rejected" and "not an image" in resp.get_json()["message"]
    with client.get(f"/api/images/{uid}/dicom", headers=auth["clinician"]) as raw:
        assert raw.status_code == 200 and raw.data.endswith(dataset_bytes(src))


# --- audit trail


def _audit_rows(services) -> list[AuditEvent]:  # type: ignore[no-untyped-def]
    with services.session_factory() as s:
        return list(s.scalars(select(AuditEvent).order_by(AuditEvent.id)))


def test_reads_are_audited_with_actor_role_action_and_entity(client, auth, services, corpus):
    uid = corpus[3].uid
    baseline = len(_audit_rows(services))  # whatever receiving the images recorded
    assert client.get("/healthz").status_code == 200
    assert len(_audit_rows(services)) == baseline
    calls = [
        ("clinician", "/api/images?patient_id=PAT-C", "search", None),
        ("auditor", f"/api/images/{uid}", "read", uid),
        ("clinician", f"/api/images/{uid}/dicom", "export", uid),
        ("auditor", f"/api/images/{uid}/preview.png?frame=3", "view", uid),
    ]
    for role, url, _, _ in calls:
        with client.get(url, headers=auth[role]) as resp:
            assert resp.status_code == 200, url
    # Refused requests and /healthz read no patient data.
    assert client.get("/api/images").status_code == 401
    assert client.get("/api/images", headers=auth["ehr"]).status_code == 403
    assert client.get("/healthz").status_code == 200
    rows = _audit_rows(services)[baseline:]
    got = [(r.actor, r.role, r.action, r.entity_type, r.entity_id) for r in rows]
    want = [(f"test-{role}", role, action, "image", entity) for role, _, action, entity in calls]
    assert got == want
    assert all(r.at is not None and r.source == "127.0.0.1" for r in rows)
    assert rows[0].detail["patient_id"] == "PAT-C" and rows[0].detail["returned"] == 2
    assert rows[2].detail == {"sha256": _row(services, uid).sha256}
    assert rows[3].detail == {"frame": 3}
    assert not [r for r in rows if "health" in (r.entity_type + r.action)]


# --- readiness, OpenAPI


def test_readyz_with_a_token(client, auth):
    for role in auth:
        resp = client.get("/readyz", headers=auth[role])
        assert resp.status_code == 200
        assert resp.get_json() == {"status": "ok", "checks": {"database": "ok", "image_store": "ok"}}


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref" and isinstance(v, str)] + [
            r for v in node.values() for r in _refs(v)
        ]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_openapi_document(client, auth):
    resp = client.get("/openapi.json", headers=auth["ehr"])
    assert resp.status_code == 200 and resp.is_json
    doc = resp.get_json()
    assert doc["openapi"].startswith("3.")
    assert doc["info"]["title"] == "usgi-docs" and doc["info"]["version"] == "1"
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {"type": "http", "scheme": "bearer"}
    assert doc["security"] == [{"bearerAuth": []}]
    for path in (
        "/api/images",
        "/api/images/{sop_instance_uid}",
        "/api/images/{sop_instance_uid}/dicom",
        "/api/images/{sop_instance_uid}/preview.png",
        "/api/peers",
        "/api/peers/{ae_title}",
        "/readyz",
    ):
        assert path in doc["paths"], path
    params = {p["name"] for p in doc["paths"]["/api/images"]["get"]["parameters"]}
    assert params >= {
        "patient_id",
        "accession_number",
        "study_instance_uid",
        "date_from",
        "date_to",
        "linked",
        "conflict",
        "page",
        "per_page",
    }
    assert set(doc["paths"]["/api/peers"]) == {"get", "post"}
    # Structurally valid: every operation answers something, every local $ref resolves.
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if method in ("get", "post", "put", "patch", "delete"):
                assert op["responses"], f"{method} {path}"
    for ref in _refs(doc):
        assert ref.startswith("#/"), ref
        node: Any = doc
        for part in ref[2:].split("/"):
            assert part in node, f"dangling $ref {ref}"
            node = node[part]


# --- peers (admin)


def test_peers_api(client, auth):
    h = auth["admin"]
    assert client.get("/api/peers", headers=h).get_json() == []
    created = client.post(
        "/api/peers", json={"ae_title": "CART1", "host": "10.0.0.7", "port": 104, "description": "cart 1"}, headers=h
    )
    assert created.status_code == 201, created.get_json()
    body = created.get_json()
    assert (body["ae_title"], body["host"], body["port"], body["description"]) == ("CART1", "10.0.0.7", 104, "cart 1")
    assert body["created_at"]

    dup = client.post("/api/peers", json={"ae_title": "CART1"}, headers=h)
    assert dup.status_code == 409 and dup.get_json()["code"] == "conflict" and "CART1" in dup.get_json()["message"]

    for payload, field in (
        ({"ae_title": "TOO_LONG_AE_TITLE_X"}, "ae_title"),
        ({"ae_title": "CART2", "port": 70000}, "port"),
        ({"ae_title": "CART2", "port": 0}, "port"),
        ({}, "ae_title"),
    ):
        bad = client.post("/api/peers", json=payload, headers=h)
        assert bad.status_code in (400, 422), payload
        assert field in bad.get_json()["errors"], bad.get_json()
    backslash = client.post("/api/peers", json={"ae_title": "A\\B"}, headers=h)
    assert backslash.status_code == 422 and "AE title" in backslash.get_json()["message"]

    listed = client.get("/api/peers", headers=h).get_json()
    assert [p["ae_title"] for p in listed] == ["CART1"]
    assert listed[0]["port"] == 104

    first = client.delete("/api/peers/CART1", headers=h)
    assert first.status_code == 204 and first.data == b""
    again = client.delete("/api/peers/CART1", headers=h)
    assert again.status_code == 404 and again.get_json()["code"] == "not_found"
    assert client.get("/api/peers", headers=h).get_json() == []
