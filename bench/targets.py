"""The performance targets, checked against one run's ratios."""

from __future__ import annotations

from collections.abc import Callable

from bench import create, datapath, describe
from bench.report import Report, Row, TargetResult

CPU_MS_LIMIT = 1.0
GROWTH_VOLUMES = 50_000
RSS_VOLUMES = 100_000
RSS_LIMIT_MIB = 150.0


def evaluate(report: Report) -> list[TargetResult]:
    results: list[TargetResult] = []
    levels = sorted({r.volumes for r in report.rows if r.volumes is not None})
    small = levels[0] if levels else None
    for client, floor in (("boto3", 3.0), ("raw", 10.0)):
        for workload in (create.workload(8), describe.BY_ID_C8):
            row = report.find(client, workload, None if workload.startswith("Create") else small)
            results.append(_speedup(row, floor, f"{workload} ({client})"))
    for workload in (create.workload(8), describe.BY_ID_C8):
        row = report.find("raw", workload, None if workload.startswith("Create") else small)
        results.append(_cpu(row, f"{workload} (raw)"))
    if len(levels) >= 2:
        # The targets name 50,000 volumes; a run without that level is judged at its largest.
        high = GROWTH_VOLUMES if GROWTH_VOLUMES in levels[1:] else levels[-1]
        for workload in (describe.BY_ID, describe.BY_NAME, describe.BY_TAG):
            results.append(_growth(report, workload, levels[0], high))
            results.append(_beats_moto(report, workload, high))
    else:
        results.append(TargetResult("DescribeVolumes at the largest level", "-", "", None))
    results += _data(report)
    results.append(_rss(report))
    return results


def _label(row: Row | None, fallback: str) -> str:
    if row is None:
        return fallback
    where = f" at {row.volumes:,} volumes" if row.volumes else ""
    return f"{row.workload} ({row.client}{where})"


def _speedup(row: Row | None, floor: float, fallback: str) -> TargetResult:
    name = f"{_label(row, fallback)}: ebsemu/moto calls/s"
    ratio = row.ratio() if row else None
    if ratio is None:
        return TargetResult(name, "-", f"≥ {floor:g}x", None)
    return TargetResult(name, f"{ratio:.2f}x", f"≥ {floor:g}x", ratio >= floor)


def _cpu(row: Row | None, fallback: str) -> TargetResult:
    name = f"{_label(row, fallback)}: ebsemu CPU per call"
    stats = row.stats.get("ebsemu") if row else None
    if stats is None or not stats.calls:
        return TargetResult(name, "-", f"≤ {CPU_MS_LIMIT:g} ms", None)
    value = stats.server_ms_per_call
    return TargetResult(name, f"{value:.2f} ms", f"≤ {CPU_MS_LIMIT:g} ms", value <= CPU_MS_LIMIT)


def _growth(report: Report, workload: str, low: int, high: int) -> TargetResult:
    name = f"{workload} (boto3): p50 at {high:,} vs {low:,} volumes"
    first, last = report.find("boto3", workload, low), report.find("boto3", workload, high)
    a = first.stats.get("ebsemu") if first else None
    b = last.stats.get("ebsemu") if last else None
    if a is None or b is None or not a.calls or not b.calls:
        return TargetResult(name, "-", "≤ 2x", None)
    ratio = b.p50 / a.p50
    return TargetResult(name, f"{ratio:.2f}x ({a.p50:.1f} → {b.p50:.1f} ms)", "≤ 2x", ratio <= 2)


def _beats_moto(report: Report, workload: str, high: int) -> TargetResult:
    """ebsemu at the largest level against moto at the largest level moto ran: moto only
    slows down as it holds more volumes, so beating it there beats it at ``high`` too."""
    ours_row = report.find("boto3", workload, high)
    ours = ours_row.stats.get("ebsemu") if ours_row else None
    moto_rows = [
        r
        for r in report.rows
        if r.client == "boto3" and r.workload == workload and "moto" in r.stats
    ]
    theirs_row = max(moto_rows, key=lambda r: r.volumes or 0, default=None)
    theirs = theirs_row.stats.get("moto") if theirs_row else None
    name = f"{workload} (boto3) at {high:,} volumes: faster than moto"
    if ours is None or theirs is None or not ours.calls or not theirs.calls:
        return TargetResult(name, "-", "ebsemu p50 < moto p50", None)
    assert theirs_row is not None
    where = (
        "" if theirs_row.volumes == high else f" (moto at {theirs_row.volumes:,}: a lower bound)"
    )
    return TargetResult(
        name,
        f"ebsemu {ours.p50:.1f} ms vs moto {theirs.p50:.1f} ms{where}",
        "ebsemu p50 < moto p50",
        ours.p50 < theirs.p50,
    )


def _data(report: Report) -> list[TargetResult]:
    checks: list[tuple[str, str, Callable[[float], bool], str]] = [
        (datapath.BIG, "< 1 s", lambda v: v < 1.0, "{:.3f} s"),
        (datapath.FIRST, "≥ 0.70 of sequential read", lambda v: v >= 0.70, "{:.2f}"),
        (datapath.SECOND_BYTES, "≤ 1.1x changed bytes", lambda v: v <= 1.1, "{:.2f}x"),
        (datapath.SECOND_TIME, "≤ 0.15 of the first's time", lambda v: v <= 0.15, "{:.2f}"),
        (datapath.RESTORE, "≥ 0.70 of sequential write", lambda v: v >= 0.70, "{:.2f}"),
    ]
    results = []
    for name, threshold, ok, shape in checks:
        found = report.data_result(name)
        if found is None or found.measured is None:
            results.append(TargetResult(name, "-", threshold, None))
        else:
            results.append(
                TargetResult(name, shape.format(found.measured), threshold, ok(found.measured))
            )
    return results


def _rss(report: Report) -> TargetResult:
    name = f"ebsemu RSS with {RSS_VOLUMES:,} volumes"
    threshold = f"≤ {RSS_LIMIT_MIB:g} MiB"
    big = [f for f in report.footprints if f.reached.get("ebsemu", 0) >= RSS_VOLUMES]
    if not big:
        largest = max(
            (f for f in report.footprints if "ebsemu" in f.rss_mib),
            key=lambda f: f.reached.get("ebsemu", 0),
            default=None,
        )
        shown = (
            f"{largest.rss_mib['ebsemu']:.0f} MiB at {largest.reached.get('ebsemu', 0):,}"
            if largest
            else "-"
        )
        return TargetResult(name, shown, threshold, None)
    value = big[0].rss_mib["ebsemu"]
    return TargetResult(name, f"{value:.0f} MiB", threshold, value <= RSS_LIMIT_MIB)
