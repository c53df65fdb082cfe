"""The read side of the FHIR API over ``fhir_resources``: read, vread, history and search (no Flask here).

Search follows R4 search.html for the parameters declared in :data:`SEARCH_PARAMS`: token (``[system]|[code]``,
also on identifiers: ``identifier=[system]|[value]``), reference (``Type/id``, a bare id, or our absolute URL, or
chained to the target's identifier: ``patient.identifier=[system]|[value]``, how an EHR asks for everything of one
MRN, as each procedure has its own Patient here) and date (prefixes eq/ne/gt/lt/ge/le/sa/eb, each value an
implicit range by its precision). Commas are OR, repeated parameters AND. Matching reads the JSON of the current
versions: SQL pre-selects by type (and ``_id``), the criteria run in Python. That is fine for one clinic's
volume (thousands of resources per type); past that the searched values would go to an index table.
"""

from __future__ import annotations

import re
from calendar import monthrange
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.fhir.outcomes import FhirError
from service.models import FhirResource

# Every type the service stores (service/fhir/mapping.py). RelatedPerson is served too: a Consent can refer to it.
SERVED_TYPES: tuple[str, ...] = (
    "Procedure",
    "ImagingStudy",
    "DocumentReference",
    "Consent",
    "Claim",
    "Patient",
    "RelatedPerson",
    "Practitioner",
    "Organization",
    "Coverage",
    "MedicationAdministration",
    "CodeSystem",
)
DEFAULT_COUNT = 50
MAX_COUNT = 500
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")

ParamType = Literal["token", "reference", "date"]


@dataclass(frozen=True)
class SearchParam:
    """One search parameter: ``paths`` are dotted JSON paths (lists are walked) to the values it compares."""

    name: str
    type: ParamType
    paths: tuple[str, ...]
    documentation: str
    target: str | None = None  # reference: the one type it points at (a bare id means this type)
    system: str | None = None  # token on a primitive ``code``: the CodeSystem of its required binding
    definition: str | None = None  # the R4 SearchParameter canonical (None: defined by this service)


def _r4(name: str) -> str:
    return f"http://hl7.org/fhir/SearchParameter/{name}"


COMMON_PARAMS: tuple[SearchParam, ...] = (
    SearchParam("_id", "token", ("id",), "Logical id of the resource", definition=_r4("Resource-id")),
    SearchParam(
        "_lastUpdated", "date", ("meta.lastUpdated",), "When the resource version was stored",
        definition=_r4("Resource-lastUpdated"),
    ),
)  # fmt: skip

SEARCH_PARAMS: dict[str, tuple[SearchParam, ...]] = {
    "Procedure": (
        SearchParam(
            "patient", "reference", ("subject.reference",), "The patient the procedure was performed on",
            target="Patient", definition=_r4("clinical-patient"),
        ),
        SearchParam(
            "date", "date", ("performedPeriod", "performedDateTime"), "When the procedure was performed",
            definition=_r4("clinical-date"),
        ),
        SearchParam(
            "code", "token", ("code.coding",), "Procedure code (CPT, SNOMED CT)", definition=_r4("clinical-code")
        ),
        SearchParam(
            "status", "token", ("status",), "preparation | in-progress | not-done | on-hold | stopped | completed",
            system="http://hl7.org/fhir/event-status", definition=_r4("Procedure-status"),
        ),
    ),
    "Claim": (
        SearchParam(
            "patient", "reference", ("patient.reference",), "The patient the claim is for", target="Patient",
            definition=_r4("Claim-patient"),
        ),
        SearchParam("created", "date", ("created",), "When the claim was created", definition=_r4("Claim-created")),
        SearchParam(
            "use", "token", ("use",), "claim | preauthorization | predetermination",
            system="http://hl7.org/fhir/claim-use", definition=_r4("Claim-use"),
        ),
        # Not an R4 base parameter: lets an EHR find the claim of a procedure and _include it (Claim:procedure).
        SearchParam(
            "procedure", "reference", ("procedure.procedureReference.reference",),
            "The procedure the claim is for (Claim.procedure.procedureReference; defined by this service)",
            target="Procedure",
        ),
    ),
    "Consent": (
        SearchParam(
            "patient", "reference", ("patient.reference",), "Who the consent applies to", target="Patient",
            definition=_r4("clinical-patient"),
        ),
        SearchParam(
            "status", "token", ("status",), "draft | proposed | active | rejected | inactive | entered-in-error",
            system="http://hl7.org/fhir/consent-state-codes", definition=_r4("Consent-status"),
        ),
    ),
    "ImagingStudy": (
        SearchParam(
            "patient", "reference", ("subject.reference",), "Who the study is about", target="Patient",
            definition=_r4("clinical-patient"),
        ),
        SearchParam(
            "started", "date", ("started",), "When the study was started", definition=_r4("ImagingStudy-started")
        ),
    ),
    "DocumentReference": (
        SearchParam(
            "patient", "reference", ("subject.reference",), "Who the document is about", target="Patient",
            definition=_r4("clinical-patient"),
        ),
        SearchParam("type", "token", ("type.coding",), "Kind of document (LOINC)", definition=_r4("clinical-type")),
    ),
}  # fmt: skip

