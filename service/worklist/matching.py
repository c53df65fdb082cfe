"""Pure C-FIND key matching for the Modality Worklist Information Model (PS3.4 §K.6.1.2, rules of §C.2.2.2).

``match(query, item)`` decides whether one worklist item (a Dataset built from a scheduled procedure step)
matches the Identifier of a C-FIND request; ``response(query, item)`` builds the Identifier of the pending
response. Both are pure: no I/O, no network, no database.

Simplifications (deliberate, documented here once):

* Person Name (§C.2.2.2.1 allows case-insensitive literal matching for PN): values are compared case-folded,
  per component group (``Alphabetic=Ideographic=Phonetic``) with surrounding spaces of each component and
  trailing empty components/groups dropped; a query with a single group is compared with the item's
  alphabetic group only. Accents and other character variants are not folded.
* Other text VRs match case-sensitively; leading and trailing spaces are ignored except for LT, ST, UT, UC,
  UR, where only trailing spaces are (PS3.5 §6.2 padding rules).
* Wildcards (§C.2.2.2.4) are honoured only for AE, CS, LO, LT, PN, SH, ST, UC, UR, UT; elsewhere ``*`` and
  ``?`` are literal, except that a lone ``*`` is treated as universal matching for every VR (lenient).
* Range matching (§C.2.2.2.5) compares bounds padded to full precision: a lower bound pads with the minimum
  (``2024`` -> 2024-01-01 00:00), an upper bound with the maximum (``-1030`` includes 10:30:59.999999).
  A single DA value is matched exactly; a single TM or DT value matches every item value within its
  precision (``10`` matches 10:00-10:59:59.999999). DT UTC offsets (``&ZZXX``) are ignored.
* Combined date-time matching (§C.2.2.2.5.1) is always applied when the query gives non-universal values to
  both members of a DA/TM pair (e.g. Scheduled Procedure Step Start Date and Time); the Extended Negotiation
  flag is not consulted. The item must then have both values.
* A query value with several values is matched as a list: List of UID Matching for UI (§C.2.2.2.2), and for
  other VRs, leniently, "any query value matches any item value". A multi-valued item attribute matches
  when any of its values does.
* Sequence matching (§C.2.2.2.6): the query Sequence must hold at most one Item (``ValueError`` otherwise);
  a zero-length Sequence, or an Item with only universal keys, is universal matching.
* An attribute absent from (or zero-length in) the item matches only universal matching. Keys the item
  model does not know are not ignored: they must be universal or present in the item.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag

WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})  # §C.2.2.2.4
_LEADING_SPACE_SIGNIFICANT = frozenset({"LT", "ST", "UT", "UC", "UR"})  # PS3.5 §6.2
_TEXT_VRS = frozenset({"LT", "ST", "UT", "UR"})  # never multi-valued (PS3.5 §6.4)

SPECIFIC_CHARACTER_SET = Tag(0x0008, 0x0005)
QUERY_RETRIEVE_LEVEL = Tag(0x0008, 0x0052)  # not used by MWL (§K.6.1.1), never matched if sent

# DA/TM pairs matched as one date-time range when both are non-universal (§C.2.2.2.5.1).
DATE_TIME_PAIRS: tuple[tuple[BaseTag, BaseTag], ...] = (
    (Tag("ScheduledProcedureStepStartDate"), Tag("ScheduledProcedureStepStartTime")),
    (Tag("ScheduledProcedureStepEndDate"), Tag("ScheduledProcedureStepEndTime")),
    (Tag("StudyDate"), Tag("StudyTime")),
    (Tag("PatientBirthDate"), Tag("PatientBirthTime")),
)

# Full-precision templates: the digits a partial value is padded with (lower, upper bound).
_DA_PAD = ("00000101", "99991231")
_TM_PAD = ("000000.000000", "235959.999999")
_DT_PAD = ("00000101000000.000000", "99991231235959.999999")


def match(query: Dataset, item: Dataset) -> bool:
    """True when ``item`` matches every matching key of the C-FIND Identifier ``query`` (PS3.4 §C.2.2.2)."""
    paired: set[BaseTag] = set()
    for date_tag, time_tag in DATE_TIME_PAIRS:
        if date_tag in query and time_tag in query:
            date_q, time_q = query[date_tag], query[time_tag]
            if not is_universal(date_q) and not is_universal(time_q):
                paired.update((date_tag, time_tag))
                if not _match_combined(date_q, time_q, item.get(date_tag), item.get(time_tag)):
                    return False
    for elem in query:
        if elem.tag in paired or elem.tag in (SPECIFIC_CHARACTER_SET, QUERY_RETRIEVE_LEVEL) or elem.tag.element == 0:
            continue
        if not match_element(elem, item.get(elem.tag)):
            return False
    return True


def response(query: Dataset, item: Dataset) -> Dataset:
    """The Identifier of a pending C-FIND response for a matching ``item`` (PS3.4 §C.2.2.1.2, §C.4.1.1.3.2).

    Exactly the query's keys, nested Sequence keys included, with the item's values; zero-length where the
    item has none. Sequences return the item's Items that match the query Item (all of them when the query
    Sequence is universal), each reduced to the query Item's keys. Specific Character Set (0008,0005) comes
    from the item, since the returned values are the item's.
    """
    out = Dataset()
    if SPECIFIC_CHARACTER_SET in item:
        out.add(_copy(item[SPECIFIC_CHARACTER_SET]))
    for elem in query:
        if elem.tag == SPECIFIC_CHARACTER_SET:
            if SPECIFIC_CHARACTER_SET not in out:
                out.add(DataElement(elem.tag, elem.VR, None))
        elif elem.tag == QUERY_RETRIEVE_LEVEL:
            out.add(_copy(elem))
        elif elem.tag.element == 0:
            continue
        elif elem.VR == "SQ":
            out.add(DataElement(elem.tag, "SQ", _sequence_response(elem, item.get(elem.tag))))
        else:
            found = item.get(elem.tag)
            out.add(_copy(found) if found is not None else DataElement(elem.tag, elem.VR, None))
    return out


def _sequence_response(query: DataElement, found: DataElement | None) -> Sequence:
    if found is None or found.VR != "SQ" or not found.value:
        return Sequence()
    query_items = list(query.value)
    if not query_items:  # zero-length query Sequence: return the items whole (nothing to reduce them to)
        return Sequence([_copy_dataset(i) for i in found.value])
    query_item = query_items[0]
    return Sequence([response(query_item, i) for i in found.value if match(query_item, i)])


def _copy(elem: DataElement) -> DataElement:
    if elem.VR == "SQ":
        return DataElement(elem.tag, "SQ", Sequence([_copy_dataset(i) for i in elem.value]))
    value = elem.value
    if isinstance(value, MultiValue):
        value = list(value)
    return DataElement(elem.tag, elem.VR, value)


def _copy_dataset(ds: Dataset) -> Dataset:
    out = Dataset()
    for elem in ds:
        out.add(_copy(elem))
    return out


def is_universal(elem: DataElement) -> bool:
    """Universal Matching (§C.2.2.2.3): zero length, a lone ``*``, or a Sequence whose Item has only such keys."""
    if elem.VR == "SQ":
        items = list(elem.value or [])
        if len(items) > 1:
            raise ValueError(f"{elem.keyword or elem.tag}: a query Sequence holds a single Item (PS3.4 §C.2.2.2.6)")
        return not items or all(is_universal(e) for e in items[0])
    values = _query_values(elem)
    return not values or (len(values) == 1 and values[0] == "*")


def match_element(query: DataElement, found: DataElement | None) -> bool:
    """Match one key of the request against the item's element (``None`` when absent) (§C.2.2.2)."""
    if is_universal(query):
        return True
    if found is None or found.is_empty:
        return False
    vr = found.VR if query.VR in ("UN", "") else query.VR
    if vr == "SQ":
        (query_item,) = query.value
        return found.VR == "SQ" and any(match(query_item, i) for i in found.value)
    item_values = [_normalise(v, vr) for v in _values(found)]
    item_values = [v for v in item_values if v]
    if not item_values:
        return False
    for raw in _query_values(query):
        if vr in ("DA", "TM", "DT"):
            if any(_match_temporal(raw, v, vr) for v in item_values):
                return True
        elif any(_match_text(raw, v, vr) for v in item_values):
            return True
    return False


