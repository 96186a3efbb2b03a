"""The boto3 side of the workload: one shared client per server, as an application has."""

from __future__ import annotations

import time
from typing import Any

import boto3
from botocore.config import Config

from bench.rawclient import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, ZONE, group_of


def client(url: str, *, pool: int, timeout: float) -> Any:
    return boto3.client(
        "ec2",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
        config=Config(
            max_pool_connections=max(pool, 10),
            connect_timeout=10,
            read_timeout=timeout,
            retries={"mode": "standard", "total_max_attempts": 1},
        ),
    )


def tag_specification(index: int) -> list[dict[str, Any]]:
    tags = [{"Key": "Name", "Value": f"bench-{index}"}, {"Key": "group", "Value": group_of(index)}]
    return [{"ResourceType": "volume", "Tags": tags}]


def create_volume(ec2: Any, index: int, size_gib: int = 1) -> str:
    answer = ec2.create_volume(
        AvailabilityZone=ZONE, Size=size_gib, TagSpecifications=tag_specification(index)
    )
    return str(answer["VolumeId"])


def wait_for(what: str, check: Any, *, timeout: float, interval: float = 0.02) -> float:
    """Call ``check()`` until it returns true; the seconds that took. Raises on timeout."""
    start = time.perf_counter()
    deadline = start + timeout
    while not check():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{what}: not done after {timeout:.0f} s")
        time.sleep(interval)
    return time.perf_counter() - start


def volume_state(ec2: Any, volume_id: str) -> str:
    return str(ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]["State"])


def snapshot_state(ec2: Any, snapshot_id: str) -> str:
    return str(ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]["State"])


def count_in_state(ec2: Any, state: str) -> int:
    """Volumes in ``state`` (at most one page of 500: enough to tell zero from some)."""
    answer = ec2.describe_volumes(Filters=[{"Name": "status", "Values": [state]}], MaxResults=500)
    return len(answer["Volumes"])
