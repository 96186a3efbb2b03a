"""The benchmark command works end to end in its quick mode (a smoke run, never a timed test),
and its raw client signs requests exactly as botocore does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from bench import create, describe, snapshots
from bench.rawclient import form
from bench.sigv4 import CONTENT_TYPE, Signer

ROOT = Path(__file__).resolve().parents[1]


def test_raw_client_signature_is_the_one_botocore_computes() -> None:
    body = form("DescribeVolumes", {"VolumeId.1": "vol-0123456789abcdef0"})
    amz_date = "20240102T030405Z"
    ours = Signer("AKIDEXAMPLE", "secret", "eu-west-1").headers("127.0.0.1:8788", body, amz_date)

    request = AWSRequest(
        method="POST",
        url="http://127.0.0.1:8788/",
        data=body,
        headers={"Content-Type": CONTENT_TYPE, "X-Amz-Date": amz_date},
    )
    request.context["timestamp"] = amz_date
    auth = SigV4Auth(Credentials("AKIDEXAMPLE", "secret"), "ec2", "eu-west-1")
    canonical = auth.canonical_request(request)
    signature = auth.signature(auth.string_to_sign(request, canonical), request)

    assert ours["Authorization"].endswith(f"Signature={signature}")
    assert "Credential=AKIDEXAMPLE/20240102/eu-west-1/ec2/aws4_request" in ours["Authorization"]


@pytest.mark.timeout(600)
def test_quick_benchmark_prints_every_row_for_both_servers(tmp_path: Path) -> None:
    out_json = tmp_path / "bench.json"
    out_md = tmp_path / "bench.md"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--quick",
            "--work-dir",
            str(tmp_path / "work"),
            "--json",
            str(out_json),
            "--output",
            str(out_md),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out_json.read_text())
    rows = {(r["client"], r["workload"]): r for r in report["rows"]}
    expected = [
        ("boto3", create.workload(8)),
        ("raw", create.workload(8)),
        ("boto3", describe.LIST_ALL),
        ("boto3", describe.BY_ID),
        ("boto3", describe.BY_ID_C8),
        ("boto3", describe.BY_TAG),
        ("boto3", describe.BY_STATUS),
        ("raw", describe.LIST_ALL),
        ("raw", describe.BY_ID_C8),
        ("raw", describe.BY_TAG_C8),
        ("boto3", snapshots.CREATE),
        ("boto3", snapshots.DESCRIBE),
        ("raw", snapshots.DESCRIBE_C8),
    ]
    for key in expected:
        assert key in rows, f"missing row {key}"
        for server in ("ebsemu", "moto"):
            stats = rows[key]["stats"][server]
            assert stats["calls"] > 0, (key, server, stats)
            assert stats["errors"] == 0, (key, server, stats["first_error"])
            assert stats["server_cpu_ms_per_call"] is not None
        assert rows[key]["ratio"] is not None
    assert [f["volumes"] for f in report["footprints"]] == [40]
    assert {t["verdict"] for t in report["targets"]} <= {"PASS", "FAIL", "not run"}
    assert [d["name"] for d in report["data"]] == ["CreateVolume 16 TiB to available"]
    printed = out_md.read_text()
    assert printed in result.stdout
    for workload in {w for _, w in expected}:
        assert workload in printed
    assert "## Targets" in printed
