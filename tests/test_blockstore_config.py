"""[blockstore]: which block store the configuration builds, and what it refuses."""

from __future__ import annotations

import pytest

from backends.blockstore import LocalBlockStore
from backends.blockstore_rados import RadosBlockStore
from ebsemu.block_stores import build_block_store, metrics_refresh_seconds
from ebsemu.config import Config
from ebsemu.hosts import ConfigError


def test_local_is_the_default_block_store() -> None:
    assert isinstance(build_block_store(Config()), LocalBlockStore)


@pytest.mark.parametrize(
    ("backend", "options", "message"),
    [
        ("s3", {}, "backend = 's3': use local or rados"),
        ("rados", {}, "needs pool = <a Ceph pool>"),
        ("rados", {"pool": "p", "poll": "q"}, r"unknown option\(s\) poll"),
    ],
)
def test_a_block_store_the_configuration_cannot_build_stops_the_start(
    backend: str, options: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        build_block_store(Config(blockstore_backend=backend, blockstore_options=options))


def test_metrics_refresh_defaults_per_backend_and_refuses_a_negative_figure() -> None:
    assert metrics_refresh_seconds(Config()) == 0.0
    rados = Config(blockstore_backend="rados", blockstore_options={"pool": "p"})
    assert metrics_refresh_seconds(rados) == 60.0
    assert isinstance(build_block_store(rados), RadosBlockStore)  # connects on first use only
    with pytest.raises(ConfigError, match="a number >= 0"):
        metrics_refresh_seconds(Config(blockstore_options={"metrics_refresh_seconds": "-1"}))
