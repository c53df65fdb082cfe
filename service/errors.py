"""Domain errors, mapped to HTTP, FHIR and DICOM statuses at each transport's edge."""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error the service layer raises on purpose."""

    code = "error"


class NotFound(DomainError):
    code = "not_found"


class Conflict(DomainError):
    code = "conflict"


class Rejected(DomainError):
    """Input that is well-formed but not acceptable (a rule says no)."""

    code = "rejected"
