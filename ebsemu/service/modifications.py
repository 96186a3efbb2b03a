"""ModifyVolume and DescribeVolumesModifications: Elastic Volumes with AWS's rules.

A modification goes modifying -> optimizing -> completed | failed. The job grows the volume's
storage while `modifying`; if that fails the volume keeps its size and type and the modification
is `failed` with a message. Once the storage holds the new size, the volume takes its new size,
type and performance in the same transaction that moves the modification to `optimizing` (as
EC2 shows them from then on), and the VMM of each attachment is told, so a running guest sees
the new size without a detach. `optimizing` lasts ``modification_optimizing_seconds``.

Each volume keeps its latest modification, as EC2 does; a new one may start once that one is
completed or failed and ``modification_cooldown_seconds`` have passed since it started.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from backends.errors import BackendError, CapacityError
from ebsemu import errors
from ebsemu.model import GIB, AttachmentState, Volume, VolumeState, VolumeType, utcnow
from ebsemu.modification import (
    ACTIVE_STATES,
    ModificationState,
    VolumeModification,
    VolumeSettings,
)
from ebsemu.service import listing, validation
from ebsemu.service.context import RequestContext
from ebsemu.service.core import Core
from ebsemu.service.instances import InstanceService
from ebsemu.service.volumes import VolumeService
from ebsemu.store.base import ListQuery

log = logging.getLogger(__name__)

MODIFIABLE = {VolumeState.AVAILABLE, VolumeState.IN_USE}
PROGRESS_APPLIED = 50  # the storage holds the new size; optimizing begins
OPTIMIZING_STEPS = 10


@dataclass(frozen=True)
class ModifyRequest:
    size_gib: int | None = None
    volume_type: str | None = None
    iops: int | None = None
    throughput: int | None = None
    multi_attach: bool | None = None

    def empty(self) -> bool:
        return all(value is None for value in self.__dict__.values())


def current_settings(volume: Volume) -> VolumeSettings:
    return VolumeSettings(
        volume.size_gib, volume.volume_type, volume.iops, volume.throughput, volume.multi_attach
    )


def target_settings(volume: Volume, req: ModifyRequest) -> VolumeSettings:
    """The settings the volume will have, checked against AWS's rules for modifications."""
    if req.empty():
        raise errors.InvalidParameterValue(
            "Invalid input: Must specify at least one of size, type, iops, throughput or "
            "multi-attach."
        )
    old = volume.volume_type
    vtype = old if req.volume_type is None else validation.volume_type(req.volume_type)
    if VolumeType.STANDARD in (old, vtype) and vtype is not old:
        raise errors.UnsupportedOperation(
            "Volumes of type 'standard' (magnetic) cannot be modified to or from another type; "
            "create a snapshot and restore it as a volume of the type you need."
        )
    if old is VolumeType.STANDARD:
        raise errors.UnsupportedOperation(
            "The previous-generation magnetic volume type (standard) cannot be modified."
        )
    if volume.multi_attach and old is VolumeType.IO1:
        raise errors.InvalidParameterValue(
            "io1 volumes with Multi-Attach enabled do not support modify-volume actions."
        )
    if volume.multi_attach and vtype is not old:
        raise errors.InvalidParameterCombination(
            f"The volume type of a Multi-Attach enabled volume cannot be changed "
            f"(from {old.value} to {vtype.value})."
        )
    size = volume.size_gib if req.size_gib is None else req.size_gib
    if size < volume.size_gib:
        raise errors.InvalidParameterValue("New size cannot be smaller than existing size")
    validation.check_size(vtype, size)
    multi = volume.multi_attach if req.multi_attach is None else req.multi_attach
    if multi and not volume.multi_attach and vtype is not VolumeType.IO2:
        raise errors.InvalidParameterCombination(
            f"Multi-Attach can be enabled on an existing volume of type io2 only, "
            f"not {vtype.value}."
        )
    if not multi and volume.multi_attach and len(volume.attachments) > 1:
        raise errors.InvalidParameterValue(
            f"Multi-Attach cannot be disabled while the volume {volume.id} is attached to "
            "more than one instance."
        )
    iops, throughput = validation.performance(
        vtype, size, _iops_asked(volume, req, vtype), _throughput_asked(volume, req, vtype)
    )
    target = VolumeSettings(size, vtype, iops, throughput, multi)
    if target == current_settings(volume):
        raise errors.InvalidParameterValue(
            f"The volume {volume.id} already has the requested size, type and performance."
        )
    return target


