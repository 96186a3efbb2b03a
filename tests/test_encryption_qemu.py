"""Encryption at rest, end to end with real QEMU VMs: a volume created Encrypted is a LUKS image
that QEMU opens with its key, so data written through the VM is ciphertext in the volume file
and in the snapshot block store, reads back through the VM, survives snapshot and restore, and
cannot be opened without the key. A VMM that cannot open LUKS is refused the volume.

QEMU's HMP ``qemu-io`` writes through the attached disk (scsi-hd, whose qdev carries the
drive); reads go through a read-only NBD export of the VM's block node, checked by qemu-io.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from backends import luks
from ebsemu.keyvault import KeyVault
from ebsemu.service.instances import instance_id
from tests.api_support import FAST, aws_error, new_snapshot, poll, volume_segment
from tests.server import ZONE, ServerProcess
from tests.vmm_fixtures import HAVE_QEMU, NEEDS_QEMU, QemuVm, qmp, run, running_vm

pytestmark = pytest.mark.skipif(not HAVE_QEMU, reason=NEEDS_QEMU)

MIB = 1024 * 1024
GIB = 1024 * MIB
ZONE_B = "us-east-1b"
PATTERN = 0x5A
PLAIN = bytes([PATTERN]) * 4096  # any 4 KiB of the plaintext


@dataclass
class Lab:
    server: ServerProcess
    ec2: Any
    vm: QemuVm
    instance: str
    host_instance: str
    work: Path

    def log_tail(self) -> str:
        return self.server.log_path.read_text(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    work = tmp_path_factory.mktemp("encrypted")
    sockets = work / "qmp"
    sockets.mkdir()
    config = f"""\
[server]
deleted_visible_seconds = 2

[region us-east-1]
zones = {ZONE}, {ZONE_B}

[vmm kvm]
driver = qemu
zone = {ZONE}
socket_dir = {sockets}
bus = scsi
scsi_bus = scsi0.0
detach_timeout = 10

[vmm box]
driver = host
zone = {ZONE_B}
domain = box
"""
    with contextlib.ExitStack() as stack:
        vm = stack.enter_context(running_vm(sockets, "vault", ports=1))
        server = ServerProcess(work / "data", config)
        stack.callback(server.stop)
        server.start()
        yield Lab(
            server,
            server.client(),
            vm,
            instance_id("kvm", "vault"),
            instance_id("box", "box"),
            work,
        )


# ---- helpers --------------------------------------------------------------------------------


def wait_volume(lab: Lab, volume_id: str, state: str = "available") -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        volume = lab.ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]
        if volume["State"] == "error":
            pytest.fail(f"{volume_id} failed:\n{lab.log_tail()}")
        return volume if volume["State"] == state else None

    return poll(ready, timeout=60)


def attach(lab: Lab, volume_id: str, device: str = "/dev/sdf") -> str:
    """Attach to the VM and wait; the disk's qdev id."""
    lab.ec2.attach_volume(VolumeId=volume_id, InstanceId=lab.instance, Device=device)

    def attached() -> bool | None:
        volume = lab.ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]
        if not volume["Attachments"]:
            pytest.fail(f"attach of {volume_id} failed:\n{lab.log_tail()}")
        return True if volume["Attachments"][0]["State"] == "attached" else None

    poll(attached, timeout=60)
    return f"ebs.{volume_id}.{device.removeprefix('/dev/')}"


def detach(lab: Lab, volume_id: str) -> None:
    lab.ec2.detach_volume(VolumeId=volume_id)
    lab.ec2.get_waiter("volume_available").wait(VolumeIds=[volume_id], WaiterConfig=FAST)


def write_through_vm(lab: Lab, qdev_id: str, command: str) -> None:
    """Run a qemu-io command on the VM's attached disk (HMP answers only errors)."""
    answer = run(
        qmp(lab.vm, "human-monitor-command", {"command-line": f'qemu-io -d {qdev_id} "{command}"'})
    )
    assert answer == "", answer


def written_encrypted_volume(lab: Lab) -> str:
    """A new encrypted 1 GiB volume, attached to the VM, with 4 MiB of 0x5a written at 8 MiB
    through it and flushed."""
    volume_id: str = lab.ec2.create_volume(AvailabilityZone=ZONE, Size=1, Encrypted=True)[
        "VolumeId"
    ]
    wait_volume(lab, volume_id)
    qdev_id = attach(lab, volume_id)
    write_through_vm(lab, qdev_id, "write -P 0x5a 8M 4M")
    write_through_vm(lab, qdev_id, "flush")
    return volume_id


