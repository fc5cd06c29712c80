"""The loan news relay: one workflow for the whole cluster that follows the lending
service's loan change feed (ListLoanChanges) and tells each running journey of changes
to its loan made outside it. A repayment recorded by any client (a cashier's app, a
bank's file, grpcurl) moves the survivor's journey within seconds, not at its next due
date.

The cursor lives in the workflow: a worker that stops, or a relay turn that fails, goes
on where the feed was read to, and every worker started makes sure the relay runs (one
relay, whichever worker starts it).
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.client import Client
from temporalio.common import RetryPolicy, WorkflowIDConflictPolicy

with workflow.unsafe.imports_passed_through():
    from workers.journey.activities import JourneyActivities

LOAN_NEWS_WORKFLOW_ID = "loan-news"
# Turns of about a minute each: a fresh run (continue-as-new) every hour and a half or
# so keeps the history short.
TURNS_PER_RUN = 100


@workflow.defn
class LoanNewsWorkflow:
    @workflow.run
    async def run(self, cursor: str) -> None:
        for _ in range(TURNS_PER_RUN):
            cursor = await workflow.execute_activity_method(
                JourneyActivities.relay_loan_news,
                cursor,
                start_to_close_timeout=timedelta(minutes=10),
                # A turn heartbeats after each page and journey told: a worker that
                # died mid-turn is noticed within a minute, and its turn goes on elsewhere.
                heartbeat_timeout=timedelta(minutes=1),
                retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=1)),
            )
        workflow.continue_as_new(cursor)


async def start_loan_news(client: Client, task_queue: str) -> None:
    """Start the relay unless it runs already (another worker started it)."""
    await client.start_workflow(
        LoanNewsWorkflow.run,
        "",
        id=LOAN_NEWS_WORKFLOW_ID,
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
