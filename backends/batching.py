"""Group work queued by concurrent callers into one call in a worker thread.

The file backend creates a volume in a few small steps whose cost is mostly the fsyncs that make
them durable. Creates that arrive together are run as one batch in one worker thread, so they
share those fsyncs (a journal commit covers them all) and one thread hop, as the store's group
commit does for its writes. A caller's await returns only when its batch has run to its end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")

BatchFunc = Callable[[Sequence[T]], list[BaseException | None]]


class GroupRunner(Generic[T]):
    """Run ``func`` on batches of queued items, one batch at a time, in a worker thread.

    ``func`` receives the items queued since the previous batch began and returns, for each in
    order, None (done) or the exception that item's caller gets."""

    def __init__(self, func: BatchFunc[T]) -> None:
        self._func = func
        self._queue: list[tuple[T, asyncio.Future[None]]] = []
        self._runner: asyncio.Task[None] | None = None

    async def run(self, item: T) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._drain(), name="file-group-runner")
        # A cancelled caller stops waiting; its item still runs with its batch.
        await future

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                results = await asyncio.to_thread(self._func, [item for item, _ in batch])
            except Exception as exc:  # the batch function itself broke: tell every caller
                results = [exc] * len(batch)
            except BaseException:  # cancelled (shutdown): so are the callers still waiting
                for _, future in batch + self._queue:
                    future.cancel()
                self._queue = []
                raise
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if result is None:
                    future.set_result(None)
                else:
                    future.set_exception(result)