# ``identifier`` on every type, with the R4 SearchParameter that defines it there.
_IDENTIFIER_DEFINITIONS = {
    rtype: _r4("clinical-identifier")
    for rtype in ("Procedure", "ImagingStudy", "DocumentReference", "Consent", "MedicationAdministration")
} | {rtype: _r4(f"{rtype}-identifier") for rtype in (
    "Claim", "Patient", "RelatedPerson", "Practitioner", "Organization", "Coverage", "CodeSystem"
)}  # fmt: skip
for _rtype, _definition in _IDENTIFIER_DEFINITIONS.items():
    SEARCH_PARAMS[_rtype] = (
        SearchParam("identifier", "token", ("identifier",), "A business identifier", definition=_definition),
        *SEARCH_PARAMS.get(_rtype, ()),
    )
CHAINS = ("identifier",)  # what a reference parameter may be chained to (``patient.identifier``)

DATE_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb")


def params_of(resource_type: str) -> dict[str, SearchParam]:
    return {p.name: p for p in (*COMMON_PARAMS, *SEARCH_PARAMS.get(resource_type, ()))}


def includes_of(resource_type: str) -> dict[str, SearchParam]:
    """``Type:param`` -> the reference parameter it follows (every reference parameter can be included)."""
    return {f"{resource_type}:{p.name}": p for p in params_of(resource_type).values() if p.type == "reference"}


def check_type(resource_type: str) -> None:
    if resource_type not in SERVED_TYPES:
        raise FhirError(
            404,
            f"resource type {resource_type!r} is not served by this server (served: {', '.join(SERVED_TYPES)})",
            code="not-supported",
        )


# --- dates ---------------------------------------------------------------------------------------------------------

_DATE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?P<f>\.\d{1,9})?)?(?P<z>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)
_MIN = datetime.min.replace(tzinfo=UTC)
_MAX = datetime.max.replace(tzinfo=UTC)


def date_range(text: str, local: tzinfo) -> tuple[datetime, datetime] | None:
    """The half-open range [start, end) a FHIR date/dateTime/instant stands for, by its precision.

    A value without a zone (a date, or a time without offset) is read in ``local`` (R4 search.html: the server's
    time zone). None when ``text`` is not a FHIR date.
    """
    m = _DATE.match(text.strip())
    if m is None:
        return None
    g = m.groupdict()
    zone: tzinfo = local
    if g["z"] == "Z":
        zone = UTC
    elif g["z"]:
        sign = 1 if g["z"][0] == "+" else -1
        zone = timezone(sign * timedelta(hours=int(g["z"][1:3]), minutes=int(g["z"][4:6])))
    try:
        year, month, day = int(g["y"]), int(g["m"] or 1), int(g["d"] or 1)
        frac = g["f"] or ""
        micro = int((frac[1:] + "000000")[:6]) if frac else 0
        start = datetime(year, month, day, int(g["H"] or 0), int(g["M"] or 0), int(g["S"] or 0), micro, tzinfo=zone)
    except ValueError:
        return None
    if g["f"]:
        step = timedelta(microseconds=max(1, 10 ** (6 - min(len(frac) - 1, 6))))
    elif g["S"]:
        step = timedelta(seconds=1)
    elif g["M"]:
        step = timedelta(minutes=1)
    elif g["d"]:
        step = timedelta(days=1)
    elif g["m"]:
        step = timedelta(days=monthrange(year, month)[1])
    else:
        step = start.replace(year=year + 1) - start if year < 9999 else _MAX - start
    return start, start + step


