"""Group commit: calls that arrive while a transaction is in flight wait, and go
together in the next one.

One transaction per call costs a handful of round trips and a WAL flush each; under load
that, not the work, is what a service spends its time on. Here the first call starts a
batch at once (a lone call waits for nothing), and every call that arrives meanwhile
joins the next batch, so the number of transactions adapts to the load by itself.

Up to `in_flight` batches run at once, so that a call arriving while one is in the
database does not wait for it to finish.

`run` gets the batch and answers each call with its own result, its own error, or
RUN_AGAIN (a call that must wait for this batch's commit, such as a duplicate of another
call in it); an error raised by `run` itself (the database went away) answers every call
in the batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Call = TypeVar("Call")
Result = TypeVar("Result")


class RunAgain:
    """An outcome that puts a call back, to run in the next batch."""


RUN_AGAIN = RunAgain()


class GroupCommit(Generic[Call, Result]):
    def __init__(
        self,
        run: Callable[[Sequence[Call]], Awaitable[Sequence[Result | BaseException | RunAgain]]],
        *,
        max_batch: int = 64,
        in_flight: int = 2,
    ) -> None:
        self._run = run
        self._max_batch = max_batch
        self._in_flight = in_flight
        self._waiting: list[tuple[Call, asyncio.Future[Result]]] = []
        self._flushers: set[asyncio.Task[None]] = set()

    async def submit(self, call: Call) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting.append((call, future))
        if len(self._flushers) < self._in_flight:
            self._flushers.add(asyncio.create_task(self._flush()))
        # A caller cancelled meanwhile (deadline passed) cancels only its future: the call
        # stays in its batch, which decides its outcome, and a retry with the same
        # request_id gets that answer.
        return await future

    async def _flush(self) -> None:
        try:
            await self._flush_waiting()
        finally:
            # Leaves the set in the same step as it finds nothing waiting: a call that
            # arrives after that starts a flusher of its own.
            self._flushers.discard(asyncio.current_task())

    async def _flush_waiting(self) -> None:
        while self._waiting:
            batch = self._waiting[: self._max_batch]
            del self._waiting[: self._max_batch]
            try:
                outcomes = await self._run([call for call, _ in batch])
            except asyncio.CancelledError:  # the server is stopping
                for _, future in batch + self._waiting:
                    future.cancel()
                raise
            except Exception as error:  # every call in the batch gets it
                outcomes = [error] * len(batch)
            again = []
            for (call, future), outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, RunAgain):
                    again.append((call, future))
                elif future.done():
                    continue
                elif isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
            self._waiting[:0] = again
