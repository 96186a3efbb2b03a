"""Durable at commit: the store runs SQLite in WAL mode with synchronous=FULL (a committed
transaction survives power loss), and a snapshot is marked completed only after every block it
stored was flushed to disk (syncfs of the block store) — never before."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from backends.base import NewBlock
from backends.blockstore import LocalBlockStore
from backends.file import FileStorage
from ebsemu import config as config_module
from ebsemu.app import build_services
from ebsemu.service.context import RequestContext
from ebsemu.service.core import Core
from ebsemu.service.jobs import Jobs
from ebsemu.service.storage_hosts import StorageHosts
from ebsemu.store.sqlite import SqliteStore
from tests.test_host_faults import request

CTX = RequestContext("000000000000", "us-east-1", "test")
BLOCK = 512 * 1024


class Events(list[str]):
    pass


class WatchedBlocks(LocalBlockStore):
    def __init__(self, root: Path, events: Events) -> None:
        super().__init__(root)
        self.events = events

    def put_many(self, blocks: Sequence[NewBlock]) -> int:
        self.events += ["put"] * len(blocks)  # put and put_clone come here too
        return super().put_many(blocks)

    def flush(self) -> None:
        self.events.append("flush")
        super().flush()


class WatchedStore(SqliteStore):
    events: Events

    async def complete_snapshot_closing_job(
        self,
        snapshot_id: str,
        full_size_bytes: int,
        job_id: int | None,
        steps_done: Sequence[str],
    ) -> bool:
        self.events.append("complete")
        return await super().complete_snapshot_closing_job(
            snapshot_id, full_size_bytes, job_id, steps_done
        )


def test_the_store_commits_durably_in_wal_mode_with_synchronous_full(tmp_path: Path) -> None:
    async def scenario() -> tuple[str, int]:
        store = SqliteStore(tmp_path / "db.sqlite3")
        await store.open()
        try:
            async with store.db.execute("PRAGMA journal_mode") as cur:
                mode = await cur.fetchone()
            async with store.db.execute("PRAGMA synchronous") as cur:
                sync = await cur.fetchone()
        finally:
            await store.close()
        assert mode is not None and sync is not None
        return str(mode[0]), int(sync[0])

    assert asyncio.run(scenario()) == ("wal", 2)  # 2 = FULL


def test_a_snapshot_is_completed_only_after_its_blocks_were_flushed(tmp_path: Path) -> None:
    events = Events()

    async def scenario() -> None:
        cfg = config_module.load(None, data_dir=tmp_path / "data")
        store = WatchedStore(cfg.database)
        store.events = events
        await store.open()
        storage = FileStorage(cfg.volumes_dir)
        await storage.check_setup()
        core = Core(
            config=cfg,
            store=store,
            storage_hosts=StorageHosts.single(storage),
            blocks=WatchedBlocks(cfg.blocks_dir, events),
            jobs=Jobs(store),
        )
        services = build_services(core)
        try:
            volume = await services.volumes.create(CTX, request())
            await core.jobs.idle()
            segment = cfg.volumes_dir / "volumes" / volume.id / "seg-0000"
            with segment.open("r+b") as f:
                for index in (3, 900, 1500):
                    f.seek(index * BLOCK)
                    f.write(bytes([index % 251 + 1]) * BLOCK)
            await services.snapshots.create(CTX, volume.id, None, {})
            await core.jobs.idle()
        finally:
            await core.jobs.close()
            await store.close()

    asyncio.run(scenario())
    assert events.count("put") == 3
    assert (
        events.index("complete")
        > events.index("flush")
        > max(i for i, e in enumerate(events) if e == "put")
    )
