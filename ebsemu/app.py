"""Wiring: configuration in, a running aiohttp application out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from backends import registry
from backends.base import VmmBackend
from backends.vmm import VMMS
from ebsemu.api.actions import Services
from ebsemu.api.handler import SERVICES_KEY, handle_ec2, handle_unknown
from ebsemu.config import Config
from ebsemu.service.attachments import AttachmentService
from ebsemu.service.core import Core
from ebsemu.service.instances import InstanceService
from ebsemu.service.jobs import Jobs
from ebsemu.service.snapshots import SnapshotService
from ebsemu.service.tags import TagService
from ebsemu.service.volumes import VolumeService
from ebsemu.store.sqlite import SqliteStore
from hostcmds import LocalRunner, load_templates

log = logging.getLogger(__name__)

CORE_KEY: web.AppKey[Core] = web.AppKey("core", Core)
MAX_BODY_BYTES = 1024 * 1024
PURGE_INTERVAL_SECONDS = 5.0


def build_core(config: Config) -> Core:
    make_storage = registry.STORAGE.get(config.storage_backend)
    if make_storage is None:
        known = ", ".join(registry.STORAGE)
        raise SystemExit(f"unknown storage backend {config.storage_backend!r}; known: {known}")
    store = SqliteStore(config.database)
    return Core(
        vmms=build_vmms(config),
        config=config,
        store=store,
        storage=make_storage(config.volumes_dir),
        blocks=registry.BLOCK_STORES["local"](config.blocks_dir),
        jobs=Jobs(store),
    )


def build_vmms(config: Config) -> dict[str, VmmBackend]:
    """One driver per configured VMM host, sharing the command templates and a local runner."""
    templates = load_templates(config.hostcmds)
    runner = LocalRunner()
    vmms: dict[str, VmmBackend] = {}
    zones = {zone.name for zone in config.zones}
    for host in config.vmm_hosts:
        factory = VMMS.get(host.driver)
        if factory is None:
            raise SystemExit(
                f"[vmm {host.name}]: unknown driver {host.driver!r}; known: {', '.join(VMMS)}"
            )
        if host.zone not in zones:
            raise SystemExit(f"[vmm {host.name}]: zone {host.zone!r} is not a configured zone")
        vmms[host.name] = factory.from_options(host.options, runner=runner, templates=templates)
    return vmms


def build_services(core: Core) -> Services:
    volumes = VolumeService(core)
    snapshots = SnapshotService(core, volumes)
    instances = InstanceService(core)
    return Services(
        config=core.config,
        volumes=volumes,
        snapshots=snapshots,
        tags=TagService(core, volumes, snapshots, instances),
        instances=instances,
        attachments=AttachmentService(core, volumes, instances),
    )


async def _purge_deleted(core: Core) -> None:
    """Deleted volumes answer `deleted` for a short while, then InvalidVolume.NotFound."""
    while True:
        await asyncio.sleep(PURGE_INTERVAL_SECONDS)
        try:
            await core.store.purge_deleted_volumes(
                time.time() - core.config.deleted_visible_seconds
            )
        except Exception:
            log.exception("purging deleted volumes failed")


def make_app(config: Config) -> web.Application:
    core = build_core(config)
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[CORE_KEY] = core
    app[SERVICES_KEY] = build_services(core)
    app.router.add_route("POST", "/", handle_ec2)
    app.router.add_route("GET", "/", handle_ec2)
    app.router.add_route("*", "/{tail:.*}", handle_unknown)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        await core.store.open()
        await core.storage.check_setup()
        for vmm in core.vmms.values():
            await vmm.check_setup()
        await asyncio.to_thread(core.blocks.remove_temp_files)
        resumed = await core.jobs.resume()
        settled = await core.jobs.settle_stranded()
        if resumed or settled:
            log.info("resumed %d unfinished jobs, started %d missing ones", resumed, settled)
        purger = asyncio.create_task(_purge_deleted(core))
        log.info(
            "ebsemu serving EC2 on http://%s:%d/ (data in %s)",
            config.host,
            config.port,
            config.data_dir,
        )
        yield
        purger.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await purger
        await core.jobs.close()
        await core.store.close()

    app.cleanup_ctx.append(lifecycle)
    return app
