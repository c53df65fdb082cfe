"""Bearer tokens with roles. A token is shown once; only its SHA-256 is stored."""

from __future__ import annotations

import enum
import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select

from service.bootstrap import Services
from service.db import unit_of_work
from service.models import ApiToken


class Role(enum.StrEnum):
    CLINICIAN = "clinician"
    """Files and edits procedure reports; reads images."""
    AUDITOR = "auditor"
    """Reads everything; audit endpoints."""
    EHR = "ehr"
    """Reads the FHIR API."""
    ADMIN = "admin"
    """Manages tokens and DICOM peers."""


TOKEN_PREFIX = "usgi_"


@dataclass(frozen=True)
class Principal:
    token_id: int
    name: str
    role: Role


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(services: Services, role: Role, name: str) -> str:
    """Create a token and return it in clear (the only time it exists outside the caller)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with unit_of_work(services.session_factory) as s:
        s.add(ApiToken(name=name, role=role.value, token_hash=hash_token(token), created_at=services.clock()))
    return token


def authenticate(services: Services, token: str) -> Principal | None:
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    with unit_of_work(services.session_factory) as s:
        row = s.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token)))
        if row is None or row.revoked_at is not None:
            return None
        return Principal(token_id=row.id, name=row.name, role=Role(row.role))


def revoke_token(services: Services, token_id: int) -> bool:
    with unit_of_work(services.session_factory) as s:
        row = s.get(ApiToken, token_id)
        if row is None:
            return False
        row.revoked_at = services.clock()
        return True


def list_tokens(services: Services) -> list[ApiToken]:
    with unit_of_work(services.session_factory) as s:
        return list(s.scalars(select(ApiToken).order_by(ApiToken.id)))
