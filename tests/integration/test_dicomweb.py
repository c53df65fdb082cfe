"""WADO-RS retrieve (service/api/dicomweb.py) of real vendor files received over a real DICOM association:
the multipart body is parsed with the stdlib email parser, each part must be the stored object byte for byte
(as /api/images reports and serves it) and a Part 10 file pydicom reads; study and series levels return exactly
their instances; Accept negotiation (no transcoding: 406), unknown UIDs (404), roles and the audit trail."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import HTTP
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from service.ingest import dataset_offset
from service.models import AuditEvent, Instance
from tests.dicomutil import EXAMPLE_MRN, sha256, uid

EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
MULTIPART_DICOM = 'multipart/related; type="application/dicom"'


@dataclass
class Study:
    uid: str
    series: dict[str, list[str]]  # Series Instance UID -> SOP Instance UIDs, in the order sent
    other: str  # the SOP Instance UID of an image of another study, sent in the same association
    files: dict[str, Path]  # SOP Instance UID -> the file sent

    @property
    def instances(self) -> list[str]:
        return [u for uids in self.series.values() for u in uids]


@pytest.fixture
def study(modality) -> Study:  # type: ignore[no-untyped-def]
    """One study of two series: Explicit VR Little Endian (GE RGB, Philips palette) and compressed (GE JPEG 2000,
    SonoSite JPEG cine); plus an image of another study of the same patient."""
    study_uid, plain, compressed = generate_uid(), generate_uid(), generate_uid()
    sent = {
        plain: [
            modality.image(k, StudyInstanceUID=study_uid, SeriesInstanceUID=plain)
            for k in ("ge_rgb", "philips_palette")
        ],
        compressed: [
            modality.image(k, StudyInstanceUID=study_uid, SeriesInstanceUID=compressed)
            for k in ("ge_jpeg2k", "sonosite_cine")
        ],
    }
    other = modality.image("ge_rgb")
    modality.send(*sent[plain], *sent[compressed], other)
    files = {uid(p): p for paths in sent.values() for p in paths}
    return Study(study_uid, {s: [uid(p) for p in paths] for s, paths in sent.items()}, uid(other), files)


def _parts(resp) -> list[tuple[EmailMessage, bytes]]:  # type: ignore[no-untyped-def]
    """The parts of a WADO-RS response, parsed by the stdlib email parser (the HTTP headers prepended)."""
    assert resp.status_code == 200, resp.get_data(as_text=True)[:300]
    assert resp.is_streamed  # parts go out as they are read from disk
    head = f"MIME-Version: 1.0\r\nContent-Type: {resp.headers['Content-Type']}\r\n\r\n".encode()
    msg = BytesParser(policy=HTTP).parsebytes(head + resp.data)
    assert isinstance(msg, EmailMessage)
    assert msg.get_content_type() == "multipart/related" and msg.get_param("type") == "application/dicom"
    assert not msg.defects, msg.defects  # e.g. a missing closing boundary
    out = []
    for part in msg.iter_parts():
        assert isinstance(part, EmailMessage) and not part.defects, part.defects
        assert part.get_content_type() == "application/dicom"
        data = part.get_payload(decode=True)
        assert isinstance(data, bytes) and int(part["Content-Length"]) == len(data)
        out.append((part, data))
    return out


def _check_stored(client, auth, parts: list[tuple[EmailMessage, bytes]]) -> list[str]:  # type: ignore[no-untyped-def]
    """Each part is the stored object, byte for byte; returns their SOP Instance UIDs."""
    uids = []
    for part, data in parts:
        ds = dcmread(BytesIO(data))  # a whole Part 10 file: preamble, file meta, data set, pixels
        sop = str(ds.SOPInstanceUID)
        meta = client.get(f"/api/images/{sop}", headers=auth["auditor"]).get_json()
        # The index hashes the data set as received (file meta excluded) and sizes the whole stored file.
        assert sha256(data[dataset_offset(data[: 1 << 16]) :]) == meta["sha256"]
        assert len(data) == meta["size_bytes"]
        assert part.get_param("transfer-syntax") == meta["transfer_syntax_uid"] == ds.file_meta.TransferSyntaxUID
        assert "PixelData" in ds and ds.StudyInstanceUID == meta["study_instance_uid"]
        with client.get(f"/api/images/{sop}/dicom", headers=auth["auditor"]) as raw:
            assert raw.status_code == 200 and raw.data == data
        uids.append(sop)
    return uids


def _get(client, url: str, headers: dict[str, str], accept: str | None = None):  # type: ignore[no-untyped-def]
    return client.get(url, headers=headers | ({"Accept": accept} if accept is not None else {}))


def _sent_dataset(path: Path) -> bytes:
    raw = path.read_bytes()
    return raw[dataset_offset(raw[: 1 << 16]) :]


def _audit_rows(services) -> list[AuditEvent]:  # type: ignore[no-untyped-def]
    with services.session_factory() as s:
        return list(s.scalars(select(AuditEvent).order_by(AuditEvent.id)))


# --- retrieve


def test_study_series_and_instance_are_the_stored_objects_byte_for_byte(client, auth, study):
    h = auth["clinician"]
    resp = client.get(f"/dicomweb/studies/{study.uid}", headers=h)
    assert resp.mimetype == "multipart/related"
    assert resp.mimetype_params["type"] == "application/dicom" and resp.mimetype_params["boundary"]
    got = _check_stored(client, auth, _parts(resp))
    assert sorted(got) == sorted(study.instances) and study.other not in got  # every one, each once
    for series_uid, uids in study.series.items():
        resp = client.get(f"/dicomweb/studies/{study.uid}/series/{series_uid}", headers=h)
        assert sorted(_check_stored(client, auth, _parts(resp))) == sorted(uids)  # this series only
        for sop in uids:
            resp = client.get(f"/dicomweb/studies/{study.uid}/series/{series_uid}/instances/{sop}", headers=h)
            parts = _parts(resp)
            assert _check_stored(client, auth, parts) == [sop]
            # The stored object is the data set sent, unchanged, behind the file meta the service wrote.
            assert parts[0][1].endswith(_sent_dataset(study.files[sop]))
    _, compressed = study.series
    cine = study.series[compressed][1]  # the SonoSite cine, 30 JPEG frames
    resp = client.get(f"/dicomweb/studies/{study.uid}/series/{compressed}/instances/{cine}", headers=h)
    assert dcmread(BytesIO(_parts(resp)[0][1])).NumberOfFrames == 30


def test_the_current_version_of_an_instance_sent_twice_with_different_bytes(client, auth, modality):
    first = modality.image("ge_rgb")
    modality.send(first)
    ds = dcmread(first)
    ds.SeriesDescription = "re-sent with a change"
    second = first.with_name("second.dcm")
    ds.save_as(second, enforce_file_format=True)
    modality.send(second)
    sop, study_uid, series_uid = str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
    meta = client.get(f"/api/images/{sop}", headers=auth["auditor"]).get_json()
    assert meta["version"] == 2 and meta["conflict"] is True  # two versions are stored
    with client.get(f"/api/images/{sop}/dicom", headers=auth["auditor"]) as current:
        latest = current.data
    for url in (
        f"/dicomweb/studies/{study_uid}",
        f"/dicomweb/studies/{study_uid}/series/{series_uid}",
        f"/dicomweb/studies/{study_uid}/series/{series_uid}/instances/{sop}",
    ):
        [(_, data)] = _parts(client.get(url, headers=auth["ehr"]))  # one part: the latest version only
        assert data == latest and data.endswith(_sent_dataset(second)), url
        assert dcmread(BytesIO(data)).SeriesDescription == "re-sent with a change"


# --- Accept


def test_accept_headers_that_admit_the_stored_objects_are_200(client, auth, study):
    h = auth["clinician"]
    plain, compressed = study.series
    jpeg2k = study.series[compressed][0]
    study_url = f"/dicomweb/studies/{study.uid}"
    ok = [
        (study_url, None),
        (study_url, "*/*"),
        (study_url, "multipart/*"),
        (study_url, MULTIPART_DICOM),
        (study_url, "multipart/related; type=application/dicom"),  # unquoted
        (study_url, f"{MULTIPART_DICOM}; transfer-syntax=*"),
        (study_url, f"application/dicom+json, {MULTIPART_DICOM}; q=0.5"),  # one acceptable choice is enough
        (f"{study_url}/series/{plain}", f"{MULTIPART_DICOM}; transfer-syntax={EXPLICIT_LE}"),
        (
            f"{study_url}/series/{compressed}/instances/{jpeg2k}",
            f"{MULTIPART_DICOM}; transfer-syntax={JPEG2K_LOSSLESS}",
        ),
        # Each instance in a syntax the client admits: the JPEG 2000 image and the JPEG cine.
        (
            f"{study_url}/series/{compressed}",
            f"{MULTIPART_DICOM}; transfer-syntax={JPEG2K_LOSSLESS}, {MULTIPART_DICOM}; transfer-syntax={JPEG_BASELINE}",
        ),
    ]
    for url, accept in ok:
        resp = _get(client, url, h, accept)
        assert resp.status_code == 200, (url, accept, resp.get_data(as_text=True)[:300])
        assert _parts(resp), (url, accept)


def _assert_406(resp, where: str, *words: str) -> None:  # type: ignore[no-untyped-def]
    assert resp.status_code == 406, f"{where}: {resp.status_code}"
    assert resp.is_json, where
    body = resp.get_json()
    assert body["code"] == "not_acceptable" and body["status"] == 406, where
    for word in words:
        assert word in body["message"], (where, body["message"])


def test_other_media_types_and_transfer_syntaxes_are_406(client, auth, study, services):
    h = auth["clinician"]
    plain, compressed = study.series
    jpeg2k = study.series[compressed][0]
    study_url = f"/dicomweb/studies/{study.uid}"
    baseline = len(_audit_rows(services))
    for url, accept in [
        (study_url, "application/dicom+json"),  # metadata: not served
        (f"{study_url}/series/{plain}", "application/dicom+json"),
        (f"{study_url}/series/{compressed}/instances/{jpeg2k}", "application/dicom+json"),
        (study_url, 'multipart/related; type="application/octet-stream"'),  # bulk data
        (study_url, "image/jpeg"),  # rendered
        (study_url, f"{MULTIPART_DICOM}; q=0"),  # "anything but this"
    ]:
        _assert_406(_get(client, url, h, accept), f"{url} {accept}", "multipart/related")
    # Another transfer syntax than the stored one would need transcoding, which this server does not do.
    for url, accept in [
        (f"{study_url}/series/{compressed}/instances/{jpeg2k}", f"{MULTIPART_DICOM}; transfer-syntax={EXPLICIT_LE}"),
        (f"{study_url}/series/{compressed}", f"{MULTIPART_DICOM}; transfer-syntax={JPEG2K_LOSSLESS}"),  # the cine
        (study_url, f"{MULTIPART_DICOM}; transfer-syntax={EXPLICIT_LE}"),  # the compressed series
        (f"{study_url}/series/{plain}", f"{MULTIPART_DICOM}; transfer-syntax={JPEG_BASELINE}"),
    ]:
        _assert_406(_get(client, url, h, accept), f"{url} {accept}", "transcode")
    assert len(_audit_rows(services)) == baseline  # nothing was disclosed


# --- not found


def test_unknown_or_mismatched_uids_are_a_json_404(client, auth, study, services):
    h = auth["clinician"]
    plain, compressed = study.series
    sop = study.series[plain][0]
    unknown = "1.2.826.0.1.3680043.8.498.404"
    baseline = len(_audit_rows(services))
    for url in (
        f"/dicomweb/studies/{unknown}",
        f"/dicomweb/studies/{unknown}/series/{plain}",
        f"/dicomweb/studies/{study.uid}/series/{unknown}",
        f"/dicomweb/studies/{study.uid}/series/{plain}/instances/{unknown}",
        f"/dicomweb/studies/{study.uid}/series/{compressed}/instances/{sop}",  # an instance of the other series
        f"/dicomweb/studies/{unknown}/series/{plain}/instances/{sop}",
    ):
        resp = client.get(url, headers=h)
        assert resp.status_code == 404 and resp.is_json, url
        body = resp.get_json()
        assert body["code"] == "not_found" and body["status"] == 404 and body["message"], url
    assert len(_audit_rows(services)) == baseline


def test_a_stored_file_gone_missing_is_a_404_before_any_part_is_sent(client, auth, study, services):
    sop = study.series[next(iter(study.series))][1]
    with services.session_factory() as s:
        key = s.scalars(select(Instance.storage_key).where(Instance.sop_instance_uid == sop)).one()
    services.store.path(key).unlink()
    resp = client.get(f"/dicomweb/studies/{study.uid}", headers=auth["clinician"])
    assert resp.status_code == 404 and resp.get_json()["code"] == "not_found"


# --- roles and audit


def test_roles_and_the_audit_trail(client, auth, study, services, caplog):
    caplog.set_level(logging.DEBUG)
    plain, _ = study.series
    sop = study.series[plain][0]
    urls = {
        "study": f"/dicomweb/studies/{study.uid}",
        "series": f"/dicomweb/studies/{study.uid}/series/{plain}",
        "image": f"/dicomweb/studies/{study.uid}/series/{plain}/instances/{sop}",
    }
    for url in urls.values():
        assert client.get(url).status_code == 401
        assert client.get(url, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert client.get(url, headers=auth["admin"]).status_code == 403
    baseline = len(_audit_rows(services))
    calls = [("ehr", "study"), ("auditor", "series"), ("clinician", "image"), ("ehr", "image")]
    for role, level in calls:
        assert _parts(client.get(urls[level], headers=auth[role]))
    rows = _audit_rows(services)[baseline:]
    entity = {"study": study.uid, "series": plain, "image": sop}
    got = [(r.actor, r.role, r.action, r.entity_type, r.entity_id) for r in rows]
    assert got == [(f"test-{role}", role, "retrieve", level, entity[level]) for role, level in calls]
    assert all(r.source == "127.0.0.1" and r.at is not None for r in rows)
    hashes = {u: client.get(f"/api/images/{u}", headers=auth["auditor"]).get_json()["sha256"] for u in study.instances}
    assert rows[0].detail == {"instances": [{"sop_instance_uid": u, "sha256": hashes[u]} for u in study.instances]}
    assert rows[1].detail == {
        "study_instance_uid": study.uid,
        "instances": [{"sop_instance_uid": u, "sha256": hashes[u]} for u in study.series[plain]],
    }
    assert rows[2].detail == {"study_instance_uid": study.uid, "series_instance_uid": plain, "sha256": hashes[sop]}
    # UIDs and hashes only: neither the audit details nor the log carry the patient.
    assert EXAMPLE_MRN not in str([r.detail for r in rows]) and EXAMPLE_MRN not in caplog.text
