"""Plain frozen dataclasses that cross the workflow boundary.

Workflow state never holds protobuf objects, balances or personal data: only opaque ids,
codes, dates and the decisions people made. Dates travel as ISO strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from services.common.money import manat
from services.common.text import has_control_or_format, visible

TASK_QUEUE = "survivor-journeys"


class Stage(StrEnum):
    INTAKE = "INTAKE"
    ELIGIBILITY = "ELIGIBILITY"
    ASSISTANCE_PLAN = "ASSISTANCE_PLAN"
    LOAN_APPLICATION = "LOAN_APPLICATION"
    COMMITTEE_REVIEW = "COMMITTEE_REVIEW"
    DISBURSEMENT = "DISBURSEMENT"
    GRACE = "GRACE"
    REPAYMENT = "REPAYMENT"
    ARREARS_REVIEW = "ARREARS_REVIEW"
    REPAID = "REPAID"
    FOLLOW_UP = "FOLLOW_UP"
    ASSISTANCE_ONLY = "ASSISTANCE_ONLY"
    COMPLETED = "COMPLETED"
    CLOSED_NOT_ELIGIBLE = "CLOSED_NOT_ELIGIBLE"
    CLOSED_REJECTED = "CLOSED_REJECTED"
    CLOSED_WITHDRAWN = "CLOSED_WITHDRAWN"
    WRITTEN_OFF = "WRITTEN_OFF"


LOAN_PROGRAMMES = ("startup_loan", "expansion_loan")
CLOSED_LOAN_STATES = ("CLOSED_OBLIGATIONS_MET", "CLOSED_WRITTEN_OFF")
TRANCHE_DESCRIPTION_MAX = 500  # lending's limit on a disbursement's description


def journey_workflow_id(survivor_id: str, number: int = 1) -> str:
    """The survivor's `number`th journey: `journey-<survivor id>` for the first, then
    `journey-<survivor id>.2`, `.3`... Workflow ids carry only the opaque survivor id.

    Each journey has an id of its own because its steps' request ids (and its assistance
    items' workflow ids) are made from it: a later journey under the same id would be
    answered with the first one's assessment and loan. Survivor ids hold no '.', so no
    survivor's first journey can be another's later one."""
    return f"journey-{survivor_id}" if number <= 1 else f"journey-{survivor_id}.{number}"


def journey_of(workflow_id: str) -> tuple[str, int]:
    """The survivor and the journey's number from a journey's workflow id."""
    survivor_id = workflow_id.removeprefix("journey-")
    base, dot, number = survivor_id.rpartition(".")
    if dot and number.isdigit():
        return base, int(number)
    return survivor_id, 1


def assistance_workflow_id(journey_id: str, type_id: str) -> str:
    return f"{journey_id}-assistance-{type_id}"


# eligibility's FollowUp.household_income_minor bound (lte), in qəpik.
FOLLOW_UP_INCOME_MAX_MINOR = 10_000_000_000


@dataclass(frozen=True)
class JourneyPolicy:
    """The programme's timings, in days; the defaults are the programme's own."""

    reminder_days_before_due: int = 3
    due_tolerance_days: int = 3
    committee_reminder_days: int = 7
    committee_deadline_days: int = 21
    field_visit_days_past_due: int = 30
    committee_review_days_past_due: int = 90
    arrears_check_days: int = 30
    follow_up_months: tuple[int, ...] = (6, 12)
    follow_up_window_days: int = 60


@dataclass(frozen=True)
class TranchePlan:
    amount_minor: int
    description: str
    kind: str = "IN_KIND"  # CASH or IN_KIND
    days_after_approval: int = 0


@dataclass(frozen=True)
class LoanRequest:
    product_id: str
    amount_minor: int
    purpose: str
    tranches: list[TranchePlan] = field(default_factory=list)
    fund_id: str = ""  # the programme fund it is lent from ("": lending's default fund)

    def tranche_plan(self) -> list[TranchePlan]:
        """One tranche of the whole amount unless the plan splits it."""
        return self.tranches or [TranchePlan(self.amount_minor, self.purpose, "CASH", 0)]

    def plan_problem(self) -> str:
        """Why the tranche plan cannot be paid out as planned ("" when it can): lending
        would refuse a tranche half-way through the loan."""
        if not self.tranches and not visible(self.purpose):
            return "the loan has no purpose (it describes the one tranche paid out)"
        plan = self.tranche_plan()
        for number, tranche in enumerate(plan, start=1):
            if tranche.amount_minor <= 0:
                return (
                    f"tranche {number} of the loan's plan is {manat(tranche.amount_minor)} AZN: "
                    "a tranche pays out more than nothing"
                )
            if tranche.kind not in ("CASH", "IN_KIND"):
                return (
                    f"tranche {number} of the loan's plan is {tranche.kind!r}, not CASH or IN_KIND"
                )
            if tranche.days_after_approval < 0:
                return f"tranche {number} of the loan's plan falls before the approval"
            # As lending checks a disbursement's description (`text.not_blank`, 500).
            if not visible(tranche.description):
                return f"tranche {number} of the loan's plan has no description"
            if len(tranche.description) > TRANCHE_DESCRIPTION_MAX:
                return (
                    f"tranche {number} of the loan's plan has a description longer than "
                    f"{TRANCHE_DESCRIPTION_MAX} characters"
                )
        total = sum(t.amount_minor for t in plan)
        if total != self.amount_minor:
            return (
                f"the loan's tranches add up to {manat(total)} AZN, not the "
                f"{manat(self.amount_minor)} AZN asked for"
            )
        return ""


@dataclass(frozen=True)
class AssistancePlan:
    type_id: str
    provider_id: str = ""
    capacity_pool_id: str = ""
    quantity: int = 1
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JourneyInput:
    survivor_id: str
    case_worker_id: str
    loan: LoanRequest | None = None
    assistance: list[AssistancePlan] = field(default_factory=list)
    programme_year: int = 1
    policy: JourneyPolicy = field(default_factory=JourneyPolicy)
    # Where to pick up: set by continue-as-new, and for a journey started to follow a
    # loan already being repaid (`journey start --follow-loan`; activities.following_loan).
    resume: JourneyState | None = None

    def repeated_assistance_types(self) -> list[str]:
        """The assistance types asked for more than once, in the order first given: each
        item's workflow id comes from its type (assistance_workflow_id), so a journey has
        one item per type."""
        seen: set[str] = set()
        repeated: list[str] = []
        for plan in self.assistance:
            if plan.type_id in seen and plan.type_id not in repeated:
                repeated.append(plan.type_id)
            seen.add(plan.type_id)
        return repeated


# --- activity inputs and results -------------------------------------------------------


@dataclass(frozen=True)
class SurvivorProfile:
    """What the journey needs to know about the survivor; no personal data."""

    district_code: str
    preferred_language: str  # "az" or "en"
    # The survivor has withdrawn consent to data processing (and not given it again).
    consent_withdrawn: bool = False


@dataclass(frozen=True)
class AssessInput:
    survivor_id: str
    assessment_date: str


@dataclass(frozen=True)
class AssessmentSummary:
    assessment_id: str
    rule_set_version: int
    district_code: str
    sex: int
    age_band: int
    eligible_programmes: list[str]
    # Every programme the assessment decided, with its outcome (ELIGIBLE, NOT_ELIGIBLE,
    # NEEDS_REVIEW); empty in assessments recorded before it was carried.
    outcomes: dict[str, str] = field(default_factory=dict)


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
    fund_id: str = ""


@dataclass(frozen=True)
class LoanDecisionInput:
    loan_id: str
    approve: bool
    member_id: str
    decision_ref: str
    reason: str
    # The journey's count of decisions sent (patch journey-decision-attempts): each
    # attempt its own request id. 0 (histories from before it) and 1 keep the first id.
    attempt: int = 0


@dataclass(frozen=True)
class LoanSummary:
    loan_id: str
    status: str
    # Principal outstanding when the service answered (a tranche disbursed, a decision);
    # the status query shows it until the repayment cycle's first ledger snapshot.
    outstanding_minor: int = 0


@dataclass(frozen=True)
class DisburseInput:
    loan_id: str
    sequence: int
    amount_minor: int
    kind: str
    description: str
    disbursement_date: str
    disbursed_by: str


@dataclass(frozen=True)
class SnapshotInput:
    loan_id: str
    as_of: str


@dataclass(frozen=True)
class LoanSnapshot:
    """The ledger's view of a loan on a date; the journey keeps no balance of its own."""

    status: str
    days_past_due: int
    outstanding_minor: int
    overdue_minor: int
    next_due_date: str  # "" when no instalment is still to fall due
    next_due_minor: int
    first_due_date: str
    # The day a closed loan closed, as the ledger dates it ("" while open, and in
    # snapshots recorded before lending gave it).
    closed_on: str = ""
    # Tranches disbursed so far (0 in snapshots recorded before the journey read it).
    tranches: int = 0
    # The write-off proposed with lending and awaiting its confirmation ("" when none, and
    # in snapshots recorded before the journey read it).
    write_off_proposed_by: str = ""
    write_off_reason: str = ""


