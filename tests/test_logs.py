"""Every log line a request causes carries its RequestId (text and JSON formats), the JSON
format is one object per line, no secret reaches the log (not even in what aiohttp logs),
and `ebsemu --version` prints the installed package's version."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from ebsemu import config
from tests.api_support import FAST, aws_error, poll
from tests.server import SECRET_ACCESS_KEY, TEST_CONFIG, ZONE, ServerProcess
from tests.test_api_request_integrity import exchange

AWS = Path(sys.executable).with_name("aws")


@pytest.fixture
def json_server(tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path / "data", TEST_CONFIG, args=("--log-format", "json"))
    server.start()
    yield server
    server.stop()


def request_id(response: dict[str, Any]) -> str:
    rid: str = response["ResponseMetadata"]["RequestId"]
    return rid


def test_text_log_lines_of_a_request_and_its_job_carry_its_request_id(
    fresh_server: ServerProcess,
) -> None:
    ec2 = fresh_server.client()
    created = ec2.create_volume(AvailabilityZone=ZONE, Size=1)
    volume_id, rid = created["VolumeId"], request_id(created)
    ec2.get_waiter("volume_available").wait(VolumeIds=[volume_id], WaiterConfig=FAST)

    lines = fresh_server.log_path.read_text().splitlines()
    tagged = [line for line in lines if f" [{rid}]: " in line]
    assert any(f"volume {volume_id}: creating" in line for line in tagged)
    assert any(f"volume {volume_id}: available" in line for line in tagged)  # the job's line
    assert any('"POST /" 200' in line for line in tagged)  # the access-log line
    for line in lines:
        if volume_id in line and "ebsemu.service.volumes" in line:
            assert f" [{rid}]: " in line, line

    with pytest.raises(ClientError) as caught:
        ec2.delete_volume(VolumeId="vol-0123456789abcdef0")
    error_rid = caught.value.response["ResponseMetadata"]["RequestId"]
    lines = fresh_server.log_path.read_text().splitlines()
    refused = [line for line in lines if "InvalidVolume.NotFound" in line]
    assert refused and all(f" [{error_rid}]: " in line for line in refused)
    assert SECRET_ACCESS_KEY not in fresh_server.log_path.read_text()


def test_volumes_created_together_log_each_under_its_own_request(
    json_server: ServerProcess,
) -> None:
    """The file backend creates concurrent volumes in one batch, run in the first caller's
    context: each volume's line must still carry the request that asked for it."""
    ec2 = json_server.client()
    with ThreadPoolExecutor(8) as pool:
        created = list(
            pool.map(lambda _: ec2.create_volume(AvailabilityZone=ZONE, Size=1), range(16))
        )
    requests = {c["VolumeId"]: request_id(c) for c in created}
    ec2.get_waiter("volume_available").wait(VolumeIds=list(requests), WaiterConfig=FAST)

    entries = [json.loads(line) for line in json_server.log_path.read_text().splitlines()]
    lines = [e for e in entries if e["message"].startswith("created volume ")]
    assert {e["message"].split()[2].rstrip(":") for e in lines} == set(requests)
    for entry in lines:
        volume_id = entry["message"].split()[2].rstrip(":")
        assert entry.get("request_id") == requests[volume_id], entry


def test_json_log_is_one_object_per_line_with_the_request_id(json_server: ServerProcess) -> None:
    ec2 = json_server.client()
    created = ec2.create_volume(AvailabilityZone=ZONE, Size=1)
    volume_id, rid = created["VolumeId"], request_id(created)
    ec2.get_waiter("volume_available").wait(VolumeIds=[volume_id], WaiterConfig=FAST)
    code, _, _ = aws_error(ec2.describe_volumes, VolumeIds=["vol-x"])
    assert code == "InvalidVolumeID.Malformed"

    text = json_server.log_path.read_text()
    entries = [json.loads(line) for line in text.splitlines()]
    assert entries
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= set(entry), entry
        assert entry["time"].endswith("Z")
    mine = [e for e in entries if e.get("request_id") == rid]
    assert {e["logger"] for e in mine} >= {"ebsemu.service.volumes", "aiohttp.access"}
    assert any(e["message"] == f"volume {volume_id}: available" for e in mine)
    started = [e for e in entries if e["message"].startswith("ebsemu serving EC2")]
    assert started and "request_id" not in started[0]  # no request, no id
    refused = [e for e in entries if "InvalidVolumeID.Malformed" in e["message"]]
    assert len(refused) == 1 and refused[0]["request_id"] in refused[0]["message"]
    assert SECRET_ACCESS_KEY not in text


def test_log_format_and_metrics_options_are_read_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "ebsemu.ini"
    path.write_text("[server]\nlog_format = json\nmetrics = off\n")
    loaded = config.load(path)
    assert (loaded.log_format, loaded.metrics) == ("json", False)
    assert (config.Config().log_format, config.Config().metrics) == ("text", True)
    path.write_text("[server]\nlog_format = xml\n")
    with pytest.raises(ValueError, match="log_format"):
        config.load(path)


def test_version_prints_the_installed_package_version() -> None:
    for argv in (
        [sys.executable, "-m", "ebsemu", "--version"],
        [str(AWS.with_name("ebsemu")), "--version"],
    ):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
        assert done.stdout == f"ebsemu {version('ebsemu')}\n"


def test_json_log_of_a_request_aiohttp_cannot_parse_has_its_signature_redacted(
    json_server: ServerProcess,
) -> None:
    """aiohttp logs such a request's whole line, in its exception's text: the JSON format
    writes that text redacted too."""
    now = datetime.now(UTC)
    signature = "5c0ffee" * 9 + "0"
    target = (
        "/?Action=DescribeVolumes&Filter.1.Name=tag:Name&Filter.1.Value.1=café"
        "&X-Amz-Algorithm=AWS4-HMAC-SHA256"
        f"&X-Amz-Credential=AKIDEXAMPLE%2F{now:%Y%m%d}%2Fus-east-1%2Fec2%2Faws4_request"
        f"&X-Amz-Date={now:%Y%m%dT%H%M%SZ}&X-Amz-SignedHeaders=host&X-Amz-Signature={signature}"
    )
    assert exchange(json_server, "GET", target).status == 400

    def logged() -> list[dict[str, Any]] | None:
        entries = [json.loads(line) for line in json_server.log_path.read_text().splitlines()]
        return entries if any(e["logger"] == "aiohttp.server" for e in entries) else None

    entries = poll(logged, timeout=10)
    text = json_server.log_path.read_text()
    assert signature not in text and "AKIDEXAMPLE%2F" not in text
    (refused,) = [e for e in entries if e["logger"] == "aiohttp.server"]
    assert "X-Amz-Signature=<redacted>" in refused["exception"]
