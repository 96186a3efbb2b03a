"""Reading a local command's stdout as it writes it, from a worker thread.

A host command's output is usually small and ``run`` returns it whole. Some commands write as
much as they read from a volume (``rbd export-diff`` writes a snapshot's data): their output is
read piece by piece, with a blocking process so the reading thread needs no event loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shlex
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO

from hostcmds.errors import CommandError, CommandNotFound, CommandTimeout
from hostcmds.runner import decode, finish, mask, mask_argv, validate_argv

log = logging.getLogger("hostcmds.local")

STDERR_LOG_CHARS = 2000
FAILED_EXIT_WAIT = 1.0  # seconds a command whose output was cut short gets to exit

Read = Callable[[int], bytes]


@contextlib.contextmanager
def read_stream(
    argv: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None,
    kill_wait: float,
    secrets: Sequence[str] = (),
) -> Iterator[Read]:
    """Run ``argv`` and give ``read(n)``: up to n more bytes of its stdout, b"" at its end,
    waiting at most ``timeout`` seconds for any (CommandTimeout, the command killed).

    Leaving the block normally waits (``timeout`` at most) for the command's exit and raises
    CommandError unless it is 0; leaving it by an exception kills the command's process group.
    stderr goes to a temporary file, so a command writing much of it never blocks."""
    validate_argv(argv)
    masked = mask_argv(argv, secrets)
    shown = shlex.join(masked)
    started = time.monotonic()
    with tempfile.TemporaryFile() as errors:
        proc = _start(argv, masked, env, errors)
        assert proc.stdout is not None
        out = proc.stdout.fileno()

        def read(count: int) -> bytes:
            ready, _, _ = select.select([out], [], [], timeout)
            if not ready:
                log.warning("no output for %g s, killed: %s", timeout, shown)
                raise CommandTimeout(masked, timeout)
            return os.read(out, count)

        try:
            yield read
            returncode = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill(proc, kill_wait)
            log.warning("no exit %g s after its output ended, killed: %s", timeout, shown)
            raise CommandTimeout(masked, timeout) from None
        except CommandTimeout:
            _kill(proc, kill_wait)
            raise
        except Exception as exc:
            # The reader gave up: often because the command failed (its output cut short),
            # and then its own error says why better than the reader's.
            failed = _exit_status(proc, min(timeout, FAILED_EXIT_WAIT))
            _kill(proc, kill_wait)
            if not failed:
                log.warning("stopped reading, killed: %s", shown)
                raise
            errors.seek(0)
            message = mask(decode(errors.read()), secrets)
            log.warning("exit %d (streamed, output cut short): %s; stderr: %s",
                        failed, shown, message.strip()[-STDERR_LOG_CHARS:])  # fmt: skip
            raise CommandError(masked, failed, message) from exc
        except BaseException:
            _kill(proc, kill_wait)
            log.warning("stopped reading, killed: %s", shown)
            raise
        finally:
            proc.stdout.close()
        errors.seek(0)
        stderr = errors.read()
    if returncode == 0:
        log.info("exit 0 in %.2f s (streamed): %s", time.monotonic() - started, shown)
    else:
        log.warning(
            "exit %d in %.2f s (streamed): %s; stderr: %s",
            returncode,
            time.monotonic() - started,
            shown,
            mask(decode(stderr), secrets).strip()[-STDERR_LOG_CHARS:],
        )
    finish(masked, returncode, b"", stderr, secrets=secrets, check=True)


def _start(
    argv: Sequence[str], masked: tuple[str, ...], env: Mapping[str, str] | None, errors: IO[bytes]
) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errors,
            env=env,
            start_new_session=True,
        )
    except (FileNotFoundError, PermissionError) as exc:
        raise start_failure(exc, masked) from None


def start_failure(
    exc: FileNotFoundError | PermissionError, masked: tuple[str, ...]
) -> CommandError:
    """The error of a program that could not be started, as a shell would give it (logged)."""
    if isinstance(exc, FileNotFoundError):
        log.warning("not found: %s", masked[0])
        return CommandNotFound(masked, 127, f"{masked[0]}: {exc.strerror}")
    log.warning("cannot execute: %s", masked[0])
    return CommandError(masked, 126, f"{masked[0]}: {exc.strerror}")


def _exit_status(proc: subprocess.Popen[bytes], wait: float) -> int | None:
    """The command's exit status once it has exited (waiting ``wait`` seconds at most)."""
    try:
        return proc.wait(wait)
    except subprocess.TimeoutExpired:
        return None


def _kill(proc: subprocess.Popen[bytes], kill_wait: float) -> None:
    """Kill the command's whole process group (children included) and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        proc.wait(kill_wait)
    except subprocess.TimeoutExpired:
        log.error("process %d did not exit after SIGKILL", proc.pid)
