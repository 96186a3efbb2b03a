"""Two `ebsemu serve` instances on one PostgreSQL database, one storage directory and block
store, and one QEMU VM: under concurrent load from both endpoints no job runs twice and a
ClientToken names one volume; concurrent attaches through both never attach one volume twice
nor two volumes at one device; a LockSnapshot through one and a DeleteSnapshot through the other
at once never both succeed, nor does a CreateVolume from a snapshot and its deletion leave the
volume without the snapshot's blocks; a job whose instance is killed mid-way is taken over by
the other one once its lease runs out."""

from __future__ import annotations

import contextlib
import hashlib
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from ebsemu.service.instances import instance_id
from tests.api_support import FAST, at_once, new_volume, poll, unique, volume_segment
from tests.pg_fixtures import PostgresServer
from tests.server import TEST_CONFIG, ZONE, ServerProcess
from tests.vmm_fixtures import HAVE_QEMU, NEEDS_QEMU, QemuVm, running_vm

LEASE_SECONDS = 3.0
THREADS = 8
ROUNDS = 2
RACES = 30  # snapshots each locked and deleted through both instances at once
VMM = "kvm-pair"
MIB = 1024 * 1024
BLOCK = 512 * 1024


@dataclass
class Pair:
    first: ServerProcess
    second: ServerProcess
    database: str
    postgres: PostgresServer
    shared: Path
    vm: QemuVm | None
    config: str
    dsn: str
    tmp_path: Path

    def third(self, name: str, env: dict[str, str | None]) -> ServerProcess:
        """Another instance on the same database and storage, started; the caller stops it."""
        server = ServerProcess(
            self.tmp_path / name,
            self.config,
            store_dsn=self.dsn,
            job_lease_seconds=LEASE_SECONDS,
            env=env,
        )
        server.start()
        return server

    def sql(self, query: str) -> list[list[str]]:
        out = self.postgres.psql(query, self.database)
        return [line.split("|") for line in out.splitlines() if line]


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer
) -> Iterator[Pair]:
    """Two instances for the module: the load and attach tests first, then the one that
    kills an instance."""
    tmp_path = tmp_path_factory.mktemp("pair")
    database = f"pair_{uuid.uuid4().hex[:12]}"
    dsn = postgres_server.create_database(database)
    shared = tmp_path / "shared"
    config = TEST_CONFIG + (
        f"\n[storage]\npath = {shared / 'storage'}\n\n[blockstore]\npath = {shared / 'blocks'}\n"
    )
    qmp_dir = tmp_path / "qmp"
    qmp_dir.mkdir()
    if HAVE_QEMU:
        config += (
            f"\n[vmm {VMM}]\ndriver = qemu\nzone = {ZONE}\nsocket_dir = {qmp_dir}\n"
            "detach_timeout = 10\n"
        )
    servers = [
        ServerProcess(tmp_path / name, config, store_dsn=dsn, job_lease_seconds=LEASE_SECONDS)
        for name in ("one", "two")
    ]
    with contextlib.ExitStack() as stack:
        vm = stack.enter_context(running_vm(qmp_dir, "pairvm", ports=4)) if HAVE_QEMU else None
        for server in servers:
            stack.callback(server.stop)
            server.start()
        yield Pair(
            servers[0], servers[1], database, postgres_server, shared, vm, config, dsn, tmp_path
        )


