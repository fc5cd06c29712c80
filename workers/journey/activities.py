"""Activities: the journey's only way to reach the services, always over gRPC.

Request ids come from the workflow id and the step, never the run id, so a retried or
replayed step (even in a new run) is the same request to the service, and the service
answers it once.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, date, timedelta
from typing import Any, TypeVar

import grpc
from google.protobuf import duration_pb2, struct_pb2
from google.type import date_pb2
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory
from temporalio.service import RPCError, RPCStatusCode

from mineaction.assistance.v1 import assistance_service_pb2 as assistance_pb
from mineaction.assistance.v1 import assistance_service_pb2_grpc as assistance_grpc
from mineaction.eligibility.v1 import eligibility_service_pb2 as eligibility_pb
from mineaction.eligibility.v1 import eligibility_service_pb2_grpc as eligibility_grpc
from mineaction.lending.v1 import lending_service_pb2 as lending_pb
from mineaction.lending.v1 import lending_service_pb2_grpc as lending_grpc
from services.common.channels import Token, client_tls, open_channel, service_token
from services.common.config import Settings, load_settings
from services.common.errors import reason_of, violations_in
from services.common.protoconv import from_proto_date, proto_date
from workers.journey.lookup import journeys_of
from workers.journey.model import (
    CLOSED_LOAN_STATES,
    AdvanceInput,
    AssessInput,
    AssessmentSummary,
    AssistanceState,
    DisburseInput,
    FollowUpInput,
    HardshipInput,
    JourneyState,
    LoanApplicationInput,
    LoanChanged,
    LoanDecisionInput,
    LoanSnapshot,
    LoanSummary,
    NeedInput,
    Notification,
    RepaymentInput,
    RequestAssistanceInput,
    SnapshotInput,
    Stage,
    SurvivorProfile,
    WriteOffInput,
    WriteOffStepInput,
)
from workers.notifications.outbox import Outbox

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
# Refusals of the worker itself (its token, its role, its right to name someone): failures
# an operator must see. Every other business rejection (four eyes, a step not allowed now)
# is an answer the workflow handles, logged at debug level.
_WORKER_REFUSED = frozenset({"ROLE_NOT_ALLOWED", "METHOD_NOT_ALLOWED", "ACTOR_NOT_CALLER"})


def benign(error: grpc.aio.AioRpcError) -> bool:
    if error.code() == grpc.StatusCode.UNAUTHENTICATED:
        return False
    return error.code() != grpc.StatusCode.PERMISSION_DENIED or (
        reason_of(error) not in _WORKER_REFUSED
    )


_REQUEST_ID_NAMESPACE = uuid.UUID("6f0d6a52-8a53-4c55-9d8e-3a1f0c2b7e41")
RPC_TIMEOUT_SECONDS = 10.0
_LANGUAGE = {
    eligibility_pb.LANGUAGE_AZERBAIJANI: "az",
    eligibility_pb.LANGUAGE_ENGLISH: "en",
}


def step_request_id(step: str) -> str:
    """A request id that is the same for every attempt and run of this workflow's step."""
    return request_id_of(str(activity.info().workflow_id), step)


def request_id_of(workflow_id: str, step: str) -> str:
    """The request id a workflow's step sends (the audit log shows which step a call was)."""
    return str(uuid.uuid5(_REQUEST_ID_NAMESPACE, f"{workflow_id}/{step}"))


# A proposal made less than this before the write-off activity was first scheduled counts
# as the decision's own: the database's and Temporal's clocks may differ a little, and a
# refused confirmation, a withdrawal and a new decision by people take longer than this.
SAME_DECISION_MARGIN = timedelta(minutes=1)


def _proposal_digest(params: WriteOffInput) -> str:
    """What a write-off proposal says, as a short name for its request."""
    said = "\x00".join((params.reason, params.proposed_by, params.write_off_date))
    return hashlib.sha256(said.encode()).hexdigest()[:16]


def _from_an_earlier_decision(proposal: lending_pb.LoanWriteOffProposal) -> bool:
    made = proposal.propose_time.ToDatetime(tzinfo=UTC)
    return made < activity.info().scheduled_time - SAME_DECISION_MARGIN


