"""Replay the committed journey histories (tests/histories, written by
`python -m tests.histories.record`) against today's workflow code: any nondeterminism, a
change to workflow code made without `workflow.patched()`, fails here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer
from temporalio.workflow import NondeterminismError

from tests.replay.altered import ReorderedJourneyWorkflow
from workers.journey.workflows import AssistanceWorkflow, SurvivorJourneyWorkflow
from workers.simulation.workflows import BorrowerWorkflow

HISTORIES = Path(__file__).parent.parent / "histories"
MANIFEST: dict[str, Any] = json.loads((HISTORIES / "manifest.json").read_text())
FILES: dict[str, dict[str, Any]] = MANIFEST["files"]
REPRESENTATIVE = ("on_time", "late", "rescheduled", "written_off")


def history(name: str) -> WorkflowHistory:
    return WorkflowHistory.from_json(FILES[name]["workflow_id"], (HISTORIES / name).read_text())


def test_the_representative_journeys_are_committed() -> None:
    assert sorted(p.name for p in HISTORIES.glob("*.json") if p.name != "manifest.json") == (
        sorted(FILES)
    )
    for scenario in REPRESENTATIVE:
        assert f"{scenario}.json" in FILES and f"{scenario}.borrower.json" in FILES
    for name in FILES:
        events = history(name).events
        assert len(events) == FILES[name]["events"]
        assert events[-1].HasField("workflow_execution_completed_event_attributes"), name


@pytest.mark.parametrize("name", sorted(FILES))
async def test_replays_without_nondeterminism(name: str) -> None:
    replayer = Replayer(workflows=[SurvivorJourneyWorkflow, AssistanceWorkflow, BorrowerWorkflow])
    result = await replayer.replay_workflow(history(name), raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{name}: {result.replay_failure}"


async def test_a_change_without_patching_fails_replay() -> None:
    """The replay test can fail: the reordered journey is caught at its first command."""
    replayer = Replayer(workflows=[ReorderedJourneyWorkflow, AssistanceWorkflow, BorrowerWorkflow])
    with pytest.raises(NondeterminismError):
        await replayer.replay_workflow(history("on_time.json"))