@dataclass(frozen=True)
class RepaymentInput:
    loan_id: str
    amount_minor: int
    payment_date: str
    step: str


@dataclass(frozen=True)
class HardshipInput:
    loan_id: str
    kind: str  # "pause" or "reschedule"
    reason: str
    requested_by: str
    start_date: str = ""
    end_date: str = ""
    new_term_months: int = 0
    additional_grace_months: int = 0
    effective_date: str = ""
    # The journey's count of hardship requests (patch journey-hardship-sequence): the
    # request id comes from it, so two the same day are two requests. 0 in histories from
    # before it: the request id comes from the date.
    sequence: int = 0


@dataclass(frozen=True)
class WriteOffInput:
    loan_id: str
    reason: str
    proposed_by: str
    confirmed_by: str
    write_off_date: str


@dataclass(frozen=True)
class WriteOffStepInput:
    """One person's step on a write-off recorded with lending (propose, withdraw or
    confirm); `number` names the step's request, one per step the journey takes."""

    loan_id: str
    number: int
    person: str
    reason: str = ""
    write_off_date: str = ""
    # The proposal a confirmation or a withdrawal is about, as the journey holds it:
    # lending refuses the step if another is open now (PROPOSAL_CHANGED).
    proposed_by: str = ""
    proposal_reason: str = ""


