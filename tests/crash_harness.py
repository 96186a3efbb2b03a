"""Crash injection: run a server, drive random EBS work at it with boto3, kill it (SIGKILL at a
random moment, or at a named job step through EBSEMU_FAULT), restart it, and check that it
settled into a state EC2 allows and that the store and the disks agree.

`python -m tests.crash_harness --rounds 200` runs a long campaign; tests/test_crash.py runs a
short one. The work is create, write (bytes put into an available volume's file, as a guest
would), snapshot, restore, delete volume and delete snapshot on the file backend, and attach
and detach to a diskless QEMU VM that keeps running across the server's restarts (when QEMU is
installed). After each restart it asserts:

- every resource reaches a stable state within SETTLE_SECONDS (nothing creating, deleting,
  pending, no frozen view still being dropped) and no job stays unfinished;
- no volume directory, frozen view or block exists without its record, and every available
  volume and completed snapshot has its data; the VM holds exactly the attached volumes;
- every available volume holds exactly the bytes written to it (or restored into it), and every
  restore of a completed snapshot is byte-identical to the volume when it was snapshotted.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from ebsemu import faults
from ebsemu.service.instances import instance_id
from tests.block_support import stored_blocks
from tests.server import TEST_CONFIG, ZONE, ServerProcess
from tests.vmm_fixtures import HAVE_QEMU, QemuVm, qmp, run, running_vm

BLOCK = 512 * 1024
VOLUME_GIB = 1
VOLUME_BLOCKS = VOLUME_GIB * 1024 * 1024 * 1024 // BLOCK
SETTLE_SECONDS = 30.0
DYING_SECONDS = 10.0  # how long a server whose socket closed may take to exit
START_TIMEOUT_SECONDS = 120.0
MAX_OPS_PER_ROUND = 40
STABLE_VOLUME = {"available", "in-use", "error"}
STABLE_SNAPSHOT = {"completed", "error"}
# Steps the file backend without a VMM reaches (attach, detach and a pause need an instance).
STORAGE_STEPS = tuple(
    s for s in faults.STEPS if not s.startswith(("attach.", "detach.", "snapshot.paused"))
)
VMM = "crash-kvm"
DOMAIN = "crashvm"
DEVICES = tuple(f"/dev/sd{c}" for c in "fghijklm")
VM_CONFIG = """
[vmm crash-kvm]
driver = qemu
zone = {zone}
socket_dir = {sockets}
detach_timeout = 10
"""
CLIENT_CONFIG = BotoConfig(
    retries={"max_attempts": 1}, connect_timeout=2, read_timeout=60, max_pool_connections=4
)

Content = dict[int, int]  # block index -> token; a block's bytes are block_bytes(token)


def block_bytes(token: int) -> bytes:
    return token.to_bytes(8, "big") * (BLOCK // 8)


def token_digest(token: int) -> bytes:
    return hashlib.sha256(block_bytes(token)).digest()


class ServerDied(Exception):
    """The server process ended (killed on purpose) while the harness was talking to it."""


@dataclass
class Tally:
    rounds: int = 0
    kills_random: int = 0
    kills_at_step: dict[str, int] = field(default_factory=dict)
    operations: int = 0
    restores_verified: int = 0
    volumes_verified: int = 0
    error_outcomes: int = 0
    max_settle_seconds: float = 0.0
    inconsistencies: list[str] = field(default_factory=list)

    @property
    def kills(self) -> int:
        return self.kills_random + sum(self.kills_at_step.values())

    def summary(self) -> str:
        steps = ", ".join(f"{k}={v}" for k, v in sorted(self.kills_at_step.items()))
        lines = [
            f"rounds: {self.rounds}",
            f"kills survived: {self.kills} ({self.kills_random} random, at steps: {steps})",
            f"operations run: {self.operations}",
            f"snapshot restores verified byte-identical: {self.restores_verified}",
            f"volume contents verified: {self.volumes_verified}",
            f"allowed error outcomes (volume or snapshot in error): {self.error_outcomes}",
            f"longest settle after restart: {self.max_settle_seconds:.2f} s",
            f"inconsistencies found: {len(self.inconsistencies)}",
            *(f"  - {line}" for line in self.inconsistencies),
        ]
        return "\n".join(lines)


class Harness:
    """``vm``: a diskless QEMU VM (running for the whole campaign, across server restarts)
    that volumes are attached to and detached from, or None."""

    def __init__(self, work: Path, seed: int, vm: QemuVm | None = None) -> None:
        self.rng = random.Random(seed)
        # A volume grows as often as the harness asks.
        config = TEST_CONFIG.replace("[limits]\n", "[limits]\nmodification_cooldown_seconds = 0\n")
        if vm is not None:
            config += VM_CONFIG.format(zone=ZONE, sockets=vm.socket.parent)
        self.vm = vm
        self.instance = instance_id(VMM, DOMAIN)
        self.attached: dict[str, str] = {}  # volume id -> device, as the server last said
        self.server = ServerProcess(work / "data", config)
        self.server.start_timeout = START_TIMEOUT_SECONDS
        self.tally = Tally()
        self.volumes: dict[str, Content] = {}  # what each live volume must hold
        self.snapshots: dict[str, Content] = {}  # what each completed snapshot must restore
        self.next_token = 1
        self._errors_seen: set[str] = set()
        self.journal: list[str] = []
        self._ec2: Any = None

    # ---- server lifecycle --------------------------------------------------------------

    def start(self, fault: str | None = None) -> None:
        self.server.env[faults.ENV] = fault
        self.server.start()
        self._ec2 = self.server.client(config=CLIENT_CONFIG)

    def alive(self) -> bool:
        return self.server.proc is not None and self.server.proc.poll() is None

    def dying(self) -> bool:
        """After a refused or dropped connection: whether the server is on its way out (a
        fault kills it, and its socket closes a moment before the process is gone)."""
        proc = self.server.proc
        if proc is None:
            return True
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=DYING_SECONDS)
        return proc.poll() is not None

    def stop(self) -> None:
        self.server.stop()

    @property
    def ec2(self) -> Any:
        return self._ec2

    # ---- rounds ------------------------------------------------------------------------

    def round_at_step(self, step: str) -> None:
        """Run work until the server dies at ``step``, then restart and check."""
        self.start(f"{step}:1")
        self._work_until_dead(preferred=_OPS_FOR_STEP[step])
        code = None
        if self.server.proc is not None:
            try:
                code = self.server.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # every op ran, and no job reached the step
                self.journal.append(f"round {self.tally.rounds}: {step} not reached")
                self.stop()
        if code != faults.KILLED_EXIT:
            self.tally.inconsistencies.append(f"fault at {step} not reached (exit {code})")
        else:
            self.tally.kills_at_step[step] = self.tally.kills_at_step.get(step, 0) + 1
        self.server.proc = None
        self._restart_and_check()

    def round_random(self) -> None:
        """Run work and SIGKILL the server after a random delay, then restart and check."""
        self.start()
        proc = self.server.proc
        assert proc is not None
        timer = threading.Timer(self.rng.uniform(0.05, 2.0), proc.send_signal, [signal.SIGKILL])
        timer.start()
        try:
            self._work_until_dead(preferred=())
        finally:
            timer.cancel()
        if self.alive():
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        self.server.proc = None
        self.tally.kills_random += 1
        self._restart_and_check()

    def _restart_and_check(self) -> None:
        self.tally.rounds += 1
        self.start()
        self.settle_and_check()
        self.stop()

    def _work_until_dead(self, preferred: tuple[str, ...]) -> None:
        for _ in range(MAX_OPS_PER_ROUND):
            if not self.alive():
                return
            name = self._pick(preferred)
            try:
                self.tally.operations += 1
                self.journal.append(f"round {self.tally.rounds}: {name}")
                OPS[name](self)
            except ServerDied:
                return
            except ClientError as exc:
                self.tally.inconsistencies.append(f"{name} failed: {exc}")
        # The fault was not reached or the timer had not fired: the round ends here.

    def _pick(self, preferred: tuple[str, ...]) -> str:
        possible = [n for n in OPS if _possible(self, n)]
        wanted = [n for n in preferred if n in possible]
        if wanted and self.rng.random() < 0.8:
            return self.rng.choice(wanted)
        return self.rng.choice(possible)

    def call(self, method: str, **params: Any) -> Any:
        """A boto3 call; ServerDied if the server was killed under it."""
        try:
            return getattr(self.ec2, method)(**params)
        except ClientError as exc:
            if not self.alive():
                raise ServerDied() from exc
            raise
        except BotoCoreError as exc:  # no answer: the connection was refused or dropped
            if self.dying():
                raise ServerDied() from exc
            raise

    def wait_for(self, probe: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + SETTLE_SECONDS
        while not probe():
            if not self.alive():
                raise ServerDied()
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} did not happen within {SETTLE_SECONDS} s")
            time.sleep(0.05)

    # ---- data --------------------------------------------------------------------------

    def volume_file(self, volume_id: str) -> Path:
        return self.server.data_dir / "storage" / "volumes" / volume_id / "seg-0000"

    def write_blocks(self, volume_id: str) -> None:
        content = self.volumes[volume_id]
        with self.volume_file(volume_id).open("r+b") as f:
            for _ in range(self.rng.randint(1, 6)):
                index = self.rng.randrange(VOLUME_BLOCKS)
                token = self.next_token
                self.next_token += 1
                os.pwrite(f.fileno(), block_bytes(token), index * BLOCK)
                content[index] = token
            os.fsync(f.fileno())

    def read_content(self, volume_id: str) -> dict[int, bytes]:
        """Digest of every non-zero block of the volume's file."""
        found: dict[int, bytes] = {}
        with self.volume_file(volume_id).open("rb") as f:
            fd = f.fileno()
            size = os.fstat(fd).st_size
            offset = 0
            while offset < size:
                try:
                    start = os.lseek(fd, offset, os.SEEK_DATA)
                except OSError:
                    break
                end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
                for index in range(start // BLOCK, (end + BLOCK - 1) // BLOCK):
                    data = os.pread(fd, BLOCK, index * BLOCK)
                    if data.strip(b"\0"):
                        found[index] = hashlib.sha256(data).digest()
                offset = max(end, offset + 1)
        return found

    def matches(self, volume_id: str, content: Content) -> bool:
        wanted = {index: token_digest(token) for index, token in content.items()}
        found = self.read_content(volume_id)
        if found != wanted:
            self.journal.append(
                f"{volume_id}: missing {sorted(wanted.keys() - found.keys())}, "
                f"extra {sorted(found.keys() - wanted.keys())}, differ "
                f"{sorted(i for i in wanted.keys() & found.keys() if wanted[i] != found[i])}"
            )
        return found == wanted

    # ---- after a restart ---------------------------------------------------------------

    def settle_and_check(self) -> None:
        began = time.monotonic()
        volumes, snapshots = self._settled()
        self.tally.max_settle_seconds = max(self.tally.max_settle_seconds, time.monotonic() - began)
        self._adopt(volumes, snapshots)
        self._check_store_and_disks()

    def _settled(self) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            volumes = {v["VolumeId"]: v for v in self.ec2.describe_volumes()["Volumes"]}
            snapshots = {
                s["SnapshotId"]: s
                for s in self.ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]
            }
            stuck = [i for i, v in volumes.items() if v["State"] in ("creating", "deleting")]
            stuck += [
                f"{i}/{a['State']}"
                for i, v in volumes.items()
                for a in v.get("Attachments", [])
                if a["State"] != "attached"
            ]
            stuck += [i for i, s in snapshots.items() if s["State"] == "pending"]
            # A capture drops (or keeps) its view just after the write that completes the
            # snapshot and closes its job: a view still there is being dropped.
            stuck += [f"view {name}" for name in self._views()]
            if not stuck and not self._running_jobs():
                return volumes, snapshots
            if time.monotonic() > deadline:
                self.tally.inconsistencies.append(
                    f"still transitional {SETTLE_SECONDS} s after restart: {sorted(stuck)}"
                )
                return volumes, snapshots
            time.sleep(0.05)

    def _adopt(
        self, volumes: dict[str, dict[str, Any]], snapshots: dict[str, dict[str, Any]]
    ) -> None:
        """Bring the model up to what an interrupted call may or may not have done."""
        for snapshot_id, snapshot in snapshots.items():
            if snapshot["State"] == "error":
                self._count_error(snapshot_id)
                self.snapshots.pop(snapshot_id, None)
            elif snapshot_id not in self.snapshots and snapshot["State"] == "completed":
                source = self.volumes.get(snapshot["VolumeId"])
                if source is None:
                    self.tally.inconsistencies.append(
                        f"{snapshot_id} completed from a volume the harness never saw"
                    )
                else:
                    self.snapshots[snapshot_id] = dict(source)
                    self.journal.append(f"  adopted {snapshot_id} of {snapshot['VolumeId']}")
        for snapshot_id in list(self.snapshots):
            if snapshot_id not in snapshots:
                self.snapshots.pop(snapshot_id)  # an interrupted DeleteSnapshot went through
        for volume_id, volume in volumes.items():
            state = volume["State"]
            if state == "error":
                self._count_error(volume_id)
                self.volumes.pop(volume_id, None)
            elif state in STABLE_VOLUME and volume_id not in self.volumes:
                copied_from = str(volume.get("SourceVolumeId") or "")
                if copied_from:  # an interrupted CopyVolumes went through: its source's bytes
                    if copied_from not in self.volumes:
                        self.tally.inconsistencies.append(
                            f"{volume_id} copied from {copied_from}, which is not a known volume"
                        )
                        continue
                    self.volumes[volume_id] = dict(self.volumes[copied_from])
                    self.journal.append(f"  adopted {volume_id}, a copy of {copied_from}")
                    continue
                origin = volume.get("SnapshotId") or ""
                if origin and origin not in self.snapshots:
                    self.tally.inconsistencies.append(
                        f"{volume_id} restored from {origin}, which is not a known snapshot"
                    )
                    continue
                self.volumes[volume_id] = dict(self.snapshots.get(origin, {}))
        for volume_id in list(self.volumes):
            if volumes.get(volume_id, {}).get("State") not in STABLE_VOLUME:
                self.volumes.pop(volume_id)  # an interrupted DeleteVolume went through
        # An interrupted attach or detach may have gone either way: the server's word is kept,
        # and checked against what the VM holds.
        self.attached = {
            volume_id: attachment["Device"]
            for volume_id, volume in volumes.items()
            for attachment in volume.get("Attachments", [])
            if volume_id in self.volumes
        }

    def _count_error(self, resource_id: str) -> None:
        if resource_id not in self._errors_seen:
            self._errors_seen.add(resource_id)
            self.tally.error_outcomes += 1

    def _check_store_and_disks(self) -> None:
        problems = self.tally.inconsistencies
        rows = self._rows
        states = dict(rows("SELECT id, state FROM volumes"))
        snapshot_states = dict(rows("SELECT id, state FROM snapshots WHERE deleted = 0"))
        referenced = {bytes(r[0]) for r in rows("SELECT digest FROM snapshot_blocks")}
        completed_needed = {
            bytes(r[0])
            for r in rows(
                "SELECT b.digest FROM snapshot_blocks b JOIN snapshots s "
                "ON s.id = b.snapshot_id WHERE s.state = 'completed'"
            )
        }
        with_manifest = {r[0] for r in rows("SELECT snapshot_id FROM snapshot_blocks")}
        storage = self.server.data_dir / "storage"
        dirs = {p.name for p in (storage / "volumes").iterdir() if not p.name.startswith(".")}
        for volume_id in sorted(dirs):
            if states.get(volume_id) not in ("available", "in-use", "error"):
                problems.append(f"volume directory {volume_id} without a live record")
        sizes = dict(rows("SELECT id, size_gib FROM volumes"))
        for volume_id, state in sorted(states.items()):
            if state in ("available", "in-use") and volume_id not in dirs:
                problems.append(f"{state} volume {volume_id} has no storage")
            elif state in ("available", "in-use"):
                held = sum(
                    p.stat().st_size for p in (storage / "volumes" / volume_id).glob("seg-*")
                )
                if held != int(sizes[volume_id]) * 1024**3:
                    problems.append(f"volume {volume_id} of {sizes[volume_id]} GiB holds {held}")
        views = self._views()
        if views:
            problems.append(f"frozen views left with nothing pending: {views}")
        stored = {bytes.fromhex(name) for name in stored_blocks(self.server.data_dir / "blocks")}
        if stored - referenced:
            problems.append(f"{len(stored - referenced)} block(s) without a manifest row")
        if completed_needed - stored:
            problems.append(
                f"{len(completed_needed - stored)} block(s) of completed snapshots lost"
            )
        stale = {s for s in with_manifest if snapshot_states.get(s) != "completed"}
        if stale:
            problems.append(f"manifest rows of snapshots not completed: {sorted(stale)}")
        if self.vm is not None:
            in_vm = self.disks_in_vm()
            if in_vm != set(self.attached):
                problems.append(
                    f"VM holds {sorted(in_vm)} but the attachments are {sorted(self.attached)}"
                )
            status = run(qmp(self.vm, "query-status"))["status"]
            if status != "running":  # paused for a snapshot's copy, and not resumed
                problems.append(f"the VM is {status}, not running")
        for volume_id, content in self.volumes.items():
            if states.get(volume_id) in ("available", "in-use"):
                self.tally.volumes_verified += 1
                if not self.matches(volume_id, content):
                    problems.append(f"volume {volume_id} does not hold the bytes it should")

    def disks_in_vm(self) -> set[str]:
        """The ebsemu volumes the VM's QEMU holds a block device for."""
        assert self.vm is not None
        blocks = run(qmp(self.vm, "query-block"))
        found: set[str] = set()
        for block in blocks:
            text = repr(block)
            found |= {v for v in self._known_volume_ids() if v in text}
        return found

    def _known_volume_ids(self) -> set[str]:
        return {r[0] for r in self._rows("SELECT id FROM volumes")}

    def _views(self) -> list[str]:
        return sorted(p.name for p in (self.server.data_dir / "storage" / "views").iterdir())

    def _running_jobs(self) -> int:
        [(running,)] = self._rows("SELECT COUNT(*) FROM jobs WHERE state = 'running'")
        return int(running)

    def _rows(self, query: str) -> list[tuple[Any, ...]]:
        return self.server.rows(query)

    # ---- the end: every completed snapshot restores byte-identical ------------------------

    def verify_all_snapshots(self) -> None:
        self.start()
        try:
            self.settle_and_check()
            for snapshot_id, content in sorted(self.snapshots.items()):
                volume_id = self._restore(snapshot_id)
                self.tally.restores_verified += 1
                if not self.matches(volume_id, content):
                    self.tally.inconsistencies.append(
                        f"restore of {snapshot_id} is not byte-identical"
                    )
                self.call("delete_volume", VolumeId=volume_id)
                self.volumes.pop(volume_id, None)
            self.settle_and_check()
        finally:
            self.stop()

    def _restore(self, snapshot_id: str) -> str:
        volume_id: str = self.call("create_volume", AvailabilityZone=ZONE, SnapshotId=snapshot_id)[
            "VolumeId"
        ]
        self.wait_for(lambda: self._state(volume_id) != "creating", f"restore of {snapshot_id}")
        if self._state(volume_id) != "available":
            self.tally.inconsistencies.append(f"restore of {snapshot_id} ended in error")
        self.volumes[volume_id] = dict(self.snapshots[snapshot_id])
        return volume_id

    def _state(self, volume_id: str) -> str:
        volume = self.call("describe_volumes", VolumeIds=[volume_id])["Volumes"][0]
        return str(volume["State"])


