"""Build the test guest from Debian packages: a cloud kernel and a busybox initramfs.

``guest_image()`` downloads ``linux-image-<abi>-cloud-amd64`` (the candidate the
``linux-image-cloud-amd64`` meta-package depends on) and ``busybox-static`` with
``apt-get download``, unpacks both with ``dpkg -x``, generates the kernel's modules.dep with the
busybox ``depmod`` applet (the kernel package ships none; the Debian postinst makes it), and
writes an uncompressed cpio (newc) initramfs, in Python, holding:

    /init                   tests/guest/init.sh
    /bin/busybox, /bin/sh   the static busybox and a link to it
    /dev/console            so that /init starts with the console as stdin/stdout
    /lib/modules/<m>.ko     MODULES and what they depend on, per modules.dep
    /etc/modules            those modules' names in load order

The result (``vmlinuz`` and ``initrd``) is cached under ``cache_dir/<key>``, the key naming both
package versions and a digest of the initramfs recipe, so a run reuses it until Debian
publishes a new kernel or busybox or the recipe changes. The downloaded packages are kept in
``cache_dir/debs``. When apt cannot name or fetch the current versions (no package lists, no
network, no apt), the newest cached guest built from the same recipe is used, if there is one.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

KERNEL_META = "linux-image-cloud-amd64"
BUSYBOX = "busybox-static"
MODULES = ("virtio_pci", "virtio_blk")
INIT_SCRIPT = Path(__file__).with_name("init.sh")
RECIPE_VERSION = "1"  # bump when the initramfs layout built here changes
APT_TIMEOUT = 60.0
DOWNLOAD_TIMEOUT = 600.0
UNPACK_TIMEOUT = 120.0


class GuestUnavailable(Exception):
    """The guest cannot be built on this host; the message says what is missing."""


@dataclass(frozen=True)
class Package:
    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name}={self.version}"

    @property
    def key(self) -> str:
        return f"{self.name}_{self.version.replace(':', '%3a')}"


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initrd: Path
    description: str


def default_cache_dir() -> Path:
    """$EBSEMU_GUEST_CACHE, else $XDG_CACHE_HOME/ebsemu-tests/guest (~/.cache by default)."""
    explicit = os.environ.get("EBSEMU_GUEST_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ebsemu-tests" / "guest"


def guest_image(cache_dir: Path) -> GuestImage:
    """The cached guest for the current package versions, built first if need be."""
    recipe = recipe_digest()
    try:
        return _current_image(cache_dir, recipe)
    except GuestUnavailable:
        cached = _newest_cached(cache_dir, recipe)
        if cached is None:
            raise
        return cached


def _current_image(cache_dir: Path, recipe: str) -> GuestImage:
    kernel, busybox = resolve_packages()
    final = cache_dir / f"{kernel.key}+{busybox.key}+{recipe}"
    if not _complete(final):
        cache_dir.mkdir(parents=True, exist_ok=True)
        debs = [download(package, cache_dir / "debs") for package in (kernel, busybox)]
        with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".build-") as scratch:
            staged = Path(scratch) / "guest"
            build(debs[0], debs[1], Path(scratch) / "unpacked", staged)
            (staged / "packages").write_text(f"{kernel}\n{busybox}\n")
            try:
                staged.rename(final)
            except OSError:
                if not _complete(final):  # not another run finishing first: a real failure
                    raise
        for deb in (cache_dir / "debs").glob("*.deb"):
            if deb not in debs:  # an older version's: only current ones are rebuilt from
                deb.unlink(missing_ok=True)
    return _image(final)


def recipe_digest() -> str:
    recipe = hashlib.sha256()
    for part in (RECIPE_VERSION, " ".join(MODULES), INIT_SCRIPT.read_text()):
        recipe.update(part.encode() + b"\0")
    return recipe.hexdigest()[:12]


# -- packages ---------------------------------------------------------------------------------


def resolve_packages() -> tuple[Package, Package]:
    """The candidate kernel package (through the meta-package) and busybox-static."""
    records = _candidate_records(KERNEL_META, BUSYBOX)
    depends = records[KERNEL_META].get("Depends", "")
    match = re.search(r"(linux-image-[0-9][^\s,(]*-cloud-amd64)\s*\(=\s*([^)\s]+)\)", depends)
    if match:
        kernel = Package(match.group(1), match.group(2))
    else:
        name = re.search(r"linux-image-[0-9][^\s,(]*-cloud-amd64", depends)
        if name is None:
            raise GuestUnavailable(f"{KERNEL_META} names no kernel package: {depends!r}")
        kernel = Package(name.group(0), _candidate_records(name.group(0))[name.group(0)]["Version"])
    return kernel, Package(BUSYBOX, records[BUSYBOX]["Version"])


def _candidate_records(*packages: str) -> dict[str, dict[str, str]]:
    """The fields of each package's candidate record in apt's package lists (one apt-cache
    call: without apt's binary cache, each call parses every list again)."""
    if shutil.which("apt-cache") is None:
        raise GuestUnavailable(f"needs apt-cache to find {', '.join(packages)} (a Debian host)")
    result = _run(["apt-cache", "show", "--no-all-versions", *packages], timeout=APT_TIMEOUT)
    records: dict[str, dict[str, str]] = {}
    for paragraph in result.stdout.split("\n\n"):
        fields: dict[str, str] = {}
        for line in paragraph.splitlines():
            key, sep, value = line.partition(":")
            if sep and line[:1].strip():
                fields[key] = value.strip()
        if "Package" in fields and "Version" in fields:
            records.setdefault(fields["Package"], fields)
    missing = [package for package in packages if package not in records]
    if missing:
        raise GuestUnavailable(
            f"apt does not know {', '.join(missing)} (run apt-get update): "
            f"{result.stderr.strip()[-300:]}"
        )
    return records


def download(package: Package, debs: Path) -> Path:
    """``apt-get download`` of one exact version into ``debs`` (kept there for later runs)."""
    target = debs / f"{package.key}_amd64.deb"
    if target.is_file():
        return target
    if shutil.which("apt-get") is None:
        raise GuestUnavailable(f"needs apt-get to download {package}")
    debs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=debs, prefix=".download-") as scratch:
        result = _run(
            ["apt-get", "-q", "-o", "APT::Sandbox::User=root", "download", str(package)],
            timeout=DOWNLOAD_TIMEOUT,
            cwd=Path(scratch),
        )
        fetched = sorted(Path(scratch).glob("*.deb"))
        if result.returncode != 0 or len(fetched) != 1:
            raise GuestUnavailable(
                f"apt-get download {package} failed: {result.stderr.strip()[-500:]}"
            )
        fetched[0].rename(target)
    return target


