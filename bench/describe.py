"""DescribeVolumes as the number of volumes grows: fill each server to every level with the raw
client, then list everything (paginated), look up one id, filter by a tag that 1% carry, and
take the first page of a status filter, through boto3 and the raw client.

moto_server is left out of levels above ``--moto-max-volumes`` (and stopped, to free the CPU):
its create and describe calls slow down with every volume it holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import boto, servers
from bench.measure import Stats, WrongResult, run_tasks, run_threads
from bench.options import Options
from bench.rawclient import RawClient, group_of
from bench.report import Footprint, Report, Row
from bench.servers import Server

FILL_CONCURRENCY = 16
PAGE = 500
MANY = 100_000  # count bound of a row; its time limit ends it first

LIST_ALL = "DescribeVolumes all (paginator, 500/page)"
BY_ID = "DescribeVolumes by VolumeId"
BY_ID_C8 = "DescribeVolumes by VolumeId c=8"
BY_TAG = "DescribeVolumes tag filter (1%)"
BY_TAG_C8 = "DescribeVolumes tag filter (1%) c=8"
# One volume whatever the level (its Name tag): the same answer at 1k and 50k volumes, so its
# time shows the index, where the 1% filter's answer grows with the level.
BY_NAME = "DescribeVolumes tag filter (1 volume)"
BY_NAME_C8 = "DescribeVolumes tag filter (1 volume) c=8"
BY_STATUS = "DescribeVolumes status=available (first 500)"


@dataclass
class Fleet:
    """One server and the volumes the benchmark made in it."""

    server: Server
    ec2: Any
    ids: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.server.name

    def pick(self, index: int) -> str:
        return self.ids[(index * 7919 + 13) % len(self.ids)]

    def named(self, index: int) -> str:
        """The Name tag of one of the fleet's volumes (the fill numbers them from 0)."""
        return f"bench-{(index * 7919 + 13) % len(self.ids)}"

    def tagged(self, index: int) -> int:
        """How many of the fleet's volumes carry the `group` tag value of ``index``."""
        group, total = index % 100, len(self.ids)
        return total // 100 + (1 if group < total % 100 else 0)


def run(opts: Options, report: Report, work_dir: Path) -> None:
    pair = servers.pair(
        work_dir,
        "describe",
        moto_too=opts.moto,
        max_volumes=opts.max_volumes,
        log_level=opts.log_level,
        profile_dir=opts.profile_dir,
    )
    with servers.running(pair):
        fleets = [Fleet(s, boto.client(s.url, pool=8, timeout=opts.call_timeout)) for s in pair]
        for level in opts.levels:
            active = [f for f in fleets if f.name != "moto" or level <= opts.moto_max_volumes]
            for fleet in fleets:
                if fleet not in active:
                    fleet.server.stop()
            fleets = active
            footprint = Footprint(level)
            for fleet in fleets:
                footprint.fill[fleet.name] = _fill(opts, fleet, level)
                if len(fleet.ids) < level:
                    report.notes.append(
                        f"{fleet.name}: the fill to {level:,} volumes stopped at "
                        f"{len(fleet.ids):,} (time limit --fill-seconds or errors)"
                    )
                boto.wait_for(
                    f"{fleet.name}: volumes available",
                    lambda f=fleet: boto.count_in_state(f.ec2, "creating") == 0,
                    timeout=opts.call_timeout,
                    interval=0.5,
                )
            _measure(opts, report, fleets, level)
            for fleet in fleets:
                footprint.rss_mib[fleet.name] = fleet.server.rss_mib()
                footprint.reached[fleet.name] = len(fleet.ids)
            report.footprints.append(footprint)


def _fill(opts: Options, fleet: Fleet, level: int) -> Stats:
    start = len(fleet.ids)

    async def go() -> Stats:
        async with RawClient(
            fleet.server.url, connections=FILL_CONCURRENCY, timeout=opts.call_timeout
        ) as raw:

            async def one(i: int) -> None:
                fleet.ids.append(await raw.create_volume(start + i))

            return await run_tasks(
                one,
                count=level - start,
                concurrency=FILL_CONCURRENCY,
                max_seconds=opts.fill_seconds,
                server=fleet.server,
            )

    return asyncio.run(go())


def _expect(got: int, *allowed: int) -> None:
    if got not in allowed:
        raise WrongResult(f"{got} volumes, expected {' or '.join(map(str, allowed))}")


