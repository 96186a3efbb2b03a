"""Pausing guests while views of their volumes are taken (docs/consistency.md).

CreateSnapshots pauses the instance so that its volumes' views hold one instant. CreateSnapshot
pauses the guests a volume is attached to only where the backend's view is a copy (the file
backend without reflink): a copy takes as long as the data takes to read, and a guest writing
meanwhile would leave some of its writes in the view and not others. A view taken at one
instant (a reflink clone, an LVM or RBD snapshot) needs no pause.

A guest is paused once however many calls need it at the same time, and resumed when the last
of them is done; a guest that was paused already (by its user, or a stopped instance) is left
as it is. Before this server pauses a guest it records it in the data directory
(``paused-guests.json``), and forgets it once the guest runs again: if the server stops in
between, it resumes the guest when it starts (``resume_left_paused``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from backends.base import DigestFreezer, StorageBackend, VmmBackend
from backends.errors import BackendError, DomainNotFound
from ebsemu import faults
from ebsemu.model import Volume
from ebsemu.private_files import write_private

if TYPE_CHECKING:
    from ebsemu.service.core import Core

log = logging.getLogger(__name__)

RECORD_NAME = "paused-guests.json"
RESUME_ATTEMPTS = 3

Guest = tuple[str, str]  # (configured VMM name, domain)


class PauseFailed(BackendError):
    """A guest could not be paused: no view was taken."""


@dataclass
class GuestPauses:
    """This server's pauses: how many calls hold each guest, and the guests it paused, with
    the monotonic time of the pause (None for one a stopped server paused)."""

    holders: dict[Guest, int] = field(default_factory=dict)
    ours: dict[Guest, float | None] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


async def writers(core: Core, volume: Volume, storage: StorageBackend) -> list[Guest]:
    """The guests to pause while the volume is frozen: those it is attached to, where its
    view is a copy rather than taken at one instant."""
    if not volume.attachments or await freezes_at_one_instant(storage):
        return []
    guests = []
    for attachment in volume.attachments:
        instance = await core.store.get_instance(attachment.instance_id)
        if instance is None or instance.vmm not in core.vmms:
            log.warning(
                "volume %s: instance %s has no VMM here; it is not paused for the copy",
                volume.id,
                attachment.instance_id,
            )
            continue
        guests.append((instance.vmm, instance.domain))
    return guests


async def freezes_at_one_instant(storage: StorageBackend) -> bool:
    """Whether the backend's view of a volume holds one instant; a copy does not. (A remote
    file host's ``cp --reflink=auto`` may copy too; it is not told apart here.)"""
    return not (isinstance(storage, DigestFreezer) and await storage.freezes_by_copy())


@contextlib.asynccontextmanager
async def paused(core: Core, guests: Sequence[Guest]) -> AsyncIterator[list[Guest]]:
    """Hold each guest paused for the block; yields those this server keeps paused (not those
    paused already by others). They are released when the block ends, even if it fails or is
    cancelled. PauseFailed if one cannot be paused (those held already are released first)."""
    held: list[Guest] = []
    try:
        for guest in guests:
            await _hold(core, guest)
            held.append(guest)
        ours = [guest for guest in held if guest in core.pauses.ours]
        if ours:
            await faults.reach("snapshot.paused")
        yield ours
    finally:
        for guest in reversed(held):
            await asyncio.shield(_release(core, guest))


async def resume(vmm: VmmBackend, domain: str) -> bool:
    """Let a domain this server paused run again, trying a few times; whether it does
    (failures are logged, never raised)."""
    for attempt in range(1, RESUME_ATTEMPTS + 1):
        try:
            await vmm.resume(domain)
            return True
        except DomainNotFound:
            log.warning("domain %s is gone: nothing of it to resume", domain)
            return True
        except BackendError as exc:
            log.error(
                "domain %s: resume failed (attempt %d of %d): %s",
                domain,
                attempt,
                RESUME_ATTEMPTS,
                exc,
            )
    log.critical("domain %s stays paused: resume it by hand", domain)
    return False


async def resume_left_paused(core: Core) -> int:
    """Resume the guests a stopped server left paused (start-up); how many were resumed."""
    data_dir = core.config.data_dir
    resumed = 0
    for name, domain in sorted(await asyncio.to_thread(_read_record, data_dir)):
        vmm = core.vmms.get(name)
        if vmm is None:
            log.warning("domain %s: VMM %s is no longer configured; not resumed", domain, name)
        elif await resume(vmm, domain):
            log.warning("domain %s on %s: resumed (paused when the server stopped)", domain, name)
            resumed += 1
        else:
            core.pauses.ours[(name, domain)] = None  # tried again at the next start
    await asyncio.to_thread(_write_record, data_dir, list(core.pauses.ours))
    return resumed


# ---- implementation ----------------------------------------------------------------------


async def _hold(core: Core, guest: Guest) -> None:
    pauses, data_dir = core.pauses, core.config.data_dir
    async with pauses.lock:
        if not pauses.holders.get(guest):
            name, domain = guest
            # Recorded before the pause: a server stopped after it resumes the guest at start.
            await asyncio.to_thread(_write_record, data_dir, [*pauses.ours, guest])
            try:
                paused_now = await core.vmms[name].pause(domain)
            except DomainNotFound:
                log.warning("domain %s is gone: nothing of it to pause", domain)
                paused_now = False
            except BackendError as exc:
                await asyncio.to_thread(_write_record, data_dir, list(pauses.ours))
                raise PauseFailed(f"domain {domain} could not be paused: {exc}") from exc
            if paused_now:
                pauses.ours[guest] = time.monotonic()
            else:  # paused already by someone else, or gone: not ours to resume
                await asyncio.to_thread(_write_record, data_dir, list(pauses.ours))
        pauses.holders[guest] = pauses.holders.get(guest, 0) + 1


async def _release(core: Core, guest: Guest) -> None:
    pauses, data_dir = core.pauses, core.config.data_dir
    async with pauses.lock:
        pauses.holders[guest] -= 1
        if pauses.holders[guest]:
            return
        del pauses.holders[guest]
        if guest not in pauses.ours:
            return
        name, domain = guest
        if await resume(core.vmms[name], domain):
            since = pauses.ours.pop(guest)
            await asyncio.to_thread(_write_record, data_dir, list(pauses.ours))
            if since is not None:
                log.info("domain %s: paused %.3f s for views", domain, time.monotonic() - since)


def _read_record(data_dir: Path) -> set[Guest]:
    try:
        text = (data_dir / RECORD_NAME).read_text()
    except FileNotFoundError:
        return set()
    try:
        return {(str(name), str(domain)) for name, domain in json.loads(text)}
    except (ValueError, TypeError) as exc:
        log.error("%s is not a list of [vmm, domain]: %s; ignored", data_dir / RECORD_NAME, exc)
        return set()


def _write_record(data_dir: Path, guests: Collection[Guest]) -> None:
    path = data_dir / RECORD_NAME
    if not guests:
        path.unlink(missing_ok=True)
        return
    write_private(path, json.dumps(sorted([name, domain] for name, domain in guests)))