# -- building ---------------------------------------------------------------------------------


def build(kernel_deb: Path, busybox_deb: Path, unpacked: Path, out: Path) -> None:
    """Unpack both packages under ``unpacked``; write ``out/vmlinuz`` and ``out/initrd``."""
    if shutil.which("dpkg") is None:
        raise GuestUnavailable("needs dpkg to unpack the kernel and busybox packages")
    for deb in (kernel_deb, busybox_deb):
        _check(["dpkg", "-x", str(deb), str(unpacked)], timeout=UNPACK_TIMEOUT)
    busybox = unpacked / "bin" / "busybox"
    vmlinuz = sorted((unpacked / "boot").glob("vmlinuz-*"))
    if len(vmlinuz) != 1 or not busybox.is_file():
        raise RuntimeError(f"unexpected package contents: {vmlinuz}, busybox {busybox.is_file()}")
    release = vmlinuz[0].name.removeprefix("vmlinuz-")
    module_dir = unpacked / "lib" / "modules" / release
    _check([str(busybox), "depmod", "-b", str(unpacked), release], timeout=UNPACK_TIMEOUT)
    modules = load_order(
        MODULES,
        parse_modules_dep((module_dir / "modules.dep").read_text()),
        (module_dir / "modules.builtin").read_text().split(),
    )
    out.mkdir(parents=True)
    shutil.copyfile(vmlinuz[0], out / "vmlinuz")
    directories = ("bin", "dev", "etc", "lib", "lib/modules", "proc", "run", "sys")
    entries = [CpioEntry.directory(name) for name in directories]
    entries += [
        CpioEntry.file("init", INIT_SCRIPT.read_bytes(), 0o755),
        CpioEntry.file("bin/busybox", busybox.read_bytes(), 0o755),
        CpioEntry.symlink("bin/sh", "busybox"),
        CpioEntry.char_device("dev/console", 5, 1, 0o600),
        CpioEntry.file("etc/modules", "".join(f"{name}\n" for name, _ in modules).encode()),
    ]
    entries += [
        CpioEntry.file(f"lib/modules/{name}.ko", (module_dir / path).read_bytes())
        for name, path in modules
    ]
    with (out / "initrd").open("wb") as handle:
        write_cpio(handle, entries)


