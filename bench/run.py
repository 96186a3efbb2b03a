"""The benchmark command: `python -m bench.run [--quick] [--only …] [--skip-moto] …`.

Starts ebsemu (fresh data directory in a temporary directory) and moto_server on free loopback
ports for each section, runs the same workload against both, and prints Markdown tables of
calls/s, latency and server CPU per call with the ratio ebsemu/moto, the data-path results
against this machine's own limits, and the performance targets with PASS/FAIL.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import create, datapath, describe, machine, snapshots, targets
from bench.options import Options, from_args
from bench.report import Report, render, to_json

SECTIONS: dict[str, Callable[[Options, Report, Path], None]] = {
    "create": create.run,
    "describe": describe.run,
    "snapshots": snapshots.run,
    "data": datapath.run,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    opts = from_args(argv)
    base = opts.work_dir
    for directory in (base, opts.profile_dir):
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ebsemu-bench-", dir=base) as tmp:
        work_dir = Path(tmp)
        report = Report(machine.describe(work_dir, argv))
        failed = False
        for name in opts.sections:
            started = time.monotonic()
            print(f"[bench] {name} …", file=sys.stderr, flush=True)
            try:
                SECTIONS[name](opts, report, work_dir)
            except Exception as exc:  # one section failing still reports the others
                failed = True
                report.notes.append(f"section {name} failed: {type(exc).__name__}: {exc}")
                print(f"[bench] {name} failed: {exc}", file=sys.stderr, flush=True)
            print(
                f"[bench] {name} done in {time.monotonic() - started:.0f} s",
                file=sys.stderr,
                flush=True,
            )
        if not opts.moto:
            report.notes.append("moto_server was not run (--skip-moto): no ratios")
        report.targets = targets.evaluate(report)
    text = render(report)
    print(text)
    if opts.output is not None:
        opts.output.write_text(text + "\n")
    if opts.json_path is not None:
        opts.json_path.write_text(to_json(report) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
