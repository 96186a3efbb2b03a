"""Timestamps as EC2 writes them: `2024-01-02T03:04:05.000Z` (UTC, milliseconds)."""

from __future__ import annotations

from datetime import UTC, datetime


def to_wire(moment: datetime) -> str:
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def from_wire(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
