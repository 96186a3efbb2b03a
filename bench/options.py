"""The run's parameters, from the command line."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

SECTIONS = ("create", "describe", "snapshots", "data")


@dataclass(frozen=True)
class Options:
    creates: int = 2000
    concurrency: tuple[int, ...] = (1, 8, 32)
    levels: tuple[int, ...] = (1000, 10_000, 50_000, 100_000)
    moto_max_volumes: int = 1000
    snapshots: int = 200
    data_gib: int = 2
    row_seconds: float = 15.0
    create_seconds: float = 120.0
    fill_seconds: float = 900.0
    call_timeout: float = 300.0
    sections: tuple[str, ...] = SECTIONS
    moto: bool = True
    work_dir: Path | None = None
    log_level: str = "INFO"
    output: Path | None = None
    json_path: Path | None = None
    profile_dir: Path | None = None
    quick: bool = False

    @property
    def max_volumes(self) -> int:
        """ebsemu's volume limit for the run: room for every volume any section creates."""
        return max([*self.levels, self.creates, 1]) * 2 + 1000


QUICK = {
    "creates": 20,
    "concurrency": (8,),
    "levels": (40,),
    "moto_max_volumes": 40,
    "snapshots": 4,
    "data_gib": 0,
    "row_seconds": 0.5,
    "create_seconds": 30.0,
    "fill_seconds": 60.0,
    "call_timeout": 60.0,
}


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part.replace("_", "").replace("k", "000")) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of integers: {text}"
        ) from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers: {text}")
    return values


def _sections(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown section(s) {', '.join(unknown) or '(none)'}; known: {', '.join(SECTIONS)}"
        )
    return tuple(s for s in SECTIONS if s in names)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Benchmark ebsemu side by side with moto_server (see bench/README.md).",
    )
    d = Options()
    p.add_argument("--quick", action="store_true", help="tiny smoke run: seconds, not minutes")
    p.add_argument("--only", type=_sections, help=f"sections to run, of: {', '.join(SECTIONS)}")
    p.add_argument("--skip-moto", action="store_true", help="run against ebsemu alone")
    p.add_argument(
        "--creates", type=int, help=f"CreateVolume calls per level (default {d.creates})"
    )
    p.add_argument("--concurrency", type=_ints, help="CreateVolume concurrency levels (1,8,32)")
    p.add_argument("--levels", type=_ints, help="DescribeVolumes volume counts (1k,10k,50k,100k)")
    p.add_argument(
        "--moto-max-volumes",
        type=int,
        help=f"levels above this run against ebsemu alone (default {d.moto_max_volumes}: "
        "moto's describe and create slow down with every volume it holds)",
    )
    p.add_argument("--snapshots", type=int, help=f"CreateSnapshot calls (default {d.snapshots})")
    p.add_argument(
        "--data-gib", type=int, help=f"data-path volume size, 0 to skip it (default {d.data_gib})"
    )
    p.add_argument("--row-seconds", type=float, help="time limit of one describe row (15)")
    p.add_argument("--create-seconds", type=float, help="time limit of one create row (120)")
    p.add_argument("--fill-seconds", type=float, help="time limit of filling to one level (900)")
    p.add_argument("--call-timeout", type=float, help="timeout of one call in seconds (300)")
    p.add_argument("--work-dir", type=Path, help="where the temporary data directories go")
    p.add_argument("--log-level", help="ebsemu's log level (default INFO, as it ships)")
    p.add_argument("--output", type=Path, help="also write the Markdown report here")
    p.add_argument("--json", dest="json_path", type=Path, help="write the results as JSON here")
    p.add_argument(
        "--profile",
        dest="profile_dir",
        type=Path,
        help="record each ebsemu server with py-spy into this directory (collapsed stacks)",
    )
    return p


def from_args(argv: list[str]) -> Options:
    args = parser().parse_args(argv)
    values: dict[str, object] = dict(QUICK) if args.quick else {}
    values["quick"] = args.quick
    for name in (
        "creates",
        "concurrency",
        "levels",
        "moto_max_volumes",
        "snapshots",
        "data_gib",
        "row_seconds",
        "create_seconds",
        "fill_seconds",
        "call_timeout",
        "work_dir",
        "log_level",
        "output",
        "json_path",
        "profile_dir",
    ):
        value = getattr(args, name)
        if value is not None:
            values[name] = value
    values["levels"] = tuple(sorted(set(values.get("levels", Options.levels))))  # type: ignore[call-overload]  # a tuple of ints
    if args.only:
        values["sections"] = args.only
    values["moto"] = not args.skip_moto
    return Options(**values)  # type: ignore[arg-type]  # keys are Options' fields
