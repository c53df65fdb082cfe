"""The CapabilityStatement of ``/fhir/metadata``, built from the same tables the search runs on (so it cannot
claim more than the server does). Pure: the caller gives the time and the base URL."""

from __future__ import annotations

from typing import Any

from service.fhir.search import CHAINS, MAX_COUNT, SERVED_TYPES, SearchParam, includes_of, params_of

# Exactly what service/fhir/api.py answers for every served type.
INTERACTIONS = ("read", "vread", "history-instance", "search-type")


def capability_statement(base_url: str, date: str, software_version: str) -> dict[str, Any]:
    """R4 CapabilityStatement (kind ``instance``) of this server's read-only FHIR API."""
    resources = []
    for rtype in SERVED_TYPES:
        entry: dict[str, Any] = {
            "type": rtype,
            "interaction": [{"code": code} for code in INTERACTIONS],
            "versioning": "versioned",
            "readHistory": True,
            "updateCreate": False,
        }
        includes = sorted(includes_of(rtype))
        if includes:
            entry["searchInclude"] = includes
        entry["searchParam"] = [
            {k: v for k, v in (("name", p.name), ("definition", p.definition), ("type", p.type),
                               ("documentation", _documentation(p))) if v}
            for p in params_of(rtype).values()
        ]  # fmt: skip
        resources.append(entry)
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date,
        "publisher": "usgi-docs",
        "kind": "instance",
        "software": {"name": "usgi-docs", "version": software_version},
        "implementation": {
            "description": "Ultrasound-guided injection documentation: read-only FHIR R4 API",
            "url": f"{base_url.rstrip('/')}/fhir",
        },
        "fhirVersion": "4.0.1",
        "format": ["json", "application/fhir+json"],
        "rest": [
            {
                "mode": "server",
                "documentation": (
                    f"Read-only. Search: _count (default 50, at most {MAX_COUNT}) and _offset page the results; "
                    "unknown parameters are ignored unless 'Prefer: handling=strict' is sent. Every access is "
                    "recorded in the audit trail."
                ),
                "security": {
                    "cors": False,
                    "service": [{"text": "Bearer token"}],
                    "description": (
                        "Send 'Authorization: Bearer <token>' (a token issued by `usgi token create`); "
                        "roles ehr and auditor may read resources. No SMART on FHIR / OAuth."
                    ),
                },
                "resource": resources,
            }
        ],
    }


def _documentation(param: SearchParam) -> str:
    if param.type == "reference" and param.target:
        chains = ", ".join(f"{param.name}.{c}" for c in CHAINS)
        return f"{param.documentation} (chained: {chains}=[system]|[value] of the {param.target})"
    return param.documentation
