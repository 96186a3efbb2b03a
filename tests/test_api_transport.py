"""Transport: TLS from the configured certificate and key, the request body size limit, and
the per-key request rate limit (503 RequestLimitExceeded, which boto3 backs off from)."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3.exceptions
from botocore.config import Config as BotoConfig
from botocore.exceptions import SSLError

from tests.api_support import encode_params, raw_request, sigv4_headers
from tests.server import TEST_CONFIG, ZONE, ServerProcess

DESCRIBE = {"Action": "DescribeVolumes", "Version": "2016-11-15"}


# ---- TLS -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    work = tmp_path_factory.mktemp("tls")
    cert, key = work / "cert.pem", work / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@pytest.fixture(scope="module")
def tls_server(
    tmp_path_factory: pytest.TempPathFactory, certificate: tuple[Path, Path]
) -> Iterator[ServerProcess]:
    cert, key = certificate
    config = TEST_CONFIG.replace("[server]\n", f"[server]\ntls_cert = {cert}\ntls_key = {key}\n")
    proc = ServerProcess(tmp_path_factory.mktemp("tls") / "data", config, tls=True)
    proc.start()
    yield proc
    proc.stop()


def test_tls_server_serves_boto3_that_trusts_its_certificate(
    tls_server: ServerProcess, certificate: tuple[Path, Path]
) -> None:
    assert tls_server.url.startswith("https://")
    ec2 = tls_server.client(verify=str(certificate[0]))
    volume = ec2.create_volume(AvailabilityZone=ZONE, Size=1)
    assert ec2.describe_volumes(VolumeIds=[volume["VolumeId"]])["Volumes"]


def test_tls_server_is_refused_by_a_client_that_does_not_trust_it(
    tls_server: ServerProcess,
) -> None:
    ec2 = tls_server.client(config=BotoConfig(retries={"total_max_attempts": 1}))
    with pytest.raises(SSLError):
        ec2.describe_volumes()


def test_tls_server_does_not_answer_plain_http(tls_server: ServerProcess) -> None:
    plain = tls_server.url.replace("https://", "http://")
    with pytest.raises((OSError, urllib3.exceptions.HTTPError)):
        raw_request(plain, DESCRIBE)


def test_aws_cli_over_tls_with_the_ca_bundle(
    tls_server: ServerProcess, certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    env = tls_server.cli_env()
    env.update(AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_CA_BUNDLE=str(certificate[0]))
    aws = Path(sys.executable).with_name("aws")
    done = subprocess.run(
        [str(aws), "ec2", "describe-volumes", "--endpoint-url", tls_server.url],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def test_unsigned_payload_is_accepted_over_tls(
    tls_server: ServerProcess, certificate: tuple[Path, Path]
) -> None:
    headers = {
        "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
        "X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD",
    }
    body = encode_params(DESCRIBE).encode()
    signed = sigv4_headers("POST", tls_server.url + "/", body, headers)
    context = ssl.create_default_context(cafile=str(certificate[0]))
    response = raw_request(tls_server.url, body=body, headers=signed, auth=None, context=context)
    assert response.status == 200, response.body


# ---- body size and request rate ----------------------------------------------------------------


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    config = "[limits]\nmax_request_bytes = 4096\nrequests_per_second = 2\nrequest_burst = 4\n"
    proc = ServerProcess(tmp_path_factory.mktemp("limits") / "data", config)
    proc.start()
    yield proc
    proc.stop()


def drain(server: ServerProcess, key: tuple[str, str] | None = None) -> list[int]:
    """Statuses of 8 signed requests sent as fast as possible."""
    extra = {"key": key} if key else {}
    return [raw_request(server.url, DESCRIBE, **extra).status for _ in range(8)]


def test_body_over_the_configured_limit_is_a_client_error(limited_server: ServerProcess) -> None:
    time.sleep(2.5)  # a full bucket
    body = encode_params({**DESCRIBE, "Filter.1.Name": "x" * 5000}).encode()
    response = raw_request(limited_server.url, body=body)
    assert response.status == 400
    assert response.error()[0] == "InvalidRequest"
    small = raw_request(limited_server.url, DESCRIBE)
    assert small.status == 200


def test_a_key_past_its_rate_gets_503_request_limit_exceeded(
    limited_server: ServerProcess,
) -> None:
    time.sleep(2.5)
    statuses = drain(limited_server)
    assert statuses[:4] == [200] * 4 and 503 in statuses[4:]
    refused = raw_request(limited_server.url, DESCRIBE)
    assert (refused.status, refused.error()[0]) == (503, "RequestLimitExceeded")
    time.sleep(1.2)  # refilled at 2 per second
    assert raw_request(limited_server.url, DESCRIBE).status == 200


def test_the_rate_limit_is_per_key(limited_server: ServerProcess) -> None:
    _, other = limited_server.new_account()
    time.sleep(2.5)
    assert 503 in drain(limited_server)
    assert raw_request(limited_server.url, DESCRIBE, key=other).status == 200


def test_boto3_backs_off_from_request_limit_exceeded_and_succeeds(
    limited_server: ServerProcess,
) -> None:
    retrying = BotoConfig(retries={"mode": "standard", "max_attempts": 10})
    ec2: Any = limited_server.client(config=retrying)
    for _ in range(10):
        ec2.describe_volumes()


def test_unauthenticated_requests_do_not_spend_a_keys_rate(limited_server: ServerProcess) -> None:
    time.sleep(2.5)
    for _ in range(20):
        raw_request(limited_server.url, DESCRIBE, key=("AKIDEXAMPLE", "wrong"))
        raw_request(limited_server.url, DESCRIBE, auth=None)
    assert raw_request(limited_server.url, DESCRIBE).status == 200
