"""A long fuzzing run for soak testing: `python -m tests.fuzz_soak --requests 200000`.

Starts its own server (or uses --url, whose default account must sign as AKIDEXAMPLE /
secret), sends the requests of tests/fuzz_requests.py and reports the answers it got. Exits 1
if any answer was not a well-formed EC2 answer, was a 5xx, or the server died.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from tests.fuzz_requests import run
from tests.server import ServerProcess
from tests.test_fuzz import FUZZ_CONFIG


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz_soak", description=__doc__)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--url", help="an already running server (default: start one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ebsemu-soak-") as work:
        server = None
        url = args.url
        if url is None:
            server = ServerProcess(Path(work) / "data", FUZZ_CONFIG)
            server.start()
            url = server.url
        try:
            outcome = asyncio.run(
                run(
                    url,
                    args.requests,
                    seed=args.seed,
                    concurrency=args.concurrency,
                    progress=lambda n: print(f"{n} sent", file=sys.stderr),
                )
            )
            alive = server is None or (server.proc is not None and server.proc.poll() is None)
        finally:
            if server is not None:
                server.stop()
                log = server.log_path.read_text(errors="replace")
                if "Traceback" in log:
                    print(log[log.index("Traceback") :][:3000], file=sys.stderr)
                    alive = False
    rate = outcome.sent / outcome.seconds if outcome.seconds else 0.0
    print(f"{outcome.sent} requests in {outcome.seconds:.1f} s ({rate:.0f}/s)")
    for code, count in outcome.codes.most_common():
        print(f"  {count:8d}  {code}")
    for failure in outcome.failures[:20]:
        print(f"FAILED {failure}")
    return 0 if alive and not outcome.failures else 1


if __name__ == "__main__":
    sys.exit(main())
