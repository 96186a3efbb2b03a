"""Building the snapshot block store the configuration's ``[blockstore]`` names."""

from __future__ import annotations

from pathlib import Path

from backends.base import BlockStore
from backends.blockstore import LocalBlockStore
from backends.blockstore_rados import DEFAULT_NAMESPACE, RadosBlockStore
from ebsemu.config import Config
from ebsemu.hosts import ConfigError

RADOS_OPTIONS = frozenset({"conf", "pool", "namespace", "user"})
DEFAULT_CEPH_CONF = Path("/etc/ceph/ceph.conf")
# /metrics reads the block store's size at most this often (a full listing for RADOS).
METRICS_REFRESH_SECONDS = {"local": 0.0, "rados": 60.0}


def build_block_store(config: Config) -> BlockStore:
    options = config.blockstore_options
    if config.blockstore_backend == "local":
        return LocalBlockStore(config.blocks_dir)
    if config.blockstore_backend == "rados":
        unknown = sorted(set(options) - RADOS_OPTIONS - {"metrics_refresh_seconds"})
        if unknown:
            raise ConfigError(
                f"[blockstore] backend = rados: unknown option(s) {', '.join(unknown)}"
                f" (use {', '.join(sorted(RADOS_OPTIONS))})"
            )
        if not options.get("pool"):
            raise ConfigError("[blockstore] backend = rados needs pool = <a Ceph pool>")
        return RadosBlockStore(
            Path(options.get("conf") or DEFAULT_CEPH_CONF),
            options["pool"],
            namespace=options.get("namespace") or DEFAULT_NAMESPACE,
            user=options.get("user") or None,
        )
    raise ConfigError(f"[blockstore] backend = {config.blockstore_backend!r}: use local or rados")


def metrics_refresh_seconds(config: Config) -> float:
    """How long /metrics may show a block-store figure before reading it again."""
    configured = config.blockstore_options.get("metrics_refresh_seconds")
    if configured is not None:
        try:
            seconds = float(configured)
        except ValueError:
            seconds = -1.0
        if seconds < 0:
            raise ConfigError(
                f"[blockstore] metrics_refresh_seconds = {configured!r}: a number >= 0"
            )
        return seconds
    return METRICS_REFRESH_SECONDS.get(config.blockstore_backend, 0.0)


def describe(config: Config) -> str:
    """The block store in a few words, for ``ebsemu check-host``."""
    if config.blockstore_backend == "rados":
        options = config.blockstore_options
        return (
            f"rados, pool {options.get('pool')}"
            f" namespace {options.get('namespace') or DEFAULT_NAMESPACE}"
        )
    return f"{config.blockstore_backend}, {config.blocks_dir}"
