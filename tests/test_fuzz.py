"""Hostile input: 10,000 random and malformed EC2 Query requests (bad types, huge lists, deep
nesting, odd encodings, missing and duplicated parameters, unicode, very long values, broken
signatures) over keep-alive connections. Every answer must be a well-formed EC2 success or
error, never a 5xx, and the server must be healthy afterwards. A longer run:
`python -m tests.fuzz_soak --requests 200000`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.fuzz_requests import run
from tests.server import ServerProcess

FUZZ_CONFIG = """\
[server]
log_level = INFO

[limits]
requests_per_second = 0
max_volumes = 200
max_snapshots = 200
"""
REQUESTS = 10_000


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("fuzz") / "data", FUZZ_CONFIG)
    proc.start()
    yield proc
    proc.stop()


@pytest.mark.timeout(240)
def test_10000_random_and_malformed_queries_get_well_formed_aws_answers_never_5xx(
    fuzz_server: ServerProcess,
) -> None:
    outcome = asyncio.run(run(fuzz_server.url, REQUESTS, seed=20240101))
    assert outcome.failures == [], outcome.failures[:10]
    assert outcome.sent == REQUESTS
    # The mix reached the parser and the actions, not only authentication.
    assert outcome.codes["200"] > 200
    assert outcome.codes["UnknownParameter"] > 100
    assert outcome.codes["InvalidParameterValue"] > 100
    assert outcome.codes["AuthFailure"] + outcome.codes["IncompleteSignature"] > 100
    print(f"\n{REQUESTS} requests in {outcome.seconds:.1f} s; answers: {dict(outcome.codes)}")


def test_server_is_healthy_after_the_fuzzing(fuzz_server: ServerProcess) -> None:
    assert fuzz_server.proc is not None and fuzz_server.proc.poll() is None
    ec2 = fuzz_server.client()
    assert [r["RegionName"] for r in ec2.describe_regions()["Regions"]] == ["us-east-1"]
    volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)
    ec2.get_waiter("volume_available").wait(
        VolumeIds=[volume["VolumeId"]], WaiterConfig={"Delay": 0.1, "MaxAttempts": 300}
    )
    log = fuzz_server.log_path.read_text(errors="replace")
    for marker in ("Traceback", "InternalError"):
        at = log.find(marker)
        assert at < 0, log[max(0, at - 2000) : at + 4000]
