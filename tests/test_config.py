"""config.example.ini is the embedded default, written out, and documents every option."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ebsemu import config
from hostcmds import load_templates

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.ini"


def test_example_config_loads_to_the_embedded_default() -> None:
    loaded = config.load(EXAMPLE)
    default = config.Config()
    assert dataclasses.replace(loaded, data_dir=default.data_dir) == default
    assert loaded.data_dir == EXAMPLE.parent / "ebsemu-data"


def test_every_config_option_is_documented_in_the_example() -> None:
    text = EXAMPLE.read_text()
    derived = {
        "zones",
        "storage_backend",
        "storage_path",
        "storage_options",
        "export_options",
        "export_backend",
        "blockstore_path",
        "blockstore_backend",
        "blockstore_options",
        "hostcmds",
        "vmm_hosts",
        "storage_hosts",
        "store_backend",  # [store] backend, dsn, instance_id
        "store_dsn",
        "store_instance_id",
    }
    for option in {f.name for f in dataclasses.fields(config.Config)} - derived:
        assert f"{option} =" in text, f"{option} is not documented in config.example.ini"
    for section in (
        "[storage]",
        "path =",
        "[blockstore]",
        "[region ",
        "[vmm ",
        "[hostcmds ",
        "[export]",
        "record_dir",
        "initiator_address",
        "url = local",
        "[storage NAME]",
        "backend = remote-file",
    ):
        assert section in text


def test_vmm_hosts_and_hostcmd_overrides_are_read(tmp_path: Path) -> None:
    path = tmp_path / "c.ini"
    path.write_text(
        "[region eu-west-1]\nzones = eu-west-1a, eu-west-1b\n"
        "[vmm kvm1]\ndriver = qemu\nzone = eu-west-1b\nsocket_dir = /run/q\n"
        "[hostcmds xen-xl]\nblockDetachCmd = xl block-detach <domUId> <domUDev> --force\n"
    )
    loaded = config.load(path)
    assert loaded.default_region == "eu-west-1"
    assert [(z.name, z.zone_id) for z in loaded.zones] == [
        ("eu-west-1a", "euw1-az1"),
        ("eu-west-1b", "euw1-az2"),
    ]
    assert loaded.vmm_hosts == (
        config.VmmHost("kvm1", "qemu", "eu-west-1b", {"socket_dir": "/run/q"}),
    )
    templates = load_templates(loaded.hostcmds)
    assert templates.render("xen-xl", "blockDetachCmd", domUId="7", domUDev="xvdf") == [
        "xl",
        "block-detach",
        "7",
        "xvdf",
        "--force",
    ]


def test_a_vmm_host_without_a_zone_is_a_configuration_error(tmp_path: Path) -> None:
    path = tmp_path / "c.ini"
    path.write_text("[vmm kvm1]\ndriver = qemu\n")
    with pytest.raises(ValueError, match="zone"):
        config.load(path)


def test_blockstore_section_names_the_backend_and_its_options(tmp_path: Path) -> None:
    path = tmp_path / "c.ini"
    path.write_text(
        "[blockstore]\nbackend = rados\nconf = ceph/ceph.conf\npool = ebsemu\nuser = ebs\n"
    )
    loaded = config.load(path)
    assert loaded.blockstore_backend == "rados"
    assert loaded.blockstore_options == {
        "conf": str(tmp_path / "ceph" / "ceph.conf"),
        "pool": "ebsemu",
        "user": "ebs",
    }
    assert config.load(None).blockstore_backend == "local"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[serverr]\nport = 1\n", "unknown section [serverr]"),
        ("[server]\nprot = 9000\n", "[server] has no option 'prot'"),
        ("[limits]\nmax_volume = 5\n", "[limits] has no option 'max_volume'"),
        ("[store]\ndns = postgresql://x/y\n", "[store] has no option 'dns'"),
        ("[auth]\naccess_key = AKIDX\n", "[auth] has no option 'access_key'"),
        ("[region us-east-1]\nzone = us-east-1a\n", "[region us-east-1] has no option 'zone'"),
        ("[region]\nzones = us-east-1a\n", "section [region] needs a name"),
        ("[server main]\nport = 1\n", "section [server main] takes no name"),
    ],
)
def test_a_section_or_option_nothing_reads_is_a_configuration_error(
    tmp_path: Path, text: str, says: str
) -> None:
    """A typo used to leave its setting at the default without a word."""
    path = tmp_path / "c.ini"
    path.write_text(text)
    with pytest.raises(ValueError) as raised:
        config.load(path)
    assert str(raised.value).startswith(f"{path}: ") and says in str(raised.value)


def test_options_of_the_default_section_are_not_taken_for_unknown(tmp_path: Path) -> None:
    path = tmp_path / "c.ini"
    path.write_text("[DEFAULT]\nlog_level = DEBUG\n[server]\nport = 9000\n")
    assert config.load(path).port == 9000


@pytest.mark.parametrize("seconds", ["0", "-1"])
def test_a_request_body_timeout_must_be_positive(tmp_path: Path, seconds: str) -> None:
    path = tmp_path / "c.ini"
    path.write_text(f"[limits]\nrequest_body_timeout_seconds = {seconds}\n")
    with pytest.raises(ValueError, match="request_body_timeout_seconds must be positive"):
        config.load(path)
    path.write_text("[limits]\nrequest_body_timeout_seconds = 2.5\n")
    assert config.load(path).request_body_timeout_seconds == 2.5
