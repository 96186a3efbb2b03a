"""Wiring: configuration in, a running aiohttp application out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping

from aiohttp import web

from backends.errors import SetupError
from ebsemu import hosts
from ebsemu.api.actions import Services
from ebsemu.api.authn import Authenticator
from ebsemu.api.handler import AUTH_KEY, LIMITER_KEY, SERVICES_KEY, handle_ec2, handle_unknown
from ebsemu.api.metrics import METRICS_KEY, Metrics, handle_metrics, observe_requests
from ebsemu.api.ratelimit import RateLimiter
from ebsemu.api.request_context import request_context
from ebsemu.block_stores import build_block_store, metrics_refresh_seconds
from ebsemu.config import Config
from ebsemu.credentials import (
    endpoint_url,
    record_configured_key,
    recorded_configured_key,
    save_default_key,
)
from ebsemu.direct import routes as direct_routes
from ebsemu.keyvault import KeyVault
from ebsemu.private_files import private_dir
from ebsemu.runlock import DataDirBusy, DataDirLock
from ebsemu.service import guest_pause
from ebsemu.service.accounts import AccountService, configured_key
from ebsemu.service.attachments import AttachmentService
from ebsemu.service.core import Core
from ebsemu.service.encryption import EncryptionService
from ebsemu.service.exports import ExportService
from ebsemu.service.fast_restores import FastRestoreService
from ebsemu.service.instances import InstanceService
from ebsemu.service.jobs import Jobs
from ebsemu.service.modifications import ModificationService
from ebsemu.service.multi_snapshots import MultiSnapshotService
from ebsemu.service.public_access import PublicAccessService
from ebsemu.service.reconcile import Reconciler, drop_stale_views
from ebsemu.service.sharing import SharingService
from ebsemu.service.snapshot_copies import SnapshotCopyService
from ebsemu.service.snapshot_locks import SnapshotLockService
from ebsemu.service.snapshots import SnapshotService
from ebsemu.service.tags import TagService
from ebsemu.service.volume_status import VolumeStatusService
from ebsemu.service.volumes import VolumeService
from ebsemu.store.backends import build_store
from ebsemu.store.locks import StoreLock

log = logging.getLogger(__name__)

CORE_KEY: web.AppKey[Core] = web.AppKey("core", Core)
PURGE_INTERVAL_SECONDS = 5.0
STATISTICS_EVERY_ROUNDS = 12  # one minute


def build_core(config: Config) -> Core:
    runner, templates = hosts.shared_tools(config)
    export = hosts.build_export(config, runner, templates)
    store = build_store(config)
    return Core(
        config=config,
        store=store,
        storage_hosts=hosts.build_storage_hosts(config, runner, templates, export),
        blocks=build_block_store(config),
        jobs=Jobs(store),
        block_gc_lock=StoreLock(store, "block-gc"),
        vmms=hosts.build_vmms(config, runner, templates),
        export=export,
        initiators=hosts.initiators(config),
    )


MASTER_KEY_FILE = "master.key"


def build_services(core: Core) -> Services:
    encryption = EncryptionService(core, KeyVault(core.config.data_dir / MASTER_KEY_FILE))
    volumes = VolumeService(core, encryption)
    snapshots = SnapshotService(core, volumes, encryption)
    instances = InstanceService(core)
    exports = ExportService(core)
    fast_restores = FastRestoreService(core, snapshots)
    return Services(
        config=core.config,
        volumes=volumes,
        snapshots=snapshots,
        tags=TagService(core, volumes, snapshots, instances),
        instances=instances,
        attachments=AttachmentService(core, volumes, instances, exports, encryption),
        exports=exports,
        encryption=encryption,
        sharing=SharingService(core, snapshots.get, fast_restores.disable_unshared),
        copies=SnapshotCopyService(core, snapshots, encryption),
        multi_snapshots=MultiSnapshotService(core, volumes, instances, encryption),
        volume_status=VolumeStatusService(core, volumes),
        modifications=ModificationService(core, volumes, instances),
        fast_restores=fast_restores,
        public_access=PublicAccessService(core),
        snapshot_locks=SnapshotLockService(core, snapshots),
    )


def tls_context(config: Config) -> ssl.SSLContext | None:
    """The server's TLS context when [server] tls_cert and tls_key are set (TLS 1.2+)."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.tls_cert, config.tls_key)
    return context


