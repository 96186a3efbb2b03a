"""Request dates as the signers write them, and the 15-minute window AWS allows."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

from ebsemu.api.auth import failures

MAX_SKEW = timedelta(minutes=15)
AMZ_DATE = "%Y%m%dT%H%M%SZ"
_AMZ_DATE_SHAPE = re.compile(r"\d{8}T\d{6}Z")


def parse_amz_date(text: str) -> datetime | None:
    """SigV4's ISO 8601 basic format, `20240102T030405Z`, and nothing looser."""
    if not _AMZ_DATE_SHAPE.fullmatch(text):
        return None
    try:  # the fields by position: the shape is fixed, and strptime costs ten times more
        return datetime(
            int(text[0:4]),
            int(text[4:6]),
            int(text[6:8]),
            int(text[9:11]),
            int(text[11:13]),
            int(text[13:15]),
            tzinfo=UTC,
        )
    except ValueError:
        return None


def parse_http_date(text: str) -> datetime | None:
    """An RFC 7231 `Date` header, which SigV4 accepts when X-Amz-Date is absent."""
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return _in_utc(moment)


def parse_iso8601(text: str) -> datetime | None:
    """SigV2's Timestamp/Expires: `2024-01-02T03:04:05Z`, fractions and offsets allowed."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return _in_utc(moment)


def _in_utc(moment: datetime) -> datetime | None:
    """Naive means UTC; None when the shift to UTC leaves datetime's range."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        return None


def check_fresh(now: datetime, signed_at: datetime) -> None:
    """RequestExpired when the request's date is more than 15 minutes from `now`, either way."""
    if abs(now - signed_at) > MAX_SKEW:
        raise failures.expired(signed_at)


def check_not_after(now: datetime, deadline: datetime) -> None:
    if now > deadline:
        raise failures.expired()
