"""Procedure report schemas: every field valid and invalid, the cross-field rules, drafts and finalisation."""

from __future__ import annotations

import base64
import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from marshmallow import Schema, ValidationError, fields

from schemas.procedures import (
    MAX_DOCUMENT_BYTES,
    AspirationSchema,
    ConsentSchema,
    GuidanceSchema,
    InjectateSchema,
    ProcedureCreateSchema,
    ProcedurePatchSchema,
    current_catalog,
    finalisation_problems,
    report_warnings,
    set_catalog,
    use_catalog,
)
from service.coding.catalog import DATA_DIR, default_catalog, load_catalog

EXAMPLE_PATH = Path(__file__).parents[1] / "data" / "procedure_example.json"
EXAMPLE: dict[str, Any] = json.loads(EXAMPLE_PATH.read_text())
DELETE = object()
PDF = b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
PDF_B64 = base64.b64encode(PDF).decode()
DOCUMENT = {"content_type": "application/pdf", "data": PDF_B64, "title": "Signed consent"}
SUPERVISOR = {"name": "Sam Okafor", "npi": "1456789019", "credentials": "MD"}
REPRESENTATIVE = {"consent.signer": "representative", "consent.representative_name": "Jo Example"}
ASPIRATING = {"kind": "aspiration_and_injection"}
NOT_US = {"guidance.approach": DELETE, "guidance.probe_type": DELETE, "guidance.probe_frequency_mhz": DELETE}


