"""The EHR's transaction Bundle (pure): what the outbox stores and how it is split into deliverable stages.

**Conditional by business identifier, not by our ids.** An EHR assigns its own ids, and it may already hold the
patient, the clinicians and the organisation. So every entry is conditional on an identifier:

- the patient, practitioners and organisation (*the EHR's*): ``POST`` with ``ifNoneExist: identifier=s|v``. An
  existing one is matched and referenced, never overwritten;
- everything we author (procedure, medication administrations, imaging studies, report, consent, claim, coverage,
  representative): ``PUT Type?identifier=s|v`` on our own identifier, so the first delivery creates and the next
  ones update that same resource.

Entries carry ``urn:uuid`` fullUrls (fixed per resource) and the resources reference each other by them, so the
server links them to whatever ids it matched or assigned. A repeated delivery finds every identifier and creates
nothing. Our ids, versions and CodeSystems stay home (the CodeSystems are published at their canonical URLs).

**Stages.** Some servers cap a transaction: Medplum's router refuses a conditional transaction of more than 8
entries. :func:`plan` splits the Bundle into stages of at most ``max_entries`` that keep each reference cycle
(procedure ⇄ report ⇄ imaging study) together and put referenced resources first; :func:`stage_bundle` turns a
stage into a transaction whose references to earlier stages point at the ids the server answered
(:func:`locations`). Each stage is idempotent, so a delivery that fails half way is simply repeated.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

# Resources the EHR owns: matched by their identifier and created only when missing.
EHR_OWNED = frozenset({"Patient", "Practitioner", "Organization"})
# Our resources: the kind of our identifier (``{identifier_system}/{kind}``) that is each one's key.
OUR_KEYS = {
    "Procedure": "procedure",
    "MedicationAdministration": "medication-administration",
    "ImagingStudy": "imaging-study",
    "DocumentReference": "report-series",
    "Consent": "consent",
    "Claim": "claim",
    "Coverage": "coverage",
    "RelatedPerson": "related-person",
}
NOT_PUSHED = frozenset({"CodeSystem"})
_NAMESPACE = uuid.UUID("b5a1f2de-3c47-4f0e-9d2a-7e6c1b8f4a90")  # fixed: fullUrls must not change between releases
_LOCATION = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?/?$")


class PushError(ValueError):
    """A resource that cannot be pushed conditionally (no identifier to match it by), or an unusable answer."""


def full_url(resource_type: str, resource_id: str) -> str:
    """The entry's fixed ``urn:uuid`` (lowercase: servers rewrite only that form)."""
    return f"urn:uuid:{uuid.uuid5(_NAMESPACE, f'{resource_type}/{resource_id}')}"


def match_key(resource: Mapping[str, Any], identifier_system: str) -> tuple[str, str]:
    """(system, value) of the identifier the entry is conditional on."""
    rtype = resource["resourceType"]
    identifiers = [i for i in resource.get("identifier") or () if i.get("system") and i.get("value")]
    if rtype in OUR_KEYS:
        wanted = f"{identifier_system.rstrip('/')}/{OUR_KEYS[rtype]}"
        identifiers = [i for i in identifiers if i["system"] == wanted]
    if not identifiers:
        raise PushError(f"{rtype}/{resource.get('id')} has no identifier to match it by in the EHR")
    return identifiers[0]["system"], identifiers[0]["value"]


def _query(system: str, value: str) -> str:
    # ``|`` separates system and value; a ``|``, ``,`` or ``\\`` inside a value is escaped per FHIR search rules.
    escaped = value.replace("\\", "\\\\").replace("|", "\\|").replace(",", "\\,").replace("$", "\\$")
    return "identifier=" + quote(system, safe=":/") + "|" + quote(escaped, safe=":/\\")


def rewrite_references(node: Any, table: Mapping[str, str]) -> Any:
    """``node`` with every ``reference`` found in ``table`` replaced (contained ``#x`` and others left alone)."""
    if isinstance(node, dict):
        out = {k: rewrite_references(v, table) for k, v in node.items()}
        ref = node.get("reference")
        if isinstance(ref, str) and ref in table:
            out["reference"] = table[ref]
        return out
    if isinstance(node, list):
        return [rewrite_references(v, table) for v in node]
    return node


