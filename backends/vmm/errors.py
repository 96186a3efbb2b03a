"""Errors the VMM drivers raise. All are BackendErrors: messages are for logs, not clients."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from backends import errors as backend_errors
from backends.errors import BackendError
from hostcmds import HostCommandError


class VmmError(BackendError):
    """A VMM operation failed."""


class DomainNotFound(VmmError, backend_errors.DomainNotFound):
    """The domain does not exist (or no longer runs) on this VMM."""


class InvalidName(VmmError):
    """A volume id or device name the driver cannot use."""


class AttachError(VmmError):
    """Attaching failed; whatever the attach had done was undone."""


class NoFreeSlot(AttachError):
    """The domain has no free hot-plug slot left."""


class DeviceInUse(AttachError):
    """The device name asked for is already used by another disk in the domain."""


class UnsupportedSource(AttachError):
    """The driver cannot attach this kind of volume source."""


class DetachError(VmmError):
    """Detaching failed; the disk may still be attached."""


class DetachTimeout(DetachError):
    """The domain did not release the disk in time; the unplug request stays pending and a
    later detach completes it."""


P = ParamSpec("P")
R = TypeVar("R")


def translates_command_errors(
    method: Callable[P, Awaitable[R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """Turn any hostcmds error escaping a driver method into a VmmError (the backend boundary:
    the service sees BackendErrors only)."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except HostCommandError as exc:
            raise VmmError(str(exc)) from exc

    return wrapper
