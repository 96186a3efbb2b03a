"""The one interface every host command goes through, and what it returns."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from hostcmds.errors import CommandError

MASK = "***"


@dataclass(frozen=True)
class CommandResult:
    """A finished command. ``argv`` is masked; stdout and stderr are as the command wrote them."""

    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        """stdout decoded as UTF-8 (undecodable bytes replaced)."""
        return self.stdout.decode("utf-8", "replace")


@runtime_checkable
class CommandRunner(Protocol):
    """Runs one argv on some host (this one, or a remote one) and waits for it.

    ``timeout`` bounds the whole call; on expiry the command is killed and CommandTimeout raised.
    ``secrets`` are strings (CHAP secrets, keys) masked wherever argv or output is logged or put
    in an exception. With ``check`` a non-zero exit raises CommandError.
    """

    async def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        input: bytes | None = None,
        secrets: Sequence[str] = (),
        check: bool = True,
    ) -> CommandResult: ...


@runtime_checkable
class StreamingRunner(Protocol):
    """A runner that can also read a command's stdout as it is written, from a worker thread
    (no event loop): for commands whose output is as large as a volume's data.

    ``read(n)`` gives up to n more bytes, b"" at the end, each within ``timeout``. Leaving the
    block checks the exit status (CommandError); leaving it by an exception kills the command.
    """

    def read_stream(
        self, argv: Sequence[str], *, timeout: float, secrets: Sequence[str] = ()
    ) -> AbstractContextManager[Callable[[int], bytes]]: ...


def mask(text: str, secrets: Sequence[str]) -> str:
    """Replace every occurrence of every non-empty secret in ``text``."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def mask_argv(argv: Sequence[str], secrets: Sequence[str]) -> tuple[str, ...]:
    return tuple(mask(arg, secrets) for arg in argv)


def validate_argv(argv: Sequence[str]) -> None:
    """Refuse what no program can receive: an empty argv, or an argument holding NUL."""
    if isinstance(argv, str):
        raise TypeError("argv must be a sequence of arguments, not a string")
    if not argv:
        raise ValueError("argv is empty")
    if any("\x00" in arg for arg in argv):
        raise ValueError("an argument holds a NUL character")


def finish(
    masked_argv: tuple[str, ...],
    returncode: int,
    stdout: bytes,
    stderr: bytes,
    *,
    secrets: Sequence[str],
    check: bool,
) -> CommandResult:
    """Build the result, or raise CommandError (with masked stderr) if checked and failed."""
    if check and returncode != 0:
        raise CommandError(masked_argv, returncode, mask(decode(stderr), secrets))
    return CommandResult(masked_argv, returncode, stdout, stderr)


def decode(data: bytes) -> str:
    return data.decode("utf-8", "replace")
