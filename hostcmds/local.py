"""Runs host commands on this machine with asyncio subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager

from hostcmds import local_stream
from hostcmds.errors import CommandTimeout
from hostcmds.runner import CommandResult, decode, finish, mask, mask_argv, validate_argv

log = logging.getLogger(__name__)

STDERR_LOG_CHARS = 2000


class LocalRunner:
    """A CommandRunner for the local host.

    Each command runs in its own process group, so a timeout kills it and every process it
    started. ``env`` adds variables to the service's environment for every command (for example
    LVM_SYSTEM_DIR).
    """

    def __init__(self, *, env: Mapping[str, str] | None = None, kill_wait: float = 5.0) -> None:
        self._env = {**os.environ, **env} if env else None
        self._kill_wait = kill_wait

    async def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        input: bytes | None = None,
        secrets: Sequence[str] = (),
        check: bool = True,
    ) -> CommandResult:
        validate_argv(argv)
        masked = mask_argv(argv, secrets)
        shown = shlex.join(masked)
        log.debug("run: %s", shown)
        started = time.monotonic()
        proc = await self._start(argv, masked, stdin=input is not None)
        try:
            async with asyncio.timeout(timeout):
                stdout, stderr = await proc.communicate(input)
        except TimeoutError:
            await self._kill(proc)
            log.warning("killed after %.1f s (timeout %g s): %s", _since(started), timeout, shown)
            raise CommandTimeout(masked, timeout) from None
        except BaseException:
            await self._kill(proc)
            log.warning("cancelled, killed: %s", shown)
            raise
        returncode = proc.returncode if proc.returncode is not None else -1
        if returncode == 0:
            log.info("exit 0 in %.2f s: %s", _since(started), shown)
        else:
            log.warning(
                "exit %d in %.2f s: %s; stderr: %s",
                returncode,
                _since(started),
                shown,
                mask(decode(stderr), secrets).strip()[-STDERR_LOG_CHARS:],
            )
        return finish(masked, returncode, stdout, stderr, secrets=secrets, check=check)

    def read_stream(
        self, argv: Sequence[str], *, timeout: float, secrets: Sequence[str] = ()
    ) -> AbstractContextManager[local_stream.Read]:
        """From a worker thread: the command's stdout read as it writes it (StreamingRunner)."""
        return local_stream.read_stream(
            argv, timeout=timeout, env=self._env, kill_wait=self._kill_wait, secrets=secrets
        )

    async def _start(
        self, argv: Sequence[str], masked: tuple[str, ...], *, stdin: bool
    ) -> asyncio.subprocess.Process:
        try:
            return await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self._env,
                start_new_session=True,
            )
        except (FileNotFoundError, PermissionError) as exc:
            raise local_stream.start_failure(exc, masked) from None

    async def _kill(self, proc: asyncio.subprocess.Process) -> None:
        """Kill the command's whole process group (children included) and reap it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            async with asyncio.timeout(self._kill_wait):
                await proc.wait()
        except TimeoutError:
            log.error("process %d did not exit after SIGKILL", proc.pid)


def _since(started: float) -> float:
    return time.monotonic() - started
