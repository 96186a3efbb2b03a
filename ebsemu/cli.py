"""The `ebsemu` command."""

from __future__ import annotations

import argparse
import configparser
import logging
import os
import socket
import sys
from pathlib import Path

from aiohttp import web

from backends.errors import SetupError
from ebsemu import __version__, cli_accounts, cli_migrate, cli_reconcile, config, listening, logs
from ebsemu.api.access_log import AccessLogger
from ebsemu.service.accounts import AccountError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ebsemu", description=__doc__)
    parser.add_argument("--version", action="version", version=f"ebsemu {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="INI file (see config.example.ini)")
    common.add_argument("--data-dir", type=Path, help="where volumes, blocks and metadata live")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", parents=[common], help="run the EC2/EBS API server")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8788)")
    serve.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    serve.add_argument(
        "--log-format", choices=logs.FORMATS, help="text (default) or json: one object a line"
    )
    serve.add_argument(
        "--no-auth",
        action="store_true",
        help="accept every request, signed or not, as the default account's (testing only)",
    )
    accounts = commands.add_parser(
        "accounts", help="manage accounts and their access keys (create, list, add-key, …)"
    )
    common_accounts = argparse.ArgumentParser(add_help=False, parents=[common])
    common_accounts.add_argument("--json", action="store_true", help="print JSON")
    cli_accounts.add_commands(accounts, common_accounts)
    commands.add_parser(
        "check-host",
        parents=[common],
        help="check that every configured storage, export and VMM host is ready",
    )
    reconcile = commands.add_parser(
        "reconcile",
        parents=[common],
        help="compare the store with every backend and settle what differs (server stopped)",
    )
    cli_reconcile.add_options(reconcile)
    migrate = commands.add_parser(
        "migrate",
        parents=[common],
        help="copy the SQLite database into an empty PostgreSQL one (server stopped)",
    )
    cli_migrate.add_arguments(migrate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides: dict[str, object] = {"data_dir": args.data_dir}
    if args.command == "serve":
        overrides.update(
            host=args.host, port=args.port, log_level=args.log_level, log_format=args.log_format
        )
    try:
        cfg = config.load(args.config, **overrides)
    except (OSError, ValueError, configparser.Error) as exc:
        print(f"ebsemu: cannot read the configuration: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        logs.configure(cfg.log_level.upper(), cfg.log_format)
    else:
        logs.configure("WARNING")
    # The log formats show no source line, thread or process: skip collecting them for each
    # record (the logging documentation's "Optimization" settings).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    if args.command == "accounts":
        return cli_accounts.run(args, cfg)
    if args.command == "reconcile":
        return cli_reconcile.run(args, cfg)
    if args.command == "migrate":
        return cli_migrate.run(args, cfg)
    if args.command == "check-host":
        from ebsemu import check_host

        return check_host.run(cfg)
    return _serve(cfg, no_auth=args.no_auth)


def _serve(cfg: config.Config, *, no_auth: bool) -> int:
    from ebsemu.app import log_serving, make_app, tls_context

    try:
        ssl_context = tls_context(cfg)
    except (OSError, ValueError) as exc:
        print(f"ebsemu: cannot load the TLS certificate and key: {exc}", file=sys.stderr)
        return 2
    sockets: list[socket.socket] = []
    try:
        # The address first: one in use (or not this host's) stops the start before the
        # database is migrated or a key generated.
        sockets = listening.bind(cfg.host, cfg.port)
        web.run_app(
            make_app(cfg, auth=not no_auth, environ=os.environ),
            sock=sockets,
            ssl_context=ssl_context,
            # Called once aiohttp listens on every socket: the moment to say it serves.
            print=lambda _banner: log_serving(cfg),
            handle_signals=True,
            shutdown_timeout=15,
            access_log_class=AccessLogger,
        )
    except (SetupError, AccountError, OSError) as exc:
        # OSError: the address cannot be had, or the data directory cannot be made (a file
        # is in its place, no permission).
        logging.getLogger("ebsemu").error("cannot start: %s", exc)
        return 1
    finally:
        for sock in sockets:
            sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