async def call(rpc: Callable[..., Awaitable[T]], request: object) -> T:
    """A business rejection becomes a non-retryable ApplicationError whose type is the
    status code and whose first detail is the service's ErrorInfo reason (or ""), then
    each field violation's reason (ABOVE_APPROVED_PRINCIPAL on amount_minor...). One
    about the request (four eyes, a step not allowed now) is BENIGN: an answer the
    workflow handles, logged at debug level, not as a failure with its traceback; one
    about the worker's own token is a failure an operator must see."""
    try:
        return await rpc(request, timeout=RPC_TIMEOUT_SECONDS)
    except grpc.aio.AioRpcError as error:
        if any(v.reason == "DATE_IN_FUTURE" for v in violations_in(error)):
            # The journey's day has begun (Temporal's clock) but not yet on the service's
            # clock, a little behind: retried, it is accepted once that clock catches up.
            raise ApplicationError(
                error.details() or error.code().name, type="DATE_IN_FUTURE"
            ) from None
        if error.code() in BUSINESS_REJECTIONS:
            raise ApplicationError(
                error.details() or error.code().name,
                reason_of(error),
                *(v.reason for v in violations_in(error)),  # the fields' own reasons after it
                type=error.code().name,
                non_retryable=True,
                category=(
                    ApplicationErrorCategory.BENIGN
                    if benign(error)
                    else ApplicationErrorCategory.UNSPECIFIED
                ),
            ) from None
        raise


def pdate(iso: str) -> date_pb2.Date:
    return proto_date(date.fromisoformat(iso))


def iso(value: date_pb2.Date) -> str:
    return date(value.year, value.month, value.day).isoformat() if value.year else ""


def _struct(data: dict[str, Any]) -> struct_pb2.Struct:
    packed = struct_pb2.Struct()
    packed.update(data)
    return packed


def loan_status(loan: lending_pb.Loan) -> str:
    """The loan's state as the journey names it: ACTIVE, CLOSED_OBLIGATIONS_MET, ..."""
    return lending_pb.LoanState.Name(loan.state).removeprefix("LOAN_STATE_")


def _loan_summary(loan: lending_pb.Loan) -> LoanSummary:
    return LoanSummary(loan.loan_id, loan_status(loan), loan.outstanding_principal_minor)


def survivor_profile_of(survivor: eligibility_pb.Survivor) -> SurvivorProfile:
    """Only the district and language leave the intake, with whether consent stands."""
    intake = survivor.intake
    return SurvivorProfile(
        intake.district_code,
        _LANGUAGE.get(intake.preferred_language, "az"),
        consent_withdrawn=survivor.HasField("consent_withdrawal"),
    )


def following_loan(
    answer: lending_pb.GetLoanResponse, profile: SurvivorProfile, today: date
) -> JourneyState:
    """Where a journey started to follow a loan already being repaid picks up (its
    `resume`): the repayment cycle, as a run continued as new would, in GRACE until the
    first instalment falls due. The loan was made outside any journey, or reopened by a
    reversal after its journey ended. `answer`: GetLoan's, with the schedule."""
    first_due = loan_snapshot_of(answer, today).first_due_date
    in_grace = bool(first_due) and today < date.fromisoformat(first_due)
    return JourneyState(
        stage=(Stage.GRACE if in_grace else Stage.REPAYMENT).value,
        profile=profile,
        loan=_loan_summary(answer.loan),
        tranches_disbursed=len(answer.loan.tranches),
    )


def snapshot_request(loan_id: str, as_of: str) -> lending_pb.GetLoanRequest:
    return lending_pb.GetLoanRequest(loan_id=loan_id, as_of=pdate(as_of), include_schedule=True)


