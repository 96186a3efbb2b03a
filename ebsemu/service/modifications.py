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
from datetime import timedelta
from typing import Any

from backends.errors import BackendError, CapacityError
from ebsemu import errors, faults
from ebsemu.model import GIB, AttachmentState, VolumeState, utcnow
from ebsemu.modification import ACTIVE_STATES, ModificationState, VolumeModification
from ebsemu.service import listing
from ebsemu.service.context import RequestContext
from ebsemu.service.core import Core
from ebsemu.service.instances import InstanceService
from ebsemu.service.modification_rules import ModifyRequest, current_settings, target_settings
from ebsemu.service.volumes import VolumeService
from ebsemu.store.base import ListQuery

log = logging.getLogger(__name__)

MODIFIABLE = {VolumeState.AVAILABLE, VolumeState.IN_USE}
PROGRESS_APPLIED = 50  # the storage holds the new size; optimizing begins
OPTIMIZING_STEPS = 10


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
            await faults.reach("modify_volume.growing")
            await self._core.storage_for(volume).extend(
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
        export = self._core.storage_hosts.entry(volume.storage_host).export
        if export is not None:
            try:
                await export.refresh_size(volume_id)
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
