"""The store's queries, written once in SQLite's SQL (``SqlStore``), and the SQLite store:
those queries on the SQLite engine (``SqliteStore``: WAL, synchronous commits, versioned
migrations). ``PostgresStore`` runs the same queries on PostgreSQL.

Every state change is a compare-and-set (`UPDATE … WHERE id = ? AND state IN (…)`), so two
requests can never both move one resource out of the same state.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from ebsemu.model import (
    COPY_VOLUME_ID,
    SNAPSHOTTABLE,
    Snapshot,
    SnapshotState,
    TagRecord,
    Volume,
    VolumeState,
)
from ebsemu.private_files import private_database
from ebsemu.store.base import (
    TOKEN_RETENTION_SECONDS,
    ClientTokenRetired,
    ListQuery,
    Page,
    RestoreSourceGone,
    SnapshotDeletion,
    VolumeNotSnapshottable,
)
from ebsemu.store.rows import (
    SNAPSHOT_COLUMNS,
    VOLUME_COLUMNS,
    snapshot_from_row,
    snapshot_values,
    volume_from_row,
)
from ebsemu.store.sql_base import (
    COUNT_SNAPSHOTS_SQL,
    COUNT_VOLUMES_SQL,
    Rollback,
    fetch,
    placeholders,
    prefixed,
    tags_into,
)
from ebsemu.store.sql_filters import (
    SNAPSHOT_FILTERS,
    TAG_FILTERS,
    VOLUME_ATTACHMENTS,
    VOLUME_FILTERS,
    filter_sql,
)
from ebsemu.store.sqlite_accounts import AccountTables
from ebsemu.store.sqlite_direct import DirectTables
from ebsemu.store.sqlite_encryption import EncryptionTables
from ebsemu.store.sqlite_fast_restores import FastRestoreTables
from ebsemu.store.sqlite_instances import InstanceTables, complete_volumes
from ebsemu.store.sqlite_inventory import InventoryTables
from ebsemu.store.sqlite_leases import LeaseTables
from ebsemu.store.sqlite_modifications import ModificationTables
from ebsemu.store.sqlite_public_access import PublicAccessTables, granted_sql
from ebsemu.store.sqlite_reconcile import ReconcileTables
from ebsemu.store.sqlite_snapshot_locks import HOLD_SNAPSHOT_SQL, SnapshotLockTables, hold_snapshot
from ebsemu.store.sqlite_steps import StepTables, close_job, end_job
from ebsemu.store.sqlite_volume_io import VolumeIoTables
from ebsemu.timefmt import from_wire, to_wire

log = logging.getLogger(__name__)


class SqlStore(
    InstanceTables,
    AccountTables,
    DirectTables,
    VolumeIoTables,
    InventoryTables,
    EncryptionTables,
    ModificationTables,
    ReconcileTables,
    StepTables,
    FastRestoreTables,
    PublicAccessTables,
    SnapshotLockTables,
):
    """Every query of the store, on whichever engine a subclass adds."""

    def __init__(self) -> None:
        super().__init__()
        # (owner id, region) -> volumes not deleted
        self._volume_counts: dict[tuple[str, str], int] = {}
        self._encryption_settings = {}  # (account id, region) -> EncryptionSettings

    # ---- volumes -------------------------------------------------------------------------

    async def insert_volume(self, volume: Volume) -> Volume:
        stored, _ = await self.insert_volume_with_job(volume, None)
        return stored

    async def insert_volume_with_job(
        self, volume: Volume, kind: str | None, payload: str = "{}", *, limit: int | None = None
    ) -> tuple[Volume, int | None]:
        """Insert the volume and the intent record of its job ``kind`` (if any) in one
        transaction. On a ClientToken the owner already used, return that volume and no job."""
        job = (kind, payload) if kind is not None else None

        def work(conn: sqlite3.Connection) -> tuple[Volume, int | None]:
            if limit is not None:
                self._keep_within_work(conn, "volumes", volume.owner_id, volume.region, limit)
            return _insert_volume(conn, volume, job)

        stored, job_id = await self._commit(work)
        # Counted as the caller resumes, in commit order (see count_volumes).
        counted = (volume.owner_id, volume.region)
        if stored.id == volume.id and counted in self._volume_counts:
            self._volume_counts[counted] += 1
        return stored, job_id

    async def find_volume_by_token(self, owner_id: str, token: str) -> Volume | None:
        return await self._read(partial(_volume_by_token, owner_id=owner_id, token=token))

    async def get_volume(self, volume_id: str) -> Volume | None:
        return await self._read(partial(_volume_by_id, volume_id=volume_id))

    async def list_volumes(self, query: ListQuery) -> Page[Volume]:
        params: list[object] = []
        where = self._scope("v", query, params)
        where += filter_sql(
            query.filters, VOLUME_FILTERS, "v.id", params, related=VOLUME_ATTACHMENTS
        )
        sql = self._page_sql(
            f"SELECT v.seq, {prefixed('v', VOLUME_COLUMNS)} FROM volumes v",
            where,
            params,
            query,
            "v.seq",
        )

        def work(conn: sqlite3.Connection) -> Page[Volume]:
            page: Page[Volume] = self._paginate(fetch(conn, sql, params), query, volume_from_row)
            if page.items:
                complete_volumes(conn, page.items)
            return page

        return await self._read(work)

    async def transition_volume(
        self,
        volume_id: str,
        expected: set[VolumeState],
        new: VolumeState,
        message: str | None = None,
    ) -> bool:
        states = [s.value for s in expected]
        sql = (
            f"UPDATE volumes SET state = ?, state_message = ?, updated_at = ? "
            f"WHERE id = ? AND state IN ({placeholders(len(states))}) "
            "RETURNING owner_id, region"
        )
        params = (new.value, message, time.time(), volume_id, *states)
        leaving = VolumeState.DELETED not in expected and new is VolumeState.DELETED

        rows = await self._commit(partial(fetch, sql=sql, params=params))
        if rows and leaving and (counted := (rows[0][0], rows[0][1])) in self._volume_counts:
            self._volume_counts[counted] -= 1
        return bool(rows)

    async def transition_volume_closing_job(
        self,
        volume_id: str,
        expected: set[VolumeState],
        new: VolumeState,
        job_id: int | None,
        steps_done: Sequence[str],
    ) -> bool:
        states = [s.value for s in expected]
        sql = (
            f"UPDATE volumes SET state = ?, state_message = NULL, updated_at = ? "
            f"WHERE id = ? AND state IN ({placeholders(len(states))})"
        )
        params = (new.value, time.time(), volume_id, *states)

        holder = self._job_holder()

        def work(conn: sqlite3.Connection) -> bool:
            changed = conn.execute(sql, params).rowcount > 0
            if job_id is not None:
                end_job(conn, job_id, steps_done, holder)
            return changed

        if new is VolumeState.DELETED:
            raise ValueError("a volume leaves the count through transition_volume")
        return await self._commit(work)

    def _job_holder(self) -> str | None:
        """The job owner whose hold a job's end is checked against: None where one instance
        holds every job of the database (SQLite)."""
        return None

    async def count_volumes(self, owner_id: str, region: str) -> int:
        """Volumes of the owner in the region not deleted: counted once by the writer, then
        kept up to date by the store's own inserts and transitions as their callers resume.
        Callers of one batch resume in the batch's order, so the first count and the changes
        around it agree."""
        counted = (owner_id, region)
        count = self._volume_counts.get(counted)
        if count is None:
            rows = await self._commit(
                partial(fetch, sql=COUNT_VOLUMES_SQL, params=(owner_id, region))
            )
            count = self._volume_counts.setdefault(counted, int(rows[0][0]))
        return count

    async def retired_token_volume(self, owner_id: str, token: str) -> str | None:
        return await self._read(partial(_retired_token, owner_id=owner_id, token=token))

    async def client_token_use(self, owner_id: str, token: str) -> tuple[Volume | None, str | None]:
        def work(conn: sqlite3.Connection) -> tuple[Volume | None, str | None]:
            existing = _volume_by_token(conn, owner_id, token)
            if existing is not None:
                return existing, None
            return None, _retired_token(conn, owner_id, token)

        return await self._read(work)

    async def purge_deleted_volumes(self, before: float) -> list[str]:
        now = time.time()
        rows = await self._rows(
            "SELECT id FROM volumes WHERE state = 'deleted' AND updated_at < ?", (before,)
        )
        ids = [row[0] for row in rows]
        statements: list[tuple[str, Sequence[Any]]] = [
            (
                "DELETE FROM retired_client_tokens WHERE retired_at < ?",
                (now - TOKEN_RETENTION_SECONDS,),
            )
        ]
        if ids:
            marks = placeholders(len(ids))
            statements += [
                (
                    "INSERT OR REPLACE INTO retired_client_tokens "
                    "(owner_id, client_token, volume_id, retired_at) "
                    f"SELECT owner_id, client_token, id, ? FROM volumes WHERE id IN ({marks}) "
                    "AND client_token IS NOT NULL",
                    (now, *ids),
                ),
                (f"DELETE FROM tags WHERE resource_id IN ({marks})", ids),
                (f"DELETE FROM volume_modifications WHERE volume_id IN ({marks})", ids),
                (f"DELETE FROM volumes WHERE id IN ({marks})", ids),
            ]
        await self._many(statements)
        return ids

    # ---- snapshots -----------------------------------------------------------------------

    async def insert_snapshot(self, snapshot: Snapshot) -> None:
        await self._many(self._snapshot_statements(snapshot))

    async def insert_snapshot_with_job(
        self, snapshot: Snapshot, kind: str, payload: str = "{}", *, limit: int | None = None
    ) -> int:
        statements = self._snapshot_statements(snapshot)

        def work(conn: sqlite3.Connection) -> int:
            _hold_snapshottable(conn, [snapshot.volume_id])
            if limit is not None:
                self._keep_within_work(conn, "snapshots", snapshot.owner_id, snapshot.region, limit)
            for sql, params in statements:
                conn.execute(sql, params)
            return _insert_job(conn, kind, payload, snapshot.id)

        return await self._commit(work)

    async def insert_snapshots(
        self, snapshots: Sequence[Snapshot], *, limit: int | None = None
    ) -> None:
        statements = [statement for s in snapshots for statement in self._snapshot_statements(s)]

        def work(conn: sqlite3.Connection) -> None:
            _hold_snapshottable(conn, [s.volume_id for s in snapshots])
            if limit is not None and snapshots:
                owner, region = snapshots[0].owner_id, snapshots[0].region
                self._keep_within_work(conn, "snapshots", owner, region, limit, len(snapshots))
            for sql, params in statements:
                conn.execute(sql, params)

        await self._commit(work)

    async def insert_snapshot_copy(
        self, snapshot: Snapshot, source_id: str, *, limit: int | None = None
    ) -> bool:
        async with self._transaction() as db:
            # The source's row is held (its deletion waits, or was seen) until its rows are
            # copied: a copy never takes fewer rows than the source had.
            if not await hold_snapshot(db, source_id, completed=True):
                raise Rollback()
            if limit is not None:
                await self._keep_within(db, "snapshots", snapshot.owner_id, snapshot.region, limit)
            for sql, params in self._snapshot_statements(snapshot):
                await db.execute(sql, params)
            await db.execute(
                "INSERT INTO snapshot_blocks (snapshot_id, block_index, digest) "
                "SELECT ?, block_index, digest FROM snapshot_blocks WHERE snapshot_id = ?",
                (snapshot.id, source_id),
            )
            return True
        return False

    def _snapshot_statements(self, snapshot: Snapshot) -> list[tuple[str, Sequence[Any]]]:
        values = snapshot_values(snapshot)
        statements: list[tuple[str, Sequence[Any]]] = [
            (
                f"INSERT INTO snapshots ({SNAPSHOT_COLUMNS}) VALUES ({placeholders(len(values))})",
                values,
            )
        ]
        statements += self._tag_statements(
            [(snapshot.id, "snapshot")], snapshot.owner_id, snapshot.tags
        )
        return statements

    async def get_snapshot(self, snapshot_id: str) -> Snapshot | None:
        return await self._read(partial(_snapshot_by_id, snapshot_id=snapshot_id))

    async def list_snapshots(self, query: ListQuery) -> Page[Snapshot]:
        params: list[object] = []
        if query.reach is None:
            where = ["s.deleted = 0", *self._scope("s", query, params)]
        else:
            where = ["s.deleted = 0", *self._reach_scope(query, params)]
        where += filter_sql(query.filters, SNAPSHOT_FILTERS, "s.id", params, tag_owner=query.viewer)
        rows = await self._page_rows(
            f"SELECT s.seq, {prefixed('s', SNAPSHOT_COLUMNS)} FROM snapshots s",
            where,
            params,
            query,
            "s.seq",
        )
        page = self._paginate(rows, query, snapshot_from_row)
        page.items = await self._with_tags(page.items)
        return page

    @staticmethod
    def _reach_scope(query: ListQuery, params: list[object]) -> list[str]:
        """Snapshots matching any of ``query.reach``, in the region, among the ids if given."""
        assert query.reach is not None
        terms: list[str] = []
        for reach in query.reach:
            parts: list[str] = []
            if reach.owners is not None:
                parts.append(f"s.owner_id IN ({placeholders(len(reach.owners))})")
                params += sorted(reach.owners)
            if reach.grantees is not None:
                parts.append(granted_sql(reach.grantees, params))
            terms.append("(" + (" AND ".join(parts) or "TRUE") + ")")
        where = ["(" + (" OR ".join(terms) or "FALSE") + ")", "s.region = ?"]
        params.append(query.region)
        if query.ids:
            where.append(f"s.id IN ({placeholders(len(query.ids))})")
            params += query.ids
        return where

    async def transition_snapshot(
        self,
        snapshot_id: str,
        expected: set[SnapshotState],
        new: SnapshotState,
        message: str | None = None,
    ) -> bool:
        states = [s.value for s in expected]
        # A snapshot whose creation fails loses the lock put on it while pending (Amazon EBS
        # User Guide, "Considerations for Amazon EBS snapshot lock").
        cancels_lock = new is SnapshotState.ERROR and SnapshotState.PENDING in expected

        def work(conn: sqlite3.Connection) -> bool:
            changed = conn.execute(
                f"UPDATE snapshots SET state = ?, state_message = ? "
                f"WHERE id = ? AND deleted = 0 AND state IN ({placeholders(len(states))})",
                (new.value, message, snapshot_id, *states),
            ).rowcount
            if changed == 1 and cancels_lock:
                conn.execute("DELETE FROM snapshot_locks WHERE snapshot_id = ?", (snapshot_id,))
            return changed == 1

        return await self._commit(work)

    async def set_snapshot_progress(self, snapshot_id: str, progress: int) -> None:
        await self._write(
            "UPDATE snapshots SET progress = ? WHERE id = ? AND state = 'pending'",
            (progress, snapshot_id),
        )

    async def complete_snapshot(self, snapshot_id: str, full_size_bytes: int) -> bool:
        return await self.complete_snapshot_closing_job(snapshot_id, full_size_bytes, None, [])

    async def complete_snapshot_closing_job(
        self,
        snapshot_id: str,
        full_size_bytes: int,
        job_id: int | None,
        steps_done: Sequence[str],
    ) -> bool:
        from ebsemu.model import utcnow

        completed_at = to_wire(utcnow())
        holder = self._job_holder()

        def work(conn: sqlite3.Connection) -> bool:
            changed = conn.execute(
                "UPDATE snapshots SET state = 'completed', progress = 100, completion_time = ?, "
                "full_size_bytes = ? WHERE id = ? AND state = 'pending' AND deleted = 0",
                (completed_at, full_size_bytes, snapshot_id),
            ).rowcount
            if job_id is not None:
                end_job(conn, job_id, steps_done, holder)
            return changed > 0

        return await self._commit(work)

    async def mark_snapshot_deleted(self, snapshot_id: str, now: datetime) -> SnapshotDeletion:
        async with self._transaction() as db:
            present, lock = await self._lock_of(db, snapshot_id)
            if not present:
                return SnapshotDeletion(marked=False)
            if lock is not None and lock.protects(now):
                return SnapshotDeletion(marked=False, kept_by=lock)
            async with db.execute(
                "SELECT id FROM volumes WHERE snapshot_id = ? AND state = 'creating' LIMIT 1",
                (snapshot_id,),
            ) as cur:
                restoring = await cur.fetchone()
            if restoring is not None:
                return SnapshotDeletion(marked=False, in_use_by=restoring[0])
            await db.execute("UPDATE snapshots SET deleted = 1 WHERE id = ?", (snapshot_id,))
        return SnapshotDeletion(marked=True)

    async def deleted_snapshots(self) -> list[str]:
        return [row[0] for row in await self._rows("SELECT id FROM snapshots WHERE deleted = 1")]

    async def remove_snapshot(self, snapshot_id: str) -> None:
        await self._many(
            [
                ("DELETE FROM snapshot_blocks WHERE snapshot_id = ?", (snapshot_id,)),
                ("DELETE FROM tags WHERE resource_id = ?", (snapshot_id,)),
                ("DELETE FROM snapshot_locks WHERE snapshot_id = ?", (snapshot_id,)),
                ("DELETE FROM snapshots WHERE id = ?", (snapshot_id,)),
            ]
        )

    async def snapshot_storage_host(self, snapshot_id: str) -> str | None:
        rows = await self._rows("SELECT storage_host FROM snapshots WHERE id = ?", (snapshot_id,))
        return str(rows[0][0]) if rows else None

    async def storage_hosts_in_use(self) -> dict[str, list[str]]:
        rows = await self._rows(
            "SELECT storage_host, id FROM volumes WHERE state != 'deleted' "
            "UNION ALL SELECT storage_host, id FROM snapshots WHERE state = 'pending' "
            "ORDER BY 1, 2"
        )
        found: dict[str, list[str]] = {}
        for host, resource_id in rows:
            found.setdefault(str(host), []).append(str(resource_id))
        return found

    async def count_snapshots(self, owner_id: str, region: str) -> int:
        rows = await self._rows(COUNT_SNAPSHOTS_SQL, (owner_id, region))
        return int(rows[0][0])

    async def latest_completed_snapshot(self, volume_id: str) -> str | None:
        rows = await self._rows(
            "SELECT id FROM snapshots WHERE volume_id = ? AND state = 'completed' "
            "AND deleted = 0 ORDER BY seq DESC LIMIT 1",
            (volume_id,),
        )
        return str(rows[0][0]) if rows else None

    async def copies_in_progress(self, volume_id: str) -> list[str]:
        rows = await self._rows(
            "SELECT id FROM volumes WHERE source_volume_id = ? AND state = 'creating' ORDER BY seq",
            (volume_id,),
        )
        return [str(row[0]) for row in rows]

    async def pending_snapshots(self, volume_id: str) -> list[str]:
        rows = await self._rows(
            "SELECT id FROM snapshots WHERE volume_id = ? AND state = 'pending' AND deleted = 0 "
            "ORDER BY seq",
            (volume_id,),
        )
        return [str(row[0]) for row in rows]

    # ---- manifests -----------------------------------------------------------------------

    async def add_manifest_rows(
        self, snapshot_id: str, rows: Sequence[tuple[int, bytes]]
    ) -> list[bytes]:
        replaced = await self._commit(
            partial(_add_manifest_rows, snapshot_id=snapshot_id, rows=rows)
        )
        return sorted(replaced - await self.referenced(list(replaced))) if replaced else []

    async def copy_manifest(self, source_id: str, snapshot_id: str) -> None:
        await self._write(
            "INSERT OR REPLACE INTO snapshot_blocks (snapshot_id, block_index, digest) "
            "SELECT ?, block_index, digest FROM snapshot_blocks WHERE snapshot_id = ?",
            (snapshot_id, source_id),
        )

    async def clear_manifest(self, snapshot_id: str) -> list[bytes]:
        digests = {
            bytes(row[0])
            for row in await self._rows(
                "SELECT digest FROM snapshot_blocks WHERE snapshot_id = ?", (snapshot_id,)
            )
        }
        await self._write("DELETE FROM snapshot_blocks WHERE snapshot_id = ?", (snapshot_id,))
        return sorted(digests - await self.referenced(list(digests)))

    async def remove_manifest_rows(self, snapshot_id: str, indexes: Sequence[int]) -> list[bytes]:
        digests = await self._commit(
            partial(_remove_manifest_rows, snapshot_id=snapshot_id, indexes=indexes)
        )
        return sorted(digests - await self.referenced(list(digests)))

    async def manifest(self, snapshot_id: str) -> list[tuple[int, bytes]]:
        rows = await self._rows(
            "SELECT block_index, digest FROM snapshot_blocks WHERE snapshot_id = ? "
            "ORDER BY block_index",
            (snapshot_id,),
        )
        return [(int(row[0]), bytes(row[1])) for row in rows]

    async def manifest_block_count(self, snapshot_id: str) -> int:
        rows = await self._rows(
            "SELECT COUNT(*) FROM snapshot_blocks WHERE snapshot_id = ?", (snapshot_id,)
        )
        return int(rows[0][0])

    async def referenced(self, digests: Sequence[bytes]) -> set[bytes]:
        found: set[bytes] = set()
        for start in range(0, len(digests), 500):
            chunk = digests[start : start + 500]
            rows = await self._rows(
                "SELECT DISTINCT digest FROM snapshot_blocks "
                f"WHERE digest IN ({placeholders(len(chunk))})",
                chunk,
            )
            found.update(bytes(row[0]) for row in rows)
        return found

    # ---- tags ----------------------------------------------------------------------------

    @staticmethod
    def _tag_statements(
        resources: Sequence[tuple[str, str]], owner_id: str, tags: dict[str, str]
    ) -> list[tuple[str, Sequence[Any]]]:
        return [
            (
                "INSERT INTO tags (resource_id, resource_type, owner_id, key, value) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (resource_id, key) "
                "DO UPDATE SET value = excluded.value",
                (resource_id, resource_type, owner_id, key, value),
            )
            for resource_id, resource_type in resources
            for key, value in tags.items()
        ]

    async def set_tags(
        self, resources: Sequence[tuple[str, str]], owner_id: str, tags: dict[str, str]
    ) -> None:
        await self._many(self._tag_statements(resources, owner_id, tags))

    async def delete_tags(
        self, resource_ids: Sequence[str], tags: Sequence[tuple[str, str | None]]
    ) -> None:
        statements: list[tuple[str, Sequence[Any]]] = []
        for resource_id in resource_ids:
            if not tags:
                statements.append(("DELETE FROM tags WHERE resource_id = ?", (resource_id,)))
            for key, value in tags:
                if value is None:
                    statements.append(
                        ("DELETE FROM tags WHERE resource_id = ? AND key = ?", (resource_id, key))
                    )
                else:
                    statements.append(
                        (
                            "DELETE FROM tags WHERE resource_id = ? AND key = ? AND value = ?",
                            (resource_id, key, value),
                        )
                    )
        await self._many(statements)

    async def tag_count(self, resource_id: str) -> int:
        rows = await self._rows("SELECT COUNT(*) FROM tags WHERE resource_id = ?", (resource_id,))
        return int(rows[0][0])

    async def list_tags(self, query: ListQuery) -> Page[TagRecord]:
        params: list[object] = list(query.owner_ids)
        where = [f"t.owner_id IN ({placeholders(len(query.owner_ids))})"]
        where += filter_sql(query.filters, TAG_FILTERS, "t.resource_id", params)
        where.append(
            "(t.resource_id IN (SELECT id FROM volumes WHERE region = ? AND state != "
            "'deleted') OR t.resource_id IN (SELECT id FROM snapshots WHERE region = ? "
            "AND deleted = 0) OR t.resource_id IN (SELECT id FROM instances WHERE region = ?))"
        )
        params += [query.region, query.region, query.region]
        rows = await self._page_rows(
            "SELECT t.rowid, t.resource_id, t.resource_type, t.key, t.value FROM tags t",
            where,
            params,
            query,
            "t.rowid",
        )
        return self._paginate(rows, query, lambda r: TagRecord(r[1], r[2], r[3], r[4]))

    # ---- jobs ----------------------------------------------------------------------------

    async def start_job(self, kind: str, resource_id: str, payload: str = "{}") -> int:
        return await self._commit(
            partial(_insert_job, kind=kind, payload=payload, resource_id=resource_id)
        )

    async def finish_job(self, job_id: int, error: str | None = None) -> None:
        await self._commit(partial(close_job, job_id=job_id, error=error))

    async def stranded(self) -> list[tuple[str, str, str]]:
        """(job kind, resource id, payload JSON) for each resource left in a transitional
        state with no unfinished job to finish it — a crash between the state change and the
        job's intent record."""
        no_job = "NOT IN (SELECT resource_id FROM jobs WHERE state = 'running' AND kind = '{}')"
        rows = await self._rows(
            f"SELECT 'create_volume', id, '{{}}' FROM volumes WHERE state = 'creating' "
            f"AND id {no_job.format('create_volume')} "
            f"UNION ALL SELECT 'delete_volume', id, '{{}}' FROM volumes WHERE state = 'deleting' "
            f"AND id {no_job.format('delete_volume')} "
            "UNION ALL SELECT 'capture_snapshot', id, '{}' FROM snapshots "
            f"WHERE state = 'pending' AND deleted = 0 AND volume_id != '{COPY_VOLUME_ID}' "
            f"AND id {no_job.format('capture_snapshot')} "
            # A snapshot written through the EBS direct API has no volume to capture or copy.
            "AND id NOT IN (SELECT snapshot_id FROM direct_snapshots) "
            "UNION ALL SELECT 'copy_snapshot', id, '{}' FROM snapshots "
            f"WHERE state = 'pending' AND deleted = 0 AND volume_id = '{COPY_VOLUME_ID}' "
            f"AND id {no_job.format('copy_snapshot')} "
            "AND id NOT IN (SELECT snapshot_id FROM direct_snapshots) "
            "UNION ALL SELECT 'delete_snapshot', id, '{}' FROM snapshots "
            f"WHERE deleted = 1 AND id {no_job.format('delete_snapshot')} "
        )
        modifications = await self._rows(
            "SELECT 'modify_volume', volume_id, '{}' FROM volume_modifications "
            "WHERE state IN ('modifying', 'optimizing') "
            f"AND volume_id {no_job.format('modify_volume')}"
        )
        return [
            *((r[0], r[1], r[2]) for r in rows),
            *await self._stranded_attachments(),
            *((r[0], r[1], r[2]) for r in modifications),
        ]

    async def _stranded_attachments(self) -> list[tuple[str, str, str]]:
        """The attachments `attaching` or `detaching` with no job of theirs. A job is matched
        by its volume and the instance its payload names: a Multi-Attach volume may have one
        running for another of its attachments (a job naming no instance counts for all)."""
        kinds = {"attaching": "attach_volume", "detaching": "detach_volume"}
        attachments = await self._rows(
            "SELECT volume_id, instance_id, state FROM attachments "
            "WHERE state IN ('attaching', 'detaching') ORDER BY volume_id, instance_id"
        )
        if not attachments:
            return []
        jobs = await self._rows(
            "SELECT kind, resource_id, payload FROM jobs WHERE state = 'running' "
            "AND kind IN ('attach_volume', 'detach_volume')"
        )
        running = {
            (kind, rid, json.loads(payload).get("instance_id")) for kind, rid, payload in jobs
        }
        return [
            (kinds[state], volume_id, json.dumps({"instance_id": instance_id}))
            for volume_id, instance_id, state in attachments
            if not {(kinds[state], volume_id, instance_id), (kinds[state], volume_id, None)}
            & running
        ]

    async def unfinished_jobs(self) -> list[tuple[int, str, str, str]]:
        rows = await self._rows(
            "SELECT id, kind, resource_id, payload FROM jobs WHERE state = 'running' ORDER BY id"
        )
        return [(int(r[0]), r[1], r[2], r[3]) for r in rows]


