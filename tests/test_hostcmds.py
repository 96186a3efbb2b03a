"""hostcmds: command templates (INI property files) and the runners."""

from __future__ import annotations

import asyncio
import importlib.resources
import logging
import sys
import time
from pathlib import Path

import pytest

from hostcmds import (
    CommandError,
    CommandNotFound,
    CommandRunner,
    CommandTimeout,
    LocalRunner,
    MissingValueError,
    RecordingRunner,
    Reply,
    StreamingRunner,
    TemplateError,
    UnsafeValueError,
    UnscriptedCommand,
    load_templates,
    parse_template,
)
from hostcmds.templates import shipped_sources
from tests.vmm_fixtures import run

SECRET = "s3cretCHAPpass"
SHIPPED = {
    "xen-xl",
    "xen-xm",
    "virsh",
    "losetup",
    "iscsiadm",
    "tgt",
    "lvm",
    "rbd",
    "qemu-img",
    "remote-file",
}


# -- templates --------------------------------------------------------------------------------


def test_seed_line_splits_once_and_substitutes_inside_tokens() -> None:
    template = parse_template("t", "xl block-attach <domUId> phy:<dom0Dev> <domUDev> w")
    assert template.placeholders == {"domUId", "dom0Dev", "domUDev"}
    argv = template.render(domUId=7, dom0Dev="/dev/vg0/vol-1", domUDev="xvdf")
    assert argv == ["xl", "block-attach", "7", "phy:/dev/vg0/vol-1", "xvdf", "w"]


def test_a_token_may_hold_several_placeholders_and_quoted_literal_text() -> None:
    template = parse_template("t", "lvs --config 'global{activation=0} x' <vg>/<lv>:<vg>")
    assert template.render({"vg": "vg0", "lv": "vol-1"}) == [
        "lvs",
        "--config",
        "global{activation=0} x",
        "vg0/vol-1:vg0",
    ]


def test_a_value_can_never_add_or_split_an_argument() -> None:
    template = parse_template("t", "losetup --detach <loopDev>")
    with pytest.raises(UnsafeValueError, match="metacharacter ' '"):
        template.render(loopDev="/dev/loop0 /dev/loop1")


@pytest.mark.parametrize(
    "value",
    [
        "a;reboot",
        "a|b",
        "a&b",
        "$(id)",
        "`id`",
        "a>b",
        "a<b",
        "a\nb",
        "a\x00b",
        "a\tb",
        "a*b",
        "~root",
    ],
)
def test_values_with_shell_metacharacters_nul_or_newlines_are_refused(value: str) -> None:
    template = parse_template("t", "tgtadm --password <chapSecret>")
    with pytest.raises(UnsafeValueError) as caught:
        template.render(chapSecret=value)
    assert value not in str(caught.value)  # the refused value may be a secret: never echoed


def test_a_whole_argument_value_may_not_start_with_a_dash_but_a_token_part_may() -> None:
    template = parse_template("t", "virsh dumpxml <domain> --size=<size>")
    with pytest.raises(UnsafeValueError, match="start with '-'"):
        template.render(domain="--help", size="1")
    assert template.render(domain="web1", size="-1")[-1] == "--size=-1"


def test_missing_and_empty_values_are_errors() -> None:
    template = parse_template("lvm.lvExtendCmd", "lvextend --size <sizeBytes>b <vg>/<lv>")
    with pytest.raises(MissingValueError, match="<lv>") as caught:
        template.render(sizeBytes=1, vg="vg0")
    assert caught.value.name == "lv"
    with pytest.raises(UnsafeValueError, match="empty"):
        template.render(sizeBytes=1, vg="vg0", lv="")


def test_values_the_template_does_not_name_are_ignored() -> None:
    template = parse_template("t", "xl list")
    assert template.render(domUId="web1") == ["xl", "list"]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("xl list | grep web1", "shell syntax '|'"),
        ("xl list > /tmp/out", "shell syntax '>'"),
        ("xl list ; reboot", "shell syntax ';'"),
        ("<tool> list", "program name cannot be a placeholder"),
        ("xl 'unbalanced", "cannot be split"),
        ("   ", "is empty"),
    ],
)
def test_malformed_templates_are_refused_at_load(text: str, error: str) -> None:
    with pytest.raises(TemplateError, match=error):
        parse_template("t", text)


def test_every_shipped_tool_loads_and_keeps_lower_camel_keys() -> None:
    templates = load_templates()
    assert set(templates.tools()) == SHIPPED
    assert "blockAttachCmd" in templates.keys("xen-xl")
    assert templates.get("xen-xm", "blockAttachCmd").text == (
        "xm block-attach <domUId> phy:<dom0Dev> <domUDev> w"
    )
    files = {e.name for e in importlib.resources.files("hostcmds").iterdir()}
    assert {f"{tool}.ini" for tool in SHIPPED} <= files
    assert set(shipped_sources()) == SHIPPED


