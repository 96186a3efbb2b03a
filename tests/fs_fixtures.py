"""Private filesystems for tests: loop-mounted XFS images, with and without reflink."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


@contextlib.contextmanager
def mounted(argv: list[str], target: Path) -> Iterator[Path]:
    """Mount with ``argv`` (its last item is ``target``), yield, unmount; skip if it fails."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a private filesystem")
    target.mkdir()
    result = run(argv)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a private filesystem ({' '.join(argv)}): {result.stderr}")
    try:
        yield target
    finally:
        run(["umount", str(target)])


@contextlib.contextmanager
def xfs_reflink_at(work: Path, size_bytes: int) -> Iterator[Path]:
    """An XFS filesystem with reflink=1 of ``size_bytes``, loop-mounted at ``work/xfs``."""
    with xfs_at(work, size_bytes, reflink=True) as mounted_at:
        yield mounted_at


@contextlib.contextmanager
def xfs_at(work: Path, size_bytes: int, *, reflink: bool) -> Iterator[Path]:
    """An XFS filesystem of ``size_bytes``, with or without reflink, loop-mounted at
    ``work/xfs``."""
    mkfs = shutil.which("mkfs.xfs")
    option = f"reflink={int(reflink)}"
    if mkfs is None:
        pytest.skip(f"needs mkfs.xfs (xfsprogs) to make an XFS filesystem with {option}")
    image = work / "xfs.img"
    with image.open("wb") as f:
        f.truncate(size_bytes)
    made = run([mkfs, "-q", "-m", option, str(image)])
    if made.returncode != 0:
        pytest.skip(f"mkfs.xfs -m {option} failed: {made.stderr}")
    target = work / "xfs"
    with mounted(["mount", "-o", "loop", str(image), str(target)], target):
        yield target