# ---- operations ------------------------------------------------------------------------


def op_create(h: Harness) -> None:
    volume_id: str = h.call("create_volume", AvailabilityZone=ZONE, Size=VOLUME_GIB)["VolumeId"]
    h.volumes[volume_id] = {}
    h.wait_for(lambda: h._state(volume_id) != "creating", f"creation of {volume_id}")


def op_write(h: Harness) -> None:
    volume_id = h.rng.choice(sorted(h.volumes))
    if h._state(volume_id) == "available":
        h.write_blocks(volume_id)
        h.journal.append(f"  wrote {volume_id}: {sorted(h.volumes[volume_id].items())}")


def op_snapshot(h: Harness) -> None:
    _snapshot(h, h.rng.choice(sorted(h.volumes)))


def op_snapshot_attached(h: Harness) -> None:
    """A snapshot of a volume the VM holds: without reflink its view is a copy, taken with
    the VM paused."""
    _snapshot(h, h.rng.choice(sorted(h.attached)))


def _snapshot(h: Harness, volume_id: str) -> None:
    content = dict(h.volumes[volume_id])
    snapshot_id: str = h.call("create_snapshot", VolumeId=volume_id)["SnapshotId"]
    h.journal.append(f"  {snapshot_id} of {volume_id}")

    def settled() -> bool:
        [snap] = h.call("describe_snapshots", SnapshotIds=[snapshot_id])["Snapshots"]
        return str(snap["State"]) != "pending"

    h.wait_for(settled, f"snapshot {snapshot_id}")
    [snapshot] = h.call("describe_snapshots", SnapshotIds=[snapshot_id])["Snapshots"]
    if snapshot["State"] == "completed":
        h.snapshots[snapshot_id] = content
    else:
        h.tally.inconsistencies.append(f"snapshot {snapshot_id} failed without a crash")


