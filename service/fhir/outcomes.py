"""FHIR errors as values: :class:`FhirError` and the OperationOutcome it becomes (no Flask here).

R4 http.html: every error of the RESTful API is answered with an OperationOutcome and the matching HTTP status;
``issue.code`` is from http://hl7.org/fhir/issue-type (``login`` and ``forbidden`` are children of ``security``).
"""

from __future__ import annotations

from typing import Any

# HTTP status -> the issue-type code that says the same thing.
ISSUE_CODES: dict[int, str] = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    409: "conflict",
    410: "deleted",
    412: "conflict",
    415: "not-supported",
    422: "processing",
    428: "required",
}


class FhirError(Exception):
    """An answer the FHIR API gives instead of a resource: HTTP ``status`` with one OperationOutcome issue."""

    def __init__(self, status: int, diagnostics: str, code: str | None = None, expression: str | None = None):
        super().__init__(diagnostics)
        self.status = status
        self.diagnostics = diagnostics
        self.code = code or issue_code(status)
        self.expression = expression

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.code, self.diagnostics, expression=self.expression)


def issue_code(status: int) -> str:
    return ISSUE_CODES.get(status, "exception" if status >= 500 else "processing")


def operation_outcome(
    code: str, diagnostics: str, severity: str = "error", expression: str | None = None
) -> dict[str, Any]:
    """An OperationOutcome with one issue (R4: severity and code are required; the rest helps the reader)."""
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = [expression]
    return {"resourceType": "OperationOutcome", "issue": [issue]}
