from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, pre_load, validate, validates_schema

from schemas.common import PageArgs, PageMeta


class ImageQueryArgs(PageArgs):
    patient_id = fields.String(validate=validate.Length(min=1, max=64))
    accession_number = fields.String(validate=validate.Length(min=1, max=16))
    study_instance_uid = fields.String(validate=validate.Length(min=1, max=64))
    date_from = fields.DateTime(metadata={"description": "acquisition (else content, else study) time, inclusive"})
    date_to = fields.DateTime(metadata={"description": "acquisition (else content, else study) time, inclusive"})
    linked = fields.Boolean(metadata={"description": "true: linked to a procedure; false: the unlinked queue"})
    conflict = fields.Boolean(metadata={"description": "true: SOP Instance UIDs stored with differing content"})
    link_status = fields.String(
        validate=validate.OneOf(["linked", "unmatched", "ambiguous", "contradiction", "unlinked"]),
        metadata={"description": "why an image is (not) linked; with linked=false, why it waits for a person"},
    )

    @pre_load
    def _whole_days(self, data: object, **_: object) -> object:
        # A bare date means the whole day: date_to=2024-01-13 includes everything taken that day.
        if hasattr(data, "to_dict"):
            data = data.to_dict()  # type: ignore[union-attr]
        if isinstance(data, dict):
            for key, suffix in (("date_from", "T00:00:00"), ("date_to", "T23:59:59.999999")):
                value = data.get(key)
                if isinstance(value, str) and len(value) == 10:
                    data = {**data, key: value + suffix}
        return data

    @validates_schema
    def _range(self, data: dict, **_: object) -> None:
        if data.get("date_from") and data.get("date_to") and data["date_from"] > data["date_to"]:
            raise ValidationError("must not be after date_to", field_name="date_from")


class VersionArgs(Schema):
    version = fields.Integer(
        validate=validate.Range(min=1),
        metadata={"description": "1 = first stored version; default the latest"},
    )


class PreviewArgs(VersionArgs):
    frame = fields.Integer(load_default=0, validate=validate.Range(min=0))
    size = fields.Integer(
        validate=validate.Range(min=16, max=4096),
        metadata={"description": "longest side in pixels (downscaled)"},
    )


class ImageVersionSchema(Schema):
    version = fields.Integer()
    sha256 = fields.String()
    size_bytes = fields.Integer()
    received_at = fields.DateTime()
    calling_ae_title = fields.String(allow_none=True)
    transfer_syntax_uid = fields.String()


class ImageSchema(Schema):
    sop_instance_uid = fields.String()
    sop_class_uid = fields.String()
    study_instance_uid = fields.String()
    series_instance_uid = fields.String()
    accession_number = fields.String(allow_none=True)
    patient_id = fields.String(allow_none=True)
    issuer_of_patient_id = fields.String(allow_none=True)
    patient_name = fields.String(allow_none=True)
    admission_id = fields.String(allow_none=True)
    study_datetime = fields.DateTime(allow_none=True)
    series_datetime = fields.DateTime(allow_none=True)
    acquisition_datetime = fields.DateTime(allow_none=True)
    content_datetime = fields.DateTime(allow_none=True)
    modality = fields.String(allow_none=True)
    laterality = fields.String(allow_none=True)
    body_part = fields.String(allow_none=True)
    series_description = fields.String(allow_none=True)
    protocol_name = fields.String(allow_none=True)
    image_comments = fields.String(allow_none=True)
    number_of_frames = fields.Integer(allow_none=True)
    rows = fields.Integer(allow_none=True)
    columns = fields.Integer(allow_none=True)
    photometric_interpretation = fields.String(allow_none=True)
    transfer_syntax_uid = fields.String()
    is_image = fields.Boolean()
    size_bytes = fields.Integer()
    sha256 = fields.String()
    storage_key = fields.String()
    calling_ae_title = fields.String(allow_none=True)
    peer_address = fields.String(allow_none=True)
    received_at = fields.DateTime()
    warnings = fields.String(allow_none=True)
    procedure_id = fields.String(allow_none=True)
    image_role = fields.String(allow_none=True, metadata={"description": "pre, post or other"})
    role_source = fields.String(allow_none=True, metadata={"description": "marker, time, none or manual"})
    role_reason = fields.String(allow_none=True)
    link_status = fields.String(
        allow_none=True,
        metadata={"description": "linked, unmatched, ambiguous, contradiction, unlinked (by a person); null: pending"},
    )
    link_method = fields.String(
        allow_none=True, metadata={"description": "accession, study, visit, patient_time or manual"}
    )
    link_detail = fields.String(allow_none=True, metadata={"description": "why it is (not) linked"})
    linked = fields.Boolean()
    version = fields.Integer()
    conflict = fields.Boolean(metadata={"description": "another version with different content exists"})
    versions = fields.List(fields.Nested(ImageVersionSchema))
    links = fields.Dict(keys=fields.String(), values=fields.String())


class ImagePageSchema(Schema):
    items = fields.List(fields.Nested(ImageSchema))
    meta = fields.Nested(PageMeta)


class PerformedStepSchema(Schema):
    sop_instance_uid = fields.String()
    status = fields.String()
    acquisition_ended = fields.Boolean()
    study_instance_uid = fields.String(allow_none=True)
    accession_number = fields.String(allow_none=True)
    performed_station_ae_title = fields.String(allow_none=True)
    started_at = fields.DateTime(allow_none=True)
    ended_at = fields.DateTime(allow_none=True)
    discontinuation_reason = fields.String(allow_none=True)
    instances = fields.List(fields.Dict())


class PerformedStepArgs(Schema):
    study_instance_uid = fields.String(validate=validate.Length(min=1, max=64))
