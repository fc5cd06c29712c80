"""The demo cohort `make run` starts on first start, so that a new operator sees live
journeys in the Web UI at once. It includes the programme's own case: a fish farmer in
Saatli with a start-up loan for fingerlings, then feed.

Everything goes through the public APIs: survivors are registered over gRPC (with the
dev token), journeys started on the Temporal frontend, committee decisions sent as
updates.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import date

from temporalio.client import WorkflowHandle

from mineaction.eligibility.v1 import eligibility_service_pb2 as pb
from mineaction.eligibility.v1 import eligibility_service_pb2_grpc as pb_grpc
from mineaction.type.v1 import sex_pb2
from services.common.channels import client_tls, default_token, open_channel
from services.common.config import Settings
from services.common.protoconv import proto_date
from workers.journey.model import (
    AssistancePlan,
    CommitteeDecision,
    JourneyInput,
    LoanRequest,
    TranchePlan,
    journey_workflow_id,
)
from workers.journey.worker import connect
from workers.journey.workflows import SurvivorJourneyWorkflow, initial_search_attributes
from workers.simulation.workflows import Behaviour, BorrowerInput, BorrowerWorkflow

MARKER = "demo-cohort-started"


@dataclass(frozen=True)
class DemoSurvivor:
    survivor_id: str
    district: str
    sex: int
    born: date
    income_minor: int
    loan: LoanRequest | None
    assistance: tuple[AssistancePlan, ...]
    approve: bool


COHORT = (
    DemoSurvivor(
        "demo-saatli-001",
        "saatli",
        sex_pb2.SEX_MALE,
        date(1981, 5, 14),
        60_000,
        LoanRequest(
            "fish_farming",
            500_000,
            "A restored lake: 1,000 young fish, then feed",
            [
                TranchePlan(300_000, "1,000 fingerlings", "IN_KIND", 0),
                TranchePlan(200_000, "Fish feed for the season", "IN_KIND", 30),
            ],
        ),
        (
            AssistancePlan(
                "wheelchair",
                "baku-mobility-aids",
                "stock-wheelchairs-baku",
                1,
                {"seat_width_cm": 44},
            ),
        ),
        True,
    ),
    DemoSurvivor(
        "demo-aghjabadi-002",
        "aghjabadi",
        sex_pb2.SEX_FEMALE,
        date(1988, 2, 3),
        45_000,
        LoanRequest("carpet_weaving", 300_000, "Two looms and wool"),
        (),
        True,
    ),
    DemoSurvivor(
        "demo-fuzuli-003",
        "fuzuli",
        sex_pb2.SEX_MALE,
        date(1975, 9, 21),
        50_000,
        LoanRequest("livestock", 400_000, "Six sheep and winter fodder"),
        (),
        False,
    ),
    DemoSurvivor(
        "demo-tartar-004",
        "tartar",
        sex_pb2.SEX_FEMALE,
        date(1995, 12, 1),
        30_000,
        None,
        (
            AssistancePlan(
                "computer_course",
                "tartar-youth-centre",
                "cohort-computer-tartar-2026-10",
                1,
                {"level": "basic_literacy"},
            ),
        ),
        False,
    ),
)


def intake(survivor: DemoSurvivor) -> pb.SurvivorIntake:
    return pb.SurvivorIntake(
        survivor_id=survivor.survivor_id,
        date_of_birth=proto_date(survivor.born),
        sex=survivor.sex,  # type: ignore[arg-type]
        district_code=survivor.district,
        incident_date=proto_date(date(2010, 4, 11)),
        incident_type=pb.INCIDENT_TYPE_LANDMINE,
        functioning=[
            pb.FunctioningDifficulty(
                domain=pb.WASHINGTON_GROUP_DOMAIN_WALKING,
                level=pb.DIFFICULTY_LEVEL_A_LOT_OF_DIFFICULTY,
            ),
            pb.FunctioningDifficulty(
                domain=pb.WASHINGTON_GROUP_DOMAIN_COGNITION, level=pb.DIFFICULTY_LEVEL_NO_DIFFICULTY
            ),
            pb.FunctioningDifficulty(
                domain=pb.WASHINGTON_GROUP_DOMAIN_SELF_CARE, level=pb.DIFFICULTY_LEVEL_NO_DIFFICULTY
            ),
        ],
        household_size=5,
        dependants=3,
        monthly_household_income_minor=survivor.income_minor,
        languages=[pb.LANGUAGE_AZERBAIJANI],
        preferred_language=pb.LANGUAGE_AZERBAIJANI,
        consent=pb.Consent(
            data_processing=True, recorded_on=proto_date(date.today()), recorded_by="cw-demo"
        ),
    )


async def _stage(handle: WorkflowHandle, wanted: str, attempts: int = 100) -> bool:  # type: ignore[type-arg]
    for _ in range(attempts):
        if (await handle.query(SurvivorJourneyWorkflow.status)).stage == wanted:
            return True
        await asyncio.sleep(0.2)
    return False


async def start_demo_cohort(settings: Settings) -> list[str]:
    """Register the demo survivors and start their journeys; returns the journey ids."""
    client = await connect(settings)
    started = []
    async with open_channel(
        settings.eligibility_address, default_token(settings), tls=client_tls(settings)
    ) as channel:
        eligibility = pb_grpc.EligibilityServiceStub(channel)
        for survivor in COHORT:
            await eligibility.RegisterSurvivor(
                pb.RegisterSurvivorRequest(request_id=str(uuid.uuid4()), intake=intake(survivor)),
                timeout=10,
            )
            handle = await client.start_workflow(
                SurvivorJourneyWorkflow.run,
                JourneyInput(
                    survivor_id=survivor.survivor_id,
                    case_worker_id="cw-demo",
                    loan=survivor.loan,
                    assistance=list(survivor.assistance),
                ),
                id=journey_workflow_id(survivor.survivor_id),
                task_queue=settings.journey_task_queue,
                search_attributes=initial_search_attributes(programme_year=1),
            )
            started.append(handle.id)
            if survivor.approve and await _stage(handle, "COMMITTEE_REVIEW"):
                status = await handle.execute_update(
                    SurvivorJourneyWorkflow.record_committee_decision,
                    CommitteeDecision(True, "cm-demo", "CM-DEMO-001"),
                )
                await client.start_workflow(
                    BorrowerWorkflow.run,
                    BorrowerInput(status.loan_id, Behaviour()),
                    id=f"borrower-{status.loan_id}",
                    task_queue=settings.journey_task_queue,
                )
    return started