def _add_manifest_rows(
    conn: sqlite3.Connection, snapshot_id: str, rows: Sequence[tuple[int, bytes]]
) -> set[bytes]:
    """Add or replace the rows; the digests of the rows replaced by another digest."""
    new = dict(rows)
    replaced: set[bytes] = set()
    for start in range(0, len(rows), 500):
        chunk = [index for index, _ in rows[start : start + 500]]
        held = conn.execute(
            "SELECT block_index, digest FROM snapshot_blocks WHERE snapshot_id = ? "
            f"AND block_index IN ({placeholders(len(chunk))})",
            (snapshot_id, *chunk),
        ).fetchall()
        replaced.update(bytes(digest) for index, digest in held if bytes(digest) != new[index])
    conn.executemany(
        "INSERT OR REPLACE INTO snapshot_blocks (snapshot_id, block_index, digest) "
        "VALUES (?, ?, ?)",
        [(snapshot_id, index, digest) for index, digest in rows],
    )
    return replaced


def _remove_manifest_rows(
    conn: sqlite3.Connection, snapshot_id: str, indexes: Sequence[int]
) -> set[bytes]:
    """Drop the rows of ``indexes``; the digests they held."""
    digests: set[bytes] = set()
    for index in indexes:
        rows = conn.execute(
            "SELECT digest FROM snapshot_blocks WHERE snapshot_id = ? AND block_index = ?",
            (snapshot_id, index),
        ).fetchall()
        digests.update(bytes(row[0]) for row in rows)
    conn.executemany(
        "DELETE FROM snapshot_blocks WHERE snapshot_id = ? AND block_index = ?",
        [(snapshot_id, index) for index in indexes],
    )
    return digests