def _values(elem: DataElement) -> list[object]:
    value = elem.value
    if value is None:
        return []
    if isinstance(value, MultiValue | list | tuple):
        return list(value)
    if isinstance(value, str) and "\\" in value and elem.VR not in _TEXT_VRS:
        return value.split("\\")
    return [value]


def _query_values(elem: DataElement) -> list[str]:
    """The query's values as stripped strings, empty ones dropped (an all-empty key is universal)."""
    values = [_normalise(v, elem.VR) for v in _values(elem)]
    return [v for v in values if v]


def _normalise(value: object, vr: str) -> str:
    text = str(value).rstrip("\x00 ")
    if vr not in _LEADING_SPACE_SIGNIFICANT:
        text = text.lstrip(" ")
    if vr == "PN":
        text = _normalise_pn(text)
    return text


# --- single value and wildcard matching (§C.2.2.2.1, §C.2.2.2.4) ---------------------------------------------


def _normalise_pn(text: str) -> str:
    """Canonical PN (PS3.5 §6.2.1): components trimmed, trailing empty components and groups removed."""
    groups = []
    for group in text.split("="):
        components = [c.strip() for c in group.split("^")]
        while components and not components[-1]:
            components.pop()
        groups.append("^".join(components))
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups)


def _match_text(query: str, value: str, vr: str) -> bool:
    if vr == "PN":
        if "=" not in query:
            value = value.split("=", 1)[0]
        query, value = query.casefold(), value.casefold()
    if vr in WILDCARD_VRS and ("*" in query or "?" in query):
        return _wildcard(query).fullmatch(value) is not None
    return query == value


