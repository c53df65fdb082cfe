"""The mapping's input (:class:`ProcedureRecord`) and the small pure helpers every mapper shares.

Ids: every resource of a procedure gets ``{procedure_id}-{role}`` (e.g. ``3f2a9c01d4e5b6a7-patient``), so the same
procedure always maps to the same ids and an amendment replaces the resources in place (``meta.versionId`` = the
report version). When that would not be a valid FHIR id (over 64 characters or other characters), a UUID-5 of the
same text is used instead. Shared definitions (our CodeSystems) have fixed ids.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from functools import cached_property
from typing import Any

from service.coding.catalog import Catalog, default_catalog
from service.coding.result import CodingResult

_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_ID_NAMESPACE = uuid.UUID("6f1c7f0e-6a55-4c53-9a3f-2f1d6a0c5b11")  # fixed: ids must not change between releases

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
NDC = "http://hl7.org/fhir/sid/ndc"
NPI = "http://hl7.org/fhir/sid/us-npi"
CPT = "http://www.ama-assn.org/go/cpt"
# The brief's form of the HCPCS Level II canonical; DOMAIN.md §8.1 also lists http://www.cms.gov/... (accept both).
HCPCS = "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
V3_PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"


@dataclass(frozen=True)
class ProcedureRecord:
    """One procedure at one version, as the service layer holds it: everything the mapping reads.

    ``report`` is the stored report JSON (what the API returns under ``report``: ISO strings, not typed values);
    ``signatures`` are the API's signature dicts (capacity, signer, signed_at; voided ones are ignored); ``images``
    are :func:`service.images.image_view` dicts with ``image_role``; ``coding`` is the coding engine's result (or
    its ``to_dict()``); ``base_url`` is where the service's REST/FHIR API lives; ``identifier_system`` is the
    organisation's URI base for our business identifiers and our extension/CodeSystem canonicals.
    """

    procedure_id: str
    version: int
    status: str
    report: Mapping[str, Any]
    coding: CodingResult | Mapping[str, Any] | None
    base_url: str
    identifier_system: str
    signatures: Sequence[Mapping[str, Any]] = ()
    images: Sequence[Mapping[str, Any]] = ()
    catalog: Catalog = field(default_factory=default_catalog, compare=False, repr=False)

    @cached_property
    def coding_dict(self) -> Mapping[str, Any]:
        if self.coding is None:
            return {}
        return self.coding.to_dict() if isinstance(self.coding, CodingResult) else self.coding

    @property
    def api(self) -> str:
        return self.base_url.rstrip("/")

    @property
    def system_base(self) -> str:
        return self.identifier_system.rstrip("/")

    def rid(self, role: str) -> str:
        """The stable id of this procedure's resource playing ``role`` (module docstring)."""
        candidate = f"{self.procedure_id}-{role}"
        return candidate if _FHIR_ID.match(candidate) else str(uuid.uuid5(_ID_NAMESPACE, candidate))

    def ref(self, resource_type: str, role: str, display: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"reference": f"{resource_type}/{self.rid(role)}"}
        if display:
            out["display"] = display
        return out

    def ident(self, kind: str, value: str) -> dict[str, Any]:
        """A business identifier in our namespace: ``{identifier_system}/{kind}``."""
        return {"system": f"{self.system_base}/{kind}", "value": value}

    def meta(self) -> dict[str, Any]:
        return {"versionId": str(self.version)}

    def canonical(self, kind: str, name: str) -> str:
        """Our extension / CodeSystem URL, e.g. ``{identifier_system}/fhir/StructureDefinition/us-guidance``."""
        return f"{self.system_base}/fhir/{kind}/{name}"

    # --- the report, read defensively: drafts may lack parts ------------------------------------------------------

    def part(self, name: str) -> Mapping[str, Any]:
        value = self.report.get(name)
        return value if isinstance(value, Mapping) else {}

    def items(self, name: str) -> list[Mapping[str, Any]]:
        return [v for v in self.report.get(name) or () if isinstance(v, Mapping)]

    def time(self, name: str) -> str | None:
        return fhir_datetime(self.part("times").get(name))

    @property
    def tz(self) -> timezone | None:
        """The procedure's UTC offset, for DICOM times (which carry none)."""
        for name in ("started_at", "injected_at", "ended_at", "scheduled_at"):
            when = parse_datetime(self.part("times").get(name))
            if when is not None and when.utcoffset() is not None:
                return timezone(when.utcoffset() or timedelta(0))
        return None

    def live_signatures(self) -> list[Mapping[str, Any]]:
        return [s for s in self.signatures if not s.get("voided_at") and s.get("signed_at")]


def parse_datetime(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    return None


def fhir_datetime(value: Any, tz: timezone | None = None) -> str | None:
    """An ISO date-time with an offset (FHIR: a time needs a zone); a naive one takes ``tz``, else None."""
    when = parse_datetime(value)
    if when is None:
        return None
    if when.tzinfo is None:
        if tz is None:
            return None
        when = when.replace(tzinfo=tz)
    return when.isoformat()


def fhir_date(value: Any) -> str | None:
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str) and value:
        return value[:10]
    return None


def coding(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def concept(*codings: dict[str, Any] | None, text: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    found = [c for c in codings if c]
    if found:
        out["coding"] = found
    if text:
        out["text"] = text
    return out


def prune(value: Any) -> Any:
    """Drop None, empty strings, lists and dicts (FHIR forbids empty elements), recursively."""
    if isinstance(value, Mapping):
        pruned = {k: prune(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v not in (None, "", [], {})}
    if isinstance(value, list | tuple):
        pruned_list = [prune(v) for v in value]
        return [v for v in pruned_list if v not in (None, "", [], {})]
    return value
