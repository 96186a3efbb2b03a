"""The tgt export backend against a real tgtd of the test's own (tests/tgt_fixtures.py), with
libiscsi tools and qemu-io as initiators; the command order and secret handling also argv by
argv with the recording runner; the ``none`` export; the export records."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import logging
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from backends.base import ExportBackend, ExportInfo, Initiator, IscsiSource, LocalSource
from backends.errors import SetupError
from backends.export import (
    EXPORTS,
    ExportConflict,
    ExportError,
    NoExport,
    TgtConfig,
    TgtExport,
    export_from_dict,
    export_to_dict,
)
from backends.export.tgtshow import LiveTarget, parse_accounts, parse_targets
from hostcmds import CommandResult, LocalRunner, RecordingRunner, Reply, load_templates
from tests.test_backend_compliance import (
    test_backend_implements_protocol_with_matching_signatures as check_protocol,
)
from tests.tgt_fixtures import (
    INITIATOR_NAME,
    Tgtd,
    free_control_port,
    iscsi_url,
    libiscsi,
    qemu_io,
    running_tgtd,
)
from tests.vmm_fixtures import new_volume_id, run, sparse_file

MIB = 1024 * 1024
SIZE = 64 * MIB
HOST = Initiator(address="127.0.0.1")


@pytest.fixture
def tgtd(tmp_path: Path) -> Iterator[Tgtd]:
    with running_tgtd(tmp_path) as daemon:
        yield daemon


def exporter(tgtd: Tgtd, tmp_path: Path, **config: Any) -> TgtExport:
    return TgtExport(
        LocalRunner(),
        load_templates(),
        TgtConfig(
            record_dir=tmp_path / "exports",
            portal=tgtd.portal,
            control_port=tgtd.control_port,
            **config,
        ),
    )


def volume(tmp_path: Path, data: bytes = b"", offset: int = 0) -> tuple[str, Path]:
    volume_id = new_volume_id()
    return volume_id, sparse_file(tmp_path / f"{volume_id}.raw", SIZE, data, offset)


def iscsi(info: ExportInfo) -> IscsiSource:
    assert isinstance(info.source, IscsiSource)
    return info.source


def logs_in(source: IscsiSource, **kwargs: Any) -> bool:
    initiator = kwargs.pop("initiator", INITIATOR_NAME)
    result = libiscsi("iscsi-inq", iscsi_url(source, **kwargs), initiator=initiator)
    return result.returncode == 0


def refusal(source: IscsiSource, **kwargs: Any) -> str:
    """libiscsi's message for a refused login (fails the test if the login succeeds)."""
    initiator = kwargs.pop("initiator", INITIATOR_NAME)
    result = libiscsi("iscsi-inq", iscsi_url(source, **kwargs), initiator=initiator)
    assert result.returncode != 0, "login was accepted"
    return result.stderr


def live_target(tgtd: Tgtd, iqn: str) -> LiveTarget:
    target = parse_targets(tgtd.show_targets()).get(iqn)
    assert target is not None, f"tgtd has no target {iqn}"
    return target


# -- data path ----------------------------------------------------------------------------------


def test_exported_volume_is_read_and_written_through_iscsi_with_its_chap_secret(
    tgtd: Tgtd, tmp_path: Path
) -> None:
    volume_id, path = volume(tmp_path, b"\x11" * MIB)
    backend = exporter(tgtd, tmp_path)

    async def scenario() -> ExportInfo:
        await backend.check_setup()
        return await backend.export(volume_id, str(path), HOST)

    info = run(scenario())
    source = iscsi(info)
    assert info == ExportInfo(volume_id, str(path), HOST, source)
    assert (source.portal, source.iqn, source.lun) == (
        tgtd.portal,
        f"iqn.2010-10.org.ebsemu:{volume_id}",
        1,
    )
    inq = libiscsi("iscsi-inq", iscsi_url(source))
    assert inq.returncode == 0 and "DIRECT_ACCESS" in inq.stdout
    capacity = libiscsi("iscsi-readcapacity16", iscsi_url(source))
    assert capacity.returncode == 0 and f"Total size:{SIZE}" in capacity.stdout

    io = qemu_io(
        source, ["read -P 0x11 0 1M", "write -P 0xab 4M 2M", "read -P 0xab 4M 2M"], tmp_path
    )
    assert io.returncode == 0 and "Pattern verification failed" not in io.stdout, io.stderr
    with path.open("rb") as handle:
        handle.seek(4 * MIB)
        assert handle.read(2 * MIB) == b"\xab" * (2 * MIB)
        assert handle.read(MIB) == bytes(MIB)


