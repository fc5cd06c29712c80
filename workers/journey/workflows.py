"""SurvivorJourneyWorkflow: one per survivor, keyed by the opaque survivor id."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributePair, TypedSearchAttributes

with workflow.unsafe.imports_passed_through():
    from workers.journey import search_attributes as sa
    from workers.journey.activities import JourneyActivities
    from workers.journey.model import (
        AssessInput,
        AssessmentSummary,
        CommitteeDecision,
        JourneyInput,
        JourneyStatus,
        LoanApplicationInput,
        LoanDecisionInput,
        LoanSummary,
        NeedInput,
        Stage,
    )

LOAN_PROGRAMMES = ("startup_loan", "expansion_loan")

Arg = TypeVar("Arg")
Result = TypeVar("Result")

# Service calls are short; retries cover restarts and network blips, never rejections
# (those raise non-retryable ApplicationErrors in the activities).
SERVICE_CALL_TIMEOUT = timedelta(seconds=30)
SERVICE_CALL_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
)


async def call_service(
    activity: Callable[[JourneyActivities, Arg], Awaitable[Result]], arg: Arg
) -> Result:
    """Run one service-calling activity with the journey's timeout and retry policy."""
    return await workflow.execute_activity_method(
        activity,
        arg,
        start_to_close_timeout=SERVICE_CALL_TIMEOUT,
        schedule_to_close_timeout=timedelta(hours=1),
        retry_policy=SERVICE_CALL_RETRY,
    )


@workflow.defn
class SurvivorJourneyWorkflow:
    def __init__(self) -> None:
        self._survivor_id = ""
        self._stage = Stage.INTAKE
        self._assessment: AssessmentSummary | None = None
        self._need_ids: list[str] = []
        self._loan: LoanSummary | None = None
        self._deciding = False
        self._decided = False

    @workflow.run
    async def run(self, journey: JourneyInput) -> JourneyStatus:
        self._survivor_id = journey.survivor_id
        self._set_stage(Stage.ELIGIBILITY)
        workflow.upsert_search_attributes([sa.PROGRAMME_YEAR.value_set(journey.programme_year)])
        assessment = await call_service(
            JourneyActivities.assess_eligibility,
            AssessInput(journey.survivor_id, workflow.now().date().isoformat()),
        )
        self._assessment = assessment
        workflow.upsert_search_attributes([sa.DISTRICT_CODE.value_set(assessment.district_code)])

        self._set_stage(Stage.ASSISTANCE_PLAN)
        for type_id in journey.assistance_type_ids:
            need_id = await call_service(
                JourneyActivities.record_need,
                NeedInput(
                    journey.survivor_id,
                    type_id,
                    journey.case_worker_id,
                    assessment.district_code,
                    assessment.sex,
                    assessment.age_band,
                ),
            )
            self._need_ids.append(need_id)

        wants_loan = journey.loan_product_id and journey.loan_amount_minor > 0
        eligible = any(p in assessment.eligible_programmes for p in LOAN_PROGRAMMES)
        if not (wants_loan and eligible):
            self._set_stage(Stage.CLOSED_NOT_ELIGIBLE if wants_loan else Stage.ASSISTANCE_PLAN)
            return self.status()

        self._set_stage(Stage.LOAN_APPLICATION)
        self._set_loan(
            await call_service(
                JourneyActivities.submit_loan_application,
                LoanApplicationInput(
                    journey.survivor_id,
                    journey.loan_product_id,
                    journey.loan_amount_minor,
                    journey.loan_purpose,
                    journey.case_worker_id,
                    assessment.district_code,
                    assessment.sex,
                    assessment.age_band,
                ),
            )
        )
        self._set_stage(Stage.COMMITTEE_REVIEW)
        await workflow.wait_condition(lambda: self._decided)
        return self.status()

    @workflow.update
    async def record_committee_decision(self, decision: CommitteeDecision) -> JourneyStatus:
        assert self._loan is not None  # guaranteed by the validator
        self._deciding = True
        self._set_loan(
            await call_service(
                JourneyActivities.decide_loan,
                LoanDecisionInput(
                    self._loan.loan_id,
                    decision.approve,
                    decision.member_id,
                    decision.decision_ref,
                    decision.reason,
                ),
            )
        )
        self._set_stage(Stage.LOAN_APPROVED if decision.approve else Stage.CLOSED_REJECTED)
        self._decided = True
        return self.status()

    @record_committee_decision.validator
    def validate_committee_decision(self, decision: CommitteeDecision) -> None:
        """Runs before anything is written to history: a refused update leaves no trace."""
        if self._stage != Stage.COMMITTEE_REVIEW or self._loan is None or self._deciding:
            raise ValueError(f"no loan awaits a committee decision (stage is {self._stage})")
        if not decision.member_id.strip():
            raise ValueError("member_id is required")
        if not decision.decision_ref.strip():
            raise ValueError("decision_ref (the committee minute) is required")
        if not decision.approve and not decision.reason.strip():
            raise ValueError("a rejection needs a reason")

    @workflow.query
    def status(self) -> JourneyStatus:
        assessment = self._assessment
        return JourneyStatus(
            survivor_id=self._survivor_id,
            stage=self._stage.value,
            assessment_id=assessment.assessment_id if assessment else "",
            rule_set_version=assessment.rule_set_version if assessment else 0,
            eligible_programmes=list(assessment.eligible_programmes) if assessment else [],
            need_ids=list(self._need_ids),
            loan_id=self._loan.loan_id if self._loan else "",
            loan_status=self._loan.status if self._loan else "",
        )

    def _set_stage(self, stage: Stage) -> None:
        self._stage = stage
        workflow.upsert_search_attributes([sa.STAGE.value_set(stage.value)])

    def _set_loan(self, loan: LoanSummary) -> None:
        self._loan = loan
        workflow.upsert_search_attributes([sa.LOAN_STATUS.value_set(loan.status)])


def initial_search_attributes(programme_year: int) -> TypedSearchAttributes:
    """Attributes set when the journey starts, so it is filterable from its first second."""
    return TypedSearchAttributes(
        [
            SearchAttributePair(sa.STAGE, Stage.INTAKE.value),
            SearchAttributePair(sa.PROGRAMME_YEAR, programme_year),
        ]
    )
