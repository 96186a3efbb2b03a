"""The roles a backend can play, as Protocols. The service composes them; none inherits another.

Control-path methods are coroutines. Data-path methods (reading a frozen view, writing restored
blocks, putting and getting snapshot blocks) are plain functions that do blocking file I/O: the
service runs them in worker threads, never on the event loop.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

# A block's bytes: a memoryview where a source reads them in place (backends.mapped_blocks).
BlockBytes = bytes | memoryview


@runtime_checkable
class SnapshotSource(Protocol):
    """A point-in-time view of a volume's bytes, read block by block (512 KiB blocks)."""

    @property
    def size_bytes(self) -> int: ...

    def iter_blocks(self, start_index: int = 0) -> Iterator[tuple[int, BlockBytes]]:
        """Yield (block index, 512 KiB of data) in index order from ``start_index`` on,
        skipping blocks that are holes or all zeros."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class StorageBackend(Protocol):
    """Where volumes' bytes live (file, lvm, rbd)."""

    async def check_setup(self) -> None:
        """Raise SetupError with a clear message if this host cannot serve the backend."""
        ...

    async def create(self, volume_id: str, size_bytes: int) -> None:
        """Create an empty (all-zero) volume. Idempotent: an existing one of that size is kept."""
        ...

    async def delete(self, volume_id: str) -> None:
        """Remove the volume and free its space. Idempotent: an absent volume is not an error."""
        ...

    async def extend(self, volume_id: str, size_bytes: int, *, one_device: bool = False) -> None:
        """Grow the volume to ``size_bytes``; the new space reads as zeros. With ``one_device``
        (the volume is attached: a VMM has its file or device open), a size the volume could
        not keep being reached at as one file or device is refused with CapacityError, and
        nothing changes."""
        ...

    async def list_volumes(self) -> list[str]:
        """Ids of every volume this backend holds (for reconciliation)."""
        ...

    async def freeze(self, volume_id: str, view_id: str) -> None:
        """Make a durable point-in-time view of the volume, named ``view_id``. Must be fast enough
        to run inside the API call (reflink clone, LVM/RBD snapshot, sparse copy)."""
        ...

    def open_view(self, view_id: str) -> SnapshotSource:
        """Open a frozen view for reading (blocking)."""
        ...

    async def drop_view(self, view_id: str) -> None:
        """Remove a frozen view. Idempotent."""
        ...

    async def list_views(self) -> list[str]:
        """Ids of every frozen view that exists (for reconciliation)."""
        ...

    def write_blocks(self, volume_id: str, blocks: Iterable[tuple[int, bytes]]) -> None:
        """Write (block index, data) pairs into an existing volume and make them durable
        (blocking). Blocks not written stay holes."""
        ...

    def free_bytes(self) -> int:
        """Bytes the backend can still store (for capacity checks before a restore)."""
        ...

    def device_path(self, volume_id: str) -> str:
        """Path of the volume as one block device or raw file, for export and attach."""
        ...

    async def health(self, sizes: Mapping[str, int]) -> dict[str, str]:
        """Check that each volume's storage exists with its size (``sizes``: volume id ->
        bytes). Returns what is wrong with each volume that fails, by id; a healthy volume is
        left out. One call checks many volumes (one listing of the host, not one per volume).
        """
        ...


@runtime_checkable
class EncryptingStorage(Protocol):
    """A storage backend that can keep volumes encrypted at rest (LUKS images, see
    backends/luks.py). Its other methods see such a volume's file as it is: ciphertext."""

    def encryption_unavailable(self) -> str | None:
        """None when ``create_encrypted`` works on this host; otherwise why it does not."""
        ...

    async def create_encrypted(
        self, volume_id: str, size_bytes: int, passphrase: str | None
    ) -> None:
        """Create a volume of ``size_bytes`` as a LUKS image whose key slot opens with
        ``passphrase``. With None, leave its file all zeros, for a restore that writes a whole
        image (header included) into it. Idempotent as ``create``."""
        ...


@runtime_checkable
class ChangedBlocksSource(Protocol):
    """A SnapshotSource that can also read only what changed since an earlier view of the same
    volume (``base_view_id``, which the backend still holds): the snapshot's manifest is then
    the base snapshot's with these blocks laid over it."""

    @property
    def base_view_id(self) -> str | None: ...

    def changed_blocks(self) -> Iterator[tuple[int, bytes]]:
        """(block index, 512 KiB) of every block that differs from the base view, in index
        order, all-zero blocks included (they replace the base's)."""
        ...


@dataclass(frozen=True)
class BlockDigests:
    """What a completed snapshot holds: the SHA-256 of each of its non-zero 512 KiB blocks, by
    block index (a block without a digest is zeros)."""

    snapshot_id: str
    digests: Mapping[int, bytes]


