"""The FHIR outbox as the admin API shows it: delivery state, never the Bundles (they hold patient data)."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

STATUSES = ("pending", "delivered", "failed")


class OutboxQuerySchema(Schema):
    status = fields.String(load_default=None, validate=validate.OneOf(STATUSES))


class OutboxMessageSchema(Schema):
    id = fields.Integer()
    procedure_id = fields.String()
    version = fields.Integer()
    status = fields.String()
    attempts = fields.Integer()
    next_attempt_at = fields.DateTime()
    created_at = fields.DateTime()
    delivered_at = fields.DateTime(allow_none=True)
    last_status = fields.Integer(allow_none=True)
    last_error = fields.String(allow_none=True)
