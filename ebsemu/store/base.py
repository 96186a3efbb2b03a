"""The store interface the service core codes against, and its query types."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, Protocol, TypeVar

from ebsemu.fast_restore import FastRestore, FastRestoreState
from ebsemu.model import (
    Attachment,
    AttachmentState,
    Instance,
    Snapshot,
    SnapshotBlockPublicAccessState,
    SnapshotState,
    TagRecord,
    Volume,
    VolumeState,
)
from ebsemu.modification import ModificationState, VolumeModification, VolumeSettings
from ebsemu.snapshot_lock import SnapshotLock
from ebsemu.store.direct import DirectStore

T = TypeVar("T")

# How long a ClientToken stays bound after its volume is purged (EC2 keeps tokens for at
# least a day after the resource is gone).
TOKEN_RETENTION_SECONDS = 24 * 3600.0


class ClientTokenRetired(Exception):
    """A volume was to be inserted with a ClientToken whose volume was deleted and purged
    while the token is still remembered (TOKEN_RETENTION_SECONDS): nothing was inserted."""


class QuotaReached(Exception):
    """An insert given a ``limit`` would have taken the owner's volumes or snapshots in the
    region past it: nothing was inserted. Each such insert counts in its own transaction,
    after every other one of the same owner, region and kind (on every server instance
    sharing the database), so concurrent inserts never pass the limit together."""


class RestoreSourceGone(Exception):
    """A volume was to be inserted as a restore of a snapshot that is deleted (or being
    deleted, or was never recorded): nothing was inserted."""


class VolumeNotSnapshottable(Exception):
    """A snapshot or a copy (CopyVolumes) was to be inserted of a volume that is not available
    or in use (being deleted, say, through another server instance): nothing was inserted."""

    def __init__(self, volume_id: str) -> None:
        super().__init__(volume_id)
        self.volume_id = volume_id


class UnknownFilterError(ValueError):
    """A filter name the resource does not support."""


@dataclass(frozen=True)
class Filter:
    """One EC2 filter: values are ORed, may hold `*` and `?` wildcards (`\\` escapes)."""

    name: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class Reach:
    """Snapshots owned by one of ``owners`` (by anyone when None) that grant create-volume
    permission to one of ``grantees`` (an account id or ``all``; no grant needed when None).
    A grant to ``all`` counts only while the owner does not block all public sharing."""

    owners: frozenset[str] | None
    grantees: frozenset[str] | None = None


@dataclass(frozen=True)
class ListQuery:
    """What to list: one owner's resources in one region, by ids and filters, one page.

    For snapshots, ``reach`` (when not None) replaces ``owner_ids``: a snapshot is listed when
    it matches any one of them. ``viewer`` is the account asking: tag filters match only the
    tags it put on.
    """

    owner_ids: frozenset[str]
    region: str
    ids: tuple[str, ...] = ()
    filters: tuple[Filter, ...] = ()
    after_seq: int = 0
    limit: int | None = None
    reach: tuple[Reach, ...] | None = None
    viewer: str | None = None


@dataclass
class Page(Generic[T]):
    items: list[T]
    last_seq: int | None = None  # set when more items follow
    missing_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class AccountRecord:
    """An account and the ids of its access keys (never the secrets)."""

    id: str
    name: str
    created_at: float
    access_key_ids: tuple[str, ...] = ()


class AccountStore(Protocol):
    async def insert_account(self, account_id: str, name: str) -> bool:
        """Create the account; False if it exists already."""
        ...

    async def get_account(self, account_id: str) -> AccountRecord | None: ...
    async def list_accounts(self) -> list[AccountRecord]: ...
    async def put_access_key(self, account_id: str, access_key_id: str, secret: str) -> bool:
        """Add the key to the account (or set its secret if the account holds it already);
        False, changing nothing, when another account holds that key id."""
        ...

    async def delete_access_key(self, access_key_id: str) -> bool: ...
    async def access_key(self, access_key_id: str) -> tuple[str, str] | None:
        """(account id, secret) of an access key."""
        ...


@dataclass(frozen=True)
class VolumeIo:
    """A volume's autoEnableIO attribute and its open I/O incident, if any: the event
    DescribeVolumeStatus reports, and whether I/O stays disabled until EnableVolumeIO."""

    auto_enable_io: bool = False
    io_disabled: bool = False
    event_id: str | None = None
    event_description: str | None = None
    event_since: datetime | None = None


class VolumeIoStore(Protocol):
    async def volume_io(self, volume_ids: Sequence[str]) -> dict[str, VolumeIo]:
        """Each volume's record (the default one for a volume that has none)."""
        ...

    async def set_auto_enable_io(self, volume_id: str, value: bool) -> None: ...
    async def open_io_incident(
        self, volume_id: str, event_id: str, description: str, since: datetime
    ) -> VolumeIo:
        """Record an incident unless one is open; I/O is disabled with it unless the volume's
        autoEnableIO is set. Returns the record as it is now."""
        ...

    async def close_io_incident(self, volume_id: str) -> None:
        """Forget the open incident, unless I/O is disabled (then EnableVolumeIO must come
        first)."""
        ...

    async def enable_volume_io(self, volume_id: str) -> None: ...