@runtime_checkable
class DigestFreezer(Protocol):
    """A StorageBackend whose freeze copies a volume's data (no reflink on its filesystem),
    and which can instead freeze only the blocks that differ from an earlier snapshot's."""

    async def freezes_by_copy(self) -> bool:
        """True when ``freeze`` would copy the volume's data rather than share it."""
        ...

    async def freeze_changes(self, volume_id: str, view_id: str, base: BlockDigests) -> bool:
        """Freeze the volume as a view holding only the blocks whose bytes differ from
        ``base``: each block is read and hashed, and only the changed ones are copied. The
        snapshot's manifest must already hold ``base``'s rows; the view reads back as a
        ``SeededChangesSource``. True once the view exists (idempotent as ``freeze``). False
        when no block differs: no view is made, as ``base``'s rows are the whole snapshot."""
        ...


@runtime_checkable
class SeededChangesSource(Protocol):
    """A view frozen by ``DigestFreezer.freeze_changes``: it holds only the blocks that differ
    from the snapshot its manifest was seeded with, and cannot be read whole."""

    @property
    def seeded_from(self) -> str:
        """The snapshot whose manifest rows the new snapshot's manifest started as."""
        ...

    def changed_blocks(self) -> Iterator[tuple[int, bytes]]:
        """(block index, 512 KiB) of every block that differs from ``seeded_from``, in index
        order, all-zero blocks included (they replace its rows)."""
        ...


@runtime_checkable
class ViewKeeper(Protocol):
    """A StorageBackend that keeps a captured view as the base of the volume's next one."""

    async def keep_view(self, view_id: str) -> None:
        """Called instead of drop_view once the view's snapshot has completed; drop_view
        removes it later (when the snapshot is deleted)."""
        ...


@runtime_checkable
class VolumeCopier(Protocol):
    """A StorageBackend that copies a volume into a new one at one instant (CopyVolumes)."""

    async def copy_volume(self, source_id: str, copy_id: str) -> None:
        """Create ``copy_id`` holding ``source_id``'s bytes, fast enough to run inside the API
        call, as ``freeze`` is (a reflink clone, a sparse copy); nothing is made on failure.
        Idempotent: an existing ``copy_id`` is kept."""
        ...


@runtime_checkable
class ViewCloner(Protocol):
    """A StorageBackend that can make a volume from a view it still holds, without copying."""

    async def clone_from_view(self, view_id: str, volume_id: str, size_bytes: int) -> bool:
        """Create the volume as a copy-on-write clone of the view, grown to ``size_bytes``.
        Returns False (having done nothing) when the view is not held here."""
        ...


@runtime_checkable
class FastRestoreKeeper(Protocol):
    """A ViewCloner that can keep a captured view for clones while fast snapshot restores of
    its snapshot are enabled (later views of the volume do not replace it)."""

    async def keep_for_fast_restores(self, view_id: str) -> bool | None:
        """True once the view is kept for clones; False when it is no longer held here (no
        clone path); None when it cannot be kept yet (ask again)."""
        ...

    async def release_fast_restores(self, view_id: str) -> None:
        """Stop keeping the view for fast restores (drop_view still removes it). Idempotent."""
        ...


@runtime_checkable
class BlockStore(Protocol):
    """Snapshot blocks addressed by SHA-256, stored once (blocking methods)."""

    def put(self, digest: bytes, data: BlockBytes) -> bool:
        """Store a block under its digest. Returns True if it was written, False if present."""
        ...

    def get(self, digest: bytes) -> bytes:
        """Return the block; raise CorruptBlockError if its bytes do not hash to ``digest``,
        MissingBlockError if absent."""
        ...

    def contains(self, digest: bytes) -> bool: ...

    def delete(self, digest: bytes) -> None:
        """Remove a block. Idempotent."""
        ...

    def flush(self) -> None:
        """Make every block put so far durable (fsync; then the index commit, if any)."""
        ...

    def iter_digests(self) -> Iterator[bytes]:
        """Every digest stored (for garbage collection and reconciliation)."""
        ...

    def stored_bytes(self) -> int:
        """Bytes the stored blocks take."""
        ...

    def remove_temp_files(self) -> int:
        """Remove what interrupted puts left behind; call at start-up only. Returns the count."""
        ...

    def check_setup(self) -> None:
        """Raise SetupError saying what is missing when blocks cannot be stored (start-up and
        ``ebsemu check-host``)."""
        ...


@runtime_checkable
class BatchDeletingBlockStore(Protocol):
    """A BlockStore that deletes many blocks for the cost of one (one index commit)."""

    def delete_many(self, digests: Iterable[bytes]) -> None:
        """Remove blocks, as ``delete`` does each. Idempotent."""
        ...