def _target_range(node: Any, local: tzinfo) -> tuple[datetime, datetime] | None:
    """The range of a resource's date element: a date/dateTime/instant string or a Period (open ends unbounded)."""
    if isinstance(node, str):
        return date_range(node, local)
    if isinstance(node, Mapping) and ("start" in node or "end" in node):
        start = date_range(str(node["start"]), local) if node.get("start") else None
        end = date_range(str(node["end"]), local) if node.get("end") else None
        return (start[0] if start else _MIN), (end[1] if end else _MAX)
    return None


@dataclass(frozen=True)
class DateValue:
    prefix: str
    start: datetime
    end: datetime

    def matches(self, lo: datetime, hi: datetime) -> bool:
        # R4 search.html §3.1.1.4.2: the search value's range against the target's range.
        contains = self.start <= lo and hi <= self.end
        return {
            "eq": contains,
            "ne": not contains,
            "gt": hi > self.end,
            "lt": lo < self.start,
            "ge": hi > self.end or contains,
            "le": lo < self.start or contains,
            "sa": lo >= self.end,
            "eb": hi <= self.start,
        }[self.prefix]


def parse_date(name: str, raw: str, local: tzinfo) -> DateValue:
    prefix, text = ("eq", raw)
    if raw[:2].isalpha():
        prefix, text = raw[:2], raw[2:]
        if prefix == "ap":
            raise FhirError(400, f"{name}: the prefix 'ap' is not supported", "not-supported", name)
        if prefix not in DATE_PREFIXES:
            raise FhirError(400, f"{name}: unknown prefix {prefix!r} in {raw!r}", expression=name)
    # A '+' of an offset arrives as a space when the client did not percent-encode it.
    parsed = date_range(text.replace(" ", "+"), local)
    if parsed is None:
        raise FhirError(400, f"{name}: {raw!r} is not a valid FHIR date or dateTime", expression=name)
    return DateValue(prefix, *parsed)


# --- tokens and references -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenValue:
    system: str | None  # None: any system; "": no system
    code: str | None  # None: any code of the system

    def matches(self, node: Any, implicit_system: str | None) -> bool:
        if isinstance(node, Mapping) and "coding" in node:
            return any(self.matches(c, None) for c in node["coding"] or ())
        if isinstance(node, Mapping):  # a Coding (code) or an Identifier (value)
            system, code = node.get("system"), node.get("code") if "code" in node else node.get("value")
        elif isinstance(node, str):
            system, code = implicit_system, node
        else:
            return False
        if self.code is not None and code != self.code:
            return False
        if self.system is None:
            return True
        return (system or "") == self.system


def parse_token(raw: str) -> TokenValue:
    parts = re.split(r"(?<!\\)\|", raw, maxsplit=1)  # an escaped \| belongs to the value
    if len(parts) == 1:
        return TokenValue(None, _unescape(raw))
    return TokenValue(_unescape(parts[0]), _unescape(parts[1]) or None)


@dataclass(frozen=True)
class ReferenceValue:
    type: str
    id: str

    def matches(self, node: Any, base: str) -> bool:
        return isinstance(node, str) and split_reference(node, base) == (self.type, self.id)


def split_reference(reference: str, base: str) -> tuple[str, str] | None:
    """(Type, id) of a literal reference, relative or under our own ``{base}/fhir/``; None for anything else."""
    ours = f"{base.rstrip('/')}/fhir/"
    if reference.startswith(ours):
        reference = reference[len(ours) :]
    parts = reference.split("/")
    if len(parts) in (2, 4) and _FHIR_ID.match(parts[1]) and (len(parts) == 2 or parts[2] == "_history"):
        return parts[0], parts[1]
    return None


def parse_reference(param: SearchParam, raw: str, base: str) -> ReferenceValue:
    if "/" not in raw:
        return ReferenceValue(param.target or "", raw)
    split = split_reference(raw, base)
    if split is None:
        raise FhirError(400, f"{param.name}: {raw!r} is not a reference this server holds", expression=param.name)
    return ReferenceValue(*split)


def _split_or(raw: str) -> list[str]:
    """Comma-separated alternatives; ``\\,`` is a literal comma."""
    return [v for v in re.split(r"(?<!\\),", raw) if v]


def _unescape(value: str) -> str:
    return re.sub(r"\\([,|$\\])", r"\1", value)


