"""Volume ids and device names as the VMM drivers carry them."""

from __future__ import annotations

import re

from backends.vmm.errors import InvalidName

VOLUME_ID = re.compile(r"vol-(?:[0-9a-f]{17}|[0-9a-f]{8})")
DEVICE_NAME = re.compile(r"/dev/(sd|xvd|hd|vd)([a-z]{1,2})")
COMPACT_SERIAL = re.compile(r"vol((?:[0-9a-f]{17}|[0-9a-f]{8}))")


def check_volume_id(volume_id: str) -> str:
    if not VOLUME_ID.fullmatch(volume_id):
        raise InvalidName(f"not a volume id: {volume_id!r}")
    return volume_id


def device_parts(device: str) -> tuple[str, str]:
    """Split /dev/xvdf into ("xvd", "f"); refuse anything else."""
    match = DEVICE_NAME.fullmatch(device)
    if not match:
        raise InvalidName(f"not a device name: {device!r}")
    return match.group(1), match.group(2)


def device_basename(device: str) -> str:
    """/dev/sdf -> sdf."""
    prefix, letters = device_parts(device)
    return prefix + letters


def compact_serial(volume_id: str) -> str:
    """The volume id without its dash: what EC2 Nitro instances read as an EBS disk's serial,
    and short enough for virtio-blk's 20-byte serial (vol-… is 21 characters)."""
    return check_volume_id(volume_id).replace("-", "", 1)


def volume_id_from_serial(serial: str) -> str | None:
    """Inverse of compact_serial; also accepts the dashed form. None if not a volume serial."""
    serial = serial.strip()
    if VOLUME_ID.fullmatch(serial):
        return serial
    match = COMPACT_SERIAL.fullmatch(serial)
    return f"vol-{match.group(1)}" if match else None


def volume_id_in(text: str) -> str | None:
    """The last volume id named in a path or string (/dev/vg0/vol-…, …:vol-…-lun-1)."""
    found = re.findall(r"vol-(?:[0-9a-f]{17}|[0-9a-f]{8})(?![0-9a-f])", text)
    return found[-1] if found else None
