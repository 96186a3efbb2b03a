"""Running a host command from a backend's blocking data path.

The data path (reading a frozen view, writing restored blocks) runs in worker threads; host
commands are coroutines of a runner that belongs to the event loop it first ran on (an SSH
runner keeps its connection there). A LoopBridge remembers that loop and runs a coroutine on it
from a worker thread, waiting for the result.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from backends.errors import BackendError

T = TypeVar("T")


class LoopBridge:
    """Call ``remember()`` on the event loop (each control-path call does); ``call`` then runs
    coroutines on that loop from worker threads. With no such loop running, ``call`` runs
    the coroutine on a loop of the thread's own."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._loop: asyncio.AbstractEventLoop | None = None

    def remember(self) -> None:
        self._loop = asyncio.get_running_loop()

    def call(self, make: Callable[[], Coroutine[Any, Any, T]], timeout: float) -> T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise BackendError(f"the {self._what} data path blocks: call it from a worker thread")
        loop = self._loop
        if loop is None or loop.is_closed() or not loop.is_running():
            return asyncio.run(make())
        future = asyncio.run_coroutine_threadsafe(make(), loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise BackendError(
                f"the event loop did not run the {self._what} command in time"
            ) from None