def loan_snapshot_of(answer: lending_pb.GetLoanResponse, today: date) -> LoanSnapshot:
    """The ledger's view of a loan on `today` from GetLoan's answer with its schedule: the
    journey's monthly read, and the CLI's `journey status`."""
    loan, schedule = answer.loan, answer.schedule
    status = loan_status(loan)
    if not loan.disbursed_minor:  # no schedule before the first tranche
        return LoanSnapshot(status, 0, 0, 0, "", 0, "")
    first_due_date = next(
        (iso(i.due_date) for i in schedule.instalments if i.principal_due_minor > 0), ""
    )
    if status in CLOSED_LOAN_STATES:  # repaid or written off: nothing falls due any more
        return LoanSnapshot(
            status=status,
            days_past_due=loan.days_past_due,
            outstanding_minor=loan.outstanding_principal_minor,
            overdue_minor=0,
            next_due_date="",
            next_due_minor=0,
            first_due_date=first_due_date,
            closed_on=iso(loan.close_date) if loan.HasField("close_date") else "",
            tranches=len(loan.tranches),
        )
    upcoming = [i for i in schedule.instalments if from_proto_date(i.due_date) > today]
    # What has fallen due and is unpaid, once the loan is late: on an instalment's own
    # due date, with nothing late before it, nothing is overdue yet.
    overdue = (
        sum(
            i.principal_due_minor - i.principal_paid_minor
            for i in schedule.instalments
            if from_proto_date(i.due_date) <= today
        )
        if loan.days_past_due
        else 0
    )
    following = next((i for i in upcoming if i.principal_due_minor > i.principal_paid_minor), None)
    return LoanSnapshot(
        status=status,
        days_past_due=loan.days_past_due,
        outstanding_minor=loan.outstanding_principal_minor,
        overdue_minor=overdue,
        next_due_date=iso(following.due_date) if following else "",
        next_due_minor=(following.principal_due_minor - following.principal_paid_minor)
        if following
        else 0,
        first_due_date=first_due_date,
        tranches=len(loan.tranches),
        write_off_proposed_by=answer.write_off_proposal.proposed_by,
        write_off_reason=answer.write_off_proposal.reason,
    )


def assistance_state_of(
    type_id: str, need_id: str, a: assistance_pb.Assistance, terminal: bool
) -> AssistanceState:
    """An item as the assistance service answers it: the journey's view after each of its
    steps, and the CLI's `journey status` (which reads it afresh: a waitlisted item may have
    been promoted since)."""
    return AssistanceState(
        type_id, need_id, a.assistance_id, a.state, terminal, a.waitlist_position
    )


# The loan changes a journey hears of: every kind but its own tranches. A change of state
# is news too: a committee's decision may be recorded straight with lending.
LOAN_NEWS = frozenset(
    set(lending_pb.LoanChangeKind.values())
    - {lending_pb.LOAN_CHANGE_KIND_UNSPECIFIED, lending_pb.LOAN_CHANGE_KIND_DISBURSEMENT}
)


async def tell_journeys(client: Client, survivor_id: str, loan_id: str) -> int:
    """Signal `loan_changed` to the survivor's running journeys (a journey ignores
    another loan's news); how many were told."""
    told = 0
    for journey in await journeys_of(client, survivor_id, timedelta(seconds=RPC_TIMEOUT_SECONDS)):
        if journey.state != "RUNNING":
            continue
        try:
            await client.get_workflow_handle(journey.workflow_id).signal(
                "loan_changed",
                LoanChanged(loan_id),
                rpc_timeout=timedelta(seconds=RPC_TIMEOUT_SECONDS),
            )
            told += 1
        except RPCError as error:  # it ended meanwhile
            if error.status != RPCStatusCode.NOT_FOUND:
                raise
    return told


