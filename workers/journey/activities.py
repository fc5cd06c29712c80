"""Activities: the journey's only way to reach the services, always over gRPC.

Request ids come from the workflow id and the step, never the run id, so a retried or
replayed step (even in a new run) is the same request to the service.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
from google.type import date_pb2
from temporalio import activity
from temporalio.exceptions import ApplicationError

from mineaction.assistance.v1 import assistance_service_pb2 as assistance_pb
from mineaction.assistance.v1 import assistance_service_pb2_grpc as assistance_grpc
from mineaction.eligibility.v1 import eligibility_service_pb2 as eligibility_pb
from mineaction.eligibility.v1 import eligibility_service_pb2_grpc as eligibility_grpc
from mineaction.lending.v1 import lending_service_pb2 as lending_pb
from mineaction.lending.v1 import lending_service_pb2_grpc as lending_grpc
from workers.journey.model import (
    AssessInput,
    AssessmentSummary,
    LoanApplicationInput,
    LoanDecisionInput,
    LoanSummary,
    NeedInput,
)

T = TypeVar("T")

# Answers that will not change on retry: the journey must handle them, not retry them.
BUSINESS_REJECTIONS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    }
)
_REQUEST_ID_NAMESPACE = uuid.UUID("6f0d6a52-8a53-4c55-9d8e-3a1f0c2b7e41")
RPC_TIMEOUT_SECONDS = 10.0


def step_request_id(step: str) -> str:
    """A request id that is the same for every attempt and run of this workflow's step."""
    return str(uuid.uuid5(_REQUEST_ID_NAMESPACE, f"{activity.info().workflow_id}/{step}"))


async def call(rpc: Callable[..., Awaitable[T]], request: object) -> T:
    try:
        return await rpc(request, timeout=RPC_TIMEOUT_SECONDS)
    except grpc.aio.AioRpcError as error:
        if error.code() in BUSINESS_REJECTIONS:
            raise ApplicationError(
                error.details() or error.code().name, type=error.code().name, non_retryable=True
            ) from None
        raise


def _date(iso: str) -> date_pb2.Date:
    year, month, day = (int(part) for part in iso.split("-"))
    return date_pb2.Date(year=year, month=month, day=day)


class JourneyActivities:
    """Holds one channel per service; the worker creates it once per process."""

    def __init__(self, eligibility: str, lending: str, assistance: str) -> None:
        self._channels = [grpc.aio.insecure_channel(a) for a in (eligibility, lending, assistance)]
        self.eligibility = eligibility_grpc.EligibilityServiceStub(self._channels[0])
        self.lending = lending_grpc.LendingServiceStub(self._channels[1])
        self.assistance = assistance_grpc.AssistanceServiceStub(self._channels[2])

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()

    @activity.defn
    async def assess_eligibility(self, params: AssessInput) -> AssessmentSummary:
        response = await call(
            self.eligibility.AssessEligibility,
            eligibility_pb.AssessEligibilityRequest(
                request_id=step_request_id("assess"),
                survivor_id=params.survivor_id,
                assessment_date=_date(params.assessment_date),
            ),
        )
        a = response.assessment
        return AssessmentSummary(
            assessment_id=a.assessment_id,
            rule_set_version=a.rule_set_version,
            district_code=a.district_code,
            sex=a.sex,
            age_band=a.age_band,
            eligible_programmes=[
                d.programme_id for d in a.decisions if d.outcome == eligibility_pb.OUTCOME_ELIGIBLE
            ],
        )

    @activity.defn
    async def record_need(self, params: NeedInput) -> str:
        response = await call(
            self.assistance.RecordNeed,
            assistance_pb.RecordNeedRequest(
                request_id=step_request_id(f"need/{params.type_id}"),
                survivor_id=params.survivor_id,
                type_id=params.type_id,
                assessed_by=params.assessed_by,
                district_code=params.district_code,
                sex=params.sex,  # type: ignore[arg-type]
                age_band=params.age_band,  # type: ignore[arg-type]
            ),
        )
        return str(response.need.need_id)

    @activity.defn
    async def submit_loan_application(self, params: LoanApplicationInput) -> LoanSummary:
        response = await call(
            self.lending.SubmitLoanApplication,
            lending_pb.SubmitLoanApplicationRequest(
                request_id=step_request_id("loan-application"),
                survivor_id=params.survivor_id,
                product_id=params.product_id,
                amount_minor=params.amount_minor,
                currency_code="AZN",
                purpose=params.purpose,
                submitted_by=params.submitted_by,
                district_code=params.district_code,
                borrower_sex=params.sex,  # type: ignore[arg-type]
                borrower_age_band=params.age_band,  # type: ignore[arg-type]
            ),
        )
        return _loan_summary(response.loan)

    @activity.defn
    async def decide_loan(self, params: LoanDecisionInput) -> LoanSummary:
        if params.approve:
            approved = await call(
                self.lending.ApproveLoan,
                lending_pb.ApproveLoanRequest(
                    request_id=step_request_id("committee-decision"),
                    loan_id=params.loan_id,
                    approved_by=params.member_id,
                    committee_decision_ref=params.decision_ref,
                    note=params.reason,
                ),
            )
            return _loan_summary(approved.loan)
        rejected = await call(
            self.lending.RejectLoan,
            lending_pb.RejectLoanRequest(
                request_id=step_request_id("committee-decision"),
                loan_id=params.loan_id,
                rejected_by=params.member_id,
                reason=params.reason,
            ),
        )
        return _loan_summary(rejected.loan)

    def all(self) -> list[Callable[..., object]]:
        return [
            self.assess_eligibility,
            self.record_need,
            self.submit_loan_application,
            self.decide_loan,
        ]


def _loan_summary(loan: lending_pb.Loan) -> LoanSummary:
    return LoanSummary(
        loan_id=loan.loan_id,
        status=lending_pb.LoanState.Name(loan.state).removeprefix("LOAN_STATE_"),
    )
