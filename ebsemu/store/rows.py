"""Rows to records and back: the column lists and converters the SQLite store shares."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ebsemu.model import (
    Attachment,
    AttachmentState,
    Instance,
    Snapshot,
    SnapshotState,
    Volume,
    VolumeState,
    VolumeType,
)
from ebsemu.timefmt import from_wire, to_wire

VOLUME_COLUMNS = (
    "id, owner_id, region, zone, zone_id, size_gib, volume_type, iops, throughput, encrypted, "
    "kms_key_id, snapshot_id, multi_attach, state, state_message, create_time, updated_at, "
    "client_token, request_digest, storage_host, lineage, source_volume_id"
)

SNAPSHOT_COLUMNS = (
    "id, owner_id, region, volume_id, volume_size_gib, state, progress, description, encrypted, "
    "kms_key_id, state_message, start_time, completion_time, full_size_bytes, storage_host, "
    "lineage"
)


def snapshot_values(snapshot: Snapshot) -> tuple[Any, ...]:
    """The snapshot's values in SNAPSHOT_COLUMNS order, for an INSERT."""
    return (
        snapshot.id,
        snapshot.owner_id,
        snapshot.region,
        snapshot.volume_id,
        snapshot.volume_size_gib,
        snapshot.state.value,
        snapshot.progress,
        snapshot.description,
        int(snapshot.encrypted),
        snapshot.kms_key_id,
        snapshot.state_message,
        to_wire(snapshot.start_time),
        to_wire(snapshot.completion_time) if snapshot.completion_time else None,
        snapshot.full_size_bytes,
        snapshot.storage_host,
        snapshot.lineage,
    )


def volume_from_row(row: Sequence[Any]) -> Volume:
    (
        seq,
        id_,
        owner,
        region,
        zone,
        zone_id,
        size,
        vtype,
        iops,
        throughput,
        encrypted,
        kms,
        snapshot_id,
        multi,
        state,
        message,
        create_time,
        _updated,
        token,
        digest,
        storage_host,
        lineage,
        source_volume_id,
    ) = row
    return Volume(
        id=id_,
        owner_id=owner,
        region=region,
        zone=zone,
        zone_id=zone_id,
        size_gib=size,
        volume_type=VolumeType(vtype),
        state=VolumeState(state),
        create_time=from_wire(create_time),
        iops=iops,
        throughput=throughput,
        encrypted=bool(encrypted),
        kms_key_id=kms,
        snapshot_id=snapshot_id,
        multi_attach=bool(multi),
        client_token=token,
        request_digest=digest,
        state_message=message,
        seq=seq,
        storage_host=storage_host,
        lineage=lineage,
        source_volume_id=source_volume_id,
    )


def snapshot_from_row(row: Sequence[Any]) -> Snapshot:
    (
        seq,
        id_,
        owner,
        region,
        volume_id,
        size,
        state,
        progress,
        description,
        encrypted,
        kms,
        message,
        start_time,
        completion_time,
        full_size,
        storage_host,
        lineage,
    ) = row
    return Snapshot(
        id=id_,
        owner_id=owner,
        region=region,
        volume_id=volume_id,
        volume_size_gib=size,
        state=SnapshotState(state),
        start_time=from_wire(start_time),
        progress=progress,
        description=description,
        encrypted=bool(encrypted),
        kms_key_id=kms,
        state_message=message,
        completion_time=from_wire(completion_time) if completion_time else None,
        full_size_bytes=full_size,
        seq=seq,
        storage_host=storage_host,
        lineage=lineage,
    )


INSTANCE_COLUMNS = "id, owner_id, region, zone, vmm, domain, state, launch_time"
ATTACHMENT_COLUMNS = (
    "volume_id, instance_id, device, state, attach_time, delete_on_termination, handle"
)


def instance_from_row(row: Sequence[Any]) -> Instance:
    seq, id_, owner, region, zone, vmm, domain, state, launch_time = row
    return Instance(
        id=id_,
        owner_id=owner,
        region=region,
        zone=zone,
        vmm=vmm,
        domain=domain,
        state=state,
        launch_time=from_wire(launch_time),
        seq=seq,
    )


def attachment_from_row(row: Sequence[Any]) -> Attachment:
    volume_id, instance_id, device, state, attach_time, delete_on_termination, handle = row
    return Attachment(
        volume_id=volume_id,
        instance_id=instance_id,
        device=device,
        state=AttachmentState(state),
        attach_time=from_wire(attach_time),
        delete_on_termination=bool(delete_on_termination),
        handle=handle,
    )
