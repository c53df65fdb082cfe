"""The project's Blueprint: flask-smorest's, with body and query errors answered 400 (not webargs' 422)."""

from __future__ import annotations

import flask_smorest
from webargs.flaskparser import FlaskParser


class _Parser(FlaskParser):
    # A body or query string that fails its schema is a bad request; 422 is kept for rules that say no.
    DEFAULT_VALIDATION_STATUS = 400


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = _Parser()
