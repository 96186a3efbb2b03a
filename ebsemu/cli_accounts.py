"""`ebsemu accounts create|list|add-key|remove-key`: accounts and keys in the database.

They work on the database in the data directory, whether or not the server is running: the
server reads keys from it, so a new key works at once and a removed one fails within a second
(the server remembers a key it has seen for that long).
A secret is printed once, when it is created; `list` shows key ids only.

On SQLite they refuse a data directory with no database yet, unless given ``--init``: a
mistyped --data-dir would otherwise get a new database of its own, and its keys would work on
no server. (With PostgreSQL the data directory holds no keys; a DSN naming no database fails
to connect.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ebsemu.config import Config
from ebsemu.credentials import endpoint_url, profile_snippet
from ebsemu.service.accounts import AccountError, AccountService, KeyPair
from ebsemu.store.backends import build_store, describe_store, store_errors
from ebsemu.store.base import AccountRecord

T = TypeVar("T")


def add_commands(accounts: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False, parents=[common])
    common.add_argument(
        "--endpoint-url", help="the server's URL in printed profiles (default: from the config)"
    )
    common.add_argument(
        "--init",
        action="store_true",
        help="make the data directory's database if it has none yet (before the first serve)",
    )
    commands = accounts.add_subparsers(dest="accounts_command", required=True)
    create = commands.add_parser(
        "create", parents=[common], help="create an account with a first access key"
    )
    create.add_argument("--account-id", help="its 12-digit id (default: a random one)")
    create.add_argument("--name", default="", help="a label shown by `list`")
    commands.add_parser("list", parents=[common], help="accounts and their access key ids")
    add_key = commands.add_parser(
        "add-key", parents=[common], help="give an account a new access key"
    )
    add_key.add_argument("account_id")
    remove_key = commands.add_parser(
        "remove-key",
        parents=[common],
        help="remove an access key (it stops working within a second)",
    )
    remove_key.add_argument("access_key_id")


def run(args: argparse.Namespace, config: Config) -> int:
    missing = None if args.init else _missing_database(config)
    if missing is not None:
        print(f"ebsemu accounts: {missing}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_run(args, config))
    except AccountError as exc:
        print(f"ebsemu accounts: {exc}", file=sys.stderr)
        return 1
    except store_errors() as exc:
        print(
            f"ebsemu accounts: cannot use the database {describe_store(config)}: {exc}",
            file=sys.stderr,
        )
        return 2


def _missing_database(config: Config) -> str | None:
    """Why the configured SQLite database cannot be the one a server uses, or None."""
    if config.store_backend != "sqlite" or config.database.exists():
        return None
    where = "no data directory" if not config.data_dir.is_dir() else "no database"
    return (
        f"{where} at {config.data_dir} (is --data-dir or --config right?); `ebsemu serve` "
        "makes it at its first start, or add --init to make it now"
    )


async def _with_accounts(config: Config, work: Callable[[AccountService], Awaitable[T]]) -> T:
    store = build_store(config)
    await store.open()
    try:
        await store.insert_account(config.account_id, "default")
        return await work(AccountService(store))
    finally:
        await store.close()


async def _run(args: argparse.Namespace, config: Config) -> int:
    command = args.accounts_command
    if command == "create":
        record, pair = await _with_accounts(
            config, lambda accounts: accounts.create(args.account_id, args.name)
        )
        _show_key(args, config, record.id, pair, name=record.name)
    elif command == "add-key":
        pair = await _with_accounts(config, lambda accounts: accounts.add_key(args.account_id))
        _show_key(args, config, args.account_id, pair)
    elif command == "remove-key":
        await _with_accounts(config, lambda accounts: accounts.remove_key(args.access_key_id))
        if not args.json:
            print(f"access key {args.access_key_id} removed")
    else:
        _show_accounts(await _with_accounts(config, lambda accounts: accounts.list()), args.json)
    return 0


def _show_key(
    args: argparse.Namespace,
    config: Config,
    account_id: str,
    pair: KeyPair,
    name: str | None = None,
) -> None:
    if args.json:
        shown = {"AccountId": account_id, "AccessKeyId": pair.access_key_id}
        if name is not None:
            shown["Name"] = name
        shown["SecretAccessKey"] = pair.secret_access_key
        print(json.dumps(shown, indent=2))
        return
    print(f"account           {account_id}" + (f" ({name})" if name else ""))
    print(f"access key id     {pair.access_key_id}")
    print(f"secret access key {pair.secret_access_key}")
    print("The secret is shown only now. A ready AWS CLI / boto3 profile:\n")
    print(
        profile_snippet(
            pair,
            account_id=account_id,
            endpoint=args.endpoint_url or endpoint_url(config),
            region=config.default_region,
            profile=f"ebsemu-{account_id}",
        )
    )


def _show_accounts(accounts: list[AccountRecord], as_json: bool) -> None:
    if as_json:
        shown = [
            {"AccountId": a.id, "Name": a.name, "AccessKeyIds": list(a.access_key_ids)}
            for a in accounts
        ]
        print(json.dumps(shown, indent=2))
        return
    for account in accounts:
        keys = ", ".join(account.access_key_ids) or "(no access keys)"
        print(f"{account.id}  {account.name or '-':<16}  {keys}")
