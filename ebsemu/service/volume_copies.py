"""CopyVolumes: a new volume holding a source volume's bytes as they were at the call.

The copy is made in the request, as CreateSnapshot freezes a volume: by the storage backend at
one instant (a reflink clone, or a sparse copy of the data extents with the source's guests
paused meanwhile: docs/consistency.md). The copy's create job then grows it to its size (past
the source's end it reads as zeros) and marks it `available`. EC2 answers with the copy at once
and fills it in the background; here the call lasts as long as the backend's copy. A copy that
fails is `error`, with nothing left on the storage host.

A copy of an encrypted volume is its LUKS image, opened with the source's data key (kept for
the copy too; a KmsKeyId given is recorded, as for a restore, without re-encrypting), and has
the source's size. Refused with UnsupportedOperation: a storage backend that cannot copy at one
instant (only the `file` backend can), an encrypted copy of an unencrypted volume (the data
path does not encrypt plaintext), and a larger copy of an encrypted one.
"""

from __future__ import annotations

import logging

from backends.base import StorageBackend, VolumeCopier
from ebsemu import errors
from ebsemu.model import SNAPSHOTTABLE, Volume, VolumeState
from ebsemu.service import guest_pause
from ebsemu.service.core import Core

log = logging.getLogger(__name__)


def not_copyable(source_id: str, state: VolumeState) -> errors.ApiError:
    return errors.IncorrectState(
        f"The volume '{source_id}' is '{state.value}'; only an available or in-use volume can "
        "be copied."
    )


def check_source(source: Volume, storage: StorageBackend, size_gib: int | None) -> int:
    """The copy's size: ``size_gib``, or the source's. IncorrectState for a source that is not
    `available` or `in-use`, InvalidParameterValue for a size below the source's,
    UnsupportedOperation where the source's storage cannot copy it."""
    if source.state not in SNAPSHOTTABLE:  # a copy, as a snapshot, reads it at one instant
        raise not_copyable(source.id, source.state)
    if not isinstance(storage, VolumeCopier):
        raise errors.UnsupportedOperation(
            f"Cannot copy the volume {source.id}: its storage host {source.storage_host} "
            "cannot copy a volume at one instant (the file backend can)."
        )
    if size_gib is None:
        return source.size_gib
    if size_gib < source.size_gib:
        raise errors.InvalidParameterValue(
            f"The size of the volume copy ({size_gib} GiB) must be equal to or greater than the "
            f"size of the source volume {source.id} ({source.size_gib} GiB)."
        )
    return size_gib


def check_encrypted_size(source: Volume, size_gib: int) -> None:
    """UnsupportedOperation for a copy of an encrypted volume larger than its source: the copy
    is the source's LUKS image, and an encrypted volume cannot grow here."""
    if source.encrypted and size_gib != source.size_gib:
        raise errors.UnsupportedOperation(
            f"Cannot make a {size_gib} GiB copy of the encrypted {source.size_gib} GiB volume "
            f"{source.id}: an encrypted volume cannot grow here; copy it at its size."
        )


async def copy(core: Core, source: Volume, copy_id: str) -> None:
    """Copy the source's bytes into the new volume ``copy_id``, its guests paused where the
    copy is not made at one instant. BackendError or OSError if it cannot be made."""
    storage = core.storage_for(source)
    assert isinstance(storage, VolumeCopier)  # check_source refused the others
    guests = await guest_pause.writers(core, source, storage)
    async with guest_pause.paused(core, guests):
        await storage.copy_volume(source.id, copy_id)
    log.info("volume %s: copied to %s", source.id, copy_id)
