"""A raw EC2 Query client over aiohttp: signed form bodies out, a few regex reads of the XML in.

No botocore model, no XML parsing: what it measures is the server, not the client library.
"""

from __future__ import annotations

import re
import urllib.parse
import uuid
from collections.abc import Mapping
from types import TracebackType
from typing import Self

import aiohttp

from bench.sigv4 import Signer

API_VERSION = "2016-11-15"
ZONE = "us-east-1a"
REGION = "us-east-1"
# The key pair both servers are given (moto accepts any; ebsemu verifies the signature).
ACCESS_KEY_ID = "AKIDBENCH"
SECRET_ACCESS_KEY = "bench-secret"
_VOLUME_ID = re.compile(rb"<volumeId>(vol-[0-9a-f]+)</volumeId>")
_SNAPSHOT_ID = re.compile(rb"<snapshotId>(snap-[0-9a-f]+)</snapshotId>")
_NEXT_TOKEN = re.compile(rb"<nextToken>([^<]+)</nextToken>")
_ERROR_CODE = re.compile(rb"<Code>([^<]+)</Code>")


class CallError(Exception):
    """A call answered with an HTTP error status."""


def form(action: str, params: Mapping[str, str | int]) -> bytes:
    pairs = [("Action", action), ("Version", API_VERSION)]
    pairs += [(key, str(value)) for key, value in params.items()]
    return urllib.parse.urlencode(pairs).encode()


def create_volume_params(index: int, size_gib: int = 1) -> dict[str, str | int]:
    """CreateVolume as boto3 sends it for the benchmark: Size, 2 tags, a ClientToken."""
    return {
        "AvailabilityZone": ZONE,
        "Size": size_gib,
        "ClientToken": str(uuid.uuid4()),
        "TagSpecification.1.ResourceType": "volume",
        "TagSpecification.1.Tag.1.Key": "Name",
        "TagSpecification.1.Tag.1.Value": f"bench-{index}",
        "TagSpecification.1.Tag.2.Key": "group",
        "TagSpecification.1.Tag.2.Value": group_of(index),
    }


def group_of(index: int) -> str:
    """The `group` tag of the index-th volume: each of its 100 values tags 1% of them."""
    return f"g{index % 100:02d}"


class RawClient:
    def __init__(self, url: str, *, connections: int, timeout: float) -> None:
        self._url = url.rstrip("/") + "/"
        self._host = urllib.parse.urlsplit(self._url).netloc
        self._signer = Signer(ACCESS_KEY_ID, SECRET_ACCESS_KEY, REGION)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections),
            timeout=aiohttp.ClientTimeout(total=timeout),
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._session.close()

    async def call(self, action: str, params: Mapping[str, str | int]) -> bytes:
        body = form(action, params)
        headers = self._signer.headers(self._host, body)
        async with self._session.post(self._url, data=body, headers=headers) as response:
            payload = await response.read()
            if response.status >= 300:
                code = _ERROR_CODE.search(payload)
                shown = code.group(1).decode() if code else payload[:200].decode(errors="replace")
                raise CallError(f"{action}: HTTP {response.status} {shown}")
            return payload

    async def create_volume(self, index: int, size_gib: int = 1) -> str:
        payload = await self.call("CreateVolume", create_volume_params(index, size_gib))
        return first(_VOLUME_ID, payload)

    async def describe_volumes(self, params: Mapping[str, str | int]) -> tuple[int, str | None]:
        """One page: (volumes in it, NextToken)."""
        payload = await self.call("DescribeVolumes", params)
        token = _NEXT_TOKEN.search(payload)
        return len(_VOLUME_ID.findall(payload)), token.group(1).decode() if token else None

    async def list_all_volumes(self, page_size: int) -> int:
        count, token = await self.describe_volumes({"MaxResults": page_size})
        while token:
            got, token = await self.describe_volumes({"MaxResults": page_size, "NextToken": token})
            count += got
        return count

    async def describe_snapshots_self(self) -> int:
        payload = await self.call("DescribeSnapshots", {"Owner.1": "self"})
        return len(_SNAPSHOT_ID.findall(payload))


def first(pattern: re.Pattern[bytes], payload: bytes) -> str:
    found = pattern.search(payload)
    if found is None:
        raise CallError(f"no {pattern.pattern!r} in the answer: {payload[:200]!r}")
    return found.group(1).decode()
