"""Accounts and access keys in SQLite, and the create-volume permissions of snapshots.

Secrets are stored as given: signature verification needs the secret itself (AWS keeps it
recoverable too). The database file is private to its owner (see ebsemu.private_files).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from ebsemu.store.base import AccountRecord
from ebsemu.store.sql_base import Rollback, SqlBase, placeholders


class AccountTables(SqlBase):
    # ---- accounts and keys ---------------------------------------------------------------

    async def insert_account(self, account_id: str, name: str) -> bool:
        changed = await self._write(
            "INSERT INTO accounts (id, name, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            (account_id, name, time.time()),
        )
        return changed == 1

    async def get_account(self, account_id: str) -> AccountRecord | None:
        found = await self._accounts("WHERE a.id = ?", (account_id,))
        return found[0] if found else None

    async def list_accounts(self) -> list[AccountRecord]:
        return await self._accounts("", ())

    async def put_access_key(self, account_id: str, access_key_id: str, secret: str) -> bool:
        async with self._transaction() as db:
            async with db.execute(
                "SELECT account_id FROM access_keys WHERE access_key_id = ?", (access_key_id,)
            ) as cur:
                row = await cur.fetchone()
            if row is not None and row[0] != account_id:
                raise Rollback
            # The WHERE holds against a concurrent writer (another server on the database).
            cur = await db.execute(
                "INSERT INTO access_keys (access_key_id, account_id, secret, created_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (access_key_id) DO UPDATE SET secret = "
                "excluded.secret WHERE access_keys.account_id = excluded.account_id",
                (access_key_id, account_id, secret, time.time()),
            )
            if cur.rowcount != 1:
                raise Rollback
            return True
        return False

    async def delete_access_key(self, access_key_id: str) -> bool:
        changed = await self._write(
            "DELETE FROM access_keys WHERE access_key_id = ?", (access_key_id,)
        )
        return changed == 1

    async def access_key(self, access_key_id: str) -> tuple[str, str] | None:
        rows = await self._rows(
            "SELECT account_id, secret FROM access_keys WHERE access_key_id = ?",
            (access_key_id,),
        )
        return (str(rows[0][0]), str(rows[0][1])) if rows else None

    async def _accounts(self, where: str, params: Sequence[object]) -> list[AccountRecord]:
        rows = await self._rows(
            "SELECT a.id, a.name, a.created_at, k.access_key_id FROM accounts a "
            f"LEFT JOIN access_keys k ON k.account_id = a.id {where} "
            "ORDER BY a.created_at, a.id, k.created_at, k.access_key_id",
            params,
        )
        accounts: dict[str, AccountRecord] = {}
        for account_id, name, created_at, key_id in rows:
            record = accounts.get(account_id) or AccountRecord(account_id, name, created_at)
            keys = record.access_key_ids + ((key_id,) if key_id is not None else ())
            accounts[account_id] = AccountRecord(account_id, name, created_at, keys)
        return list(accounts.values())

    # ---- snapshot create-volume permissions ----------------------------------------------

    async def snapshot_grantees(self, snapshot_id: str) -> list[str]:
        rows = await self._rows(
            "SELECT grantee FROM snapshot_permissions WHERE snapshot_id = ? ORDER BY grantee",
            (snapshot_id,),
        )
        return [str(row[0]) for row in rows]

    async def change_snapshot_grantees(
        self, snapshot_id: str, add: Sequence[str], remove: Sequence[str]
    ) -> None:
        statements: list[tuple[str, Sequence[object]]] = [
            (
                "INSERT INTO snapshot_permissions (snapshot_id, grantee) VALUES (?, ?) "
                "ON CONFLICT DO NOTHING",
                (snapshot_id, grantee),
            )
            for grantee in add
        ]
        if remove:
            statements.append(
                (
                    "DELETE FROM snapshot_permissions WHERE snapshot_id = ? "
                    f"AND grantee IN ({placeholders(len(remove))})",
                    (snapshot_id, *remove),
                )
            )
        await self._many(statements)

    async def clear_snapshot_grantees(self, snapshot_id: str) -> None:
        await self._write("DELETE FROM snapshot_permissions WHERE snapshot_id = ?", (snapshot_id,))
