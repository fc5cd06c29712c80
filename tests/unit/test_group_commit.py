"""GroupCommit: calls that arrive together run as one batch; each caller gets its own
outcome."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from services.common.group_commit import RUN_AGAIN, GroupCommit, RunAgain

Outcome = str | BaseException | RunAgain


class Recorder:
    """A batch runner that records its batches and takes `delay` seconds per batch."""

    def __init__(self, delay: float = 0.01) -> None:
        self.batches: list[list[str]] = []
        self.delay = delay
        self.fail_next: Exception | None = None
        self.running = self.most_running = 0

    async def run(self, calls: Sequence[str]) -> list[Outcome]:
        self.batches.append(list(calls))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        await asyncio.sleep(self.delay)
        self.running -= 1
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        return [ValueError(c) if c.startswith("bad") else c.upper() for c in calls]


async def test_a_lone_call_runs_at_once() -> None:
    recorder = Recorder(delay=0)
    group = GroupCommit(recorder.run)
    assert await asyncio.wait_for(group.submit("a"), timeout=1) == "A"
    assert recorder.batches == [["a"]]


async def test_calls_arriving_meanwhile_share_the_next_batches() -> None:
    recorder = Recorder()
    group = GroupCommit(recorder.run, in_flight=1)
    first = asyncio.create_task(group.submit("a"))
    await asyncio.sleep(0.001)  # its batch is in flight
    results = await asyncio.gather(*(group.submit(c) for c in "bcdefgh"))
    assert [await first, *results] == list("ABCDEFGH")
    assert recorder.batches == [["a"], list("bcdefgh")]


async def test_at_most_in_flight_batches_run_at_once() -> None:
    recorder = Recorder()
    group = GroupCommit(recorder.run, in_flight=2, max_batch=3)
    results = await asyncio.gather(*(group.submit(c) for c in "abcdefgh"))
    assert results == list("ABCDEFGH")
    assert recorder.batches == [list("abc"), list("def"), list("gh")]
    assert recorder.most_running == 2


async def test_each_call_gets_its_own_error() -> None:
    group = GroupCommit(Recorder().run, in_flight=1)
    results = await asyncio.gather(
        *(group.submit(c) for c in ["a", "bad", "c"]), return_exceptions=True
    )
    assert results[0] == "A" and results[2] == "C"
    assert isinstance(results[1], ValueError)


async def test_a_failed_batch_fails_its_calls_only() -> None:
    recorder = Recorder()
    group = GroupCommit(recorder.run, in_flight=1)
    recorder.fail_next = ConnectionError("database gone")
    first = asyncio.create_task(group.submit("a"))
    await asyncio.sleep(0)
    second = asyncio.create_task(group.submit("b"))
    with pytest.raises(ConnectionError):
        await first
    assert await second == "B"


async def test_a_call_put_back_runs_in_the_next_batch() -> None:
    batches: list[list[str]] = []

    async def run(calls: Sequence[str]) -> list[Outcome]:
        batches.append(list(calls))
        seen: set[str] = set()
        outcomes: list[Outcome] = []
        for call in calls:  # a duplicate waits for the batch that has the first
            outcomes.append(RUN_AGAIN if call in seen else f"{call}@{len(batches)}")
            seen.add(call)
        return outcomes

    group = GroupCommit(run, in_flight=1)
    first, again = await asyncio.gather(group.submit("x"), group.submit("x"))
    assert (first, again) == ("x@1", "x@2")


async def test_a_caller_that_gives_up_does_not_stop_its_call() -> None:
    recorder = Recorder(delay=0.05)
    group = GroupCommit(recorder.run, in_flight=1)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(group.submit("a"), timeout=0.01)
    assert await group.submit("b") == "B"
    assert recorder.batches == [["a"], ["b"]]
