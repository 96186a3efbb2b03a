"""`ebsemu check-host`: is every configured host ready? One line per host and role, with what
is missing and how to install it (each backend's own check_setup says so). Each storage host is
checked on the host itself, through its runner (local or SSH)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable

from backends.errors import SetupError
from ebsemu import hosts
from ebsemu.block_stores import build_block_store, describe
from ebsemu.config import Config


async def check(config: Config) -> list[tuple[str, str | None]]:
    """(what was checked, None when ready or the problem) for every configured host role."""
    runner, templates = hosts.shared_tools(config)
    export = hosts.build_export(config, runner, templates)
    checks: list[tuple[str, Callable[[], Awaitable[None]]]] = []
    for entry in hosts.build_storage_hosts(config, runner, templates, export).entries:
        name = f"storage ({entry.label})" if entry.zone is None else f"storage {entry.label}"
        checks.append((name, entry.backend.check_setup))
        if entry.export is not None and entry.export is not export:
            checks.append((f"export on {entry.label}", entry.export.check_setup))
    if export is not None:
        checks.append((f"export ({config.export_backend})", export.check_setup))
    blocks = build_block_store(config)
    checks.append(
        (f"blockstore ({describe(config)})", lambda: asyncio.to_thread(blocks.check_setup))
    )
    try:
        vmms = hosts.build_vmms(config, runner, templates)
    except SetupError as exc:  # a [vmm …] section the drivers refuse: one FAIL line for it
        checks.append(("vmm hosts", functools.partial(_refused, exc)))
    else:
        for host in config.vmm_hosts:
            name = f"vmm {host.name} ({host.driver}, {host.url})"
            checks.append((name, vmms[host.name].check_setup))
    results: list[tuple[str, str | None]] = []
    for name, probe in checks:
        try:
            await asyncio.wait_for(probe(), timeout=60)
        except (SetupError, TimeoutError) as exc:
            results.append((name, str(exc) or "timed out"))
        else:
            results.append((name, None))
    return results


async def _refused(exc: SetupError) -> None:
    raise exc


def run(config: Config) -> int:
    results = asyncio.run(check(config))
    for name, problem in results:
        print(
            f"{'ok  ' if problem is None else 'FAIL'} {name}" + (f": {problem}" if problem else "")
        )
    return 0 if all(problem is None for _, problem in results) else 1
