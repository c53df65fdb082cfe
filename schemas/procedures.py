"""Procedure report bodies: the report of an ultrasound-guided (or comparison) injection or aspiration.

Every body error is keyed by the exact dotted field path (``patient.birth_date``, ``injectates.0.dose_unit``) with
a list of messages saying why; cross-field rules are keyed the same way. The site, drug and ICD-10-CM tables come
from :mod:`service.coding.catalog`: :func:`current_catalog` is the catalog of :func:`use_catalog` in this context,
else the one given to :func:`set_catalog`, else the shipped data files (loaded once, on first use).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from service.coding.catalog import ICD10CM_CODE, NDC, WARNING_PREFIX, Catalog, Site, default_catalog, is_warning

# --- the catalog the rules use -----------------------------------------------------------------------------------

_context_catalog: ContextVar[Catalog | None] = ContextVar("usgi_procedure_catalog", default=None)
_process_catalog: Catalog | None = None


def set_catalog(catalog: Catalog | None) -> None:
    """Validate with ``catalog`` in this process (the app factory passes the catalog it loaded at start).

    None goes back to the shipped data files.
    """
    global _process_catalog
    _process_catalog = catalog


@contextlib.contextmanager
def use_catalog(catalog: Catalog) -> Iterator[Catalog]:
    """Validate with ``catalog`` inside this ``with`` block only (tests; a payer's tables for one request)."""
    token = _context_catalog.set(catalog)
    try:
        yield catalog
    finally:
        _context_catalog.reset(token)


def current_catalog() -> Catalog:
    """The catalog of :func:`use_catalog`, else of :func:`set_catalog`, else the shipped data files."""
    return _context_catalog.get() or _process_catalog or default_catalog()


# --- closed vocabularies -----------------------------------------------------------------------------------------


class ProcedureKind(StrEnum):
    """What the needle did."""

    INJECTION = "injection"
    ASPIRATION = "aspiration"
    ASPIRATION_AND_INJECTION = "aspiration_and_injection"


class Laterality(StrEnum):
    """The procedure's side; paired sites need left, right or bilateral (DOMAIN.md §3 RT/LT/50, §5.1)."""

    LEFT = "left"
    RIGHT = "right"
    BILATERAL = "bilateral"
    NOT_APPLICABLE = "not_applicable"


class Sex(StrEnum):
    """Administrative sex (FHIR AdministrativeGender)."""

    FEMALE = "female"
    MALE = "male"
    OTHER = "other"
    UNKNOWN = "unknown"


class PlaceOfService(StrEnum):
    """CMS place-of-service code (DOMAIN.md §8.1: 11 office, 19/22 hospital outpatient, 24 ASC)."""

    OFFICE = "11"
    OFF_CAMPUS_OUTPATIENT_HOSPITAL = "19"
    INPATIENT_HOSPITAL = "21"
    ON_CAMPUS_OUTPATIENT_HOSPITAL = "22"
    EMERGENCY_ROOM = "23"
    AMBULATORY_SURGICAL_CENTER = "24"


class EquipmentOwnership(StrEnum):
    """Who owns the ultrasound machine: decides 76942 global vs modifier 26 (DOMAIN.md §3 PCTC, DOC-14)."""

    OFFICE_OWNED = "office_owned"
    FACILITY_OWNED = "facility_owned"


class CoverageKind(StrEnum):
    """The kind of payer; self-pay needs no payer or member id."""

    MEDICARE = "medicare"
    MEDICARE_ADVANTAGE = "medicare_advantage"
    MEDICAID = "medicaid"
    COMMERCIAL = "commercial"
    NHS = "nhs"
    SELF_PAY = "self_pay"
    OTHER = "other"


class GuidanceModality(StrEnum):
    """How the needle was guided; anything but ultrasound is kept for comparison (DOMAIN.md §1.1, §10)."""

    ULTRASOUND = "ultrasound"
    NONE = "none"
    FLUOROSCOPY = "fluoroscopy"
    CT = "ct"
    MR = "mr"


class NeedleApproach(StrEnum):
    """Needle approach relative to the transducer plane (a local code system, DOMAIN.md §6.2)."""

    IN_PLANE = "in_plane"
    OUT_OF_PLANE = "out_of_plane"
    OTHER = "other"


class ProbeType(StrEnum):
    """Ultrasound transducer type."""

    LINEAR = "linear"
    CURVILINEAR = "curvilinear"
    HOCKEY_STICK = "hockey_stick"


class GuidanceReason(StrEnum):
    """Why image guidance was needed: DOMAIN.md DOC-02 and the HNY ICB USGI criteria (§7.1, §10, DOC-15)."""

    SEVERE_TRAUMA_DERANGED_JOINT = "severe_trauma_deranged_joint"  # UK (a), injection and aspiration
    LANDMARKS_UNIDENTIFIABLE = "landmarks_unidentifiable_obesity_or_disease"  # UK (b); DOC-02 obesity/landmarks
    NO_RELIEF_AFTER_2_LANDMARK_INJECTIONS = "no_relief_after_2_landmark_injections"  # UK (c), steroid injection
    ADVERSE_EFFECT_LANDMARK_INJECTION = "significant_adverse_effect_landmark_injection"  # UK (d); DOC-02
    FAILED_LANDMARK_ASPIRATION = "failed_landmark_aspiration"  # UK aspiration (c)
    ABANDONED_LANDMARK_ATTEMPT = "abandoned_landmark_attempt_adverse_effects"  # UK aspiration (d)
    FAILED_LANDMARK_ATTEMPT = "failed_landmark_attempt"  # DOC-02; S59 "failed first attempt"
    DEEP_JOINT = "deep_joint"  # DOC-02 (hip)
    EFFUSION_OR_BAKER_CYST = "effusion_or_baker_cyst"  # DOC-02; S59 Baker's cyst drainage
    OTHER = "other"


class DoseUnit(StrEnum):
    """The unit a dose (and its container and discarded amounts) is recorded in; the drug catalog says which."""

    MG = "mg"
    ML = "mL"


class ContainerType(StrEnum):
    """Single- or multi-dose container: JW/JZ apply to single-dose only (DOMAIN.md §3, §4.1, DOC-07)."""

    SINGLE_DOSE = "single_dose"
    MULTI_DOSE = "multi_dose"


class AspirateAppearance(StrEnum):
    """Gross appearance of the aspirate."""

    CLEAR = "clear"
    STRAW = "straw"
    CLOUDY = "cloudy"
    TURBID = "turbid"
    BLOOD_STAINED = "blood_stained"
    HAEMORRHAGIC = "haemorrhagic"
    PURULENT = "purulent"
    OTHER = "other"


class FluidAnalysis(StrEnum):
    """Laboratory analysis requested on the aspirate."""

    CELL_COUNT = "cell_count"
    CRYSTALS = "crystals"
    GRAM_STAIN = "gram_stain"
    CULTURE = "culture"
    OTHER = "other"


class Complication(StrEnum):
    """An immediate complication; an empty list means none."""

    VASOVAGAL_REACTION = "vasovagal_reaction"
    BLEEDING = "bleeding"
    HAEMATOMA = "haematoma"
    PROCEDURAL_PAIN = "procedural_pain"
    POST_INJECTION_FLARE = "post_injection_flare"
    ALLERGIC_REACTION = "allergic_reaction"
    FACIAL_FLUSHING = "facial_flushing"
    SKIN_DEPIGMENTATION = "skin_depigmentation"
    FAT_ATROPHY = "fat_atrophy"
    INFECTION = "infection"
    NERVE_INJURY = "nerve_injury"
    TENDON_RUPTURE = "tendon_rupture"
    OTHER = "other"


class ConsentMethod(StrEnum):
    """How consent was given."""

    WRITTEN = "written"
    VERBAL = "verbal"
    ELECTRONIC = "electronic"


class ConsentSigner(StrEnum):
    """Who consented: the patient, or a representative (FHIR Consent.performer Patient or RelatedPerson)."""

    PATIENT = "patient"
    REPRESENTATIVE = "representative"


# --- field helpers -----------------------------------------------------------------------------------------------

#: Largest attached consent document, decoded.
MAX_DOCUMENT_BYTES = 10 * 1024 * 1024
_NOT_BLANK = validate.Regexp(r"^\S(?:.*\S)?$", flags=re.S, error="must not be blank or start or end with a space")
_EPS = 1e-9


def _text(max_len: int, *more: Any, **kwargs: Any) -> fields.String:
    return fields.String(validate=[validate.Length(min=1, max=max_len), _NOT_BLANK, *more], **kwargs)


def _enum(enum: type[StrEnum], **kwargs: Any) -> fields.Enum:
    return fields.Enum(enum, by_value=True, **kwargs)


def _npi(value: str) -> None:
    """A National Provider Identifier: 10 digits whose last is the Luhn check digit over ``80840`` + the first 9."""
    if not re.fullmatch(r"[0-9]{10}", value):
        raise ValidationError("must be 10 digits")
    total = 0
    for i, ch in enumerate(reversed("80840" + value)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    if total % 10:
        raise ValidationError("is not a valid NPI: the check digit does not match")


def _known_site(value: str) -> None:
    if value not in current_catalog().sites:
        raise ValidationError(f"unknown site {value!r}: not in the site catalog")


def _known_drug(value: str) -> None:
    if value not in current_catalog().drugs:
        raise ValidationError(f"unknown drug {value!r}: not in the drug catalog")


def _icd10cm_form(value: str) -> None:
    if not ICD10CM_CODE.fullmatch(value):
        raise ValidationError(
            f"{value!r} is not an ICD-10-CM code: expected a letter other than U, a digit, a digit or letter, "
            "then optionally a dot and 1-4 characters (e.g. M17.11)"
        )


def _dicom_lo(value: str) -> None:
    if re.search(r"[\\\x00-\x1f]", value):
        raise ValidationError("must not contain a backslash or control characters")


def _past_date(value: date) -> None:
    if value > date.today():
        raise ValidationError("must not be in the future")
    if value < date(1900, 1, 1):
        raise ValidationError("must not be before 1900-01-01")


class PdfBase64(fields.String):
    """A PDF document as base64 text (RFC 4648; line breaks allowed), loaded as bytes.

    Refused: text that is not base64, more than :data:`MAX_DOCUMENT_BYTES` decoded, bytes not starting ``%PDF-``.
    """

    default_error_messages = {
        "not_base64": "must be base64 text (RFC 4648)",
        "too_large": "is {size} bytes; the limit is {limit} bytes",
        "not_pdf": "is not a PDF: it does not start with %PDF-",
    }

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> bytes:
        text = "".join(super()._deserialize(value, attr, data, **kwargs).split())
        if len(text) > (MAX_DOCUMENT_BYTES + 2) // 3 * 4:
            raise self.make_error("too_large", size=len(text) // 4 * 3, limit=MAX_DOCUMENT_BYTES)
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise self.make_error("not_base64") from exc
        if len(raw) > MAX_DOCUMENT_BYTES:
            raise self.make_error("too_large", size=len(raw), limit=MAX_DOCUMENT_BYTES)
        if not raw.startswith(b"%PDF-"):
            raise self.make_error("not_pdf")
        return raw

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        return None if value is None else base64.b64encode(value).decode("ascii")


def _flatten(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    """marshmallow's nested error dicts -> {"a.0.b": [messages]}; a schema-level ``_schema`` names its parent."""
    out: dict[str, list[str]] = {}
    if isinstance(messages, Mapping):
        for key, value in messages.items():
            path = prefix if key == "_schema" and prefix else f"{prefix}.{key}" if prefix else str(key)
            for k, v in _flatten(value, path).items():
                out.setdefault(k, []).extend(v)
    elif isinstance(messages, list | tuple):
        for item in messages:
            if isinstance(item, Mapping | list | tuple):
                for k, v in _flatten(item, prefix).items():
                    out.setdefault(k, []).extend(v)
            else:
                out.setdefault(prefix or "_schema", []).append(str(item))
    else:
        out.setdefault(prefix or "_schema", []).append(str(messages))
    return out


class _Body(Schema):
    """A request body: errors come out flat, keyed by dotted field path."""

    def handle_error(self, error: ValidationError, data: Any, *, many: bool, **kwargs: Any) -> None:
        raise ValidationError(_flatten(error.messages), data=error.data, valid_data=error.valid_data)


def _given(original: Any, path: str) -> bool:
    """True when the raw body has this field, valid or not: a field with its own error is not also "required"."""
    for part in path.split("."):
        if not isinstance(original, Mapping) or part not in original:
            return False
        original = original[part]
    return True


class _Errors(dict[str, list[str]]):
    def add(self, path: str, message: str) -> None:
        self.setdefault(path, []).append(message)

    def raise_any(self) -> None:
        if self:
            raise ValidationError(dict(self))


# --- the parts of a report ---------------------------------------------------------------------------------------


class IdentifierSchema(_Body):
    """A business identifier: the issuing system (a URI, FHIR Identifier.system) and the value."""

    system = fields.String(
        required=True,
        validate=[
            validate.Length(max=255),
            validate.Regexp(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$", error="must be an absolute URI (e.g. urn:oid:1.2.3)"),
        ],
    )
    # It travels in DICOM too (Patient ID, Admission ID: LO), where a backslash separates values.
    value = _text(64, _dicom_lo, required=True)


class EncounterIdentifierSchema(IdentifierSchema):
    """The encounter (visit) number; the system may be left to the organisation's default."""

    system = fields.String(
        validate=[
            validate.Length(max=255),
            validate.Regexp(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$", error="must be an absolute URI (e.g. urn:oid:1.2.3)"),
        ],
    )


class HumanNameSchema(_Body):
    family = _text(100, required=True)
    given = fields.List(_text(100), validate=validate.Length(max=5))


class PatientSchema(_Body):
    """The patient: identifier (with its system) required; name, birth date and sex by finalisation."""

    identifier = fields.Nested(IdentifierSchema, required=True)
    name = fields.Nested(HumanNameSchema)
    birth_date = fields.Date(validate=_past_date)
    sex = _enum(Sex)


class CoverageSchema(_Body):
    """The payer. ``payer`` is required unless self-pay; ``member_id`` unless self-pay or NHS."""

    kind = _enum(CoverageKind, required=True)
    payer = _text(200)
    payer_id = _text(80)
    member_id = _text(80)

    @validates_schema(skip_on_field_errors=False, pass_original=True)
    def _payer(self, data: dict[str, Any], original: Any, **_: Any) -> None:
        kind = data.get("kind")
        if kind is None:
            return
        errors = _Errors()
        if kind != CoverageKind.SELF_PAY and not _given(original, "payer"):
            errors.add("payer", f"required for {kind} coverage (only self_pay has no payer)")
        if kind not in (CoverageKind.SELF_PAY, CoverageKind.NHS) and not _given(original, "member_id"):
            errors.add("member_id", f"required for {kind} coverage")
        errors.raise_any()


class OrganizationSchema(_Body):
    """The performing organisation (FHIR Procedure.performer.onBehalfOf)."""

    name = _text(200, required=True)
    npi = fields.String(validate=_npi)
    identifier = fields.Nested(IdentifierSchema)


class PractitionerSchema(_Body):
    """A clinician: name and an NPI or a local id (DOC-09)."""

    name = _text(200, required=True)
    npi = fields.String(validate=_npi)
    local_id = _text(64)
    credentials = _text(40, metadata={"description": "e.g. MD, DO, PA-C, MCSP"})
    in_training = fields.Boolean(load_default=False)

    @validates_schema(skip_on_field_errors=False, pass_original=True)
    def _identified(self, data: dict[str, Any], original: Any, **_: Any) -> None:
        # An NPI or local id that was given but is bad has its own error; so has a body that is not an object.
        if isinstance(original, Mapping) and "npi" not in original and "local_id" not in original:
            raise ValidationError("give an NPI or a local_id", field_name="npi")


class GuidanceSchema(_Body):
    """How the needle was guided, and why guidance was needed (DOMAIN.md §1.3, DOC-02, DOC-04, §7.1)."""

    modality = _enum(GuidanceModality)
    approach = _enum(NeedleApproach)
    probe_type = _enum(ProbeType)
    probe_frequency_mhz = fields.Float(validate=validate.Range(min=1, max=70))
    needle_gauge = fields.Integer(strict=True, validate=validate.Range(min=10, max=34))
    needle_length_mm = fields.Float(validate=validate.Range(min=5, max=250))
    realtime_needle_guidance = fields.Boolean(metadata={"description": "needle followed live, not just pre-marking"})
    needle_tip_visualised = fields.Boolean(metadata={"description": "needle tip seen in the target"})
    hydrodissection = fields.Boolean()
    injectate_spread_observed = fields.Boolean()
    description = _text(10000, metadata={"description": "the localisation and needle guidance, in words (DOC-04)"})
    reasons = fields.List(_enum(GuidanceReason), validate=validate.Length(max=len(GuidanceReason)))
    reason_other = _text(500, metadata={"description": "required with reason 'other'"})
    prior_landmark_attempts = fields.Integer(strict=True, validate=validate.Range(min=0, max=50))
    conservative_treatment_months = fields.Integer(strict=True, validate=validate.Range(min=0, max=600))

    @validates_schema(skip_on_field_errors=False, pass_original=True)
    def _consistent(self, data: dict[str, Any], original: Any, **_: Any) -> None:
        errors = _Errors()
        reasons = data.get("reasons") or []
        if len(set(reasons)) != len(reasons):
            errors.add("reasons", "lists a reason twice")
        if GuidanceReason.OTHER in reasons and not _given(original, "reason_other"):
            errors.add("reason_other", "required when reasons include 'other'")
        reasons_known = "reasons" in data or not _given(original, "reasons")
        if data.get("reason_other") and reasons_known and GuidanceReason.OTHER not in reasons:
            errors.add("reason_other", "only with the reason 'other'")
        modality = data.get("modality")
        if modality is not None and modality != GuidanceModality.ULTRASOUND:
            for name in ("approach", "probe_type", "probe_frequency_mhz"):
                if data.get(name) is not None:
                    errors.add(name, f"only for ultrasound guidance (modality is {modality})")
        if modality == GuidanceModality.NONE:
            for name in ("realtime_needle_guidance", "needle_tip_visualised", "hydrodissection"):
                if data.get(name):
                    errors.add(name, "cannot be true without image guidance (modality is none)")
        errors.raise_any()


class InjectateSchema(_Body):
    """One product injected (DOC-06, DOC-07). Container and discarded amounts are in the dose's unit."""

    drug = fields.String(required=True, validate=_known_drug, metadata={"description": "a drug catalog key"})
    dose = fields.Float(validate=validate.Range(min=0, min_inclusive=False, max=10000))
    dose_unit = _enum(DoseUnit)
    volume_ml = fields.Float(validate=validate.Range(min=0, min_inclusive=False, max=200))
    concentration_mg_per_ml = fields.Float(validate=validate.Range(min=0, min_inclusive=False, max=1000))
    ndc = fields.String(
        validate=validate.Regexp(NDC.pattern, error="must be an NDC: 4-4-2, 5-3-2 or 5-4-1 with hyphens, or 11 digits")
    )
    lot_number = _text(40)
    expiry_date = fields.Date()
    container_type = _enum(ContainerType)
    container_amount = fields.Float(validate=validate.Range(min=0, min_inclusive=False, max=10000))
    discarded_amount = fields.Float(validate=validate.Range(min=0, max=10000))

    @validates_schema(skip_on_field_errors=False, pass_original=True)
    def _amounts(self, data: dict[str, Any], original: Any, **_: Any) -> None:
        errors = _Errors()
        drug = current_catalog().drugs.get(data.get("drug", ""))
        unit = data.get("dose_unit")
        if data.get("dose") is not None and not _given(original, "dose_unit"):
            errors.add("dose_unit", "required with a dose")
        if drug is not None and unit is not None and unit not in drug.dose_units:
            errors.add("dose_unit", f"{drug.label} is recorded in {' or '.join(drug.dose_units)}, not {unit}")
        dose, container, discarded = data.get("dose"), data.get("container_amount"), data.get("discarded_amount")
        if data.get("container_type") == ContainerType.MULTI_DOSE and discarded:
            errors.add("discarded_amount", "only a single-dose container has a discarded amount (JW/JZ, WASTE-3)")
        if data.get("container_type") == ContainerType.SINGLE_DOSE and container is not None and dose is not None:
            if discarded is not None and dose + discarded > container + _EPS:
                errors.add(
                    "discarded_amount",
                    f"dose {dose:g} + discarded {discarded:g} exceeds the container amount {container:g} "
                    "(at most container amount - dose, DOMAIN.md §4.1)",
                )
            elif dose > container + _EPS:
                errors.add("dose", f"{dose:g} exceeds the single-dose container amount {container:g}")
        errors.raise_any()


class IndicationSchema(_Body):
    """A diagnosis supporting the procedure, as ICD-10-CM (DOMAIN.md §5, DOC-01)."""

    code = fields.String(required=True, validate=_icd10cm_form)
    description = _text(200)


class AspirationSchema(_Body):
    """What was aspirated."""

    volume_ml = fields.Float(validate=validate.Range(min=0, max=1000), metadata={"description": "0: a dry tap"})
    appearance = _enum(AspirateAppearance)
    sent_for_analysis = fields.Boolean()
    analyses = fields.List(_enum(FluidAnalysis), validate=validate.Length(max=len(FluidAnalysis)))

    @validates_schema(skip_on_field_errors=False)
    def _sent(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("analyses") and data.get("sent_for_analysis") is False:
            raise ValidationError("analyses are listed but sent_for_analysis is false", field_name="analyses")


class AttachmentSchema(_Body):
    """An attached document: a PDF only, base64 in ``data``."""

    content_type = fields.String(
        required=True, validate=validate.Equal("application/pdf", error="must be application/pdf")
    )
    data = PdfBase64(required=True, metadata={"format": "byte"})
    title = _text(200)


class ConsentSchema(_Body):
    """Consent to the procedure (DOMAIN.md §8.4, DOC-08)."""

    obtained = fields.Boolean(required=True)
    method = _enum(ConsentMethod)
    signer = _enum(ConsentSigner)
    representative_name = _text(200)
    representative_relationship = _text(100)
    obtained_at = fields.AwareDateTime()
    off_label_disclosed = fields.Boolean(
        metadata={"description": "required true when a product is off-label at the site (DOMAIN.md §8.4)"}
    )
    abn_signed = fields.Boolean(metadata={"description": "ABN on file for an expected Medicare non-coverage"})
    document = fields.Nested(AttachmentSchema)

    @validates_schema(skip_on_field_errors=False, pass_original=True)
    def _representative(self, data: dict[str, Any], original: Any, **_: Any) -> None:
        errors = _Errors()
        signer = data.get("signer")
        if signer == ConsentSigner.REPRESENTATIVE and not _given(original, "representative_name"):
            errors.add("representative_name", "required when a representative signed")
        if signer == ConsentSigner.PATIENT:
            for name in ("representative_name", "representative_relationship"):
                if data.get(name):
                    errors.add(name, "only when a representative signed (signer is patient)")
        errors.raise_any()


class ProcedureTimesSchema(_Body):
    """Times with a UTC offset. Scheduled may be any time; started <= injected <= ended."""

    scheduled_at = fields.AwareDateTime()
    started_at = fields.AwareDateTime()
    injected_at = fields.AwareDateTime()
    ended_at = fields.AwareDateTime()

    @validates_schema(skip_on_field_errors=False)
    def _order(self, data: dict[str, Any], **_: Any) -> None:
        errors = _Errors()
        order = ("started_at", "injected_at", "ended_at")
        for i, later in enumerate(order):
            for earlier in order[:i]:
                if data.get(earlier) and data.get(later) and data[later] < data[earlier]:
                    errors.add(later, f"must not be before {earlier}")
                    break
        errors.raise_any()


# --- the report --------------------------------------------------------------------------------------------------

_DIGIT_NAMES = {"finger": "1 thumb .. 5 little finger", "toe": "1 great toe .. 5 little toe"}
_INJECTING = (ProcedureKind.INJECTION, ProcedureKind.ASPIRATION_AND_INJECTION)
_ASPIRATING = (ProcedureKind.ASPIRATION, ProcedureKind.ASPIRATION_AND_INJECTION)


class ProcedureCreateSchema(_Body):
    """The procedure report (``POST /api/procedures``): a draft until finalised.

    Required at creation: ``patient`` (with ``patient.identifier``) and one of ``encounter_identifier`` (a visit
    number alone is enough to create a scheduled procedure), ``accession_number`` or ``times.scheduled_at``.
    Everything else may be filled in later, so drafts can be saved; what a report needs before it can be finalised
    is listed by :func:`finalisation_problems`.

    Whatever is given must be consistent, checked here (errors keyed by the exact field path):

    - ``laterality``, once ``site`` is given: left, right or bilateral for a paired site; not_applicable (or absent)
      for an unpaired one. ``digit`` (1-5, 1 = thumb or great toe, DOMAIN.md §3 DIG-1/DIG-2) is required for finger
      and toe sites and refused elsewhere;
    - ``supervisor`` is required when ``performer.in_training``;
    - each ``indications.N.code`` is a complete ICD-10-CM code whose family fits the site and whose side agrees with
      the laterality (DOMAIN.md §5.1); a bilateral procedure needs a bilateral code or both a left and a right code;
    - ``injectates.N.drug`` is a drug catalog key, its dose unit is the drug's, waste fits the single-dose container;
      an expired product (before the procedure date) is refused;
    - an off-label product at the site (DOMAIN.md §8.4) needs ``consent.off_label_disclosed`` true whenever
      ``consent`` is given (a report without ``consent`` cannot be finalised anyway);
    - ``aspiration`` and ``injectates`` match ``kind``; times run started <= injected <= ended; consent is not
      obtained after the procedure started.
    """

    #: False in :class:`ProcedurePatchSchema`: rules needing fields the body does not carry are left to the merge.
    _whole = True

    patient = fields.Nested(PatientSchema, required=True)
    encounter_identifier = fields.Nested(EncounterIdentifierSchema)
    accession_number = fields.String(
        validate=validate.Regexp(
            r"^[^\\\x00-\x1f]{1,16}$", error="must be 1-16 characters without backslash (DICOM SH)"
        )
    )
    study_instance_uid = fields.String(
        validate=validate.And(
            validate.Length(max=64, error="must be a DICOM UID (digits and dots, 64 at most)"),
            validate.Regexp(
                r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$", error="must be a DICOM UID (digits and dots, 64 at most)"
            ),
        ),
        metadata={"description": "the order's Study Instance UID when it has one; else the service assigns one"},
    )
    scheduled_station_ae_title = fields.String(
        validate=validate.Regexp(
            r"^(?=.{1,16}$)[^\\\x00-\x1f]*[^\\\x00-\x1f ][^\\\x00-\x1f]*$",
            error="must be a DICOM AE title: 1-16 characters, not only spaces, no backslash",
        ),
        metadata={"description": "the ultrasound machine the worklist offers this procedure to"},
    )
    place_of_service = _enum(PlaceOfService)
    coverage = fields.Nested(CoverageSchema)
    equipment_ownership = _enum(EquipmentOwnership)
    performer = fields.Nested(PractitionerSchema)
    supervisor = fields.Nested(PractitionerSchema)
    performing_organization = fields.Nested(OrganizationSchema)
    kind = _enum(ProcedureKind)
    site = fields.String(validate=_known_site, metadata={"description": "a site catalog key"})
    laterality = _enum(Laterality)
    digit = fields.Integer(
        strict=True, validate=validate.Range(min=1, max=5), metadata={"description": "1 = thumb or great toe"}
    )
    guidance = fields.Nested(GuidanceSchema)
    injectates = fields.List(fields.Nested(InjectateSchema), validate=validate.Length(max=20))
    indications = fields.List(fields.Nested(IndicationSchema), validate=validate.Length(max=12))
    aspiration = fields.Nested(AspirationSchema)
    complications = fields.List(_enum(Complication), metadata={"description": "empty: no complications"})
    complication_details = _text(2000)
    post_procedure_instructions = _text(4000)
    consent = fields.Nested(ConsentSchema)
    times = fields.Nested(ProcedureTimesSchema)
    educational = fields.Boolean(load_default=False, metadata={"description": "a teaching case"})

    @validates_schema(skip_on_field_errors=False, pass_original=True)
    def _cross_field(self, data: dict[str, Any], original: Any, **_: Any) -> None:
        catalog = current_catalog()
        errors = _Errors()
        if self._whole:
            if not any(_given(original, p) for p in ("encounter_identifier", "accession_number", "times.scheduled_at")):
                errors.add(
                    "encounter_identifier",
                    "required: give encounter_identifier (the visit number), accession_number or times.scheduled_at",
                )
            if (data.get("performer") or {}).get("in_training") and not _given(original, "supervisor"):
                errors.add("supervisor", "required when the performer is in training")
        if (data.get("supervisor") or {}).get("in_training"):
            errors.add("supervisor.in_training", "a supervisor cannot be in training")
        site = catalog.sites.get(data.get("site", ""))
        if site is not None:
            self._site_rules(data, original, site, errors)
        self._indications(data, catalog, errors)
        self._kind_rules(data, errors)
        self._off_label(data, catalog, errors)
        self._dates(data, errors)
        complications = data.get("complications") or []
        if len(set(complications)) != len(complications):
            errors.add("complications", "lists a complication twice")
        if Complication.OTHER in complications and not _given(original, "complication_details"):
            errors.add("complication_details", "required when complications include 'other'")
        errors.raise_any()

    def _site_rules(self, data: dict[str, Any], original: Any, site: Site, errors: _Errors) -> None:
        laterality = data.get("laterality")
        missing = self._whole and not _given(original, "laterality")
        if site.paired:
            if laterality == Laterality.NOT_APPLICABLE or missing:
                errors.add("laterality", f"required for the paired site {site.key}: left, right or bilateral")
        elif laterality not in (None, Laterality.NOT_APPLICABLE):
            errors.add("laterality", f"must be not_applicable: {site.key} is not a paired site")
        if site.digit != "none":
            if self._whole and not _given(original, "digit"):
                errors.add("digit", f"required for the {site.digit} site {site.key} ({_DIGIT_NAMES[site.digit]})")
        elif data.get("digit") is not None:
            errors.add("digit", f"only finger and toe sites take a digit; {site.key} does not")

    def _indications(self, data: dict[str, Any], catalog: Catalog, errors: _Errors) -> None:
        indications = data.get("indications") or []
        site, laterality = data.get("site"), data.get("laterality")
        if not self._whole and ("site" not in data or "laterality" not in data):
            site = laterality = None  # a patch: site and side are checked once merged
        seen: set[str] = set()
        sides: dict[str, str] = {}
        for i, indication in enumerate(indications):
            code = indication.get("code", "")
            if code in seen:
                errors.add(f"indications.{i}.code", f"{code} is listed twice")
            seen.add(code)
            for problem in catalog.icd10_check(code, site, laterality):
                if not is_warning(problem):
                    errors.add(f"indications.{i}.code", problem)
            side = catalog.icd10_laterality(code)
            if side in ("left", "right", "bilateral"):
                sides.setdefault(side, code)
        covered = "bilateral" in sides or {"left", "right"} <= set(sides)
        if laterality == Laterality.BILATERAL and sides and not covered:
            only = ", ".join(f"{code} codes the {side} side" for side, code in sides.items())
            errors.add(
                "indications",
                f"a bilateral procedure needs a bilateral code or both a left and a right code; {only} only",
            )

    @staticmethod
    def _kind_rules(data: dict[str, Any], errors: _Errors) -> None:
        kind = data.get("kind")
        if kind is None:
            return
        if kind not in _INJECTING:
            if data.get("injectates"):
                errors.add("injectates", f"a procedure of kind {kind} has no injectates")
            if (data.get("times") or {}).get("injected_at"):
                errors.add("times.injected_at", f"a procedure of kind {kind} has no injection time")
        if kind not in _ASPIRATING and data.get("aspiration"):
            errors.add("aspiration", f"a procedure of kind {kind} has no aspiration")

    @staticmethod
    def _off_label(data: dict[str, Any], catalog: Catalog, errors: _Errors) -> None:
        consent, site = data.get("consent"), data.get("site")
        if consent is None or site not in catalog.sites or consent.get("off_label_disclosed") is True:
            return
        for injectate in data.get("injectates") or []:
            drug = injectate.get("drug")
            reason = catalog.off_label_reason(drug, site) if drug in catalog.drugs else None
            if reason:
                errors.add("consent.off_label_disclosed", f"must be true: off-label use ({reason}; DOMAIN.md §8.4)")
                return

    @staticmethod
    def _dates(data: dict[str, Any], errors: _Errors) -> None:
        times = data.get("times") or {}
        when: datetime | None = times.get("injected_at") or times.get("started_at")
        if when is not None:
            for i, injectate in enumerate(data.get("injectates") or []):
                expiry = injectate.get("expiry_date")
                if expiry is not None and expiry < when.date():
                    errors.add(
                        f"injectates.{i}.expiry_date", f"expired on {expiry}, before the procedure ({when.date()})"
                    )
        obtained, started = (data.get("consent") or {}).get("obtained_at"), times.get("started_at")
        if obtained is not None and started is not None and obtained > started:
            errors.add("consent.obtained_at", "must not be after times.started_at (consent comes first)")


class ProcedurePatchSchema(ProcedureCreateSchema):
    """A partial update (``PATCH /api/procedures/{id}``): each top-level field given replaces that part.

    Nothing is required, but each part given is validated in full (a nested object is replaced whole) along with
    the cross-field rules whose fields are all in the body. The service validates the merged report with
    :class:`ProcedureCreateSchema` before storing it, so a patch cannot leave an inconsistent report.
    """

    _whole = False

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("partial", tuple(ProcedureCreateSchema._declared_fields))
        super().__init__(**kwargs)

    @validates_schema(skip_on_field_errors=False)
    def _not_empty(self, data: dict[str, Any], **_: Any) -> None:
        if not data:
            raise ValidationError("give at least one field to change")


# --- finalisation ------------------------------------------------------------------------------------------------

_REQUIRED = "required before the report can be finalised"


def _at(data: Mapping[str, Any], path: str) -> Any:
    value: Any = data
    for part in path.split("."):
        if isinstance(value, Mapping):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def finalisation_problems(data: Mapping[str, Any], catalog: Catalog | None = None) -> dict[str, str]:
    """What a loaded report (a :class:`ProcedureCreateSchema` result) still lacks before it can be finalised.

    Parameters
    ----------
    data
        The report as loaded by :class:`ProcedureCreateSchema` (so already consistent).
    catalog
        Default :func:`current_catalog`.

    Returns
    -------
    dict
        Field path -> why it is needed; empty when the report can be finalised. Required: the patient's name, birth
        date and sex; place of service, coverage, performer, performing organisation; kind, site, laterality (and
        digit) for the site; guidance with its modality and needle gauge, and for ultrasound the equipment
        ownership, approach, probe type, real-time guidance and tip visualisation, a description (DOC-04) and at
        least one reason (DOC-02); for injections the injectates with dose, unit, volume, lot, expiry and container
        type (DOC-06), container and discarded amounts for single-dose containers (DOC-07), an NDC for separately
        billable drugs on a US payer (DOC-06), the injection time and the months of conservative treatment (DOC-01,
        DOC-15); for aspirations the aspiration volume, appearance and whether it was sent for analysis; at least
        one indication (DOC-01); complications (an empty list: none); post-procedure instructions; consent obtained,
        its method, signer and time, and the off-label disclosure where it applies (DOC-08); start and end times.
    """
    cat = catalog or current_catalog()
    problems: dict[str, str] = {}

    def need(path: str, why: str = _REQUIRED) -> None:
        if _at(data, path) in (None, "", []):
            problems[path] = why

    for path in ("patient.name", "patient.birth_date", "patient.sex", "place_of_service", "coverage"):
        need(path)
    for path in ("performer", "performing_organization", "kind", "site"):
        need(path, f"{_REQUIRED} (DOC-09)" if path.startswith("perf") else _REQUIRED)
    if (_at(data, "performer.in_training")) and not data.get("supervisor"):
        problems["supervisor"] = "required when the performer is in training"
    site = cat.sites.get(data.get("site") or "")
    if site is not None and site.paired and data.get("laterality") in (None, Laterality.NOT_APPLICABLE):
        problems["laterality"] = f"{_REQUIRED}: left, right or bilateral for {site.key} (DOC-05)"
    if site is not None and site.digit != "none":
        need("digit", f"{_REQUIRED} for the {site.digit} site {site.key}")

    need("guidance")
    need("guidance.modality")
    need("guidance.needle_gauge")
    if _at(data, "guidance.modality") == GuidanceModality.ULTRASOUND:
        need("equipment_ownership", f"{_REQUIRED} with ultrasound guidance (DOC-14)")
        for name in ("approach", "probe_type", "realtime_needle_guidance", "needle_tip_visualised"):
            need(f"guidance.{name}", f"{_REQUIRED} with ultrasound guidance (DOC-03, DOC-04)")
        need("guidance.description", f"{_REQUIRED}: describe the localisation and needle guidance (DOC-04)")
        need("guidance.reasons", f"{_REQUIRED}: why ultrasound guidance was needed (DOC-02, DOC-15)")

    kind = data.get("kind")
    us_payer = _at(data, "coverage.kind") not in (CoverageKind.NHS, CoverageKind.SELF_PAY)
    if kind in _INJECTING:
        need("injectates", f"{_REQUIRED} for an injection (DOC-06)")
        need("times.injected_at")
        need("guidance.conservative_treatment_months", f"{_REQUIRED} for an injection (DOC-01, DOC-15)")
        for i, injectate in enumerate(data.get("injectates") or []):
            for name in ("dose", "dose_unit", "volume_ml", "lot_number", "expiry_date", "container_type"):
                need(f"injectates.{i}.{name}", f"{_REQUIRED} (DOC-06, DOC-07)")
            if injectate.get("container_type") == ContainerType.SINGLE_DOSE:
                for name in ("container_amount", "discarded_amount"):
                    need(f"injectates.{i}.{name}", f"{_REQUIRED} for a single-dose container (DOC-07, JW/JZ)")
            drug = cat.drugs.get(injectate.get("drug") or "")
            # Autologous PRP has no NDC: it is billed as a procedure (0232T), not as a drug.
            if drug is not None and drug.separately_billable == "yes" and us_payer and drug.kind != "prp":
                need(f"injectates.{i}.ndc", f"{_REQUIRED} for a separately billable drug (DOC-06)")
    if kind in _ASPIRATING:
        need("aspiration", f"{_REQUIRED} for an aspiration")
        for name in ("volume_ml", "appearance", "sent_for_analysis"):
            need(f"aspiration.{name}")

    need("indications", f"{_REQUIRED}: at least one ICD-10-CM code (DOC-01)")
    if data.get("complications") is None:
        problems["complications"] = f"{_REQUIRED}: list them, or give an empty list for none"
    need("post_procedure_instructions")
    need("consent", f"{_REQUIRED} (DOC-08)")
    if data.get("consent") is not None:
        if _at(data, "consent.obtained") is not True:
            problems["consent.obtained"] = "must be true before the report can be finalised (DOC-08)"
        for name in ("method", "signer", "obtained_at"):
            need(f"consent.{name}", f"{_REQUIRED} (DOC-08)")
        if site is not None and _at(data, "consent.off_label_disclosed") is not True:
            for injectate in data.get("injectates") or []:
                if injectate.get("drug") in cat.drugs and cat.is_off_label(injectate["drug"], site.key):
                    problems["consent.off_label_disclosed"] = "must be true: off-label use (DOMAIN.md §8.4, DOC-08)"
    need("times.started_at")
    need("times.ended_at")
    return problems


def report_warnings(data: Mapping[str, Any], catalog: Catalog | None = None) -> dict[str, str]:
    """Warning-level findings on a loaded report; they do not block saving or finalising.

    Unspecified-side ICD-10-CM codes where the side is documented (DOMAIN.md §5.1), a site with a known payer risk
    for ultrasound guidance (§1.2, §2.3), and PRP on Medicare without an ABN (GZ, provider liable; §3, §8.4).
    """
    cat = catalog or current_catalog()
    warnings: dict[str, str] = {}
    site, laterality = data.get("site"), data.get("laterality")
    for i, indication in enumerate(data.get("indications") or []):
        found = [p for p in cat.icd10_check(indication.get("code", ""), site, laterality) if is_warning(p)]
        if found:
            warnings[f"indications.{i}.code"] = "; ".join(p.removeprefix(WARNING_PREFIX) for p in found)
    site_obj = cat.sites.get(site or "")
    if site_obj and site_obj.us_guidance_payer_risk and _at(data, "guidance.modality") == GuidanceModality.ULTRASOUND:
        warnings["guidance.modality"] = (
            f"payer risk for ultrasound guidance at {site_obj.key}: {site_obj.us_guidance_payer_risk}"
        )
    medicare = _at(data, "coverage.kind") in (CoverageKind.MEDICARE, CoverageKind.MEDICARE_ADVANTAGE)
    investigational = any(
        cat.drugs[i["drug"]].investigational for i in data.get("injectates") or [] if i.get("drug") in cat.drugs
    )
    if medicare and investigational and _at(data, "consent.abn_signed") is not True:
        warnings["consent.abn_signed"] = "Medicare non-covered product without an ABN: the claim carries GZ"
    return warnings
