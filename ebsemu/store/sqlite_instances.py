"""Instances and attachments in SQLite. An attachment and its volume's state change together,
in one transaction, so a volume is `in-use` exactly while it has an attachment."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from functools import partial

from ebsemu.model import Attachment, AttachmentState, Instance, Volume
from ebsemu.store.base import ListQuery, Page
from ebsemu.store.rows import (
    ATTACHMENT_COLUMNS,
    INSTANCE_COLUMNS,
    attachment_from_row,
    instance_from_row,
)
from ebsemu.store.sql_base import (
    Rollback,
    SqlBase,
    fetch,
    placeholders,
    prefixed,
    tags_into,
)
from ebsemu.store.sql_filters import INSTANCE_DEVICES, INSTANCE_FILTERS, filter_sql
from ebsemu.timefmt import to_wire

_RELEASE_VOLUME = (
    "UPDATE volumes SET state = 'available', updated_at = CAST(strftime('%s', 'now') AS REAL) "
    "WHERE id = ? AND state = 'in-use' "
    "AND NOT EXISTS (SELECT 1 FROM attachments WHERE volume_id = ?)"
)


class InstanceTables(SqlBase):
    # ---- instances -----------------------------------------------------------------------

    async def sync_instances(self, vmm: str, seen: Sequence[Instance]) -> list[str]:
        """Record the domains a VMM host reports now. Returns the ids of instances that were
        live and are now gone from the report or reported `terminated` (a VM killed outright
        leaves its QMP socket behind: still listed, but terminated)."""
        async with self._transaction() as db:
            async with db.execute(
                "SELECT id FROM instances WHERE vmm = ? AND state != 'terminated'", (vmm,)
            ) as cur:
                live_before = {row[0] for row in await cur.fetchall()}
            for instance in seen:
                await db.execute(
                    f"INSERT INTO instances ({INSTANCE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (vmm, domain) DO UPDATE SET state = excluded.state, "
                    "zone = excluded.zone, region = excluded.region, "
                    "owner_id = excluded.owner_id",
                    (
                        instance.id,
                        instance.owner_id,
                        instance.region,
                        instance.zone,
                        instance.vmm,
                        instance.domain,
                        instance.state,
                        to_wire(instance.launch_time),
                    ),
                )
            live_now = {instance.id for instance in seen if instance.state != "terminated"}
            gone = sorted(live_before - live_now)
            if gone:
                await db.execute(
                    f"UPDATE instances SET state = 'terminated' "
                    f"WHERE id IN ({placeholders(len(gone))})",
                    gone,
                )
        return gone

    async def get_instance(self, instance_id: str) -> Instance | None:
        rows = await self._rows(
            f"SELECT seq, {INSTANCE_COLUMNS} FROM instances WHERE id = ?", (instance_id,)
        )
        return (await self._with_tags([instance_from_row(rows[0])]))[0] if rows else None

    async def list_instances(self, query: ListQuery) -> Page[Instance]:
        params: list[object] = []
        where = self._scope("i", query, params)
        where += filter_sql(
            query.filters, INSTANCE_FILTERS, "i.id", params, related=INSTANCE_DEVICES
        )
        rows = await self._page_rows(
            f"SELECT i.seq, {prefixed('i', INSTANCE_COLUMNS)} FROM instances i",
            where,
            params,
            query,
            "i.seq",
        )
        page = self._paginate(rows, query, instance_from_row)
        page.items = await self._with_tags(page.items)
        return page

    # ---- attachments ---------------------------------------------------------------------

    async def attachments_of_instances(
        self, instance_ids: Sequence[str]
    ) -> dict[str, list[Attachment]]:
        return await self._attachments_by("instance_id", instance_ids)

    async def get_attachment(self, volume_id: str, instance_id: str) -> Attachment | None:
        rows = await self._rows(
            f"SELECT {ATTACHMENT_COLUMNS} FROM attachments WHERE volume_id = ? AND instance_id = ?",
            (volume_id, instance_id),
        )
        return attachment_from_row(rows[0]) if rows else None

    async def begin_attach(self, attachment: Attachment, *, most: int = 1) -> bool:
        """Volume `available` -> `in-use` and the attachment recorded, or neither (also when
        the instance's device is taken: on PostgreSQL, by another server). A Multi-Attach
        volume `in-use` with fewer than ``most`` attachments takes one more."""
        async with self._transaction() as db:
            cur = await db.execute(
                "UPDATE volumes SET state = 'in-use', "
                "updated_at = CAST(strftime('%s', 'now') AS REAL) "
                "WHERE id = ? AND (state = 'available' OR state = 'in-use' AND multi_attach = 1)",
                (attachment.volume_id,),
            )
            if cur.rowcount != 1:
                raise Rollback
            cur = await db.execute(
                f"INSERT INTO attachments ({ATTACHMENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                (
                    attachment.volume_id,
                    attachment.instance_id,
                    attachment.device,
                    attachment.state.value,
                    to_wire(attachment.attach_time),
                    int(attachment.delete_on_termination),
                    attachment.handle,
                ),
            )
            if cur.rowcount != 1:
                raise Rollback
            # Counted once the volume's row is this transaction's (PostgreSQL: a statement
            # after the UPDATE sees the attachments of every transaction that held it before).
            async with db.execute(
                "SELECT COUNT(*) FROM attachments WHERE volume_id = ?", (attachment.volume_id,)
            ) as counted:
                (count,) = await counted.fetchone() or (0,)
            if count > most:
                raise Rollback
            return True
        return False

    async def transition_attachment(
        self,
        volume_id: str,
        instance_id: str,
        expected: set[AttachmentState],
        new: AttachmentState,
        handle: str | None = None,
    ) -> bool:
        states = [s.value for s in expected]
        changed = await self._write(
            "UPDATE attachments SET state = ?, handle = COALESCE(?, handle) "
            f"WHERE volume_id = ? AND instance_id = ? AND state IN ({placeholders(len(states))})",
            (new.value, handle, volume_id, instance_id, *states),
        )
        return changed == 1

    async def finish_detach(self, volume_id: str, instance_id: str) -> None:
        """Drop the attachment; the volume is `available` again once it has none left."""
        await self._many(
            [
                (
                    "DELETE FROM attachments WHERE volume_id = ? AND instance_id = ?",
                    (volume_id, instance_id),
                ),
                (_RELEASE_VOLUME, (volume_id, volume_id)),
            ]
        )

    abort_attach = finish_detach

    async def set_delete_on_termination(self, instance_id: str, device: str, value: bool) -> bool:
        changed = await self._write(
            "UPDATE attachments SET delete_on_termination = ? WHERE instance_id = ? AND device = ?",
            (int(value), instance_id, device),
        )
        return changed == 1

    # ---- export records ------------------------------------------------------------------

    async def save_export(self, volume_id: str, record: str) -> None:
        await self._write(
            "INSERT INTO exports (volume_id, record) VALUES (?, ?) "
            "ON CONFLICT (volume_id) DO UPDATE SET record = excluded.record",
            (volume_id, record),
        )

    async def drop_export(self, volume_id: str) -> None:
        await self._write("DELETE FROM exports WHERE volume_id = ?", (volume_id,))

    async def exports(self) -> list[str]:
        return [row[0] for row in await self._rows("SELECT record FROM exports")]

    async def attached_volume_ids(self) -> set[str]:
        rows = await self._rows("SELECT DISTINCT volume_id FROM attachments")
        return {row[0] for row in rows}

    # ---- helpers -------------------------------------------------------------------------

    async def _attachments_by(self, column: str, ids: Sequence[str]) -> dict[str, list[Attachment]]:
        return await self._read(partial(attachments_by, column=column, ids=ids))

    async def _complete_volumes(self, volumes: list[Volume]) -> list[Volume]:
        """Volumes with their tags and attachments loaded."""
        if volumes:
            await self._read(partial(complete_volumes, volumes=volumes))
        return volumes


def attachments_by(
    conn: sqlite3.Connection, column: str, ids: Sequence[str]
) -> dict[str, list[Attachment]]:
    found: dict[str, list[Attachment]] = {}
    for start in range(0, len(ids), 500):
        chunk = list(ids[start : start + 500])
        rows = fetch(
            conn,
            f"SELECT {ATTACHMENT_COLUMNS} FROM attachments "
            f"WHERE {column} IN ({placeholders(len(chunk))}) ORDER BY attach_time",
            chunk,
        )
        for row in rows:
            attachment = attachment_from_row(row)
            key = attachment.instance_id if column == "instance_id" else attachment.volume_id
            found.setdefault(key, []).append(attachment)
    return found


def complete_volumes(conn: sqlite3.Connection, volumes: Sequence[Volume]) -> None:
    """Load the tags and attachments of ``volumes`` into them (the attachments table is
    looked at only when it holds any row)."""
    tags_into(conn, volumes)
    if fetch(conn, "SELECT 1 FROM attachments LIMIT 1"):
        attachments = attachments_by(conn, "volume_id", [v.id for v in volumes])
        for volume in volumes:
            volume.attachments = attachments.get(volume.id, [])
