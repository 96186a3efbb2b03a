"""AttachVolume / DetachVolume: hot-plug volumes into instances through their VMM.

Volume `available` -> `in-use` with the attachment `attaching` -> `attached`; detach goes
`detaching` -> gone, the volume back to `available`. A failed attach is undone by the driver and
the volume returns to `available`; a failed detach leaves the attachment `busy` (the guest still
holds the disk), visible in DescribeVolumes, with the reason in the logs.

A Multi-Attach volume (io1/io2) attaches to up to 16 instances of its zone at once, each
attachment with its own state; the volume is `available` again once the last one is gone. Its
VMMs must be able to share a disk for writing (not Xen), and where the volume is exported
(iSCSI), all of them must be behind one initiator: an export admits a single one. The export
stays while any attachment is left.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

from backends.base import AttachSpec, VmmBackend
from backends.errors import BackendError, DomainNotFound
from ebsemu import errors, faults
from ebsemu.model import Attachment, AttachmentState, Instance, Volume, VolumeState, utcnow
from ebsemu.service import volume_waits
from ebsemu.service.context import RequestContext
from ebsemu.service.core import Core
from ebsemu.service.encryption import EncryptionService
from ebsemu.service.exports import ExportService
from ebsemu.service.instances import InstanceService, check_instance_id
from ebsemu.service.steps import Step, run_steps
from ebsemu.service.volumes import VolumeService

log = logging.getLogger(__name__)

# Names EC2 accepts for an EBS data volume on Linux and Windows instances.
DEVICE_NAME = re.compile(r"/dev/(?:sd[b-z]|xvd[b-z]|xvd[b-d][a-z]|hd[b-z]|vd[b-z])|xvd[b-z]")
ATTACHABLE_INSTANCE_STATES = {"running", "stopped"}
MULTI_ATTACH_MOST = 16  # instances a Multi-Attach volume attaches to at once, as in EC2


def check_device(device: str) -> str:
    if not DEVICE_NAME.fullmatch(device):
        raise errors.InvalidParameterValue(
            f"Value ({device[:64]}) for parameter device is invalid. "
            f"{device[:64]} is not a valid EBS device name."
        )
    return device


def vmm_device(device: str) -> str:
    """The device name as the VMM drivers take it: EC2 also accepts Windows-style names
    without /dev/ (xvdg), which the drivers know as /dev/xvdg."""
    return device if device.startswith("/dev/") else f"/dev/{device}"


def _mapped_at(attachments: Iterable[Attachment], device: str) -> Attachment | None:
    """The attachment at ``device``, however it is written (xvdg is /dev/xvdg)."""
    wanted = vmm_device(device)
    return next((a for a in attachments if vmm_device(a.device) == wanted), None)


def _not_mapped(instance_id: str, device: str) -> errors.ApiError:
    return errors.InvalidParameterValue(
        f"No device is currently mapped at {device[:64]} on {instance_id}"
    )


class AttachmentService:
    def __init__(
        self,
        core: Core,
        volumes: VolumeService,
        instances: InstanceService,
        exports: ExportService,
        encryption: EncryptionService,
    ) -> None:
        self._core = core
        self._volumes = volumes
        self._instances = instances
        self._exports = exports
        self._encryption = encryption
        core.jobs.register("attach_volume", self._run_attach)
        core.jobs.register("detach_volume", self._run_detach)
        instances.on_terminated = self._instance_terminated

    async def attach(
        self, ctx: RequestContext, volume_id: str, instance_id: str, device: str
    ) -> Attachment:
        check_device(device)
        volume = await self._volumes.get(ctx, volume_id)
        instance = await self._instances.get(ctx, instance_id)
        if instance.state not in ATTACHABLE_INSTANCE_STATES:
            raise errors.IncorrectInstanceState(
                f"The instance '{instance_id}' is not in a valid state for this operation."
            )
        if volume.zone != instance.zone:
            raise errors.InvalidVolumeZoneMismatch(
                f"The volume '{volume_id}' is not in the same availability zone as instance "
                f"'{instance_id}'"
            )
        self._encryption.check_vmm(volume, self._instances.vmm_of(instance), instance_id)
        store = self._core.store
        async with self._core.locks.hold(volume_id), self._core.locks.hold(instance_id):
            volume = await self._volumes.get(ctx, volume_id)
            if volume.state is VolumeState.IN_USE:
                await self._check_shared(volume, instance)
            elif volume.state is not VolumeState.AVAILABLE:
                raise errors.IncorrectState(
                    f"The volume '{volume_id}' is '{volume.state.value}' and cannot be attached."
                )
            current = (await store.attachments_of_instances([instance_id])).get(instance_id, [])
            if _mapped_at(current, device) is not None:
                raise errors.InvalidParameterValue(f"Attachment point {device} is already in use")
            limit = self._core.config.max_attachments_per_instance
            if len(current) >= limit:
                raise errors.AttachmentLimitExceeded(
                    f"The instance '{instance_id}' has reached its limit of {limit} volumes."
                )
            attachment = Attachment(
                volume_id, instance_id, device, AttachmentState.ATTACHING, utcnow()
            )
            if not await store.begin_attach(attachment, most=MULTI_ATTACH_MOST):
                # Another server sharing the database may have taken the device meanwhile.
                now = (await store.attachments_of_instances([instance_id])).get(instance_id, [])
                if _mapped_at(now, device) is not None:
                    raise errors.InvalidParameterValue(
                        f"Attachment point {device} is already in use"
                    )
                raise errors.IncorrectState(f"The volume '{volume_id}' changed state; retry.")
        await self._core.jobs.submit("attach_volume", volume_id, instance_id=instance_id)
        log.info("volume %s: attaching to %s as %s", volume_id, instance_id, device)
        return attachment

    async def detach(
        self,
        ctx: RequestContext,
        volume_id: str,
        instance_id: str | None,
        device: str | None,
        force: bool,
    ) -> Attachment:
        if instance_id is not None:
            check_instance_id(instance_id)
        volume = await self._volumes.get(ctx, volume_id)
        if not volume.attachments:
            raise errors.IncorrectState(
                f"Volume '{volume_id}' is in the '{volume.state.value}' state."
            )
        if volume.multi_attach and instance_id is None:
            raise errors.MissingParameter(
                f"The request must contain the parameter InstanceId: {volume_id} has "
                "Multi-Attach enabled."
            )
        matching = [
            a
            for a in volume.attachments
            if (instance_id is None or a.instance_id == instance_id)
            and (device is None or a.device == device)
        ]
        if not matching:
            raise errors.InvalidAttachmentNotFound(
                f"Attachment point for volume '{volume_id}' and instance "
                f"'{instance_id or '-'}' does not exist"
            )
        attachment = matching[0]
        if attachment.state is AttachmentState.DETACHING:
            return attachment  # a retried detach is harmless
        allowed = {AttachmentState.ATTACHED, AttachmentState.BUSY}
        if force:
            allowed.add(AttachmentState.ATTACHING)
        if not await self._core.store.transition_attachment(
            volume_id, attachment.instance_id, allowed, AttachmentState.DETACHING
        ):
            raise errors.IncorrectState(
                f"The attachment of '{volume_id}' is '{attachment.state.value}'; "
                "it can be detached once it is attached."
            )
        await self._core.jobs.submit(
            "detach_volume", volume_id, instance_id=attachment.instance_id, force=force
        )
        log.info("volume %s: detaching from %s", volume_id, attachment.instance_id)
        attachment.state = AttachmentState.DETACHING
        return attachment

    async def set_delete_on_termination(
        self, ctx: RequestContext, instance_id: str, values: Mapping[str, bool]
    ) -> None:
        """DeleteOnTermination of the volumes mapped at these devices: all of them, or none
        when one device has no volume."""
        await self._instances.get(ctx, instance_id)
        store = self._core.store
        current = (await store.attachments_of_instances([instance_id])).get(instance_id, [])
        mapped: dict[str, bool] = {}
        for device, value in values.items():
            attachment = _mapped_at(current, device)
            if attachment is None:
                raise _not_mapped(instance_id, device)
            mapped[attachment.device] = value
        for device, value in mapped.items():
            if not await store.set_delete_on_termination(instance_id, device, value):
                raise _not_mapped(instance_id, device)  # detached meanwhile

    async def _check_shared(self, volume: Volume, instance: Instance) -> None:
        """Refuse another attachment of an `in-use` volume unless it is Multi-Attach, not yet
        attached to ``instance``, below its most, and reachable by every VMM at once."""
        if not volume.multi_attach:
            raise errors.VolumeInUse(f"{volume.id} is already attached to an instance")
        if any(a.instance_id == instance.id for a in volume.attachments):
            raise errors.VolumeInUse(f"{volume.id} is already attached to {instance.id}")
        if len(volume.attachments) >= MULTI_ATTACH_MOST:
            raise errors.AttachmentLimitExceeded(
                f"{volume.id} is attached to {MULTI_ATTACH_MOST} instances, the most a "
                "Multi-Attach volume can be."
            )
        holders = [instance]
        for attachment in volume.attachments:
            other = await self._core.store.get_instance(attachment.instance_id)
            if other is not None:
                holders.append(other)
        for holder in holders:
            if holder.vmm in self._core.vmms and not self._instances.vmm_of(holder).shares_disks:
                raise errors.UnsupportedOperation(
                    f"{volume.id} has Multi-Attach enabled, but {holder.id}'s hypervisor "
                    "cannot share a disk with another instance."
                )
        if not await self._exports.reaches_at_once(volume.id, {h.vmm for h in holders}):
            raise errors.UnsupportedOperation(
                f"{volume.id} has Multi-Attach enabled, but it is exported to one host at a "
                f"time, and {instance.id} runs on another host than its other instances."
            )

    async def _release_export(self, volume_id: str, instance_id: str) -> bool:
        """Unexport the volume once ``instance_id``'s attachment is the last one (a
        Multi-Attach volume's other instances still read it through the export); whether it
        did. The volume's lock keeps a new attachment from counting on the export meanwhile."""
        async with self._core.locks.hold(volume_id):
            if await self._held_by_others(volume_id, instance_id):
                log.info("volume %s: export kept for its other attachments", volume_id)
                return False
            await self._exports.release(volume_id)
            return True

    async def _drop_attachment(self, volume_id: str, instance_id: str, *, unexport: bool) -> None:
        """Drop the attachment's record, and with ``unexport`` the export first where it is
        the last one: two detaches of a Multi-Attach volume at once each find the other's
        record at their unexport and keep the export for it, so the last record dropped
        takes it along. Under the volume's lock, as ``_release_export``. An export that
        cannot be removed is left to start-up reconciliation (its volume has no attachment)."""
        store = self._core.store
        async with self._core.locks.hold(volume_id):
            if unexport and not await self._held_by_others(volume_id, instance_id):
                try:
                    await self._exports.release(volume_id)
                except BackendError as exc:
                    log.error("volume %s: unexport at the last detach failed: %s", volume_id, exc)
            await store.finish_detach(volume_id, instance_id)

    async def _held_by_others(self, volume_id: str, instance_id: str) -> bool:
        """Whether an instance other than ``instance_id`` has the volume attached (recorded)."""
        volume = await self._core.store.get_volume(volume_id)
        return volume is not None and any(a.instance_id != instance_id for a in volume.attachments)

    # ---- jobs ----------------------------------------------------------------------------

    async def _run_attach(self, volume_id: str, payload: dict[str, Any]) -> None:
        """Steps: export the volume to the VMM host (undo: unexport) -> attach it in the VMM
        (undo: forced detach) -> mark the attachment attached. A failure removes the
        attachment and the volume is `available` again."""
        instance_id = payload["instance_id"]
        store = self._core.store
        attachment = await store.get_attachment(volume_id, instance_id)
        instance = await store.get_instance(instance_id)
        if attachment is None or attachment.state is not AttachmentState.ATTACHING:
            return
        device = vmm_device(attachment.device)
        handles: list[str] = []

        def where() -> tuple[Instance, VmmBackend]:
            if instance is None:
                raise BackendError(f"instance {instance_id} is gone")
            return instance, self._instances.vmm_of(instance)

        async def export() -> None:
            await volume_waits.after_grow(self._core, volume_id)
            await self._exports.source_for(volume_id, where()[0].vmm)
            await faults.reach("attach.exported")

        async def vmm_attach() -> None:
            found, vmm = where()
            volume = await store.get_volume(volume_id)
            if volume is None:
                raise BackendError(f"volume {volume_id} is gone")
            try:
                self._encryption.check_vmm(volume, vmm, instance_id)
            except errors.ApiError as exc:
                raise BackendError(exc.message) from exc
            source = await self._exports.source_for(volume_id, found.vmm)  # same export again
            luks = await self._encryption.luks_key(volume)
            spec = AttachSpec(volume_id, device, source, luks=luks, shared=volume.multi_attach)
            disk = await vmm.attach(found.domain, spec)
            handles.append(disk.handle)
            await faults.reach("attach.attached")

        async def vmm_detach() -> None:
            found, vmm = where()
            await vmm.detach(found.domain, volume_id, force=True)

        async def mark_attached() -> None:
            if not handles:  # attached before a restart: ask the VMM for its handle
                found, vmm = where()
                disks = await vmm.list_attached(found.domain)
                handles.extend(d.handle for d in disks if d.volume_id == volume_id)
            await store.transition_attachment(
                volume_id,
                instance_id,
                {AttachmentState.ATTACHING},
                AttachmentState.ATTACHED,
                handle=handles[0] if handles else None,
            )
            shown = handles[0] if handles else "handle unknown"
            log.info("volume %s: attached to %s (%s)", volume_id, instance_id, shown)

        async def unexport() -> None:
            await self._release_export(volume_id, instance_id)

        async def failed(exc: Exception | None) -> None:
            log.error("volume %s: attach to %s rolled back: %s", volume_id, instance_id, exc)
            await self._drop_attachment(volume_id, instance_id, unexport=True)

        plan = [
            Step("export", export, undo=unexport),
            Step("vmm-attach", vmm_attach, undo=vmm_detach),
            Step("mark-attached", mark_attached),
        ]
        await run_steps(store, f"attach {volume_id} to {instance_id}", plan, failed)

    async def _run_detach(self, volume_id: str, payload: dict[str, Any]) -> None:
        """Steps, attach's in reverse: detach in the VMM -> unexport -> drop the attachment
        (the volume is `available` again). A failure leaves the attachment `busy` (the guest
        may still hold the disk): no undo re-attaches it, a later DetachVolume tries again."""
        instance_id = payload["instance_id"]
        store = self._core.store
        instance = await store.get_instance(instance_id)

        async def vmm_detach() -> None:
            if instance is None:
                return
            try:
                await self._instances.vmm_of(instance).detach(
                    instance.domain, volume_id, force=bool(payload.get("force"))
                )
            except DomainNotFound:
                log.warning(
                    "volume %s: %s's domain is gone; counting the volume as detached",
                    volume_id,
                    instance_id,
                )
            await faults.reach("detach.detached")

        released: list[bool] = []  # by the unexport step (not run again after a restart)

        async def unexport() -> None:
            released.append(await self._release_export(volume_id, instance_id))

        async def mark_detached() -> None:
            await self._drop_attachment(volume_id, instance_id, unexport=not any(released))
            log.info("volume %s: detached from %s", volume_id, instance_id)

        async def failed(exc: Exception | None) -> None:
            log.error("volume %s: detach from %s failed, attachment busy: %s",
                      volume_id, instance_id, exc)  # fmt: skip
            await store.transition_attachment(
                volume_id, instance_id, {AttachmentState.DETACHING}, AttachmentState.BUSY
            )

        plan = [
            Step("vmm-detach", vmm_detach),
            Step("unexport", unexport),
            Step("mark-detached", mark_detached),
        ]
        await run_steps(store, f"detach {volume_id} from {instance_id}", plan, failed)

    async def _instance_terminated(self, instance_id: str) -> None:
        """EC2 detaches a terminated instance's volumes and deletes those marked for it."""
        store = self._core.store
        attachments = (await store.attachments_of_instances([instance_id])).get(instance_id, [])
        for attachment in attachments:
            await self._drop_attachment(attachment.volume_id, instance_id, unexport=True)
            if attachment.delete_on_termination and await store.transition_volume(
                attachment.volume_id, {VolumeState.AVAILABLE}, VolumeState.DELETING
            ):
                await self._core.jobs.submit("delete_volume", attachment.volume_id)
            log.info(
                "volume %s: released by terminated %s%s",
                attachment.volume_id,
                instance_id,
                ", deleting" if attachment.delete_on_termination else "",
            )