def _boto3_rows(fleet: Fleet) -> list[tuple[str, int, int, Callable[[int], object]]]:
    """(workload, concurrency, count bound, call) for each boto3 row."""
    ec2 = fleet.ec2

    def list_all(i: int) -> None:
        pages = ec2.get_paginator("describe_volumes").paginate(PaginationConfig={"PageSize": PAGE})
        _expect(sum(len(page["Volumes"]) for page in pages), len(fleet.ids))

    def by_id(i: int) -> None:
        _expect(len(ec2.describe_volumes(VolumeIds=[fleet.pick(i)])["Volumes"]), 1)

    def by_tag(i: int) -> None:
        flt = [{"Name": "tag:group", "Values": [group_of(i)]}]
        _expect(len(ec2.describe_volumes(Filters=flt)["Volumes"]), fleet.tagged(i))

    def by_name(i: int) -> None:
        flt = [{"Name": "tag:Name", "Values": [fleet.named(i)]}]
        _expect(len(ec2.describe_volumes(Filters=flt)["Volumes"]), 1)

    def by_status(i: int) -> None:
        flt = [{"Name": "status", "Values": ["available"]}]
        got = len(ec2.describe_volumes(Filters=flt, MaxResults=PAGE)["Volumes"])
        _expect(got, min(PAGE, len(fleet.ids)), len(fleet.ids))  # moto ignores MaxResults here

    return [
        (LIST_ALL, 1, 20, list_all),
        (BY_ID, 1, MANY, by_id),
        (BY_ID_C8, 8, MANY, by_id),
        (BY_TAG, 1, MANY, by_tag),
        (BY_NAME, 1, MANY, by_name),
        (BY_STATUS, 1, MANY, by_status),
    ]


def _raw_rows(
    fleet: Fleet, raw: RawClient
) -> list[tuple[str, int, int, Callable[[int], Awaitable[None]]]]:
    async def list_all(i: int) -> None:
        _expect(await raw.list_all_volumes(PAGE), len(fleet.ids))

    async def by_id(i: int) -> None:
        got, _ = await raw.describe_volumes({"VolumeId.1": fleet.pick(i)})
        _expect(got, 1)

    async def by_tag(i: int) -> None:
        got, _ = await raw.describe_volumes(
            {"Filter.1.Name": "tag:group", "Filter.1.Value.1": group_of(i)}
        )
        _expect(got, fleet.tagged(i))

    async def by_name(i: int) -> None:
        got, _ = await raw.describe_volumes(
            {"Filter.1.Name": "tag:Name", "Filter.1.Value.1": fleet.named(i)}
        )
        _expect(got, 1)

    return [
        (LIST_ALL, 1, 20, list_all),
        (BY_ID_C8, 8, MANY, by_id),
        (BY_TAG_C8, 8, MANY, by_tag),
        (BY_NAME_C8, 8, MANY, by_name),
    ]


def _measure(opts: Options, report: Report, fleets: list[Fleet], level: int) -> None:
    boto_rows = {f.name: _boto3_rows(f) for f in fleets}
    for index, (name, concurrency, count, _) in enumerate(boto_rows[fleets[0].name]):
        row = Row("boto3", name, level)
        for fleet in fleets:
            call = boto_rows[fleet.name][index][3]
            row.stats[fleet.name] = run_threads(
                call,
                count=count,
                concurrency=concurrency,
                max_seconds=opts.row_seconds,
                server=fleet.server,
            )
        report.rows.append(row)
    raw_rows: dict[str, list[Row]] = {}
    for fleet in fleets:
        raw_rows[fleet.name] = asyncio.run(_raw_measure(opts, fleet, level))
    for rows in zip(*raw_rows.values(), strict=True):
        merged = Row("raw", rows[0].workload, level)
        for row in rows:
            merged.stats.update(row.stats)
        report.rows.append(merged)


async def _raw_measure(opts: Options, fleet: Fleet, level: int) -> list[Row]:
    rows: list[Row] = []
    async with RawClient(fleet.server.url, connections=8, timeout=opts.call_timeout) as raw:
        for name, concurrency, count, call in _raw_rows(fleet, raw):
            stats = await run_tasks(
                call,
                count=count,
                concurrency=concurrency,
                max_seconds=opts.row_seconds,
                server=fleet.server,
            )
            rows.append(Row("raw", name, level, {fleet.name: stats}))
    return rows
