"""The storage hosts of the region and the scheduler that places each new volume on one.

Every volume records the host that holds its bytes (``Volume.storage_host``), and every
snapshot the host that holds its frozen view while it is pending; each storage call goes to
that host's backend. A new volume goes to the host of its zone with the most free space (ties
by name) that can hold what it needs at once (a restore's data); a zone whose hosts are all
full is InsufficientVolumeCapacity. A host whose free space is not known (it could not be
reached since the service started) is chosen only when no host of the zone with known space
can take the volume: its job then finds out whether the host is back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from backends.base import ExportBackend, StorageBackend
from backends.errors import BackendError, HostUnavailable, SetupError
from ebsemu import errors
from ebsemu.store.base import Store
from hostcmds import HostUnreachable

log = logging.getLogger(__name__)

# Removing something from a storage host that cannot be reached is retried until the host
# answers: nothing is reported gone while its bytes may still be on the host.
RETRY_FIRST_SECONDS = 1.0
RETRY_MAX_SECONDS = 60.0


def host_unreachable(exc: BackendError) -> bool:
    """True when the backend failed because its host could not be reached (SSH down)."""
    return isinstance(exc, HostUnavailable) or isinstance(exc.__cause__, HostUnreachable)


async def until_reachable(host: str, what: str, call: Callable[[], Awaitable[None]]) -> None:
    """Run ``call``; while it fails because storage host ``host`` cannot be reached, log why
    and run it again after a growing pause (cancelling the job stops it; a recorded job
    resumes at the next start). Any other failure is raised."""
    delay = RETRY_FIRST_SECONDS
    while True:
        try:
            await call()
            return
        except BackendError as exc:
            if not host_unreachable(exc):
                raise
            log.warning(
                "%s: storage host %s cannot be reached (%s); retrying in %g s",
                what,
                host,
                exc,
                delay,
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, RETRY_MAX_SECONDS)


@dataclass(frozen=True)
class StorageHostEntry:
    """One configured storage host: its backend, the zone it serves (None: every zone), and
    its export backend (None: the VMM opens the volume's path directly)."""

    name: str
    zone: str | None
    backend: StorageBackend
    label: str  # for logs and check-host: "NAME (backend, url)"
    export: ExportBackend | None = None


class StorageHosts:
    """The configured storage hosts, by name."""

    def __init__(self, entries: list[StorageHostEntry]) -> None:
        if not entries:
            raise ValueError("at least one storage host is needed")
        self._entries = {entry.name: entry for entry in entries}

    @classmethod
    def single(cls, backend: StorageBackend, export: ExportBackend | None = None) -> StorageHosts:
        """One storage host serving every zone, as the one ``[storage]`` section configures."""
        return cls([StorageHostEntry("default", None, backend, "storage", export)])

    @property
    def entries(self) -> list[StorageHostEntry]:
        return list(self._entries.values())

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entry(self, name: str) -> StorageHostEntry:
        try:
            return self._entries[name]
        except KeyError:
            raise BackendError(f"storage host {name!r} is not configured") from None

    def backend(self, name: str) -> StorageBackend:
        return self.entry(name).backend

    def in_zone(self, zone: str) -> list[StorageHostEntry]:
        return [e for e in self._entries.values() if e.zone is None or e.zone == zone]

    def place(self, zone: str, needed_bytes: int) -> str:
        """The host of ``zone`` a new volume goes to; InsufficientVolumeCapacity if every host
        there is known to lack ``needed_bytes`` (more than 0 free for an empty volume)."""
        known: list[tuple[int, str]] = []
        unknown: list[str] = []
        for entry in self.in_zone(zone):
            try:
                known.append((entry.backend.free_bytes(), entry.name))
            except BackendError as exc:
                log.warning("storage host %s: free space unknown (%s)", entry.name, exc)
                unknown.append(entry.name)
        fitting = sorted((-free, name) for free, name in known if free > needed_bytes)
        if fitting:
            return fitting[0][1]
        if unknown:
            return sorted(unknown)[0]
        log.warning(
            "zone %s: no storage host has %d bytes free (%s)",
            zone,
            needed_bytes,
            ", ".join(f"{name}: {free}" for free, name in known) or "no host",
        )
        raise errors.InsufficientVolumeCapacity()

    async def check_setup(self) -> None:
        """Check every host's storage and export. A misconfigured host stops the start
        (SetupError); one that cannot be reached now is logged and skipped: its volumes fail
        until it is back."""
        for entry in self._entries.values():
            await self._check(entry, entry.backend.check_setup)
            if entry.export is not None:
                await self._check(entry, entry.export.check_setup)

    @staticmethod
    async def _check(entry: StorageHostEntry, probe: Callable[[], Awaitable[None]]) -> None:
        try:
            await probe()
        except SetupError as exc:
            if entry.zone is None:
                raise  # the one [storage] section: its messages stay as they were
            if not isinstance(exc.__cause__, HostUnreachable):
                raise SetupError(f"storage host {entry.label}: {exc}") from exc
            log.error(
                "storage host %s is unreachable (%s); starting without it, its volumes "
                "fail until it is back",
                entry.label,
                exc,
            )

    async def check_in_use(self, store: Store) -> None:
        """Refuse to start when volumes or pending snapshots are on a host the configuration
        no longer names (their bytes would be out of reach)."""
        lost = {
            host: ids for host, ids in (await store.storage_hosts_in_use()).items()
            if host not in self._entries
        }  # fmt: skip
        if lost:
            shown = "; ".join(
                f"{host}: {', '.join(ids[:5])}{' …' if len(ids) > 5 else ''}"
                for host, ids in sorted(lost.items())
            )
            raise SetupError(
                f"volumes or snapshots are on storage hosts the configuration does not name "
                f"({shown}); add a [storage NAME] section for each (the one [storage] section "
                f"is the host named default)"
            )
