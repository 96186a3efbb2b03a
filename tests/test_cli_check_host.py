"""`ebsemu check-host` reports, per configured host and role, whether it is ready and why not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def _check_host(tmp_path: Path, config: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "c.ini"
    path.write_text(config)
    return subprocess.run(
        [sys.executable, "-m", "ebsemu", "check-host", "--config", str(path),
         "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_check_host_names_each_missing_piece_and_fails(tmp_path: Path) -> None:
    result = _check_host(
        tmp_path,
        "[export]\nbackend = tgt\n"
        f"record_dir = {tmp_path / 'records'}\ncontrol_port = 32001\n"
        f"[vmm kvm1]\ndriver = qemu\nzone = us-east-1a\nsocket_dir = {tmp_path / 'nowhere'}\n",
    )
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0] == "ok   storage (file)"
    assert lines[1].startswith("FAIL export (tgt): tgtd does not answer on control port 32001")
    assert "tgtd -C 32001" in lines[1]
    assert lines[2] == f"ok   blockstore (local, {tmp_path / 'data' / 'blocks'})"
    assert lines[3].startswith("FAIL vmm kvm1 (qemu, local): QMP socket directory")


def test_check_host_passes_when_every_host_is_ready(tmp_path: Path) -> None:
    sockets = tmp_path / "qmp"
    sockets.mkdir()
    result = _check_host(
        tmp_path, f"[vmm kvm1]\ndriver = qemu\nzone = us-east-1a\nsocket_dir = {sockets}\n"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "ok   storage (file)",
        f"ok   blockstore (local, {tmp_path / 'data' / 'blocks'})",
        "ok   vmm kvm1 (qemu, local)",
    ]


def test_check_host_reports_a_vmm_section_its_driver_refuses_and_checks_the_rest(
    tmp_path: Path,
) -> None:
    result = _check_host(tmp_path, "[vmm kvm1]\ndriver = qemu\nzone = us-east-1a\nbogus = 1\n")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "ok   storage (file)"
    assert lines[2].startswith("FAIL vmm hosts: ") and "bogus" in lines[2]
