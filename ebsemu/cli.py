"""The `ebsemu` command."""

from __future__ import annotations

import argparse
import configparser
import logging
import sys
from pathlib import Path

from aiohttp import web

from backends.errors import SetupError
from ebsemu import __version__, config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ebsemu", description=__doc__)
    parser.add_argument("--version", action="version", version=f"ebsemu {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the EC2/EBS API server")
    serve.add_argument("--config", type=Path, help="INI file (see config.example.ini)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8788)")
    serve.add_argument("--data-dir", type=Path, help="where volumes, blocks and metadata live")
    serve.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        try:
            cfg = config.load(
                args.config,
                host=args.host,
                port=args.port,
                data_dir=args.data_dir,
                log_level=args.log_level,
            )
        except (OSError, ValueError, configparser.Error) as exc:
            print(f"ebsemu: cannot read the configuration: {exc}", file=sys.stderr)
            return 2
        logging.basicConfig(
            level=cfg.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        from ebsemu.app import make_app

        try:
            web.run_app(
                make_app(cfg),
                host=cfg.host,
                port=cfg.port,
                print=None,
                handle_signals=True,
                shutdown_timeout=15,
            )
        except SetupError as exc:
            logging.getLogger("ebsemu").error("cannot start: %s", exc)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
