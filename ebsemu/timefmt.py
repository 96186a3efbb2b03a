"""Timestamps as EC2 writes them: `2024-01-02T03:04:05.000Z` (UTC, milliseconds)."""

from __future__ import annotations

from datetime import UTC, datetime


def to_wire(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("a naive datetime has no place on the wire: give it a time zone")
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def from_wire(text: str) -> datetime:
    """Inverse of ``to_wire`` (fromisoformat: several times faster than strptime)."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"timestamp without a time zone: {text!r}")
    return moment.astimezone(UTC)
