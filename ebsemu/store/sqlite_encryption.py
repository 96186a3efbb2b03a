"""EBS encryption settings per account and region, and wrapped data keys, in SQLite."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

from ebsemu.store.base import EncryptionSettings
from ebsemu.store.sql_base import SqlBase, fetch

_SELECT_SETTINGS = (
    "SELECT by_default, kms_key_id FROM ebs_encryption_settings WHERE account_id = ? AND region = ?"
)


class EncryptionTables(SqlBase):
    """Where one instance holds the database (not ``shared``), each account's settings are
    read once, through the writer so that the read is ordered with the writes, and then kept:
    a write drops them as its caller resumes (callers of one batch resume in its order)."""

    _encryption_settings: dict[tuple[str, str], EncryptionSettings]  # set by the store

    async def encryption_settings(self, account_id: str, region: str) -> EncryptionSettings:
        key = (account_id, region)
        if self.shared:
            return _settings(await self._rows(_SELECT_SETTINGS, key))
        settings = self._encryption_settings.get(key)
        if settings is None:
            rows = await self._commit(partial(fetch, sql=_SELECT_SETTINGS, params=key))
            settings = self._encryption_settings.setdefault(key, _settings(rows))
        return settings

    async def set_encryption_by_default(self, account_id: str, region: str, on: bool) -> None:
        await self._write(
            "INSERT INTO ebs_encryption_settings (account_id, region, by_default) "
            "VALUES (?, ?, ?) ON CONFLICT (account_id, region) DO UPDATE SET "
            "by_default = excluded.by_default",
            (account_id, region, int(on)),
        )
        self._encryption_settings.pop((account_id, region), None)

    async def set_default_kms_key(self, account_id: str, region: str, key: str | None) -> None:
        await self._write(
            "INSERT INTO ebs_encryption_settings (account_id, region, kms_key_id) "
            "VALUES (?, ?, ?) ON CONFLICT (account_id, region) DO UPDATE SET "
            "kms_key_id = excluded.kms_key_id",
            (account_id, region, key),
        )
        self._encryption_settings.pop((account_id, region), None)

    async def put_data_key(self, resource_id: str, wrapped_key: str) -> None:
        await self._write(
            "INSERT INTO data_keys (resource_id, wrapped_key) VALUES (?, ?) "
            "ON CONFLICT (resource_id) DO UPDATE SET wrapped_key = excluded.wrapped_key",
            (resource_id, wrapped_key),
        )

    async def data_key(self, resource_id: str) -> str | None:
        rows = await self._rows(
            "SELECT wrapped_key FROM data_keys WHERE resource_id = ?", (resource_id,)
        )
        return str(rows[0][0]) if rows else None

    async def drop_data_key(self, resource_id: str) -> None:
        await self._write("DELETE FROM data_keys WHERE resource_id = ?", (resource_id,))


def _settings(rows: Sequence[Sequence[Any]]) -> EncryptionSettings:
    return EncryptionSettings(bool(rows[0][0]), rows[0][1]) if rows else EncryptionSettings()
