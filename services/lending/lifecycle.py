"""The loan lifecycle: which state may follow which.

SUBMITTED -> APPROVED | REJECTED | WITHDRAWN
APPROVED  -> ACTIVE (first tranche disbursed)
ACTIVE    -> CLOSED_OBLIGATIONS_MET | CLOSED_WRITTEN_OFF
"""

from __future__ import annotations

from services.common.errors import FailedPrecondition

TRANSITIONS: dict[str, frozenset[str]] = {
    "SUBMITTED": frozenset({"APPROVED", "REJECTED", "WITHDRAWN"}),
    "APPROVED": frozenset({"ACTIVE"}),
    "ACTIVE": frozenset({"CLOSED_OBLIGATIONS_MET", "CLOSED_WRITTEN_OFF"}),
}


def check_transition(loan_id: str, current: str, target: str) -> None:
    if target not in TRANSITIONS.get(current, frozenset()):
        raise FailedPrecondition(
            f"loan {loan_id} is {current} already"
            if current == target
            else f"loan {loan_id} is {current}; it cannot become {target}",
            reason="ILLEGAL_TRANSITION",
            metadata={"loan_id": loan_id, "state": current, "target": target},
        )
