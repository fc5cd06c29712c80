"""The loan lifecycle's refusals say what is wrong in the staff's terms."""

from __future__ import annotations

import pytest

from services.common.errors import FailedPrecondition
from services.lending.lifecycle import check_transition


def test_a_step_the_loan_has_taken_already_says_so() -> None:
    with pytest.raises(FailedPrecondition) as again:
        check_transition("loan-1", "CLOSED_WRITTEN_OFF", "CLOSED_WRITTEN_OFF")
    assert again.value.message == "loan loan-1 is CLOSED_WRITTEN_OFF already"
    assert again.value.reason == "ILLEGAL_TRANSITION"
    with pytest.raises(FailedPrecondition) as backwards:
        check_transition("loan-1", "CLOSED_OBLIGATIONS_MET", "CLOSED_WRITTEN_OFF")
    assert backwards.value.message == (
        "loan loan-1 is CLOSED_OBLIGATIONS_MET; it cannot become CLOSED_WRITTEN_OFF"
    )
    check_transition("loan-1", "ACTIVE", "CLOSED_WRITTEN_OFF")  # allowed: no error