def op_restore(h: Harness) -> None:
    snapshot_id = h.rng.choice(sorted(h.snapshots))
    volume_id = h._restore(snapshot_id)
    if h._state(volume_id) == "available":
        h.tally.restores_verified += 1
        if not h.matches(volume_id, h.snapshots[snapshot_id]):
            h.tally.inconsistencies.append(f"restore of {snapshot_id} is not byte-identical")


def op_copy(h: Harness) -> None:
    """CopyVolumes of one volume: the copy holds what its source held."""
    source = h.rng.choice(sorted(h.volumes))
    if h._state(source) not in ("available", "in-use"):
        return
    content = dict(h.volumes[source])
    (copy,) = h.call("copy_volumes", SourceVolumeId=source)["Volumes"]
    volume_id = str(copy["VolumeId"])
    h.wait_for(lambda: h._state(volume_id) != "creating", f"copy of {source}")
    if h._state(volume_id) != "available":
        h.tally.inconsistencies.append(f"copy of {source} ended in error")
    elif not h.matches(volume_id, content):
        h.tally.inconsistencies.append(f"copy {volume_id} of {source} is not byte-identical")
    h.volumes[volume_id] = content


def op_grow(h: Harness) -> None:
    """ModifyVolume one GiB larger, until the storage has grown (`optimizing` or after)."""
    volume_id = h.rng.choice(sorted(h.volumes))
    (volume,) = h.call("describe_volumes", VolumeIds=[volume_id])["Volumes"]
    active = [{"Name": "volume-id", "Values": [volume_id]}, *_ACTIVE]
    modifications = h.call("describe_volumes_modifications", Filters=active)
    if volume["State"] not in ("available", "in-use") or modifications["VolumesModifications"]:
        return
    h.call("modify_volume", VolumeId=volume_id, Size=volume["Size"] + 1)

    def grown() -> bool:
        found = h.call("describe_volumes_modifications", VolumeIds=[volume_id])
        return str(found["VolumesModifications"][0]["ModificationState"]) != "modifying"

    h.wait_for(grown, f"growth of {volume_id}")


