"""Every (status, action) pair of the procedure lifecycle, allowed or refused."""

from __future__ import annotations

import itertools

import pytest

from service.procedures.lifecycle import Action, InvalidTransition, ProcedureStatus, is_editable, next_status

S, A = ProcedureStatus, Action
ALLOWED = {
    (S.SCHEDULED, A.START): S.IN_PROGRESS,
    (S.SCHEDULED, A.DOCUMENT): S.DOCUMENTED,
    (S.IN_PROGRESS, A.DOCUMENT): S.DOCUMENTED,
    (S.DOCUMENTED, A.DOCUMENT): S.DOCUMENTED,
    (S.DOCUMENTED, A.FINALIZE): S.FINAL,
    (S.FINAL, A.AMEND): S.AMENDED,
    (S.AMENDED, A.AMEND): S.AMENDED,
    (S.SCHEDULED, A.CANCEL): S.CANCELLED,
    (S.IN_PROGRESS, A.CANCEL): S.CANCELLED,
    (S.DOCUMENTED, A.CANCEL): S.CANCELLED,
}


@pytest.mark.parametrize(("status", "action"), list(itertools.product(S, A)), ids=lambda v: v.value)
def test_every_pair(status, action):
    if (status, action) in ALLOWED:
        assert next_status(status, action) is ALLOWED[(status, action)]
    else:
        with pytest.raises(InvalidTransition) as err:
            next_status(status, action)
        assert status.value in str(err.value)


def test_only_drafts_are_editable():
    assert {s for s in S if is_editable(s)} == {S.SCHEDULED, S.IN_PROGRESS, S.DOCUMENTED}


def test_a_final_report_cannot_be_cancelled_or_redocumented():
    for action in (A.CANCEL, A.DOCUMENT, A.FINALIZE):
        with pytest.raises(InvalidTransition, match="final"):
            next_status(S.FINAL, action)
