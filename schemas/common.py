from __future__ import annotations

from marshmallow import Schema, fields, validate


class ErrorSchema(Schema):
    """Every /api error: a code, the HTTP status, a message, and per-field messages where input was bad."""

    code = fields.String(required=True)
    status = fields.Integer(required=True)
    message = fields.String(required=True)
    errors = fields.Dict(keys=fields.String(), values=fields.Raw())


class PageArgs(Schema):
    page = fields.Integer(load_default=1, validate=validate.Range(min=1))
    per_page = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))


class PageMeta(Schema):
    page = fields.Integer()
    per_page = fields.Integer()
    total = fields.Integer()
