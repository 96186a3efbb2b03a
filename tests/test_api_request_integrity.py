"""Requests as an attacker or a broken client writes them, byte for byte: the parameters acted
on are the ones whose signature was verified, malformed bytes and bodies are client errors
(never a 500 with a traceback), a client that hangs up is no server error, no signature
reaches the log, and one request id names a request everywhere.

Requests go out over a plain socket: urllib and http.client would encode or refuse the very
bytes under test (a literal `#`, raw non-ASCII, a body cut short).
"""

from __future__ import annotations

import http.client
import io
import json
import socket
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path

import pytest
from botocore.auth import SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.api_support import RawResponse, encode_params, poll, sigv2_params, sigv4_headers, unique
from tests.server import (
    ACCESS_KEY_ID,
    REGION,
    SECRET_ACCESS_KEY,
    TEST_CONFIG,
    ZONE,
    ServerProcess,
)

FORM = "application/x-www-form-urlencoded; charset=utf-8"
UNKNOWN_KEY = ("AKIDNOSUCHKEY", "secret")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server of this module's own: its log holds only what these tests cause."""
    proc = ServerProcess(tmp_path_factory.mktemp("integrity") / "data", TEST_CONFIG)
    proc.start()
    yield proc
    proc.stop()


class _Received:
    """What http.client needs of a socket to parse a response already read."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def makefile(self, mode: str) -> io.BytesIO:
        return io.BytesIO(self._data)


def exchange(
    server: ServerProcess,
    method: str,
    target: str,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
) -> RawResponse:
    """Send exactly this request (``target`` and header values as UTF-8, lone surrogates as
    the raw bytes they stand for) on a connection of its own; the answer, read to the close."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{server.port}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items() if name != "Host"]
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return answer_to(server, "\r\n".join(lines).encode("utf-8", "surrogateescape") + body)


def answer_to(server: ServerProcess, data: bytes, timeout: float = 30) -> RawResponse:
    """Send ``data`` on a connection of its own; the answer, read until the server closes."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    response = http.client.HTTPResponse(_Received(received))  # type: ignore[arg-type]  # a stand-in socket
    response.begin()
    return RawResponse(response.status, dict(response.getheaders()), response.read())


class LogSince:
    """The server's log from now on."""

    def __init__(self, server: ServerProcess) -> None:
        self.path: Path = server.log_path
        self.offset = self.path.stat().st_size

    def text(self) -> str:
        with self.path.open("rb") as log:
            log.seek(self.offset)
            return log.read().decode("utf-8", "replace")

    def wait_for(self, needle: str) -> str:
        """The log from then on, once it holds ``needle``."""

        def found() -> str | None:
            text = self.text()
            return text if needle in text else None

        return poll(found, timeout=10)


def assert_no_server_error(log: str) -> None:
    assert " ERROR " not in log and "Traceback" not in log, log


def ec2_code(answer: RawResponse) -> str:
    assert answer.content_type.startswith("text/xml"), answer.body[:300]
    return answer.error()[0]


# ---- a literal `#`: verified and acted on must be the same parameters -------------------------


def create_volume_dry_run(marker: str) -> dict[str, str]:
    """A dry-run CreateVolume whose tag value holds a `#`."""
    return {
        "Action": "CreateVolume",
        "Version": "2016-11-15",
        "AvailabilityZone": ZONE,
        "Size": "1",
        "TagSpecification.1.ResourceType": "volume",
        "TagSpecification.1.Tag.1.Key": "ticket",
        "TagSpecification.1.Tag.1.Value": f"{marker} #42",
        "DryRun": "true",
    }


