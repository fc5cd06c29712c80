"""A journey as it runs when it was started before the `journey-fewer-tasks` patch: the
same workflow name and code, but `_fewer_tasks` stays False whatever `workflow.patched`
answers, so its reads and notifications are ordinary activities and each search
attribute is upserted at once, as on the old path every such journey still takes."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from workers.journey.model import JourneyInput, JourneyStatus
    from workers.journey.workflows import SurvivorJourneyWorkflow


@workflow.defn(name="SurvivorJourneyWorkflow")
class PreFewerTasksJourneyWorkflow(SurvivorJourneyWorkflow):
    @property
    def _fewer_tasks(self) -> bool:
        return False

    @_fewer_tasks.setter
    def _fewer_tasks(self, value: bool) -> None:
        pass  # the old path, whatever the patch says

    @workflow.run
    async def run(self, journey: JourneyInput) -> JourneyStatus:
        return await super().run(journey)
