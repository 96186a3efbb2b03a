"""Fixtures for the lvm storage backend tests.

- ``LoopVg``: a real volume group on a loop device over a sparse file. This host has no
  device-mapper, so LVM runs with ``global{activation=0}``: metadata commands (lvcreate,
  lvextend, lvreduce, lvchange tags, lvremove, lvs, vgs) work, no /dev/VG/LV node ever appears.
- ``MetadataOnlyRunner``: runs LVM's commands for real and records (and answers) the ones that
  need a device node (blkdiscard), keeping every argv in order.
- ``FakeLvm``: answers a RecordingRunner as LVM would for what cannot run here (thin pools,
  snapshots, activation), with regular files under a fake /dev standing in for the device
  nodes. Its replies follow what real LVM prints (stdout JSON, exit status 5 and stderr text).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from backends import sparse
from hostcmds import CommandResult, LocalRunner, RecordingRunner, Reply

MIB = 1024 * 1024
GIB = 1024 * MIB
EXTENT = 4 * MIB  # vgcreate's default extent size

NEEDS_LVM = "needs lvm2 (apt-get install lvm2)"
NEEDS_LOOP = "needs loop devices (/dev/loop-control, losetup --find)"


def lvm_available() -> bool:
    return shutil.which("lvm") is not None


def loop_available() -> bool:
    if shutil.which("losetup") is None or not os.path.exists("/dev/loop-control"):
        return False
    probe = subprocess.run(["losetup", "--find"], capture_output=True, timeout=10)
    return probe.returncode == 0


def private_config(device: str) -> str:
    """An LVM --config string that sees only ``device``, never activates (no device-mapper),
    needs no udev and writes no metadata backups to /etc/lvm."""
    return (
        "global{activation=0} "
        "activation{udev_sync=0 udev_rules=0 monitoring=0} "
        "devices{obtain_device_list_from_udev=0 use_devicesfile=0 "
        f'filter=["a|^{device}$|","r|.*|"]}} '
        "backup{backup=0 archive=0}"
    )


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(9)[:17]}"


@dataclass
class LoopVg:
    """A volume group on a loop device, seen only through its private --config."""

    name: str
    device: str
    config: str

    def lvm(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*argv, "--config", self.config],
            capture_output=True,
            text=True,
            timeout=30,
            check=check,
            env={**os.environ, "LVM_SUPPRESS_FD_WARNINGS": "1"},
        )

    def lvs(self) -> dict[str, dict[str, Any]]:
        """{LV name: {"size": bytes, "tags": set}}, read with lvs independently of the backend."""
        out = self.lvm(
            "lvs", "--reportformat", "json", "--units", "b", "--nosuffix",
            "-o", "lv_name,lv_size,lv_tags", self.name,
        ).stdout  # fmt: skip
        rows = json.loads(out)["report"][0]["lv"]
        return {
            row["lv_name"]: {
                "size": int(row["lv_size"]),
                "tags": {t for t in row["lv_tags"].split(",") if t},
            }
            for row in rows
        }

    def vg_free(self) -> int:
        out = self.lvm(
            "vgs", "--reportformat", "json", "--units", "b", "--nosuffix",
            "-o", "vg_free", self.name,
        ).stdout  # fmt: skip
        return int(json.loads(out)["report"][0]["vg"][0]["vg_free"])


@contextlib.contextmanager
def loop_volume_group(tmp_path: Path, size: int = 256 * MIB) -> Iterator[LoopVg]:
    """A volume group of ``size`` (256 MiB: 64 extents of 4 MiB) on a loop device over a
    sparse file in ``tmp_path``; removed afterwards. Skips the test where LVM or loop devices
    are missing."""
    if not lvm_available():
        pytest.skip(NEEDS_LVM)
    if not loop_available():
        pytest.skip(NEEDS_LOOP)
    image = tmp_path / "pv.img"
    with image.open("wb") as handle:
        handle.truncate(size + 4 * MIB)  # room for the PV label and metadata area
    device = subprocess.run(
        ["losetup", "--find", "--show", str(image)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.strip()
    vg = LoopVg(f"ebsemu_test_{secrets.token_hex(4)}", device, private_config(device))
    try:
        vg.lvm("pvcreate", "--yes", device)
        vg.lvm("vgcreate", vg.name, device)
        yield vg
    finally:
        vg.lvm("vgremove", "--force", vg.name, check=False)
        vg.lvm("pvremove", "--force", device, check=False)
        subprocess.run(["losetup", "--detach", device], capture_output=True, timeout=30)


class MetadataOnlyRunner:
    """A CommandRunner: LVM commands run for real, device commands go to ``device`` (a
    RecordingRunner the test scripts); ``argvs`` keeps every command in order."""

    DEVICE_COMMANDS = frozenset({"blkdiscard"})

    def __init__(self) -> None:
        self.local = LocalRunner(env={"LVM_SUPPRESS_FD_WARNINGS": "1"})
        self.device = RecordingRunner()
        self.argvs: list[list[str]] = []

    async def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        input: bytes | None = None,
        secrets: Sequence[str] = (),
        check: bool = True,
    ) -> CommandResult:
        self.argvs.append(list(argv))
        runner = self.device if argv[0] in self.DEVICE_COMMANDS else self.local
        return await runner.run(argv, timeout=timeout, input=input, secrets=secrets, check=check)


# -- a stand-in for LVM with device-mapper ---------------------------------------------------


@dataclass
class FakeLv:
    size: int
    attr: str
    tags: set[str] = field(default_factory=set)
    pool: str = ""
    origin: str = ""
    data_percent: str = ""


class FakeLvm:
    """LVM with thin pools, snapshots and activation, for a RecordingRunner's responder.

    A thin pool ``pool`` of ``pool_bytes`` (``pool_used`` percent used) exists in volume group
    ``vg`` unless ``pool_bytes`` is 0. An active LV's device node is a sparse file
    ``dev_dir/vg/name``; a snapshot holds a copy of its origin's node taken when it is created,
    which appears as its node when it is activated (thin snapshots are created inactive, with
    the activation-skip flag, as LVM creates them).
    """

    def __init__(
        self,
        dev_dir: Path,
        *,
        vg: str = "vg0",
        pool: str = "ebsemu_pool",
        vg_bytes: int = 64 * GIB,
        pool_bytes: int = 32 * GIB,
        pool_used: float = 25.0,
        pool_zeroes: bool = True,
    ) -> None:
        self.dev_dir = dev_dir
        self.vg = vg
        self.vg_bytes = vg_bytes
        self.lvs: dict[str, FakeLv] = {}
        self._frozen = dev_dir.parent / "fake-lvm-frozen"  # snapshot contents until activated
        self._frozen.mkdir(parents=True, exist_ok=True)
        self._failures: dict[str, tuple[bool, str]] = {}
        (dev_dir / vg).mkdir(parents=True, exist_ok=True)
        if pool_bytes:
            zero = "z" if pool_zeroes else "-"
            self.lvs[pool] = FakeLv(pool_bytes, f"twi-a-t{zero}--", data_percent=f"{pool_used:.2f}")

    def runner(self) -> RecordingRunner:
        return RecordingRunner(responder=self.respond, default=None)

    def fail_next(self, command: str, *, after_commit: bool = False, stderr: str = "") -> None:
        """Make the next ``command`` (lvcreate, lvchange, …) fail; with ``after_commit`` it
        first makes its metadata change, as when LVM fails to activate what it created."""
        self._failures[command] = (after_commit, stderr or f"  {command} failed.\n")

    def device(self, name: str) -> Path:
        return self.dev_dir / self.vg / name

    @property
    def vg_free(self) -> int:
        return self.vg_bytes - sum(lv.size for lv in self.lvs.values() if not lv.pool)

    # -- the responder --

    def respond(self, argv: tuple[str, ...]) -> Reply:
        args = list(argv)
        if "--config" in args:  # the backend's private config: no effect on the fake
            at = args.index("--config")
            del args[at : at + 2]
        failure = self._failures.pop(args[0], None)
        if failure is not None and not failure[0]:
            return Reply(5, stderr=failure[1])
        handler = getattr(self, "_" + args[0].replace("-", "_"), None)
        if handler is None:
            return Reply(127, stderr=f"{args[0]}: command not found\n")
        reply: Reply = handler(args[1:])
        if failure is not None:
            return Reply(5, stderr=failure[1])
        return reply

    def _lvm(self, args: list[str]) -> Reply:
        return Reply(stdout="  LVM version:     2.03.16(2) (2022-05-18)\n")

    def _vgs(self, args: list[str]) -> Reply:
        if args[-1] != self.vg:
            return Reply(5, stderr=f'  Volume group "{args[-1]}" not found\n')
        row = {
            "vg_name": self.vg,
            "vg_size": str(self.vg_bytes),
            "vg_free": str(self.vg_free),
            "vg_extent_size": str(EXTENT),
        }
        return Reply(stdout=json.dumps({"report": [{"vg": [row]}]}))

    def _lvs(self, args: list[str]) -> Reply:
        rows = [
            {
                "lv_name": name,
                "lv_size": str(lv.size),
                "lv_attr": lv.attr,
                "lv_tags": ",".join(sorted(lv.tags)),
                "pool_lv": lv.pool,
                "origin": lv.origin,
                "data_percent": lv.data_percent,
            }
            for name, lv in sorted(self.lvs.items())
        ]
        return Reply(stdout=json.dumps({"report": [{"lv": rows}]}))

    def _lvcreate(self, args: list[str]) -> Reply:
        opts, target = _options(args)
        name = opts["--name"]
        if name in self.lvs:
            return Reply(5, stderr=f'  Logical Volume "{name}" already exists\n')
        tags = set(opts.get("--addtag", "").split()) if "--addtag" in opts else set()
        if "--snapshot" in opts:
            origin_name = target.split("/", 1)[1]
            origin = self.lvs[origin_name]
            node = self.device(origin_name)
            if node.exists():
                sparse.clone_file(node, self._frozen / name, origin.size)
            else:
                _sparse(self._frozen / name, origin.size)
            if "--size" in opts:  # copy-on-write
                self.lvs[name] = FakeLv(
                    _size(opts["--size"]), "swi-a-s---", tags, origin=origin_name
                )
                self._activate(name)
            else:  # thin: inactive, activation skipped
                self.lvs[name] = FakeLv(origin.size, "Vwi---tz-k", tags, origin.pool, origin_name)
            origin.attr = ("o" if "--size" in opts else origin.attr[0]) + origin.attr[1:]
            return Reply(stderr=f'  Logical volume "{name}" created.\n')
        if "--thinpool" in opts:
            size = _size(opts["--virtualsize"])
            self.lvs[name] = FakeLv(size, "Vwi-a-tz--", tags, pool=opts["--thinpool"])
        else:
            size = _size(opts["--size"])
            if size > self.vg_free:
                return Reply(5, stderr=f'  Volume group "{self.vg}" has insufficient free space\n')
            self.lvs[name] = FakeLv(size, "-wi-a-----", tags)
        _sparse(self.device(name), size)
        return Reply(stderr=f'  Logical volume "{name}" created.\n')

    def _lvextend(self, args: list[str]) -> Reply:
        opts, target = _options(args)
        lv = self.lvs[target.split("/", 1)[1]]
        lv.size = _size(opts["--size"])
        node = self.device(target.split("/", 1)[1])
        if node.exists():
            os.truncate(node, lv.size)
        return Reply()

    _lvreduce = _lvextend

    def _lvremove(self, args: list[str]) -> Reply:
        name = args[-1].split("/", 1)[1]
        if self.lvs.pop(name, None) is None:
            return Reply(5, stderr=f'  Failed to find logical volume "{self.vg}/{name}"\n')
        self.device(name).unlink(missing_ok=True)
        return Reply(stderr=f'  Logical volume "{name}" successfully removed.\n')

    def _lvchange(self, args: list[str]) -> Reply:
        opts, target = _options(args)
        name = target.split("/", 1)[1]
        lv = self.lvs.get(name)
        if lv is None:
            return Reply(5, stderr=f'  Failed to find logical volume "{target}"\n')
        if opts.get("--activate") == "y":
            if lv.attr.endswith("k") and "--ignoreactivationskip" not in opts:
                return Reply()  # skipped, as LVM skips it
            self._activate(name)
        lv.tags |= set(opts.get("--addtag", "").split())
        lv.tags -= set(opts.get("--deltag", "").split())
        return Reply()

    def _blkdiscard(self, args: list[str]) -> Reply:
        opts, target = _options(args)
        offset, length = int(opts["--offset"]), int(opts["--length"])
        fd = os.open(target, os.O_RDWR)
        try:  # zeros over the data only: the holes read as zeros already
            for start, end in list(sparse.data_extents(fd, offset, offset + length)):
                sparse.pwrite_all(fd, bytes(end - start), start)
        finally:
            os.close(fd)
        return Reply()

    def _activate(self, name: str) -> None:
        lv = self.lvs[name]
        lv.attr = lv.attr[:4] + "a" + lv.attr[5:]
        node = self.device(name)
        if node.exists():
            return
        if (self._frozen / name).exists():
            (self._frozen / name).rename(node)
        else:
            _sparse(node, lv.size)


_FLAGS = frozenset({"--yes", "--snapshot", "--zeroout", "--ignoreactivationskip"})


def _options(args: list[str]) -> tuple[dict[str, str], str]:
    """Parse ``--opt value`` pairs and flags; repeated options are joined by spaces. Returns
    them and the last positional argument."""
    opts: dict[str, str] = {}
    positional: list[str] = []
    i = 0
    while i < len(args):
        if args[i] in _FLAGS:
            opts[args[i]] = ""
            i += 1
        elif args[i].startswith("--"):
            opts[args[i]] = f"{opts[args[i]]} {args[i + 1]}" if args[i] in opts else args[i + 1]
            i += 2
        else:
            positional.append(args[i])
            i += 1
    return opts, positional[-1]


def _size(text: str) -> int:
    """LVM's size argument in bytes ("<n>b"), rounded up to whole extents as LVM does."""
    return -(-int(text.removesuffix("b")) // EXTENT) * EXTENT


def _sparse(path: Path, size: int) -> None:
    with path.open("wb") as handle:
        handle.truncate(size)