def _print(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


async def _default_account(
    config: Config,
    accounts: AccountService,
    environ: Mapping[str, str],
    announce: Callable[[str], None],
) -> None:
    """The default account and its key; a generated key is shown once, on standard output
    (never in the log), and kept in the data directory. AccountError for a bad key pair."""
    configured = configured_key(config, environ)
    generated = await accounts.ensure_default(config.account_id, configured)
    if configured is not None:
        await _retire_replaced_key(config, accounts, configured[0].access_key_id)
    if generated is None:
        return
    path, snippet = save_default_key(config, generated)
    log.warning("the generated key's secret is in %s (owner-only)", path)
    announce(
        "\nebsemu generated an access key for the default account; it is shown only now and\n"
        f"kept in {path}. A ready AWS CLI / boto3 profile:\n\n{snippet}\n"
    )


async def _retire_replaced_key(config: Config, accounts: AccountService, key_id: str) -> None:
    """A key pair given in the environment or [auth] replaces the one given there before: that
    one stops working, once the new one is in place (keys added with `ebsemu accounts` and a
    generated key stay)."""
    previous = recorded_configured_key(config)
    if previous == key_id:
        return
    if previous is not None:
        owner = await accounts.key(previous)
        if owner is not None and owner[0] == config.account_id:
            await accounts.remove_key(previous)
            log.warning(
                "access key %s, configured before, is removed: %s replaces it", previous, key_id
            )
    record_configured_key(config, key_id)


async def _maintenance(core: Core) -> None:
    """Deleted volumes answer `deleted` for a short while, then InvalidVolume.NotFound; the
    query planner's statistics follow the tables as they grow; frozen views a failed drop
    left behind are dropped again."""
    rounds = 0
    while True:
        await asyncio.sleep(PURGE_INTERVAL_SECONDS)
        rounds += 1
        try:
            await core.store.purge_deleted_volumes(
                time.time() - core.config.deleted_visible_seconds
            )
            if rounds % STATISTICS_EVERY_ROUNDS == 0:
                await core.store.refresh_statistics()
                await drop_stale_views(core)
        except Exception:
            log.exception("store maintenance failed")


def log_serving(config: Config) -> None:
    """Say that the server is serving: once it listens on its address."""
    log.info(
        "ebsemu serving EC2 on %s/ (listening on %s:%d, data in %s)",
        endpoint_url(config),
        config.host,
        config.port,
        config.data_dir,
    )


def make_app(
    config: Config,
    *,
    auth: bool = True,
    environ: Mapping[str, str] | None = None,
    announce: Callable[[str], None] = _print,
) -> web.Application:
    """The application. ``auth=False`` (`--no-auth`) takes every request as the default
    account's, unsigned or not; ``environ`` may hold the default account's key pair."""
    core = build_core(config)
    accounts = AccountService(core.store)
    app = web.Application(
        client_max_size=config.max_request_bytes, middlewares=[request_context, observe_requests]
    )
    app[CORE_KEY] = core
    app[METRICS_KEY] = Metrics(core, metrics_refresh_seconds(config))
    services = build_services(core)
    app[SERVICES_KEY] = services
    app[AUTH_KEY] = Authenticator(accounts.key, default_account=config.account_id, enabled=auth)
    app[LIMITER_KEY] = RateLimiter(config.requests_per_second, config.request_burst)
    app.router.add_route("POST", "/", handle_ec2)
    app.router.add_route("GET", "/", handle_ec2)
    direct_routes.install(
        app,
        core,
        accounts.key,
        auth=auth,
        minute_seconds=config.ebs_timeout_minute_seconds,
    )
    if config.metrics:
        app.router.add_route("GET", "/metrics", handle_metrics)
    app.router.add_route("*", "/{tail:.*}", handle_unknown)

    async def start() -> None:
        await _default_account(config, accounts, environ or {}, announce)
        if not auth:
            log.warning(
                "authentication is OFF (--no-auth): every request, signed or not, acts as "
                "account %s",
                config.account_id,
            )
        await core.storage_hosts.check_setup()
        await core.storage_hosts.check_in_use(core.store)
        for vmm in core.vmms.values():
            await vmm.check_setup()
        await asyncio.to_thread(core.blocks.check_setup)
        await asyncio.to_thread(core.blocks.remove_temp_files)
        await guest_pause.resume_left_paused(core)
        async with core.store.exclusive("reconcile"):  # one server instance at a time
            report = await Reconciler(core, services.exports).run(apply=True)
        if report.findings:
            log.info("start-up reconciliation settled %d finding(s)", len(report.findings))

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        private_dir(config.data_dir)
        data_lock = DataDirLock(config.data_dir)
        try:
            data_lock.acquire()
        except DataDirBusy as exc:
            raise SetupError(f"{exc}: is a server already running on this data?") from None
        await core.store.open()
        try:
            await start()
        except BaseException:
            await core.jobs.close()
            await core.store.close()  # its thread would keep a failed start from exiting
            data_lock.release()
            raise
        purger = asyncio.create_task(_maintenance(core))
        leases = (
            asyncio.create_task(core.jobs.keep(config.job_lease_seconds / 3))
            if core.store.shared
            else None
        )
        yield
        for task in (purger, leases):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await core.jobs.close()
        await core.store.close()
        data_lock.release()

    app.cleanup_ctx.append(lifecycle)
    return app
