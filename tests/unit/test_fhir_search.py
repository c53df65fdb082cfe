"""FHIR search parsing (pure): date ranges by precision, the R4 prefixes against periods, tokens, references."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from service.fhir.outcomes import FhirError
from service.fhir.search import (
    Criterion,
    SearchParam,
    date_range,
    params_of,
    parse_date,
    parse_search,
    parse_token,
    split_reference,
)

CHICAGO = timezone(timedelta(hours=-5))
BASE = "https://usgi.example"


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        ("2025", datetime(2025, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC)),
        ("2024-02", datetime(2024, 2, 1, tzinfo=UTC), datetime(2024, 3, 1, tzinfo=UTC)),
        ("2025-03-14", datetime(2025, 3, 14, tzinfo=UTC), datetime(2025, 3, 15, tzinfo=UTC)),
        ("2025-03-14T09:12", datetime(2025, 3, 14, 9, 12, tzinfo=UTC), datetime(2025, 3, 14, 9, 13, tzinfo=UTC)),
        (
            "2025-03-14T09:12:00-05:00",
            datetime(2025, 3, 14, 9, 12, tzinfo=CHICAGO),
            datetime(2025, 3, 14, 9, 12, 1, tzinfo=CHICAGO),
        ),
        (
            "2025-03-14T14:12:00.25Z",
            datetime(2025, 3, 14, 14, 12, 0, 250000, tzinfo=UTC),
            datetime(2025, 3, 14, 14, 12, 0, 260000, tzinfo=UTC),
        ),
    ],
)
def test_a_date_stands_for_the_range_of_its_precision(text, start, end):
    assert date_range(text, UTC) == (start, end)


@pytest.mark.parametrize("text", ["", "25", "2025-13", "2025-02-30", "2025-03-14T25:00", "2025-03-14 09:00", "x"])
def test_not_a_date(text):
    assert date_range(text, UTC) is None


PERIOD = {"start": "2025-03-14T09:12:00-05:00", "end": "2025-03-14T09:21:00-05:00"}


@pytest.mark.parametrize(
    ("value", "matches"),
    [
        ("2025-03-14", True),
        ("eq2025-03-14", True),
        ("eq2025-03-14T09:12:00-05:00", False),  # the period is longer than that second
        ("ne2025-03-15", True),
        ("gt2025-03-13", True),
        ("gt2025-03-14", False),
        ("ge2025-03-14", True),
        ("ge2025-03-14T09:20:00-05:00", True),  # the period reaches past that second
        ("lt2025-03-14T09:13:00-05:00", True),
        ("lt2025-03-14T09:12:00-05:00", False),
        ("le2025-03-14", True),
        ("sa2025-03-13", True),
        ("sa2025-03-14T09:00:00-05:00", True),
        ("sa2025-03-14T09:15:00-05:00", False),
        ("eb2025-03-15", True),
        ("eb2025-03-14T09:20:00-05:00", False),
    ],
)
def test_prefixes_compare_ranges_as_r4_says(value, matches):
    criterion = Criterion(_date_param(), (parse_date("date", value, CHICAGO),), CHICAGO)
    assert criterion.matches({"performedPeriod": PERIOD}, BASE) is matches


def _date_param() -> SearchParam:
    return params_of("Procedure")["date"]


def test_an_open_period_runs_on_forever():
    criterion = Criterion(_date_param(), (parse_date("date", "gt2030-01-01", UTC),), UTC)
    assert criterion.matches({"performedPeriod": {"start": "2025-03-14T09:12:00Z"}}, BASE)


@pytest.mark.parametrize("value", ["ap2025-03-14", "zz2025", "2025-02-30", "yesterday"])
def test_a_bad_date_names_the_parameter(value):
    with pytest.raises(FhirError) as err:
        parse_date("date", value, UTC)
    assert err.value.status == 400 and err.value.expression == "date"


def test_tokens_and_references():
    assert parse_token("http://loinc.org|28570-0").system == "http://loinc.org"
    assert parse_token("|x").system == "" and parse_token("x").system is None
    assert parse_token("http://loinc.org|").code is None
    assert parse_token(r"a\|b").code == "a|b"
    assert split_reference("Patient/p1", BASE) == ("Patient", "p1")
    assert split_reference(f"{BASE}/fhir/Patient/p1/_history/2", BASE) == ("Patient", "p1")
    assert split_reference("https://elsewhere.example/fhir/Patient/p1", BASE) is None


def test_lenient_ignores_what_strict_refuses():
    query = parse_search("Claim", [("colour", "blue"), ("use", "claim")], strict=False, local=UTC, base=BASE)
    assert query.used == (("use", "claim"),) and query.ignored == ("colour",)
    with pytest.raises(FhirError) as err:
        parse_search("Claim", [("colour", "blue")], strict=True, local=UTC, base=BASE)
    assert err.value.status == 400
    capped = parse_search("Claim", [("_count", "9999"), ("_offset", "3")], strict=True, local=UTC, base=BASE)
    assert (capped.count, capped.offset) == (500, 3)
