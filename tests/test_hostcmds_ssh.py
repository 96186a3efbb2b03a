"""hostcmds.ssh: the SSH runner against a real OpenSSH sshd on 127.0.0.1.

A real sshd rather than an asyncssh server: the production hosts run OpenSSH, and what matters
here is OpenSSH's own behaviour — the login shell between sshd and the command, the process
group it gives a pty-less session, that it refuses signal requests for root, what becomes of a
command when its channel or connection goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from asyncssh import EXTENDED_DATA_STDERR, DataType

import hostcmds.ssh as hostcmds_ssh
from hostcmds import (
    CommandError,
    CommandNotFound,
    CommandRunner,
    CommandTimeout,
    HostAuthFailed,
    HostKeyRejected,
    HostUnreachable,
)
from hostcmds.ssh import SshHost, SshRunner, parse_ssh_url, ssh_runner
from tests.ssh_fixtures import (
    HAVE_SSHD,
    NEEDS_SSHD,
    SshServer,
    new_key,
    public_line,
    wait_until_gone,
)
from tests.vmm_fixtures import run

SECRET = "s3cretCHAPpass"

needs_sshd = pytest.mark.skipif(not HAVE_SSHD, reason=NEEDS_SSHD)


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[SshServer]:
    server = SshServer(tmp_path / "sshd")
    server.start()
    yield server
    server.stop()


def runner_for(server: SshServer, **options: Any) -> SshRunner:
    options = {"key_file": server.client_key, "known_hosts": server.known_hosts, **options}
    return ssh_runner(server.url, **options)


def python(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", code, *args]


async def wait_for_file(path: Path) -> str:
    deadline = time.monotonic() + 10
    while not (path.exists() and path.read_text().endswith("\n")):
        assert time.monotonic() < deadline, f"{path} never written"
        await asyncio.sleep(0.02)
    return path.read_text()


# -- running commands -------------------------------------------------------------------------


def test_asyncssh_is_loaded_only_once_a_host_is_reached_over_ssh() -> None:
    """The server and the CLI start without it: it costs a fifth of a second to import."""
    code = """
