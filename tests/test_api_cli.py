"""The AWS CLI, unmodified, with nothing but --endpoint-url: the whole volume lifecycle."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.api_support import unique
from tests.server import ZONE, ServerProcess

AWS = Path(sys.executable).with_name("aws")


def aws(server: ServerProcess, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = [str(AWS), "ec2", *args, "--endpoint-url", server.url, "--output", "json"]
    done = subprocess.run(
        argv, env=server.cli_env(), capture_output=True, text=True, timeout=120, check=False
    )
    if check:
        assert done.returncode == 0, f"{' '.join(args)}: {done.stderr}"
    return done


def aws_json(server: ServerProcess, *args: str) -> Any:
    out = aws(server, *args).stdout
    return json.loads(out) if out.strip() else None


def test_cli_creates_tags_snapshots_restores_pages_and_deletes(server: ServerProcess) -> None:
    run = unique()
    tagged = f"ResourceType=volume,Tags=[{{Key=run,Value={run}}}]"
    created = aws_json(
        server,
        "create-volume",
        "--availability-zone", ZONE,
        "--size", "1",
        "--volume-type", "gp3",
        "--tag-specifications", tagged,
    )  # fmt: skip
    volume_id = created["VolumeId"]
    assert created["State"] == "creating" and created["Size"] == 1
    aws(server, "wait", "volume-available", "--volume-ids", volume_id)
    aws(server, "create-tags", "--resources", volume_id, "--tags", "Key=Name,Value=cli-source")

    snapshot = aws_json(
        server, "create-snapshot", "--volume-id", volume_id, "--description", f"cli {run}"
    )
    snapshot_id = snapshot["SnapshotId"]
    assert snapshot["State"] == "pending"
    aws(server, "wait", "snapshot-completed", "--snapshot-ids", snapshot_id)

    restored = aws_json(
        server,
        "create-volume",
        "--availability-zone", ZONE,
        "--snapshot-id", snapshot_id,
        "--tag-specifications", tagged,
    )  # fmt: skip
    restored_id = restored["VolumeId"]
    assert restored["SnapshotId"] == snapshot_id and restored["Size"] == 1
    aws(server, "wait", "volume-available", "--volume-ids", restored_id)

    # Page through the two volumes one item at a time, as a script would.
    by_run = f"Name=tag:run,Values={run}"
    first = aws_json(
        server, "describe-volumes", "--filters", by_run, "--max-items", "1", "--page-size", "5"
    )
    assert [v["VolumeId"] for v in first["Volumes"]] == [volume_id]
    second = aws_json(
        server,
        "describe-volumes",
        "--filters", by_run,
        "--max-items", "1",
        "--page-size", "5",
        "--starting-token", first["NextToken"],
    )  # fmt: skip
    assert [v["VolumeId"] for v in second["Volumes"]] == [restored_id]
    assert "NextToken" not in second

    # Filters AND across names, OR within one.
    named = aws_json(
        server,
        "describe-volumes",
        "--filters", by_run, "Name=tag:Name,Values=cli-source,other",
        "--query", "Volumes[].[VolumeId,Tags[?Key=='Name'].Value|[0]]",
    )  # fmt: skip
    assert named == [[volume_id, "cli-source"]]

    aws(server, "delete-volume", "--volume-id", volume_id)
    aws(server, "delete-volume", "--volume-id", restored_id)
    aws(server, "wait", "volume-deleted", "--volume-ids", volume_id, restored_id)
    aws(server, "delete-snapshot", "--snapshot-id", snapshot_id)

    failed = aws(server, "describe-snapshots", "--snapshot-ids", snapshot_id, check=False)
    assert failed.returncode != 0
    assert "InvalidSnapshot.NotFound" in failed.stderr
