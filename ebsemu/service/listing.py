"""Shared rules of the Describe calls: id formats, filters, MaxResults and NextToken."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TypeVar

from ebsemu import errors
from ebsemu.service.wildcard import Wildcard
from ebsemu.store.base import Filter, ListQuery, Page, UnknownFilterError

_ID = {
    "vol": re.compile(r"vol-(?:[0-9a-f]{8}|[0-9a-f]{17})"),
    "snap": re.compile(r"snap-(?:[0-9a-f]{8}|[0-9a-f]{17})"),
}
INSTANCE_ID = re.compile(r"i-(?:[0-9a-f]{8}|[0-9a-f]{17})")
_MALFORMED = {"vol": errors.InvalidVolumeIDMalformed, "snap": errors.InvalidSnapshotIDMalformed}


def check_id(prefix: str, value: str) -> str:
    if not _ID[prefix].fullmatch(value):
        shown = value if len(value) <= 64 else value[:64] + "…"
        raise _MALFORMED[prefix](f'Invalid id: "{shown}" (expecting "{prefix}-...")')
    return value


def check_ids(prefix: str, values: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(check_id(prefix, value) for value in values))


# EC2's limit on the filter values of one call. A filter named without values counts as one:
# it is a condition too.
MAX_FILTER_VALUES = 200


def filters(raw: Sequence[Mapping[str, object]] | None) -> tuple[Filter, ...]:
    out: list[Filter] = []
    for item in raw or ():
        name = item.get("Name")
        if not isinstance(name, str) or not name:
            raise errors.InvalidParameterValue("The filter 'null' is invalid")
        values = item.get("Values") or []
        assert isinstance(values, list)
        out.append(Filter(name, tuple(str(v) for v in values)))
    if sum(max(1, len(flt.values)) for flt in out) > MAX_FILTER_VALUES:
        raise errors.FilterLimitExceeded(
            f"The maximum number of filter values specified on a single call is {MAX_FILTER_VALUES}"
        )
    return tuple(out)


def unknown_filter(name: str) -> errors.ApiError:
    return errors.InvalidParameterValue(f"The filter '{name[:128]}' is invalid")


def page_size(
    max_results: int | None, *, low: int, high: int, ids_given: bool, ids_param: str
) -> int | None:
    """AWS's MaxResults rule: low..high (above high is capped), not with explicit ids."""
    if max_results is None:
        return None
    if ids_given:
        raise errors.InvalidParameterCombination(
            f"The parameter {ids_param} cannot be used with the parameter maxResults"
        )
    if max_results < low:
        raise errors.InvalidParameterValue(
            f"Value ( {max_results} ) for parameter maxResults is invalid. "
            f"Expecting a value greater than {low}."
        )
    return min(max_results, high)


def encode_token(kind: str, seq: int) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{seq}".encode()).decode().rstrip("=")


MAX_SEQ = 2**63 - 1  # the largest integer SQLite and PostgreSQL's bigint hold


def decode_token(kind: str, token: str | None) -> int:
    """The position a NextToken points after; 0 when there is no token."""
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        got_kind, seq = text.split(":", 1)
        # ASCII digits only (int() takes any script's), and a position the store can compare.
        if got_kind == kind and seq.isascii() and seq.isdigit() and int(seq) <= MAX_SEQ:
            return int(seq)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise errors.InvalidPaginationToken(f"Invalid pagination token: {token[:64]}")


def match_filters(fields: Mapping[str, str], flts: Sequence[Filter]) -> bool:
    """In-memory filtering for small, fixed lists (zones, regions). Unknown names raise."""
    for flt in flts:
        if flt.name not in fields:
            raise unknown_filter(flt.name)
        value = fields[flt.name]
        if flt.values and not any(Wildcard.parse(v).fullmatch(value) for v in flt.values):
            return False
    return True


T = TypeVar("T")


async def fetch_page(
    list_page: Callable[[ListQuery], Awaitable[Page[T]]], query: ListQuery
) -> Page[T]:
    """One page from the store, an unknown filter name answered as EC2 does."""
    try:
        return await list_page(query)
    except UnknownFilterError as exc:
        raise unknown_filter(str(exc)) from None


def next_token(kind: str, page: Page[T]) -> str | None:
    """The NextToken of a page: None on the last one."""
    return encode_token(kind, page.last_seq) if page.last_seq else None
