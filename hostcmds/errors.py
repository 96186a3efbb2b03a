"""Errors raised while rendering or running a host command.

Every message and attribute here is already masked: secrets never reach an exception.
"""

from __future__ import annotations

from collections.abc import Sequence


class HostCommandError(Exception):
    """Base of every error this package raises."""


class TemplateError(HostCommandError):
    """A command template is malformed, unknown, or cannot be rendered."""


class MissingValueError(TemplateError):
    """A template names a placeholder for which no value was given."""

    def __init__(self, template: str, name: str) -> None:
        super().__init__(f"no value for <{name}> in template {template!r}")
        self.template = template
        self.name = name


class UnsafeValueError(TemplateError):
    """A value to substitute holds a character that is never allowed in a command argument."""

    def __init__(self, name: str, reason: str) -> None:
        # The value itself is not repeated: it may be a secret.
        super().__init__(f"value for <{name}> refused: {reason}")
        self.name = name
        self.reason = reason


class CommandError(HostCommandError):
    """A command ran and failed (non-zero exit), or could not be started."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        summary = stderr.strip().splitlines()[-1] if stderr.strip() else "no stderr"
        super().__init__(f"{argv[0] if argv else '?'} exited {returncode}: {summary}")
        self.argv: tuple[str, ...] = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr


class CommandNotFound(CommandError):
    """The program named by argv[0] does not exist on the host (exit status 127)."""


class CommandTimeout(HostCommandError):
    """A command did not finish in time and was killed."""

    def __init__(self, argv: Sequence[str], timeout: float) -> None:
        super().__init__(f"{argv[0] if argv else '?'} did not finish in {timeout:g} s; killed")
        self.argv: tuple[str, ...] = tuple(argv)
        self.timeout = timeout


class HostUnreachable(HostCommandError):
    """The host cannot be used: down, refusing connections, silent, or the connection dropped.

    ``host`` is ``user@host:port``; the message never holds a secret.
    """

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"ssh {host}: {reason}")
        self.host = host
        self.reason = reason


class HostKeyRejected(HostUnreachable):
    """The host's key is not the pinned key, or not in the known_hosts file."""


class HostAuthFailed(HostUnreachable):
    """The host refused the client key (or the key file could not be read)."""