def signed_get(
    server: ServerProcess, params: dict[str, str], how: str
) -> tuple[str, dict[str, str]]:
    """The query string and headers of a GET signed ``how``: presigned, header, or v2."""
    if how == "presigned":
        request = AWSRequest(method="GET", url=f"{server.url}/?{encode_params(params)}")
        SigV4QueryAuth(Credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY), "ec2", REGION, 300).add_auth(
            request
        )
        return urllib.parse.urlsplit(request.url).query, {}
    if how == "header":
        query = encode_params(params)
        return query, sigv4_headers("GET", f"{server.url}/?{query}", b"", {})
    return encode_params(sigv2_params(params, method="GET", url=server.url)), {}


def dry_run_behind_a_hash(query: str) -> str:
    """The same parameters, signed the same (both versions sort them), with the pair holding
    `%23` and then DryRun=true moved last and the `%23` written as a literal `#`: a parser
    that takes `#` for the start of a fragment never sees DryRun."""
    pairs = query.split("&")
    tagged = next(pair for pair in pairs if "%23" in pair)
    rest = [pair for pair in pairs if pair not in (tagged, "DryRun=true")]
    return "&".join([*rest, tagged.replace("%23", "#"), "DryRun=true"])


@pytest.mark.parametrize("how", ["presigned", "header", "v2"])
def test_a_signed_request_with_dry_run_moved_behind_a_literal_hash_is_refused_not_run(
    server: ServerProcess, how: str
) -> None:
    marker = unique()
    query, headers = signed_get(server, create_volume_dry_run(marker), how)
    as_signed = exchange(server, "GET", f"/?{query}", headers)
    assert as_signed.status == 412 and ec2_code(as_signed) == "DryRunOperation"

    tampered = exchange(server, "GET", f"/?{dry_run_behind_a_hash(query)}", headers)
    assert tampered.status == 400, tampered.body[:500]
    assert ec2_code(tampered) == "InvalidRequest"
    volumes = server.client().describe_volumes(
        Filters=[{"Name": "tag:ticket", "Values": [f"{marker} #42"]}]
    )["Volumes"]
    assert volumes == []


def test_an_ebs_request_with_a_literal_hash_is_a_validation_error(server: ServerProcess) -> None:
    target = "/snapshots/snap-0123456789abcdef0/blocks?maxResults=100&pageToken=a%23b"
    headers = sigv4_headers("GET", server.url + target, b"", {}, service="ebs")
    answer = exchange(server, "GET", target.replace("%23", "#"), headers)
    assert answer.status == 400, answer.body[:300]
    assert answer.headers["x-amzn-ErrorType"] == "ValidationException"


# ---- key ids no account can hold ---------------------------------------------------------------


def authorization_with_key(headers: dict[str, str], key_id: str) -> dict[str, str]:
    value = headers["Authorization"].replace(UNKNOWN_KEY[0], key_id)
    return {**headers, "Authorization": value}


@pytest.mark.parametrize(("path", "service"), [("/", "ec2"), ("/snapshots", "ebs")])
def test_an_authorization_key_id_of_undecodable_bytes_is_refused_as_an_unknown_key(
    server: ServerProcess, path: str, service: str
) -> None:
    if service == "ec2":
        body, content_type = b"Action=DescribeVolumes&Version=2016-11-15", FORM
    else:
        body, content_type = b'{"VolumeSize": 1}', "application/json"
    headers = sigv4_headers(
        "POST",
        server.url + path,
        body,
        {"Content-Type": content_type},
        key=UNKNOWN_KEY,
        service=service,
    )
    unknown = exchange(server, "POST", path, headers, body)
    assert unknown.status in (401, 403)
    log = LogSince(server)
    # \xff\xfe: aiohttp keeps such header bytes as lone surrogates
    answer = exchange(server, "POST", path, authorization_with_key(headers, "\udcff\udcfe"), body)
    assert answer.status == unknown.status, answer.body[:300]
    if service == "ec2":
        assert ec2_code(answer) == ec2_code(unknown) == "AuthFailure"
    else:
        assert answer.headers["x-amzn-ErrorType"] == unknown.headers["x-amzn-ErrorType"]
    assert_no_server_error(log.wait_for(f'"POST {path}" {answer.status}'))


