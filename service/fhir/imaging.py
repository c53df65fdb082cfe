"""The evidence: ImagingStudy per DICOM study of the linked images, and the guidance report's DocumentReference.

Image role (pre/post/other) has no R4 element: each ``series.instance`` carries our extension
``{identifier_system}/fhir/StructureDefinition/image-role`` (a Coding of our ``image-role`` CodeSystem) and a
readable ``title``. DICOM date-times carry no UTC offset; they are read in the procedure's offset (the modality
and the clinic share a wall clock). The Endpoint is contained: its address is the WADO-RS base URL of this
service (``{base_url}/dicomweb``, service/api/dicomweb.py), to which clients append ``/studies/{uid}/...``. The
report PDF is only referenced by URL; it is rendered elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import groupby
from typing import Any

from service.fhir.clinical import encounter_ref
from service.fhir.record import (
    DCM,
    LOINC,
    SNOMED,
    ProcedureRecord,
    coding,
    concept,
    fhir_datetime,
    parse_datetime,
    prune,
)
from service.fhir.terminology import IMAGE_ROLE, IMAGE_ROLE_EXT, laterality_coding, local_coding

_DICOM_LATERALITY = {"R": "right", "L": "left", "B": "bilateral"}
_ROLE_TITLE = {"pre": "Pre-injection", "post": "Post-injection", "other": "Other"}
PROCEDURE_NOTE = ("28570-0", "Procedure note")


def _when(image: Mapping[str, Any]) -> Any:
    return image.get("acquisition_datetime") or image.get("content_datetime") or image.get("series_datetime")


def _sort_key(image: Mapping[str, Any]) -> tuple[str, str]:
    when = parse_datetime(_when(image))
    return (when.isoformat() if when else "", str(image.get("sop_instance_uid")))


def studies(images: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[Mapping[str, Any]]]]:
    """Images grouped by Study Instance UID, in UID order (stable ids), each group in acquisition order."""
    ordered = sorted(images, key=lambda i: str(i.get("study_instance_uid")))
    return [
        (uid, sorted(group, key=_sort_key))
        for uid, group in groupby(ordered, key=lambda i: str(i.get("study_instance_uid")))
    ]


def study_role(index: int, count: int) -> str:
    return "imagingstudy" if count == 1 else f"imagingstudy-{index}"


def _instance(record: ProcedureRecord, number: int, image: Mapping[str, Any]) -> dict[str, Any]:
    role = image.get("image_role") or "other"
    frames = image.get("number_of_frames") or 1
    title = f"{_ROLE_TITLE.get(role, role)} image" + (f" (cine, {frames} frames)" if frames > 1 else "")
    return prune(
        {
            "extension": [
                {
                    "url": record.canonical("StructureDefinition", IMAGE_ROLE_EXT),
                    "valueCoding": local_coding(record, "image-role", role, IMAGE_ROLE),
                }
            ],
            "uid": image["sop_instance_uid"],
            "sopClass": coding("urn:ietf:rfc:3986", f"urn:oid:{image['sop_class_uid']}"),
            "number": number,
            "title": title,
        }
    )


def imaging_study(
    record: ProcedureRecord, role: str, study_uid: str, images: list[Mapping[str, Any]]
) -> dict[str, Any]:
    tz = record.tz
    site = record.catalog.sites.get(record.report.get("site") or "")
    body = coding(SNOMED, site.snomed, site.label) if site and site.snomed else None
    series_list = []
    series_uids = sorted({str(i["series_instance_uid"]) for i in images})
    for number, series_uid in enumerate(series_uids, 1):
        members = [i for i in images if str(i["series_instance_uid"]) == series_uid]
        sides = {_DICOM_LATERALITY.get(str(i.get("laterality") or "").upper()) for i in members} - {None}
        side = sides.pop() if len(sides) == 1 else record.report.get("laterality")
        started = [t for t in (fhir_datetime(_when(i), tz) for i in members) if t]
        series_list.append(
            {
                "uid": series_uid,
                "number": number,
                "modality": coding(DCM, str(members[0].get("modality") or "US")),
                "description": members[0].get("series_description"),
                "numberOfInstances": len(members),
                "endpoint": None,
                "bodySite": body,
                "laterality": laterality_coding(side),
                "started": min(started, key=lambda t: parse_datetime(t)) if started else None,
                "instance": [_instance(record, n, i) for n, i in enumerate(members, 1)],
            }
        )
    started_all = [s["started"] for s in series_list if s.get("started")]
    modalities = sorted({s["modality"]["code"] for s in series_list})
    accession = record.report.get("accession_number") or images[0].get("accession_number")
    return prune(
        {
            "resourceType": "ImagingStudy",
            "id": record.rid(role),
            "meta": record.meta(),
            "contained": [
                {
                    "resourceType": "Endpoint",
                    "id": "images",
                    "status": "active",
                    "connectionType": coding(
                        "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                        "dicom-wado-rs",
                        "DICOM WADO-RS",
                    ),
                    "name": "usgi-docs image API",
                    "payloadType": [concept(text="DICOM")],
                    "payloadMimeType": ["application/dicom"],
                    # The WADO-RS base URL (PS3.18 §10.4): clients append /studies/{uid}/series/...
                    "address": f"{record.api}/dicomweb",
                }
            ],
            "identifier": [
                {"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"},
                # Ours, one per resource (a study UID may be the PACS's ImagingStudy too): the push's key.
                record.ident("imaging-study", record.rid(role)),
                {
                    "type": concept(coding("http://terminology.hl7.org/CodeSystem/v2-0203", "ACSN", "Accession ID")),
                    **record.ident("accession", accession),
                }
                if accession
                else None,
            ],
            "status": "available",
            "modality": [coding(DCM, m) for m in modalities],
            "subject": record.ref("Patient", "patient"),
            "started": min(started_all, key=lambda t: parse_datetime(t)) if started_all else None,
            "endpoint": [{"reference": "#images"}],
            "numberOfSeries": len(series_list),
            "numberOfInstances": len(images),
            "procedureReference": record.ref("Procedure", "procedure"),
            "procedureCode": None,
            "series": series_list,
        }
    )


def imaging_studies(record: ProcedureRecord) -> list[dict[str, Any]]:
    groups = studies(record.images)
    return [imaging_study(record, study_role(n, len(groups)), uid, imgs) for n, (uid, imgs) in enumerate(groups, 1)]


def document_reference(record: ProcedureRecord, study_roles: Sequence[str]) -> dict[str, Any]:
    signed = sorted(
        (t for t in (fhir_datetime(s.get("signed_at")) for s in record.live_signatures()) if t),
        key=lambda t: parse_datetime(t),
    )
    # R4 DocumentReference.date is an instant: the last signature, else the procedure's end.
    date = signed[-1] if signed else record.time("ended_at") or record.time("started_at")
    capacities = {s.get("capacity") for s in record.live_signatures()}
    authenticator = None
    if "supervisor" in capacities and record.part("supervisor").get("name"):
        authenticator = record.ref("Practitioner", "supervisor")
    elif "performer" in capacities and record.part("performer").get("name"):
        authenticator = record.ref("Practitioner", "performer")
    has_org = bool(record.part("performing_organization").get("name"))
    authors = [record.ref("Practitioner", "performer")] if record.part("performer").get("name") else []
    return prune(
        {
            "resourceType": "DocumentReference",
            "id": record.rid("report"),
            "meta": record.meta(),
            # Version-specific, as R4 defines masterIdentifier; ``identifier`` stays the same across versions.
            "masterIdentifier": record.ident("report", f"{record.procedure_id}-v{record.version}"),
            "identifier": [record.ident("report-series", record.procedure_id)],
            "status": "current",
            "docStatus": "amended"
            if record.status == "amended"
            else "final"
            if record.status == "final"
            else "preliminary",
            "type": concept(coding(LOINC, *PROCEDURE_NOTE), text="Ultrasound-guided injection procedure report"),
            "subject": record.ref("Patient", "patient"),
            "date": date,
            "author": authors + ([record.ref("Organization", "organization")] if has_org else []),
            "authenticator": authenticator,
            "custodian": record.ref("Organization", "organization") if has_org else None,
            "description": "Procedure report with the ultrasound guidance description",
            "content": [
                {
                    "attachment": {
                        "contentType": "application/pdf",
                        "language": None,
                        "url": f"{record.api}/api/procedures/{record.procedure_id}/report.pdf",
                        "title": f"Procedure report, version {record.version}",
                        "creation": date,
                    }
                }
            ],
            "context": {
                "encounter": [encounter_ref(record)],
                "period": prune({"start": record.time("started_at"), "end": record.time("ended_at")}),
                "sourcePatientInfo": record.ref("Patient", "patient"),
                "related": [record.ref("Procedure", "procedure")]
                + [record.ref("ImagingStudy", r) for r in study_roles],
            },
        }
    )