_SNAPSHOTTABLE_STATES = ", ".join(f"'{state.value}'" for state in sorted(SNAPSHOTTABLE))
_HOLD_SNAPSHOTTABLE_SQL = (
    f"UPDATE volumes SET state = state WHERE id = ? AND state IN ({_SNAPSHOTTABLE_STATES})"
)


def _hold_snapshottable(conn: sqlite3.Connection, volume_ids: Sequence[str]) -> None:
    """Inside a unit of work: write each volume's row unchanged if the volume can be
    snapshotted, else raise VolumeNotSnapshottable. Its row lock (PostgreSQL) is then held until
    the transaction ends: a deletion through another server instance waits for the snapshot's
    insert, or was seen. The rows are taken in one order, so that two such works never wait
    for each other."""
    for volume_id in sorted(set(volume_ids)):
        if conn.execute(_HOLD_SNAPSHOTTABLE_SQL, (volume_id,)).rowcount != 1:
            raise VolumeNotSnapshottable(volume_id)


def _insert_job(conn: sqlite3.Connection, kind: str, payload: str, resource_id: str) -> int:
    now = time.time()
    job_id = conn.execute(
        "INSERT INTO jobs (kind, resource_id, state, payload, created_at, updated_at) "
        "VALUES (?, ?, 'running', ?, ?, ?)",
        (kind, resource_id, payload, now, now),
    ).lastrowid
    assert job_id is not None
    return job_id


