"""Domain records shared by the service core and the store.

Enum values are botocore's wire values, so a record's state can be serialized as it is.
"""

from __future__ import annotations

import enum
import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime

GIB = 1024**3
BLOCK_SIZE = 512 * 1024  # EBS snapshot block size, bytes
# An all-zero block, and its digest: such a block is a hole, never a manifest row.
ZERO_BLOCK = bytes(BLOCK_SIZE)
ZERO_DIGEST = hashlib.sha256(ZERO_BLOCK).digest()
COPY_VOLUME_ID = "vol-ffffffff"  # the VolumeId EC2 gives a snapshot copy


class VolumeState(enum.StrEnum):
    CREATING = "creating"
    AVAILABLE = "available"
    IN_USE = "in-use"
    DELETING = "deleting"
    DELETED = "deleted"
    ERROR = "error"


# The states of a volume that can take a new snapshot.
SNAPSHOTTABLE = frozenset({VolumeState.AVAILABLE, VolumeState.IN_USE})


class SnapshotState(enum.StrEnum):
    PENDING = "pending"
    COMPLETED = "completed"
    ERROR = "error"


class AttachmentState(enum.StrEnum):
    ATTACHING = "attaching"
    ATTACHED = "attached"
    DETACHING = "detaching"
    DETACHED = "detached"
    BUSY = "busy"


class SnapshotBlockPublicAccessState(enum.StrEnum):
    """Block public access for snapshots, per account and region (no record: unblocked)."""

    BLOCK_ALL_SHARING = "block-all-sharing"
    BLOCK_NEW_SHARING = "block-new-sharing"
    UNBLOCKED = "unblocked"


class VolumeType(enum.StrEnum):
    STANDARD = "standard"
    GP2 = "gp2"
    GP3 = "gp3"
    IO1 = "io1"
    IO2 = "io2"
    ST1 = "st1"
    SC1 = "sc1"


def new_id(prefix: str) -> str:
    """An AWS-style resource id: prefix, dash, 17 lowercase hex digits."""
    return f"{prefix}-{secrets.token_hex(9)[:17]}"


def utcnow() -> datetime:
    """Now, in UTC, to whole milliseconds (what the wire shows)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


@dataclass
class Attachment:
    volume_id: str
    instance_id: str
    device: str
    state: AttachmentState
    attach_time: datetime
    delete_on_termination: bool = False
    handle: str | None = None  # the VMM's own name for the disk


@dataclass
class Instance:
    """A VMM domain, seen as an EC2 instance."""

    id: str
    owner_id: str
    region: str
    zone: str
    vmm: str  # the configured VMM host's name
    domain: str
    state: str  # botocore's InstanceStateName values
    launch_time: datetime
    tags: dict[str, str] = field(default_factory=dict)
    seq: int = 0


@dataclass
class Volume:
    id: str
    owner_id: str
    region: str
    zone: str
    size_gib: int
    volume_type: VolumeType
    state: VolumeState
    create_time: datetime
    zone_id: str = ""
    iops: int | None = None
    throughput: int | None = None
    encrypted: bool = False
    kms_key_id: str | None = None
    snapshot_id: str | None = None
    multi_attach: bool = False
    client_token: str | None = None
    request_digest: str | None = None
    state_message: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    attachments: list[Attachment] = field(default_factory=list)
    seq: int = 0
    storage_host: str = "default"  # the configured storage host holding its bytes
    # The snapshot lineage it belongs to (ebsemu.service.lineage); None in a record from
    # before lineages were recorded.
    lineage: str | None = None
    source_volume_id: str | None = None  # the volume CopyVolumes copied into this one


@dataclass
class Snapshot:
    id: str
    owner_id: str
    region: str
    volume_id: str
    volume_size_gib: int
    state: SnapshotState
    start_time: datetime
    progress: int = 0
    description: str = ""
    encrypted: bool = False
    kms_key_id: str | None = None
    state_message: str | None = None
    completion_time: datetime | None = None
    full_size_bytes: int | None = None
    tags: dict[str, str] = field(default_factory=dict)
    seq: int = 0
    storage_host: str = "default"  # the storage host holding its frozen view while pending
    # The snapshot lineage it belongs to (ebsemu.service.lineage); None in a record from
    # before lineages were recorded.
    lineage: str | None = None


@dataclass(frozen=True)
class TagRecord:
    resource_id: str
    resource_type: str
    key: str
    value: str