# --- the parsed search ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Criterion:
    param: SearchParam
    values: tuple[DateValue | TokenValue | ReferenceValue, ...]  # OR
    local: tzinfo = UTC  # the zone of the resource's dates that carry none
    chain: str | None = None  # ``patient.identifier``: ``values`` are tokens on the referenced resource

    def matches(self, body: Mapping[str, Any], base: str) -> bool:
        nodes = [n for path in self.param.paths for n in walk(body, path)]
        for value in self.values:
            for node in nodes:
                if isinstance(value, TokenValue) and value.matches(node, self.param.system):
                    return True
                if isinstance(value, ReferenceValue) and value.matches(node, base):
                    return True
                if isinstance(value, DateValue):
                    found = _target_range(node, self.local)
                    if found is not None and value.matches(*found):
                        return True
        return False


@dataclass(frozen=True)
class SearchQuery:
    resource_type: str
    criteria: tuple[Criterion, ...] = ()  # AND
    includes: tuple[SearchParam, ...] = ()
    count: int = DEFAULT_COUNT
    offset: int = 0
    # The parameters the search used, as given: the self link lists exactly these (R4: ignored ones are left out).
    used: tuple[tuple[str, str], ...] = ()
    ignored: tuple[str, ...] = ()


def parse_search(
    resource_type: str, args: Iterable[tuple[str, str]], *, strict: bool, local: tzinfo, base: str
) -> SearchQuery:
    """Parse a query string. Unknown parameters are ignored (listed in ``ignored``), or refused when ``strict``
    (``Prefer: handling=strict``); a bad value of a known parameter is always a 400."""
    check_type(resource_type)
    known = params_of(resource_type)
    includable = includes_of(resource_type)
    criteria: list[Criterion] = []
    includes: list[SearchParam] = []
    used: list[tuple[str, str]] = []
    ignored: list[str] = []
    count, offset = DEFAULT_COUNT, 0

    def unknown(name: str, why: str) -> None:
        if strict:
            raise FhirError(400, f"{why} (Prefer: handling=strict)", "not-supported", name)
        ignored.append(name)

    for key, raw in args:
        name, _, modifier = key.partition(":")
        if name == "_format":
            continue  # content negotiation, not a search criterion (the HTTP layer checks it)
        if name in ("_count", "_offset") and not modifier:
            number = _whole(key, raw)
            count, offset = (min(number, MAX_COUNT), offset) if name == "_count" else (count, number)
            continue
        if name == "_include":
            if modifier:
                raise FhirError(400, f"_include:{modifier} is not supported", "not-supported", key)
            # Source:param[:TargetType]
            source_param, _, target_type = raw.rpartition(":") if raw.count(":") == 2 else (raw, "", "")
            target = includable.get(source_param)
            if target is None or (target_type and target_type != target.target):
                unknown(key, f"_include={raw} is not supported on {resource_type} (supported: {sorted(includable)})")
                continue
            includes.append(target)
            used.append((key, raw))
            continue
        name, _, chain = name.partition(".")
        param = known.get(name)
        if param is None:
            unknown(key, f"unknown search parameter {key!r} for {resource_type}")
            continue
        if chain:
            if param.type != "reference" or not param.target or chain not in CHAINS or modifier:
                raise FhirError(400, f"{key}: chaining is supported as {name}.identifier only", "not-supported", key)
            if raw:
                tokens = tuple(parse_token(v) for v in _split_or(raw))
                criteria.append(Criterion(param, tokens, local, chain))
                used.append((key, raw))
            continue
        if modifier:
            # R4: a server SHALL reject a parameter with a modifier it does not support.
            raise FhirError(400, f"{key}: the modifier {modifier!r} is not supported", "not-supported", key)
        if not raw:
            continue  # an empty value is no criterion
        values = tuple(_parse_value(param, v, local, base) for v in _split_or(raw))
        criteria.append(Criterion(param, values, local))
        used.append((key, raw))
    return SearchQuery(resource_type, tuple(criteria), tuple(includes), count, offset, tuple(used), tuple(ignored))


def _whole(name: str, raw: str) -> int:
    if not raw.isdigit():
        raise FhirError(400, f"{name}: {raw!r} is not a whole number >= 0", expression=name)
    return int(raw)


def _parse_value(param: SearchParam, raw: str, local: tzinfo, base: str) -> DateValue | TokenValue | ReferenceValue:
    if param.type == "date":
        return parse_date(param.name, raw, local)
    if param.type == "reference":
        return parse_reference(param, raw, base)
    return parse_token(raw)


