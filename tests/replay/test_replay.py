"""Replay the committed journey histories (tests/histories, written by
`python -m tests.histories.record`) against today's workflow code: any nondeterminism, a
change to workflow code made without `workflow.patched()`, fails here.

The Replayer uses the cluster's encrypting data converter, as the worker does: the
committed histories (recorded before encryption, so in clear) pass its codec unchanged,
and an encrypted history replays as well."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.history.v1 import History
from temporalio.client import WorkflowHistory
from temporalio.converter import DataConverter
from temporalio.worker import Replayer
from temporalio.workflow import NondeterminismError

from tests.replay.altered import ReorderedJourneyWorkflow
from tests.replay.payloads import is_sdk_marker_metadata, is_search_attribute, payloads_in
from workers.codec import (
    ENCODING,
    EncryptionCodec,
    Keyring,
    UnknownKeyError,
    data_converter_for,
)
from workers.journey.workflows import AssistanceWorkflow, SurvivorJourneyWorkflow
from workers.simulation.workflows import BorrowerWorkflow

HISTORIES = Path(__file__).parent.parent / "histories"
MANIFEST: dict[str, Any] = json.loads((HISTORIES / "manifest.json").read_text())
FILES: dict[str, dict[str, Any]] = MANIFEST["files"]
REPRESENTATIVE = ("on_time", "late", "rescheduled", "written_off")


WORKFLOWS = [SurvivorJourneyWorkflow, AssistanceWorkflow, BorrowerWorkflow]


def history(name: str) -> WorkflowHistory:
    return WorkflowHistory.from_json(FILES[name]["workflow_id"], (HISTORIES / name).read_text())


@pytest.fixture(scope="module")
def codec() -> EncryptionCodec:
    return EncryptionCodec(Keyring.generate())


@pytest.fixture(scope="module")
def converter(codec: EncryptionCodec) -> DataConverter:
    return data_converter_for(codec)


def encrypted(original: WorkflowHistory, codec: EncryptionCodec) -> WorkflowHistory:
    """The same history as an encrypting worker would have written it."""
    events = History(events=original.events)
    count = 0
    for path, payload in payloads_in(events):
        if not is_search_attribute(path) and not is_sdk_marker_metadata(path):
            payload.CopyFrom(codec.encrypt(payload))
            count += 1
    assert count > 0
    return WorkflowHistory(original.workflow_id, list(events.events))


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


def test_the_committed_histories_are_in_clear() -> None:
    """They predate encryption: the codec must pass them through, not fail on them."""
    for name in FILES:
        encodings = {
            p.metadata.get("encoding") for _, p in payloads_in(History(events=history(name).events))
        }
        assert ENCODING not in encodings, name


@pytest.mark.parametrize("name", sorted(FILES))
async def test_replays_without_nondeterminism(name: str, converter: DataConverter) -> None:
    replayer = Replayer(workflows=WORKFLOWS, data_converter=converter)
    result = await replayer.replay_workflow(history(name), raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{name}: {result.replay_failure}"


async def test_an_encrypted_history_replays_with_the_keyring(
    codec: EncryptionCodec, converter: DataConverter
) -> None:
    sealed = encrypted(history("late.json"), codec)
    replayer = Replayer(workflows=WORKFLOWS, data_converter=converter)
    result = await replayer.replay_workflow(sealed, raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure


async def test_an_encrypted_history_does_not_replay_under_other_keys(
    codec: EncryptionCodec,
) -> None:
    """The replay above really decrypts: under a keyring without the key it fails."""
    sealed = encrypted(history("late.json"), codec)
    stranger = data_converter_for(EncryptionCodec(Keyring.generate()))
    replayer = Replayer(workflows=WORKFLOWS, data_converter=stranger)
    result = await replayer.replay_workflow(sealed, raise_on_replay_failure=False)
    # The workflow task fails on the payload it cannot decrypt (its message is itself
    # encrypted, so only the error type shows).
    assert result.replay_failure is not None
    assert UnknownKeyError.__name__ in str(result.replay_failure)


async def test_a_change_without_patching_fails_replay() -> None:
    """The replay test can fail: the reordered journey is caught at its first command."""
    replayer = Replayer(
        workflows=[ReorderedJourneyWorkflow, AssistanceWorkflow, BorrowerWorkflow],
        data_converter=data_converter_for(EncryptionCodec(Keyring.generate())),
    )
    with pytest.raises(NondeterminismError):
        await replayer.replay_workflow(history("on_time.json"))