def _wildcard(pattern: str) -> re.Pattern[str]:
    """``*`` any sequence of characters (including none), ``?`` any single character (§C.2.2.2.4)."""
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.DOTALL)


# --- range matching (§C.2.2.2.5) -----------------------------------------------------------------------------


def _pad(value: str, template: str) -> str:
    """``value`` completed to the template's full precision, keeping the fraction aligned on its dot."""
    whole, _, fraction = value.partition(".")
    t_whole, _, t_fraction = template.partition(".")
    padded = whole + t_whole[len(whole) :]
    if t_fraction:
        padded += "." + fraction + t_fraction[len(fraction) :]
    return padded


def _canonical(value: str, vr: str) -> str:
    """DA/TM/DT digits only: ACR-NEMA separators removed, DT offset dropped."""
    if vr == "DA":
        return value.replace(".", "").replace("-", "")
    if vr == "TM":
        return value.replace(":", "")
    return re.split(r"[+-]", value, maxsplit=1)[0] if len(value) > 4 else value


def _template(vr: str) -> tuple[str, str]:
    return {"DA": _DA_PAD, "TM": _TM_PAD}.get(vr, _DT_PAD)


def _bounds(query: str, vr: str) -> tuple[str | None, str | None]:
    """Inclusive (lower, upper) bounds of a query value, ``None`` for an open side."""
    low_pad, high_pad = _template(vr)
    if vr == "DT":
        low, sep, high = _split_dt_range(query)
    else:
        low, sep, high = query.partition("-")
    if not sep:  # single value: the whole precision it names (§C.2.2.2.1 for DA is the exact day)
        value = _canonical(query, vr)
        return _pad(value, low_pad), _pad(value, high_pad)
    return (
        _pad(_canonical(low, vr), low_pad) if low.strip() else None,
        _pad(_canonical(high, vr), high_pad) if high.strip() else None,
    )


def _split_dt_range(query: str) -> tuple[str, str, str]:
    """Split a DT range on its ``-``, not on the ``-`` of a UTC offset (``&ZZXX`` follows at least YYYY)."""
    for i, char in enumerate(query):
        if char == "-" and (i == 0 or i >= 4) and not _is_offset(query, i):
            return query[:i], "-", query[i + 1 :]
    return query, "", ""


def _is_offset(query: str, i: int) -> bool:
    tail = query[i + 1 :]
    return len(tail) >= 4 and tail[:4].isdigit() and (len(tail) == 4 or tail[4] == "-") and i > 4


def _in_range(value: str, low: str | None, high: str | None) -> bool:
    return (low is None or value >= low) and (high is None or value <= high)


def _match_temporal(query: str, value: str, vr: str) -> bool:
    low, high = _bounds(query, vr)
    return _in_range(_pad(_canonical(value, vr), _template(vr)[0]), low, high)


def _match_combined(
    date_q: DataElement, time_q: DataElement, date_found: DataElement | None, time_found: DataElement | None
) -> bool:
    """Combined Datetime Matching (§C.2.2.2.5.1): date and time ranges read as one DT range."""
    if date_found is None or time_found is None or date_found.is_empty or time_found.is_empty:
        return False
    dates, times = _query_values(date_q), _query_values(time_q)
    if len(dates) != 1 or len(times) != 1:  # no list semantics for the pair: fall back to separate matching
        return match_element(date_q, date_found) and match_element(time_q, time_found)
    date_low, date_high = _bounds(dates[0], "DA")
    time_low, time_high = _bounds(times[0], "TM")
    low = None if date_low is None else date_low + (time_low or _TM_PAD[0])
    high = None if date_high is None else date_high + (time_high or _TM_PAD[1])
    return any(
        _in_range(_pad(_canonical(d, "DA"), _DA_PAD[0]) + _pad(_canonical(t, "TM"), _TM_PAD[0]), low, high)
        for d in _strings(date_found, "DA")
        for t in _strings(time_found, "TM")
    )


def _strings(elem: DataElement, vr: str) -> Iterable[str]:
    return (s for s in (_normalise(v, vr) for v in _values(elem)) if s)
