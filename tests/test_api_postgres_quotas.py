"""The volume and snapshot quotas ([limits] max_volumes, max_snapshots) hold across two `ebsemu
serve` instances sharing one PostgreSQL database: requests through both at once never take an
account past them. Each instance holds the places its own requests take, which the other does
not see; the store counts again in each insert's own transaction, one insert of an account,
region and kind at a time across the instances."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest

from tests.api_support import at_once, new_volume
from tests.pg_fixtures import PostgresServer
from tests.server import TEST_CONFIG, ZONE, ServerProcess

LIMIT = 3
CALLS = 4 * LIMIT  # half through each instance


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    tmp_path = tmp_path_factory.mktemp("pg-quotas")
    dsn = postgres_server.create_database(f"quotas_{uuid.uuid4().hex[:12]}")
    shared = tmp_path / "shared"
    config = TEST_CONFIG + (
        f"max_volumes = {LIMIT}\nmax_snapshots = {LIMIT}\n"
        f"\n[storage]\npath = {shared / 'storage'}\n\n[blockstore]\npath = {shared / 'blocks'}\n"
    )
    one, two = (ServerProcess(tmp_path / name, config, store_dsn=dsn) for name in ("one", "two"))
    with contextlib.ExitStack() as stack:
        for server in (one, two):
            stack.callback(server.stop)
            server.start()
        yield one, two


def _clients(pair: tuple[ServerProcess, ServerProcess]) -> list[Any]:
    """A fresh account's EC2 clients, one per call, alternately of each instance (made here:
    making clients is not thread-safe)."""
    _, key = pair[0].new_account()
    return [pair[n % 2].client(key=key) for n in range(CALLS)]


def test_creates_through_both_instances_at_once_never_pass_the_volume_quota(
    pair: tuple[ServerProcess, ServerProcess],
) -> None:
    clients = _clients(pair)
    outcomes = at_once(
        [partial(ec2.create_volume, AvailabilityZone=ZONE, Size=1) for ec2 in clients]
    )
    assert sorted(outcomes) == ["VolumeLimitExceeded"] * (CALLS - LIMIT) + ["ok"] * LIMIT
    assert len(clients[1].describe_volumes()["Volumes"]) == LIMIT


def test_snapshots_through_both_instances_at_once_never_pass_the_snapshot_quota(
    pair: tuple[ServerProcess, ServerProcess],
) -> None:
    _, key = pair[0].new_account()
    volume_id = new_volume(pair[0].client(key=key))
    calls: list[Callable[[], Any]] = []
    for n in range(CALLS):  # CreateSnapshot and the direct API's StartSnapshot, through both
        server = pair[n % 2]
        if n % 4 < 2:
            calls.append(partial(server.client(key=key).create_snapshot, VolumeId=volume_id))
        else:
            calls.append(partial(server.client("ebs", key=key).start_snapshot, VolumeSize=1))
    outcomes = at_once(calls)
    assert outcomes.count("ok") == LIMIT, outcomes
    assert set(outcomes) - {"ok"} <= {"SnapshotLimitExceeded", "ServiceQuotaExceededException"}
    described = pair[1].client(key=key).describe_snapshots(OwnerIds=["self"])["Snapshots"]
    assert len(described) == LIMIT
