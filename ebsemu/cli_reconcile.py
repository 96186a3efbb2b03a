"""`ebsemu reconcile [--dry-run] [--json]`: compare the store with every backend and settle
the difference, as the server does at start-up (see ebsemu.service.reconcile).

It acts only while no server holds the data directory (the server's lock says so): a server
reconciles at its own start and would race with an outside repair. ``--dry-run`` opens the
database read-only, lists the backends and prints what it would do, changing nothing; it may
run next to a live server (its report is then a snapshot of moving state).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys

from backends.errors import BackendError, SetupError
from ebsemu.config import Config
from ebsemu.runlock import DataDirBusy, DataDirLock
from ebsemu.service.reconcile import Reconciler, Report
from ebsemu.store.sql_base import SqlBase

EXIT_BUSY = 3


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dry-run", action="store_true", help="only report what would be done; change nothing"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


async def reconcile(config: Config, *, apply: bool) -> Report:
    """Build the service as the server does, reconcile, and (when applying) wait for the jobs
    it resumed or started to end."""
    from ebsemu.app import build_core, build_services

    core = build_core(config)
    services = build_services(core)
    store = core.store
    assert isinstance(store, SqlBase)  # either engine: read-only open, exclusive section
    if apply:
        await store.open()
    else:
        await store.open_read_only()
    try:
        if apply:
            await core.storage_hosts.check_setup()
            await asyncio.to_thread(core.blocks.remove_temp_files)
        # Applied: not while a server instance sharing the database reconciles.
        exclusive = store.exclusive("reconcile") if apply else contextlib.nullcontext()
        async with exclusive:
            report = await Reconciler(core, services.exports).run(apply=apply)
        await core.jobs.idle()
    finally:
        await core.jobs.close()
        await store.close()
    return report


def run(args: argparse.Namespace, config: Config) -> int:
    lock = DataDirLock(config.data_dir)
    busy = False
    try:
        lock.acquire()
    except DataDirBusy:
        busy = True
    try:
        if busy and not args.dry_run:
            print(
                "ebsemu reconcile: a server is running on this data directory; it reconciles "
                "at start-up. Stop it first, or use --dry-run for a report.",
                file=sys.stderr,
            )
            return EXIT_BUSY
        try:
            report = asyncio.run(reconcile(config, apply=not args.dry_run))
        except (SetupError, BackendError, OSError) as exc:
            print(f"ebsemu reconcile: {exc}", file=sys.stderr)
            return 1
    finally:
        lock.release()
    if args.json:
        print(json.dumps({**report.to_dict(), "ServerRunning": busy}, indent=2))
    else:
        if busy:
            print("note: a server is running; this report may race with its work")
        print("\n".join(report.lines()))
    return 1 if report.count("backend-error") else 0
