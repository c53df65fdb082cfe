"""Modality Worklist items built from procedures (PS3.4 §K.6.1.2.2, the IHE Scheduled Workflow return keys).

One item per procedure on the worklist: the machine copies the patient's demographics, the accession number and
the Study Instance UID from it into its images, which is how they find their procedure again. Pure: no I/O.

Every value is made valid for its VR here (length, forbidden characters), since a report is free text and pydicom
warns (or a strict machine refuses the response) on an invalid value.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime, tzinfo

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from service.coding.catalog import Catalog, default_catalog
from service.models import Procedure
from service.procedures.lifecycle import ProcedureStatus

#: The procedure statuses that appear on the worklist: planned, or started and still acquiring images.
worklist_statuses: frozenset[str] = frozenset({ProcedureStatus.SCHEDULED.value, ProcedureStatus.IN_PROGRESS.value})

# Scheduled Procedure Step Status (0040,0020) defined terms for the statuses above.
_STEP_STATUS = {ProcedureStatus.SCHEDULED.value: "SCHEDULED", ProcedureStatus.IN_PROGRESS.value: "STARTED"}
_SEX = {"female": "F", "male": "M", "other": "O"}  # "unknown" stays empty (type 2: known to be unknown)
_KIND = {"injection": "injection", "aspiration": "aspiration", "aspiration_and_injection": "aspiration and injection"}
_SIDES = frozenset({"left", "right", "bilateral"})
NO_SITE_DESCRIPTION = "Ultrasound-guided procedure"

# PS3.5 §6.2: no backslash (the value delimiter) and no control characters in LO/SH/PN values; in PN also no
# ^ and = (the component and group delimiters), which would shift the name's parts.
_NOT_IN_TEXT = re.compile(r"[\\\x00-\x1f\x7f]")
_NOT_IN_NAME = re.compile(r"[\\^=\x00-\x1f\x7f]")
_LO, _SH, _PN_GROUP = 64, 16, 64


def worklist_item(proc: Procedure, zone: tzinfo | None, catalog: Catalog | None = None) -> Dataset:
    """The Modality Worklist item of ``proc``, its step's start in ``zone`` (None: the server's local zone)."""
    report = _mapping(proc.report)
    patient = _mapping(report.get("patient"))
    performer = _mapping(report.get("performer"))
    description = procedure_description(proc, catalog or default_catalog())
    start = _local(proc.scheduled_at or proc.created_at, zone)

    ds = Dataset()
    # Patient Identification and Demographic modules
    ds.PatientName = _patient_name(patient.get("name"))
    ds.PatientID = _text(proc.patient_id, _LO)
    ds.IssuerOfPatientID = _text(proc.patient_id_system, _LO)
    ds.PatientBirthDate = _birth_date(patient.get("birth_date"))
    ds.PatientSex = _SEX.get(str(patient.get("sex") or ""), "")
    # Visit Identification module
    ds.AdmissionID = _text(proc.encounter_id, _LO)
    # Imaging Service Request and Requested Procedure modules
    ds.AccessionNumber = _text(proc.accession_number, _SH)
    ds.ReferringPhysicianName = ""
    ds.RequestedProcedureID = _text(proc.id, _SH)
    ds.RequestedProcedureDescription = description
    ds.RequestedProcedurePriority = ""
    ds.StudyInstanceUID = proc.study_instance_uid
    # Scheduled Procedure Step module: one step per procedure
    step = Dataset()
    step.Modality = "US"
    step.ScheduledStationAETitle = _text(proc.scheduled_station_ae_title, _SH)
    step.ScheduledProcedureStepStartDate = start.strftime("%Y%m%d")
    step.ScheduledProcedureStepStartTime = start.strftime("%H%M%S")
    step.ScheduledPerformingPhysicianName = _name(performer.get("name"), _PN_GROUP)
    step.ScheduledProcedureStepDescription = description
    step.ScheduledProcedureStepID = _text(proc.id, _SH)
    step.ScheduledProcedureStepStatus = _STEP_STATUS.get(proc.status, "SCHEDULED")
    ds.ScheduledProcedureStepSequence = Sequence([step])

    if any(not s.isascii() for s in _strings(ds)):
        # Set before any encoding: the response is encoded with the item's character set (matching.response).
        ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


def procedure_description(proc: Procedure, catalog: Catalog) -> str:
    """``US-guided injection, left knee joint``: what the machine shows the operator in its worklist (LO)."""
    if not proc.site:
        return NO_SITE_DESCRIPTION
    kind = _KIND.get(str(_mapping(proc.report).get("kind") or ""), "procedure")
    site = catalog.sites.get(proc.site)
    # A site key the catalog no longer knows still says more than nothing.
    label = site.label if site is not None else proc.site.replace("_", " ")
    side = f"{proc.laterality} " if proc.laterality in _SIDES else ""
    return _clip_words(_clean(f"US-guided {kind}, {side}{_lower_first(label)}"), _LO)


def _clip_words(text: str, max_len: int) -> str:
    """``text`` cut to ``max_len`` at a word boundary: the operator reads it, half a word helps nobody."""
    if len(text) <= max_len:
        return text
    cut = text[: max_len + 1]
    cut = cut[: cut.rfind(" ")] if " " in cut else cut[:max_len]
    return cut.rstrip(" ,(")


def _lower_first(label: str) -> str:
    """``Knee joint`` -> ``knee joint`` inside a sentence; names (``Baker's``) and acronyms keep their case."""
    first = label.split(" ", 1)[0]
    if "'" in first or (len(first) > 1 and first[1].isupper()):
        return label
    return label[:1].lower() + label[1:]


def _mapping(value: object) -> Mapping[str, object]:
    return value if isinstance(value, Mapping) else {}


def _clean(value: object) -> str:
    """Forbidden characters blanked, surrounding spaces dropped (leading spaces are not significant either)."""
    return "" if value is None else _NOT_IN_TEXT.sub(" ", str(value)).strip()


def _text(value: object, max_len: int) -> str:
    """A single LO/SH/AE value, cut to ``max_len``."""
    return _clean(value)[:max_len].rstrip()


def _name(value: object, max_len: int) -> str:
    """One PN component (a free-text name goes in the family component)."""
    if not isinstance(value, str):
        return ""
    return " ".join(_NOT_IN_NAME.sub(" ", value).split())[:max_len].rstrip()


def _patient_name(value: object) -> str:
    """FHIR HumanName ``{"family": "Doe", "given": ["Jane", "A"]}`` -> ``Doe^Jane A`` (64 characters a group)."""
    name = _mapping(value)
    given = name.get("given")
    given_names = " ".join(g for g in given if isinstance(g, str)) if isinstance(given, list) else ""
    pn = f"{_name(name.get('family'), _PN_GROUP)}^{_name(given_names, _PN_GROUP)}"
    return pn[:_PN_GROUP].rstrip("^ ")


def _birth_date(value: object) -> str:
    """``1960-02-01`` -> ``19600201``; anything that is not a full ISO date stays empty (type 2)."""
    if not isinstance(value, str):
        return ""
    try:
        return date.fromisoformat(value).isoformat().replace("-", "")  # isoformat pads years before 1000
    except ValueError:
        return ""


def _local(moment: datetime, zone: tzinfo | None) -> datetime:
    """``moment`` on the modalities' wall clock. SQLite hands back naive datetimes: they were stored as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(zone) if zone is not None else moment.astimezone()


def _strings(ds: Dataset) -> Iterator[str]:
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _strings(item)
        elif elem.value is not None:
            yield str(elem.value)