def test_concurrent_load_on_both_instances_runs_every_job_once(pair: Pair) -> None:
    # Clients of their own per thread (made here: making clients is not thread-safe).
    clients = [(pair.first.client(), pair.second.client()) for _ in range(THREADS)]
    failures: list[BaseException] = []
    tokens: dict[str, set[str]] = {}
    lock = threading.Lock()

    def worker(number: int) -> None:
        try:
            for round_ in range(ROUNDS):
                ec2 = clients[number][(number + round_) % 2]
                other = clients[number][(number + round_ + 1) % 2]
                token = unique()
                created = ec2.create_volume(AvailabilityZone=ZONE, Size=1, ClientToken=token)
                retried = other.create_volume(AvailabilityZone=ZONE, Size=1, ClientToken=token)
                with lock:
                    tokens[token] = {created["VolumeId"], retried["VolumeId"]}
                volume_id = created["VolumeId"]
                other.get_waiter("volume_available").wait(VolumeIds=[volume_id], WaiterConfig=FAST)
                snapshot_id = other.create_snapshot(VolumeId=volume_id)["SnapshotId"]
                ec2.get_waiter("snapshot_completed").wait(
                    SnapshotIds=[snapshot_id], WaiterConfig=FAST
                )
                ec2.delete_snapshot(SnapshotId=snapshot_id)
                other.delete_volume(VolumeId=volume_id)
        except BaseException as exc:  # reported by the test thread
            with lock:
                failures.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    assert not failures, failures[0]
    assert len(tokens) == THREADS * ROUNDS
    assert all(len(ids) == 1 for ids in tokens.values())  # both endpoints named one volume

    def settled() -> bool | None:
        running = pair.sql("SELECT count(*) FROM jobs WHERE state = 'running'")
        return True if running == [["0"]] else None

    poll(settled, timeout=60)
    jobs = pair.sql("SELECT kind, state, runs, owner FROM jobs ORDER BY id")
    kinds = {kind for kind, _, _, _ in jobs}
    assert kinds == {"create_volume", "capture_snapshot", "delete_snapshot", "delete_volume"}
    assert len(jobs) == 4 * THREADS * ROUNDS
    assert {(state, runs) for _, state, runs, _ in jobs} == {("done", "1")}
    assert (
        pair.sql(
            "SELECT kind, resource_id FROM jobs GROUP BY kind, resource_id HAVING count(*) > 1"
        )
        == []
    )
    assert len({owner.split("#")[0] for _, _, _, owner in jobs}) == 2  # both ran jobs
    per_token = pair.sql(
        "SELECT client_token, count(*) FROM (SELECT client_token, id FROM volumes "
        "WHERE client_token IS NOT NULL UNION SELECT client_token, volume_id "
        "FROM retired_client_tokens) t GROUP BY client_token HAVING count(*) > 1"
    )
    assert per_token == []


@pytest.mark.skipif(not HAVE_QEMU, reason=NEEDS_QEMU)
def test_concurrent_attaches_through_both_instances_never_attach_twice(pair: Pair) -> None:
    one, two = pair.first.client(), pair.second.client()
    iid = instance_id(VMM, "pairvm")
    volumes = [new_volume(one) for _ in range(3)]

    def through_both(first: tuple[str, str], second: tuple[str, str]) -> list[str]:
        """AttachVolume (volume, device) through each endpoint at once: their outcomes."""
        return at_once(
            [
                partial(ec2.attach_volume, VolumeId=volume_id, InstanceId=iid, Device=device)
                for ec2, (volume_id, device) in ((one, first), (two, second))
            ]
        )

    # Two volumes at one device of the instance; one volume at two devices.
    same_device = through_both((volumes[0], "/dev/sdf"), (volumes[1], "/dev/sdf"))
    same_volume = through_both((volumes[2], "/dev/sdg"), (volumes[2], "/dev/sdh"))
    assert sorted(same_device)[-1] == "ok" and same_device.count("ok") == 1, same_device
    assert same_device.count("InvalidParameterValue") == 1  # the device is in use
    assert same_volume.count("ok") == 1, same_volume
    assert set(same_volume) - {"ok"} <= {"VolumeInUse", "IncorrectState"}

    def attached() -> list[dict[str, Any]] | None:
        found = two.describe_volumes(VolumeIds=volumes)["Volumes"]
        links = [a for v in found for a in v["Attachments"]]
        return links if all(a["State"] == "attached" for a in links) else None

    links = poll(attached, timeout=60)
    assert sorted(a["Device"] for a in links)[0] == "/dev/sdf"
    assert len(links) == 2 and len({a["Device"] for a in links}) == 2
    assert len({a["VolumeId"] for a in links}) == 2
    rows = pair.sql("SELECT device FROM attachments ORDER BY device")
    assert [row[0] for row in rows] == sorted(a["Device"] for a in links)
    jobs = pair.sql("SELECT runs, state FROM jobs WHERE kind = 'attach_volume'")
    assert jobs == [["1", "done"]] * 2
    for link in links:
        one.detach_volume(VolumeId=link["VolumeId"])
    two.get_waiter("volume_available").wait(VolumeIds=volumes, WaiterConfig=FAST)