def reads_through_vm(lab: Lab, volume_id: str, command: str) -> bool:
    """Whether ``command`` (a qemu-io read -P) verifies on the VM's block node of the volume,
    read through a read-only NBD export of that node."""
    socket = lab.work / "nbd.sock"
    node = f"ebs-{volume_id}"

    async def export() -> None:
        await qmp(
            lab.vm, "nbd-server-start", {"addr": {"type": "unix", "data": {"path": str(socket)}}}
        )
        await qmp(
            lab.vm,
            "block-export-add",
            {"type": "nbd", "id": "check", "node-name": node, "writable": False},
        )

    async def unexport() -> None:
        await qmp(lab.vm, "block-export-del", {"id": "check"})
        await qmp(lab.vm, "nbd-server-stop")

    run(export())
    try:
        done = subprocess.run(
            ["qemu-io", "-r", "-f", "raw", "-c", command, f"nbd+unix:///{node}?socket={socket}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        run(unexport())
    assert "read " in done.stdout, done.stdout + done.stderr
    return done.returncode == 0 and "verification failed" not in done.stdout


def file_holds(path: Path, needle: bytes) -> bool:
    """Whether the file holds ``needle`` anywhere (read in 8 MiB pieces that overlap)."""
    with path.open("rb") as handle:
        tail = b""
        while chunk := handle.read(8 * MIB):
            if needle in tail + chunk:
                return True
            tail = chunk[-len(needle) :]
    return False


def block_files(data_dir: Path) -> list[Path]:
    return [p for p in (data_dir / "blocks").rglob("*") if p.is_file()]


def passphrase_of(server: ServerProcess, resource_id: str) -> str:
    """The resource's LUKS passphrase: its wrapped data key, unwrapped by the master key."""
    [(wrapped,)] = server.rows(
        "SELECT wrapped_key FROM data_keys WHERE resource_id = ?", resource_id
    )
    return KeyVault(server.data_dir / "master.key").passphrase(wrapped)


def qemu_io_with_key(path: Path, passphrase: str, command: str) -> subprocess.CompletedProcess[str]:
    """qemu-io on the volume file opened as LUKS with ``passphrase`` (given in a file)."""
    size = path.stat().st_size - luks.PADDED_HEADER_BYTES
    key_file = path.parent.parent.parent / "test-key"
    key_file.write_text(passphrase)
    try:
        return subprocess.run(
            [
                "qemu-io",
                "--object",
                f"secret,id=k,file={key_file},format=raw",
                "--image-opts",
                f"driver=luks,key-secret=k,file.driver=raw,file.size={luks.image_bytes(size)},"
                f"file.file.driver=file,file.file.filename={path}",
                "-r",
                "-c",
                command,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        key_file.unlink()


# ---- tests ----------------------------------------------------------------------------------


def test_data_written_through_the_vm_is_ciphertext_on_disk_and_plaintext_in_the_vm(
    lab: Lab,
) -> None:
    volume_id = lab.ec2.create_volume(AvailabilityZone=ZONE, Size=1, Encrypted=True)["VolumeId"]
    wait_volume(lab, volume_id)
    segment = volume_segment(lab.server.data_dir, volume_id)
    qdev_id = attach(lab, volume_id)
    write_through_vm(lab, qdev_id, "write -P 0x5a 0 1M")
    write_through_vm(lab, qdev_id, "write -P 0x5a 512M 1M")
    write_through_vm(lab, qdev_id, "flush")
    assert reads_through_vm(lab, volume_id, "read -P 0x5a 0 1M")
    assert reads_through_vm(lab, volume_id, "read -P 0x5a 512M 1M")
    assert not reads_through_vm(lab, volume_id, "read -P 0x5a 2M 1M")  # never written
    # On disk: the LUKS header, then ciphertext where the VM wrote, and no plaintext anywhere.
    with segment.open("rb") as handle:
        assert handle.read(6) == luks.MAGIC
        handle.seek(luks.PAYLOAD_BYTES)
        written = handle.read(MIB)
    assert written != bytes(MIB) and PLAIN[:16] not in written
    assert not file_holds(segment, PLAIN)
    detach(lab, volume_id)
    secrets = run(qmp(lab.vm, "qom-list", {"path": "/objects"}))
    assert f"ebs-{volume_id}-luks" not in {entry["name"] for entry in secrets}


def test_snapshot_holds_only_ciphertext_and_a_restored_volume_reads_the_data_back(
    lab: Lab,
) -> None:
    volume_id = written_encrypted_volume(lab)
    detach(lab, volume_id)
    snapshot_id = new_snapshot(lab.ec2, volume_id)
    snapshot = lab.ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
    assert snapshot["Encrypted"] is True
    # Stored: the block holding the LUKS header and its one active key slot, and the 9 blocks
    # the 4 MiB written at 8 MiB spans once shifted by the header; the rest are holes.
    assert snapshot["FullSnapshotSizeInBytes"] == 10 * 512 * 1024
    stored = block_files(lab.server.data_dir)
    assert stored and not any(file_holds(path, PLAIN) for path in stored)
    restored = lab.ec2.create_volume(AvailabilityZone=ZONE, SnapshotId=snapshot_id, Size=2)
    assert restored["Encrypted"] is True and restored["KmsKeyId"] == snapshot["KmsKeyId"]
    wait_volume(lab, restored["VolumeId"])
    assert not file_holds(volume_segment(lab.server.data_dir, restored["VolumeId"]), PLAIN)
    attach(lab, restored["VolumeId"], "/dev/sdg")
    assert reads_through_vm(lab, restored["VolumeId"], "read -P 0x5a 8M 4M")
    assert not reads_through_vm(lab, restored["VolumeId"], "read -P 0x5a 16M 1M")
    detach(lab, restored["VolumeId"])


def test_only_the_volumes_own_data_key_opens_its_file(lab: Lab) -> None:
    volume_id = lab.ec2.create_volume(AvailabilityZone=ZONE, Size=1, Encrypted=True)["VolumeId"]
    other_id = lab.ec2.create_volume(AvailabilityZone=ZONE, Size=1, Encrypted=True)["VolumeId"]
    wait_volume(lab, volume_id)
    wait_volume(lab, other_id)
    qdev_id = attach(lab, volume_id)
    write_through_vm(lab, qdev_id, "write -P 0x5a 0 1M")
    detach(lab, volume_id)
    segment = volume_segment(lab.server.data_dir, volume_id)
    right = qemu_io_with_key(segment, passphrase_of(lab.server, volume_id), "read -P 0x5a 0 1M")
    assert right.returncode == 0 and "verification failed" not in right.stdout, right.stderr
    wrong = qemu_io_with_key(segment, passphrase_of(lab.server, other_id), "read 0 1M")
    assert wrong.returncode != 0
    assert "Invalid password" in wrong.stderr
    # Opened without the luks layer, the file shows only ciphertext.
    raw = subprocess.run(
        ["qemu-io", "-r", "-f", "raw", "-c", f"read -P 0x5a {luks.PAYLOAD_BYTES} 1M", str(segment)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "verification failed" in raw.stdout
    # Neither key was ever written to the server's log.
    log = lab.server.log_path.read_text(errors="replace")
    assert passphrase_of(lab.server, volume_id) not in log
    assert passphrase_of(lab.server, other_id) not in log


def test_a_vmm_that_cannot_open_luks_is_refused_the_volume(lab: Lab) -> None:
    volume_id = lab.ec2.create_volume(AvailabilityZone=ZONE_B, Size=1, Encrypted=True)["VolumeId"]
    wait_volume(lab, volume_id)
    code, message, status = aws_error(
        lab.ec2.attach_volume, VolumeId=volume_id, InstanceId=lab.host_instance, Device="/dev/sdf"
    )
    assert (code, status) == ("UnsupportedOperation", 400)
    assert "encrypted" in message and volume_id in message
    assert wait_volume(lab, volume_id)["Attachments"] == []


def test_an_encrypted_volume_opens_again_after_a_server_restart(lab: Lab) -> None:
    volume_id = lab.ec2.create_volume(AvailabilityZone=ZONE, Size=1, Encrypted=True)["VolumeId"]
    wait_volume(lab, volume_id)
    qdev_id = attach(lab, volume_id)
    write_through_vm(lab, qdev_id, "write -P 0x5a 64M 1M")
    detach(lab, volume_id)
    lab.server.restart()
    lab.ec2 = lab.server.client()
    attach(lab, volume_id, "/dev/sdh")
    assert reads_through_vm(lab, volume_id, "read -P 0x5a 64M 1M")
    detach(lab, volume_id)


def test_a_copy_of_an_encrypted_volume_is_its_ciphertext_opened_by_the_same_key(
    lab: Lab,
) -> None:
    volume_id = written_encrypted_volume(lab)
    (copy,) = lab.ec2.copy_volumes(SourceVolumeId=volume_id)["Volumes"]  # copied in use
    source = lab.ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]
    assert copy["Encrypted"] is True and copy["KmsKeyId"] == source["KmsKeyId"]
    wait_volume(lab, copy["VolumeId"])
    detach(lab, volume_id)

    segment = volume_segment(lab.server.data_dir, copy["VolumeId"])
    assert not file_holds(segment, PLAIN)
    opened = qemu_io_with_key(
        segment, passphrase_of(lab.server, copy["VolumeId"]), "read -P 0x5a 8M 4M"
    )
    assert opened.returncode == 0 and "verification failed" not in opened.stdout, opened.stderr
    attach(lab, copy["VolumeId"], "/dev/sdg")
    assert reads_through_vm(lab, copy["VolumeId"], "read -P 0x5a 8M 4M")
    detach(lab, copy["VolumeId"])
    code, _, _ = aws_error(lab.ec2.copy_volumes, SourceVolumeId=volume_id, Size=2)
    assert code == "UnsupportedOperation"  # an encrypted volume cannot grow here
