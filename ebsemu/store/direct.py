"""What the EBS direct API keeps beside an EC2 snapshot: the store interface and its records."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ebsemu.model import Snapshot


@dataclass(frozen=True)
class DirectMeta:
    """A snapshot written through the EBS direct API (StartSnapshot)."""

    snapshot_id: str
    owner_id: str
    parent_snapshot_id: str | None
    client_token: str | None
    request_digest: str
    timeout_minutes: int
    last_activity: float  # time.time() of StartSnapshot or of the latest block put


@dataclass(frozen=True)
class ChangedRow:
    """One block index where two manifests differ; None where a manifest has no block."""

    index: int
    first: bytes | None
    second: bytes | None


class DirectStore(Protocol):
    async def direct_key(self, name: str, fresh: bytes) -> bytes:
        """The secret stored under ``name``; ``fresh`` is stored and returned if none is."""
        ...

    async def start_direct_snapshot(
        self, snapshot: Snapshot, meta: DirectMeta, *, limit: int | None = None
    ) -> str:
        """Insert the pending snapshot, its tags and its direct record, and copy the parent's
        manifest into it, in one transaction. Returns the id of the snapshot the owner's
        ClientToken already names instead, if it does (nothing is inserted then).
        QuotaReached past ``limit`` (see ``Store.insert_snapshot_with_job``)."""
        ...

    async def direct_meta(self, snapshot_id: str) -> DirectMeta | None: ...
    async def direct_snapshot_by_token(self, owner_id: str, token: str) -> str | None: ...
    async def put_direct_block(
        self, snapshot_id: str, index: int, digest: bytes
    ) -> list[bytes] | None:
        """Record a block put into a pending direct snapshot: its manifest row (none for an
        all-zero block, which is a hole) and the put itself. The digest of the row it replaced
        if no manifest references it any more (an earlier put at that index, or the parent's
        row once the parent is deleted), to be freed; None, changing nothing, when the
        snapshot is no longer pending."""
        ...

    async def direct_written(self, snapshot_id: str) -> list[tuple[int, bytes]]:
        """(index, SHA-256 of the data put) of each block put, by index."""
        ...

    async def finish_direct_snapshot(self, snapshot_id: str, full_size_bytes: int) -> bool:
        """pending -> completed (progress 100%), forgetting the puts. False if not pending."""
        ...

    async def manifest_page(
        self, snapshot_id: str, start: int, limit: int
    ) -> list[tuple[int, bytes]]: ...
    async def changed_page(
        self, first_id: str | None, second_id: str, start: int, limit: int
    ) -> list[ChangedRow]:
        """Indexes from ``start`` where the manifests differ by digest (every block of the
        second one when ``first_id`` is None), at most ``limit``, by index."""
        ...

    async def overdue_direct_snapshots(self, now: float, minute_seconds: float) -> list[str]:
        """Pending direct snapshots whose timeout (in minutes of ``minute_seconds``) has run
        out since their last activity."""
        ...

    async def manifest_rows(self, snapshot_id: str, indexes: Sequence[int]) -> dict[int, bytes]: ...