_ACTIVE = [{"Name": "modification-state", "Values": ["modifying", "optimizing"]}]


def op_delete_volume(h: Harness) -> None:
    volume_id = h.rng.choice(sorted(set(h.volumes) - set(h.attached)))
    h.call("delete_volume", VolumeId=volume_id)
    h.volumes.pop(volume_id)


def op_attach(h: Harness) -> None:
    volume_id = h.rng.choice(sorted(set(h.volumes) - set(h.attached)))
    if h._state(volume_id) != "available":
        return
    device = h.rng.choice(sorted(set(DEVICES) - set(h.attached.values())))
    h.call("attach_volume", VolumeId=volume_id, InstanceId=h.instance, Device=device)

    def settled() -> bool:
        volume = h.call("describe_volumes", VolumeIds=[volume_id])["Volumes"][0]
        return all(a["State"] != "attaching" for a in volume["Attachments"])

    h.wait_for(settled, f"attach of {volume_id}")
    volume = h.call("describe_volumes", VolumeIds=[volume_id])["Volumes"][0]
    if volume["Attachments"]:
        h.attached[volume_id] = device
    else:
        h.tally.inconsistencies.append(f"attach of {volume_id} failed without a crash")


def op_detach(h: Harness) -> None:
    volume_id = h.rng.choice(sorted(h.attached))
    h.call("detach_volume", VolumeId=volume_id)
    h.wait_for(lambda: h._state(volume_id) == "available", f"detach of {volume_id}")
    h.attached.pop(volume_id)