def _iops_asked(volume: Volume, req: ModifyRequest, vtype: VolumeType) -> int | None:
    """IOPS to validate: the request's; else, for a type that takes them, the volume's
    provisioned IOPS (3000 when it has none), within what the new type and size allow."""
    if req.iops is not None:
        return req.iops
    limits = validation.LIMITS[vtype]
    if limits.iops is None:
        return None
    old = volume.volume_type
    if vtype is VolumeType.GP3:
        return volume.iops if old is VolumeType.GP3 else None  # else gp3's baseline
    provisioned = volume.iops if validation.LIMITS[old].iops is not None else None
    wanted = validation.GP3_BASELINE_IOPS if provisioned is None else provisioned
    assert limits.iops_per_gib is not None
    size = volume.size_gib if req.size_gib is None else req.size_gib
    low, high = limits.iops
    return max(low, min(wanted, high, size * limits.iops_per_gib))


def _throughput_asked(volume: Volume, req: ModifyRequest, vtype: VolumeType) -> int | None:
    if req.throughput is not None:
        return req.throughput
    if vtype is VolumeType.GP3 and volume.volume_type is VolumeType.GP3:
        return volume.throughput
    return None


class ModificationService:
    def __init__(self, core: Core, volumes: VolumeService, instances: InstanceService) -> None:
        self._core = core
        self._volumes = volumes
        self._instances = instances
        core.jobs.register("modify_volume", self._run)

    # ---- API operations ------------------------------------------------------------------

    async def modify(
        self, ctx: RequestContext, volume_id: str, req: ModifyRequest
    ) -> VolumeModification:
        await self._volumes.get(ctx, volume_id)
        store = self._core.store
        async with self._core.locks.hold(volume_id):
            volume = await self._volumes.get(ctx, volume_id)
            if volume.state not in MODIFIABLE:
                raise errors.IncorrectModificationState(
                    f"Volume {volume_id} cannot be modified in state {volume.state.value}: "
                    "it must be available or in-use."
                )
            previous = await store.get_modification(volume_id)
            self._check_previous(volume_id, previous)
            target = target_settings(volume, req)
            modification = VolumeModification(
                volume_id=volume_id,
                owner_id=volume.owner_id,
                region=volume.region,
                state=ModificationState.MODIFYING,
                original=current_settings(volume),
                target=target,
                start_time=utcnow(),
            )
            if not await store.begin_modification(modification):
                raise errors.IncorrectModificationState(
                    f"Volume {volume_id} cannot be modified in modification state MODIFYING"
                )
            await self._core.jobs.submit("modify_volume", volume_id)
        log.info(
            "volume %s: modifying %s -> %s", volume_id, modification.original, modification.target
        )
        return modification

    async def describe(
        self,
        ctx: RequestContext,
        volume_ids: list[str],
        raw_filters: list[dict[str, Any]] | None,
        max_results: int | None,
        next_token: str | None,
    ) -> tuple[list[VolumeModification], str | None]:
        ids = listing.check_ids("vol", volume_ids)
        limit = listing.page_size(
            max_results, low=5, high=500, ids_given=bool(ids), ids_param="volumeId"
        )
        for volume_id in ids:
            await self._volumes.get(ctx, volume_id)  # InvalidVolume.NotFound for others'
        query = ListQuery(
            owner_ids=frozenset({ctx.account_id}),
            region=ctx.region,
            ids=ids,
            filters=listing.filters(raw_filters),
            after_seq=listing.decode_token("volmod", next_token),
            limit=limit,
        )
        page = await listing.fetch_page(self._core.store.list_modifications, query)
        if ids:
            found = {m.volume_id for m in page.items}
            for volume_id in ids:
                if volume_id in found:
                    continue
                if await self._core.store.get_modification(volume_id) is None:
                    raise errors.InvalidVolumeModificationNotFound(
                        f"Modification for volume '{volume_id}' does not exist."
                    )
        return page.items, listing.next_token("volmod", page)

    def _check_previous(self, volume_id: str, previous: VolumeModification | None) -> None:
        if previous is None:
            return
        if previous.state in ACTIVE_STATES:
            raise errors.IncorrectModificationState(
                f"Volume {volume_id} cannot be modified in modification state "
                f"{previous.state.value.upper()}"
            )
        seconds = self._core.config.modification_cooldown_seconds
        if utcnow() < previous.start_time + timedelta(seconds=seconds):
            raise errors.VolumeModificationRateExceeded(
                "You've reached the maximum modification rate per volume limit. "
                f"Wait at least {_period(seconds)} between modifications per EBS volume."
            )

    # ---- the job -------------------------------------------------------------------------

    async def _run(self, volume_id: str, payload: dict[str, Any]) -> None:
        store = self._core.store
        modification = await store.get_modification(volume_id)
        if modification is None or modification.state not in ACTIVE_STATES:
            return
        target = modification.target
        grows = target.size_gib > modification.original.size_gib
        if modification.state is ModificationState.MODIFYING:
            try:
                if grows:
                    await self._grow(volume_id, target.size_gib)
            except (BackendError, OSError) as exc:
                log.error("volume %s: modification failed: %s", volume_id, exc)
                reason = (
                    "the volume store cannot hold the new size"
                    if isinstance(exc, CapacityError)
                    else "the volume store could not grow the volume"
                )
                await store.finish_modification(
                    volume_id, ModificationState.FAILED, utcnow(), f"Modification failed: {reason}"
                )
                return
            if not await store.apply_modification(volume_id, target, PROGRESS_APPLIED):
                return
            log.info("volume %s: optimizing at %s", volume_id, target)
        if grows:
            await self._propagate(volume_id, target.size_gib * GIB)
        await self._optimize(modification)
        if await store.finish_modification(volume_id, ModificationState.COMPLETED, utcnow(), None):
            log.info("volume %s: modification completed", volume_id)

    async def _grow(self, volume_id: str, size_gib: int) -> None:
        """Grow the storage under the volume's lock, so no attach or delete begins meanwhile:
        an attached volume (or one being attached) must stay one file or device."""
        async with self._core.locks.hold(volume_id):
            volume = await self._core.store.get_volume(volume_id)
            if volume is None or volume.state not in MODIFIABLE:
                raise BackendError(f"volume {volume_id} is no longer available or in use")
            await self._core.storage.extend(
                volume_id, size_gib * GIB, one_device=bool(volume.attachments)
            )

    async def _propagate(self, volume_id: str, size_bytes: int) -> None:
        """Make the export (if any) present the new size, then tell the VMM of each attachment.
        The storage holds the new size already, so a host that cannot be told is logged, not
        undone: the guest sees the new size at its next attach or rescan."""
        store = self._core.store
        volume = await store.get_volume(volume_id)
        if volume is None or not volume.attachments:
            return
        if self._core.export is not None:
            try:
                await self._core.export.refresh_size(volume_id)
            except BackendError as exc:
                log.warning("volume %s: the export still shows the old size: %s", volume_id, exc)
        for attachment in volume.attachments:
            if attachment.state is not AttachmentState.ATTACHED:
                continue
            instance = await store.get_instance(attachment.instance_id)
            if instance is None:
                continue
            try:
                await self._instances.vmm_of(instance).notify_resize(
                    instance.domain, volume_id, size_bytes
                )
            except BackendError as exc:
                log.warning(
                    "volume %s: %s could not be told of the new size: %s",
                    volume_id,
                    attachment.instance_id,
                    exc,
                )

    async def _optimize(self, modification: VolumeModification) -> None:
        """`optimizing` for the configured time (counted from the modification's start, so a
        resumed job does not start over), with Progress rising to 100."""
        seconds = self._core.config.modification_optimizing_seconds
        if seconds <= 0:
            return
        end = modification.start_time + timedelta(seconds=seconds)
        step = seconds / OPTIMIZING_STEPS
        while (left := (end - utcnow()).total_seconds()) > 0:
            done = 1 - left / seconds
            progress = PROGRESS_APPLIED + int((100 - PROGRESS_APPLIED) * done)
            await self._core.store.set_modification_progress(
                modification.volume_id, min(progress, 99)
            )
            await asyncio.sleep(min(step, left))


def _period(seconds: float) -> str:
    """6 hours, 90 minutes, 45 seconds: the cooldown as AWS's message words it."""
    for unit, length in (("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds >= length and seconds % length == 0:
            count = int(seconds // length)
            return f"{count} {unit}{'' if count == 1 else 's'}"
    return f"{seconds:g} seconds"
