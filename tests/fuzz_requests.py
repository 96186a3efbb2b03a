"""Random and malformed EC2 Query requests, and a fast client that sends them and judges the
answers. Used by tests/test_fuzz.py (10,000 requests) and tests/fuzz_soak.py (as many as asked).

Requests come from a seeded generator, so a failure is reproduced by its seed and index. Most
are signed correctly (SigV4 over the exact bytes sent, or SigV2), so they get past
authentication and exercise the parser and the actions; the rest are unsigned or carry a broken
signature. Parameter names come from botocore's EC2 model (valid names with random list
indexes, nested to any depth) or are made up; values are of the wrong type, out of range, very
long, unicode, percent-escapes, raw bytes that are not UTF-8, or plausible ones.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import random
import string
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiohttp
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.model import Shape
from yarl import URL

from ebsemu.api.actions import ACTIONS
from ebsemu.api.codec import ec2_model
from tests.server import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY

EC2_NS = "{http://ec2.amazonaws.com/doc/2016-11-15/}"
FORM = "application/x-www-form-urlencoded; charset=utf-8"
MAX_URL = 6000  # aiohttp refuses request lines over 8190 bytes before any handler runs
MAX_VALUES = 80_000  # bytes of values in one request, before percent-encoding
Pairs = list[tuple[bytes, bytes]]

PLAUSIBLE = [
    "",
    "0",
    "1",
    "-1",
    "5",
    "500",
    "16385",
    "true",
    "false",
    "TRUE",
    "gp3",
    "io2",
    "sc2",
    "us-east-1a",
    "use1-az1",
    "vol-0123456789abcdef0",
    "snap-0123456789abcdef0",
    "i-0123456789abcdef0",
    "vol-",
    "self",
    "all",
    "amazon",
    "123456789012",
    "createVolumePermission",
    "productCodes",
    "add",
    "remove",
    "status",
    "tag:Name",
    "tag-key",
    "*",
    "?",
    "\\",
    "[",
    "/dev/sdf",
    "xvdg",
    "2024-01-02T03:04:05.000Z",
    "99999999999999999999999",
    "1e309",
    "NaN",
    "aws:reserved",
]


HUGE_LISTS = {
    base: [(f"{base}.{i}".encode(), b"vol-0123456789abcdef0") for i in range(1, 3001)]
    for base in ("VolumeId", "SnapshotId", "Filter.1.Value", "ResourceId")
}


def _wire(shape: Shape, name: str) -> str:
    query = shape.serialization.get("queryName")
    if query:
        return str(query)
    location = shape.serialization.get("name")
    if location:
        return str(location[0].upper() + location[1:])
    return name


INDEX = None  # marks a list index in a path


@functools.cache
def _model_paths(action: str) -> list[list[str | None]]:
    """Every path from the action's input down to a scalar, as wire names and INDEX marks
    (shapes that contain themselves are followed six levels deep)."""
    operation = ec2_model().operation_model(action)
    paths: list[list[str | None]] = []

    def walk(shape: Shape | None, path: list[str | None]) -> None:
        if shape is None or len(path) >= 6:
            if path:
                paths.append(path)
        elif shape.type_name == "structure":
            for member, child in shape.members.items():
                walk(child, [*path, _wire(child, member)])
        elif shape.type_name == "list":
            walk(shape.member, [*path, INDEX])
        else:
            paths.append(path)

    walk(operation.input_shape, [])
    return paths


def _model_name(action: str, rng: random.Random) -> str | None:
    """A wire name of the action's input, possibly cut short, with random list indexes."""
    paths = _model_paths(action)
    if not paths:
        return None
    path = rng.choice(paths)
    path = path[: rng.randint(1, len(path))] if rng.random() < 0.2 else path
    return ".".join(
        segment if segment is not None else str(rng.choice([1, 1, 2, 3, 10000, 51]))
        for segment in path
    )