@pytest.mark.parametrize("how", ["presigned", "v2"])
def test_a_query_key_id_of_undecodable_bytes_or_nul_is_refused_as_an_unknown_key(
    server: ServerProcess, how: str
) -> None:
    params = {"Action": "DescribeVolumes", "Version": "2016-11-15"}
    now = datetime.now(UTC)
    if how == "v2":
        extra = (
            "AWSAccessKeyId=%ff%00&SignatureVersion=2&SignatureMethod=HmacSHA256"
            f"&Timestamp={now:%Y-%m-%dT%H:%M:%SZ}&Signature=AAAA"
        )
    else:
        extra = (
            f"X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=%ff%00%2F{now:%Y%m%d}%2F{REGION}"
            f"%2Fec2%2Faws4_request&X-Amz-Date={now:%Y%m%dT%H%M%SZ}&X-Amz-SignedHeaders=host"
            "&X-Amz-Signature=00"
        )
    answer = exchange(server, "GET", f"/?{encode_params(params)}&{extra}")
    assert answer.status == 401, answer.body[:300]
    assert ec2_code(answer) == "AuthFailure"


# ---- bodies that cannot be read ----------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_body_that_does_not_decode_as_its_content_encoding_is_a_client_error(
    server: ServerProcess, encoding: str
) -> None:
    log = LogSince(server)
    answer = exchange(
        server,
        "POST",
        "/",
        {"Content-Type": FORM, "Content-Encoding": encoding},
        b"Action=DescribeVolumes&Version=2016-11-15",
    )
    assert answer.status == 400, answer.body[:300]
    assert ec2_code(answer) == "InvalidRequest"

    block = exchange(
        server,
        "PUT",
        "/snapshots/snap-0123456789abcdef0/blocks/1",
        {"Content-Type": "application/octet-stream", "Content-Encoding": encoding},
        b"not compressed",
    )
    assert block.status == 400, block.body[:300]
    assert block.headers["x-amzn-ErrorType"] == "ValidationException"
    assert_no_server_error(log.wait_for('"PUT /snapshots/snap-0123456789abcdef0/blocks/1" 400'))


def test_deeply_nested_json_is_a_validation_error(server: ServerProcess) -> None:
    body = b'{"VolumeSize": 1, "X": ' + b"[" * 50000 + b"]" * 50000 + b"}"
    headers = sigv4_headers(
        "POST",
        server.url + "/snapshots",
        body,
        {"Content-Type": "application/json"},
        service="ebs",
    )
    answer = exchange(server, "POST", "/snapshots", headers, body)
    assert answer.status == 400, answer.body[:300]
    assert answer.headers["x-amzn-ErrorType"] == "ValidationException"


def requests_counted(server: ServerProcess) -> list[str]:
    """The request counters of /metrics, one line each (labels and value)."""
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=30) as response:
        lines = response.read().decode().splitlines()
    return [line for line in lines if line.startswith("ebsemu_api_requests_total{")]


def test_a_client_that_hangs_up_mid_body_is_logged_as_gone_not_as_a_server_error(
    server: ServerProcess,
) -> None:
    counted = requests_counted(server)
    log = LogSince(server)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
            + FORM.encode()
            + b"\r\nContent-Length: 1000\r\n\r\nAction=DescribeVolumes"
        )
        time.sleep(0.2)  # the handler is waiting for the rest of the body
    text = log.wait_for("the client closed the connection")
    assert " INFO ebsemu.api.handler " in text
    assert_no_server_error(log.wait_for('"POST /" 499'))
    assert requests_counted(server) == counted  # not counted at all, let alone as InternalError


def part_of_a_body(method: str, target: str, content_type: str, sent: bytes) -> bytes:
    """A request whose Content-Length promises more than the ``sent`` bytes that follow."""
    head = (
        f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(sent) + 1000}\r\n\r\n"
    )
    return head.encode() + sent


