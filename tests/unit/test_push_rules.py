"""The pure parts of the outbox pusher: backoff with full jitter, Retry-After, the lease; the push settings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from service.config import ConfigError, Settings
from service.fhir.push import backoff_seconds, lease_for, parse_retry_after

NOW = datetime(2026, 3, 14, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(("attempt", "ceiling"), [(1, 2.0), (2, 4.0), (3, 8.0), (6, 64.0), (7, 100.0), (500, 100.0)])
def test_backoff_doubles_per_attempt_up_to_the_cap_with_full_jitter(attempt, ceiling):
    assert backoff_seconds(attempt, 2.0, 100.0, rand=lambda: 1.0) == ceiling
    assert backoff_seconds(attempt, 2.0, 100.0, rand=lambda: 0.0) == 0.0
    assert backoff_seconds(attempt, 2.0, 100.0, rand=lambda: 0.25) == ceiling / 4


def test_backoff_is_random_within_its_range():
    delays = {backoff_seconds(4, 1.0, 60.0) for _ in range(200)}
    assert all(0 <= d <= 8.0 for d in delays) and len(delays) > 100


def test_a_retry_after_is_a_floor_even_above_the_cap():
    assert backoff_seconds(1, 2.0, 10.0, retry_after=30, rand=lambda: 1.0) == 30
    assert backoff_seconds(5, 2.0, 100.0, retry_after=1, rand=lambda: 1.0) == 32
    assert backoff_seconds(1, 2.0, 10.0, retry_after=10**9, rand=lambda: 0.0) == 86400


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        (" 0 ", 0.0),
        ("Sat, 14 Mar 2026 12:01:30 GMT", 90.0),
        ("Sat, 14 Mar 2026 11:00:00 GMT", 0.0),  # a date in the past: now
        (None, None),
        ("", None),
        ("soon", None),
        ("-5", None),
    ],
)
def test_retry_after_in_seconds_or_as_an_http_date(header, seconds):
    assert parse_retry_after(header, NOW) == seconds


def test_the_lease_outlasts_a_connect_and_a_read_timeout():
    assert lease_for(30) == timedelta(seconds=90)


def test_push_settings_defaults_and_parsing():
    s = Settings.from_env({})
    assert (s.push_timeout_seconds, s.push_backoff_seconds, s.push_backoff_max_seconds) == (30, 2, 600)
    s = Settings.from_env(
        {"USGI_PUSH_TIMEOUT_SECONDS": "5", "USGI_PUSH_BACKOFF_SECONDS": "0.5", "USGI_PUSH_BACKOFF_MAX_SECONDS": "60"}
    )
    assert (s.push_timeout_seconds, s.push_backoff_seconds, s.push_backoff_max_seconds) == (5, 0.5, 60)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"USGI_PUSH_TIMEOUT_SECONDS": "0"}, "USGI_PUSH_TIMEOUT_SECONDS"),
        ({"USGI_PUSH_TIMEOUT_SECONDS": "a while"}, "USGI_PUSH_TIMEOUT_SECONDS"),
        ({"USGI_PUSH_BACKOFF_SECONDS": "nan"}, "USGI_PUSH_BACKOFF_SECONDS"),
        ({"USGI_PUSH_BACKOFF_SECONDS": "-1"}, "USGI_PUSH_BACKOFF_SECONDS"),
        ({"USGI_PUSH_BACKOFF_MAX_SECONDS": "inf"}, "USGI_PUSH_BACKOFF_MAX_SECONDS"),
        ({"USGI_PUSH_BACKOFF_SECONDS": "30", "USGI_PUSH_BACKOFF_MAX_SECONDS": "10"}, "USGI_PUSH_BACKOFF_SECONDS"),
    ],
)
def test_bad_push_settings_are_named(env, named):
    with pytest.raises(ConfigError, match=named):
        Settings.from_env(env)