@dataclass
class Generator:
    seed: int
    rng: random.Random = field(init=False)
    actions: list[str] = field(init=False)

    long_values: list[bytes] = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.actions = sorted(ACTIONS)
        # A pool of long values (at most 20,000 characters, 240 KB once percent-encoded),
        # made once: encoding them anew for every request would cost more than sending them.
        self.long_values = [
            (
                self.rng.choice(["x", "é", "%", "🙂", "a&b=c"]) * self.rng.randint(1000, 20_000)
            ).encode()
            for _ in range(24)
        ]

    # ---- pieces ------------------------------------------------------------------------

    def action(self) -> str:
        roll = self.rng.random()
        if roll < 0.9:
            return self.rng.choice(self.actions)
        return self.rng.choice(
            ["RunInstances", "describevolumes", "", "Describe Volumes", "CreateVolume\x00", "é"]
        )

    def name(self, action: str) -> str:
        rng = self.rng
        roll = rng.random()
        if roll < 0.7 and action in ACTIONS:
            name = _model_name(action, rng)
            if name is not None:
                return name
        if roll < 0.8:  # nesting far beyond any shape
            return ".".join(
                rng.choices(["Filter", "1", "Value", "Tag", "x"], k=rng.randint(2, 400))
            )
        if roll < 0.9:
            return rng.choice(["VolumeId.0", "VolumeId.-1", "VolumeId.x", "VolumeId.", ".", ""])
        return self.text(rng.randint(1, 30))

    def text(self, length: int) -> str:
        rng = self.rng
        alphabet = rng.choice(
            [
                string.printable,
                "&=%+;#?/\\ \t\r\n\x00",
                "éß漢字🙂\u200b\ufeff\u202e",
                "".join(chr(c) for c in range(0x20, 0x7F)),
            ]
        )
        return "".join(rng.choices(alphabet, k=length))

    def value(self) -> bytes:
        rng = self.rng
        roll = rng.random()
        if roll < 0.45:
            text = rng.choice(PLAUSIBLE)
        elif roll < 0.65:
            text = self.text(rng.randint(0, 40))
        elif roll < 0.75:
            text = str(rng.choice([2**31, 2**63, -(2**63) - 1, 10**40, rng.randint(-9, 99999)]))
        elif roll < 0.85:
            return rng.choice(self.long_values)
        else:
            return rng.randbytes(rng.randint(1, 30))
        return text.encode("utf-8")

    def pairs(self, action: str) -> Pairs:
        rng = self.rng
        pairs: Pairs = []
        if rng.random() < 0.97:
            pairs.append((b"Action", action.encode()))
        if rng.random() < 0.03:
            pairs.append((b"Action", rng.choice(self.actions).encode()))  # duplicated
        if rng.random() < 0.7:
            pairs.append((b"Version", rng.choice([b"2016-11-15", b"2013-02-01", b"x"])))
        size = 0
        for _ in range(rng.choice([0, 1, 2, 3, 5, 8])):
            value = self.value()
            size += len(value)
            if size > MAX_VALUES:  # keeps the body under the server's 1 MiB limit
                break
            pairs.append((self.name(action).encode(), value))
        if rng.random() < 0.05:  # a huge list
            base = rng.choice(["VolumeId", "SnapshotId", "Filter.1.Value", "ResourceId"])
            pairs += HUGE_LISTS[base][: rng.randint(100, 3000)]
        if pairs and rng.random() < 0.1:
            pairs.append(rng.choice(pairs))  # a duplicated parameter
        rng.shuffle(pairs)
        return pairs


@functools.lru_cache(maxsize=8192)
def _quote(data: bytes) -> str:
    return urllib.parse.quote(data, safe="-_.~")


def encode(pairs: Pairs) -> str:
    """AWS's canonical percent-encoding (so SigV4 over a query string holds)."""
    return "&".join(f"{_quote(k)}={_quote(v)}" for k, v in pairs)


@dataclass(frozen=True)
class Request:
    index: int
    action: str
    method: str
    url: str  # already encoded
    headers: dict[str, str]
    body: bytes


class RequestFactory:
    """Turns generated pairs into complete HTTP requests: encoded, placed, signed."""

    def __init__(self, base_url: str, seed: int) -> None:
        self.base_url = base_url
        self.gen = Generator(seed)
        self._credentials = Credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY)

    def make(self, index: int) -> Request:
        rng = self.gen.rng
        action = self.gen.action()
        pairs = self.gen.pairs(action)
        method = "GET" if rng.random() < 0.3 else "POST"
        signing = rng.choices(["v4", "v2", "none", "broken"], weights=[80, 8, 6, 6])[0]
        if signing == "v2":
            pairs = self._sigv2(method, pairs)
        url, body = self.base_url + "/", b""
        encoded = encode(pairs)
        if method == "GET" and len(encoded) < MAX_URL:
            url += "?" + encoded
        else:
            method = "POST"
            body = self._body(pairs, encoded)
        headers = {"Content-Type": rng.choice([FORM, FORM, FORM, "application/json", "text/xml"])}
        if signing in ("v4", "broken"):
            headers = self._sigv4(method, url, body, headers)
        if signing == "broken":
            headers = self._break(headers)
        return Request(index, action, method, url, headers, body)

    def _body(self, pairs: Pairs, encoded: str) -> bytes:
        roll = self.gen.rng.random()
        if roll < 0.85:
            return encoded.encode()
        if roll < 0.95:  # raw, unescaped bytes: `&`, `=`, `%` and invalid UTF-8 as they are
            return b"&".join(k + b"=" + v for k, v in pairs)
        return encoded.encode().replace(b"%", b"%%", self.gen.rng.randint(1, 3))

    def _sigv2(self, method: str, pairs: Pairs) -> Pairs:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        signed = [
            *pairs,
            (b"AWSAccessKeyId", ACCESS_KEY_ID.encode()),
            (b"SignatureVersion", b"2"),
            (b"SignatureMethod", b"HmacSHA256"),
            (b"Timestamp", stamp.encode()),
        ]
        ordered = sorted(signed, key=lambda pair: pair[0])
        host = urllib.parse.urlsplit(self.base_url).netloc.lower()
        to_sign = f"{method}\n{host}\n/\n{encode(ordered)}".encode()
        digest = hmac.new(SECRET_ACCESS_KEY.encode(), to_sign, hashlib.sha256).digest()
        return [*signed, (b"Signature", base64.b64encode(digest))]

    def _sigv4(self, method: str, url: str, body: bytes, headers: dict[str, str]) -> dict[str, str]:
        request = AWSRequest(method=method, url=url, data=body, headers=headers)
        SigV4Auth(self._credentials, "ec2", REGION).add_auth(request)
        return dict(request.headers.items())

    def _break(self, headers: dict[str, str]) -> dict[str, str]:
        rng = self.gen.rng
        broken = dict(headers)
        auth = broken["Authorization"]
        choice = rng.randrange(5)
        if choice == 0:
            broken["Authorization"] = auth[:-1] + ("0" if auth[-1] != "0" else "1")
        elif choice == 1:
            broken["Authorization"] = auth[: rng.randrange(len(auth))]
        elif choice == 2:
            broken["Authorization"] = auth.replace("Credential=", "Credential=" + self.gen.text(5))
        elif choice == 3:
            broken["X-Amz-Date"] = self.gen.text(16)
        else:
            broken["Authorization"] = self.gen.text(rng.randint(0, 300))
        # Header values stay printable ASCII: a client library refuses anything else.
        return {k: "".join(c if " " <= c <= "~" else "?" for c in v) for k, v in broken.items()}


