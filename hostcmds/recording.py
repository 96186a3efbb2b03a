"""A CommandRunner for tests: records every argv and answers from a script.

Used where the real tool cannot run on the test host (Xen, LVM activation); the test then asserts
the exact argv lists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from hostcmds.errors import CommandTimeout, HostCommandError
from hostcmds.runner import CommandResult, finish, mask_argv, validate_argv


@dataclass(frozen=True)
class Reply:
    """What a scripted command answers. ``timeout`` makes the call raise CommandTimeout."""

    returncode: int = 0
    stdout: bytes | str = b""
    stderr: bytes | str = b""
    timeout: bool = False


@dataclass(frozen=True)
class RecordedCall:
    argv: tuple[str, ...]
    timeout: float
    input: bytes | None
    secrets: tuple[str, ...]
    check: bool


Responder = Callable[[tuple[str, ...]], Reply | None]

SCRIPTED_FAILURE = Reply(returncode=1, stderr=b"scripted failure\n")


class UnscriptedCommand(HostCommandError):
    """The recording runner was asked to run a command its script does not answer."""


class RecordingRunner:
    """Records calls; answers each from, in order: a scripted failure of the Nth call, the
    responder callable, the script entry with the longest matching argv prefix, the default
    reply (None: raise UnscriptedCommand)."""

    def __init__(
        self,
        script: Iterable[tuple[Sequence[str], Reply]] = (),
        *,
        responder: Responder | None = None,
        default: Reply | None = Reply(),
    ) -> None:
        self.calls: list[RecordedCall] = []
        self._script: list[tuple[tuple[str, ...], Reply]] = []
        self._responder = responder
        self._default = default
        self._failures: dict[int, Reply] = {}
        for prefix, reply in script:
            self.reply(prefix, reply)

    @property
    def argvs(self) -> list[list[str]]:
        """Every argv run so far, unmasked, in order."""
        return [list(call.argv) for call in self.calls]

    def reply(self, prefix: Sequence[str], reply: Reply) -> None:
        """Answer every command whose argv starts with ``prefix`` with ``reply``."""
        self._script.append((tuple(prefix), reply))

    def fail_call(self, number: int, reply: Reply = SCRIPTED_FAILURE) -> None:
        """Make the ``number``-th call from now on (1 = the next one) answer ``reply``."""
        if number < 1:
            raise ValueError("call numbers start at 1")
        self._failures[len(self.calls) + number] = reply

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
        call = RecordedCall(tuple(argv), timeout, input, tuple(secrets), check)
        self.calls.append(call)
        reply = self._answer(len(self.calls), call.argv)
        masked = mask_argv(argv, secrets)
        if reply.timeout:
            raise CommandTimeout(masked, timeout)
        return finish(
            masked,
            reply.returncode,
            _bytes(reply.stdout),
            _bytes(reply.stderr),
            secrets=secrets,
            check=check,
        )

    def _answer(self, number: int, argv: tuple[str, ...]) -> Reply:
        if number in self._failures:
            return self._failures.pop(number)
        if self._responder is not None:
            answer = self._responder(argv)
            if answer is not None:
                return answer
        best: tuple[int, Reply] | None = None
        for prefix, reply in self._script:
            if argv[: len(prefix)] == prefix and (best is None or len(prefix) > best[0]):
                best = (len(prefix), reply)
        if best is not None:
            return best[1]
        if self._default is None:
            raise UnscriptedCommand(f"no scripted answer for {list(argv)}")
        return self._default


def _bytes(data: bytes | str) -> bytes:
    return data.encode() if isinstance(data, str) else data
