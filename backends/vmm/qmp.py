"""A small asyncio client for the QEMU Machine Protocol (QMP) over a unix socket.

One connection, one command at a time per caller (commands carry ids, so several may be in
flight). Events are kept from the moment the connection is up, so a caller registers interest in
an event (``expect_event``) before sending the command that causes it and cannot miss it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from backends.vmm.errors import VmmError

log = logging.getLogger(__name__)

JsonObject = dict[str, Any]
EventMatch = Callable[[JsonObject], bool]

LINE_LIMIT = 16 * 1024 * 1024  # query-pci of a large VM is far smaller
RECENT_EVENTS = 64
SECRET_KEYS = frozenset({"data", "password", "key", "secret"})


class QmpError(VmmError):
    """QEMU answered a command with an error."""

    def __init__(self, command: str, error_class: str, desc: str) -> None:
        super().__init__(f"{command}: {error_class}: {desc}")
        self.command = command
        self.error_class = error_class
        self.desc = desc


class QmpConnectionError(VmmError):
    """The QMP socket cannot be reached, or the connection broke."""


class QmpGone(QmpConnectionError):
    """No QEMU listens on the QMP socket: it is not there, or nothing accepts on it (the QEMU
    that made it has exited). A QEMU that is there but takes no connection now (stopped,
    busy, its one-connection backlog full) is a QmpConnectionError or a QmpTimeout."""


class QmpTimeout(VmmError):
    """QEMU did not answer in time."""


class QmpClient:
    """A connected, negotiated QMP session. Use ``await QmpClient.connect(path, ...)``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str):
        self._reader = reader
        self._writer = writer
        self._name = name
        self._ids = itertools.count(1)
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._waiters: list[tuple[str, EventMatch, asyncio.Future[JsonObject]]] = []
        self.recent_events: collections.deque[JsonObject] = collections.deque(maxlen=RECENT_EVENTS)
        self.greeting: JsonObject = {}
        self._closed: Exception | None = None
        self._reader_task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, path: Path, *, timeout: float) -> QmpClient:
        """Open the socket, read the greeting and leave capabilities negotiation mode."""
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_unix_connection(str(path), limit=LINE_LIMIT)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise QmpGone(f"no QEMU listens on QMP socket {path}: {exc}") from exc
        except TimeoutError:
            raise QmpTimeout(f"QMP socket {path} took no connection in {timeout:g} s") from None
        except OSError as exc:  # EAGAIN: its backlog is full (a stopped or busy QEMU)
            raise QmpConnectionError(f"cannot connect to QMP socket {path}: {exc}") from exc
        client = cls(reader, writer, path.name)
        try:
            async with asyncio.timeout(timeout):
                greeting = await client._read_message()
                if "QMP" not in greeting:
                    raise QmpConnectionError(f"{path}: not a QMP greeting")
                client.greeting = greeting["QMP"]
                client._reader_task = asyncio.create_task(client._read_loop())
                await client.execute("qmp_capabilities", timeout=timeout)
        except TimeoutError:
            await client.close()
            raise QmpTimeout(f"{path}: no QMP greeting in {timeout:g} s") from None
        except BaseException:
            await client.close()
            raise
        return client

    async def __aenter__(self) -> QmpClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def execute(
        self, command: str, arguments: Mapping[str, Any] | None = None, *, timeout: float
    ) -> Any:
        """Run one command and return its ``return`` value; raise QmpError on an error reply."""
        if self._closed is not None:
            raise QmpConnectionError(f"{self._name}: connection closed: {self._closed}")
        command_id = f"ebs-{next(self._ids)}"
        message: JsonObject = {"execute": command, "id": command_id}
        if arguments:
            message["arguments"] = dict(arguments)
        log.debug("%s: %s %s", self._name, command, _masked(arguments or {}))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[command_id] = future
        try:
            self._writer.write(json.dumps(message).encode() + b"\n")
            async with asyncio.timeout(timeout):
                await self._writer.drain()
                reply = await future
        except TimeoutError:
            raise QmpTimeout(f"{self._name}: {command} unanswered after {timeout:g} s") from None
        except OSError as exc:
            raise QmpConnectionError(f"{self._name}: {command}: {exc}") from exc
        finally:
            self._pending.pop(command_id, None)
        if "error" in reply:
            error = reply["error"]
            raise QmpError(command, str(error.get("class", "")), str(error.get("desc", "")))
        return reply.get("return")

    def expect_event(
        self, name: str, match: EventMatch = lambda data: True
    ) -> asyncio.Future[JsonObject]:
        """A future for the next event ``name`` whose data satisfies ``match``. Register it
        before sending the command that causes the event."""
        future: asyncio.Future[JsonObject] = asyncio.get_running_loop().create_future()
        self._waiters.append((name, match, future))
        return future

    async def close(self) -> None:
        if self._closed is None:
            self._closed = QmpConnectionError("closed by client")
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
            self._reader_task = None
        self._fail_all(self._closed)
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    async def _read_message(self) -> JsonObject:
        try:
            line = await self._reader.readline()
        except OSError as exc:  # ECONNRESET when QEMU dies mid-session
            raise QmpConnectionError(f"{self._name}: {exc}") from exc
        if not line:
            raise QmpConnectionError(f"{self._name}: QEMU closed the connection")
        try:
            message = json.loads(line)
        except ValueError as exc:
            raise QmpConnectionError(f"{self._name}: bad QMP message: {exc}") from exc
        if not isinstance(message, dict):
            raise QmpConnectionError(f"{self._name}: QMP message is not an object")
        return message

    async def _read_loop(self) -> None:
        try:
            while True:
                message = await self._read_message()
                if "event" in message:
                    self._dispatch_event(message)
                    continue
                future = self._pending.get(str(message.get("id")))
                if future is not None and not future.done():
                    future.set_result(message)
                else:
                    log.debug("%s: unsolicited reply %s", self._name, message)
        except Exception as exc:  # any failure to read ends the session; callers see it
            self._closed = exc
            self._fail_all(QmpConnectionError(f"{self._name}: {exc}"))

    def _dispatch_event(self, message: JsonObject) -> None:
        self.recent_events.append(message)
        name = message["event"]
        data = message.get("data") or {}
        log.debug("%s: event %s %s", self._name, name, data)
        keep: list[tuple[str, EventMatch, asyncio.Future[JsonObject]]] = []
        for waiter in self._waiters:
            wanted, match, future = waiter
            if future.done():
                continue
            if wanted == name and match(data):
                future.set_result(message)
            else:
                keep.append(waiter)
        self._waiters = keep

    def _fail_all(self, exc: Exception) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(exc)
        for _, _, waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(exc)
                waiter.exception()  # retrieved: a waiter nobody awaits must not warn
        self._waiters = []


def _masked(arguments: Mapping[str, Any]) -> JsonObject:
    """The arguments with every secret-looking value replaced, recursively, for logging."""
    out: JsonObject = {}
    for key, value in arguments.items():
        if key in SECRET_KEYS:
            out[key] = "***"
        elif isinstance(value, Mapping):
            out[key] = _masked(value)
        else:
            out[key] = value
    return out
