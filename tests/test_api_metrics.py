"""GET /metrics on a real server: the text parses, and after a known set of calls (one of them
an error) the request counters, latency histograms and gauges have exactly the expected
values."""

from __future__ import annotations

import re
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ebsemu.model import BLOCK_SIZE
from tests.api_support import aws_error, poll, raw_request
from tests.server import TEST_CONFIG, ZONE, ServerProcess
from tests.volume_data import write_blocks

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
SAMPLE = re.compile(rf"({NAME})(?:\{{(.*)\}})? (\S+)")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}

Labels = tuple[tuple[str, str], ...]


@dataclass
class Scrape:
    types: dict[str, str] = field(default_factory=dict)
    samples: dict[tuple[str, Labels], float] = field(default_factory=dict)

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def series(self, name: str) -> dict[Labels, float]:
        return {labels: v for (n, labels), v in self.samples.items() if n == name}


def parse(text: str) -> Scrape:
    """The Prometheus text format (0.0.4), strictly: every sample belongs to a family whose
    TYPE came before it, labels are well formed, values are numbers, no sample twice."""
    scrape = Scrape()
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert re.fullmatch(NAME, name) and kind in TYPES, line
            assert name not in scrape.types, f"{name} typed twice"
            scrape.types[name] = kind
            continue
        if line.startswith("#"):
            assert line.startswith("# HELP "), line
            continue
        match = SAMPLE.fullmatch(line)
        assert match is not None, f"not a sample: {line!r}"
        name, label_text, value = match.groups()
        family = name
        if name not in scrape.types:
            family = re.sub(r"_(bucket|sum|count)$", "", name)
            assert scrape.types.get(family) == "histogram", f"{name} has no TYPE before it"
        labels: list[tuple[str, str]] = []
        rest = label_text or ""
        while rest:
            label = LABEL.match(rest)
            assert label is not None, f"bad labels in {line!r}"
            labels.append((label.group(1), label.group(2)))
            rest = rest[label.end() :]
        key = (name, tuple(sorted(labels)))
        assert key not in scrape.samples, f"{line!r} twice"
        scrape.samples[key] = float(value)
    return scrape


def scrape(server: ServerProcess) -> Scrape:
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        return parse(response.read().decode())


def requests(scrape: Scrape) -> Counter[tuple[str, str]]:
    found: Counter[tuple[str, str]] = Counter()
    for labels, value in scrape.series("ebsemu_api_requests_total").items():
        found[(dict(labels)["action"], dict(labels)["code"])] = int(value)
    return found


def _once_completed(server: ServerProcess) -> Scrape | None:
    """A scrape taken once the snapshot has completed and its job is over (the job is marked
    done just after the snapshot turns completed)."""
    found = scrape(server)
    completed = found.value("ebsemu_snapshots", state="completed") == 1
    done = found.value("ebsemu_jobs", kind="capture_snapshot", state="done") == 1
    return found if completed and done else None


@pytest.fixture
def metrics_server(tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path / "data", TEST_CONFIG)
    server.start()
    yield server
    server.stop()


def test_counters_histograms_and_gauges_after_known_calls(metrics_server: ServerProcess) -> None:
    server = metrics_server
    ec2 = server.client()
    before = scrape(server)
    assert before.types["ebsemu_api_requests_total"] == "counter"
    assert before.types["ebsemu_api_request_duration_seconds"] == "histogram"

    volume_id = ec2.create_volume(AvailabilityZone=ZONE, Size=1)["VolumeId"]
    poll(lambda: scrape(server).value("ebsemu_volumes", state="available") == 1 or None)
    ec2.describe_volumes(VolumeIds=[volume_id])
    ec2.describe_volumes()
    code, _, _ = aws_error(ec2.describe_volumes, VolumeIds=["vol-x"])
    assert code == "InvalidVolumeID.Malformed"
    unsupported = raw_request(server.url, {"Action": "LaunchRockets", "Version": "2016-11-15"})
    assert unsupported.error()[0] == "InvalidAction"

    write_blocks(server, volume_id, {0: b"\x5a" * BLOCK_SIZE})  # one block, stored once
    ec2.create_snapshot(VolumeId=volume_id)
    after = poll(lambda: _once_completed(server))

    assert requests(after) - requests(before) == Counter(
        {
            ("CreateVolume", "OK"): 1,
            ("DescribeVolumes", "OK"): 2,
            ("DescribeVolumes", "InvalidVolumeID.Malformed"): 1,
            ("unknown", "InvalidAction"): 1,
            ("CreateSnapshot", "OK"): 1,
        }
    )
    for action, count in (("CreateVolume", 1), ("DescribeVolumes", 3), ("CreateSnapshot", 1)):
        name = "ebsemu_api_request_duration_seconds"
        grew = after.value(f"{name}_count", action=action) - before.value(
            f"{name}_count", action=action
        )
        assert grew == count, action
        buckets = sorted(
            (float(dict(labels)["le"]), value)
            for labels, value in after.series(f"{name}_bucket").items()
            if dict(labels)["action"] == action
        )
        assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
        assert buckets[-1] == (float("inf"), after.value(f"{name}_count", action=action))
        assert after.value(f"{name}_sum", action=action) > 0

    assert after.value("ebsemu_volumes", state="available") == 1
    assert after.value("ebsemu_volumes", state="creating") == 0
    assert after.value("ebsemu_snapshots", state="pending") == 0
    assert after.value("ebsemu_jobs", kind="create_volume", state="done") == 1
    assert after.value("ebsemu_blockstore_blocks") == 1
    assert after.value("ebsemu_blockstore_bytes") == BLOCK_SIZE


def test_metrics_requests_are_not_counted_and_other_paths_keep_the_ec2_error(
    metrics_server: ServerProcess,
) -> None:
    before = requests(scrape(metrics_server))
    scrape(metrics_server)
    assert requests(scrape(metrics_server)) == before
    for method, path in (("GET", "/nothing"), ("POST", "/metrics"), ("GET", "/metrics/x")):
        answer = raw_request(metrics_server.url, method=method, path=path, auth=None)
        assert answer.status == 400, (method, path)
        assert answer.content_type.startswith("text/xml")
        assert answer.error()[0] == "InvalidRequest"


def test_metrics_off_leaves_the_path_to_the_ec2_error(tmp_path: Path) -> None:
    server = ServerProcess(
        tmp_path / "data", TEST_CONFIG.replace("[server]\n", "[server]\nmetrics = off\n")
    )
    server.start()
    try:
        answer = raw_request(server.url, method="GET", path="/metrics", auth=None)
        assert answer.status == 400
        assert answer.error() == ("InvalidRequest", "No EC2 API at GET /metrics")
    finally:
        server.stop()


def test_label_values_are_escaped() -> None:
    from ebsemu.api.metrics import _sample

    line = _sample("m", 2, action='a"b\\c\nd')
    assert line == 'm{action="a\\"b\\\\c\\nd"} 2'
    assert parse("# TYPE m gauge\n" + line + "\n").value("m", action='a\\"b\\\\c\\nd') == 2
