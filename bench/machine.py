"""What the run happened on, and what a server process costs (from /proc)."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Machine:
    date: str
    command: str
    cpus: int
    cpu_model: str
    memory_gib: float
    kernel: str
    python: str
    filesystem: str
    load_average: str

    def lines(self) -> list[str]:
        return [
            f"- date: {self.date}",
            f"- command: `{self.command}`",
            f"- machine: {self.cpus} CPUs ({self.cpu_model}), {self.memory_gib:.1f} GiB memory, "
            f"Linux {self.kernel}, Python {self.python}",
            f"- data directory filesystem: {self.filesystem}",
            f"- load average at start: {self.load_average}",
        ]


def describe(work_dir: Path, argv: list[str]) -> Machine:
    return Machine(
        date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        command=shlex.join([Path(sys.executable).name, "-m", "bench.run", *argv]),
        cpus=os.cpu_count() or 0,
        cpu_model=_cpu_model(),
        memory_gib=_meminfo_kib("MemTotal") / 1024**2,
        kernel=platform.release(),
        python=platform.python_version(),
        filesystem=_filesystem(work_dir),
        load_average=" ".join(f"{x:.2f}" for x in os.getloadavg()),
    )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _meminfo_kib(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _filesystem(path: Path) -> str:
    try:
        out = subprocess.run(
            ["df", "--output=fstype", str(path)],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.split()
        return out[-1] if out else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far (utime + stime)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # the name may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mib(pid: int) -> float:
    """Resident set size (VmRSS) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0