def _snapshot_by_id(conn: sqlite3.Connection, snapshot_id: str) -> Snapshot | None:
    rows = fetch(
        conn,
        f"SELECT seq, {SNAPSHOT_COLUMNS} FROM snapshots WHERE id = ? AND deleted = 0",
        (snapshot_id,),
    )
    if not rows:
        return None
    snapshot = snapshot_from_row(rows[0])
    tags_into(conn, [snapshot])
    return snapshot


def _one_volume(conn: sqlite3.Connection, where: str, params: Sequence[Any]) -> Volume | None:
    rows = fetch(conn, f"SELECT seq, {VOLUME_COLUMNS} FROM volumes WHERE {where}", params)
    if not rows:
        return None
    volume = volume_from_row(rows[0])
    complete_volumes(conn, [volume])
    return volume


def _volume_by_id(conn: sqlite3.Connection, volume_id: str) -> Volume | None:
    return _one_volume(conn, "id = ?", (volume_id,))


def _volume_by_token(conn: sqlite3.Connection, owner_id: str, token: str) -> Volume | None:
    return _one_volume(conn, "owner_id = ? AND client_token = ?", (owner_id, token))


def _retired_token(conn: sqlite3.Connection, owner_id: str, token: str) -> str | None:
    rows = fetch(
        conn,
        "SELECT volume_id FROM retired_client_tokens WHERE owner_id = ? AND client_token = ?",
        (owner_id, token),
    )
    return str(rows[0][0]) if rows else None


