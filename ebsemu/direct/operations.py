"""One small adapter per EBS direct API operation: parsed params in, output members out."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from ebsemu.direct.access import SHA256
from ebsemu.direct.reader import BlockPage
from ebsemu.direct.service import DirectService
from ebsemu.direct.writer import BlockPut, StartRequest
from ebsemu.model import BLOCK_SIZE
from ebsemu.service.context import RequestContext

Params = dict[str, Any]
Result = dict[str, Any]
Operation = Callable[[DirectService, RequestContext, Params], Awaitable[Result]]
OPERATIONS: dict[str, Operation] = {}


def operation(func: Operation) -> Operation:
    OPERATIONS[func.__name__.replace("_", " ").title().replace(" ", "")] = func
    return func


def _page(page: BlockPage) -> Result:
    return {
        "ExpiryTime": datetime.fromtimestamp(page.expires, UTC),
        "VolumeSize": page.volume_size,
        "BlockSize": BLOCK_SIZE,
        "NextToken": page.next_token,
    }


@operation
async def start_snapshot(svc: DirectService, ctx: RequestContext, p: Params) -> Result:
    request = StartRequest(
        volume_size=p["VolumeSize"],
        parent_snapshot_id=p.get("ParentSnapshotId"),
        description=p.get("Description"),
        tags=tuple((t.get("Key", ""), t.get("Value", "")) for t in p.get("Tags", [])),
        client_token=p.get("ClientToken"),
        encrypted=bool(p.get("Encrypted")),
        kms_key_arn=p.get("KmsKeyArn"),
        timeout_minutes=p.get("Timeout"),
    )
    snapshot, meta = await svc.writer.start(ctx, request)
    return {
        "Description": snapshot.description or None,
        "SnapshotId": snapshot.id,
        "OwnerId": snapshot.owner_id,
        "Status": snapshot.state.value,
        "StartTime": snapshot.start_time,
        "VolumeSize": snapshot.volume_size_gib,
        "BlockSize": BLOCK_SIZE,
        "Tags": [{"Key": k, "Value": v} for k, v in snapshot.tags.items()],
        "ParentSnapshotId": meta.parent_snapshot_id,
        "SseType": "none",
    }


@operation
async def put_snapshot_block(svc: DirectService, ctx: RequestContext, p: Params) -> Result:
    put = BlockPut(
        index=p["BlockIndex"],
        data=p["BlockData"],
        data_length=p["DataLength"],
        checksum=p["Checksum"],
        progress=p.get("Progress"),
    )
    checksum = await svc.writer.put_block(ctx, p["SnapshotId"], put)
    return {"Checksum": checksum, "ChecksumAlgorithm": SHA256}


@operation
async def complete_snapshot(svc: DirectService, ctx: RequestContext, p: Params) -> Result:
    state = await svc.writer.complete(
        ctx,
        p["SnapshotId"],
        p["ChangedBlocksCount"],
        p.get("Checksum"),
        p.get("ChecksumAlgorithm"),
        p.get("ChecksumAggregationMethod"),
    )
    return {"Status": state.value}


@operation
async def list_snapshot_blocks(svc: DirectService, ctx: RequestContext, p: Params) -> Result:
    blocks, page = await svc.reader.list_blocks(
        ctx, p["SnapshotId"], p.get("MaxResults"), p.get("NextToken"), p.get("StartingBlockIndex")
    )
    return {
        "Blocks": [{"BlockIndex": b.index, "BlockToken": b.token} for b in blocks],
        **_page(page),
    }


@operation
async def list_changed_blocks(svc: DirectService, ctx: RequestContext, p: Params) -> Result:
    changed, page = await svc.reader.list_changed(
        ctx,
        p.get("FirstSnapshotId"),
        p["SecondSnapshotId"],
        p.get("MaxResults"),
        p.get("NextToken"),
        p.get("StartingBlockIndex"),
    )
    return {
        "ChangedBlocks": [
            {
                "BlockIndex": c.index,
                "FirstBlockToken": c.first_token,
                "SecondBlockToken": c.second_token,
            }
            for c in changed
        ],
        **_page(page),
    }


@operation
async def get_snapshot_block(svc: DirectService, ctx: RequestContext, p: Params) -> Result:
    block = await svc.reader.get_block(ctx, p["SnapshotId"], p["BlockIndex"], p["BlockToken"])
    return {
        "DataLength": len(block.data),
        "BlockData": block.data,
        "Checksum": block.checksum,
        "ChecksumAlgorithm": SHA256,
    }
