"""Plain frozen dataclasses that cross the workflow boundary.

Workflow state never holds protobuf objects, balances or personal data: only opaque ids,
codes and the decisions people made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

TASK_QUEUE = "survivor-journeys"


class Stage(StrEnum):
    INTAKE = "INTAKE"
    ELIGIBILITY = "ELIGIBILITY"
    ASSISTANCE_PLAN = "ASSISTANCE_PLAN"
    LOAN_APPLICATION = "LOAN_APPLICATION"
    COMMITTEE_REVIEW = "COMMITTEE_REVIEW"
    LOAN_APPROVED = "LOAN_APPROVED"
    CLOSED_NOT_ELIGIBLE = "CLOSED_NOT_ELIGIBLE"
    CLOSED_REJECTED = "CLOSED_REJECTED"


def journey_workflow_id(survivor_id: str) -> str:
    """Workflow ids carry only the opaque survivor id."""
    return f"journey-{survivor_id}"


@dataclass(frozen=True)
class JourneyInput:
    survivor_id: str
    case_worker_id: str
    loan_product_id: str = ""
    loan_amount_minor: int = 0
    loan_purpose: str = ""
    assistance_type_ids: list[str] = field(default_factory=list)
    programme_year: int = 1


# --- activity inputs and results -------------------------------------------------------


@dataclass(frozen=True)
class AssessInput:
    survivor_id: str
    assessment_date: str  # ISO date, taken from workflow time


@dataclass(frozen=True)
class AssessmentSummary:
    assessment_id: str
    rule_set_version: int
    district_code: str
    sex: int
    age_band: int
    eligible_programmes: list[str]


@dataclass(frozen=True)
class NeedInput:
    survivor_id: str
    type_id: str
    assessed_by: str
    district_code: str
    sex: int
    age_band: int


@dataclass(frozen=True)
class LoanApplicationInput:
    survivor_id: str
    product_id: str
    amount_minor: int
    purpose: str
    submitted_by: str
    district_code: str
    sex: int
    age_band: int


@dataclass(frozen=True)
class LoanDecisionInput:
    loan_id: str
    approve: bool
    member_id: str
    decision_ref: str
    reason: str


@dataclass(frozen=True)
class LoanSummary:
    loan_id: str
    status: str


# --- updates and queries ---------------------------------------------------------------


@dataclass(frozen=True)
class CommitteeDecision:
    approve: bool
    member_id: str
    decision_ref: str
    reason: str = ""


@dataclass(frozen=True)
class JourneyStatus:
    survivor_id: str
    stage: str
    assessment_id: str
    rule_set_version: int
    eligible_programmes: list[str]
    need_ids: list[str]
    loan_id: str
    loan_status: str