def test_a_body_that_stops_arriving_is_a_request_timeout_and_its_connection_is_closed(
    tmp_path: Path,
) -> None:
    """A client that sent part of its body held its connection and a handler for good."""
    config = TEST_CONFIG.replace("[limits]\n", "[limits]\nrequest_body_timeout_seconds = 1\n")
    proc = ServerProcess(tmp_path / "data", config)
    proc.start()
    try:
        log = LogSince(proc)
        started = time.monotonic()
        request = part_of_a_body("POST", "/", FORM, b"Action=DescribeVolumes")
        answer = answer_to(proc, request, timeout=15)  # read until the server closes
        assert 0.9 < time.monotonic() - started < 10
        assert answer.status == 400, answer.body[:300]
        code, message = answer.error()
        assert code == "RequestTimeout" and "within the timeout period" in message
        target = "/snapshots/snap-0123456789abcdef0/blocks/1"
        block = answer_to(
            proc, part_of_a_body("PUT", target, "application/octet-stream", b"\0" * 100), 15
        )
        assert block.status == 400, block.body[:300]
        assert block.headers["x-amzn-ErrorType"] == "ValidationException"
        assert json.loads(block.body)["Reason"] == "WRITE_REQUEST_TIMEOUT"
        assert proc.client().describe_volumes()["Volumes"] == []
        text = log.wait_for(f'"PUT {target}" 400')
        timed_out = [line for line in text.splitlines() if "Your socket connection" in line]
        assert len(timed_out) == 2, text  # one line each
        assert " INFO ebsemu.api.handler " in timed_out[0] and "-> 400 RequestTimeout: " in text
        assert " INFO ebsemu.direct.handler " in timed_out[1]
        assert_no_server_error(text)
    finally:
        proc.stop()


# ---- secrets in what aiohttp logs ----------------------------------------------------------------


def test_a_presigned_url_aiohttp_cannot_parse_leaves_no_signature_in_the_log(
    server: ServerProcess,
) -> None:
    params = {
        "Action": "DescribeVolumes",
        "Version": "2016-11-15",
        "Filter.1.Name": "tag:Name",
        "Filter.1.Value.1": "café",
    }
    request = AWSRequest(method="GET", url=f"{server.url}/?{encode_params(params)}")
    SigV4QueryAuth(Credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY), "ec2", REGION, 3600).add_auth(
        request
    )
    query = urllib.parse.urlsplit(request.url).query
    signature = urllib.parse.parse_qs(query)["X-Amz-Signature"][0]
    credential = urllib.parse.parse_qs(query)["X-Amz-Credential"][0]
    log = LogSince(server)
    answer = exchange(server, "GET", "/?" + query.replace("caf%C3%A9", "café"))  # raw UTF-8
    assert answer.status == 400
    text = log.wait_for('"UNKNOWN /" 400')
    assert signature not in text
    assert urllib.parse.quote(credential, safe="") not in text and credential not in text
    assert signature not in server.log_path.read_text(errors="replace")


# ---- one request id ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/snapshots"), ("DELETE", "/snapshots/snap-0123456789abcdef0/blocks")],
    ids=["operation", "no-operation"],
)
def test_an_ebs_answer_and_its_log_lines_carry_one_request_id(
    server: ServerProcess, method: str, path: str
) -> None:
    log = LogSince(server)
    answer = exchange(server, method, path, {"Content-Type": "application/json"}, b"{}")
    assert answer.status in (403, 404)
    request_id = answer.headers["x-amzn-RequestId"]
    access_line = f'"{method} {path}" {answer.status}'
    lines = log.wait_for(access_line).splitlines()
    assert any(access_line in line and f"[{request_id}]" in line for line in lines), lines
    if method == "POST":  # the handler's own line names it too
        assert any(f"[{request_id}]: request {request_id} " in line for line in lines), lines