NewBlock = tuple[bytes, BlockBytes, tuple[int, int] | None]  # (digest, data, (fd, offset) or None)


@runtime_checkable
class BatchPuttingBlockStore(Protocol):
    """A BlockStore that stores many blocks for the cost of a few calls, and can store a block
    by sharing a file's extents (reflink)."""

    def put_many(self, blocks: Sequence[NewBlock]) -> int:
        """``put`` each (digest, data, None). For (digest, data, (fd, offset)), ``data`` are
        the bytes at ``offset`` of the file open as ``fd``, which nothing changes meanwhile: the
        store may share that range's extents instead of writing the bytes. Returns how many
        blocks were written (none that were stored already)."""
        ...


@runtime_checkable
class BlockLocator(Protocol):
    """A SnapshotSource whose blocks are ranges of files it holds open and that nothing
    changes while it is open (a frozen view's files)."""

    def block_location(self, index: int) -> tuple[int, int]:
        """(file descriptor, byte offset) of block ``index``, valid until the source closes."""
        ...


FileRange = tuple[str, int]  # (path of a file, byte offset) where a block's bytes lie
LocatedBlock = tuple[int, bytes, FileRange | None]  # (block index, data, where data lies)


@runtime_checkable
class RangeReadingBlockStore(Protocol):
    """A BlockStore that can say which file range holds the bytes of a block it returns."""

    def get_located(self, digest: bytes) -> tuple[bytes, FileRange | None]:
        """``get``, and the range of a file that holds exactly the bytes returned (None if no
        file does). Those bytes do not change for as long as the block stays stored."""
        ...


@runtime_checkable
class RangeCloningWriter(Protocol):
    """A StorageBackend that can fill a volume's blocks by sharing extents (reflink)."""

    def write_located_blocks(self, volume_id: str, blocks: Iterable[LocatedBlock]) -> None:
        """``write_blocks``; a block given with the file range that holds its bytes may share
        that range's extents instead of being written (where both files are on one filesystem
        that can). The range must not change until this returns."""
        ...


class DomainState(enum.StrEnum):
    """A VMM domain's state, named as EC2 names instance states."""

    PENDING = "pending"
    RUNNING = "running"
    SHUTTING_DOWN = "shutting-down"
    TERMINATED = "terminated"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True)
class Domain:
    """One VMM domain (an instance) as its VMM reports it."""

    name: str
    state: DomainState


@dataclass(frozen=True)
class LocalSource:
    """A volume reachable on the VMM host as a raw file or a block device."""

    path: str


@dataclass(frozen=True)
class IscsiSource:
    """A volume exported over iSCSI; the VMM host logs in (with CHAP when a user is given)."""

    portal: str
    iqn: str
    lun: int
    chap_user: str | None = None
    chap_secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class RbdSource:
    """A volume that is a Ceph RBD image."""

    pool: str
    image: str
    conf: str | None = None
    user: str | None = None
    key: str | None = field(default=None, repr=False)


DiskSource = LocalSource | IscsiSource | RbdSource


@runtime_checkable
class DiskSourceProvider(Protocol):
    """A StorageBackend whose volumes a VMM host reaches by itself (RBD over librbd), without
    an export backend."""

    def disk_source(self, volume_id: str) -> DiskSource: ...


@dataclass(frozen=True)
class LuksKey:
    """How to open a volume kept encrypted at rest as a LUKS image (see backends/luks.py): the
    passphrase of its key slot (ASCII text) and the length of the image (header + ciphertext); the
    source may be longer (zero padding), which a reader must not show."""

    passphrase: str = field(repr=False)
    image_bytes: int


@dataclass(frozen=True)
class AttachSpec:
    """What to attach: the volume, the device name asked for (/dev/sdf, /dev/xvdf), where its
    bytes are, and for a volume encrypted at rest the key to open it with.

    ``shared``: a Multi-Attach volume, which other domains may hold at the same time, each
    writing: the VMM must not lock them out (QEMU's ``share-rw``, libvirt's ``<shareable/>``).
    Keeping the data consistent is then the guests' business (a cluster file system)."""

    volume_id: str
    device: str
    source: DiskSource
    luks: LuksKey | None = None
    shared: bool = False


@dataclass(frozen=True)
class AttachedDisk:
    """A volume attached to a domain, as the VMM reports it.

    ``device`` is the device name the attachment was made with, when the VMM keeps it (None
    otherwise); ``handle`` is the VMM's own name for the disk (QEMU device id, libvirt target,
    Xen virtual device, loop device); ``source`` is the host path the VMM opened, when known.
    """

    volume_id: str
    device: str | None
    handle: str
    source: str | None = None