class JourneyActivities:
    """Holds one channel per service and the outbox; the worker creates it once.

    Every call carries the worker's own token (role `service`); it relays the staff
    decisions that reached the journey as updates by naming the staff member in the
    request's actor field (submitted_by, approved_by, ...).
    """

    def __init__(
        self,
        eligibility: str,
        lending: str,
        assistance: str,
        outbox: Outbox,
        *,
        token: Token | None = None,
        tls: grpc.ChannelCredentials | None = None,
    ) -> None:
        if token is None:
            # Built without a token (the worker's journey_activities): the service token
            # and client TLS from this process's settings.
            settings = load_settings()
            token, tls = service_token(settings), client_tls(settings)
        # Round robin over every address a name resolves to (dns:///lending:50052 with
        # several replicas); the default would pin each channel to one replica.
        options = [("grpc.lb_policy_name", "round_robin")]
        self._channels = [
            open_channel(a, token, options=options, tls=tls)
            for a in (eligibility, lending, assistance)
        ]
        self.eligibility = eligibility_grpc.EligibilityServiceStub(self._channels[0])
        self.lending = lending_grpc.LendingServiceStub(self._channels[1])
        self.assistance = assistance_grpc.AssistanceServiceStub(self._channels[2])
        self.outbox = outbox
        self._terminal_states: dict[str, set[str]] = {}
        # The loan news relay: how long each read of the feed waits for a change (the
        # service answers as soon as one is ready), and how long one turn lasts.
        self.news_wait_seconds = 20
        self.news_turn_seconds = 60.0

    @classmethod
    def from_settings(cls, settings: Settings, outbox: Outbox) -> JourneyActivities:
        return cls(
            settings.eligibility_address,
            settings.lending_address,
            settings.assistance_address,
            outbox,
            token=service_token(settings),
            tls=client_tls(settings),
        )

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()

    # --- eligibility -------------------------------------------------------------------

    @activity.defn
    async def survivor_profile(self, survivor_id: str) -> SurvivorProfile:
        """Only the district, language and whether consent stands leave this activity; the
        intake stays behind."""
        survivor = await call(
            self.eligibility.GetSurvivor, eligibility_pb.GetSurvivorRequest(survivor_id=survivor_id)
        )
        return survivor_profile_of(survivor.survivor)

    @activity.defn
    async def assess_eligibility(self, params: AssessInput) -> AssessmentSummary:
        response = await call(
            self.eligibility.AssessEligibility,
            eligibility_pb.AssessEligibilityRequest(
                request_id=step_request_id("assess"),
                survivor_id=params.survivor_id,
                assessment_date=pdate(params.assessment_date),
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
            outcomes={
                d.programme_id: eligibility_pb.Outcome.Name(d.outcome).removeprefix("OUTCOME_")
                for d in a.decisions
            },
        )

    @activity.defn
    async def record_follow_up(self, params: FollowUpInput) -> None:
        await call(
            self.eligibility.RecordFollowUp,
            eligibility_pb.RecordFollowUpRequest(
                request_id=step_request_id(f"follow-up/{params.months_after}"),
                follow_up=eligibility_pb.FollowUp(
                    survivor_id=params.survivor_id,
                    loan_id=params.loan_id,
                    months_after=params.months_after,
                    household_income_minor=params.household_income_minor,
                    working=params.working,
                    family_members_supported=params.family_members_supported,
                    recorded_by=params.recorded_by,
                    recorded_on=pdate(params.recorded_on),
                ),
            ),
        )

    # --- lending -----------------------------------------------------------------------

    @activity.defn
    async def relay_loan_news(self, cursor: str) -> str:
        """One turn of the loan news relay: follow the lending service's change feed for
        a while, telling each running journey of changes to its loan made outside it
        (a repayment at a cashier's desk, a reversal, a reschedule); the cursor to go on
        from. The heartbeat carries the cursor, so a retried turn goes on from there, and
        after each page the time since which changes wait behind a transaction still
        open in the lending database ("" when none waits)."""
        if activity.info().heartbeat_details:
            cursor = str(activity.info().heartbeat_details[0])
        client = activity.client()
        turn_ends = time.monotonic() + self.news_turn_seconds
        # The turn's first read answers at once, so its heartbeat (what `health` shows)
        # says early whether changes are held back; the later ones wait for news.
        wait = 0
        while time.monotonic() < turn_ends:
            try:
                page = await self.lending.ListLoanChanges(
                    lending_pb.ListLoanChangesRequest(
                        after=cursor,
                        page_size=500,
                        max_wait=duration_pb2.Duration(seconds=wait),
                    ),
                    timeout=self.news_wait_seconds + RPC_TIMEOUT_SECONDS,
                )
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.INVALID_ARGUMENT or not cursor:
                    # Retried: the service is down, or the worker lacks the role. The
                    # message is what `mineaction health` shows of a failing turn.
                    raise ApplicationError(
                        f"the lending service answered {error.code().name}: {error.details()}",
                        type=error.code().name,
                    ) from None
                # A cursor the service no longer reads: from the start again. Journeys
                # told twice only read their loan once more.
                activity.logger.warning("loan change cursor refused; reading from the start")
                cursor = ""
                continue
            news = dict.fromkeys(
                (c.survivor_id, c.loan_id) for c in page.changes if c.kind in LOAN_NEWS
            )
            for survivor_id, loan_id in news:
                await tell_journeys(client, survivor_id, loan_id)
                activity.heartbeat(cursor)
            cursor = page.cursor
            # What `mineaction health` shows: since when committed changes wait behind a
            # transaction still open in the lending database.
            held_back = (
                page.held_back_since.ToDatetime(tzinfo=UTC).isoformat()
                if page.HasField("held_back_since")
                else ""
            )
            activity.heartbeat(cursor, held_back)
            wait = self.news_wait_seconds
        return cursor

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
                fund_id=params.fund_id,
            ),
        )
        return _loan_summary(response.loan)

    @activity.defn
    async def decide_loan(self, params: LoanDecisionInput) -> LoanSummary:
        # Each attempt is its own request: a decision the service refused (four eyes...)
        # can be followed by another with a different member or outcome.
        step = "committee-decision"
        request_id = step_request_id(step if params.attempt <= 1 else f"{step}/{params.attempt}")
        if params.approve:
            approved = await call(
                self.lending.ApproveLoan,
                lending_pb.ApproveLoanRequest(
                    request_id=request_id,
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
                request_id=request_id,
                loan_id=params.loan_id,
                rejected_by=params.member_id,
                reason=params.reason,
            ),
        )
        return _loan_summary(rejected.loan)

    @activity.defn
    async def disburse_tranche(self, params: DisburseInput) -> LoanSummary:
        response = await call(
            self.lending.DisburseTranche,
            lending_pb.DisburseTrancheRequest(
                request_id=step_request_id(f"tranche/{params.sequence}"),
                loan_id=params.loan_id,
                amount_minor=params.amount_minor,
                currency_code="AZN",
                kind=lending_pb.DisbursementKind.Value(f"DISBURSEMENT_KIND_{params.kind}"),
                description=params.description,
                disbursement_date=pdate(params.disbursement_date),
                disbursed_by=params.disbursed_by,
            ),
        )
        return _loan_summary(response.loan)

    @activity.defn
    async def loan_product_max_tranches(self, product_id: str) -> int:
        """Read-only: how many tranches the product allows a loan (0: no such product;
        lending refuses the application then)."""
        token = ""
        while True:
            page = await call(
                self.lending.ListLoanProducts,
                lending_pb.ListLoanProductsRequest(page_size=500, page_token=token),
            )
            for product in page.loan_products:
                if product.product_id == product_id:
                    return int(product.max_tranches)
            token = page.next_page_token
            if not token:
                return 0

    @activity.defn
    async def loan_snapshot(self, params: SnapshotInput) -> LoanSnapshot:
        """Read-only: the loan and its schedule as of a date, straight from the ledger, in
        one call."""
        return loan_snapshot_of(
            await call(self.lending.GetLoan, snapshot_request(params.loan_id, params.as_of)),
            date.fromisoformat(params.as_of),
        )

    @activity.defn
    async def record_repayment(self, params: RepaymentInput) -> None:
        """Payment collection's call, used by simulated borrowers."""
        await call(
            self.lending.RecordRepayment,
            lending_pb.RecordRepaymentRequest(
                request_id=step_request_id(f"repayment/{params.step}"),
                loan_id=params.loan_id,
                amount_minor=params.amount_minor,
                currency_code="AZN",
                payment_date=pdate(params.payment_date),
                received_by="payment-collection",
                channel="simulation",
            ),
        )

    @activity.defn
    async def apply_hardship(self, params: HardshipInput) -> None:
        # The journey numbers its hardship requests, so a second pause or reschedule the
        # same day is a request of its own; histories from before (sequence 0) keep the
        # date.
        def step(on: str) -> str:
            return f"{params.kind}/{f'#{params.sequence}' if params.sequence else on}"

        if params.kind == "pause":
            await call(
                self.lending.PauseDelinquency,
                lending_pb.PauseDelinquencyRequest(
                    request_id=step_request_id(step(params.start_date)),
                    loan_id=params.loan_id,
                    start_date=pdate(params.start_date),
                    end_date=pdate(params.end_date),
                    reason=params.reason,
                    requested_by=params.requested_by,
                ),
            )
            return
        await call(
            self.lending.RescheduleLoan,
            lending_pb.RescheduleLoanRequest(
                request_id=step_request_id(step(params.effective_date)),
                loan_id=params.loan_id,
                reason=params.reason,
                new_term_months=params.new_term_months,
                additional_grace_months=params.additional_grace_months,
                effective_date=pdate(params.effective_date),
                requested_by=params.requested_by,
            ),
        )

    @activity.defn
    async def write_off_loan(self, params: WriteOffInput) -> LoanSummary:
        """Both people's decisions reached the journey together; the service records
        them as a proposal and a confirmation, four eyes checked on the two names.

        The steps keep their names across decisions, so that after a refused confirmation
        the same proposal with another confirming person goes through. A decision that
        proposes something else (another proposer, reason or day) is a request of its own,
        named after what it proposes. A proposal from an earlier decision may have been
        withdrawn through lending's API since: then this decision is a new proposal, a
        request of its own named after the withdrawn one, and so on along the chain if that
        one was withdrawn too (so any retry of this decision finds what it made and answers
        the same). A proposal this decision made itself, on any attempt, is never replaced:
        its withdrawal stands."""
        step = "write-off"
        try:
            proposal = await self._propose_write_off(params, step)
        except ApplicationError as refused:
            if refused.details[:1] != ("REQUEST_ID_REUSED",):
                raise
            step = f"write-off/{_proposal_digest(params)}"
            proposal = await self._propose_write_off(params, step)
        while True:
            try:
                return await self._confirm_write_off(params, step)
            except ApplicationError as refused:
                if not _from_an_earlier_decision(proposal):
                    raise
                refusal = refused
            step = f"write-off/after/{proposal.propose_time.ToJsonString()}"
            try:
                proposal = await self._propose_write_off(params, step)
            except ApplicationError:
                # Not withdrawn after all (still open, or the loan has closed): the refusal
                # of the confirmation is the answer.
                raise refusal from None

    async def _propose_write_off(
        self, params: WriteOffInput, step: str
    ) -> lending_pb.LoanWriteOffProposal:
        """The proposal of the write-off whose requests are named `step`/propose and
        `step`/confirm."""
        response = await call(
            self.lending.ProposeLoanWriteOff,
            lending_pb.ProposeLoanWriteOffRequest(
                request_id=step_request_id(f"{step}/propose"),
                loan_id=params.loan_id,
                reason=params.reason,
                proposed_by=params.proposed_by,
                write_off_date=pdate(params.write_off_date),
            ),
        )
        proposal: lending_pb.LoanWriteOffProposal = response.proposal
        return proposal

    async def _confirm_write_off(self, params: WriteOffInput, step: str) -> LoanSummary:
        response = await call(
            self.lending.ConfirmLoanWriteOff,
            lending_pb.ConfirmLoanWriteOffRequest(
                request_id=step_request_id(f"{step}/confirm"),
                loan_id=params.loan_id,
                confirmed_by=params.confirmed_by,
            ),
        )
        return _loan_summary(response.loan)

    # A write-off recorded with lending step by step (WRITE_OFFS_WITH_LENDING_PATCH): each
    # step a request of its own, numbered by the journey.

    @activity.defn
    async def propose_loan_write_off(self, params: WriteOffStepInput) -> None:
        await call(
            self.lending.ProposeLoanWriteOff,
            lending_pb.ProposeLoanWriteOffRequest(
                request_id=step_request_id(f"write-off-step/{params.number}"),
                loan_id=params.loan_id,
                reason=params.reason,
                proposed_by=params.person,
                write_off_date=pdate(params.write_off_date),
            ),
        )

    @activity.defn
    async def withdraw_loan_write_off(self, params: WriteOffStepInput) -> None:
        """Nothing left to withdraw (withdrawn through lending's API meanwhile) is what the
        withdrawal asked for."""
        try:
            await call(
                self.lending.WithdrawLoanWriteOff,
                lending_pb.WithdrawLoanWriteOffRequest(
                    request_id=step_request_id(f"write-off-step/{params.number}"),
                    loan_id=params.loan_id,
                    reason=params.reason,
                    withdrawn_by=params.person,
                    proposed_by=params.proposed_by,
                    proposal_reason=params.proposal_reason,
                ),
            )
        except ApplicationError as refused:
            if refused.details[:1] != ("NO_WRITE_OFF_PROPOSAL",):
                raise

    @activity.defn
    async def confirm_loan_write_off(self, params: WriteOffStepInput) -> LoanSummary:
        response = await call(
            self.lending.ConfirmLoanWriteOff,
            lending_pb.ConfirmLoanWriteOffRequest(
                request_id=step_request_id(f"write-off-step/{params.number}"),
                loan_id=params.loan_id,
                confirmed_by=params.person,
                proposed_by=params.proposed_by,
                proposal_reason=params.proposal_reason,
            ),
        )
        return _loan_summary(response.loan)

    # --- assistance --------------------------------------------------------------------

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

    async def _is_terminal(self, type_id: str, state: str) -> bool:
        if type_id not in self._terminal_states:
            types = await call(
                self.assistance.ListAssistanceTypes,
                assistance_pb.ListAssistanceTypesRequest(page_size=500),
            )
            for t in types.assistance_types:
                self._terminal_states[t.type_id] = {s.state_id for s in t.states if s.terminal}
        return state in self._terminal_states.get(type_id, set())

    @activity.defn
    async def request_assistance(self, params: RequestAssistanceInput) -> AssistanceState:
        plan = params.plan
        response = await call(
            self.assistance.RequestAssistance,
            assistance_pb.RequestAssistanceRequest(
                request_id=step_request_id("request"),
                need_id=params.need_id,
                provider_id=plan.provider_id,
                capacity_pool_id=plan.capacity_pool_id,
                data=_struct(plan.data),
                referral_consent=True,
                requested_by=params.requested_by,
                quantity=plan.quantity,
            ),
        )
        a = response.assistance
        return assistance_state_of(
            plan.type_id, params.need_id, a, await self._is_terminal(plan.type_id, a.state)
        )

    @activity.defn
    async def advance_assistance(self, params: AdvanceInput) -> AssistanceState:
        response = await call(
            self.assistance.AdvanceAssistance,
            assistance_pb.AdvanceAssistanceRequest(
                request_id=step_request_id(f"advance/{params.step}"),
                assistance_id=params.assistance_id,
                action=params.action,
                data=_struct(params.data),
                actor=params.actor,
            ),
        )
        a = response.assistance
        return assistance_state_of(
            a.type_id, a.need_id, a, await self._is_terminal(a.type_id, a.state)
        )

    @activity.defn
    async def read_assistance(self, assistance_id: str) -> AssistanceState:
        """Read-only: the item as the assistance service holds it now, whoever moved it
        (a step sent straight to the service, a promotion off the waitlist)."""
        response = await call(
            self.assistance.GetAssistance,
            assistance_pb.GetAssistanceRequest(assistance_id=assistance_id),
        )
        a = response.assistance
        return assistance_state_of(
            a.type_id, a.need_id, a, await self._is_terminal(a.type_id, a.state)
        )

    # --- notifications -----------------------------------------------------------------

    @activity.defn
    async def notify(self, notification: Notification) -> bool:
        return await self.outbox.queue(
            notification.dedupe_key,
            notification.kind,
            notification.recipient,
            notification.language,
            notification.params,
        )

    def all(self) -> list[Callable[..., object]]:
        return [
            self.survivor_profile,
            self.assess_eligibility,
            self.record_follow_up,
            self.submit_loan_application,
            self.decide_loan,
            self.disburse_tranche,
            self.loan_product_max_tranches,
            self.loan_snapshot,
            self.relay_loan_news,
            self.record_repayment,
            self.apply_hardship,
            self.write_off_loan,
            self.propose_loan_write_off,
            self.withdraw_loan_write_off,
            self.confirm_loan_write_off,
            self.record_need,
            self.request_assistance,
            self.advance_assistance,
            self.read_assistance,
            self.notify,
        ]