def test_a_lock_and_a_deletion_through_both_instances_at_once_never_both_succeed(
    pair: Pair,
) -> None:
    one, two = pair.first.client(), pair.second.client()
    volume_id = new_volume(one)
    snapshots = [one.create_snapshot(VolumeId=volume_id)["SnapshotId"] for _ in range(RACES)]
    one.get_waiter("snapshot_completed").wait(SnapshotIds=snapshots, WaiterConfig=FAST)
    outcomes = {
        snapshot_id: tuple(
            at_once(
                [
                    partial(
                        one.lock_snapshot,
                        SnapshotId=snapshot_id,
                        LockMode="governance",
                        LockDuration=1,
                    ),
                    partial(two.delete_snapshot, SnapshotId=snapshot_id),
                ]
            )
        )
        for snapshot_id in snapshots
    }
    # Either the lock came first and kept the snapshot, or the deletion did and the lock
    # found no snapshot: never a lock reported on a snapshot that is being deleted.
    assert set(outcomes.values()) <= {("ok", "SnapshotLocked"), ("InvalidSnapshot.NotFound", "ok")}
    locked = sorted(s for s, (locking, _) in outcomes.items() if locking == "ok")
    listed = two.describe_locked_snapshots(SnapshotIds=locked)["Snapshots"] if locked else []
    assert sorted(item["SnapshotId"] for item in listed) == locked
    left = pair.sql(f"SELECT id FROM snapshots WHERE deleted = 0 AND volume_id = '{volume_id}'")
    assert sorted(row[0] for row in left) == locked
    for snapshot_id in locked:
        two.unlock_snapshot(SnapshotId=snapshot_id)
        one.delete_snapshot(SnapshotId=snapshot_id)
    one.delete_volume(VolumeId=volume_id)


