"""`ebsemu migrate --from sqlite:PATH --to postgresql://…`: move a deployment's metadata from
its SQLite database into an empty PostgreSQL database (see ebsemu.store.copy). Without
--from, the configured data directory's database; without --to, the configured [store] dsn."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from ebsemu.cli_reconcile import EXIT_BUSY
from ebsemu.config import Config
from ebsemu.runlock import DataDirBusy, DataDirLock
from ebsemu.store.backends import store_errors


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source", help="sqlite:PATH (default: the data dir's)")
    parser.add_argument("--to", dest="target", help="postgresql://… (default: [store] dsn)")


def run(args: argparse.Namespace, config: Config) -> int:
    # Imported here: they load asyncpg, which no other command needs.
    from ebsemu.store.copy import CopyError, copy_sqlite_to_postgres
    from ebsemu.store.postgres_base import redact_dsn

    source = args.source or f"sqlite:{config.database}"
    target = args.target or config.store_dsn
    if not source.startswith("sqlite:"):
        print("ebsemu migrate: --from must be sqlite:PATH", file=sys.stderr)
        return 2
    if not target or not target.startswith(("postgresql://", "postgres://")):
        print("ebsemu migrate: --to must be a postgresql://… DSN", file=sys.stderr)
        return 2
    path = Path(source.removeprefix("sqlite:"))
    # A server at work on the database would write rows the copy misses: it must be stopped,
    # and none may start until the copy is done.
    lock = DataDirLock(path.parent)
    if path.exists():
        try:
            lock.acquire()
        except DataDirBusy:
            print(
                f"ebsemu migrate: a server is running on {path.parent}; stop it first.",
                file=sys.stderr,
            )
            return EXIT_BUSY
    try:
        copied = asyncio.run(copy_sqlite_to_postgres(path, target))
    except CopyError as exc:
        print(f"ebsemu migrate: {exc}", file=sys.stderr)
        return 1
    except store_errors() as exc:
        print(f"ebsemu migrate: cannot use the databases: {exc}", file=sys.stderr)
        return 1
    finally:
        lock.release()
    for entry in copied:
        print(f"{entry.table}: {entry.rows} rows")
    print(f"copied {path} to {redact_dsn(target)}: {len(copied)} tables, counts verified")
    return 0
