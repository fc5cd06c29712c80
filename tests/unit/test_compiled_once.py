"""The worker's sandbox imports each journey's workflow module afresh, but compiles its
source at most once per process, whether or not a bytecode cache can be read."""

from __future__ import annotations

from importlib.machinery import SourceFileLoader
from types import CodeType

import pytest
from temporalio import workflow

from workers.compiled_once import CompiledOnceLoader
from workers.journey import workflows as journey_workflows
from workers.journey.worker import workflow_runner
from workers.journey.workflows import SurvivorJourneyWorkflow


async def test_each_sandboxed_run_reuses_the_compiled_workflow_module(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compiled: list[str] = []
    plain_get_code = SourceFileLoader.get_code

    def counting_get_code(self: SourceFileLoader, fullname: str) -> CodeType | None:
        compiled.append(self.path)
        return plain_get_code(self, fullname)

    monkeypatch.setattr(SourceFileLoader, "get_code", counting_get_code)
    monkeypatch.setattr(CompiledOnceLoader, "_code", {})  # as in a fresh worker process
    runner = workflow_runner()  # as every worker builds it
    definition = workflow._Definition.must_from_class(SurvivorJourneyWorkflow)
    for _ in range(3):
        # Each preparation builds a real sandboxed instance: a fresh import of the module.
        runner.prepare_workflow(definition)

    assert compiled.count(journey_workflows.__file__) == 1