@dataclass(frozen=True)
class Inventory:
    """What the store holds, counted (for /metrics)."""

    volumes: dict[str, int]  # by state
    snapshots: dict[str, int]  # by state
    jobs: dict[tuple[str, str], int]  # by (kind, state)


class InventoryStore(Protocol):
    async def inventory(self) -> Inventory: ...


@dataclass(frozen=True)
class EncryptionSettings:
    """An account's EBS encryption settings in one region."""

    by_default: bool = False
    kms_key_id: str | None = None  # a key ARN; None: the AWS managed key alias/aws/ebs


class EncryptionStore(Protocol):
    async def encryption_settings(self, account_id: str, region: str) -> EncryptionSettings: ...
    async def set_encryption_by_default(self, account_id: str, region: str, on: bool) -> None: ...
    async def set_default_kms_key(self, account_id: str, region: str, key: str | None) -> None: ...
    async def put_data_key(self, resource_id: str, wrapped_key: str) -> None:
        """Keep the resource's wrapped data key (replacing one it had)."""
        ...

    async def data_key(self, resource_id: str) -> str | None: ...
    async def drop_data_key(self, resource_id: str) -> None: ...


class ModificationStore(Protocol):
    async def begin_modification(self, modification: VolumeModification) -> bool:
        """Record a new modification, replacing the volume's previous one; False, changing
        nothing, while that one is still active (modifying or optimizing)."""
        ...

    async def get_modification(self, volume_id: str) -> VolumeModification | None: ...
    async def list_modifications(self, query: ListQuery) -> Page[VolumeModification]: ...
    async def set_modification_progress(self, volume_id: str, progress: int) -> None: ...
    async def apply_modification(
        self, volume_id: str, target: VolumeSettings, progress: int
    ) -> bool:
        """modifying -> optimizing and the volume takes ``target``, atomically."""
        ...

    async def finish_modification(
        self, volume_id: str, state: ModificationState, end_time: datetime, message: str | None
    ) -> bool: ...


class ReconcileStore(Protocol):
    """Bulk views of what the store holds, for reconciliation with the backends."""

    async def volume_states(self) -> dict[str, str]: ...
    async def snapshot_states(self) -> dict[str, tuple[str, bool]]: ...
    async def manifest_snapshots(self) -> set[str]: ...
    async def completed_digests(self) -> dict[bytes, set[str]]: ...
    async def all_attachments(self) -> list[Attachment]: ...
    async def all_instances(self) -> list[Instance]: ...


class StepStore(Protocol):
    """Each job's step log (see ebsemu.service.steps)."""

    async def record_step(self, job_id: int, step: str, outcome: str) -> None: ...
    async def job_steps(self, job_id: int) -> list[tuple[str, str]]: ...


class FastRestoreStore(Protocol):
    """Fast snapshot restores (ebsemu.service.fast_restores)."""

    async def begin_fast_restore(
        self, record: FastRestore, limit: int
    ) -> tuple[FastRestore, bool] | None: ...
    async def fast_restores_of(
        self, snapshot_id: str, account_id: str | None = None
    ) -> list[FastRestore]: ...
    async def transition_fast_restore(
        self,
        record: FastRestore,
        expected: Collection[FastRestoreState],
        new: FastRestoreState,
        reason: str,
        at: datetime,
    ) -> bool: ...
    async def list_fast_restores(self, query: ListQuery) -> Page[FastRestore]: ...


class PublicAccessStore(Protocol):
    """Block public access for snapshots (ebsemu.service.public_access)."""

    async def snapshot_block_public_access(
        self, account_id: str, region: str
    ) -> SnapshotBlockPublicAccessState:
        """The account's setting in the region (unblocked until one is set)."""
        ...

    async def set_snapshot_block_public_access(
        self, account_id: str, region: str, state: SnapshotBlockPublicAccessState
    ) -> None: ...
    async def effective_snapshot_grantees(self, snapshot_id: str) -> list[str]:
        """``snapshot_grantees`` in force: without ``all`` while the snapshot's owner blocks
        all public sharing in its region (the grant itself is kept)."""
        ...