def test_wrong_missing_or_another_volumes_chap_secret_is_refused(
    tgtd: Tgtd, tmp_path: Path
) -> None:
    (a_id, a_path), (b_id, b_path) = volume(tmp_path), volume(tmp_path)
    backend = exporter(tgtd, tmp_path)

    async def scenario() -> tuple[ExportInfo, ExportInfo]:
        return (
            await backend.export(a_id, str(a_path), HOST),
            await backend.export(b_id, str(b_path), HOST),
        )

    a, b = (iscsi(info) for info in run(scenario()))
    assert logs_in(a)
    assert "Authentication failure" in refusal(a, secret="not-the-secret-1234")
    assert "Authentication failure" in refusal(a, user="", secret="")
    assert "Authentication failure" in refusal(a, user=b.chap_user, secret=b.chap_secret)
    assert "Authentication failure" in refusal(a, user=a.chap_user, secret=b.chap_secret)


def test_initiator_other_than_the_attaching_host_is_refused(tgtd: Tgtd, tmp_path: Path) -> None:
    (by_address, path1), (by_name, path2) = volume(tmp_path), volume(tmp_path)
    vmm_host = "iqn.2024-01.org.ebsemu.test:vmm-host-1"
    backend = exporter(tgtd, tmp_path)

    async def scenario() -> tuple[ExportInfo, ExportInfo]:
        return (
            await backend.export(by_address, str(path1), Initiator(address="127.0.0.2")),
            await backend.export(by_name, str(path2), Initiator(name=vmm_host)),
        )

    elsewhere, named = (iscsi(info) for info in run(scenario()))
    # The tests connect from 127.0.0.1: an export to 127.0.0.2 does not even show the target.
    assert "Target not found" in refusal(elsewhere)
    assert logs_in(named, initiator=vmm_host)
    assert "Target not found" in refusal(named, initiator=INITIATOR_NAME)
    acl = live_target(tgtd, named.iqn)
    assert (acl.addresses, acl.names) == ([], [vmm_host])
    acl = live_target(tgtd, elsewhere.iqn)
    assert (acl.addresses, acl.names) == (["127.0.0.2"], [])


def test_initiator_with_address_and_name_is_bound_by_address_only(
    tgtd: Tgtd, tmp_path: Path
) -> None:
    """tgt admits a match of any one ACL entry: binding the name too would let it in from any
    address."""
    volume_id, path = volume(tmp_path)
    both = Initiator(address="127.0.0.2", name=INITIATOR_NAME)
    backend = exporter(tgtd, tmp_path)
    source = iscsi(run(backend.export(volume_id, str(path), both)))
    target = live_target(tgtd, source.iqn)
    assert (target.addresses, target.names) == (["127.0.0.2"], [])
    assert "Target not found" in refusal(source, initiator=INITIATOR_NAME)


# -- lifecycle ----------------------------------------------------------------------------------


def test_unexport_removes_target_account_and_record_and_is_idempotent(
    tgtd: Tgtd, tmp_path: Path
) -> None:
    volume_id, path = volume(tmp_path)
    backend = exporter(tgtd, tmp_path)
    source = iscsi(run(backend.export(volume_id, str(path), HOST)))
    assert logs_in(source)
    assert tgtd.accounts() == [source.chap_user]

    run(backend.unexport(volume_id))
    assert source.iqn not in parse_targets(tgtd.show_targets())
    assert tgtd.accounts() == []
    assert list((tmp_path / "exports").iterdir()) == []
    assert "Login Failed" in refusal(source)
    assert run(backend.list_exports()) == []
    run(backend.unexport(volume_id))  # nothing left: not an error
    run(backend.unexport(new_volume_id()))  # never exported: not an error


def test_export_again_returns_the_same_credentials_and_another_initiator_conflicts(
    tgtd: Tgtd, tmp_path: Path
) -> None:
    volume_id, path = volume(tmp_path)
    backend = exporter(tgtd, tmp_path)

    async def scenario() -> None:
        first = await backend.export(volume_id, str(path), HOST)
        again = await backend.export(volume_id, str(path), HOST)
        assert again == first and iscsi(again).chap_secret == iscsi(first).chap_secret
        assert len(parse_targets(tgtd.show_targets())) == 1
        with pytest.raises(ExportConflict, match="unexport it first"):
            await backend.export(volume_id, str(path), Initiator(address="127.0.0.9"))
        with pytest.raises(ExportConflict):
            await backend.export(volume_id, str(tmp_path / "other.raw"), HOST)
        assert logs_in(iscsi(first))  # the conflicts changed nothing

    run(scenario())


