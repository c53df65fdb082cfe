"""The procedure's lifecycle (DESIGN.md §1), a pure state machine.

``scheduled -> in_progress -> documented -> final -> amended``, and ``cancelled`` from any state before
``final``. Drafts (scheduled, in_progress, documented) can be edited; a final or amended report is
immutable and changes only through an amendment, which creates a new version with a reason.
"""

from __future__ import annotations

import enum


class ProcedureStatus(enum.StrEnum):
    SCHEDULED = "scheduled"
    """Ordered or planned; on the worklist; no report yet."""
    IN_PROGRESS = "in_progress"
    """Started (images arriving)."""
    DOCUMENTED = "documented"
    """A draft report exists and can still be edited."""
    FINAL = "final"
    """Signed (and co-signed when the performer is in training); immutable."""
    AMENDED = "amended"
    """A final report changed by an amendment; every version stays readable."""
    CANCELLED = "cancelled"
    """Not performed, or entered in error before it was final."""


class Action(enum.StrEnum):
    START = "start"
    DOCUMENT = "document"
    FINALIZE = "finalize"
    AMEND = "amend"
    CANCEL = "cancel"


class InvalidTransition(ValueError):
    def __init__(self, status: ProcedureStatus, action: Action) -> None:
        super().__init__(f"a procedure that is {status.value} cannot be {_PAST[action]}")
        self.status = status
        self.action = action


_PAST = {
    Action.START: "started",
    Action.DOCUMENT: "documented",
    Action.FINALIZE: "finalized",
    Action.AMEND: "amended",
    Action.CANCEL: "cancelled",
}

S = ProcedureStatus
_TRANSITIONS: dict[tuple[ProcedureStatus, Action], ProcedureStatus] = {
    (S.SCHEDULED, Action.START): S.IN_PROGRESS,
    (S.SCHEDULED, Action.DOCUMENT): S.DOCUMENTED,
    (S.IN_PROGRESS, Action.DOCUMENT): S.DOCUMENTED,
    (S.DOCUMENTED, Action.DOCUMENT): S.DOCUMENTED,
    (S.DOCUMENTED, Action.FINALIZE): S.FINAL,
    (S.FINAL, Action.AMEND): S.AMENDED,
    (S.AMENDED, Action.AMEND): S.AMENDED,
    (S.SCHEDULED, Action.CANCEL): S.CANCELLED,
    (S.IN_PROGRESS, Action.CANCEL): S.CANCELLED,
    (S.DOCUMENTED, Action.CANCEL): S.CANCELLED,
}

EDITABLE = frozenset({S.SCHEDULED, S.IN_PROGRESS, S.DOCUMENTED})


def next_status(status: ProcedureStatus, action: Action) -> ProcedureStatus:
    """The status after ``action``; :class:`InvalidTransition` when the lifecycle does not allow it."""
    try:
        return _TRANSITIONS[(status, action)]
    except KeyError:
        raise InvalidTransition(status, action) from None


def is_editable(status: ProcedureStatus) -> bool:
    return status in EDITABLE