import sys
import ebsemu.app, ebsemu.cli, ebsemu.hosts
from hostcmds import LocalRunner
local = LocalRunner()
assert ebsemu.hosts.runner_for("local", {}, local) is local
assert "asyncssh" not in sys.modules, "loaded without an ssh host"
ebsemu.hosts.runner_for("ssh://ops@storage-1.example:2222", {}, local)
assert "asyncssh" in sys.modules
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@needs_sshd
def test_argv_arrives_exactly_as_given_and_output_and_exit_status_come_back(
    sshd: SshServer,
) -> None:
    tricky = ["a b", "it's", '"dq"', "$HOME", "`id`", "$(id)", "a;b|c&d>e", "*", "~", "\\n"]
    tricky += ["new\nline", "", "-n", "ünïcode", "--", "'"]
    echo_argv = "import json,sys; print(json.dumps(sys.argv[1:]))"

    async def scenario() -> None:
        async with runner_for(sshd) as runner:
            assert isinstance(runner, CommandRunner)
            result = await runner.run(python(echo_argv, *tricky), timeout=10)
            assert json.loads(result.text) == tricky
            assert result.returncode == 0
            assert result.argv == tuple(python(echo_argv, *tricky))
            failed = await runner.run(
                ["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=10, check=False
            )
            assert (failed.returncode, failed.text, failed.stderr) == (3, "out\n", b"err\n")

    run(scenario())


@needs_sshd
def test_input_is_fed_to_stdin_stdin_is_closed_without_input_and_env_is_set(
    sshd: SshServer,
) -> None:
    upper = "import os,sys; print(sys.stdin.read().upper() + os.environ['EBS_TEST_VALUE'])"

    async def scenario() -> None:
        async with runner_for(sshd, env={"EBS_TEST_VALUE": "from env"}) as runner:
            fed = await runner.run(python(upper), timeout=10, input=b"abc")
            assert fed.text == "ABCfrom env\n"
            assert (await runner.run(python(upper), timeout=10)).text == "from env\n"
            big = bytes(range(256)) * 4096  # 1 MiB through the channel and back
            assert (await runner.run(["cat"], timeout=10, input=big)).stdout == big

    run(scenario())


@needs_sshd
def test_a_failure_raises_command_error_with_the_secret_masked_in_the_error_and_every_log(
    sshd: SshServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # asyncssh's own records included: it logs command lines
    failing = python(
        "import sys; sys.stderr.write('bad password ' + sys.argv[1]); sys.exit(3)", SECRET
    )

    async def scenario() -> None:
        async with runner_for(sshd) as runner:
            with pytest.raises(CommandError) as caught:
                await runner.run(failing, timeout=10, secrets=[SECRET])
            error = caught.value
            assert error.returncode == 3
            assert error.stderr == "bad password ***"
            assert "exited 3: bad password ***" in str(error)
            assert SECRET not in str(error) + error.stderr + " ".join(error.argv)
            ok = await runner.run(["echo", SECRET], timeout=10, secrets=[SECRET])
            assert ok.argv == ("echo", "***") and ok.text == SECRET + "\n"

    run(scenario())
    assert "Command: " in caplog.text  # asyncssh logged the command line ...
    assert SECRET not in caplog.text  # ... masked, like every line of ours
    assert "exit 3" in caplog.text and "bad password ***" in caplog.text


@needs_sshd
def test_a_missing_program_raises_command_not_found_even_unchecked(sshd: SshServer) -> None:
    async def scenario() -> None:
        async with runner_for(sshd) as runner:
            for check in (True, False):
                with pytest.raises(CommandNotFound) as caught:
                    await runner.run(["/nonexistent/tool", "x"], timeout=10, check=check)
                assert caught.value.returncode == 127
                assert "/nonexistent/tool" in caught.value.stderr

    run(scenario())


@needs_sshd
def test_timeout_kills_the_remote_command_and_its_children_and_the_runner_goes_on(
    sshd: SshServer, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    marker = tmp_path / "still-running"
    script = f"sleep 2 && touch {marker} & echo $$ $! > {pids}; wait"

    async def scenario() -> None:
        async with runner_for(sshd) as runner:
            started = time.monotonic()
            with pytest.raises(CommandTimeout) as caught:
                await runner.run(["sh", "-c", script], timeout=1.0)
            assert time.monotonic() - started < 4
            assert caught.value.timeout == 1.0
            shell, child = map(int, pids.read_text().split())
            assert wait_until_gone([shell, child])
            assert (await runner.run(["echo", "still usable"], timeout=10)).text == "still usable\n"

    run(scenario())
    time.sleep(1.5)  # past the moment the child would have written the marker
    assert not marker.exists()
    assert sshd.logins() == 1  # the kill went over the same connection


@needs_sshd
def test_cancelling_a_run_kills_the_remote_command(sshd: SshServer, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"

    async def scenario() -> None:
        async with runner_for(sshd) as runner:
            task = asyncio.create_task(
                runner.run(["sh", "-c", f"echo $$ > {pidfile}; exec sleep 60"], timeout=60)
            )
            pid = int(await wait_for_file(pidfile))
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert wait_until_gone([pid])

    run(scenario())


@needs_sshd
def test_a_cancel_before_the_pid_line_has_crossed_still_kills_the_remote_command(
    sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command runs before its pid line reaches the runner; the kill waits for the line.

    The runner's stderr is held back until after the cancel, as a busy connection can do."""
    pidfile = tmp_path / "pid"
    held: list[tuple[hostcmds_ssh._Output, bytes]] = []
    releasing = False
    deliver = hostcmds_ssh._Output.data_received

    def hold_stderr(output: hostcmds_ssh._Output, data: bytes, datatype: DataType) -> None:
        if datatype == EXTENDED_DATA_STDERR and not releasing:
            held.append((output, data))
        else:
            deliver(output, data, datatype)

    monkeypatch.setattr(hostcmds_ssh._Output, "data_received", hold_stderr)

    async def scenario() -> None:
        nonlocal releasing
        async with runner_for(sshd) as runner:
            task = asyncio.create_task(
                runner.run(["sh", "-c", f"echo $$ > {pidfile}; exec sleep 60"], timeout=60)
            )
            pid = int(await wait_for_file(pidfile))
            task.cancel()
            await asyncio.sleep(0.3)
            assert not task.done()  # waiting for the pid line, not given up on the command
            releasing = True
            for output, data in held:
                deliver(output, data, EXTENDED_DATA_STDERR)
            with pytest.raises(asyncio.CancelledError):
                await task
            assert wait_until_gone([pid])

    run(scenario())


@needs_sshd
def test_concurrent_calls_share_one_connection_even_beyond_sshds_session_limit(
    sshd: SshServer,
) -> None:
    async def scenario() -> None:
        async with runner_for(sshd) as runner:
            calls = [
                runner.run(["sh", "-c", f"sleep 0.2; echo {n}"], timeout=20) for n in range(12)
            ]
            results = await asyncio.gather(*calls)
            assert [r.text for r in results] == [f"{n}\n" for n in range(12)]

    run(scenario())
    assert sshd.logins() == 1  # 12 commands, MaxSessions 10, one connection


# -- connections ------------------------------------------------------------------------------


@needs_sshd
def test_the_runner_reconnects_after_the_server_restarts(sshd: SshServer) -> None:
    async def scenario() -> None:
        async with runner_for(sshd) as runner:
            assert (await runner.run(["echo", "one"], timeout=10)).text == "one\n"
            sshd.stop()  # the connection dies with the server
            sshd.start()
            assert (await runner.run(["echo", "two"], timeout=10)).text == "two\n"

    run(scenario())
    assert sshd.logins() == 2


@needs_sshd
def test_a_connection_lost_mid_command_is_host_unreachable_with_outcome_unknown(
    sshd: SshServer, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pid"

    async def scenario() -> None:
        async with runner_for(sshd) as runner:
            task = asyncio.create_task(
                runner.run(["sh", "-c", f"echo $$ > {pidfile}; exec sleep 60"], timeout=30)
            )
            await wait_for_file(pidfile)
            sshd.stop()
            with pytest.raises(HostUnreachable, match="outcome is unknown") as caught:
                await task
            assert caught.value.host == f"{sshd.user}@127.0.0.1:{sshd.port}"
            sshd.start()
            assert (await runner.run(["true"], timeout=10)).returncode == 0

    run(scenario())


@needs_sshd
def test_a_host_that_is_down_fails_fast_with_host_unreachable_and_works_once_up(
    tmp_path: Path,
) -> None:
    server = SshServer(tmp_path / "sshd")  # configured, not started: nothing listens

    async def scenario() -> None:
        async with runner_for(server) as runner:
            started = time.monotonic()
            with pytest.raises(HostUnreachable) as caught:
                await runner.run(["echo", SECRET], timeout=10, secrets=[SECRET])
            assert time.monotonic() - started < 2
            assert type(caught.value) is HostUnreachable
            assert str(caught.value) == (
                f"ssh {server.user}@127.0.0.1:{server.port}: Connection refused"
            )
            server.start()
            try:
                assert (await runner.run(["echo", "up"], timeout=10)).text == "up\n"
            finally:
                server.stop()

    run(scenario())


def test_a_host_that_never_answers_fails_after_one_connect_timeout_shared_by_queued_calls(
    tmp_path: Path,
) -> None:
    (tmp_path / "known_hosts").write_text("")
    with socket.socket() as silent:  # accepts TCP, never speaks SSH
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        host = SshHost("127.0.0.1", port, known_hosts=tmp_path / "known_hosts", connect_timeout=0.5)

        async def scenario() -> None:
            async with SshRunner(host) as runner:
                started = time.monotonic()
                calls = [runner.run(["true"], timeout=10) for _ in range(3)]
                errors = await asyncio.gather(*calls, return_exceptions=True)
                assert time.monotonic() - started < 2
                for error in errors:
                    assert isinstance(error, HostUnreachable)
                    assert str(error).endswith("no SSH connection within 0.5 s")

        run(scenario())
        silent.setblocking(False)
        attempts = 0
        with contextlib.suppress(BlockingIOError):
            while True:
                silent.accept()[0].close()
                attempts += 1
        assert attempts == 1


@needs_sshd
def test_a_host_key_not_in_known_hosts_is_refused_and_nothing_runs(
    sshd: SshServer, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    impostor = public_line(new_key(tmp_path / "other_host_key"))
    wrong = tmp_path / "wrong_known_hosts"
    wrong.write_text(f"[127.0.0.1]:{sshd.port} {impostor}\n")
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")

    async def refused(known_hosts: Path) -> str:
        async with runner_for(sshd, known_hosts=known_hosts) as runner:
            with pytest.raises(HostKeyRejected) as caught:
                await runner.run(["touch", str(marker)], timeout=10)
            return str(caught.value)

    assert run(refused(wrong)).endswith(f"host key not trusted by known_hosts file {wrong}")
    assert "not trusted" in run(refused(empty))
    assert "cannot read known_hosts file" in run(refused(tmp_path / "missing"))
    assert not marker.exists()
    assert sshd.logins() == 0


@needs_sshd
def test_a_pinned_host_key_is_the_only_key_trusted(sshd: SshServer, tmp_path: Path) -> None:
    impostor = public_line(new_key(tmp_path / "other_host_key"))

    async def scenario() -> None:
        async with runner_for(sshd, known_hosts=None, host_key=sshd.host_key) as runner:
            assert (await runner.run(["echo", "pinned"], timeout=10)).text == "pinned\n"
        async with runner_for(sshd, known_hosts=None, host_key=impostor) as runner:
            with pytest.raises(HostKeyRejected, match="not trusted by the pinned host key"):
                await runner.connect()

    run(scenario())
    assert sshd.logins() == 1


@needs_sshd
def test_a_client_key_the_host_does_not_accept_is_host_auth_failed(
    sshd: SshServer, tmp_path: Path
) -> None:
    stranger = tmp_path / "stranger_key"
    new_key(stranger)

    async def scenario() -> None:
        async with runner_for(sshd, key_file=stranger) as runner:
            with pytest.raises(HostAuthFailed, match=f"key {stranger} refused for user"):
                await runner.run(["true"], timeout=10)
        async with runner_for(sshd, key_file=tmp_path / "no_such_key") as runner:
            with pytest.raises(HostAuthFailed, match="cannot read key file"):
                await runner.run(["true"], timeout=10)

    run(scenario())
    assert sshd.logins() == 0


# -- configuration ----------------------------------------------------------------------------


def test_ssh_urls_parse_into_hosts_and_bad_ones_are_refused_without_echoing_a_password(
    tmp_path: Path,
) -> None:
    host = parse_ssh_url("ssh://ops@storage-1.example:2222", key_file="/k", connect_timeout=3)
    assert (host.host, host.port, host.username, host.key_file) == (
        "storage-1.example",
        2222,
        "ops",
        Path("/k"),
    )
    assert host.connect_timeout == 3 and host.host_key is None
    assert host.known_hosts == Path.home() / ".ssh" / "known_hosts"
    assert host.label == "ops@storage-1.example:2222"
    v6 = parse_ssh_url("ssh://[fd00::5]", known_hosts=tmp_path / "kh")
    assert (v6.host, v6.port, v6.known_hosts) == ("fd00::5", 22, tmp_path / "kh")
    assert v6.label.endswith("@[fd00::5]:22")
    with pytest.raises(ValueError, match="holds a password") as caught:
        parse_ssh_url(f"ssh://ops:{SECRET}@h")
    assert SECRET not in str(caught.value)
    for url, error in [
        ("http://h", "must start with ssh://"),
        ("ssh://", "names no host"),
        ("ssh://h/var", "has a path"),
        ("ssh://h:99999", "out of range"),
    ]:
        with pytest.raises(ValueError, match=error):
            parse_ssh_url(url)
    with pytest.raises(ValueError, match="not both"):
        parse_ssh_url("ssh://h", known_hosts="/kh", host_key="ssh-ed25519 AAAA")
    with pytest.raises(ValueError, match="not an OpenSSH public key"):
        parse_ssh_url("ssh://h", host_key="ssh-ed25519 garbage")
    with pytest.raises(ValueError, match="invalid environment variable names: A-B"):
        ssh_runner("ssh://h", env={"A-B": "x"})