def op_delete_snapshot(h: Harness) -> None:
    snapshot_id = h.rng.choice(sorted(h.snapshots))
    h.call("delete_snapshot", SnapshotId=snapshot_id)
    h.snapshots.pop(snapshot_id)  # only now: if the call is cut short, the model keeps it


OPS: dict[str, Callable[[Harness], None]] = {
    "create": op_create,
    "write": op_write,
    "snapshot": op_snapshot,
    "snapshot_attached": op_snapshot_attached,
    "restore": op_restore,
    "copy": op_copy,
    "grow": op_grow,
    "delete_volume": op_delete_volume,
    "delete_snapshot": op_delete_snapshot,
    "attach": op_attach,
    "detach": op_detach,
}

_OPS_FOR_STEP: dict[str, tuple[str, ...]] = {
    "create_volume.allocated": ("create",),
    "create_volume.restored": ("restore", "snapshot", "write"),
    "copy_volume.recorded": ("copy", "write"),
    "snapshot.recorded": ("snapshot", "write"),
    "snapshot.paused": ("attach", "snapshot_attached"),
    "snapshot.frozen": ("snapshot", "write"),
    "snapshot.batch": ("snapshot", "write"),
    "snapshot.captured": ("snapshot", "write"),
    "snapshot.completed": ("snapshot", "write"),
    "modify_volume.growing": ("grow", "create"),
    "delete_volume.removed": ("delete_volume", "create"),
    "delete_snapshot.swept": ("delete_snapshot", "snapshot", "write"),
    "attach.exported": ("attach", "create", "detach"),
    "attach.attached": ("attach", "create", "detach"),
    "detach.detached": ("detach", "attach", "create"),
}