def module_name(path: str) -> str:
    """kernel/drivers/block/virtio_blk.ko -> virtio_blk (dashes and underscores are one)."""
    name = path.rsplit("/", 1)[-1]
    name = re.sub(r"\.ko(\.(xz|zst|gz))?$", "", name)
    return name.replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, tuple[str, list[str]]]:
    """modules.dep -> {module name: (path, [paths of the modules it needs])}."""
    table: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        path, sep, needs = line.partition(":")
        if sep:
            table[module_name(path.strip())] = (path.strip(), needs.split())
    return table


def load_order(
    wanted: Iterable[str], deps: dict[str, tuple[str, list[str]]], builtin: Iterable[str]
) -> list[tuple[str, str]]:
    """(name, path) of ``wanted`` and everything they need, each after its dependencies;
    modules built into the kernel are left out."""
    built_in = {module_name(path) for path in builtin}
    order: list[tuple[str, str]] = []
    done: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in done or name in built_in:
            return
        if name in chain:
            raise RuntimeError(f"module dependency cycle: {' -> '.join((*chain, name))}")
        if name not in deps:
            raise RuntimeError(f"module {name} is neither in modules.dep nor built in")
        path, needs = deps[name]
        for needed in needs:
            visit(module_name(needed), (*chain, name))
        done.add(name)
        order.append((name, path))

    for name in wanted:
        visit(module_name(name), ())
    return order


# -- cpio (newc) ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CpioEntry:
    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)

    @classmethod
    def directory(cls, name: str) -> CpioEntry:
        return cls(name, 0o040755)

    @classmethod
    def file(cls, name: str, data: bytes, permissions: int = 0o644) -> CpioEntry:
        return cls(name, 0o100000 | permissions, data)

    @classmethod
    def symlink(cls, name: str, target: str) -> CpioEntry:
        return cls(name, 0o120777, target.encode())

    @classmethod
    def char_device(cls, name: str, major: int, minor: int, permissions: int) -> CpioEntry:
        return cls(name, 0o020000 | permissions, rdev=(major, minor))


def write_cpio(handle: BinaryIO, entries: Iterable[CpioEntry]) -> None:
    """An SVR4 "newc" archive (what the kernel unpacks as an initramfs): owner root,
    timestamps 0, so equal input gives equal bytes."""
    for ino, entry in enumerate(_with_trailer(entries), start=1):
        name = entry.name.encode() + b"\0"
        is_dir = entry.mode & 0o170000 == 0o040000
        fields = (
            ino,
            entry.mode,
            0,  # uid
            0,  # gid
            2 if is_dir else 1,
            0,  # mtime
            len(entry.data),
            0,  # dev major
            0,  # dev minor
            entry.rdev[0],
            entry.rdev[1],
            len(name),
            0,  # check
        )
        header = b"070701" + b"".join(b"%08X" % value for value in fields)
        handle.write(_pad4(header + name))
        handle.write(_pad4(entry.data))


def _with_trailer(entries: Iterable[CpioEntry]) -> Iterator[CpioEntry]:
    yield from entries
    yield CpioEntry("TRAILER!!!", 0)


def _pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


# -- cache and commands -----------------------------------------------------------------------


def _complete(directory: Path) -> bool:
    return all((directory / name).is_file() for name in ("vmlinuz", "initrd", "packages"))


def _image(directory: Path) -> GuestImage:
    packages = (directory / "packages").read_text().split()
    return GuestImage(directory / "vmlinuz", directory / "initrd", ", ".join(packages))


def _newest_cached(cache_dir: Path, recipe: str) -> GuestImage | None:
    builds = [d for d in cache_dir.glob(f"*+{recipe}") if _complete(d)]
    if not builds:
        return None
    return _image(max(builds, key=lambda d: d.stat().st_mtime))


def _run(
    argv: list[str], *, timeout: float, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise GuestUnavailable(f"{' '.join(argv)} took more than {timeout:g} s") from exc


def _check(argv: list[str], *, timeout: float) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()[-500:]}")
