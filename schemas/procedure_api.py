"""Bodies and answers of the procedure endpoints other than the report itself (schemas/procedures.py)."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from schemas.common import PageArgs, PageMeta
from schemas.images import ImageSchema
from schemas.procedures import ProcedurePatchSchema, _Body, _text
from service.procedures.lifecycle import ProcedureStatus
from service.procedures.roles import ImageRole


class ProcedureQueryArgs(PageArgs):
    status = fields.Enum(ProcedureStatus, by_value=True)
    patient_id = fields.String(validate=validate.Length(min=1, max=64))
    accession_number = fields.String(validate=validate.Length(min=1, max=16))
    encounter_id = fields.String(validate=validate.Length(min=1, max=64), metadata={"description": "visit number"})


class SignatureSchema(Schema):
    capacity = fields.String(metadata={"description": "performer, supervisor or amender"})
    signer = fields.String(metadata={"description": "the name of the token that signed"})
    token_id = fields.Integer()
    version = fields.Integer(metadata={"description": "the version signed"})
    statement = fields.String()
    signed_at = fields.DateTime()
    voided_at = fields.DateTime(allow_none=True, metadata={"description": "set when a later edit voided it"})


class ProcedureSchema(Schema):
    """A procedure at its current version. ``report`` has the shape of ProcedureCreate."""

    id = fields.String()
    version = fields.Integer(metadata={"description": "also the ETag: send it back in If-Match to change it"})
    status = fields.String(metadata={"description": ", ".join(s.value for s in ProcedureStatus)})
    accession_number = fields.String(metadata={"description": "given, or assigned by the service"})
    study_instance_uid = fields.String(metadata={"description": "given, or assigned by the service"})
    educational = fields.Boolean()
    report = fields.Dict(metadata={"description": "the report, in the shape of the ProcedureCreate body"})
    finalisation_problems = fields.Dict(
        keys=fields.String(), values=fields.String(), metadata={"description": "empty when it can be finalised"}
    )
    warnings = fields.Dict(keys=fields.String(), values=fields.String())
    awaiting_signature = fields.String(allow_none=True, metadata={"description": "supervisor: a trainee signed"})
    signatures = fields.List(fields.Nested(SignatureSchema))
    image_count = fields.Integer()
    cancel_reason = fields.String(allow_none=True)
    coding = fields.Dict(
        allow_none=True,
        metadata={"description": "final/amended only: claim lines, diagnoses and findings, each naming its rules"},
    )
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


class ProcedurePageSchema(Schema):
    items = fields.List(fields.Nested(ProcedureSchema))
    meta = fields.Nested(PageMeta)


class ProcedureVersionSchema(Schema):
    version = fields.Integer()
    status = fields.String()
    action = fields.String(metadata={"description": "create, update, finalize, cosign, amend or cancel"})
    reason = fields.String(allow_none=True)
    changed_at = fields.DateTime()
    changed_by = fields.String()
    report = fields.Dict()


class AmendSchema(_Body):
    """An amendment of a final report: why, and the changed parts (each top-level field replaces that part)."""

    reason = _text(1000, required=True)
    changes = fields.Nested(ProcedurePatchSchema, required=True)


class CancelSchema(_Body):
    reason = _text(500, required=True)


class ImageLinkSchema(_Body):
    """Link an image to the procedure; a role given here overrides the automatic one (and is audited)."""

    role = fields.Enum(ImageRole, by_value=True)
    accept_contradiction = fields.Boolean(
        load_default=False,
        metadata={"description": "link even though the image's Patient ID or laterality contradicts the procedure"},
    )


class LinkedImageSchema(ImageSchema):
    pass
