"""Which images were taken before and which after the injection (pure).

The machine's own marker wins (keywords in Series Description, Image Comments or Protocol Name, matched
as whole words so "PRE" never matches "PREPATELLAR"); else the acquisition time against the recorded
injection time; else ``other``. Every answer carries the reason, for the audit trail and the UI.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime


class ImageRole(enum.StrEnum):
    PRE = "pre"
    """Before the needle reached the target (the target and the planned path)."""
    POST = "post"
    """The needle in the target, or the injectate's spread after the injection."""
    OTHER = "other"
    """Neither can be told."""


DEFAULT_KEYWORDS: Mapping[str, ImageRole] = {
    "PRE": ImageRole.PRE,
    "PREINJ": ImageRole.PRE,
    "PREINJECTION": ImageRole.PRE,
    "BEFORE": ImageRole.PRE,
    "POST": ImageRole.POST,
    "POSTINJ": ImageRole.POST,
    "POSTINJECTION": ImageRole.POST,
    "AFTER": ImageRole.POST,
    "NEEDLE": ImageRole.POST,
}

_WORD = re.compile(r"[A-Za-z0-9]+")


@dataclass(frozen=True)
class RoleDecision:
    role: ImageRole
    reason: str
    source: str = "none"
    """What decided: ``marker``, ``time`` or ``none`` (a person's override is ``manual``, kept by the caller)."""


def _marker_roles(texts: list[str | None], keywords: Mapping[str, ImageRole]) -> set[ImageRole]:
    found: set[ImageRole] = set()
    for text in texts:
        for word in _WORD.findall(text or ""):
            role = keywords.get(word.upper())
            if role is not None:
                found.add(role)
    return found


def classify_image(
    *,
    series_description: str | None,
    image_comments: str | None,
    protocol_name: str | None,
    acquired_at: datetime | None,
    injection_at: datetime | None,
    keywords: Mapping[str, ImageRole] = DEFAULT_KEYWORDS,
) -> RoleDecision:
    """The role of one image and why. Times are compared as given (both naive local, or both aware)."""
    markers = _marker_roles([series_description, image_comments, protocol_name], keywords)
    if len(markers) == 1:
        role = next(iter(markers))
        return RoleDecision(role, f"marker in the image header says {role.value}", "marker")
    conflict = " (its markers contradict each other)" if len(markers) > 1 else ""
    if acquired_at is not None and injection_at is not None:
        try:
            before = acquired_at < injection_at
        except TypeError:  # one naive, one aware: not comparable, say so rather than guess
            return RoleDecision(ImageRole.OTHER, "acquisition and injection times are not comparable" + conflict)
        role = ImageRole.PRE if before else ImageRole.POST
        when = "before" if before else "at or after"
        return RoleDecision(role, f"acquired {when} the recorded injection time{conflict}", "time")
    return RoleDecision(ImageRole.OTHER, "no marker and no injection time to compare with" + conflict)


def parse_keywords(spec: str) -> dict[str, ImageRole]:
    """``PRE=pre,POST=post,NEEDLE=post`` -> mapping; raises ValueError naming a bad entry."""
    out: dict[str, ImageRole] = {}
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        word, sep, role = entry.partition("=")
        if not sep or not _WORD.fullmatch(word.strip()) or role.strip() not in ("pre", "post"):
            raise ValueError(f"role keyword {entry!r} must look like WORD=pre or WORD=post")
        out[word.strip().upper()] = ImageRole(role.strip())
    return out