def _insert_volume(
    conn: sqlite3.Connection, volume: Volume, job: tuple[str, str] | None
) -> tuple[Volume, int | None]:
    if volume.client_token is not None:
        purged = _retired_token(conn, volume.owner_id, volume.client_token)
        if purged is not None:
            raise ClientTokenRetired(f"ClientToken of volume {purged}, purged")
    restores = volume.snapshot_id is not None and volume.state is VolumeState.CREATING
    # The snapshot's row is written, unchanged, to wait for a deletion of it under way and to
    # hold back one to come until this insert commits (see hold_snapshot).
    if restores and not conn.execute(HOLD_SNAPSHOT_SQL, (volume.snapshot_id,)).rowcount:
        raise RestoreSourceGone(f"snapshot {volume.snapshot_id} is deleted")
    if volume.source_volume_id is not None and volume.state is VolumeState.CREATING:
        _hold_snapshottable(conn, [volume.source_volume_id])  # a copy: as a snapshot's insert
    create_time = to_wire(volume.create_time)
    values = (
        volume.id,
        volume.owner_id,
        volume.region,
        volume.zone,
        volume.zone_id,
        volume.size_gib,
        volume.volume_type.value,
        volume.iops,
        volume.throughput,
        int(volume.encrypted),
        volume.kms_key_id,
        volume.snapshot_id,
        int(volume.multi_attach),
        volume.state.value,
        volume.state_message,
        create_time,
        time.time(),
        volume.client_token,
        volume.request_digest,
        volume.storage_host,
        volume.lineage,
        volume.source_volume_id,
    )
    try:
        seq = conn.execute(
            f"INSERT INTO volumes ({VOLUME_COLUMNS}) VALUES ({placeholders(len(values))})",
            values,
        ).lastrowid
        assert seq is not None
    except sqlite3.IntegrityError:
        if volume.client_token is None:
            raise
        existing = _volume_by_token(conn, volume.owner_id, volume.client_token)
        if existing is None:
            raise
        return existing, None
    for sql, params in SqlStore._tag_statements(
        [(volume.id, "volume")], volume.owner_id, volume.tags
    ):
        conn.execute(sql, params)
    job_id = _insert_job(conn, *job, volume.id) if job is not None else None
    stored = replace(
        volume,
        seq=seq,
        create_time=from_wire(create_time),
        tags=dict(volume.tags),
        attachments=[],
    )
    return stored, job_id


class SqliteStore(LeaseTables, SqlStore):
    """The store on one SQLite file, which one server instance holds."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)

    async def open(self) -> None:
        """Open (creating and migrating) the database, readable by its owner only."""
        private_database(self._path)
        await super().open()
