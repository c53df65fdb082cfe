"""Marshmallow schemas: the HTTP contract of /api and the source of /openapi.json."""
