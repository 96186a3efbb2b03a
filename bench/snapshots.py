"""CreateSnapshot many times over a few volumes, then DescribeSnapshots(OwnerIds=[self])."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from bench import boto, servers
from bench.measure import Stats, WrongResult, run_tasks, run_threads
from bench.options import Options
from bench.rawclient import RawClient
from bench.report import Report, Row
from bench.servers import Server

SOURCE_VOLUMES = 8
CONCURRENCY = 8
CREATE = f"CreateSnapshot c={CONCURRENCY}"
DESCRIBE = "DescribeSnapshots OwnerIds=[self]"
DESCRIBE_C8 = "DescribeSnapshots OwnerIds=[self] c=8"


def run(opts: Options, report: Report, work_dir: Path) -> None:
    pair = servers.pair(
        work_dir,
        "snapshots",
        moto_too=opts.moto,
        max_volumes=opts.max_volumes,
        log_level=opts.log_level,
        profile_dir=opts.profile_dir,
    )
    rows = {name: Row("boto3", name, None) for name in (CREATE, DESCRIBE)}
    raw_row = Row("raw", DESCRIBE_C8, None)
    settled: dict[str, float] = {}
    with servers.running(pair):
        for server in pair:
            created, settled[server.name], described, raw = _one_server(opts, server)
            rows[CREATE].stats[server.name] = created
            rows[DESCRIBE].stats[server.name] = described
            raw_row.stats[server.name] = raw
    rows[CREATE].note = "all completed after " + ", ".join(
        f"{name} {seconds:.1f} s" for name, seconds in settled.items()
    )
    report.rows += [rows[CREATE], rows[DESCRIBE], raw_row]


def _one_server(opts: Options, server: Server) -> tuple[Stats, float, Stats, Stats]:
    """CreateSnapshot stats, seconds until all completed, DescribeSnapshots boto3 and raw."""
    ec2 = boto.client(server.url, pool=CONCURRENCY, timeout=opts.call_timeout)
    baseline = len(ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"])  # moto has some
    volumes = [boto.create_volume(ec2, i) for i in range(SOURCE_VOLUMES)]
    for volume_id in volumes:
        boto.wait_for(
            f"{server.name}: {volume_id} available",
            lambda v=volume_id: boto.volume_state(ec2, v) == "available",
            timeout=opts.call_timeout,
        )
    created = run_threads(
        lambda i: ec2.create_snapshot(
            VolumeId=volumes[i % SOURCE_VOLUMES], Description=f"bench {i}"
        ),
        count=opts.snapshots,
        concurrency=CONCURRENCY,
        max_seconds=opts.create_seconds,
        server=server,
    )
    settle = boto.wait_for(
        f"{server.name}: snapshots completed",
        lambda: _pending(ec2) == 0,
        timeout=opts.call_timeout,
        interval=0.1,
    )
    described = _describe(opts, ec2, server, baseline + created.calls)
    raw = asyncio.run(_describe_raw(opts, server, baseline + created.calls))
    return created, settle, described, raw


def _pending(ec2: Any) -> int:
    answer = ec2.describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "status", "Values": ["pending"]}]
    )
    return len(answer["Snapshots"])


def _describe(opts: Options, ec2: Any, server: Server, expected: int) -> Stats:
    def call(i: int) -> None:
        got = len(ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"])
        if got != expected:
            raise WrongResult(f"{got} snapshots, expected {expected}")

    return run_threads(
        call, count=100_000, concurrency=1, max_seconds=opts.row_seconds, server=server
    )


async def _describe_raw(opts: Options, server: Server, expected: int) -> Stats:
    async with RawClient(server.url, connections=CONCURRENCY, timeout=opts.call_timeout) as raw:

        async def call(i: int) -> None:
            got = await raw.describe_snapshots_self()
            if got != expected:
                raise WrongResult(f"{got} snapshots, expected {expected}")

        return await run_tasks(
            call,
            count=100_000,
            concurrency=CONCURRENCY,
            max_seconds=opts.row_seconds,
            server=server,
        )