@dataclass(frozen=True)
class Notification:
    """One message to a person, queued in the outbox; the dedupe key makes a retried or
    replayed step queue it once."""

    dedupe_key: str
    kind: str
    recipient: str  # an opaque id: the survivor or a staff member
    language: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FollowUpInput:
    survivor_id: str
    months_after: int
    household_income_minor: int
    working: bool
    family_members_supported: int
    recorded_by: str
    recorded_on: str
    # The loan followed up (patch follow-up-per-loan); last, with a default, so inputs
    # recorded before it still read. Empty: the follow-up is recorded as the survivor's.
    loan_id: str = ""


# --- assistance child workflow ---------------------------------------------------------


@dataclass(frozen=True)
class AssistanceInput:
    journey_id: str
    survivor_id: str
    case_worker_id: str
    district_code: str
    sex: int
    age_band: int
    plan: AssistancePlan
    # Set when an item that waited long on a waitlist continues as new: where it was.
    resume: AssistanceResume | None = None


@dataclass(frozen=True)
class NeedInput:
    survivor_id: str
    type_id: str
    assessed_by: str
    district_code: str
    sex: int
    age_band: int


@dataclass(frozen=True)
class RequestAssistanceInput:
    need_id: str
    plan: AssistancePlan
    requested_by: str


@dataclass(frozen=True)
class AdvanceInput:
    assistance_id: str
    action: str
    actor: str
    data: dict[str, Any] = field(default_factory=dict)
    step: int = 0


@dataclass(frozen=True)
class AssistanceState:
    type_id: str
    need_id: str
    assistance_id: str
    state: str
    terminal: bool
    waitlist_position: int = 0
    # Why the assistance service refused the item (state "refused"): its reason code,
    # QUANTITY_OVER_CAPACITY or a field's; "" for other states and items from before.
    refusal: str = ""


@dataclass(frozen=True)
class AssistanceResume:
    """What a waitlisted item carries into its next run: the item as last read, and how
    many steps it has sent (its request ids go on from there)."""

    state: AssistanceState
    steps: int


# --- updates, signals and queries ------------------------------------------------------


@dataclass(frozen=True)
class CommitteeDecision:
    approve: bool
    member_id: str
    decision_ref: str
    reason: str = ""


@dataclass(frozen=True)
class LoanChanged:
    """Money moved on a loan outside the journey (a repayment, a reversal): the journey
    re-reads it now rather than at its next due date."""

    loan_id: str


