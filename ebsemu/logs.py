"""Log set-up: every line emitted while a request is handled (and by the jobs it starts)
carries its RequestId, in text or as one JSON object per line.

The request id lives in a context variable that the API sets per request; asyncio copies the
context into the tasks a request creates, so a job's lines carry the id of the request that
started it. A Filter on the handler copies it onto each record as ``request_id``. Messages are
written as the code formats them: nothing here adds request parameters, so what the code keeps
out of its messages (secrets) stays out of the log. Another Filter redacts signatures and
credentials in what other code logs (aiohttp logs the request line of a request it cannot
parse, presigned query and all).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TextIO

REQUEST_ID: ContextVar[str | None] = ContextVar("ebsemu_request_id", default=None)
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(request_tag)s: %(message)s"


class RequestIdFilter(logging.Filter):
    """Sets ``request_id`` (the current request's, unless the caller gave one) and
    ``request_tag`` (`` [id]``, or empty outside a request) on every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = getattr(record, "request_id", None) or REQUEST_ID.get()
        record.request_id = request_id
        record.request_tag = f" [{request_id}]" if request_id else ""
        return True


# A signature, a credential or a session token in a request line or header as third-party
# code may log it (aiohttp's server logs the whole request line of one it cannot parse). The
# names are matched in any case; the value runs to the next separator.
_SECRET_NAMES = ("signature=", "credential=", "security-token=", "awsaccesskeyid=")
_SECRETS = re.compile(
    r"(signature|credential|security-token|awsaccesskeyid)=[^&\s,;'\"]+", re.IGNORECASE
)
REDACTED = "<redacted>"
QUIET_BELOW_INFO = ("aiosqlite", "asyncpg")


def _holds_secret(text: str) -> bool:
    # Plain substring tests first: a case-blind regex costs a record ten times as much.
    if "=" not in text:
        return False
    lowered = text.lower()
    return any(name in lowered for name in _SECRET_NAMES)


def redact(text: str) -> str:
    """``text`` with the value of every signature, credential and token parameter blanked."""
    return _SECRETS.sub(rf"\1={REDACTED}", text) if _holds_secret(text) else text


class RedactSecrets(logging.Filter):
    """Redacts a record's message and exception text: what a library logs about a request is
    not ours to word. A redacted exception is kept as text only (``exc_text``), so no
    formatter can render it afresh."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if _holds_secret(message):
            record.msg, record.args = redact(message), None
        text = record.exc_text
        if not text and record.exc_info and record.exc_info[0] is not None:
            # formatted once: the formatters take the text (logging's cache of it) as it is
            text = record.exc_text = self._formatter.formatException(record.exc_info)
        if text and _holds_secret(text):
            record.exc_info, record.exc_text = None, redact(text)
        return True


class _Seconds:
    """A record's second formatted once for every record of that second (a busy server logs
    several lines a request: strftime for each was a measurable share of a request's CPU)."""

    def __init__(self, render: Callable[[int], str]) -> None:
        self._render = render
        self._second = -1
        self._text = ""

    def __call__(self, created: float) -> str:
        second = int(created)
        if second != self._second:  # formatters run under their handler's lock
            self._text, self._second = self._render(second), second
        return self._text


class TextFormatter(logging.Formatter):
    """logging's own text format (local time, `YYYY-MM-DD HH:MM:SS,mmm`), each second formatted
    once."""

    def __init__(self, fmt: str) -> None:
        super().__init__(fmt)
        self._seconds = _Seconds(
            lambda second: time.strftime(self.default_time_format, self.converter(second))
        )

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        return f"{self._seconds(record.created)},{int(record.msecs):03d}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id (inside a request),
    exception (with a traceback)."""

    def __init__(self) -> None:
        super().__init__()
        self._seconds = _Seconds(
            lambda second: datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        )

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, str] = {
            "time": f"{self._seconds(record.created)}{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            entry["request_id"] = request_id
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:  # logging's cache of the text, which RedactSecrets may have redacted
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str, log_format: str = "text", stream: TextIO | None = None) -> None:
    """Send every logger's records to ``stream`` (standard error) at ``level``."""
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {log_format!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.addFilter(RedactSecrets())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
    # Database drivers log each statement with its parameters at DEBUG: access keys' secrets
    # among them. Their DEBUG lines are never ours to show.
    for driver in QUIET_BELOW_INFO:
        logging.getLogger(driver).setLevel(max(logging.INFO, logging.getLogger().level))
