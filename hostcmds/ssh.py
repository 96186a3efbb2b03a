"""Runs host commands on a remote host over SSH (asyncssh).

No shell strings. sshd always hands a command to the remote account's login shell, so the argv
is joined into one command line with every argument quoted by ``shlex.quote``: the shell splits
it back into exactly the same arguments and expands nothing in them. No caller text is ever
interpreted by the remote shell. The login shell must be a POSIX shell (sh, dash, bash, ksh).

What a timeout does to the remote command. The command line is
``printf 'ebsemu-pid %s\\n' "$$" >&2; exec <argv>``. sshd starts every pty-less session in a
session and process group of its own, so that pid is also the command's process group id; the
runner strips the line from stderr. On expiry (or cancellation) the runner waits for that line
if it has not arrived yet (the command may already run), then opens a second session on the
same connection and runs ``kill -s KILL -- -<pgid> <pgid>``, which kills the command and every
child that stayed in its process group (as LocalRunner's killpg does), waits for the exit
report, then closes the channel; all of it within ``kill_wait``. The SSH "signal" request is
only a fallback (used if stderr's first line is not the pid line): OpenSSH refuses it for root
logins and before 7.9. Closing the channel alone kills nothing: a pty-less command only loses
its pipes (EOF on stdin, SIGPIPE on its next write) and may run on. If the connection itself is
lost, nothing can be killed: the command runs to its end on the host, and the call raises
HostUnreachable saying its outcome is unknown.

Each command also pays for starting the remote login shell, rc files included (bash reads
~/.bashrc for commands run by sshd): keep the service account's shell start-up lean.

asyncssh logs every command line it sends (INFO, logger "asyncssh"); a filter on that logger
masks the secrets of the commands in progress, so its records are as safe as this module's.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import os
import re
import shlex
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from urllib.parse import unquote, urlsplit

import asyncssh

from hostcmds.errors import (
    CommandError,
    CommandNotFound,
    CommandTimeout,
    HostAuthFailed,
    HostKeyRejected,
    HostUnreachable,
)
from hostcmds.runner import CommandResult, decode, finish, mask, mask_argv, validate_argv

log = logging.getLogger(__name__)

DEFAULT_PORT = 22
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_KEEPALIVE_INTERVAL = 15.0
KEEPALIVE_COUNT_MAX = 3
# OpenSSH allows 10 sessions per connection (MaxSessions). Commands use at most half of them,
# so every running command can still open the session that kills it.
DEFAULT_MAX_SESSIONS = 5
STDERR_LOG_CHARS = 2000
PID_LINE = re.compile(rb"ebsemu-pid (\d+)\n")
COMMAND_PREFIX = "printf 'ebsemu-pid %s\\n' \"$$\" >&2; exec "
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def default_known_hosts() -> Path:
    """The service user's ~/.ssh/known_hosts, used when neither a file nor a key is given."""
    return Path.home() / ".ssh" / "known_hosts"


@dataclass(frozen=True)
class SshHost:
    """Where one host is and how to trust it.

    Host keys are always verified: if ``host_key`` (one OpenSSH public key line) is set it is
    the only key trusted; otherwise the ``known_hosts`` file decides. ``key_file`` is the client
    key; without it the service user's default keys (~/.ssh/id_*) and ssh-agent are offered.
    The service user's ~/.ssh/config is not read: everything comes from here.
    """

    host: str
    port: int = DEFAULT_PORT
    username: str = field(default_factory=getpass.getuser)
    key_file: Path | None = None
    known_hosts: Path = field(default_factory=default_known_hosts)
    host_key: str | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    keepalive_interval: float = DEFAULT_KEEPALIVE_INTERVAL

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("ssh host is empty")
        if not 0 < self.port < 65536:
            raise ValueError(f"ssh port {self.port} is out of range")
        if self.connect_timeout <= 0:
            raise ValueError("connect_timeout must be positive")
        if self.host_key is not None:
            _pinned_known_hosts(self.host_key)

    @property
    def label(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.username}@{host}:{self.port}"


