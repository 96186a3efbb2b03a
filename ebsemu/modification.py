"""The record of a volume modification (ModifyVolume), shared by the service and the store.

State values are botocore's: modifying -> optimizing -> completed | failed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from ebsemu.model import VolumeType


class ModificationState(enum.StrEnum):
    MODIFYING = "modifying"
    OPTIMIZING = "optimizing"
    COMPLETED = "completed"
    FAILED = "failed"


ACTIVE_STATES = frozenset({ModificationState.MODIFYING, ModificationState.OPTIMIZING})


@dataclass(frozen=True)
class VolumeSettings:
    """What a modification changes: the volume's size, type and performance."""

    size_gib: int
    volume_type: VolumeType
    iops: int | None
    throughput: int | None
    multi_attach: bool


@dataclass(frozen=True)
class VolumeModification:
    volume_id: str
    owner_id: str
    region: str
    state: ModificationState
    original: VolumeSettings
    target: VolumeSettings
    start_time: datetime
    progress: int = 0
    end_time: datetime | None = None
    status_message: str | None = None
    seq: int = 0
