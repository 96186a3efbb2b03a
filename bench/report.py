"""What a run found, and how it is printed: Markdown tables, also readable in a terminal."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from bench.machine import Machine
from bench.measure import Stats

SERVERS = ("ebsemu", "moto")


@dataclass
class Row:
    """One workload run against each server (moto may be missing)."""

    client: str  # "boto3" or "raw"
    workload: str
    volumes: int | None
    stats: dict[str, Stats] = field(default_factory=dict)
    note: str = ""

    def ratio(self) -> float | None:
        """ebsemu calls/s over moto calls/s."""
        ours, theirs = self.stats.get("ebsemu"), self.stats.get("moto")
        if ours is None or theirs is None or not ours.calls or not theirs.calls:
            return None
        return ours.rate / theirs.rate


@dataclass
class Footprint:
    """Server memory once a number of volumes exist, and how fast they were created."""

    volumes: int
    rss_mib: dict[str, float] = field(default_factory=dict)
    fill: dict[str, Stats] = field(default_factory=dict)
    reached: dict[str, int] = field(default_factory=dict)  # volumes each server really holds


@dataclass
class DataResult:
    """A data-path measurement against the machine's own limit measured in the same run."""

    name: str
    value: str
    limit: str
    ratio: float | None  # the figure over its reference, as the benchmark names them
    detail: str = ""
    measured: float | None = None  # the raw figure targets are checked against


@dataclass
class TargetResult:
    name: str
    measured: str
    threshold: str
    passed: bool | None  # None: not measured in this run

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "FAIL", None: "not run"}[self.passed]


@dataclass
class Report:
    machine: Machine
    rows: list[Row] = field(default_factory=list)
    footprints: list[Footprint] = field(default_factory=list)
    data: list[DataResult] = field(default_factory=list)
    targets: list[TargetResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def find(self, client: str, workload: str, volumes: int | None = None) -> Row | None:
        for row in self.rows:
            same = row.client == client and row.workload == workload
            if same and (volumes is None or row.volumes == volumes):
                return row
        return None

    def data_result(self, name: str) -> DataResult | None:
        return next((d for d in self.data if d.name == name), None)


def num(value: float | None, digits: int = 1) -> str:
    if value is None or math.isnan(value):
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _table(header: list[str], lines: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cells) + " |" for cells in lines]
    return out


def _server_cells(stats: Stats | None) -> list[str]:
    if stats is None:
        return ["-"] * 5
    rate = num(stats.rate)
    if stats.capped:
        rate += " (time cap)"
    if stats.errors:
        rate += f" ({stats.errors} err)"
    return [
        rate,
        num(stats.p50),
        num(stats.p99),
        num(stats.server_ms_per_call, 2),
        str(stats.calls),
    ]


def render(report: Report) -> str:
    out = ["# ebsemu vs moto_server", "", *report.machine.lines(), ""]
    for client, title in (("boto3", "Through boto3"), ("raw", "Through the raw HTTP client")):
        rows = [r for r in report.rows if r.client == client]
        if not rows:
            continue
        out += [f"## {title}", ""]
        header = ["workload", "volumes"]
        for server in SERVERS:
            header += [f"{server} calls/s", "p50 ms", "p99 ms", "CPU ms/call", "n"]
        header += ["ebsemu/moto", "client CPU ms/call"]
        lines = []
        for row in rows:
            cells = [row.workload + (f" ({row.note})" if row.note else ""), num(row.volumes)]
            for server in SERVERS:
                cells += _server_cells(row.stats.get(server))
            ours = row.stats.get("ebsemu")
            ratio = row.ratio()
            cells += [f"{ratio:.2f}x" if ratio is not None else "-"]
            cells += [num(ours.client_ms_per_call, 2) if ours else "-"]
            lines.append(cells)
        out += [*_table(header, lines), ""]
    if report.footprints:
        out += ["## Server memory and fill rate (raw client, concurrency 16)", ""]
        header = ["volumes"]
        for server in SERVERS:
            header += [f"{server} RSS MiB", "fill calls/s", "CPU ms/call"]
        lines = []
        for fp in report.footprints:
            cells = [num(fp.volumes)]
            for server in SERVERS:
                fill = fp.fill.get(server)
                cells += [
                    num(fp.rss_mib.get(server)),
                    num(fill.rate) if fill else "-",
                    num(fill.server_ms_per_call, 2) if fill else "-",
                ]
            lines.append(cells)
        out += [*_table(header, lines), ""]
    if report.data:
        out += ["## Data path (ebsemu alone, against this machine's own limits)", ""]
        lines = [
            [d.name, d.value, d.limit, f"{d.ratio:.2f}" if d.ratio is not None else "-", d.detail]
            for d in report.data
        ]
        out += [*_table(["benchmark", "ebsemu", "machine limit", "ratio", "detail"], lines), ""]
    if report.targets:
        out += ["## Targets", ""]
        lines = [[t.name, t.measured, t.threshold, t.verdict] for t in report.targets]
        out += [*_table(["target", "measured", "required", "verdict"], lines), ""]
    if report.notes:
        out += ["## Notes", "", *[f"- {note}" for note in report.notes], ""]
    return "\n".join(out)


def _stats_json(stats: Stats) -> dict[str, Any]:
    def clean(value: float) -> float | None:
        return None if math.isnan(value) else round(value, 4)

    return {
        "calls": stats.calls,
        "errors": stats.errors,
        "seconds": round(stats.seconds, 4),
        "calls_per_s": clean(stats.rate),
        "p50_ms": clean(stats.p50),
        "p99_ms": clean(stats.p99),
        "server_cpu_ms_per_call": clean(stats.server_ms_per_call),
        "client_cpu_ms_per_call": clean(stats.client_ms_per_call),
        "capped": stats.capped,
        "first_error": stats.first_error,
    }


def to_json(report: Report) -> str:
    data = {
        "machine": report.machine.__dict__,
        "rows": [
            {
                "client": r.client,
                "workload": r.workload,
                "volumes": r.volumes,
                "note": r.note,
                "ratio": r.ratio(),
                "stats": {name: _stats_json(s) for name, s in r.stats.items()},
            }
            for r in report.rows
        ],
        "footprints": [
            {
                "volumes": f.volumes,
                "rss_mib": f.rss_mib,
                "reached": f.reached,
                "fill": {name: _stats_json(s) for name, s in f.fill.items()},
            }
            for f in report.footprints
        ],
        "data": [d.__dict__ for d in report.data],
        "targets": [{**t.__dict__, "verdict": t.verdict} for t in report.targets],
        "notes": report.notes,
    }
    return json.dumps(data, indent=2)
