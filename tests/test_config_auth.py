"""Configuration of accounts, keys and transport: what is read, what is refused, and the
secret kept out of the configuration's repr (and so out of any log of it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ebsemu import config


def load(tmp_path: Path, text: str) -> config.Config:
    path = tmp_path / "c.ini"
    path.write_text(text)
    return config.load(path)


def test_auth_limits_and_tls_options_are_read(tmp_path: Path) -> None:
    loaded = load(
        tmp_path,
        "[server]\ntls_cert = cert.pem\ntls_key = key.pem\naccount_id = 123456789012\n"
        "[limits]\nmax_request_bytes = 65536\nrequests_per_second = 2.5\nrequest_burst = 7\n"
        "[auth]\naccess_key_id = AKIDCONFIG\nsecret_access_key = hunter2-secret\n",
    )
    assert (loaded.tls_cert, loaded.tls_key) == (tmp_path / "cert.pem", tmp_path / "key.pem")
    assert loaded.tls and loaded.account_id == "123456789012"
    assert (loaded.max_request_bytes, loaded.requests_per_second, loaded.request_burst) == (
        65536,
        2.5,
        7,
    )
    assert (loaded.access_key_id, loaded.secret_access_key) == ("AKIDCONFIG", "hunter2-secret")
    assert "hunter2-secret" not in repr(loaded)


def test_a_vmm_host_names_the_account_owning_its_instances(tmp_path: Path) -> None:
    loaded = load(tmp_path, "[vmm kvm1]\ndriver = qemu\nzone = z\naccount = 111122223333\n")
    (host,) = loaded.vmm_hosts
    assert host.account_id == "111122223333" and "account" not in host.options
    default = load(tmp_path, "[vmm kvm1]\ndriver = qemu\nzone = z\n")
    assert default.vmm_hosts[0].account_id is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server]\ntls_cert = cert.pem\n", "both tls_cert and tls_key"),
        ("[server]\naccount_id = 42\n", "12 digits"),
        ("[vmm kvm1]\ndriver = qemu\nzone = z\naccount = me\n", "12-digit"),
        ("[limits]\nmax_request_bytes = 10\n", "max_request_bytes"),
        ("[limits]\nrequest_burst = 0\n", "request_burst"),
    ],
)
def test_inconsistent_security_options_are_configuration_errors(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        load(tmp_path, text)
