"""The record of fast snapshot restores of one snapshot in one zone, for one account.

State values are botocore's: enabling -> optimizing -> enabled; disabling -> disabled. The
account is the one that enabled it (a snapshot shared with it included); ``snapshot_owner_id``
is the snapshot's owner.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


class FastRestoreState(enum.StrEnum):
    ENABLING = "enabling"
    OPTIMIZING = "optimizing"
    ENABLED = "enabled"
    DISABLING = "disabling"
    DISABLED = "disabled"


ACTIVE_STATES = frozenset(
    {FastRestoreState.ENABLING, FastRestoreState.OPTIMIZING, FastRestoreState.ENABLED}
)
# StateTransitionReason values, as the API reference lists them.
USER_INITIATED = "Client.UserInitiated"
LIFECYCLE = "Client.UserInitiated - Lifecycle state transition"
SNAPSHOT_DELETED = "Client.InvalidSnapshot.NotFound - The requested snapshot was not found"


@dataclass(frozen=True)
class FastRestore:
    account_id: str
    snapshot_id: str
    zone: str
    zone_id: str
    region: str
    state: FastRestoreState
    reason: str
    snapshot_owner_id: str
    enabling_time: datetime | None = None
    optimizing_time: datetime | None = None
    enabled_time: datetime | None = None
    disabling_time: datetime | None = None
    disabled_time: datetime | None = None
    seq: int = 0
