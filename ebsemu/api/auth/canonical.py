"""AWS's canonical forms of the parts of a request, shared by SigV4 and SigV2.

Everything here works on the request as received: the raw path and query string (still
percent-encoded) and the body bytes. Values are decoded to bytes and re-encoded the way AWS
does (RFC 3986: only letters, digits and ``-_.~`` stay as they are, uppercase hex escapes),
so a client that encodes differently (``+`` or ``%20`` for a space, ``%7e`` or ``~``) is
judged on what it meant, exactly as the handler will read it.
"""

from __future__ import annotations

import functools
import urllib.parse
from collections.abc import Iterable, Mapping

from multidict import CIMultiDict, CIMultiDictProxy

Pair = tuple[bytes, bytes]


def to_bytes(text: str) -> bytes:
    """UTF-8, keeping bytes that arrived undecodable (aiohttp's surrogate escapes) as they were."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def aws_quote(data: bytes) -> str:
    return urllib.parse.quote(data, safe="-_.~")


def _unquote(part: bytes) -> bytes:
    return urllib.parse.unquote_to_bytes(part.replace(b"+", b" "))


def parse_form(raw: bytes) -> list[Pair]:
    """`a=1&b=&c` as (name, value) pairs of decoded bytes; empty pieces are skipped."""
    pairs: list[Pair] = []
    for piece in raw.split(b"&"):
        if piece:
            name, _, value = piece.partition(b"=")
            pairs.append((_unquote(name), _unquote(value)))
    return pairs


def parse_query(raw: str) -> list[Pair]:
    return parse_form(to_bytes(raw))


def canonical_query(pairs: Iterable[Pair]) -> str:
    """SigV4: encoded pairs sorted by encoded name, then encoded value."""
    encoded = sorted((aws_quote(name), aws_quote(value)) for name, value in pairs)
    return "&".join(f"{name}={value}" for name, value in encoded)


def sorted_params(pairs: Iterable[Pair]) -> str:
    """SigV2: pairs sorted by the bytes of the decoded name, then encoded."""
    ordered = sorted(pairs, key=lambda pair: pair[0])
    return "&".join(f"{aws_quote(name)}={aws_quote(value)}" for name, value in ordered)


def remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4, and empty segments dropped, as AWS normalizes a path."""
    if not path:
        return "/"
    kept: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if kept:
                kept.pop()
        elif segment and segment != ".":
            kept.append(segment)
    first = "/" if path.startswith("/") else ""
    last = "/" if path.endswith("/") and kept else ""
    return first + "/".join(kept) + last


@functools.lru_cache(maxsize=256)  # nearly always "/"
def canonical_uri(raw_path: str) -> str:
    """SigV4 for every service but S3: the normalized path, encoded once more."""
    return urllib.parse.quote(to_bytes(remove_dot_segments(raw_path)), safe="/~")


def header_values(headers: Mapping[str, str], name: str) -> list[str]:
    """Every value of one header, case-insensitively; works on dicts and multidicts."""
    if isinstance(headers, CIMultiDictProxy | CIMultiDict):  # aiohttp's: looked up, not scanned
        return headers.getall(name, [])
    wanted = name.lower()
    return [value for key, value in headers.items() if key.lower() == wanted]


def trim_all(value: str) -> str:
    """Leading and trailing whitespace gone, inner runs collapsed to one space."""
    return " ".join(value.split())
