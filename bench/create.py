"""CreateVolume (Size=1, two tags) at each concurrency, through boto3 and the raw client.

Each (client, concurrency) pair gets fresh servers, so every row starts from an empty store.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench import boto, servers
from bench.measure import Stats, run_tasks, run_threads
from bench.options import Options
from bench.rawclient import RawClient
from bench.report import Report, Row
from bench.servers import Server

RAW_CONNECTIONS = 64


def workload(concurrency: int) -> str:
    return f"CreateVolume c={concurrency}"


def run(opts: Options, report: Report, work_dir: Path) -> None:
    for concurrency in opts.concurrency:
        for client in ("boto3", "raw"):
            tag = f"create-{client}-{concurrency}"
            row = Row(client, workload(concurrency), None)
            pair = servers.pair(
                work_dir,
                tag,
                moto_too=opts.moto,
                max_volumes=opts.max_volumes,
                log_level=opts.log_level,
                profile_dir=opts.profile_dir,
            )
            with servers.running(pair):
                for server in pair:
                    measure = _boto3 if client == "boto3" else _raw
                    row.stats[server.name] = measure(opts, server, concurrency)
            report.rows.append(row)


def _boto3(opts: Options, server: Server, concurrency: int) -> Stats:
    ec2 = boto.client(server.url, pool=concurrency, timeout=opts.call_timeout)
    return run_threads(
        lambda i: boto.create_volume(ec2, i),
        count=opts.creates,
        concurrency=concurrency,
        max_seconds=opts.create_seconds,
        server=server,
    )


def _raw(opts: Options, server: Server, concurrency: int) -> Stats:
    async def go() -> Stats:
        async with RawClient(
            server.url, connections=RAW_CONNECTIONS, timeout=opts.call_timeout
        ) as raw:
            return await run_tasks(
                raw.create_volume,
                count=opts.creates,
                concurrency=concurrency,
                max_seconds=opts.create_seconds,
                server=server,
            )

    return asyncio.run(go())