@dataclass(frozen=True)
class Hardship:
    """A hardship pause of delinquency, or a reschedule, decided by staff."""

    kind: str  # "pause" or "reschedule"
    reason: str
    requested_by: str
    pause_days: int = 0
    new_term_months: int = 0
    additional_grace_months: int = 0


@dataclass(frozen=True)
class WriteOffProposal:
    """A write-off proposed by one person (a loan officer), until a different person (a
    programme manager) confirms it."""

    reason: str
    proposed_by: str
    # Recorded with lending when proposed, as the journey holds it (set by the journey,
    # WRITE_OFFS_WITH_LENDING_PATCH): confirmed or withdrawn there, and read back from
    # the ledger. Before, the journey alone held it until the confirmation.
    with_lending: bool = False


@dataclass(frozen=True)
class WriteOffWithdrawal:
    """The write-off the journey holds, withdrawn before anyone confirmed it."""

    reason: str
    withdrawn_by: str


@dataclass(frozen=True)
class WriteOffDecision:
    reason: str
    proposed_by: str
    confirmed_by: str


@dataclass(frozen=True)
class FollowUp:
    household_income_minor: int
    working: bool
    family_members_supported: int
    recorded_by: str

    def problem(self) -> str | None:
        """Why eligibility would refuse these answers (its FollowUp rules), or None:
        checked when they are given, as the journey records them only later."""
        if not 0 <= self.household_income_minor <= FOLLOW_UP_INCOME_MAX_MINOR:
            return f"income must be from 0 to {FOLLOW_UP_INCOME_MAX_MINOR} qəpik"
        if not 0 <= self.family_members_supported <= 49:
            return "family members supported must be from 0 to 49"
        if not visible(self.recorded_by):
            return "recorded_by is required"
        if len(self.recorded_by) > 64 or has_control_or_format(self.recorded_by):
            return (
                "recorded_by must name who recorded it: at most 64 characters, and no "
                "control or invisible formatting character"
            )
        return None


@dataclass(frozen=True)
class AssistanceAction:
    action: str
    actor: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AssistanceRefresh:
    """Staff ask an assistance item to read its record from the assistance service again
    (a step sent straight to the service, a promotion off the waitlist)."""

    requested_by: str


@dataclass(frozen=True)
class JourneyStatus:
    survivor_id: str
    stage: str
    rule_set_version: int
    assessment_id: str
    eligible_programmes: list[str]
    loan_id: str
    loan_status: str
    next_due_date: str
    next_due_minor: int
    outstanding_minor: int
    days_past_due: int
    assistance: list[AssistanceState]
    follow_ups_recorded: list[int]
    follow_up_due: int  # months (6 or 12) while a follow-up awaits its answers, else 0
    closed_on: str = ""  # the day the loan closed, once the journey has seen it closed
    # A write-off proposed and awaiting its confirmation ("" when none).
    write_off_proposed_by: str = ""
    write_off_reason: str = ""
    # Principal fallen due and not paid, in qəpik (0 when nothing is overdue).
    overdue_minor: int = 0
    # A tranche lending refused for want of money, in qəpik: the journey waits for the
    # fund and tries again each day (0 when none waits).
    waiting_for_funds_minor: int = 0


@dataclass
class JourneyState:
    """Everything the journey remembers; carried across continue-as-new."""

    stage: str = Stage.INTAKE.value
    profile: SurvivorProfile | None = None
    assessment: AssessmentSummary | None = None
    loan: LoanSummary | None = None
    snapshot: LoanSnapshot | None = None
    tranches_disbursed: int = 0
    approved_on: str = ""
    reminded_due_dates: list[str] = field(default_factory=list)
    escalations: list[str] = field(default_factory=list)
    assistance: dict[str, AssistanceState] = field(default_factory=dict)
    closed_on: str = ""
    follow_ups_recorded: list[int] = field(default_factory=list)
    follow_up_due: int = 0
    # Counters for the request ids of human decisions: the same in every replay and
    # carried across continue-as-new, so no two attempts share an id.
    committee_decisions: int = 0
    hardship_requests: int = 0
    write_off_steps: int = 0
    # The write-off proposed and awaiting its confirmation by someone else.
    write_off_proposal: WriteOffProposal | None = None