def parse_ssh_url(
    url: str,
    *,
    key_file: str | Path | None = None,
    known_hosts: str | Path | None = None,
    host_key: str | None = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
) -> SshHost:
    """``ssh://[user@]host[:port]`` plus options -> SshHost. Passwords are refused (keys only)."""
    parts = urlsplit(url)
    if parts.scheme != "ssh":
        raise ValueError(f"host URL must start with ssh://, not {parts.scheme or 'nothing'}")
    if parts.password is not None:
        # The URL is not repeated: it holds a password.
        raise ValueError(f"ssh URL for {parts.hostname} holds a password; use a key file")
    if not parts.hostname:
        raise ValueError("ssh URL names no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"ssh URL for {parts.hostname} has a path, query or fragment")
    if known_hosts is not None and host_key is not None:
        raise ValueError("give either known_hosts or a pinned host_key, not both")
    return SshHost(
        host=parts.hostname,
        port=parts.port or DEFAULT_PORT,
        username=unquote(parts.username) if parts.username else getpass.getuser(),
        key_file=Path(key_file) if key_file is not None else None,
        known_hosts=Path(known_hosts) if known_hosts is not None else default_known_hosts(),
        host_key=host_key,
        connect_timeout=connect_timeout,
    )


def ssh_runner(
    url: str,
    *,
    key_file: str | Path | None = None,
    known_hosts: str | Path | None = None,
    host_key: str | None = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    env: Mapping[str, str] | None = None,
) -> SshRunner:
    """A runner for the host at ``url`` (``ssh://user@host:port``). Nothing connects yet."""
    host = parse_ssh_url(
        url,
        key_file=key_file,
        known_hosts=known_hosts,
        host_key=host_key,
        connect_timeout=connect_timeout,
    )
    return SshRunner(host, env=env)


class _Output(asyncssh.SSHClientSession[bytes]):
    """Collects a command's stdout and stderr as the channel delivers them."""

    def __init__(self) -> None:
        self.stdout = bytearray()
        self.stderr = bytearray()
        # Set once stderr's first line (the pid line) is complete, or the channel ended first.
        self.first_line = asyncio.Event()

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if datatype != asyncssh.EXTENDED_DATA_STDERR:
            self.stdout.extend(data)
            return
        self.stderr.extend(data)
        if b"\n" in data:
            self.first_line.set()

    def eof_received(self) -> bool:
        self.first_line.set()
        return True  # stay open for the exit status; the server closes the channel

    def connection_lost(self, exc: Exception | None) -> None:
        self.first_line.set()

    def pgid(self) -> int | None:
        """The command's process group, once the pid line has arrived."""
        pid_line = PID_LINE.match(self.stderr)
        return int(pid_line[1]) if pid_line else None

    def command_stderr(self) -> bytes:
        """stderr as the command wrote it: without the pid line."""
        pid_line = PID_LINE.match(self.stderr)
        return bytes(self.stderr[pid_line.end() :] if pid_line else self.stderr)


@dataclass
class _Call:
    """One run() in progress: how far it got, and its channel once open."""

    phase: str = "waiting"  # waiting -> connecting -> starting -> running
    conn: asyncssh.SSHClientConnection | None = None
    chan: asyncssh.SSHClientChannel[bytes] | None = None
    output: _Output = field(default_factory=_Output)


class SshRunner:
    """A CommandRunner for one remote host, over one SSH connection.

    The connection is opened on first use (bounded by the host's ``connect_timeout``), shared by
    every call, and opened again by the next call after it drops; a call that finds it dropped
    before its command was sent retries once on a new one. Keepalives notice a silent peer.
    At most ``max_sessions`` commands run at once; others wait their turn within their own
    timeout, which bounds the whole call (connecting included). ``env`` adds variables for
    every command (``env NAME=value`` on the host). Exit status 127 (the remote shell's
    "not found") raises CommandNotFound and 126 CommandError even when ``check`` is false, as
    LocalRunner does for a program it cannot start. A runner belongs to one event loop at a
    time: the one it connected on, until close().
    """

    def __init__(
        self,
        host: SshHost,
        *,
        env: Mapping[str, str] | None = None,
        kill_wait: float = 5.0,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
    ) -> None:
        bad = [name for name in env or {} if not ENV_NAME.fullmatch(name)]
        if bad:
            raise ValueError(f"invalid environment variable names: {', '.join(bad)}")
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self.host = host
        self._env_argv = [f"{name}={value}" for name, value in (env or {}).items()]
        self._kill_wait = kill_wait
        self._max_sessions = max_sessions
        self._conn: asyncssh.SSHClientConnection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connecting = asyncio.Lock()
        self._slots = asyncio.Semaphore(max_sessions)
        self._attempts = 0
        self._failure: HostUnreachable | None = None

    async def __aenter__(self) -> SshRunner:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect now (if not connected): raises HostUnreachable or a subclass."""
        self._bind()
        await self._connection()

    async def close(self) -> None:
        """Close the connection; calls still running on it fail with HostUnreachable."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            await conn.wait_closed()
            log.info("closed connection to %s", self.host.label)

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
        full = ["env", *self._env_argv, *argv] if self._env_argv else list(argv)
        validate_argv(full)
        masked = mask_argv(argv, secrets)
        shown = shlex.join(masked)
        where = self.host.label
        log.debug("run on %s: %s", where, shown)
        self._bind()
        call = _Call()
        started = time.monotonic()
        with _ASYNCSSH_LOG.hiding(secrets):
            try:
                async with asyncio.timeout(timeout):
                    await self._run(call, full, input, shown)
            except TimeoutError:
                if call.phase == "connecting":
                    log.warning("no connection to %s within %g s: %s", where, timeout, shown)
                    raise HostUnreachable(where, f"no connection within {timeout:g} s") from None
                log.warning(
                    "timeout %g s expired after %.1f s while %s on %s: %s",
                    timeout,
                    _since(started),
                    call.phase,
                    where,
                    shown,
                )
                raise CommandTimeout(masked, timeout) from None
            except asyncio.CancelledError:
                log.warning("cancelled while %s on %s: %s", call.phase, where, shown)
                raise
        assert call.chan is not None
        returncode = call.chan.get_returncode()
        stdout, stderr = bytes(call.output.stdout), call.output.command_stderr()
        if returncode is None:
            log.warning("connection to %s lost while running: %s", where, shown)
            raise HostUnreachable(
                where, f"connection lost while running {masked[0]}; its outcome is unknown"
            )
        if returncode == 0:
            log.info("exit 0 in %.2f s on %s: %s", _since(started), where, shown)
        else:
            log.warning(
                "exit %d in %.2f s on %s: %s; stderr: %s",
                returncode,
                _since(started),
                where,
                shown,
                mask(decode(stderr), secrets).strip()[-STDERR_LOG_CHARS:],
            )
        if returncode == 127:
            raise CommandNotFound(masked, returncode, mask(decode(stderr), secrets))
        if returncode == 126:
            raise CommandError(masked, returncode, mask(decode(stderr), secrets))
        return finish(masked, returncode, stdout, stderr, secrets=secrets, check=check)

    async def _run(self, call: _Call, argv: Sequence[str], input: bytes | None, shown: str) -> None:
        """Start the command and wait for its channel to close; kill it if interrupted."""
        async with self._slots:
            chan = await self._start(call, COMMAND_PREFIX + shlex.join(argv), shown)
            try:
                if input:
                    chan.write(input)
                chan.write_eof()
                call.phase = "running"
                await chan.wait_closed()
            except BaseException:
                await self._kill(call, shown)
                raise

    async def _start(
        self, call: _Call, command: str, shown: str
    ) -> asyncssh.SSHClientChannel[bytes]:
        """Open a session running ``command``; reconnect once if the connection was found dead."""
        where = self.host.label
        for attempt in (1, 2):
            call.phase = "connecting"
            call.conn = conn = await self._connection()
            call.phase = "starting"
            try:
                call.chan, _ = await conn.create_session(
                    lambda: call.output, command, encoding=None
                )
                return call.chan
            except asyncssh.ChannelOpenError as exc:
                # Refused at channel open: the command was never sent.
                if exc.code == asyncssh.OPEN_CONNECT_FAILED and conn.is_closed() and attempt == 1:
                    continue
                raise HostUnreachable(where, f"session refused: {exc.reason}") from None
            except (asyncssh.Error, OSError) as exc:
                log.warning("connection to %s lost while starting: %s", where, shown)
                raise HostUnreachable(
                    where,
                    f"connection lost while starting a command ({_reason(exc)}); "
                    "whether it started is unknown",
                ) from None
        raise AssertionError("unreachable")

    async def _kill(self, call: _Call, shown: str) -> None:
        """Kill the remote command's process group, wait for its exit, close the channel.

        All of it within ``kill_wait``: on a dead connection this gives up rather than hang."""
        where, chan, output = self.host.label, call.chan, call.output
        if chan is None:
            return
        try:
            async with asyncio.timeout(self._kill_wait):
                # The pid line is the command's first output, but a cancel can come before it
                # has crossed the connection: wait for it rather than fall back to the signal.
                await output.first_line.wait()
                pgid = output.pgid()
                if chan.get_returncode() is None and pgid is not None and call.conn is not None:
                    await self._kill_group(call.conn, pgid)
                elif chan.get_returncode() is None:
                    with contextlib.suppress(OSError):
                        chan.send_signal("KILL")
                await chan.wait_closed()
        except TimeoutError:
            if chan.get_returncode() is not None:
                log.error("killed on %s, but its output is held open: %s", where, shown)
            elif not output.first_line.is_set():
                log.error("%s sent no pid for the command; may still run: %s", where, shown)
            else:
                log.error("%s reported no exit after SIGKILL; may still run: %s", where, shown)
        chan.close()

    async def _kill_group(self, conn: asyncssh.SSHClientConnection, pgid: int) -> None:
        try:
            done = await conn.run(f"kill -s KILL -- -{pgid} {pgid}", check=False)
        except (asyncssh.Error, OSError) as exc:
            log.error("could not kill process group %d on %s: %s", pgid, self.host.label, exc)
            return
        if done.returncode != 0:
            # Usually harmless: the group is gone and "kill <pgid>" found nothing left either.
            log.debug("kill of process group %d on %s: %r", pgid, self.host.label, done.stderr)

    def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        if self._conn is not None:
            raise RuntimeError(f"runner for {self.host.label} is connected on another event loop")
        self._loop = loop
        self._connecting = asyncio.Lock()
        self._slots = asyncio.Semaphore(self._max_sessions)

    async def _connection(self) -> asyncssh.SSHClientConnection:
        """The open connection, or a new one. Calls that queued behind a failed attempt share
        its error instead of each waiting out a connect timeout of their own."""
        conn = self._conn
        if conn is not None and not conn.is_closed():
            return conn
        attempts_seen = self._attempts
        async with self._connecting:
            if self._conn is not None and not self._conn.is_closed():
                return self._conn
            failed = self._failure
            if failed is not None and self._attempts != attempts_seen:
                raise type(failed)(failed.host, failed.reason)
            if self._conn is not None:
                log.info("connection to %s closed; reconnecting", self.host.label)
                self._conn = None
            self._failure = None
            try:
                self._conn = await self._connect()
            except HostUnreachable as exc:
                self._failure = exc
                raise
            finally:
                self._attempts += 1  # counts finished attempts
            return self._conn

    async def _connect(self) -> asyncssh.SSHClientConnection:
        host, where = self.host, self.host.label
        options: dict[str, object] = {}
        if host.key_file is not None:
            try:
                options["client_keys"] = [asyncssh.read_private_key(host.key_file)]
            except (OSError, asyncssh.KeyImportError) as exc:
                raise HostAuthFailed(
                    where, f"cannot read key file {host.key_file}: {_reason(exc)}"
                ) from None
            options["agent_path"] = None
        if host.host_key is not None:
            trusted = "the pinned host key"
            known_hosts = _pinned_known_hosts(host.host_key)
        else:
            trusted = f"known_hosts file {host.known_hosts}"
            try:
                known_hosts = asyncssh.read_known_hosts(str(host.known_hosts))
            except (OSError, ValueError) as exc:
                raise HostKeyRejected(where, f"cannot read {trusted}: {_reason(exc)}") from None
        try:
            conn = await asyncssh.connect(
                host.host,
                host.port,
                config=None,
                username=host.username,
                known_hosts=known_hosts,
                preferred_auth="publickey",
                connect_timeout=host.connect_timeout,
                keepalive_interval=host.keepalive_interval,
                keepalive_count_max=KEEPALIVE_COUNT_MAX,
                **options,
            )
        except asyncssh.HostKeyNotVerifiable:
            log.warning("host key of %s not trusted by %s", where, trusted)
            raise HostKeyRejected(where, f"host key not trusted by {trusted}") from None
        except asyncssh.PermissionDenied:
            key = f"key {host.key_file}" if host.key_file else "default keys"
            log.warning("%s refused %s", where, key)
            raise HostAuthFailed(where, f"{key} refused for user {host.username}") from None
        except TimeoutError:
            log.warning("no SSH connection to %s within %g s", where, host.connect_timeout)
            raise HostUnreachable(
                where, f"no SSH connection within {host.connect_timeout:g} s"
            ) from None
        except (asyncssh.Error, OSError) as exc:
            log.warning("cannot connect to %s: %s", where, _reason(exc))
            raise HostUnreachable(where, _reason(exc)) from None
        log.info("connected to %s", where)
        return conn


class _SecretsInLogs(logging.Filter):
    """Masks the secrets of every command in progress in asyncssh's own log records.

    asyncssh logs each command line it sends (at INFO); this filter sits on its logger.
    """

    def __init__(self) -> None:
        super().__init__()
        self._active: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if self._active:
            text = record.getMessage()
            masked = mask(text, list(self._active))
            if masked != text:
                record.msg, record.args = masked, ()
        return True

    @contextlib.contextmanager
    def hiding(self, secrets: Sequence[str]) -> Iterator[None]:
        present = [secret for secret in secrets if secret]
        for secret in present:
            self._active[secret] = self._active.get(secret, 0) + 1
        try:
            yield
        finally:
            for secret in present:
                self._active[secret] -= 1
                if not self._active[secret]:
                    del self._active[secret]


_ASYNCSSH_LOG = _SecretsInLogs()
logging.getLogger("asyncssh").addFilter(_ASYNCSSH_LOG)


def _pinned_known_hosts(host_key: str) -> asyncssh.SSHKnownHosts:
    """Trust exactly this one public key (OpenSSH format), whatever the host is called."""
    try:
        key = asyncssh.import_public_key(host_key.strip())
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise ValueError(f"pinned host key is not an OpenSSH public key: {exc}") from None
    return asyncssh.import_known_hosts("* " + key.export_public_key().decode())


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncssh.Error):
        return exc.reason
    if isinstance(exc, OSError) and exc.errno and exc.errno > 0:
        return os.strerror(exc.errno)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _since(started: float) -> float:
    return time.monotonic() - started
