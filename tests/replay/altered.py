"""A journey changed the wrong way: the same workflow name, but it assesses eligibility
before it reads the survivor's profile, without `workflow.patched()`. Replaying a
committed history against it must fail; tests/replay uses it to prove the replay test
can fail."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from workers.journey.activities import JourneyActivities
    from workers.journey.model import AssessInput, JourneyInput, JourneyStatus
    from workers.journey.workflows import SurvivorJourneyWorkflow, call_service


@workflow.defn(name="SurvivorJourneyWorkflow")
class ReorderedJourneyWorkflow(SurvivorJourneyWorkflow):
    @workflow.run
    async def run(self, journey: JourneyInput) -> JourneyStatus:
        await call_service(
            JourneyActivities.assess_eligibility,
            AssessInput(journey.survivor_id, self._days.today().isoformat()),
        )
        return await super().run(journey)