def test_two_volumes_and_a_re_export_get_different_chap_users_and_secrets(
    tgtd: Tgtd, tmp_path: Path
) -> None:
    (a_id, a_path), (b_id, b_path) = volume(tmp_path), volume(tmp_path)
    backend = exporter(tgtd, tmp_path)

    async def scenario() -> list[IscsiSource]:
        a = iscsi(await backend.export(a_id, str(a_path), HOST))
        b = iscsi(await backend.export(b_id, str(b_path), HOST))
        await backend.unexport(a_id)
        a_again = iscsi(await backend.export(a_id, str(a_path), HOST))
        return [a, b, a_again]

    sources = run(scenario())
    assert len({s.chap_user for s in sources}) == len({s.chap_secret for s in sources}) == 3
    assert all(s.chap_secret and len(s.chap_secret) >= 32 for s in sources)
    assert sorted(tgtd.accounts()) == sorted(str(s.chap_user) for s in sources[1:])


def test_concurrent_exports_get_targets_of_their_own(tgtd: Tgtd, tmp_path: Path) -> None:
    volumes = [volume(tmp_path) for _ in range(4)]
    backend = exporter(tgtd, tmp_path)

    async def scenario() -> list[ExportInfo]:
        return list(
            await asyncio.gather(*(backend.export(vid, str(path), HOST) for vid, path in volumes))
        )

    sources = [iscsi(info) for info in run(scenario())]
    targets = parse_targets(tgtd.show_targets())
    assert sorted(targets) == sorted(s.iqn for s in sources)
    assert sorted(t.tid for t in targets.values()) == [1, 2, 3, 4]
    assert all(logs_in(source) for source in sources)


def test_restore_after_tgtd_restart_brings_exports_back_and_data_still_reads(
    tgtd: Tgtd, tmp_path: Path
) -> None:
    (a_id, a_path), (b_id, b_path) = volume(tmp_path), volume(tmp_path)
    backend = exporter(tgtd, tmp_path)

    async def export_both() -> list[ExportInfo]:
        return [
            await backend.export(a_id, str(a_path), HOST),
            await backend.export(b_id, str(b_path), Initiator(name=INITIATOR_NAME)),
        ]

    infos = run(export_both())
    a, b = (iscsi(info) for info in infos)
    written = qemu_io(a, ["write -P 0x5c 8M 1M"], tmp_path)
    assert written.returncode == 0, written.stderr

    tgtd.crash()
    tgtd.start()
    assert parse_targets(tgtd.show_targets()) == {}
    assert "Login Failed" in refusal(a)
    assert run(backend.list_exports()) == sorted([a_id, b_id])  # the records remain

    assert run(backend.restore(infos)) == [a_id, b_id]
    read = qemu_io(a, ["read -P 0x5c 8M 1M"], tmp_path)
    assert read.returncode == 0 and "Pattern verification failed" not in read.stdout, read.stderr
    assert logs_in(b)
    assert "Authentication failure" in refusal(b, secret="not-the-secret-1234")
    assert run(backend.restore(infos)) == []  # in effect as recorded: nothing touched


def test_restore_from_the_callers_records_repairs_a_drifted_target(
    tgtd: Tgtd, tmp_path: Path
) -> None:
    volume_id, path = volume(tmp_path)
    backend = exporter(tgtd, tmp_path)
    info = run(backend.export(volume_id, str(path), HOST))
    source = iscsi(info)
    tid = str(live_target(tgtd, source.iqn).tid)
    iscsi_target = ("--lld", "iscsi", "--mode", "target", "--tid", tid)
    tgtd.tgtadm(*iscsi_target, "--op", "bind", "-I", "127.0.0.3")
    tgtd.tgtadm("--lld", "iscsi", "--op", "unbind", "--mode", "account", "--tid", tid,
                "--user", str(source.chap_user))  # fmt: skip
    (tmp_path / "exports" / f"{volume_id}.json").unlink()
    assert logs_in(source, user="", secret="")  # no account bound: CHAP is off

    assert run(backend.restore([info])) == [volume_id]
    target = live_target(tgtd, source.iqn)
    assert (target.addresses, target.names, target.accounts) == (
        ["127.0.0.1"],
        [],
        [source.chap_user],
    )
    assert "Authentication failure" in refusal(source, user="", secret="")
    assert logs_in(source)
    record = tmp_path / "exports" / f"{volume_id}.json"
    assert json.loads(record.read_text())["chap_secret"] == source.chap_secret
    assert run(backend.restore([info])) == []