def _set(doc: Any, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        doc = doc[int(part)] if isinstance(doc, list) else doc.setdefault(part, {})
    if value is DELETE:
        doc.pop(last, None)
    elif isinstance(doc, list):
        doc[int(last)] = value
    else:
        doc[last] = value


def report(changes: dict[str, Any] | None = None, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The example report (or ``base``) with dotted-path changes applied in order (DELETE removes a field)."""
    doc = copy.deepcopy(EXAMPLE if base is None else base)
    for path, value in (changes or {}).items():
        _set(doc, path, value if value is DELETE else copy.deepcopy(value))
    return doc


def errors_of(doc: Any, schema: Schema | None = None) -> dict[str, list[str]]:
    with pytest.raises(ValidationError) as info:
        (schema or ProcedureCreateSchema()).load(doc)
    messages = info.value.messages
    assert isinstance(messages, dict)
    assert all(
        isinstance(k, str) and isinstance(v, list) and all(isinstance(m, str) for m in v) for k, v in messages.items()
    )
    return messages  # type: ignore[return-value]


# --- every field: valid examples -------------------------------------------------------------------------------------

VALID = [
    ("patient", {"identifier": {"system": "urn:oid:2.16.840.1.113883.4.1", "value": "123-45-6789"}}, {}),
    ("patient.identifier", {"system": "https://hospital.example.org/mrn", "value": "7"}, {}),
    ("patient.identifier.system", "urn:oid:2.16.840.1.113883.3.9999.1", {}),
    ("patient.identifier.value", "MRN 0042917", {}),
    ("patient.name", {"family": "O'Brien"}, {}),
    ("patient.name.family", "Nguyen-Smith", {}),
    ("patient.name.given", ["Ann", "Marie"], {}),
    ("patient.birth_date", "1990-02-28", {}),
    ("patient.sex", "male", {}),
    ("encounter_identifier", {"value": "V1"}, {}),
    ("encounter_identifier.system", "urn:oid:1.2.3.4", {}),
    ("encounter_identifier.value", "2025-000187", {}),
    ("accession_number", "A" * 16, {}),
    ("study_instance_uid", "1.2.840.113619.2.55.3." + "1" * 42, {}),
    ("study_instance_uid", "2.25.0", {}),
    ("scheduled_station_ae_title", "US_ROOM_2", {}),
    ("scheduled_station_ae_title", "LOGIQ E10 A", {}),
    ("place_of_service", "22", {}),
    ("place_of_service", "24", {}),
    ("coverage", {"kind": "self_pay"}, {}),
    ("coverage.kind", "nhs", {"coverage.member_id": DELETE}),
    ("coverage.payer", "Aetna", {}),
    ("coverage.payer_id", "60054", {}),
    ("coverage.member_id", "W123456789", {}),
    ("equipment_ownership", "facility_owned", {}),
    ("performer", {"name": "Lee Park", "local_id": "EMP-7"}, {}),
    ("performer.name", "Dr Lee Park", {}),
    ("performer.npi", "1456789019", {}),
    ("performer.local_id", "EMP-7", {"performer.npi": DELETE}),
    ("performer.credentials", "PA-C", {}),
    ("performer.in_training", True, {"supervisor": SUPERVISOR}),
    ("supervisor", SUPERVISOR, {}),
    ("performing_organization", {"name": "Clinic"}, {}),
    ("performing_organization.name", "North Clinic", {}),
    ("performing_organization.npi", "1000000004", {}),
    ("performing_organization.identifier", {"system": "urn:oid:1.2.3", "value": "ORG-1"}, {}),
    ("kind", "aspiration_and_injection", {}),
    ("site", "hip_joint", {"indications": [{"code": "M16.11"}]}),
    ("laterality", "bilateral", {"indications": [{"code": "M17.0"}]}),
    ("digit", 2, {"site": "finger_ip_mcp", "indications": []}),
    ("guidance", {"modality": "none"}, {}),
    ("guidance.modality", "fluoroscopy", NOT_US),
    ("guidance.approach", "out_of_plane", {}),
    ("guidance.probe_type", "hockey_stick", {}),
    ("guidance.probe_frequency_mhz", 18.5, {}),
    ("guidance.needle_gauge", 25, {}),
    ("guidance.needle_length_mm", 90, {}),
    ("guidance.realtime_needle_guidance", False, {}),
    ("guidance.needle_tip_visualised", False, {}),
    ("guidance.hydrodissection", True, {}),
    ("guidance.injectate_spread_observed", False, {}),
    ("guidance.description", "Needle tip seen in the recess.", {}),
    ("guidance.reasons", ["deep_joint", "failed_landmark_attempt", "effusion_or_baker_cyst"], {}),
    ("guidance.reason_other", "needle phobia after a painful blind attempt", {"guidance.reasons": ["other"]}),
    ("guidance.prior_landmark_attempts", 0, {}),
    ("guidance.conservative_treatment_months", 3, {}),
    ("injectates", [], {}),
    ("injectates.0.drug", "methylprednisolone_acetate", {}),
    ("injectates.0.dose", 20, {}),
    ("injectates.0.dose_unit", "mg", {}),
    ("injectates.0.volume_ml", 2, {}),
    ("injectates.0.concentration_mg_per_ml", 10, {}),
    ("injectates.0.ndc", "00003029305", {}),
    ("injectates.0.lot_number", "A1", {}),
    ("injectates.0.expiry_date", "2025-03-14", {}),  # the procedure's own date is still good
    ("injectates.0.container_type", "multi_dose", {"injectates.0.discarded_amount": DELETE}),
    ("injectates.0.container_amount", 80, {"injectates.0.discarded_amount": 40}),
    ("injectates.0.discarded_amount", 0, {}),
    ("indications", [], {}),
    ("indications.0.code", "M25.561", {}),
    ("indications.0.description", "Osteoarthritis", {}),
    ("aspiration", {"volume_ml": 20, "appearance": "straw"}, ASPIRATING),
    ("aspiration.volume_ml", 0, ASPIRATING),  # a dry tap
    ("aspiration.appearance", "blood_stained", ASPIRATING),
    ("aspiration.sent_for_analysis", True, ASPIRATING),
    ("aspiration.analyses", ["crystals", "cell_count"], {**ASPIRATING, "aspiration.sent_for_analysis": True}),
    ("complications", ["vasovagal_reaction"], {}),
    ("complication_details", "brief presyncope, recovered lying flat", {"complications": ["other"]}),
    ("post_procedure_instructions", "Rest.", {}),
    ("consent", {"obtained": False}, {}),
    ("consent.obtained", False, {}),
    ("consent.method", "verbal", {}),
    ("consent.signer", "representative", {"consent.representative_name": "Jo Example"}),
    ("consent.representative_name", "Jo Example", {"consent.signer": "representative"}),
    ("consent.representative_relationship", "daughter", REPRESENTATIVE),
    ("consent.obtained_at", "2025-03-14T14:05:00Z", {}),
    ("consent.off_label_disclosed", True, {}),
    ("consent.abn_signed", True, {}),
    ("consent.document", DOCUMENT, {}),
    ("consent.document.content_type", "application/pdf", {"consent.document": DOCUMENT}),
    ("consent.document.data", base64.encodebytes(PDF).decode(), {"consent.document": DOCUMENT}),  # line breaks
    ("consent.document.title", "Consent form", {"consent.document": DOCUMENT}),
    ("times", {}, {}),
    ("times.scheduled_at", "2025-03-15T09:00:00+00:00", {}),  # any time, even after the end
    ("times.started_at", "2025-03-14T14:12:00Z", {}),
    ("times.injected_at", "2025-03-14T09:12:00-05:00", {}),  # equal to the start
    ("times.ended_at", "2025-03-14T09:16:30-05:00", {}),  # equal to the injection
    ("educational", True, {}),
]


@pytest.mark.parametrize(("path", "value", "extra"), VALID, ids=[f"{p}={v!r}"[:70] for p, v, _ in VALID])
def test_valid_field_values_load(path: str, value: Any, extra: dict[str, Any]) -> None:
    loaded = ProcedureCreateSchema().load(report({**extra, path: value}))
    assert loaded["patient"]["identifier"]


# --- every field: invalid examples, keyed by the exact path and saying why -------------------------------------------

INVALID = [
    ("patient", DELETE, {}, None, "Missing data for required field."),
    ("patient", "Margaret", {}, None, "Invalid input type."),
    ("patient.identifier", DELETE, {}, None, "Missing data for required field."),
    ("patient.identifier.system", "mrn", {}, None, "must be an absolute URI"),
    ("patient.identifier.system", DELETE, {}, None, "Missing data for required field."),
    ("patient.identifier.value", "", {}, None, "Length must be between 1 and 64."),
    ("patient.identifier.value", " MRN", {}, None, "must not be blank or start or end with a space"),
    ("patient.name", "Margaret Example", {}, None, "Invalid input type."),
    ("patient.name.family", DELETE, {}, None, "Missing data for required field."),
    ("patient.name.given", ["A"] * 6, {}, None, "Longer than maximum length 5."),
    ("patient.name.given", [""], {}, "patient.name.given.0", "Length must be between 1 and 100."),
    ("patient.birth_date", "1990-02-30", {}, None, "Not a valid date."),
    ("patient.birth_date", "2999-01-01", {}, None, "must not be in the future"),
    ("patient.birth_date", "1899-12-31", {}, None, "must not be before 1900-01-01"),
    ("patient.sex", "f", {}, None, "Must be one of: female, male, other, unknown."),
    ("encounter_identifier", "V1", {}, None, "Invalid input type."),
    ("encounter_identifier.system", "visit", {}, None, "must be an absolute URI"),
    ("encounter_identifier.value", DELETE, {}, None, "Missing data for required field."),
    ("encounter_identifier.value", "V1\\V2", {}, None, "must not contain a backslash"),
    ("patient.identifier.value", "MRN\x07", {}, None, "must not contain a backslash or control characters"),
    ("accession_number", "A" * 17, {}, None, "must be 1-16 characters without backslash"),
    ("accession_number", "A\\B", {}, None, "must be 1-16 characters without backslash"),
    ("study_instance_uid", "1.2.03", {}, None, "must be a DICOM UID"),
    ("study_instance_uid", "1.2." + "3" * 62, {}, None, "must be a DICOM UID"),
    ("study_instance_uid", "1.2.x", {}, None, "must be a DICOM UID"),
    ("scheduled_station_ae_title", "A" * 17, {}, None, "must be a DICOM AE title"),
    ("scheduled_station_ae_title", "   ", {}, None, "must be a DICOM AE title"),
    ("scheduled_station_ae_title", "US\\2", {}, None, "must be a DICOM AE title"),
    ("place_of_service", 11, {}, None, "Must be one of: 11, 19, 21, 22, 23, 24."),
    ("place_of_service", "99", {}, None, "Must be one of: 11, 19"),
    ("coverage", [], {}, None, "Invalid input type."),
    ("coverage.kind", "private", {}, None, "Must be one of: medicare, medicare_advantage"),
    ("coverage.kind", DELETE, {}, None, "Missing data for required field."),
    ("coverage.payer", DELETE, {}, None, "required for medicare coverage (only self_pay has no payer)"),
    ("coverage.payer_id", "", {}, None, "Length must be between 1 and 80."),
    ("coverage.member_id", DELETE, {}, None, "required for medicare coverage"),
    ("equipment_ownership", "leased", {}, None, "Must be one of: office_owned, facility_owned."),
    ("performer", "Dr X", {}, None, "Invalid input type."),
    ("performer.name", DELETE, {}, None, "Missing data for required field."),
    ("performer.npi", "1234567890", {}, None, "is not a valid NPI: the check digit does not match"),
    ("performer.npi", "12345", {}, None, "must be 10 digits"),
    ("performer.npi", DELETE, {}, None, "give an NPI or a local_id"),
    ("performer.local_id", "", {"performer.npi": DELETE}, None, "Length must be between 1 and 64."),
    ("performer.credentials", "X" * 41, {}, None, "Length must be between 1 and 40."),
    ("performer.in_training", "sometimes", {}, None, "Not a valid boolean."),
    ("performer.in_training", True, {}, "supervisor", "required when the performer is in training"),
    ("supervisor", "Dr Y", {}, None, "Invalid input type."),
    ("supervisor", {**SUPERVISOR, "in_training": True}, {}, "supervisor.in_training", "cannot be in training"),
    ("performing_organization", 5, {}, None, "Invalid input type."),
    ("performing_organization.name", DELETE, {}, None, "Missing data for required field."),
    ("performing_organization.npi", "1000000000", {}, None, "the check digit does not match"),
    ("performing_organization.identifier", "ORG-1", {}, None, "Invalid input type."),
    ("kind", "biopsy", {}, None, "Must be one of: injection, aspiration, aspiration_and_injection."),
    ("kind", "aspiration", {"times.injected_at": DELETE}, "injectates", "a procedure of kind aspiration has no inj"),
    ("site", "kneee", {}, None, "unknown site 'kneee': not in the site catalog"),
    ("laterality", "both", {}, None, "Must be one of: left, right, bilateral, not_applicable."),
    ("laterality", "not_applicable", {}, None, "required for the paired site knee_joint: left, right or bilateral"),
    ("digit", 6, {"site": "finger_ip_mcp", "indications": []}, None, "greater than or equal to 1 and less"),
    ("digit", 2.0, {"site": "finger_ip_mcp", "indications": []}, None, "Not a valid integer."),
    ("digit", 2, {}, None, "only finger and toe sites take a digit; knee_joint does not"),
    ("guidance", "US", {}, None, "Invalid input type."),
    ("guidance.modality", "xray", {}, None, "Must be one of: ultrasound, none, fluoroscopy, ct, mr."),
    (
        "guidance.modality",
        "fluoroscopy",
        {"guidance.probe_type": DELETE, "guidance.probe_frequency_mhz": DELETE},
        "guidance.approach",
        "only for ultrasound guidance (modality is fluoroscopy)",
    ),
    ("guidance.approach", "lateral", {}, None, "Must be one of: in_plane, out_of_plane, other."),
    ("guidance.probe_type", "phased_array", {}, None, "Must be one of: linear, curvilinear, hockey_stick."),
    ("guidance.probe_type", "linear", {**NOT_US, "guidance.modality": "ct"}, None, "only for ultrasound guidance"),
    ("guidance.probe_frequency_mhz", 0.5, {}, None, "greater than or equal to 1 and less than or equal to 70"),
    ("guidance.probe_frequency_mhz", "fast", {}, None, "Not a valid number."),
    ("guidance.needle_gauge", 22.5, {}, None, "Not a valid integer."),
    ("guidance.needle_gauge", 40, {}, None, "greater than or equal to 10 and less than or equal to 34"),
    ("guidance.needle_length_mm", "nan", {}, None, "Special numeric values (nan or infinity) are not permitted."),
    ("guidance.needle_length_mm", 0, {}, None, "greater than or equal to 5"),
    ("guidance.realtime_needle_guidance", "perhaps", {}, None, "Not a valid boolean."),
    (
        "guidance.realtime_needle_guidance",
        True,
        {**NOT_US, "guidance.modality": "none", "guidance.needle_tip_visualised": False},
        None,
        "cannot be true without image guidance (modality is none)",
    ),
    ("guidance.needle_tip_visualised", "perhaps", {}, None, "Not a valid boolean."),
    ("guidance.hydrodissection", [], {}, None, "Not a valid boolean."),
    ("guidance.injectate_spread_observed", {}, {}, None, "Not a valid boolean."),
    ("guidance.description", "", {}, None, "Length must be between 1 and 10000."),
    ("guidance.description", "x" * 10001, {}, None, "Length must be between 1 and 10000."),
    ("guidance.reasons", ["obese"], {}, "guidance.reasons.0", "Must be one of: severe_trauma_deranged_joint"),
    ("guidance.reasons", ["deep_joint", "deep_joint"], {}, None, "lists a reason twice"),
    ("guidance.reasons", ["other"], {}, "guidance.reason_other", "required when reasons include 'other'"),
    ("guidance.reason_other", "because", {}, None, "only with the reason 'other'"),
    ("guidance.prior_landmark_attempts", -1, {}, None, "greater than or equal to 0"),
    ("guidance.conservative_treatment_months", 1.5, {}, None, "Not a valid integer."),
    ("injectates", "triamcinolone", {}, None, "Not a valid list."),
    ("injectates", [{"drug": "lidocaine"}] * 21, {}, None, "Longer than maximum length 20."),
    ("injectates.0.drug", "kenalog", {}, None, "unknown drug 'kenalog': not in the drug catalog"),
    ("injectates.0.drug", DELETE, {}, None, "Missing data for required field."),
    ("injectates.0.dose", 0, {}, None, "Must be greater than 0"),
    ("injectates.0.dose", 50, {"injectates.0.discarded_amount": DELETE}, None, "50 exceeds the single-dose container"),
    ("injectates.0.dose_unit", "ml", {}, None, "Must be one of: mg, mL."),
    ("injectates.0.dose_unit", "mL", {}, None, "Triamcinolone acetonide (Kenalog-10, Kenalog-40) is recorded in mg"),
    ("injectates.0.dose_unit", DELETE, {}, None, "required with a dose"),
    ("injectates.0.volume_ml", 0, {}, None, "Must be greater than 0"),
    ("injectates.0.volume_ml", 250, {}, None, "less than or equal to 200"),
    ("injectates.0.concentration_mg_per_ml", -1, {}, None, "Must be greater than 0"),
    ("injectates.0.ndc", "0003-293-05", {}, None, "must be an NDC: 4-4-2, 5-3-2 or 5-4-1 with hyphens, or 11 digits"),
    ("injectates.0.lot_number", "L" * 41, {}, None, "Length must be between 1 and 40."),
    ("injectates.0.expiry_date", "03/2026", {}, None, "Not a valid date."),
    ("injectates.0.expiry_date", "2025-03-13", {}, None, "expired on 2025-03-13, before the procedure (2025-03-14)"),
    ("injectates.0.container_type", "vial", {}, None, "Must be one of: single_dose, multi_dose."),
    (
        "injectates.0.container_type",
        "multi_dose",
        {"injectates.0.discarded_amount": 5},
        "injectates.0.discarded_amount",
        "only a single-dose container has a discarded amount",
    ),
    ("injectates.0.container_amount", 0, {}, None, "Must be greater than 0"),
    ("injectates.0.container_amount", 30, {}, "injectates.0.discarded_amount", "exceeds the container amount 30"),
    ("injectates.0.discarded_amount", -1, {}, None, "greater than or equal to 0"),
    ("injectates.0.discarded_amount", 5, {}, None, "dose 40 + discarded 5 exceeds the container amount 40"),
    ("indications", "M17.11", {}, None, "Not a valid list."),
    ("indications", [{"code": "M17.11"}] * 13, {}, None, "Longer than maximum length 12."),
    ("indications.0.code", "M1711", {}, None, "'M1711' is not an ICD-10-CM code"),
    ("indications.0.code", "M17.1", {}, None, "M17.1 is not a complete code of M17"),
    ("indications.0.code", "M17.12", {}, None, "M17.12 codes the left side but the procedure is on the right side"),
    ("indications.0.code", "M75.101", {}, None, "does not fit the site knee_joint"),
    ("indications.0.code", DELETE, {}, None, "Missing data for required field."),
    ("indications.0.description", "", {}, None, "Length must be between 1 and 200."),
    ("aspiration", "20 mL", ASPIRATING, None, "Invalid input type."),
    ("aspiration", {"volume_ml": 20}, {}, None, "a procedure of kind injection has no aspiration"),
    ("aspiration.volume_ml", -1, ASPIRATING, None, "greater than or equal to 0"),
    ("aspiration.appearance", "yellow", ASPIRATING, None, "Must be one of: clear, straw"),
    ("aspiration.sent_for_analysis", "lab", ASPIRATING, None, "Not a valid boolean."),
    ("aspiration.analyses", ["ph"], ASPIRATING, "aspiration.analyses.0", "Must be one of: cell_count, crystals"),
    (
        "aspiration.analyses",
        ["culture"],
        {**ASPIRATING, "aspiration.sent_for_analysis": False},
        None,
        "analyses are listed but sent_for_analysis is false",
    ),
    ("complications", ["fainted"], {}, "complications.0", "Must be one of: vasovagal_reaction"),
    ("complications", ["bleeding", "bleeding"], {}, None, "lists a complication twice"),
    ("complications", ["other"], {}, "complication_details", "required when complications include 'other'"),
    ("complication_details", "", {}, None, "Length must be between 1 and 2000."),
    ("post_procedure_instructions", "x" * 4001, {}, None, "Length must be between 1 and 4000."),
    ("consent", "yes", {}, None, "Invalid input type."),
    ("consent.obtained", DELETE, {}, None, "Missing data for required field."),
    ("consent.obtained", "maybe", {}, None, "Not a valid boolean."),
    ("consent.method", "fax", {}, None, "Must be one of: written, verbal, electronic."),
    ("consent.signer", "guardian", {}, None, "Must be one of: patient, representative."),
    ("consent.signer", "representative", {}, "consent.representative_name", "required when a representative signed"),
    ("consent.representative_name", "Jo Example", {}, None, "only when a representative signed (signer is patient)"),
    ("consent.representative_relationship", "son", {}, None, "only when a representative signed"),
    ("consent.obtained_at", "2025-03-14T09:05:00", {}, None, "Not a valid aware datetime."),
    ("consent.obtained_at", "2025-03-14T09:30:00-05:00", {}, None, "must not be after times.started_at"),
    ("consent.off_label_disclosed", "n/a", {}, None, "Not a valid boolean."),
    ("consent.abn_signed", 2, {}, None, "Not a valid boolean."),
    ("consent.document", "consent.pdf", {}, None, "Invalid input type."),
    ("consent.document.content_type", "image/png", {"consent.document": DOCUMENT}, None, "must be application/pdf"),
    ("consent.document.content_type", DELETE, {"consent.document": DOCUMENT}, None, "Missing data for required"),
    ("consent.document.data", "not base64!", {"consent.document": DOCUMENT}, None, "must be base64 text (RFC 4648)"),
    (
        "consent.document.data",
        base64.b64encode(b"\x89PNG\r\n\x1a\n").decode(),
        {"consent.document": DOCUMENT},
        None,
        "is not a PDF: it does not start with %PDF-",
    ),
    (
        "consent.document.data",
        base64.b64encode(b"%PDF-" + bytes(MAX_DOCUMENT_BYTES)).decode(),
        {"consent.document": DOCUMENT},
        None,
        f"the limit is {MAX_DOCUMENT_BYTES} bytes",
    ),
    ("consent.document.title", "", {"consent.document": DOCUMENT}, None, "Length must be between 1 and 200."),
    ("times", "today", {}, None, "Invalid input type."),
    ("times.scheduled_at", "tomorrow", {}, None, "Not a valid datetime."),
    ("times.started_at", "2025-03-14T09:12:00", {}, None, "Not a valid aware datetime."),
    ("times.started_at", "2025-03-14T09:20:00-05:00", {}, "times.injected_at", "must not be before started_at"),
    ("times.injected_at", "2025-03-14T09:10:00-05:00", {}, None, "must not be before started_at"),
    (
        "times.injected_at",
        "2025-03-14T09:16:30-05:00",
        {"kind": "aspiration", "injectates": []},
        None,
        "a procedure of kind aspiration has no injection time",
    ),
    ("times.ended_at", "2025-03-14T09:15:00-05:00", {}, None, "must not be before injected_at"),
    ("educational", "teaching", {}, None, "Not a valid boolean."),
]


@pytest.mark.parametrize(
    ("path", "value", "extra", "at", "why"),
    INVALID,
    ids=[f"{p}={v!r}"[:70] for p, v, *_ in INVALID],
)
def test_invalid_field_values_are_named_with_why(path: str, value: Any, extra: dict, at: str | None, why: str):
    errors = errors_of(report({**extra, path: value}))
    assert set(errors) == {at or path}, errors
    assert any(why in message for message in errors[at or path]), errors


def _schema_fields(schema: type[Schema], seen: set[tuple[type[Schema], str]]) -> set[tuple[type[Schema], str]]:
    for name, field in schema._declared_fields.items():
        seen.add((schema, name))
        inner = field.inner if isinstance(field, fields.List) else field
        if isinstance(inner, fields.Nested) and not any(s is inner.nested for s, _ in seen):
            _schema_fields(inner.nested, seen)  # type: ignore[arg-type]
    return seen


def _owner(path: str) -> tuple[type[Schema], str]:
    schema: type[Schema] = ProcedureCreateSchema
    parts = [p for p in path.split(".") if not p.isdigit()]
    for part in parts[:-1]:
        field = schema._declared_fields[part]
        field = field.inner if isinstance(field, fields.List) else field
        schema = field.nested  # type: ignore[attr-defined]
    return schema, parts[-1]


def test_every_field_of_every_schema_has_valid_and_invalid_examples() -> None:
    everything = _schema_fields(ProcedureCreateSchema, set())
    assert len(everything) > 90
    valid = {_owner(path) for path, *_ in VALID}
    invalid = {_owner(path) for path, *_ in INVALID}
    assert {f"{s.__name__}.{n}" for s, n in everything - valid} == set()
    assert {f"{s.__name__}.{n}" for s, n in everything - invalid} == set()


def test_unknown_fields_are_refused_where_they_appear() -> None:
    errors = errors_of(report({"colour": "red", "patient.shoe_size": 9, "injectates.0.route": "iv"}))
    assert errors == {
        "colour": ["Unknown field."],
        "patient.shoe_size": ["Unknown field."],
        "injectates.0.route": ["Unknown field."],
    }


@pytest.mark.parametrize(
    ("changes", "at"),
    [
        ({"laterality": "both"}, "laterality"),
        ({"site": "finger_ip_mcp", "indications": [], "digit": 9}, "digit"),
        ({"performer.in_training": True, "supervisor": "Dr Y"}, "supervisor"),
        ({"encounter_identifier": "V1", "accession_number": DELETE}, "encounter_identifier"),
        ({"coverage.payer": ""}, "coverage.payer"),
        ({"guidance.reasons": ["other"], "guidance.reason_other": ""}, "guidance.reason_other"),
        ({"guidance.reasons": ["obese"], "guidance.reason_other": "x"}, "guidance.reasons.0"),
        ({"injectates.0.dose_unit": "ml"}, "injectates.0.dose_unit"),
        ({"consent.signer": "representative", "consent.representative_name": ""}, "consent.representative_name"),
        ({"complications": ["other"], "complication_details": ""}, "complication_details"),
        ({"performer.npi": "123"}, "performer.npi"),
    ],
)
def test_a_bad_value_is_not_also_reported_missing(changes: dict[str, Any], at: str) -> None:
    errors = errors_of(report(changes))
    assert list(errors) == [at]
    assert not any("required" in m for m in errors[at]), errors


def test_every_bad_field_is_reported_at_once() -> None:
    errors = errors_of(report({"patient.sex": "f", "indications.0.code": "M17.12", "times.ended_at": "soon"}))
    assert set(errors) == {"patient.sex", "indications.0.code", "times.ended_at"}


# --- the example report ----------------------------------------------------------------------------------------------


def test_the_example_report_loads_cleanly_and_is_final() -> None:
    loaded = ProcedureCreateSchema().load(report())
    assert loaded["site"] == "knee_joint" and loaded["laterality"] == "right"
    assert loaded["injectates"][0]["drug"] == "triamcinolone_acetonide" and loaded["injectates"][0]["dose"] == 40
    assert [i["code"] for i in loaded["indications"]] == ["M17.11"]
    assert finalisation_problems(loaded) == {}
    assert report_warnings(loaded) == {}
    # dump -> load gives the same report
    dumped = ProcedureCreateSchema().dump(loaded)
    assert json.loads(json.dumps(dumped)) == dumped
    assert ProcedureCreateSchema().load(dumped) == loaded


def test_the_attached_document_loads_as_bytes_and_dumps_as_base64() -> None:
    loaded = ConsentSchema().load({"obtained": True, "document": DOCUMENT})
    assert loaded["document"]["data"] == PDF
    assert ConsentSchema().dump(loaded)["document"]["data"] == PDF_B64


# --- laterality and digits -------------------------------------------------------------------------------------------

PAIRED = sorted(k for k, s in default_catalog().sites.items() if s.paired)
UNPAIRED = sorted(k for k, s in default_catalog().sites.items() if not s.paired)


def _at_site(site: str, **changes: Any) -> dict[str, Any]:
    digit = default_catalog().site(site).digit != "none"
    return report({"site": site, "indications": [], "digit": 3 if digit else DELETE, **changes})


@pytest.mark.parametrize("site", PAIRED)
def test_laterality_is_required_for_paired_sites(site: str) -> None:
    for laterality in ("left", "right", "bilateral"):
        ProcedureCreateSchema().load(_at_site(site, laterality=laterality))
    for laterality in ("not_applicable", DELETE):
        errors = errors_of(_at_site(site, laterality=laterality))
        assert errors == {"laterality": [f"required for the paired site {site}: left, right or bilateral"]}


@pytest.mark.parametrize("site", UNPAIRED)
def test_laterality_is_refused_for_unpaired_sites(site: str) -> None:
    for laterality in ("not_applicable", DELETE):
        ProcedureCreateSchema().load(_at_site(site, laterality=laterality))
    for laterality in ("left", "right", "bilateral"):
        errors = errors_of(_at_site(site, laterality=laterality))
        assert errors == {"laterality": [f"must be not_applicable: {site} is not a paired site"]}


@pytest.mark.parametrize(
    ("site", "message"),
    [
        ("finger_ip_mcp", "required for the finger site finger_ip_mcp (1 thumb .. 5 little finger)"),
        ("trigger_finger_sheath", "required for the finger site trigger_finger_sheath (1 thumb .. 5 little finger)"),
        ("toe_ip_mtp", "required for the toe site toe_ip_mtp (1 great toe .. 5 little toe)"),
    ],
)
def test_digit_is_required_for_finger_and_toe_sites(site: str, message: str) -> None:
    for digit in range(1, 6):
        ProcedureCreateSchema().load(_at_site(site, digit=digit))
    assert errors_of(_at_site(site, digit=DELETE)) == {"digit": [message]}


@pytest.mark.parametrize("site", ["knee_joint", "thumb_cmc", "de_quervain_sheath", "trigger_points"])
def test_digit_is_refused_elsewhere(site: str) -> None:
    laterality = "not_applicable" if site == "trigger_points" else "left"
    errors = errors_of(_at_site(site, digit=1, laterality=laterality))
    assert errors == {"digit": [f"only finger and toe sites take a digit; {site} does not"]}


# --- ICD-10-CM against the site and side -----------------------------------------------------------------------------


def test_icd10_laterality_contradiction_names_the_code_and_both_sides() -> None:
    errors = errors_of(report({"indications": [{"code": "M17.11"}, {"code": "M17.12"}]}))
    assert errors == {
        "indications.1.code": [
            "M17.12 codes the left side but the procedure is on the right side "
            "(ICD-10-CM laterality must agree with the procedure's)"
        ]
    }
    errors = errors_of(report({"laterality": "left"}))
    assert errors == {"indications.0.code": [errors["indications.0.code"][0]]}
    assert "M17.11 codes the right side but the procedure is on the left side" in errors["indications.0.code"][0]


@pytest.mark.parametrize(
    ("codes", "error"),
    [
        (["M17.0"], None),  # a bilateral code
        (["M17.11", "M17.12"], None),  # both sides
        (["M17.11"], "a bilateral procedure needs a bilateral code or both a left and a right code; M17.11 codes"),
        (["M17.12", "M25.562"], "M17.12 codes the left side only"),
        (["M17.9"], None),  # no side character: nothing to compare
    ],
)
def test_bilateral_procedure_needs_bilateral_or_both_sides(codes: list[str], error: str | None) -> None:
    doc = report({"laterality": "bilateral", "indications": [{"code": c} for c in codes]})
    if error is None:
        ProcedureCreateSchema().load(doc)
    else:
        messages = errors_of(doc)
        assert list(messages) == ["indications"] and error in messages["indications"][0]


def test_bilateral_code_is_kept_for_one_side_treated_and_unspecified_side_only_warns() -> None:
    loaded = ProcedureCreateSchema().load(report({"indications": [{"code": "M17.0"}, {"code": "M17.10"}]}))
    assert report_warnings(loaded) == {
        "indications.1.code": "M17.10 is an unspecified-side code but the procedure's side is documented (right); "
        "code the documented side"
    }


def test_duplicate_indication_codes() -> None:
    errors = errors_of(report({"indications": [{"code": "M17.11"}, {"code": "M17.11"}]}))
    assert errors == {"indications.1.code": ["M17.11 is listed twice"]}


# --- off-label consent -----------------------------------------------------------------------------------------------

HA = {"drug": "synvisc_one", "dose": 48, "dose_unit": "mg", "container_type": "single_dose", "container_amount": 48}


@pytest.mark.parametrize(
    ("site", "injectate", "codes", "reason"),
    [
        ("hip_joint", HA, ["M16.11"], "Hyaluronan: Synvisc-One is labelled only for Knee joint, not for Hip joint"),
        ("glenohumeral_joint", {**HA, "drug": "triamcinolone_er_microsphere", "dose": 32}, ["M19.011"], "Zilretta"),
        ("knee_joint", {"drug": "prp_autologous", "dose": 4, "dose_unit": "mL"}, ["M17.11"], "investigational"),
    ],
)
def test_off_label_use_needs_disclosure_in_the_consent(site: str, injectate: dict, codes: list[str], reason: str):
    changes = {"site": site, "injectates": [injectate], "indications": [{"code": c} for c in codes]}
    errors = errors_of(report(changes))
    assert list(errors) == ["consent.off_label_disclosed"]
    assert errors["consent.off_label_disclosed"][0].startswith("must be true: off-label use (")
    assert reason in errors["consent.off_label_disclosed"][0]
    ProcedureCreateSchema().load(report({**changes, "consent.off_label_disclosed": True}))
    draft = ProcedureCreateSchema().load(report({**changes, "consent": DELETE}))  # no consent yet: a draft
    assert "consent" in finalisation_problems(draft)


def test_on_label_products_need_no_disclosure() -> None:
    ProcedureCreateSchema().load(report({"injectates": [HA]}))
    ProcedureCreateSchema().load(report({"site": "carpal_tunnel", "indications": [{"code": "G56.01"}]}))


def test_prp_on_medicare_without_abn_is_a_warning() -> None:
    prp = {"drug": "prp_autologous", "dose": 4, "dose_unit": "mL"}
    loaded = ProcedureCreateSchema().load(report({"injectates": [prp], "consent.off_label_disclosed": True}))
    assert report_warnings(loaded) == {
        "consent.abn_signed": "Medicare non-covered product without an ABN: the claim carries GZ"
    }


def test_payer_risk_sites_warn_under_ultrasound() -> None:
    loaded = ProcedureCreateSchema().load(report({"site": "trochanteric_bursa", "indications": [{"code": "M70.61"}]}))
    assert report_warnings(loaded) == {
        "guidance.modality": "payer risk for ultrasound guidance at trochanteric_bursa: aetna_unproven"
    }


# --- times, supervisor, PDF ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("times", "errors"),
    [
        ({}, {}),
        ({"started_at": "2025-03-14T09:00:00Z", "ended_at": "2025-03-14T09:00:00Z"}, {}),
        ({"scheduled_at": "2025-03-20T09:00:00Z", "started_at": "2025-03-14T09:00:00Z"}, {}),
        ({"started_at": "2025-03-14T10:00:00+01:00", "ended_at": "2025-03-14T09:30:00Z"}, {}),  # offsets compared
        ({"started_at": "2025-03-14T10:00:00Z", "ended_at": "2025-03-14T09:59:59Z"}, {"ended_at": "started_at"}),
        ({"injected_at": "2025-03-14T10:00:00Z", "ended_at": "2025-03-14T09:00:00Z"}, {"ended_at": "injected_at"}),
        (
            {"started_at": "2025-03-14T10:00:00Z", "injected_at": "2025-03-14T09:00:00Z"},
            {"injected_at": "started_at"},
        ),
        (
            {
                "started_at": "2025-03-14T10:00:00Z",
                "injected_at": "2025-03-14T11:00:00Z",
                "ended_at": "2025-03-14T10:30:00Z",
            },
            {"ended_at": "injected_at"},
        ),
    ],
)
def test_times_run_in_order(times: dict[str, str], errors: dict[str, str]) -> None:
    from schemas.procedures import ProcedureTimesSchema

    if not errors:
        ProcedureTimesSchema().load(times)
        return
    got = errors_of(times, ProcedureTimesSchema())
    assert got == {field: [f"must not be before {earlier}"] for field, earlier in errors.items()}


def test_supervisor_rule() -> None:
    trainee = {"performer.in_training": True}
    assert errors_of(report(trainee)) == {"supervisor": ["required when the performer is in training"]}
    ProcedureCreateSchema().load(report({**trainee, "supervisor": SUPERVISOR}))
    ProcedureCreateSchema().load(report({"supervisor": SUPERVISOR}))  # a supervisor without a trainee is allowed


@pytest.mark.parametrize(
    ("document", "at", "why"),
    [
        ({**DOCUMENT, "content_type": "application/octet-stream"}, "content_type", "must be application/pdf"),
        ({**DOCUMENT, "data": "JVBERi0"}, "data", "must be base64 text"),  # bad padding
        ({**DOCUMENT, "data": base64.b64encode(b"<html>").decode()}, "data", "is not a PDF"),
        ({**DOCUMENT, "data": ""}, "data", "is not a PDF"),
        ({**DOCUMENT, "data": 42}, "data", "Not a valid string."),
        ({"content_type": "application/pdf"}, "data", "Missing data for required field."),
        ({**DOCUMENT, "url": "https://x"}, "url", "Unknown field."),
    ],
)
def test_pdf_attachment_checks(document: dict[str, Any], at: str, why: str) -> None:
    errors = errors_of(report({"consent.document": document}))
    assert list(errors) == [f"consent.document.{at}"] and why in errors[f"consent.document.{at}"][0]


def test_pdf_size_limit_is_exact() -> None:
    at_limit = base64.b64encode(b"%PDF-" + bytes(MAX_DOCUMENT_BYTES - 5)).decode()
    ProcedureCreateSchema().load(report({"consent.document": {**DOCUMENT, "data": at_limit}}))
    over = base64.b64encode(b"%PDF-" + bytes(MAX_DOCUMENT_BYTES - 4)).decode()
    errors = errors_of(report({"consent.document": {**DOCUMENT, "data": over}}))
    assert errors == {
        "consent.document.data": [f"is {MAX_DOCUMENT_BYTES + 1} bytes; the limit is {MAX_DOCUMENT_BYTES} bytes"]
    }


# --- nested schemas on their own -------------------------------------------------------------------------------------


def test_nested_schemas_report_flat_paths_on_their_own() -> None:
    assert errors_of({"drug": "synvisc", "dose": 16, "dose_unit": "mL"}, InjectateSchema()) == {
        "dose_unit": ["Hyaluronan: Synvisc is recorded in mg, not mL"]
    }
    assert errors_of({"reasons": ["other", "other"]}, GuidanceSchema()) == {
        "reasons": ["lists a reason twice"],
        "reason_other": ["required when reasons include 'other'"],
    }
    assert errors_of({"analyses": ["crystals"], "sent_for_analysis": False}, AspirationSchema()) == {
        "analyses": ["analyses are listed but sent_for_analysis is false"]
    }
    assert errors_of([], InjectateSchema()) == {"_schema": ["Invalid input type."]}


# --- drafts, patches and finalisation --------------------------------------------------------------------------------

PATIENT = {"identifier": {"system": "https://hospital.example.org/fhir/sid/mrn", "value": "MRN-1"}}


@pytest.mark.parametrize(
    "draft",
    [
        {"patient": PATIENT, "encounter_identifier": {"value": "V2025031400187"}},  # a visit number alone
        {"patient": PATIENT, "accession_number": "ACC1"},
        {"patient": PATIENT, "times": {"scheduled_at": "2025-03-14T09:00:00-05:00"}},
    ],
)
def test_a_draft_needs_only_the_patient_and_the_visit(draft: dict[str, Any]) -> None:
    loaded = ProcedureCreateSchema().load(draft)
    assert loaded["educational"] is False


def test_creation_without_patient_or_visit_names_both() -> None:
    assert errors_of({}) == {
        "patient": ["Missing data for required field."],
        "encounter_identifier": [
            "required: give encounter_identifier (the visit number), accession_number or times.scheduled_at"
        ],
    }


def test_finalisation_problems_of_a_minimal_draft() -> None:
    draft = ProcedureCreateSchema().load({"patient": PATIENT, "encounter_identifier": {"value": "V1"}})
    problems = finalisation_problems(draft)
    assert set(problems) == {
        "patient.name",
        "patient.birth_date",
        "patient.sex",
        "place_of_service",
        "coverage",
        "performer",
        "performing_organization",
        "kind",
        "site",
        "guidance",
        "guidance.modality",
        "guidance.needle_gauge",
        "indications",
        "complications",
        "post_procedure_instructions",
        "consent",
        "times.started_at",
        "times.ended_at",
    }
    assert all(m.startswith("required before the report can be finalised") for m in problems.values())
    assert "DOC-01" in problems["indications"] and "DOC-08" in problems["consent"]


def test_finalisation_problems_follow_kind_site_guidance_and_consent() -> None:
    doc = report(
        {
            "kind": "aspiration_and_injection",
            "site": "finger_ip_mcp",
            "digit": 2,
            "indications": [],
            "guidance.description": DELETE,
            "guidance.reasons": [],
            "guidance.conservative_treatment_months": DELETE,
            "equipment_ownership": DELETE,
            "injectates.0.lot_number": DELETE,
            "injectates.0.discarded_amount": DELETE,
            "injectates.0.ndc": DELETE,
            "injectates.1.container_type": "multi_dose",
            "injectates.1.discarded_amount": DELETE,
            "consent.obtained": False,
            "consent.method": DELETE,
            "times.injected_at": DELETE,
        }
    )
    problems = finalisation_problems(ProcedureCreateSchema().load(doc))
    assert set(problems) == {
        "equipment_ownership",
        "guidance.description",
        "guidance.reasons",
        "guidance.conservative_treatment_months",
        "injectates.0.lot_number",
        "injectates.0.discarded_amount",
        "injectates.0.ndc",  # triamcinolone is separately billable; lidocaine (index 1) is not
        "aspiration",
        "aspiration.volume_ml",
        "aspiration.appearance",
        "aspiration.sent_for_analysis",
        "indications",
        "consent.obtained",
        "consent.method",
        "times.injected_at",
    }
    assert "DOC-02" in problems["guidance.reasons"] and "JW/JZ" in problems["injectates.0.discarded_amount"]
    uk = report(
        {"coverage": {"kind": "nhs", "payer": "NHS Humber and North Yorkshire ICB"}, "injectates.0.ndc": DELETE}
    )
    assert finalisation_problems(ProcedureCreateSchema().load(uk)) == {}


def test_patch_is_partial_but_each_part_is_whole() -> None:
    patch = ProcedurePatchSchema()
    assert patch.load({"laterality": "left"}) == {"laterality": "left"}
    assert patch.load({"site": "trigger_points"}) == {"site": "trigger_points"}  # laterality is checked once merged
    assert patch.load({"indications": [{"code": "M17.12"}]}) == {"indications": [{"code": "M17.12"}]}
    assert errors_of({}, patch) == {"_schema": ["give at least one field to change"]}
    assert errors_of({"performer": {"npi": "1234567893"}}, patch) == {
        "performer.name": ["Missing data for required field."]
    }
    assert errors_of({"site": "knee_joint", "laterality": "not_applicable"}, patch) == {
        "laterality": ["required for the paired site knee_joint: left, right or bilateral"]
    }
    errors = errors_of({"site": "knee_joint", "laterality": "right", "indications": [{"code": "M17.12"}]}, patch)
    assert list(errors) == ["indications.0.code"]
    (incomplete,) = errors_of({"indications": [{"code": "M17.1"}]}, patch)["indications.0.code"]
    assert incomplete.startswith("M17.1 is not a complete code of M17 (Osteoarthritis of knee): its codes are M17.0,")


# --- the catalog the schemas use -------------------------------------------------------------------------------------


@pytest.fixture
def custom_catalog(tmp_path: Path):
    for name in ("sites.yaml", "drugs.yaml", "icd10cm.yaml"):
        shutil.copy(DATA_DIR / name, tmp_path / name)
    data = yaml.load((tmp_path / "sites.yaml").read_text(), Loader=yaml.CSafeLoader)
    data["sites"].append({**data["sites"][0], "key": "test_site", "label": "Test site", "digit": "none"})
    (tmp_path / "sites.yaml").write_text(yaml.dump(data, Dumper=yaml.CSafeDumper))
    return load_catalog(tmp_path)


def test_schemas_use_the_catalog_given(custom_catalog) -> None:
    doc = report({"site": "test_site", "indications": []})
    assert errors_of(doc) == {"site": ["unknown site 'test_site': not in the site catalog"]}
    with use_catalog(custom_catalog):
        assert current_catalog() is custom_catalog
        assert ProcedureCreateSchema().load(doc)["site"] == "test_site"
    assert current_catalog() is default_catalog()
    set_catalog(custom_catalog)
    try:
        assert ProcedureCreateSchema().load(doc)["site"] == "test_site"
    finally:
        set_catalog(None)
    assert current_catalog() is default_catalog()


def test_schemas_render_as_openapi() -> None:
    from apispec import APISpec
    from apispec.ext.marshmallow import MarshmallowPlugin

    spec = APISpec("usgi-docs", "1", "3.0.3", plugins=[MarshmallowPlugin()])
    spec.components.schema("ProcedureCreate", schema=ProcedureCreateSchema)
    spec.components.schema("ProcedurePatch", schema=ProcedurePatchSchema)
    schemas = spec.to_dict()["components"]["schemas"]
    assert schemas["ProcedureCreate"]["properties"]["laterality"]["enum"] == [
        "left",
        "right",
        "bilateral",
        "not_applicable",
    ]
    assert schemas["Attachment"]["properties"]["data"] == {"type": "string", "format": "byte"}


def test_a_prp_report_can_be_finalised_without_an_ndc() -> None:
    # Autologous PRP is billed as 0232T and has no NDC: asking for one would make the report unfinalisable.
    prp = {
        "drug": "prp_autologous", "dose": 4, "dose_unit": "mL", "volume_ml": 4, "lot_number": "KIT-2231",
        "expiry_date": "2026-01-31", "container_type": "single_dose", "container_amount": 4, "discarded_amount": 0,
    }  # fmt: skip
    loaded = ProcedureCreateSchema().load(
        report({"injectates": [prp], "consent.off_label_disclosed": True, "consent.abn_signed": True})
    )
    assert finalisation_problems(loaded) == {}
