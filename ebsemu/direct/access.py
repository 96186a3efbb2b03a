"""What the EBS direct API may do with a snapshot, and the errors and checksums it shares."""

from __future__ import annotations

import base64
import binascii
import hashlib

from ebsemu import errors
from ebsemu.model import BLOCK_SIZE, Snapshot, SnapshotState
from ebsemu.service.context import RequestContext
from ebsemu.service.core import Core

DIRECT_VOLUME_ID = "vol-ffffffff"  # what EC2 shows as the volume of such snapshots
BLOCKS_PER_GIB = 1024**3 // BLOCK_SIZE
SHA256 = "SHA256"
LINEAR = "LINEAR"


def validation(message: str, reason: str | None = "INVALID_PARAMETER_VALUE") -> errors.EbsError:
    return errors.ValidationException(message, reason)


def not_found(snapshot_id: str) -> errors.EbsError:
    return errors.ResourceNotFoundException(
        f"The snapshot '{snapshot_id}' does not exist.", "SNAPSHOT_NOT_FOUND"
    )


def checksum_of(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def decoded_checksum(text: str) -> bytes:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != hashlib.sha256().digest_size:
        raise validation("The checksum must be a Base64-encoded SHA256 digest (32 bytes).")
    return raw


def not_pending(snapshot_id: str, state: SnapshotState | None = None) -> errors.EbsError:
    shown = f"is {state.value}" if state is not None else "is no longer pending"
    return validation(
        f"The snapshot {snapshot_id} {shown}; blocks can only be written to, and completion "
        "asked of, a pending snapshot.",
        "INVALID_SNAPSHOT_ID",
    )


class SnapshotAccess:
    def __init__(self, core: Core) -> None:
        self._core = core

    @staticmethod
    def check_index(snapshot: Snapshot, index: int) -> None:
        blocks = snapshot.volume_size_gib * BLOCKS_PER_GIB
        if index >= blocks:
            raise validation(
                f"The block index {index} is beyond the end of the {snapshot.volume_size_gib} "
                f"GiB snapshot {snapshot.id} (blocks 0 to {blocks - 1})."
            )

    async def visible(self, ctx: RequestContext, snapshot_id: str) -> Snapshot:
        """A snapshot the caller owns or that is shared with its account (the EBS direct API
        does not read public snapshots); ResourceNotFoundException for any other id."""
        snapshot = await self._core.store.get_snapshot(snapshot_id)
        if snapshot is None or snapshot.region != ctx.region:
            raise not_found(snapshot_id)
        if snapshot.owner_id != ctx.account_id and ctx.account_id not in (
            await self._core.store.snapshot_grantees(snapshot_id)
        ):
            raise not_found(snapshot_id)
        return snapshot

    async def readable(self, ctx: RequestContext, snapshot_id: str) -> Snapshot:
        snapshot = await self.visible(ctx, snapshot_id)
        if snapshot.state is not SnapshotState.COMPLETED:
            raise validation(
                f"The snapshot {snapshot_id} is {snapshot.state.value}; only a completed "
                "snapshot can be read.",
                "INVALID_SNAPSHOT_ID",
            )
        return snapshot

    async def writable(self, ctx: RequestContext, snapshot_id: str) -> Snapshot:
        snapshot = await self.visible(ctx, snapshot_id)
        if snapshot.owner_id != ctx.account_id:
            raise not_found(snapshot_id)
        if await self._core.store.direct_meta(snapshot_id) is None:
            raise validation(
                f"The snapshot {snapshot_id} was not started with StartSnapshot; "
                "blocks can only be written to such snapshots.",
                "INVALID_SNAPSHOT_ID",
            )
        if snapshot.state is not SnapshotState.PENDING:
            raise not_pending(snapshot_id, snapshot.state)
        return snapshot
