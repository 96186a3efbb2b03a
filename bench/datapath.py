"""ebsemu's data path against the machine's own limits, measured in the same run on the same
filesystem: a 16 TiB CreateVolume to `available`; the first snapshot of a volume full of random
data; a second one after 1% of its blocks changed (once the first one's view is released); a
restore of that snapshot to a new volume.

The volume's bytes are written straight into its file, `<data_dir>/storage/volumes/<id>/seg-0000`
(ebsemu has no attach here); the block store is `<data_dir>/blocks/`.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any

from bench import boto, disk, servers
from bench.options import Options
from bench.report import DataResult, Report
from bench.servers import Server

BIG_GIB = 16 * 1024
BIG = "CreateVolume 16 TiB to available"
FIRST = "First snapshot, random data"
SECOND_TIME = "Second snapshot (1% changed): time vs first"
SECOND_BYTES = "Second snapshot (1% changed): bytes stored vs changed"
RESTORE = "Restore to a new volume"
POLL = 0.01


def run(opts: Options, report: Report, work_dir: Path) -> None:
    server = servers.ebsemu(
        work_dir, "data", max_volumes=100, log_level=opts.log_level, profile_dir=opts.profile_dir
    )
    with servers.running([server]):
        ec2 = boto.client(server.url, pool=2, timeout=opts.call_timeout)
        report.data.append(_big_volume(opts, ec2, work_dir))
        if opts.data_gib > 0:
            report.data += _snapshots(opts, ec2, server)


def _mb_s(size: int, seconds: float) -> float:
    return size / seconds / 1e6


def _created(opts: Options, ec2: Any, **params: Any) -> tuple[str, float]:
    """CreateVolume, then poll until `available`: (volume id, seconds from call to available)."""
    start = time.perf_counter()
    volume_id = str(ec2.create_volume(AvailabilityZone="us-east-1a", **params)["VolumeId"])
    boto.wait_for(
        f"{volume_id} available",
        lambda: boto.volume_state(ec2, volume_id) == "available",
        timeout=opts.call_timeout,
        interval=POLL,
    )
    return volume_id, time.perf_counter() - start


def _snapshotted(opts: Options, ec2: Any, volume_id: str) -> tuple[str, float]:
    start = time.perf_counter()
    snapshot_id = str(ec2.create_snapshot(VolumeId=volume_id)["SnapshotId"])
    boto.wait_for(
        f"{snapshot_id} completed",
        lambda: boto.snapshot_state(ec2, snapshot_id) == "completed",
        timeout=opts.call_timeout,
        interval=POLL,
    )
    return snapshot_id, time.perf_counter() - start


def _big_volume(opts: Options, ec2: Any, work_dir: Path) -> DataResult:
    limit = disk.sparse_create(work_dir / "sparse-probe", BIG_GIB * disk.GIB)
    volume_id, seconds = _created(opts, ec2, Size=BIG_GIB, VolumeType="gp2")
    ec2.delete_volume(VolumeId=volume_id)
    return DataResult(
        BIG,
        f"{seconds:.3f} s",
        f"{limit:.3f} s (sparse files + fsync)",
        limit / seconds,
        "ratio: machine time / ebsemu time",
        measured=seconds,
    )


def _segment(data_dir: Path, volume_id: str) -> Path:
    path = data_dir / "storage" / "volumes" / volume_id / "seg-0000"
    if not path.exists():
        raise RuntimeError(f"no volume file at {path}: has the file backend's layout changed?")
    return path


def _views_released(opts: Options, data_dir: Path) -> float:
    """Wait until the server has released every frozen view (removed it, or kept it as a base):
    a completed snapshot's clean-up runs after `completed`, and the next snapshot's time is
    its own, not the end of the last one's clean-up. The seconds waited."""
    views = data_dir / "storage" / "views"
    return boto.wait_for(
        "views released",
        lambda: not views.exists() or not any(views.iterdir()),
        timeout=opts.call_timeout,
        interval=POLL,
    )


def _snapshots(opts: Options, ec2: Any, server: Server) -> list[DataResult]:
    assert server.data_dir is not None
    data_dir = server.data_dir
    size = opts.data_gib * disk.GIB
    blocks_dir = data_dir / "blocks"
    volume_id, _ = _created(opts, ec2, Size=opts.data_gib, VolumeType="gp2")
    source = _segment(data_dir, volume_id)
    write_s = disk.fill_random(source, size)
    read_s = disk.read_speed(source)
    write_mb, read_mb = _mb_s(size, write_s), _mb_s(size, read_s)
    hash_mb = _mb_s(size, disk.hash_speed(size))

    before = disk.tree_bytes(blocks_dir)[1]
    cpu_before = server.cpu_seconds()
    _, first_s = _snapshotted(opts, ec2, volume_id)
    first_cpu = server.cpu_seconds() - cpu_before
    first_stored = disk.tree_bytes(blocks_dir)[1] - before
    released_s = _views_released(opts, data_dir)

    total_blocks = size // disk.BLOCK
    changed = random.Random(7).sample(range(total_blocks), math.ceil(total_blocks / 100))
    disk.rewrite_blocks(source, changed)
    disk.evict(source)
    changed_bytes = len(changed) * disk.BLOCK
    before = disk.tree_bytes(blocks_dir)[1]
    snapshot_id, second_s = _snapshotted(opts, ec2, volume_id)
    second_stored = disk.tree_bytes(blocks_dir)[1] - before

    restored_id, restore_s = _created(
        opts, ec2, SnapshotId=snapshot_id, Size=opts.data_gib + 1, VolumeType="gp2"
    )
    restored = _segment(data_dir, restored_id)
    same = disk.read_all(restored, size)[1] == disk.read_all(source)[1]
    holes = not disk.data_after(restored, size) and disk.allocated(restored) <= size * 1.01
    first_mb, restore_mb = _mb_s(size, first_s), _mb_s(size, restore_s)
    return [
        DataResult(
            FIRST,
            f"{first_mb:,.0f} MB/s ({first_s:.2f} s for {opts.data_gib} GiB)",
            f"sequential read {read_mb:,.0f} MB/s",
            first_mb / read_mb,
            f"stored {first_stored / disk.MIB:,.0f} MiB; server CPU {first_cpu:.2f} s; "
            f"{first_mb / write_mb:.2f} of sequential write + fsync ({write_mb:,.0f} MB/s); "
            f"{first_mb / hash_mb:.2f} of SHA-256 in two threads ({hash_mb:,.0f} MB/s)",
            measured=first_mb / read_mb,
        ),
        DataResult(
            SECOND_TIME,
            f"{second_s:.2f} s",
            f"first snapshot {first_s:.2f} s",
            second_s / first_s,
            f"{len(changed)} of {total_blocks} blocks changed; started once the first "
            f"snapshot's view was released ({released_s:.2f} s after it completed)",
            measured=second_s / first_s,
        ),
        DataResult(
            SECOND_BYTES,
            f"{second_stored / disk.MIB:,.1f} MiB stored",
            f"{changed_bytes / disk.MIB:,.1f} MiB changed",
            second_stored / changed_bytes,
            "",
            measured=second_stored / changed_bytes,
        ),
        DataResult(
            RESTORE,
            f"{restore_mb:,.0f} MB/s ({restore_s:.2f} s)",
            f"sequential write + fsync {write_mb:,.0f} MB/s",
            restore_mb / write_mb,
            f"bytes identical: {'yes' if same else 'NO'}; "
            f"1 GiB tail left a hole: {'yes' if holes else 'NO'}",
            measured=restore_mb / write_mb if same and holes else 0.0,
        ),
    ]