LockChange = Callable[[SnapshotLock | None], SnapshotLock | None]


@dataclass(frozen=True)
class SnapshotDeletion:
    """What ``mark_snapshot_deleted`` did."""

    marked: bool  # this call marked the snapshot deleted (False: it was, or a lock kept it)
    kept_by: SnapshotLock | None = None  # the lock that protects the snapshot, if one does
    in_use_by: str | None = None  # a volume being created from the snapshot, if one is


class SnapshotLockStore(Protocol):
    """Snapshot locks (ebsemu.service.snapshot_locks); ``remove_snapshot`` drops a
    snapshot's lock with it."""

    async def change_snapshot_lock(self, snapshot_id: str, change: LockChange) -> bool:
        """Give ``change`` the snapshot's lock (None: it has none) and keep what it returns
        (None: no lock; a replaced lock keeps its place in listings), in one transaction that
        waits for every other change of this snapshot's lock and for ``mark_snapshot_deleted``
        of it, on every server instance sharing the database. An exception from ``change``
        changes nothing. False, without calling ``change``, when the snapshot is deleted."""
        ...

    async def get_snapshot_lock(self, snapshot_id: str) -> SnapshotLock | None: ...
    async def list_snapshot_locks(self, query: ListQuery, now: datetime) -> Page[SnapshotLock]: ...


class JobLeaseStore(Protocol):
    """How server instances sharing one database divide the jobs: each unfinished job is
    leased to one instance, which renews the lease while the job runs; a job whose lease ran
    out (its instance died) is claimed by another one."""

    shared: bool  # several server instances may use this database at once

    async def claim_jobs(self, running: Sequence[int] = ()) -> list[tuple[int, str, str, str]]:
        """Take the unfinished jobs nobody holds (never leased, lease run out, or held by an
        earlier run of this instance), except ``running`` (this instance runs them):
        (id, kind, resource id, payload JSON)."""
        ...

    async def renew_job_leases(self, job_ids: Sequence[int]) -> set[int]:
        """Extend this instance's leases of ``job_ids``; return the ids it still holds."""
        ...

    def exclusive(self, name: str) -> AbstractAsyncContextManager[None]:
        """Held by one server instance at a time (start-up reconciliation)."""
        ...