def test_restore_puts_the_callers_credentials_in_effect_and_drops_the_old_account(
    tgtd: Tgtd, tmp_path: Path
) -> None:
    volume_id, path = volume(tmp_path)
    backend = exporter(tgtd, tmp_path)
    info = run(backend.export(volume_id, str(path), HOST))
    old = iscsi(info)
    recorded = dataclasses.replace(
        old, chap_user="ebs-00112233445566ff", chap_secret="recorded-secret-0123456789abcdef"
    )
    assert run(backend.restore([dataclasses.replace(info, source=recorded)])) == [volume_id]
    assert tgtd.accounts() == [recorded.chap_user]
    assert logs_in(recorded)
    assert "Authentication failure" in refusal(old)


def test_restore_unbinds_a_foreign_account_bound_before_ours_and_tgtd_survives_it(
    tgtd: Tgtd, tmp_path: Path
) -> None:
    """tgtd 1.0.85 crashes when an account other than the last bound is unbound: restore
    unbinds from the last one on."""
    volume_id, path = volume(tmp_path)
    backend = exporter(tgtd, tmp_path)
    info = run(backend.export(volume_id, str(path), HOST))
    source = iscsi(info)
    tid = str(live_target(tgtd, source.iqn).tid)
    account = ("--lld", "iscsi", "--mode", "account")
    tgtd.tgtadm(*account, "--op", "unbind", "--tid", tid, "--user", str(source.chap_user))
    tgtd.tgtadm(*account, "--op", "new", "--user", "intruder", "--password", "intruder-pass-1")
    for user in ("intruder", str(source.chap_user)):
        tgtd.tgtadm(*account, "--op", "bind", "--tid", tid, "--user", user)
    assert live_target(tgtd, source.iqn).accounts == ["intruder", source.chap_user]

    assert run(backend.restore([info])) == [volume_id]
    assert live_target(tgtd, source.iqn).accounts == [source.chap_user]
    assert sorted(tgtd.accounts()) == sorted(["intruder", str(source.chap_user)])
    assert logs_in(source)
    assert "Authentication failure" in refusal(source, user="intruder", secret="intruder-pass-1")


def test_failed_export_is_rolled_back_leaving_no_target_account_or_record(
    tgtd: Tgtd, tmp_path: Path
) -> None:
    volume_id = new_volume_id()
    backend = exporter(tgtd, tmp_path)
    with pytest.raises(ExportError, match=f"export of {volume_id}"):
        run(backend.export(volume_id, str(tmp_path / "missing.raw"), HOST))
    assert parse_targets(tgtd.show_targets()) == {}
    assert tgtd.accounts() == []
    assert list((tmp_path / "exports").iterdir()) == []


def test_list_exports_names_live_targets_and_records_of_this_backend_only(
    tgtd: Tgtd, tmp_path: Path
) -> None:
    (live_id, path), orphan_id = volume(tmp_path), new_volume_id()
    backend = exporter(tgtd, tmp_path)
    run(backend.export(live_id, str(path), HOST))
    for iqn, tid in ((f"iqn.2010-10.org.ebsemu:{orphan_id}", "7"), ("iqn.2024-01.other:x", "8")):
        tgtd.tgtadm("--lld", "iscsi", "--op", "new", "--mode", "target", "--tid", tid, "-T", iqn)
    assert run(backend.list_exports()) == sorted([live_id, orphan_id])
    run(backend.unexport(orphan_id))
    assert run(backend.list_exports()) == [live_id]
    assert "iqn.2024-01.other:x" in parse_targets(tgtd.show_targets())


# -- secrets ------------------------------------------------------------------------------------


