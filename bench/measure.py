"""Bounded request loops and what they measure: calls/s, latency percentiles, CPU per call.

Every loop stops by itself: after ``count`` calls or once ``max_seconds`` have passed (calls
already running are let finish), or after ``MAX_ERRORS`` failed calls.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from bench.servers import Server

MAX_ERRORS = 20


class WrongResult(Exception):
    """A call answered, but with the wrong number of items: counted as an error."""


@dataclass
class Stats:
    """One workload against one server."""

    calls: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list, repr=False)
    server_cpu: float = 0.0  # seconds of the server's CPU over the whole loop
    client_cpu: float = 0.0  # seconds of this process's CPU over the whole loop
    capped: bool = False  # stopped by the time limit before ``count`` calls
    first_error: str = ""

    @property
    def rate(self) -> float:
        return self.calls / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, fraction: float) -> float:
        """Latency in ms at ``fraction`` (nearest-rank), NaN without samples."""
        if not self.latencies:
            return math.nan
        ordered = sorted(self.latencies)
        rank = max(0, math.ceil(fraction * len(ordered)) - 1)
        return ordered[rank] * 1000

    @property
    def p50(self) -> float:
        return self.percentile(0.50)

    @property
    def p99(self) -> float:
        return self.percentile(0.99)

    @property
    def server_ms_per_call(self) -> float:
        return self.server_cpu * 1000 / self.calls if self.calls else math.nan

    @property
    def client_ms_per_call(self) -> float:
        return self.client_cpu * 1000 / self.calls if self.calls else math.nan


class _Meter:
    """Wall clock and both processes' CPU around a loop."""

    def __init__(self, server: Server | None) -> None:
        self._server = server
        self._wall = time.perf_counter()
        self._client = time.process_time()
        self._server_cpu = server.cpu_seconds() if server else 0.0

    def finish(self, stats: Stats) -> Stats:
        stats.seconds = time.perf_counter() - self._wall
        stats.client_cpu = time.process_time() - self._client
        if self._server is not None:
            stats.server_cpu = self._server.cpu_seconds() - self._server_cpu
        return stats


def _record_error(stats: Stats, exc: BaseException) -> None:
    stats.errors += 1
    if not stats.first_error:
        stats.first_error = f"{type(exc).__name__}: {exc}"[:300]


def run_threads(
    call: Callable[[int], object],
    *,
    count: int,
    concurrency: int,
    max_seconds: float,
    server: Server | None,
) -> Stats:
    """Run ``call(i)`` for i in 0..count-1 on ``concurrency`` threads (blocking clients)."""
    stats = Stats()
    indexes = itertools.count()
    lock = threading.Lock()
    deadline = time.monotonic() + max_seconds

    def worker() -> None:
        while True:
            with lock:
                index = next(indexes)
                if index >= count or stats.errors >= MAX_ERRORS:
                    return
                if time.monotonic() > deadline:
                    stats.capped = True
                    return
            start = time.perf_counter()
            try:
                call(index)
            except Exception as exc:
                with lock:
                    _record_error(stats, exc)
                continue
            elapsed = time.perf_counter() - start
            with lock:
                stats.calls += 1
                stats.latencies.append(elapsed)

    meter = _Meter(server)
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    return meter.finish(stats)


async def run_tasks(
    call: Callable[[int], Awaitable[object]],
    *,
    count: int,
    concurrency: int,
    max_seconds: float,
    server: Server | None,
) -> Stats:
    """Run ``await call(i)`` for i in 0..count-1 on ``concurrency`` tasks (asyncio clients)."""
    stats = Stats()
    indexes = itertools.count()
    deadline = time.monotonic() + max_seconds

    async def worker() -> None:
        while True:
            index = next(indexes)
            if index >= count or stats.errors >= MAX_ERRORS:
                return
            if time.monotonic() > deadline:
                stats.capped = True
                return
            start = time.perf_counter()
            try:
                await call(index)
            except Exception as exc:
                _record_error(stats, exc)
                continue
            stats.calls += 1
            stats.latencies.append(time.perf_counter() - start)

    meter = _Meter(server)
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return meter.finish(stats)
