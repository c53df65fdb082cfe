from __future__ import annotations

from marshmallow import Schema, fields, validate


class PeerSchema(Schema):
    ae_title = fields.String(required=True, validate=validate.Length(min=1, max=16))
    host = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=255))
    port = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=1, max=65535))
    description = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=200))
    created_at = fields.DateTime(dump_only=True)


class HealthSchema(Schema):
    status = fields.String()
    checks = fields.Dict(keys=fields.String(), values=fields.String())
