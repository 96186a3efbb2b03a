"""Accounts (12-digit ids) and their access keys; the default account at start-up.

Secrets are generated here or taken from the environment or the configuration, stored in the
database, and shown only to whoever created them: never logged, never part of an error.
"""

from __future__ import annotations

import base64
import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ebsemu.config import Config
from ebsemu.store.base import AccountRecord, AccountStore

log = logging.getLogger(__name__)

ACCOUNT_ID = re.compile(r"[0-9]{12}")
# Key ids appear in the SigV4 credential scope (so no `/`) and in SigV2 parameters.
ACCESS_KEY_ID = re.compile(r"[A-Za-z0-9_.-]{3,128}")
SECRET_ACCESS_KEY = re.compile(r"[\x21-\x7e]{1,128}")  # printable ASCII, no whitespace
_KEY_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
KEY_CACHE_SECONDS = 1.0
KEY_CACHE_SIZE = 10_000
ENV_ACCESS_KEY_ID = "EBSEMU_ACCESS_KEY_ID"
ENV_SECRET_ACCESS_KEY = "EBSEMU_SECRET_ACCESS_KEY"


class AccountError(ValueError):
    """An account operation that cannot be done; the message is safe to show."""


@dataclass(frozen=True)
class KeyPair:
    access_key_id: str
    secret_access_key: str = field(repr=False)

    def check(self) -> KeyPair:
        if not ACCESS_KEY_ID.fullmatch(self.access_key_id):
            raise AccountError("an access key id is 3 to 128 letters, digits, '_', '.' or '-'")
        if not SECRET_ACCESS_KEY.fullmatch(self.secret_access_key):
            raise AccountError(
                "a secret access key is 1 to 128 printable ASCII characters without spaces"
            )
        return self


def new_key_pair() -> KeyPair:
    """An AWS-shaped key pair: `AKIA` + 16 base32 characters, a 40-character secret."""
    key_id = "AKIA" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(16))
    secret = base64.b64encode(secrets.token_bytes(30)).decode("ascii")
    return KeyPair(key_id, secret)


def new_account_id() -> str:
    return f"{secrets.randbelow(10**12):012d}"


def check_account_id(account_id: str) -> str:
    if not ACCOUNT_ID.fullmatch(account_id):
        raise AccountError(f"an account id is 12 digits, not {account_id[:32]!r}")
    return account_id


def configured_key(config: Config, environ: Mapping[str, str]) -> tuple[KeyPair, str] | None:
    """The default account's key pair from the environment, else the configuration, and
    where it came from; None when neither gives one."""
    key_id, secret = environ.get(ENV_ACCESS_KEY_ID), environ.get(ENV_SECRET_ACCESS_KEY)
    if key_id or secret:
        if not (key_id and secret):
            raise AccountError(f"set both {ENV_ACCESS_KEY_ID} and {ENV_SECRET_ACCESS_KEY}")
        return KeyPair(key_id, secret).check(), "the environment"
    if config.access_key_id or config.secret_access_key:
        if not (config.access_key_id and config.secret_access_key):
            raise AccountError("[auth] needs both access_key_id and secret_access_key")
        return KeyPair(config.access_key_id, config.secret_access_key).check(), "the configuration"
    return None


class AccountService:
    def __init__(
        self,
        store: AccountStore,
        *,
        cache_seconds: float = KEY_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._cache: dict[str, tuple[float, tuple[str, str]]] = {}

    async def create(
        self, account_id: str | None = None, name: str = ""
    ) -> tuple[AccountRecord, KeyPair]:
        """A new account with a first key pair."""
        if account_id is not None:
            check_account_id(account_id)
            if not await self._store.insert_account(account_id, name):
                raise AccountError(f"account {account_id} exists already")
        else:
            account_id = new_account_id()
            while not await self._store.insert_account(account_id, name):
                account_id = new_account_id()
        pair = await self.add_key(account_id)
        record = await self._store.get_account(account_id)
        assert record is not None
        log.info("account %s created with access key %s", account_id, pair.access_key_id)
        return record, pair

    async def list(self) -> list[AccountRecord]:
        return await self._store.list_accounts()

    async def add_key(self, account_id: str, pair: KeyPair | None = None) -> KeyPair:
        """Give the account a key pair (a new one unless ``pair`` is given)."""
        check_account_id(account_id)
        if await self._store.get_account(account_id) is None:
            raise AccountError(f"there is no account {account_id}")
        pair = (pair or new_key_pair()).check()
        if not await self._store.put_access_key(
            account_id, pair.access_key_id, pair.secret_access_key
        ):
            raise AccountError(f"access key {pair.access_key_id} belongs to another account")
        return pair

    async def remove_key(self, access_key_id: str) -> None:
        if not await self._store.delete_access_key(access_key_id):
            raise AccountError(f"there is no access key {access_key_id[:128]}")
        self._cache.pop(access_key_id, None)  # at once in this process (others: cache_seconds)
        log.info("access key %s removed", access_key_id[:128])

    async def key(self, access_key_id: str) -> tuple[str, str] | None:
        """(account id, secret) of an access key, for signature verification.

        A found key is remembered for ``cache_seconds`` (a key removed with `ebsemu accounts
        remove-key` stops working within that time); an unknown one is looked up each time.
        """
        now = self._clock()
        cached = self._cache.get(access_key_id)
        if cached is not None and now - cached[0] < self._cache_seconds:
            return cached[1]
        found = await self._store.access_key(access_key_id)
        if found is None:
            self._cache.pop(access_key_id, None)
        else:
            if len(self._cache) >= KEY_CACHE_SIZE:
                self._cache.clear()
            self._cache[access_key_id] = (now, found)
        return found

    async def ensure_default(
        self, account_id: str, configured: tuple[KeyPair, str] | None
    ) -> KeyPair | None:
        """The default account exists and has a key: the configured one, else the one it
        has, else a new one — which is returned, so that it can be shown once."""
        check_account_id(account_id)
        await self._store.insert_account(account_id, "default")
        if configured is not None:
            pair, source = configured
            await self.add_key(account_id, pair)
            log.info(
                "default account %s: access key %s from %s",
                account_id,
                pair.access_key_id,
                source,
            )
            return None
        record = await self._store.get_account(account_id)
        if record is not None and record.access_key_ids:
            return None
        pair = await self.add_key(account_id)
        log.warning(
            "default account %s: generated access key %s (no key was configured)",
            account_id,
            pair.access_key_id,
        )
        return pair
