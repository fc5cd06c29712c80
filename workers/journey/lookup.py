"""Finding a survivor's journeys in Temporal, for the CLI and the loan news relay."""

from __future__ import annotations

import dataclasses
import itertools
from datetime import timedelta

from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from workers.journey import search_attributes as sa
from workers.journey.model import journey_of, journey_workflow_id


@dataclasses.dataclass(frozen=True)
class JourneyRecord:
    """One of a survivor's journeys as Temporal describes it."""

    number: int
    workflow_id: str
    state: str  # RUNNING, COMPLETED, TERMINATED...
    stage: str  # the Stage search attribute: how far it went, or how it ended

    def ended(self) -> str:
        return f"({self.state}{', stage ' + self.stage if self.stage else ''})"


async def journeys_of(
    client: Client, survivor_id: str, rpc_timeout: timedelta
) -> list[JourneyRecord]:
    """The survivor's journeys, first to latest: `journey-<survivor>`, then `.2`, `.3`...
    Read by id, so a journey started a moment ago is found (the workflow list lags); the
    list says how far the numbers go, so a closed journey Temporal no longer keeps (past
    the namespace's retention) does not hide the ones after it."""
    found: list[JourneyRecord] = []
    listed = 0
    query = (
        "WorkflowType = 'SurvivorJourneyWorkflow' AND "
        f"WorkflowId STARTS_WITH '{journey_workflow_id(survivor_id)}'"
    )
    try:
        async for listing in client.list_workflows(query, rpc_timeout=rpc_timeout):
            of, number = journey_of(listing.id)
            if of == survivor_id:
                listed = max(listed, number)
    except RPCError as error:  # a server without a workflow list: by id alone
        if error.status != RPCStatusCode.UNIMPLEMENTED:
            raise
    for number in itertools.count(1):
        handle = client.get_workflow_handle(journey_workflow_id(survivor_id, number))
        try:
            described = await handle.describe(rpc_timeout=rpc_timeout)
        except RPCError as error:
            if error.status != RPCStatusCode.NOT_FOUND:
                raise
            if number >= listed:
                break
            continue  # no longer kept; later ones are
        found.append(
            JourneyRecord(
                number,
                handle.id,
                described.status.name if described.status else "UNKNOWN",
                described.typed_search_attributes.get(sa.STAGE) or "",
            )
        )
    return found