@runtime_checkable
class VmmBackend(Protocol):
    """A hypervisor (or the host itself) whose domains volumes attach to.

    ``shares_disks``: whether the VMM can attach a volume that other domains hold at the same
    time (``AttachSpec.shared``, for Multi-Attach)."""

    shares_disks: bool

    async def check_setup(self) -> None:
        """Raise SetupError with a clear message if this host cannot serve the VMM."""
        ...

    async def list_domains(self) -> list[Domain]:
        """Every domain the VMM knows, with its state."""
        ...

    async def attach(self, domain: str, spec: AttachSpec) -> AttachedDisk:
        """Hot-plug the volume into the running domain. Idempotent when the volume is already
        attached there under the same device name. Whatever a failed attach did is undone."""
        ...

    async def detach(self, domain: str, volume_id: str, *, force: bool = False) -> None:
        """Hot-unplug the volume and wait until the VMM has released it. Idempotent: a volume
        not attached is not an error. A domain that no longer exists raises DomainNotFound,
        unless ``force``, which then counts the volume as detached."""
        ...

    async def list_attached(self, domain: str) -> list[AttachedDisk]:
        """The volumes attached to the domain now (for reconciliation)."""
        ...

    async def notify_resize(self, domain: str, volume_id: str, size_bytes: int) -> None:
        """Tell the VMM that an attached volume grew to ``size_bytes``."""
        ...

    async def pause(self, domain: str) -> bool:
        """Stop the domain's virtual CPUs, so that it issues no new I/O, for taking views of
        several volumes at one instant (CreateSnapshots). Returns True when this call paused
        the domain: ``resume`` must then follow, whatever happens meanwhile. Returns False when
        nothing was paused: the domain was paused already (it stays so), or the VMM cannot
        pause it (the host itself)."""
        ...

    async def resume(self, domain: str) -> None:
        """Let a domain paused by ``pause`` run again. A running domain is not an error."""
        ...


@runtime_checkable
class LuksOpener(Protocol):
    """A VMM that opens LUKS-encrypted volumes itself (``AttachSpec.luks``): the guest sees the
    plaintext, the host and the export path only ciphertext. A VMM that is not one must not
    be handed an encrypted volume."""

    def opens_luks(self) -> bool: ...


@dataclass(frozen=True)
class Initiator:
    """The host a volume is exported to, as the target sees it: its network address and/or its
    iSCSI initiator name (IQN). At least one is given."""

    address: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if not (self.address or self.name):
            raise ValueError("an initiator needs an address or an initiator name")


@dataclass(frozen=True)
class ExportInfo:
    """A volume exported to one host: what backs it and how that host reaches it (``source``,
    which goes into the AttachSpec). The caller keeps it (it may hold a CHAP secret: store it
    where only the service can read it) and hands it back to ``ExportBackend.restore``."""

    volume_id: str
    device_path: str
    initiator: Initiator
    source: DiskSource


@runtime_checkable
class ExportBackend(Protocol):
    """Makes a volume's device reachable from the host its VMM runs on (tgt over iSCSI, or
    ``none`` when storage and VMM share a host)."""

    async def check_setup(self) -> None:
        """Raise SetupError with a clear message if this host cannot serve the exports."""
        ...

    async def export(self, volume_id: str, device_path: str, initiator: Initiator) -> ExportInfo:
        """Export the volume's device to ``initiator`` only. Idempotent: exporting again to the
        same initiator returns the same ExportInfo (same credentials). Whatever a failed first
        export did is undone."""
        ...

    async def unexport(self, volume_id: str) -> None:
        """Remove the export and its credentials. Idempotent: an absent export is not an
        error."""
        ...

    async def list_exports(self) -> list[str]:
        """Ids of every volume this backend holds an export (or a record of one) for; the
        reconciler unexports those whose volume is not in use."""
        ...

    async def refresh_size(self, volume_id: str) -> None:
        """Make the export present the volume's current size, after the storage grew it, so
        an initiator that re-reads the capacity sees the new one. Idempotent: an absent
        export is not an error."""
        ...

    async def restore(self, exports: Iterable[ExportInfo]) -> list[str]:
        """Put each recorded export back in effect exactly as recorded (same target, same
        credentials), e.g. after the target daemon restarted. Exports not named are left alone;
        an export already in effect as recorded is not touched. Returns the ids of the exports
        that had to be re-applied."""
        ...

    async def health(self, volume_ids: Sequence[str]) -> dict[str, str]:
        """Check that each volume's export is in effect (the target serves the volume's device
        and admits its initiator). Returns what is wrong with each export that fails, by volume
        id; a healthy one is left out."""
        ...