def ehr_transaction(resources: Iterable[Mapping[str, Any]], identifier_system: str) -> dict[str, Any]:
    """The transaction Bundle that puts ``resources`` (one procedure's, as mapped) into the EHR."""
    pushed = [r for r in resources if r["resourceType"] not in NOT_PUSHED]
    urls = {f"{r['resourceType']}/{r['id']}": full_url(r["resourceType"], r["id"]) for r in pushed}
    entries = []
    for r in pushed:
        rtype = r["resourceType"]
        system, value = match_key(r, identifier_system)
        body = {k: v for k, v in rewrite_references(dict(r), urls).items() if k not in ("id", "meta")}
        profiles = (r.get("meta") or {}).get("profile")
        if profiles:
            body = {"resourceType": rtype, "meta": {"profile": profiles}, **body}
        if rtype in EHR_OWNED:
            request = {"method": "POST", "url": rtype, "ifNoneExist": _query(system, value)}
        else:
            request = {"method": "PUT", "url": f"{rtype}?{_query(system, value)}"}
        entries.append({"fullUrl": urls[f"{rtype}/{r['id']}"], "resource": body, "request": request})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def references(node: Any) -> Iterable[str]:
    """Every ``reference`` string inside ``node``, depth first."""
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str):
            yield ref
        for v in node.values():
            yield from references(v)
    elif isinstance(node, list):
        for v in node:
            yield from references(v)


def _components(edges: Sequence[set[int]]) -> list[list[int]]:
    """Strongly connected components (Tarjan), each in entry order, referenced components before referencing ones."""
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    stack: list[int] = []
    on_stack: set[int] = set()
    out: list[list[int]] = []

    def visit(v: int) -> None:  # recursion depth is bounded by a procedure's few resources
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            out.append(sorted(component))

    for v in range(len(edges)):
        if v not in index:
            visit(v)
    return out


def plan(bundle: Mapping[str, Any], max_entries: int) -> list[list[int]]:
    """The stages (lists of entry indexes) that deliver ``bundle``: one when it fits ``max_entries`` (0: no cap).

    A reference cycle larger than the cap stays one stage (the server may refuse it; nothing else would work).
    """
    entries = list(bundle.get("entry") or ())
    if max_entries <= 0 or len(entries) <= max_entries:
        return [list(range(len(entries)))] if entries else []
    position = {e["fullUrl"]: n for n, e in enumerate(entries)}
    edges = [{position[r] for r in references(e["resource"]) if r in position} - {n} for n, e in enumerate(entries)]
    stages: list[list[int]] = []
    for component in _components(edges):
        if stages and len(stages[-1]) + len(component) <= max_entries:
            stages[-1].extend(component)
        else:
            stages.append(list(component))
    return [sorted(s) for s in stages]


def stage_bundle(bundle: Mapping[str, Any], stage: Sequence[int], resolved: Mapping[str, str]) -> dict[str, Any]:
    """The transaction for one stage: references to entries of earlier stages become ``resolved[fullUrl]``."""
    entries = list(bundle.get("entry") or ())
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{**entries[n], "resource": rewrite_references(entries[n]["resource"], resolved)} for n in stage],
    }


def locations(sent: Mapping[str, Any], answer: Mapping[str, Any]) -> dict[str, str]:
    """``fullUrl`` → ``Type/id`` of what the server matched or created, from a transaction-response.

    Entry n of the answer is entry n of what was sent (R4 Bundle rules); the id comes from ``response.location``
    or, failing that, the returned resource.
    """
    out = {}
    for entry, result in zip(sent.get("entry") or (), answer.get("entry") or (), strict=False):
        location = str((result.get("response") or {}).get("location") or "")
        match = _LOCATION.search(location.split("?")[0])
        resource = result.get("resource") or {}
        if match:
            out[entry["fullUrl"]] = f"{match.group(1)}/{match.group(2)}"
        elif resource.get("resourceType") and resource.get("id"):
            out[entry["fullUrl"]] = f"{resource['resourceType']}/{resource['id']}"
        else:
            raise PushError(f"the answer gives no location for {entry['request']['url']}")
    return out