def test_user_config_overrides_a_line_and_adds_a_profile_but_not_a_misspelled_key() -> None:
    templates = load_templates(
        {
            "losetup": {"attachCmd": "losetup --find --show --direct-io=on <path>"},
            "xen-site": {"listCmd": "/opt/xen/bin/xl list"},
        }
    )
    assert templates.render("losetup", "attachCmd", path="/v/vol-1.raw") == [
        "losetup",
        "--find",
        "--show",
        "--direct-io=on",
        "/v/vol-1.raw",
    ]
    assert templates.render("losetup", "detachCmd", loopDev="/dev/loop3") == [
        "losetup",
        "--detach",
        "/dev/loop3",
    ]
    assert templates.render("xen-site", "listCmd") == ["/opt/xen/bin/xl", "list"]
    with pytest.raises(TemplateError, match="unknown templates: atachCmd"):
        load_templates({"losetup": {"atachCmd": "losetup -f <path>"}})
    with pytest.raises(TemplateError, match="shell syntax"):
        load_templates({"losetup": {"listCmd": "losetup -l | cat"}})
    with pytest.raises(TemplateError, match="no template 'nope'"):
        templates.get("losetup", "nope")
    with pytest.raises(TemplateError, match="no command templates for tool 'nope'"):
        templates.get("nope", "listCmd")


# -- LocalRunner ------------------------------------------------------------------------------