# ---- judging answers --------------------------------------------------------------------------


class BadAnswer(AssertionError):
    pass


def judge(request: Request, status: int, content_type: str, body: bytes) -> str:
    """The EC2 error code of a well-formed answer (or "200"); BadAnswer for anything else."""
    where = f"request #{request.index} ({request.method} {request.action[:40]!r})"
    if status >= 500:
        raise BadAnswer(f"{where}: HTTP {status}: {body[:300]!r}")
    if not content_type.startswith("text/xml"):
        raise BadAnswer(f"{where}: content type {content_type!r}: {body[:300]!r}")
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise BadAnswer(f"{where}: not XML ({exc}): {body[:300]!r}") from None
    if status == 200:
        # Not always the generated action: raw bodies and duplicates may name another one.
        action = root.tag.removeprefix(EC2_NS).removesuffix("Response")
        if action not in ACTIONS or len(root) == 0 or root[0].tag != f"{EC2_NS}requestId":
            raise BadAnswer(f"{where}: success envelope {root.tag}: {body[:300]!r}")
        return "200"
    if status < 400:
        raise BadAnswer(f"{where}: HTTP {status}")
    errors = root.find("Errors/Error")
    if root.tag != "Response" or errors is None or root.find("RequestID") is None:
        raise BadAnswer(f"{where}: error envelope: {body[:300]!r}")
    code, message = errors.findtext("Code"), errors.findtext("Message")
    if not code or message is None:
        raise BadAnswer(f"{where}: error without Code/Message: {body[:300]!r}")
    return code


@dataclass
class Outcome:
    sent: int = 0
    seconds: float = 0.0
    codes: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)


async def run(
    base_url: str,
    count: int,
    *,
    seed: int = 1,
    concurrency: int = 8,
    progress: Callable[[int], None] | None = None,
) -> Outcome:
    """Send ``count`` generated requests over keep-alive connections; judge every answer."""
    factory = RequestFactory(base_url, seed)
    outcome = Outcome()
    queue: asyncio.Queue[Request | None] = asyncio.Queue(maxsize=concurrency * 4)
    started = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=60)

    async def produce() -> None:
        for index in range(count):
            await queue.put(factory.make(index))
        for _ in range(concurrency):
            await queue.put(None)

    async def consume(session: aiohttp.ClientSession) -> None:
        while (request := await queue.get()) is not None:
            try:
                async with session.request(
                    request.method,
                    URL(request.url, encoded=True),
                    headers=request.headers,
                    data=request.body or None,
                ) as response:
                    body = await response.read()
                code = judge(request, response.status, response.content_type, body)
                outcome.codes[code] += 1
            except (BadAnswer, aiohttp.ClientError, TimeoutError) as exc:
                outcome.failures.append(f"{type(exc).__name__}: {exc}")
            outcome.sent += 1
            if progress is not None and outcome.sent % 1000 == 0:
                progress(outcome.sent)

    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, skip_auto_headers=["Content-Type"]
    ) as session:
        await asyncio.gather(produce(), *(consume(session) for _ in range(concurrency)))
    outcome.seconds = time.monotonic() - started
    return outcome