def walk(node: Any, path: str) -> Iterator[Any]:
    """The values at a dotted path, walking into lists (``code.coding`` -> every Coding)."""
    head, _, rest = path.partition(".")
    value = node.get(head) if isinstance(node, Mapping) else None
    items: Sequence[Any] = value if isinstance(value, list) else () if value is None else (value,)
    for item in items:
        if rest:
            yield from walk(item, rest)
        else:
            yield item


# --- queries -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchResult:
    total: int
    matches: list[dict[str, Any]]  # this page
    included: list[dict[str, Any]]


def read(s: Session, resource_type: str, resource_id: str, version: int | None = None) -> FhirResource:
    """The current version (or ``version``) of a resource; FhirError 404 when there is none."""
    check_type(resource_type)
    where = [FhirResource.resource_type == resource_type, FhirResource.resource_id == resource_id]
    where.append(FhirResource.current.is_(True) if version is None else FhirResource.version_id == version)
    row = s.scalars(select(FhirResource).where(*where)).one_or_none()
    if row is None:
        what = f"{resource_type}/{resource_id}" + ("" if version is None else f"/_history/{version}")
        raise FhirError(404, f"{what} is not known")
    return row


def history(s: Session, resource_type: str, resource_id: str) -> list[FhirResource]:
    """Every version of one resource, newest first; FhirError 404 when there is none."""
    check_type(resource_type)
    rows = list(
        s.scalars(
            select(FhirResource)
            .where(FhirResource.resource_type == resource_type, FhirResource.resource_id == resource_id)
            .order_by(FhirResource.version_id.desc())
        )
    )
    if not rows:
        raise FhirError(404, f"{resource_type}/{resource_id} is not known")
    return rows


def _matching(s: Session, resource_type: str, criteria: Sequence[Criterion], base: str) -> list[dict[str, Any]]:
    """The current resources of a type meeting every criterion, sorted by id (a stable order for paging)."""
    criteria = [_resolve_chain(s, c, base) if c.chain else c for c in criteria]
    stmt = select(FhirResource.body).where(FhirResource.resource_type == resource_type, FhirResource.current.is_(True))
    for criterion in criteria:
        if criterion.param.name == "_id":  # the one criterion SQL can apply directly
            ids = [v.code for v in criterion.values if isinstance(v, TokenValue) and v.code]
            stmt = stmt.where(FhirResource.resource_id.in_(ids))
    bodies = s.scalars(stmt.order_by(FhirResource.resource_id)).all()
    return [b for b in bodies if all(c.matches(b, base) for c in criteria)]


def _resolve_chain(s: Session, criterion: Criterion, base: str) -> Criterion:
    """``patient.identifier=s|v`` → ``patient=Patient/a,Patient/b``: the targets a search on the chained
    parameter finds."""
    target = criterion.param.target or ""
    chained = Criterion(params_of(target)[criterion.chain or ""], criterion.values, criterion.local)
    found = _matching(s, target, [chained], base)
    return Criterion(criterion.param, tuple(ReferenceValue(target, b["id"]) for b in found), criterion.local)


def search(s: Session, query: SearchQuery, base: str) -> SearchResult:
    matches = _matching(s, query.resource_type, query.criteria, base)
    page = matches[query.offset : query.offset + query.count]
    return SearchResult(len(matches), page, _included(s, query, page, base))


def _included(s: Session, query: SearchQuery, page: Sequence[Mapping[str, Any]], base: str) -> list[dict[str, Any]]:
    wanted: dict[str, set[str]] = {}
    for body in page:
        for param in query.includes:
            for node in (n for path in param.paths for n in walk(body, path)):
                split = split_reference(node, base) if isinstance(node, str) else None
                if split is not None and split[0] in SERVED_TYPES:
                    wanted.setdefault(split[0], set()).add(split[1])
    seen = {(b["resourceType"], b["id"]) for b in page}
    out: list[dict[str, Any]] = []
    for rtype, ids in sorted(wanted.items()):
        rows = s.scalars(
            select(FhirResource.body)
            .where(
                FhirResource.resource_type == rtype,
                FhirResource.resource_id.in_(sorted(ids)),
                FhirResource.current.is_(True),
            )
            .order_by(FhirResource.resource_id)
        )
        out += [b for b in rows if (rtype, b["id"]) not in seen]
    return out