class SpyRunner(LocalRunner):
    """A LocalRunner that remembers every secret it was asked to mask."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: list[str] = []

    async def run(self, argv: Sequence[str], **kwargs: Any) -> CommandResult:
        self.secrets.extend(kwargs.get("secrets", ()))
        return await super().run(argv, **kwargs)


def test_chap_secret_stays_out_of_logs_errors_and_files_others_can_read(
    tgtd: Tgtd, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    (volume_id, path), (failing_id, failing_path) = volume(tmp_path), volume(tmp_path)
    backend = exporter(tgtd, tmp_path)
    # A stand-in account command that fails and repeats its argument (the secret) on stderr.
    spy = SpyRunner()
    echoing = TgtExport(
        spy,
        load_templates({"tgt": {"newAccountCmd": "ls -d <chapSecret>"}}),
        TgtConfig(tmp_path / "exports", portal=tgtd.portal, control_port=tgtd.control_port),
    )

    async def scenario() -> tuple[ExportInfo, ExportError]:
        info = await backend.export(volume_id, str(path), HOST)
        await backend.export(volume_id, str(path), HOST)
        tgtd.crash()
        tgtd.start()
        await backend.restore([info])
        with pytest.raises(ExportError) as failed:
            await echoing.export(failing_id, str(failing_path), HOST)
        await backend.unexport(volume_id)
        return info, failed.value

    info, error = run(scenario())
    secret = iscsi(info).chap_secret
    assert secret and secret not in caplog.text and secret not in repr(info)
    assert "--password '***'" in caplog.text
    assert len(spy.secrets) == 1 and spy.secrets[0] != secret
    assert "cannot access '***'" in str(error) and spy.secrets[0] not in str(error)
    assert spy.secrets[0] not in caplog.text
    assert parse_targets(tgtd.show_targets()) == {}  # the failed export was rolled back


def test_export_record_files_are_readable_by_their_owner_only(tgtd: Tgtd, tmp_path: Path) -> None:
    volume_id, path = volume(tmp_path)
    (tmp_path / "exports").mkdir(mode=0o755)
    backend = exporter(tgtd, tmp_path)
    run(backend.check_setup())
    run(backend.export(volume_id, str(path), HOST))
    directory = tmp_path / "exports"
    record = directory / f"{volume_id}.json"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert [p.name for p in directory.iterdir()] == [record.name]  # no temporary files left


def test_fresh_export_sets_up_account_and_lun_before_the_acl_opens_the_target(
    tmp_path: Path,
) -> None:
    """argv by argv: tgtd refuses everyone while a target's ACL is empty, so the ACL comes last;
    the secret is handed to the runner as a secret on the one command that carries it."""
    runner = RecordingRunner([(["tgtadm", "-C", "5", "--op", "show", "--mode", "sys"], Reply())])
    backend = TgtExport(
        runner,
        load_templates(),
        TgtConfig(record_dir=tmp_path / "exports", portal="192.0.2.1:3260", control_port=5),
    )
    info = run(backend.export("vol-0123456789abcdef0", "/dev/vg0/vol-0123456789abcdef0", HOST))
    source = iscsi(info)
    user, secret = source.chap_user, source.chap_secret
    assert user and secret
    tgtadm = ["tgtadm", "-C", "5", "--lld", "iscsi"]
    iqn = "iqn.2010-10.org.ebsemu:vol-0123456789abcdef0"
    assert runner.argvs == [
        [*tgtadm, "--op", "show", "--mode", "target"],
        [*tgtadm, "--op", "show", "--mode", "account"],
        [*tgtadm, "--op", "new", "--mode", "target", "--tid", "1", "-T", iqn],
        [*tgtadm, "--op", "new", "--mode", "account", "--user", user, "--password", secret],
        [*tgtadm, "--op", "bind", "--mode", "account", "--tid", "1", "--user", user],
        [*tgtadm, "--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1",
         "--bstype", "rdwr", "-b", "/dev/vg0/vol-0123456789abcdef0"],
        [*tgtadm, "--op", "bind", "--mode", "target", "--tid", "1", "-I", "127.0.0.1"],
    ]  # fmt: skip
    assert [call.secrets for call in runner.calls] == [(), (), (), (secret,), (), (), ()]
    assert all(0 < call.timeout <= 30 for call in runner.calls)
    assert source.portal == "192.0.2.1:3260"


def test_check_setup_names_a_tgtd_not_running_and_an_unknown_backing_store_type(
    tgtd: Tgtd, tmp_path: Path
) -> None:
    run(exporter(tgtd, tmp_path).check_setup())
    with pytest.raises(SetupError, match="no backing store type 'nbd'"):
        run(exporter(tgtd, tmp_path, bs_type="nbd").check_setup())
    absent = dataclasses.replace(tgtd, control_port=free_control_port(), proc=None)
    with pytest.raises(SetupError, match=r"tgtd does not answer .* start it with tgtd -C"):
        run(exporter(absent, tmp_path).check_setup())


def test_bad_volume_ids_initiators_and_options_are_refused_before_any_command(
    tmp_path: Path,
) -> None:
    runner = RecordingRunner(default=None)
    templates = load_templates()
    backend = TgtExport(runner, templates, TgtConfig(record_dir=tmp_path))
    with pytest.raises(ExportError, match="not a volume id"):
        run(backend.export("../etc", "/x", HOST))
    with pytest.raises(ExportError, match="not an IP address"):
        run(backend.export("vol-0123456789abcdef0", "/x", Initiator(address="ALL")))
    with pytest.raises(ExportError, match="not an iqn"):
        run(backend.export("vol-0123456789abcdef0", "/x", Initiator(name="any;thing")))
    with pytest.raises(ValueError, match="address or an initiator name"):
        Initiator()
    assert runner.calls == []

    built = EXPORTS["tgt"].from_options(
        {"record_dir": str(tmp_path), "portal": "10.0.0.5:3260", "control_port": "3"},
        runner=runner,
        templates=templates,
    )
    assert isinstance(built, TgtExport) and built.target_iqn("vol-01234567") == (
        "iqn.2010-10.org.ebsemu:vol-01234567"
    )
    for options, message in (
        ({"record_dir": str(tmp_path), "colour": "red"}, "unknown option"),
        ({}, "'record_dir' is required"),
        ({"record_dir": str(tmp_path), "control_port": "40000"}, "out of range"),
        ({"record_dir": str(tmp_path), "iqn_prefix": "ebs"}, "iqn_prefix"),
        ({"record_dir": str(tmp_path), "portal": "nowhere"}, "portal"),
    ):
        with pytest.raises(SetupError, match=message):
            EXPORTS["tgt"].from_options(options, runner=runner, templates=templates)


# -- none, records, protocol --------------------------------------------------------------------


def test_none_export_hands_the_vmm_the_local_path() -> None:
    backend = EXPORTS["none"].from_options({}, runner=RecordingRunner(), templates=load_templates())
    assert isinstance(backend, NoExport)

    async def scenario() -> None:
        await backend.check_setup()
        info = await backend.export("vol-0123456789abcdef0", "/srv/v.raw", HOST)
        assert info.source == LocalSource("/srv/v.raw")
        assert await backend.list_exports() == []
        assert await backend.restore([info]) == []
        await backend.unexport("vol-0123456789abcdef0")

    run(scenario())


def test_export_info_round_trips_through_json_with_its_secret() -> None:
    for source in (
        IscsiSource("192.0.2.1:3260", "iqn.2010-10.org.ebsemu:vol-01234567", 1, "u", "s3cret"),
        LocalSource("/srv/v.raw"),
    ):
        info = ExportInfo("vol-01234567", "/srv/v.raw", Initiator("192.0.2.9", None), source)
        assert export_from_dict(json.loads(json.dumps(export_to_dict(info)))) == info
    with pytest.raises(ValueError, match="not an export record"):
        export_from_dict({"volume_id": "vol-01234567"})


@pytest.mark.parametrize("name", sorted(EXPORTS))
def test_export_backend_implements_the_protocol_with_matching_signatures(name: str) -> None:
    cls = EXPORTS[name]
    assert inspect.isclass(cls)
    check_protocol(ExportBackend, cls)


def test_show_output_parser_reads_sessions_luns_accounts_and_a_mixed_acl() -> None:
    text = """Target 3: iqn.2010-10.org.ebsemu:vol-01234567
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
        I_T nexus: 4
            Initiator: iqn.2008-11.org.linux-kvm alias: host
            Connection: 0
                IP Address: 127.0.0.1
    LUN information:
        LUN: 0
            Type: controller
            Backing store type: null
            Backing store path: None
        LUN: 1
            Type: disk
            Size: 67 MB, Block size: 512
            Backing store type: rdwr
            Backing store path: /srv/v.raw
    Account information:
        ebs-0123456789abcdef
        mutual (outgoing)
    ACL information:
        127.0.0.1
        iqn.2024-01.example:host
"""
    target = parse_targets(text)["iqn.2010-10.org.ebsemu:vol-01234567"]
    assert (target.tid, target.sessions) == (3, 1)
    assert target.luns[1].path == "/srv/v.raw" and target.luns[1].bs_type == "rdwr"
    assert target.accounts == ["ebs-0123456789abcdef"]
    assert (target.addresses, target.names) == (["127.0.0.1"], ["iqn.2024-01.example:host"])
    assert parse_accounts("Account list:\n    a\n    b\n") == {"a", "b"}
