"""`ebsemu check-host` checks each storage host on the host itself, over its runner (SSH here,
a real sshd on 127.0.0.1): ready, a missing tool with its install line, or unreachable."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ssh_fixtures import HAVE_SSHD, NEEDS_SSHD, SshServer, free_port

pytestmark = pytest.mark.skipif(not HAVE_SSHD, reason=NEEDS_SSHD)

ZONES = "[region us-east-1]\nzones = us-east-1a, us-east-1b\n"


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[SshServer]:
    server = SshServer(tmp_path / "sshd")
    server.start()
    yield server
    server.stop()


def _host(name: str, zone: str, sshd: SshServer, path: Path, url: str | None = None) -> str:
    return (
        f"[storage {name}]\nzone = {zone}\nbackend = remote-file\nurl = {url or sshd.url}\n"
        f"key_file = {sshd.client_key}\nknown_hosts = {sshd.known_hosts}\npath = {path}\n"
    )


def _check_host(tmp_path: Path, config: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "c.ini"
    path.write_text(config)
    return subprocess.run(
        [sys.executable, "-m", "ebsemu", "check-host", "--config", str(path),
         "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_check_host_reports_each_storage_host_reached_over_ssh(
    tmp_path: Path, sshd: SshServer
) -> None:
    result = _check_host(
        tmp_path,
        ZONES
        + _host("far", "us-east-1a", sshd, tmp_path / "far")
        + f"[storage near]\nzone = us-east-1b\npath = {tmp_path / 'near'}\n",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        f"ok   storage far (remote-file, {sshd.url})",
        "ok   storage near (file, local)",
        f"ok   blockstore (local, {tmp_path / 'data' / 'blocks'})",
    ]
    assert (tmp_path / "far" / "volumes").is_dir()  # made on the host by its check


def test_check_host_names_a_missing_tool_and_an_unreachable_storage_host(
    tmp_path: Path, sshd: SshServer
) -> None:
    dead = f"ssh://{sshd.user}@127.0.0.1:{free_port()}"
    result = _check_host(
        tmp_path,
        ZONES
        + _host("far", "us-east-1a", sshd, tmp_path / "far")
        + _host("gone", "us-east-1b", sshd, tmp_path / "gone", dead)
        + f"[storage vg1]\nzone = us-east-1b\nbackend = lvm\nvg = ebsemu\nurl = {dead}\n"
        + f"key_file = {sshd.client_key}\nknown_hosts = {sshd.known_hosts}\n"
        + "[hostcmds remote-file]\n"
        + "punchCmd = /opt/none/fallocate --punch-hole --offset <offset> --length <length>"
        + " <path>\n",
    )
    assert result.returncode == 1
    far, gone, vg1, blocks = result.stdout.splitlines()
    assert blocks == f"ok   blockstore (local, {tmp_path / 'data' / 'blocks'})"
    assert far == (
        f"FAIL storage far (remote-file, {sshd.url}): /opt/none/fallocate is not installed on "
        "the storage host (apt-get install util-linux)"
    )
    assert gone.startswith(f"FAIL storage gone (remote-file, {dead}): remote-file storage at ")
    assert "ssh " in gone
    assert not (tmp_path / "gone").exists()
    assert vg1.startswith(f"FAIL storage vg1 (lvm, {dead}): ")  # lvm commands go over SSH too
    assert f"ssh {sshd.user}@127.0.0.1:{dead.rsplit(':', 1)[1]}" in vg1