def test_a_restore_and_a_deletion_through_both_instances_at_once_leave_no_volume_short(
    pair: Pair,
) -> None:
    one, two = pair.first.client(), pair.second.client()
    source = new_volume(one)
    segment = volume_segment(pair.shared, source)
    firsts: dict[str, bytes] = {}  # snapshot -> its block 0, held by no other snapshot
    for number in range(RACES):
        first_block = number.to_bytes(8, "little") * (BLOCK // 8)
        with segment.open("r+b") as handle:
            handle.write(first_block)
        snapshot_id = one.create_snapshot(VolumeId=source)["SnapshotId"]
        one.get_waiter("snapshot_completed").wait(SnapshotIds=[snapshot_id], WaiterConfig=FAST)
        firsts[snapshot_id] = first_block
    outcomes = {
        snapshot_id: tuple(
            at_once(
                [
                    partial(one.create_volume, AvailabilityZone=ZONE, SnapshotId=snapshot_id),
                    partial(two.delete_snapshot, SnapshotId=snapshot_id),
                ]
            )
        )
        for snapshot_id in firsts
    }
    # The deletion waits for no restore: one that ends before it is asked for is no reason to
    # refuse it. What must never happen is a restore that finds its blocks gone.
    allowed = {("ok", "InvalidSnapshot.InUse"), ("InvalidSnapshot.NotFound", "ok"), ("ok", "ok")}
    assert set(outcomes.values()) <= allowed, outcomes
    made = two.describe_volumes(Filters=[{"Name": "snapshot-id", "Values": sorted(firsts)}])[
        "Volumes"
    ]
    assert len(made) == sum(creating == "ok" for creating, _ in outcomes.values())
    restored = [volume["VolumeId"] for volume in made]
    if restored:
        one.get_waiter("volume_available").wait(VolumeIds=restored, WaiterConfig=FAST)
    for volume in made:
        with volume_segment(pair.shared, volume["VolumeId"]).open("rb") as handle:
            assert handle.read(BLOCK) == firsts[volume["SnapshotId"]]
        one.delete_volume(VolumeId=volume["VolumeId"])
    for snapshot_id, (_, deleting) in outcomes.items():
        if deleting != "ok":
            two.delete_snapshot(SnapshotId=snapshot_id)
    one.delete_volume(VolumeId=source)


def test_a_snapshot_and_its_volumes_deletion_through_both_instances_at_once_lose_no_snapshot(
    pair: Pair,
) -> None:
    one, two = pair.first.client(), pair.second.client()
    volumes: dict[str, bytes] = {}  # volume -> its first blocks, held by no other volume
    for number in range(RACES):
        volume_id = new_volume(one)
        data = number.to_bytes(8, "little") * (8 * BLOCK // 8)
        with volume_segment(pair.shared, volume_id).open("r+b") as handle:
            handle.write(data)
        volumes[volume_id] = data
    created: dict[str, str] = {}  # snapshot -> its volume

    def snapshot(volume_id: str) -> None:
        created[one.create_snapshot(VolumeId=volume_id)["SnapshotId"]] = volume_id

    outcomes = [
        tuple(at_once([partial(snapshot, v), partial(two.delete_volume, VolumeId=v)]))
        for v in volumes
    ]
    # As on AWS: a volume being deleted takes no new snapshot (one deleted already is not
    # found), and a snapshot it took before completes, whatever happens to the volume then.
    allowed = {("ok", "ok"), ("IncorrectState", "ok"), ("InvalidVolume.NotFound", "ok")}
    assert set(outcomes) <= allowed, outcomes
    if created:
        one.get_waiter("snapshot_completed").wait(SnapshotIds=sorted(created), WaiterConfig=FAST)
    for snapshot_id, volume_id in created.items():
        restored = new_volume(two, SnapshotId=snapshot_id)
        with volume_segment(pair.shared, restored).open("rb") as reader:
            assert reader.read(len(volumes[volume_id])) == volumes[volume_id]
        two.delete_volume(VolumeId=restored)
        one.delete_snapshot(SnapshotId=snapshot_id)

    def all_deleted() -> bool | None:
        listed = ", ".join(f"'{v}'" for v in volumes)
        rows = pair.sql(f"SELECT state FROM volumes WHERE id IN ({listed})")
        return True if {row[0] for row in rows} <= {"deleted"} else None

    poll(all_deleted, timeout=60)


@contextlib.contextmanager
def _instance_stopped_at(pair: Pair, step: str) -> Iterator[ServerProcess]:
    """A third instance that stops for good when its work reaches fault step ``step`` (it
    holds that work's job), killed when the block ends: its jobs then go to the pair once
    their leases run out."""
    third = pair.third("three", env={"EBSEMU_FAULT": f"{step}:1:hang"})
    try:
        yield third
    finally:
        third.stop(signal.SIGKILL)


def _state_after(pair: Pair, volume_id: str, seconds: float) -> str:
    """The volume's state in the database after ``seconds``; "purged" once its row is gone."""
    time.sleep(seconds)
    rows = pair.sql(f"SELECT state FROM volumes WHERE id = '{volume_id}'")
    return rows[0][0] if rows else "purged"


def test_a_volumes_deletion_waits_for_the_freeze_of_a_snapshot_another_instance_recorded(
    pair: Pair,
) -> None:
    one, two = pair.first.client(), pair.second.client()
    volume_id = new_volume(one)
    segment = volume_segment(pair.shared, volume_id)
    with _instance_stopped_at(pair, "snapshot.recorded") as third:
        _unanswered(partial(third.client().create_snapshot, VolumeId=volume_id))

        def recorded() -> str | None:
            rows = pair.sql(f"SELECT id, state FROM snapshots WHERE volume_id = '{volume_id}'")
            return rows[0][0] if rows and rows[0][1] == "pending" else None

        snapshot_id = poll(recorded, timeout=30)
        two.delete_volume(VolumeId=volume_id)
        # The deletion waits for that freeze: the volume's bytes are still there.
        assert _state_after(pair, volume_id, 1.5) == "deleting"
        assert segment.exists()
    # The instance died before freezing: the one that takes its job over fails the snapshot,
    # and the deletion then goes on.
    one.get_waiter("volume_deleted").wait(VolumeIds=[volume_id], WaiterConfig=FAST)
    (state,) = pair.sql(f"SELECT state FROM snapshots WHERE id = '{snapshot_id}'")
    assert state == ["error"]
    assert not segment.exists()
    one.delete_snapshot(SnapshotId=snapshot_id)


def test_a_volumes_deletion_waits_for_a_copy_another_instance_began(pair: Pair) -> None:
    one, two = pair.first.client(), pair.second.client()
    source = new_volume(one)
    segment = volume_segment(pair.shared, source)
    with _instance_stopped_at(pair, "copy_volume.recorded") as third:
        _unanswered(partial(third.client().copy_volumes, SourceVolumeId=source))

        def recorded() -> str | None:
            rows = pair.sql(f"SELECT id FROM volumes WHERE source_volume_id = '{source}'")
            return rows[0][0] if rows else None

        copy = poll(recorded, timeout=30)
        two.delete_volume(VolumeId=source)
        # Past the job lease: the copy's job is still held by the instance making the copy,
        # and the source's deletion still waits for it.
        assert _state_after(pair, source, LEASE_SECONDS + 1.5) == "deleting"
        assert segment.exists()
        ((copy_state, runs),) = pair.sql(
            "SELECT v.state, j.runs FROM volumes v JOIN jobs j ON j.resource_id = v.id "
            f"WHERE v.id = '{copy}'"
        )
        assert (copy_state, runs) == ("creating", "1")
    # The instance died before copying: the one that takes the copy's job over finds no copy
    # and leaves it `error`; the source's deletion then goes on.
    one.get_waiter("volume_deleted").wait(VolumeIds=[source], WaiterConfig=FAST)
    assert _state_after(pair, copy, 0) == "error"
    assert not segment.exists()
    one.delete_volume(VolumeId=copy)


def _unanswered(call: Callable[[], Any]) -> None:
    """Make, in a thread of its own, a call that its instance stops in and never answers."""

    def quietly() -> None:
        with contextlib.suppress(Exception):
            call()

    threading.Thread(target=quietly, daemon=True).start()


def _growing(pair: Pair, third: ServerProcess, volume_id: str) -> None:
    """ModifyVolume to 2 GiB through ``third``, until its job stops before growing."""
    third.client().modify_volume(VolumeId=volume_id, Size=2)
    hanging = "fault injected: hanging at modify_volume.growing"
    poll(lambda: True if hanging in third.log_path.read_text() else None, timeout=30)


def _modification_state(pair: Pair, volume_id: str) -> str:
    ((state,),) = pair.sql(
        f"SELECT state FROM volume_modifications WHERE volume_id = '{volume_id}'"
    )
    return state


def test_a_volumes_deletion_waits_for_a_growth_another_instance_began(pair: Pair) -> None:
    one, two = pair.first.client(), pair.second.client()
    volume_id = new_volume(one)
    segment = volume_segment(pair.shared, volume_id)
    with _instance_stopped_at(pair, "modify_volume.growing") as third:
        _growing(pair, third, volume_id)
        two.delete_volume(VolumeId=volume_id)
        assert _state_after(pair, volume_id, 1.5) == "deleting"
        assert segment.exists()
    # The job taken over finds the volume being deleted and fails the modification; the
    # deletion then removes the volume.
    one.get_waiter("volume_deleted").wait(VolumeIds=[volume_id], WaiterConfig=FAST)
    assert _modification_state(pair, volume_id) == "failed"
    assert not segment.exists()


@pytest.mark.skipif(not HAVE_QEMU, reason=NEEDS_QEMU)
def test_an_attach_waits_for_a_growth_another_instance_began(pair: Pair) -> None:
    one, two = pair.first.client(), pair.second.client()
    iid = instance_id(VMM, "pairvm")
    volume_id = new_volume(one)
    with _instance_stopped_at(pair, "modify_volume.growing") as third:
        _growing(pair, third, volume_id)
        two.attach_volume(VolumeId=volume_id, InstanceId=iid, Device="/dev/sdk")
        time.sleep(1.5)
        ((attachment,),) = pair.sql(
            f"SELECT state FROM attachments WHERE volume_id = '{volume_id}'"
        )
        assert attachment == "attaching"  # not exported at the old size meanwhile

    # The job taken over grows the volume, which is then exported and attached at its new size.
    def attached() -> dict[str, Any] | None:
        (volume,) = one.describe_volumes(VolumeIds=[volume_id])["Volumes"]
        states = [a["State"] for a in volume["Attachments"]]
        return volume if states == ["attached"] else None

    volume = poll(attached, timeout=60)
    assert volume["Size"] == 2
    assert volume_segment(pair.shared, volume_id).stat().st_size == 2 * 1024**3
    assert _modification_state(pair, volume_id) != "failed"
    one.detach_volume(VolumeId=volume_id)
    two.get_waiter("volume_available").wait(VolumeIds=[volume_id], WaiterConfig=FAST)
    one.delete_volume(VolumeId=volume_id)


def _fill(segment: Path, size: int) -> None:
    """Distinct data in every block (so that each one is stored, none deduplicated)."""
    with segment.open("r+b") as handle:
        for index in range(size // BLOCK):
            handle.write(index.to_bytes(8, "little") * (BLOCK // 8))


def test_a_job_of_a_killed_instance_is_finished_by_the_other_after_its_lease(
    pair: Pair,
) -> None:
    one, two = pair.first.client(), pair.second.client()
    volume_id = one.create_volume(AvailabilityZone=ZONE, Size=1)["VolumeId"]
    one.get_waiter("volume_available").wait(VolumeIds=[volume_id], WaiterConfig=FAST)
    _fill(pair.shared / "storage" / "volumes" / volume_id / "seg-0000", 512 * MIB)

    # Snapshot through the first instance until one is caught mid-capture: stopped (SIGSTOP)
    # while still pending, its job is held by a process that will never finish it.
    caught: str | None = None
    for _ in range(5):
        snapshot_id = one.create_snapshot(VolumeId=volume_id)["SnapshotId"]

        def progressing(snapshot: str = snapshot_id) -> str | None:
            (found,) = one.describe_snapshots(SnapshotIds=[snapshot])["Snapshots"]
            started = found["State"] != "pending" or found["Progress"] != "0%"
            return str(found["State"]) if started else None

        poll(progressing, timeout=60, every=0.02)
        assert pair.first.proc is not None
        pair.first.proc.send_signal(signal.SIGSTOP)
        (state,) = pair.sql(f"SELECT state FROM snapshots WHERE id = '{snapshot_id}'")
        if state == ["pending"]:
            caught = snapshot_id
            break
        pair.first.proc.send_signal(signal.SIGCONT)
    assert caught is not None, "every capture finished before the instance could be stopped"
    (held,) = pair.sql(f"SELECT id, owner, runs FROM jobs WHERE resource_id = '{caught}'")
    pair.first.stop(signal.SIGKILL)

    two.get_waiter("snapshot_completed").wait(
        SnapshotIds=[caught], WaiterConfig={"Delay": 0.2, "MaxAttempts": 600}
    )

    def job_done() -> list[str] | None:
        (row,) = pair.sql(f"SELECT id, owner, runs, state FROM jobs WHERE resource_id = '{caught}'")
        return row if row[3] != "running" else None

    after = poll(job_done, timeout=30)
    assert after[0] == held[0]
    assert after[1] != held[1]  # taken over by the second instance
    assert (after[2], after[3]) == ("2", "done")
    assert f"resuming job {held[0]}: capture_snapshot {caught}" in pair.second.log_path.read_text()

    # The taken-over capture holds the volume's data: a volume restored from it reads the same.
    restored = two.create_volume(AvailabilityZone=ZONE, SnapshotId=caught)["VolumeId"]
    two.get_waiter("volume_available").wait(
        VolumeIds=[restored], WaiterConfig={"Delay": 0.2, "MaxAttempts": 600}
    )
    volumes = pair.shared / "storage" / "volumes"
    assert _digest(volumes / restored / "seg-0000") == _digest(volumes / volume_id / "seg-0000")


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(8 * MIB):
            digest.update(chunk)
    return digest.hexdigest()