def _possible(h: Harness, name: str) -> bool:
    if name == "attach":
        return (
            h.vm is not None
            and bool(set(h.volumes) - set(h.attached))
            and (len(h.attached) < len(DEVICES))
        )
    if name in ("detach", "snapshot_attached"):
        return bool(h.attached)
    if name == "delete_volume":
        return bool(set(h.volumes) - set(h.attached))
    if name in ("write", "snapshot", "grow"):
        return bool(h.volumes)
    if name in ("restore", "delete_snapshot"):
        return bool(h.snapshots) and len(h.volumes) < 12
    if name == "copy":
        return bool(h.volumes) and len(h.volumes) < 12
    return len(h.volumes) < 12


def campaign(work: Path, *, rounds: int, seed: int, vm: bool = True) -> Harness:
    """Every fault step once (attach and detach ones with a QEMU VM, when ``vm`` and QEMU is
    here), then ``rounds`` random kills, then verify that every snapshot restores."""
    with contextlib.ExitStack() as stack:
        machine = None
        if vm and HAVE_QEMU:
            sockets = work / "qmp"
            sockets.mkdir(parents=True, exist_ok=True)
            machine = stack.enter_context(running_vm(sockets, DOMAIN, ports=len(DEVICES)))
        harness = Harness(work, seed, machine)
        stack.callback(harness.stop)  # a round that raised leaves no server behind
        for step in steps_for(harness):
            harness.round_at_step(step)
        for _ in range(rounds):
            harness.round_random()
        harness.verify_all_snapshots()
    return harness


def steps_for(harness: Harness) -> tuple[str, ...]:
    """The steps to kill at, one round each: the storage steps first, then (with the VM) the
    steps that need an instance, whose rounds leave volumes attached, where no write goes."""
    if harness.vm is None:
        return STORAGE_STEPS
    return STORAGE_STEPS + tuple(s for s in faults.STEPS if s not in STORAGE_STEPS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.crash_harness", description=__doc__)
    parser.add_argument("--rounds", type=int, default=50, help="random-kill rounds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--journal", action="store_true", help="print the operations run")
    parser.add_argument("--no-vm", action="store_true", help="no QEMU VM: no attach/detach")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ebsemu-crash-") as work:
        harness = campaign(Path(work), rounds=args.rounds, seed=args.seed, vm=not args.no_vm)
    tally = harness.tally
    if tally.inconsistencies and args.journal:
        print("\n".join(harness.journal))
    print(tally.summary())
    return 1 if tally.inconsistencies else 0


if __name__ == "__main__":
    sys.exit(main())
