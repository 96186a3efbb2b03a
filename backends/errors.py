"""Errors raised by backends. The service translates them at the backend boundary."""

from __future__ import annotations

import re

from hostcmds import CommandError, HostCommandError, HostUnreachable


class BackendError(Exception):
    """A backend operation failed; the message is for logs, not for API clients."""


class SetupError(BackendError):
    """A backend's host is not set up to run it (missing tool, directory, permission)."""


class CapacityError(BackendError):
    """The host cannot hold what was asked (no space, size beyond what the backend supports)."""


class CorruptBlockError(BackendError):
    """A stored snapshot block does not match its SHA-256 digest."""


class MissingBlockError(BackendError):
    """A snapshot block the manifest names is not in the block store."""


class DomainNotFound(BackendError):
    """A VMM domain does not exist (or no longer runs); every VMM driver raises a subclass."""


class HostUnavailable(BackendError):
    """The backend's host could not be reached: the operation did not run, or its outcome is
    unknown (the connection dropped while it ran)."""


def command_failure(exc: HostCommandError, doing: str, no_space: re.Pattern[str]) -> BackendError:
    """The backend-boundary error for a failed host command: HostUnavailable when its host
    could not be reached, CapacityError when its stderr matches ``no_space``. ``doing`` (what
    failed, may be empty) prefixes the message."""
    message = f"{doing}: {exc}" if doing else str(exc)
    if isinstance(exc, HostUnreachable):
        return HostUnavailable(message)
    if isinstance(exc, CommandError) and no_space.search(exc.stderr):
        return CapacityError(message)
    return BackendError(message)
