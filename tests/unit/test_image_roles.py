"""Pre/post classification: marker first (whole words), then time, else other."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from service.procedures.roles import ImageRole, classify_image, parse_keywords

INJ = datetime(2026, 3, 4, 10, 30)


def _c(sd=None, ic=None, pn=None, at=None, inj=INJ, **kw):  # type: ignore[no-untyped-def]
    return classify_image(
        series_description=sd, image_comments=ic, protocol_name=pn, acquired_at=at, injection_at=inj, **kw
    )


@pytest.mark.parametrize(
    ("sd", "ic", "pn", "expected"),
    [
        ("PRE", None, None, ImageRole.PRE),
        ("Knee pre-injection", None, None, ImageRole.PRE),
        (None, "post inj", None, ImageRole.POST),
        (None, None, "NEEDLE IN JOINT", ImageRole.POST),
        ("after", None, None, ImageRole.POST),
        (None, "PostInjection", None, ImageRole.POST),
    ],
)
def test_a_marker_decides_whatever_the_time(sd, ic, pn, expected):
    late = datetime(2026, 3, 4, 11, 0)  # after the injection: the marker still wins
    decision = _c(sd, ic, pn, at=late)
    assert decision.role is expected and "marker" in decision.reason


@pytest.mark.parametrize("text", ["PREPATELLAR BURSA", "Postero-lateral", "PRESET 3", "needles"])
def test_markers_are_whole_words_only(text):
    assert _c(text, at=None).role is ImageRole.OTHER


def test_time_decides_without_a_marker():
    assert _c("Knee", at=datetime(2026, 3, 4, 10, 29, 59)).role is ImageRole.PRE
    assert _c("Knee", at=INJ).role is ImageRole.POST
    assert _c("Knee", at=datetime(2026, 3, 4, 10, 45)).role is ImageRole.POST


def test_contradicting_markers_fall_back_to_time_and_say_so():
    d = _c("PRE", "POST", at=datetime(2026, 3, 4, 10, 40))
    assert d.role is ImageRole.POST and "contradict" in d.reason


def test_no_marker_and_no_time_is_other():
    assert _c("Knee", at=None).role is ImageRole.OTHER
    assert _c("Knee", at=datetime(2026, 3, 4, 9, 0), inj=None).role is ImageRole.OTHER


def test_naive_and_aware_times_are_not_compared():
    d = _c("Knee", at=datetime(2026, 3, 4, 9, 0), inj=datetime(2026, 3, 4, 10, 0, tzinfo=UTC))
    assert d.role is ImageRole.OTHER and "not comparable" in d.reason


def test_keywords_are_configurable():
    kw = parse_keywords("VOR=pre, NACH=post")
    assert _c("Knie VOR", at=None, keywords=kw).role is ImageRole.PRE
    assert _c("PRE", at=None, keywords=kw).role is ImageRole.OTHER


@pytest.mark.parametrize("bad", ["PRE", "PRE=before", "=pre", "TWO WORDS=post"])
def test_bad_keyword_specs_are_refused_by_name(bad):
    with pytest.raises(ValueError, match="role keyword"):
        parse_keywords(bad)
