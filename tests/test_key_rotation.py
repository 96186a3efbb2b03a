"""The key pair the environment or [auth] gives replaces the one given there before, and a
crash in the middle of that replacement must not leave the old one valid for good."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ebsemu import app, config
from ebsemu.credentials import recorded_configured_key
from ebsemu.service.accounts import AccountService, KeyPair
from ebsemu.store.sqlite import SqliteStore

ACCOUNT = "000000000000"
OLD = KeyPair("AKIDROTATIONOLD", "secret-old")
NEW = KeyPair("AKIDROTATIONNEW", "secret-new")


class Crash(Exception):
    """The server dying in the middle of a start."""


class CrashingAccounts(AccountService):
    """Accounts whose server dies as it removes a key."""

    async def remove_key(self, access_key_id: str) -> None:
        raise Crash(access_key_id)


async def start(settings: config.Config, pair: KeyPair, *, crash_on_remove: bool = False) -> None:
    """What a server start does with the configured key pair."""
    store = SqliteStore(settings.database)
    await store.open()
    try:
        accounts = (CrashingAccounts if crash_on_remove else AccountService)(store)
        await accounts.ensure_default(ACCOUNT, (pair, "environment"))
        await app._retire_replaced_key(settings, accounts, pair.access_key_id)
    finally:
        await store.close()


async def known(settings: config.Config, key_id: str) -> bool:
    store = SqliteStore(settings.database)
    await store.open()
    try:
        return await AccountService(store).key(key_id) is not None
    finally:
        await store.close()


def test_a_crash_before_the_old_key_is_removed_leaves_it_to_remove_at_the_next_start(
    tmp_path: Path,
) -> None:
    settings = config.load(None, data_dir=tmp_path / "data")
    settings.data_dir.mkdir()
    asyncio.run(start(settings, OLD))
    assert recorded_configured_key(settings) == OLD.access_key_id

    with pytest.raises(Crash):
        asyncio.run(start(settings, NEW, crash_on_remove=True))
    # Still the old id: had the new one been recorded first, the next start would take the
    # rotation for done and the old key would stay valid.
    assert recorded_configured_key(settings) == OLD.access_key_id
    assert asyncio.run(known(settings, OLD.access_key_id))

    asyncio.run(start(settings, NEW))
    assert recorded_configured_key(settings) == NEW.access_key_id
    assert not asyncio.run(known(settings, OLD.access_key_id))
    assert asyncio.run(known(settings, NEW.access_key_id))
