"""The guidance report PDF (what the FHIR DocumentReference points at) and the attached consent form, read back
with pypdf as a payer's reviewer would open them."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from pypdf import PdfReader

from service.config import Settings
from tests.procedureutil import EXAMPLE, full_report

PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"  # noqa: E501


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings.for_tests(tmp_path, database_url=database_url, timezone="America/Chicago")


def _images(reader: PdfReader) -> int:
    return sum(len(page.images) for page in reader.pages)


def test_the_report_pdf_shows_the_guidance_and_the_pre_and_post_images(client, auth, modality):
    study = {"AccessionNumber": "ACC25031401", "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.5151"}
    modality.send(
        modality.image("ge_jpeg2k", SeriesDescription="PRE", **study),
        modality.image("sonosite_cine", SeriesDescription="POST", **study),
    )
    pid = client.post("/api/procedures", json=full_report(), headers=auth["clinician"]).get_json()["id"]
    client.post(f"/api/procedures/{pid}/finalize", headers=auth["clinician"])
    resp = client.get(f"/api/procedures/{pid}/report.pdf", headers=auth["ehr"])
    assert resp.status_code == 200 and resp.mimetype == "application/pdf"
    reader = PdfReader(io.BytesIO(resp.data))
    text = " ".join((page.extract_text() or "") for page in reader.pages)
    squashed = " ".join(text.split())
    assert "Ultrasound-guided injection: Knee joint, right" in squashed
    assert "Suprapatellar recess identified" in squashed and "KX2481" in squashed
    assert "Before the injection" in squashed and "After: needle in target" in squashed
    assert "performer: test-clinician" in squashed and "MRN-0042917" in squashed
    assert _images(reader) == 2
    again = client.get(f"/api/procedures/{pid}/report.pdf", headers=auth["ehr"])
    assert again.data == resp.data and again.headers["ETag"] == resp.headers["ETag"]  # same version, same bytes


def test_a_report_without_images_says_so(client, auth):
    pid = client.post("/api/procedures", json=full_report(), headers=auth["clinician"]).get_json()["id"]
    reader = PdfReader(io.BytesIO(client.get(f"/api/procedures/{pid}/report.pdf", headers=auth["auditor"]).data))
    assert "No images are linked" in reader.pages[0].extract_text() and _images(reader) == 0


def test_the_consent_form_comes_back_as_uploaded_and_404_without_one(client, auth):
    consent = {
        **EXAMPLE["consent"],
        "document": {"content_type": "application/pdf", "data": base64.b64encode(PDF).decode()},
    }
    with_doc = client.post("/api/procedures", json=full_report(consent=consent), headers=auth["clinician"])
    pid = with_doc.get_json()["id"]
    resp = client.get(f"/api/procedures/{pid}/consent.pdf", headers=auth["clinician"])
    assert resp.status_code == 200 and resp.data == PDF and resp.mimetype == "application/pdf"
    other = client.post("/api/procedures", json=full_report(), headers=auth["clinician"]).get_json()["id"]
    missing = client.get(f"/api/procedures/{other}/consent.pdf", headers=auth["clinician"])
    assert missing.status_code == 404 and "consent document" in missing.get_json()["message"]
