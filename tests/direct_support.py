"""Helpers for the EBS direct API tests: checksums, block puts, error details, volume bytes."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests import volume_data
from tests.server import ServerProcess

BLOCK = 512 * 1024


def checksum(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def linear_checksum(blocks: Mapping[int, bytes]) -> str:
    """AWS's LINEAR aggregate: SHA-256 over the blocks' SHA-256 digests in index order."""
    joined = b"".join(hashlib.sha256(blocks[i]).digest() for i in sorted(blocks))
    return base64.b64encode(hashlib.sha256(joined).digest()).decode()


def put(ebs: Any, snapshot_id: str, index: int, data: bytes, **extra: Any) -> Any:
    params: dict[str, Any] = {
        "SnapshotId": snapshot_id,
        "BlockIndex": index,
        "BlockData": data,
        "DataLength": len(data),
        "Checksum": checksum(data),
        "ChecksumAlgorithm": "SHA256",
    }
    params.update(extra)
    return ebs.put_snapshot_block(**params)


def upload(ebs: Any, blocks: Mapping[int, bytes], **start: Any) -> str:
    """StartSnapshot, a put of every block, CompleteSnapshot with its LINEAR checksum."""
    start.setdefault("VolumeSize", 1)
    snapshot_id: str = ebs.start_snapshot(**start)["SnapshotId"]
    for index, data in blocks.items():
        put(ebs, snapshot_id, index, data)
    ebs.complete_snapshot(
        SnapshotId=snapshot_id,
        ChangedBlocksCount=len(blocks),
        Checksum=linear_checksum(blocks),
        ChecksumAlgorithm="SHA256",
        ChecksumAggregationMethod="LINEAR",
    )
    return snapshot_id


@dataclass(frozen=True)
class Refusal:
    code: str
    message: str
    reason: str | None
    status: int
    error_type: str  # the x-amzn-ErrorType header


def refusal(call: Callable[..., Any], /, *args: Any, **params: Any) -> Refusal:
    """Call a boto3 `ebs` operation (or a helper making one) that must fail."""
    with pytest.raises(ClientError) as caught:
        call(*args, **params)
    response = caught.value.response
    return Refusal(
        response["Error"]["Code"],
        response["Error"]["Message"],
        response.get("Reason"),
        response["ResponseMetadata"]["HTTPStatusCode"],
        response["ResponseMetadata"]["HTTPHeaders"]["x-amzn-errortype"],
    )


def random_blocks(indexes: Iterable[int]) -> dict[int, bytes]:
    return {index: os.urandom(BLOCK) for index in indexes}


def write_blocks(server: ServerProcess, volume_id: str, blocks: Mapping[int, bytes]) -> None:
    """Write whole blocks into a volume, as a guest would (either backend)."""
    volume_data.write_blocks(server, volume_id, dict(blocks))


def read_blocks(server: ServerProcess, volume_id: str, indexes: Iterable[int]) -> dict[int, bytes]:
    return volume_data.read_blocks(server, volume_id, list(indexes))