def python(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", code, *args]


def test_local_runner_returns_output_and_feeds_input() -> None:
    runner = LocalRunner(env={"EBS_TEST_VALUE": "from-env"})
    assert isinstance(runner, CommandRunner)
    code = "import os,sys; print(sys.stdin.read().upper() + os.environ['EBS_TEST_VALUE'])"
    result = run(runner.run(python(code), timeout=10, input=b"abc"))
    assert (result.returncode, result.text) == (0, "ABCfrom-env\n")


def test_local_runner_raises_typed_errors_with_exit_status_and_stderr() -> None:
    runner = LocalRunner()
    failing = python("import sys; sys.stderr.write('disk on fire\\n'); sys.exit(3)")
    with pytest.raises(CommandError) as caught:
        run(runner.run(failing, timeout=10))
    assert caught.value.returncode == 3
    assert caught.value.stderr == "disk on fire\n"
    assert "exited 3: disk on fire" in str(caught.value)
    unchecked = run(runner.run(failing, timeout=10, check=False))
    assert unchecked.returncode == 3
    with pytest.raises(CommandNotFound) as missing:
        run(runner.run(["/nonexistent/tool", "x"], timeout=10))
    assert missing.value.returncode == 127


def process_gone(pid: int) -> bool:
    """Dead, or a zombie waiting for init to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_local_runner_timeout_kills_the_command_and_its_children(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    code = (
        "import os,subprocess,sys,time; child = subprocess.Popen(['sleep', '60']);"
        "open(sys.argv[1], 'w').write(f'{os.getpid()} {child.pid}'); time.sleep(60)"
    )
    started = time.monotonic()
    with pytest.raises(CommandTimeout) as caught:
        run(LocalRunner().run(python(code, str(pids)), timeout=1.0))
    assert time.monotonic() - started < 5
    assert caught.value.timeout == 1.0
    parent, child = map(int, pids.read_text().split())
    deadline = time.monotonic() + 5
    while not (process_gone(parent) and process_gone(child)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process_gone(parent) and process_gone(child)


def test_cancelling_a_run_kills_the_command(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    code = "import os,sys,time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(60)"

    async def scenario() -> None:
        task = asyncio.create_task(LocalRunner().run(python(code, str(pidfile)), timeout=60))
        while not pidfile.exists() or not pidfile.read_text():
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(scenario())
    assert process_gone(int(pidfile.read_text()))


def test_a_streamed_command_is_read_as_it_writes_without_holding_its_output() -> None:
    runner = LocalRunner(env={"EBS_TEST_VALUE": "x"})
    assert isinstance(runner, StreamingRunner)
    megabytes = 64
    code = (
        "import os,sys; chunk = os.environ['EBS_TEST_VALUE'].encode() * (1 << 20)\n"
        f"for _ in range({megabytes}): sys.stdout.buffer.write(chunk)"
    )
    total, largest = 0, 0
    with runner.read_stream(python(code), timeout=10) as read:
        while chunk := read(1 << 20):
            total += len(chunk)
            largest = max(largest, len(chunk))
            assert set(chunk) == {ord("x")}
    assert total == megabytes << 20 and largest <= 1 << 20


def test_a_streamed_command_that_fails_raises_its_exit_status_and_stderr() -> None:
    failing = python(
        "import sys; print('partial'); sys.stderr.write('disk on fire\\n'); sys.exit(4)"
    )
    runner = LocalRunner()
    with pytest.raises(CommandError) as caught, runner.read_stream(failing, timeout=10) as read:
        output = b""
        while chunk := read(100):  # each read gives what has been written, up to 100 bytes
            output += chunk
        assert output == b"partial\n"
    assert (caught.value.returncode, caught.value.stderr) == (4, "disk on fire\n")
    with pytest.raises(CommandNotFound), runner.read_stream(["/nonexistent/tool"], timeout=10):
        pass


def test_a_stream_cut_short_by_its_commands_failure_raises_that_failure() -> None:
    """The reader fails on a stream that ends too soon; the command's own error says why."""
    failing = python(
        "import sys; sys.stdout.write('half a rec'); sys.stdout.flush();"
        "sys.stderr.write('snapshot removed\\n'); sys.exit(2)"
    )
    with (
        pytest.raises(CommandError) as caught,
        LocalRunner().read_stream(failing, timeout=10) as read,
    ):
        while read(100):
            pass
        raise ValueError("the stream ends inside a record")
    assert (caught.value.returncode, caught.value.stderr) == (2, "snapshot removed\n")
    assert isinstance(caught.value.__cause__, ValueError)


WRITE_PID = "import os,sys,time; open(sys.argv[1], 'w').write(str(os.getpid()))\n"


def test_a_silent_streamed_command_times_out_and_is_killed(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    silent = python(WRITE_PID + "time.sleep(60)", str(pidfile))
    started = time.monotonic()
    with pytest.raises(CommandTimeout), LocalRunner().read_stream(silent, timeout=0.5) as read:
        read(10)
    assert time.monotonic() - started < 5 and process_gone(int(pidfile.read_text()))


def test_a_streamed_command_left_by_an_exception_is_killed(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    endless = python(
        WRITE_PID + "while True: sys.stdout.buffer.write(os.urandom(65536))", str(pidfile)
    )
    runner = LocalRunner()
    with pytest.raises(ValueError, match="enough"), runner.read_stream(endless, timeout=10) as read:
        read(1000)
        raise ValueError("read enough")
    assert process_gone(int(pidfile.read_text()))


def test_secrets_are_masked_in_logs_and_errors(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="hostcmds")
    code = "import sys; sys.stderr.write('bad password ' + sys.argv[1]); sys.exit(1)"
    argv = python(code, SECRET)
    with pytest.raises(CommandError) as caught:
        run(LocalRunner().run(argv, timeout=10, secrets=[SECRET]))
    assert SECRET not in caplog.text
    assert "***" in caplog.text and "exit 1" in caplog.text
    assert "bad password ***" in caplog.text
    assert SECRET not in str(caught.value) + caught.value.stderr + " ".join(caught.value.argv)
    ok = run(LocalRunner().run(["echo", SECRET], timeout=10, secrets=[SECRET]))
    assert ok.argv == ("echo", "***")
    assert ok.text == SECRET + "\n"  # output is the caller's: returned as written
    assert SECRET not in caplog.text


def test_runner_refuses_a_shell_string_an_empty_argv_and_nul() -> None:
    runner = LocalRunner()
    with pytest.raises(TypeError):
        run(runner.run("echo hi", timeout=5))
    with pytest.raises(ValueError, match="empty"):
        run(runner.run([], timeout=5))
    with pytest.raises(ValueError, match="NUL"):
        run(runner.run(["echo", "a\x00b"], timeout=5))


# -- RecordingRunner --------------------------------------------------------------------------


def test_recording_runner_answers_by_longest_prefix_and_records_exact_argv() -> None:
    runner = RecordingRunner(
        [
            (["xl"], Reply(stdout="generic")),
            (["xl", "list"], Reply(stdout="listing")),
        ],
        default=None,
    )
    assert isinstance(runner, CommandRunner)
    assert run(runner.run(["xl", "list", "-l"], timeout=5)).text == "listing"
    assert run(runner.run(["xl", "info"], timeout=5, input=b"in")).text == "generic"
    assert runner.argvs == [["xl", "list", "-l"], ["xl", "info"]]
    assert runner.calls[1].input == b"in" and runner.calls[1].timeout == 5
    with pytest.raises(UnscriptedCommand):
        run(runner.run(["virsh", "list"], timeout=5))


def test_recording_runner_fails_the_nth_call_and_can_time_out() -> None:
    runner = RecordingRunner(responder=lambda argv: Reply(stdout=argv[-1]))
    runner.fail_call(2, Reply(2, stderr=f"wrong {SECRET}"))
    runner.fail_call(3, Reply(timeout=True))
    assert run(runner.run(["a", "1"], timeout=5)).text == "1"
    with pytest.raises(CommandError) as caught:
        run(runner.run(["a", SECRET], timeout=5, secrets=[SECRET]))
    assert caught.value.returncode == 2
    assert caught.value.stderr == "wrong ***" and caught.value.argv == ("a", "***")
    with pytest.raises(CommandTimeout):
        run(runner.run(["a", "3"], timeout=5))
    assert run(runner.run(["a", "4"], timeout=5)).text == "4"
    assert runner.argvs[1] == ["a", SECRET]  # recorded unmasked, for exact-argv assertions
