"""[storage NAME] sections: what they hold, and the configuration errors that stop a start
(unknown zone, a name used twice, a zone with no storage host, both kinds of section)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ebsemu import config

REGION = "[region us-east-1]\nzones = us-east-1a, us-east-1b\n"


def _load(tmp_path: Path, text: str) -> config.Config:
    path = tmp_path / "c.ini"
    path.write_text(text)
    return config.load(path)


def test_storage_host_sections_are_read_with_their_options(tmp_path: Path) -> None:
    loaded = _load(
        tmp_path,
        REGION + "[storage near]\nzone = us-east-1a\npath = vols\n"
        "[storage far]\nzone = us-east-1b\nbackend = remote-file\n"
        "url = ssh://ebs@10.0.0.7:2222\nkey_file = /k\nknown_hosts = /kh\npath = /srv/ebs\n"
        "command_timeout = 30\nexport_portal = 10.0.0.7:3260\n",
    )
    near, far = loaded.storage_hosts
    assert near == config.StorageHost("near", "us-east-1a", "file", "local", tmp_path / "vols")
    assert far == config.StorageHost(
        "far",
        "us-east-1b",
        "remote-file",
        "ssh://ebs@10.0.0.7:2222",
        None,
        {"path": "/srv/ebs", "command_timeout": "30"},  # a remote path stays as written
        {"key_file": "/k", "known_hosts": "/kh"},
        {"portal": "10.0.0.7:3260"},
    )
    assert loaded.storage_host_list == loaded.storage_hosts


def test_the_single_storage_section_is_the_default_host_of_every_zone(tmp_path: Path) -> None:
    loaded = _load(tmp_path, REGION + "[storage]\nbackend = file\npath = here\n")
    assert loaded.storage_hosts == ()
    (host,) = loaded.storage_host_list
    assert (host.name, host.zone, host.backend, host.url) == ("default", None, "file", "local")
    assert host.path == tmp_path / "here" == loaded.volumes_dir


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            REGION + "[storage a]\nzone = us-east-1a\n[storage b]\nzone = us-west-2a\n",
            r"\[storage b\]: zone 'us-west-2a' is not a configured zone",
        ),
        (
            REGION + "[storage a]\nzone = us-east-1a\n[storage  a]\nzone = us-east-1b\n",
            r"\[storage a\] is configured twice",
        ),
        (
            REGION + "[storage a]\nzone = us-east-1a\n",
            r"zone\(s\) us-east-1b have no storage host",
        ),
        (
            REGION + "[storage]\nbackend = file\n[storage a]\nzone = us-east-1a\n",
            r"either one \[storage\] section or \[storage NAME\] sections",
        ),
        (REGION + "[storage a]\nbackend = file\n", r"\[storage a\] needs zone"),
        (REGION + "[storage a/b]\nzone = us-east-1a\n", "storage host name"),
    ],
    ids=["unknown-zone", "duplicate-name", "zone-without-host", "both-kinds", "no-zone", "name"],
)
def test_a_bad_storage_host_configuration_is_refused(tmp_path: Path, text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        _load(tmp_path, text)


def test_the_server_does_not_start_on_a_zone_without_storage_host(tmp_path: Path) -> None:
    path = tmp_path / "c.ini"
    path.write_text(REGION + f"[storage a]\nzone = us-east-1a\npath = {tmp_path / 'a'}\n")
    done = subprocess.run(
        [sys.executable, "-m", "ebsemu", "serve", "--config", str(path),
         "--data-dir", str(tmp_path / "data"), "--port", "1"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "us-east-1b have no storage host" in done.stderr


def test_an_unknown_backend_or_a_local_only_backend_over_ssh_stops_the_start(
    tmp_path: Path,
) -> None:
    for section, expected in (
        ("backend = nfs\n", "backend = 'nfs': use file, lvm, rbd or remote-file"),
        ("url = ssh://h\n", "backend = file works on this host only; use backend = remote-file"),
    ):
        path = tmp_path / "c.ini"
        path.write_text(
            "[region us-east-1]\nzones = us-east-1a\n[storage a]\nzone = us-east-1a\n" + section
        )
        done = subprocess.run(
            [sys.executable, "-m", "ebsemu", "check-host", "--config", str(path),
             "--data-dir", str(tmp_path / "data")],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode != 0
        assert expected in done.stderr
