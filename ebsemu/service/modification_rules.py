"""AWS's rules for ModifyVolume: which modifications a volume may take, and the size, type and
performance it ends up with."""

from __future__ import annotations

from dataclasses import dataclass

from ebsemu import errors
from ebsemu.model import Volume, VolumeType
from ebsemu.modification import VolumeSettings
from ebsemu.service import validation


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
    if size > volume.size_gib and volume.encrypted:
        # Its LUKS image would grow by ciphertext no key wrote: the new space would not read
        # as zeros (docs/encryption.md).
        raise errors.UnsupportedOperation(
            f"The volume {volume.id} is encrypted; encrypted volumes cannot grow here. Its "
            "type, IOPS and throughput can still be modified."
        )
    validation.check_size(vtype, size)
    multi = volume.multi_attach if req.multi_attach is None else req.multi_attach
    if multi and not volume.multi_attach and vtype is not VolumeType.IO2:
        raise errors.InvalidParameterCombination(
            f"Multi-Attach can be enabled on an existing volume of type io2 only, "
            f"not {vtype.value}."
        )
    if multi and not volume.multi_attach and volume.attachments:
        # As EC2: the guest holding it opened it alone (no QEMU share-rw, no libvirt
        # <shareable/>), so another instance could not open it beside it.
        raise errors.InvalidParameterValue(
            f"Multi-Attach cannot be enabled while the volume {volume.id} is attached to an "
            "instance; detach it first."
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