class Store(
    AccountStore,
    DirectStore,
    VolumeIoStore,
    InventoryStore,
    EncryptionStore,
    ModificationStore,
    ReconcileStore,
    StepStore,
    FastRestoreStore,
    PublicAccessStore,
    SnapshotLockStore,
    JobLeaseStore,
    Protocol,
):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def refresh_statistics(self) -> None:
        """Let the query planner see the tables' current shape (bounded work)."""
        ...

    # volumes
    async def insert_volume(self, volume: Volume) -> Volume:
        """Insert; on a ClientToken already used by the owner, return that volume instead
        (ClientTokenRetired if that volume was purged). A volume to be created from a snapshot
        is inserted in one transaction with a check that the snapshot is not deleted, which
        ``mark_snapshot_deleted`` waits for (RestoreSourceGone if it is). A copy of a volume
        (``source_volume_id``) holds its source's row as a snapshot's insert does
        (VolumeNotSnapshottable unless the source is available or in use)."""
        ...

    async def insert_volume_with_job(
        self, volume: Volume, kind: str | None, payload: str = "{}", *, limit: int | None = None
    ) -> tuple[Volume, int | None]:
        """``insert_volume`` and the intent record of job ``kind`` in one transaction; the job
        id is None when a ClientToken already used returned an existing volume.
        ClientTokenRetired when the token's volume was purged, RestoreSourceGone when the
        snapshot it is to be created from is deleted, VolumeNotSnapshottable when the volume
        it copies is not available or in use, QuotaReached past ``limit``."""
        ...

    async def get_volume(self, volume_id: str) -> Volume | None: ...
    async def list_volumes(self, query: ListQuery) -> Page[Volume]: ...
    async def transition_volume(
        self,
        volume_id: str,
        expected: set[VolumeState],
        new: VolumeState,
        message: str | None = None,
    ) -> bool:
        """Compare-and-set the volume's state. False if it was not in ``expected``."""
        ...

    async def transition_volume_closing_job(
        self,
        volume_id: str,
        expected: set[VolumeState],
        new: VolumeState,
        job_id: int | None,
        steps_done: Sequence[str],
    ) -> bool:
        """``transition_volume`` (clearing the state message) and, in the same transaction,
        log ``steps_done`` done for job ``job_id`` and mark the job done: a job's last write.
        Not for a transition to `deleted` (the owner's volume count is kept by the other)."""
        ...

    async def find_volume_by_token(self, owner_id: str, token: str) -> Volume | None: ...
    async def retired_token_volume(self, owner_id: str, token: str) -> str | None:
        """The id of the purged volume a ClientToken created, while the token is remembered."""
        ...

    async def client_token_use(self, owner_id: str, token: str) -> tuple[Volume | None, str | None]:
        """``find_volume_by_token``, and when it finds none ``retired_token_volume``: one
        read."""
        ...

    async def count_volumes(self, owner_id: str, region: str) -> int:
        """The owner's volumes in ``region`` not deleted (the volume quota is per region)."""
        ...

    async def purge_deleted_volumes(self, before: float) -> list[str]:
        """Forget volumes deleted before ``before``; their ClientTokens are kept for
        TOKEN_RETENTION_SECONDS (see ``retired_token_volume``)."""
        ...

    # snapshots
    async def insert_snapshot(self, snapshot: Snapshot) -> None: ...
    async def insert_snapshot_with_job(
        self, snapshot: Snapshot, kind: str, payload: str = "{}", *, limit: int | None = None
    ) -> int:
        """``insert_snapshot`` and the intent record of job ``kind`` in one transaction; the
        job's id. QuotaReached past ``limit``; VolumeNotSnapshottable unless the snapshot's
        volume is available or in use, its row held until the transaction ends (so that on
        every server instance its deletion begins either before, and the insert fails, or
        after, and sees the snapshot)."""
        ...

    async def insert_snapshots(
        self, snapshots: Sequence[Snapshot], *, limit: int | None = None
    ) -> None:
        """Insert several snapshots of one owner and region (with their tags) in one
        transaction. QuotaReached past ``limit``; VolumeNotSnapshottable as for
        ``insert_snapshot_with_job``."""
        ...

    async def insert_snapshot_copy(
        self, snapshot: Snapshot, source_id: str, *, limit: int | None = None
    ) -> bool:
        """Insert ``snapshot`` with a copy of the manifest of ``source_id`` (its block rows,
        no block data), in one transaction. False, inserting nothing, unless the source is a
        completed snapshot not being deleted. QuotaReached past ``limit``."""
        ...

    async def get_snapshot(self, snapshot_id: str) -> Snapshot | None: ...
    async def list_snapshots(self, query: ListQuery) -> Page[Snapshot]: ...
    async def transition_snapshot(
        self,
        snapshot_id: str,
        expected: set[SnapshotState],
        new: SnapshotState,
        message: str | None = None,
    ) -> bool: ...
    async def set_snapshot_progress(self, snapshot_id: str, progress: int) -> None: ...
    async def complete_snapshot(self, snapshot_id: str, full_size_bytes: int) -> bool: ...
    async def complete_snapshot_closing_job(
        self,
        snapshot_id: str,
        full_size_bytes: int,
        job_id: int | None,
        steps_done: Sequence[str],
    ) -> bool:
        """``complete_snapshot`` and, in the same transaction, log ``steps_done`` done for job
        ``job_id`` and close the job (even when the snapshot was no longer pending)."""
        ...

    async def mark_snapshot_deleted(self, snapshot_id: str, now: datetime) -> SnapshotDeletion:
        """Mark the snapshot deleted unless its lock protects it at ``now`` or a volume is
        being created from it, judged in one transaction that waits for every change of its
        lock (``change_snapshot_lock``) and every insert of a volume from it, on every server
        instance sharing the database."""
        ...

    async def deleted_snapshots(self) -> list[str]: ...
    async def remove_snapshot(self, snapshot_id: str) -> None:
        """Drop a snapshot's row, tags and manifest."""
        ...

    async def count_snapshots(self, owner_id: str, region: str) -> int:
        """The owner's snapshots in ``region`` not deleted (the snapshot quota is per
        region)."""
        ...

    async def latest_completed_snapshot(self, volume_id: str) -> str | None:
        """The id of the volume's newest completed snapshot not being deleted, if any."""
        ...

    async def copies_in_progress(self, volume_id: str) -> list[str]:
        """The ids of the volumes being created (CopyVolumes) as copies of the volume."""
        ...

    async def pending_snapshots(self, volume_id: str) -> list[str]:
        """The ids of the volume's snapshots still pending, not being deleted."""
        ...

    # storage hosts
    async def snapshot_storage_host(self, snapshot_id: str) -> str | None:
        """The storage host holding a snapshot's frozen view (deleted snapshots included)."""
        ...

    async def storage_hosts_in_use(self) -> dict[str, list[str]]:
        """Storage host -> ids of the volumes not deleted and snapshots not removed on it."""
        ...

    # create-volume permissions of snapshots
    async def snapshot_grantees(self, snapshot_id: str) -> list[str]:
        """Account ids and groups (``all``) that may create volumes from the snapshot."""
        ...

    async def change_snapshot_grantees(
        self, snapshot_id: str, add: Sequence[str], remove: Sequence[str]
    ) -> None:
        """Grant ``add``, then revoke ``remove``, in one transaction."""
        ...

    async def clear_snapshot_grantees(self, snapshot_id: str) -> None: ...

    # manifests
    async def add_manifest_rows(
        self, snapshot_id: str, rows: Sequence[tuple[int, bytes]]
    ) -> list[bytes]:
        """Add rows to a snapshot's manifest, replacing those of the same indexes; return the
        digests of replaced rows that no manifest references any more (a manifest seeded with
        an earlier snapshot's rows whose snapshot was deleted meanwhile held the only ones)."""
        ...

    async def copy_manifest(self, source_id: str, snapshot_id: str) -> None:
        """Give ``snapshot_id`` every row of ``source_id``'s manifest (in the store, not
        through the caller: a large volume's manifest has millions of rows)."""
        ...

    async def clear_manifest(self, snapshot_id: str) -> list[bytes]:
        """Drop a snapshot's manifest; return the digests no manifest references any more."""
        ...

    async def remove_manifest_rows(self, snapshot_id: str, indexes: Sequence[int]) -> list[bytes]:
        """Drop some rows of a snapshot's manifest; return the digests no manifest references
        any more."""
        ...

    async def manifest(self, snapshot_id: str) -> list[tuple[int, bytes]]: ...
    async def manifest_block_count(self, snapshot_id: str) -> int: ...
    async def referenced(self, digests: Sequence[bytes]) -> set[bytes]: ...

    # tags
    async def set_tags(
        self, resources: Sequence[tuple[str, str]], owner_id: str, tags: dict[str, str]
    ) -> None: ...
    async def delete_tags(
        self, resource_ids: Sequence[str], tags: Sequence[tuple[str, str | None]]
    ) -> None: ...
    async def tag_count(self, resource_id: str) -> int: ...
    async def list_tags(self, query: ListQuery) -> Page[TagRecord]: ...

    # jobs (intent records)
    async def start_job(self, kind: str, resource_id: str, payload: str = "{}") -> int: ...
    async def finish_job(self, job_id: int, error: str | None = None) -> None: ...
    async def stranded(self) -> list[tuple[str, str, str]]:
        """(job kind, resource id, payload JSON) of transitional resources without a job."""
        ...

    async def unfinished_jobs(self) -> list[tuple[int, str, str, str]]: ...

    # instances and attachments
    async def sync_instances(self, vmm: str, seen: Sequence[Instance]) -> list[str]:
        """Record a VMM host's domains; return ids of instances gone since (terminated)."""
        ...

    async def get_instance(self, instance_id: str) -> Instance | None: ...
    async def list_instances(self, query: ListQuery) -> Page[Instance]: ...
    async def attachments_of_instances(
        self, instance_ids: Sequence[str]
    ) -> dict[str, list[Attachment]]: ...
    async def get_attachment(self, volume_id: str, instance_id: str) -> Attachment | None: ...
    async def begin_attach(self, attachment: Attachment, *, most: int = 1) -> bool:
        """Volume `available` -> `in-use` with the attachment recorded, or neither. A
        Multi-Attach volume `in-use` with fewer than ``most`` attachments, none of them to the
        attachment's instance, takes it too."""
        ...

    async def transition_attachment(
        self,
        volume_id: str,
        instance_id: str,
        expected: set[AttachmentState],
        new: AttachmentState,
        handle: str | None = None,
    ) -> bool: ...
    async def finish_detach(self, volume_id: str, instance_id: str) -> None: ...
    async def abort_attach(self, volume_id: str, instance_id: str) -> None: ...
    async def set_delete_on_termination(
        self, instance_id: str, device: str, value: bool
    ) -> bool: ...

    # export records (they hold CHAP secrets: the database is readable by the service only)
    async def save_export(self, volume_id: str, record: str) -> None: ...
    async def drop_export(self, volume_id: str) -> None: ...
    async def exports(self) -> list[str]: ...
    async def attached_volume_ids(self) -> set[str]: ...
