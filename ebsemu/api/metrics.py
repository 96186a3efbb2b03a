"""Prometheus metrics at GET /metrics, in the text exposition format (version 0.0.4).

Written by hand: a few counters, one histogram and gauges read from the store at scrape time
need no client library. Request metrics are kept in memory from the server's start; gauges
(volumes and snapshots by state, jobs by kind and state, the block store's blocks and bytes)
are read when scraped, the block store's at most every ``[blockstore] metrics_refresh_seconds``
(0 for the local store; 60 by default for RADOS, where they take a listing of every block).

/metrics takes no signature (a Prometheus scraper cannot sign SigV4): it shows aggregate
figures only, no resource ids, account ids or secrets. ``[server] metrics = off`` removes it;
the path then gets the EC2 error every unknown path gets.

The ``action`` label is an EC2 action this server implements, or ``unknown`` (no action,
another name, or a request refused before its action was read), so a client cannot make up
label values; ``code`` is the AWS error code, or ``OK``.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Handler

from ebsemu.api.actions import ACTIONS
from ebsemu.model import SnapshotState, VolumeState
from ebsemu.service.core import Core

OUTCOME_KEY = web.RequestKey("ebsemu_outcome", tuple)  # (action, code) of an EC2 request
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OK = "OK"
UNKNOWN_ACTION = "unknown"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def action_label(action: str) -> str:
    return action if action in ACTIONS else UNKNOWN_ACTION


def set_outcome(request: web.Request, action: str, code: str) -> None:
    """What the EC2 handler made of the request, for the counters."""
    request[OUTCOME_KEY] = (action_label(action), code)


@dataclass
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds


class Metrics:
    """The request counters and latency histograms, and the gauges read at scrape time."""

    def __init__(self, core: Core, block_store_refresh_seconds: float = 0.0) -> None:
        self._core = core
        self.requests: dict[tuple[str, str], int] = defaultdict(int)
        self.latency: dict[str, Histogram] = defaultdict(Histogram)
        # The block store's figures cost a listing of every block (RADOS: a round trip per
        # block for the bytes), so they are re-read at most this often; one scrape at a time.
        self._block_refresh = block_store_refresh_seconds
        self._block_lock = asyncio.Lock()
        self._block_figures: tuple[int, int] | None = None
        self._block_read_at = 0.0

    def observe(self, action: str, code: str, seconds: float) -> None:
        self.requests[(action, code)] += 1
        self.latency[action].observe(seconds)

    async def render(self) -> str:
        inventory = await self._core.store.inventory()
        blocks, stored = await self._block_store_figures()
        out: list[str] = []
        _family(out, "ebsemu_api_requests_total", "counter", "EC2 API requests by action and code")
        for (action, code), count in sorted(self.requests.items()):
            out.append(_sample("ebsemu_api_requests_total", count, action=action, code=code))
        _family(out, "ebsemu_api_request_duration_seconds", "histogram", "EC2 API request latency")
        for action, histogram in sorted(self.latency.items()):
            _histogram(out, "ebsemu_api_request_duration_seconds", action, histogram)
        _family(out, "ebsemu_jobs", "gauge", "Jobs recorded in the store, by kind and state")
        for (kind, state), count in sorted(inventory.jobs.items()):
            out.append(_sample("ebsemu_jobs", count, kind=kind, state=state))
        _states(out, "ebsemu_volumes", "Volumes by state", VolumeState, inventory.volumes)
        _states(out, "ebsemu_snapshots", "Snapshots by state", SnapshotState, inventory.snapshots)
        _family(out, "ebsemu_blockstore_blocks", "gauge", "Snapshot blocks in the block store")
        out.append(_sample("ebsemu_blockstore_blocks", blocks))
        _family(out, "ebsemu_blockstore_bytes", "gauge", "Bytes the stored blocks take")
        out.append(_sample("ebsemu_blockstore_bytes", stored))
        return "\n".join(out) + "\n"

    async def _block_store_figures(self) -> tuple[int, int]:
        async with self._block_lock:
            now = time.monotonic()
            if self._block_figures is None or now - self._block_read_at >= self._block_refresh:
                self._block_figures = await asyncio.to_thread(self._block_store)
                self._block_read_at = now
            return self._block_figures

    def _block_store(self) -> tuple[int, int]:
        blocks = self._core.blocks
        return sum(1 for _ in blocks.iter_digests()), blocks.stored_bytes()


METRICS_KEY = web.AppKey("metrics", Metrics)


@web.middleware
async def observe_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count each EC2 request by its outcome and time it (other paths are not counted)."""
    started = time.perf_counter()
    response = await handler(request)
    outcome = request.get(OUTCOME_KEY)
    if outcome is not None:
        action, code = outcome
        request.app[METRICS_KEY].observe(action, code, time.perf_counter() - started)
    return response


async def handle_metrics(request: web.Request) -> web.Response:
    text = await request.app[METRICS_KEY].render()
    return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})


# ---- the text format -----------------------------------------------------------------------


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _sample(name: str, value: float, **labels: str) -> str:
    if not labels:
        return f"{name} {_number(value)}"
    text = ",".join(f'{key}="{_escape(val)}"' for key, val in labels.items())
    return f"{name}{{{text}}} {_number(value)}"


def _family(out: list[str], name: str, kind: str, help_text: str) -> None:
    out += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]


def _histogram(out: list[str], name: str, action: str, histogram: Histogram) -> None:
    cumulative = 0
    bounds: Sequence[str] = [*(_number(b) for b in BUCKETS), "+Inf"]
    for bound, count in zip(bounds, histogram.counts, strict=True):
        cumulative += count
        out.append(_sample(f"{name}_bucket", cumulative, action=action, le=bound))
    out.append(_sample(f"{name}_sum", histogram.total, action=action))
    out.append(_sample(f"{name}_count", cumulative, action=action))


def _states(
    out: list[str], name: str, help_text: str, states: Iterable[str], counts: dict[str, int]
) -> None:
    """One sample per state, zero included, so every series exists from the start."""
    _family(out, name, "gauge", help_text)
    for state in [*states, *sorted(set(counts) - set(states))]:
        out.append(_sample(name, counts.get(state, 0), state=state))
