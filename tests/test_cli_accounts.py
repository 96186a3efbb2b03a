"""`ebsemu accounts …` and the default account: keys made on the command line work on a running
server at once, removed keys stop at once; a server with no configured key generates one,
shows it once and keeps it owner-only; secrets never reach a log."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from tests.api_support import aws_error, poll
from tests.server import DEFAULT_ACCOUNT, TEST_CONFIG, ZONE, ServerProcess

NO_ENV_KEY: dict[str, str | None] = {
    "EBSEMU_ACCESS_KEY_ID": None,
    "EBSEMU_SECRET_ACCESS_KEY": None,
}


@pytest.fixture(scope="module")
def accounts_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("accounts") / "data", TEST_CONFIG)
    proc.start()
    yield proc
    proc.stop()


def client(server: ServerProcess, key: tuple[str, str]) -> Any:
    return server.client(key=key, config=BotoConfig(retries={"total_max_attempts": 1}))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def accounts(server: ServerProcess, *args: str) -> Any:
    done = server.ebsemu("accounts", *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if done.stdout.strip() else None


# ---- accounts and keys from the command line ------------------------------------------------


def test_created_account_works_at_once_and_owns_what_it_creates(
    accounts_server: ServerProcess,
) -> None:
    account_id, key = accounts_server.new_account()
    assert len(account_id) == 12 and account_id.isdigit() and account_id != DEFAULT_ACCOUNT
    assert key[0].startswith("AKIA") and len(key[0]) == 20 and len(key[1]) == 40
    volume = client(accounts_server, key).create_volume(AvailabilityZone=ZONE, Size=1)
    assert volume["OwnerId"] == account_id


def test_account_with_a_chosen_id_is_created_once(accounts_server: ServerProcess) -> None:
    account_id, _ = accounts_server.new_account("123412341234")
    assert account_id == "123412341234"
    again = accounts_server.ebsemu("accounts", "create", "--account-id", "123412341234")
    assert again.returncode == 1 and "exists already" in again.stderr


@pytest.mark.parametrize("bad", ["12345", "abcdefghijkl", "1234567890123"])
def test_account_id_must_be_12_digits(accounts_server: ServerProcess, bad: str) -> None:
    done = accounts_server.ebsemu("accounts", "create", "--account-id", bad)
    assert done.returncode == 1 and "12 digits" in done.stderr


def test_added_key_works_at_once_and_removed_key_fails_within_a_second_with_auth_failure(
    accounts_server: ServerProcess,
) -> None:
    account_id, first = accounts_server.new_account()
    added = accounts(accounts_server, "add-key", account_id)
    second = (added["AccessKeyId"], added["SecretAccessKey"])
    assert added["AccountId"] == account_id and second[0] != first[0]
    for key in (first, second):
        assert client(accounts_server, key).describe_volumes()["Volumes"] == []
    accounts(accounts_server, "remove-key", first[0])
    removed_at = time.monotonic()

    def refused() -> tuple[str, int] | None:
        try:
            client(accounts_server, first).describe_volumes()
        except ClientError as exc:
            return exc.response["Error"]["Code"], exc.response["ResponseMetadata"]["HTTPStatusCode"]
        return None

    assert poll(refused, timeout=5) == ("AuthFailure", 401)
    assert time.monotonic() - removed_at < 2.0
    client(accounts_server, second).describe_volumes()


def test_list_shows_accounts_and_key_ids_but_never_secrets(
    accounts_server: ServerProcess,
) -> None:
    account_id, key = accounts_server.new_account()
    listed = accounts(accounts_server, "list")
    by_id = {entry["AccountId"]: entry for entry in listed}
    assert by_id[account_id]["AccessKeyIds"] == [key[0]]
    assert "AKIDEXAMPLE" in by_id[DEFAULT_ACCOUNT]["AccessKeyIds"]
    human = accounts_server.ebsemu("accounts", "list")
    assert key[0] in human.stdout
    assert key[1] not in human.stdout + json.dumps(listed) + human.stderr


def test_add_key_to_an_unknown_account_and_removing_an_unknown_key_fail(
    accounts_server: ServerProcess,
) -> None:
    done = accounts_server.ebsemu("accounts", "add-key", "999999999999")
    assert done.returncode == 1 and "no account 999999999999" in done.stderr
    done = accounts_server.ebsemu("accounts", "remove-key", "AKIANOSUCHKEY")
    assert done.returncode == 1 and "no access key" in done.stderr


def test_create_prints_a_profile_the_aws_cli_uses_as_it_is(
    accounts_server: ServerProcess, tmp_path: Path
) -> None:
    done = accounts_server.ebsemu(
        "accounts", "create", "--name", "team-b", "--endpoint-url", accounts_server.url
    )
    assert done.returncode == 0, done.stderr
    snippet = done.stdout[done.stdout.index("[profile ") :]
    account_id = done.stdout.split()[1]
    profile = snippet.split("]")[0].removeprefix("[profile ")
    described = run_aws_cli(tmp_path, snippet, profile, ["ec2", "describe-volumes"])
    assert described == {"Volumes": []}
    created = run_aws_cli(
        tmp_path,
        snippet,
        profile,
        ["ec2", "create-volume", "--size", "1", "--availability-zone", ZONE],
    )
    snapshot = run_aws_cli(
        tmp_path, snippet, profile, ["ec2", "create-snapshot", "--volume-id", created["VolumeId"]]
    )
    assert snapshot["OwnerId"] == account_id


def run_aws_cli(tmp_path: Path, config: str, profile: str, argv: list[str]) -> Any:
    config_file = tmp_path / "aws-config"
    config_file.write_text(config)
    env = {
        "PATH": str(Path(sys.executable).parent),
        "HOME": str(tmp_path),
        "AWS_CONFIG_FILE": str(config_file),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_PAGER": "",
    }
    aws = Path(sys.executable).with_name("aws")
    done = subprocess.run(
        [str(aws), "--profile", profile, "--output", "json", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_secrets_of_created_keys_never_reach_the_server_log(
    accounts_server: ServerProcess,
) -> None:
    _, key = accounts_server.new_account()
    client(accounts_server, key).describe_volumes()
    aws_error(client(accounts_server, (key[0], "wrong")).describe_volumes)
    missing = client(accounts_server, key).describe_volumes
    assert aws_error(missing, VolumeIds=["vol-0123456789abcdef0"])[0] == "InvalidVolume.NotFound"
    log = accounts_server.log_path.read_text(errors="replace")
    assert f":{key[0]} DescribeVolumes -> 400" in log  # who did what, by which key ...
    assert key[1] not in log  # ... but never a secret


# ---- a data directory no server has used ----------------------------------------------------


def unstarted(data_dir: Path) -> ServerProcess:
    """A server not started, on SQLite and file storage: its `ebsemu` runs on ``data_dir``."""
    return ServerProcess(data_dir, TEST_CONFIG, store_dsn="", backend="file")


@pytest.mark.parametrize(
    "command",
    [
        ("create",),
        ("list",),
        ("add-key", DEFAULT_ACCOUNT),
        ("remove-key", "AKIANOSUCHKEY"),
    ],
)
def test_a_mistyped_data_dir_is_refused_in_one_line_and_nothing_is_made_there(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    """A key added to a new database in a mistyped directory worked on no server."""
    proc = unstarted(tmp_path / "no-such-dir")
    done = proc.ebsemu("accounts", *command)
    assert done.returncode == 2 and done.stdout == "", done.stderr
    assert done.stderr.startswith(f"ebsemu accounts: no data directory at {proc.data_dir} ")
    assert done.stderr.count("\n") == 1 and "--init" in done.stderr
    assert not proc.data_dir.exists()


def test_a_data_dir_without_a_database_is_refused_too(tmp_path: Path) -> None:
    proc = unstarted(tmp_path / "data")
    proc.data_dir.mkdir()
    done = proc.ebsemu("accounts", "create")
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"ebsemu accounts: no database at {proc.data_dir} ")
    assert list(proc.data_dir.iterdir()) == []


def test_init_makes_the_database_before_the_first_start_and_its_key_works_there(
    tmp_path: Path,
) -> None:
    proc = unstarted(tmp_path / "data")
    account_id, key = json_key(proc.ebsemu("accounts", "create", "--init", "--json"))
    assert mode(proc.data_dir) == 0o700
    assert mode(proc.data_dir / "ebsemu.sqlite3") == 0o600
    _, added = json_key(proc.ebsemu("accounts", "add-key", account_id, "--json"))  # no --init
    proc.start()
    try:
        for pair in (key, added):
            volume = client(proc, pair).create_volume(AvailabilityZone=ZONE, Size=1)
            assert volume["OwnerId"] == account_id
    finally:
        proc.stop()


def json_key(done: subprocess.CompletedProcess[str]) -> tuple[str, tuple[str, str]]:
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    return shown["AccountId"], (shown["AccessKeyId"], shown["SecretAccessKey"])


# ---- the default account's key ---------------------------------------------------------------


def test_default_key_is_generated_once_shown_once_and_kept_owner_only(tmp_path: Path) -> None:
    # On SQLite whatever EBSEMU_TEST_STORE says: the database file's mode is checked.
    proc = ServerProcess(tmp_path / "data", TEST_CONFIG, env=NO_ENV_KEY, store_dsn="")
    proc.start()
    try:
        shown = proc.stdout_path.read_text()
        snippet = shown[shown.index("[profile ebsemu]") :].strip()
        key_id = snippet.split("aws_access_key_id = ")[1].split()[0]
        secret = snippet.split("aws_secret_access_key = ")[1].split()[0]
        credentials = proc.data_dir / "credentials"
        assert secret in credentials.read_text() and key_id in credentials.read_text()
        assert mode(credentials) == 0o600
        assert mode(proc.data_dir) == 0o700
        assert mode(proc.data_dir / "ebsemu.sqlite3") == 0o600
        volume = client(proc, (key_id, secret)).create_volume(AvailabilityZone=ZONE, Size=1)
        assert volume["OwnerId"] == DEFAULT_ACCOUNT
        proc.restart()
        assert proc.stdout_path.read_text().count(secret) == 1  # not shown again
        client(proc, (key_id, secret)).describe_volumes()
        code, _, _ = aws_error(client(proc, ("AKIDEXAMPLE", "secret")).describe_volumes)
        assert code == "AuthFailure"
        for name in ("ebsemu.sqlite3-wal", "ebsemu.sqlite3-shm"):
            if (proc.data_dir / name).exists():
                assert mode(proc.data_dir / name) == 0o600
    finally:
        proc.stop()
    assert secret not in proc.log_path.read_text(errors="replace")


def test_default_key_from_the_configuration_is_used_when_the_environment_has_none(
    tmp_path: Path,
) -> None:
    config = (
        TEST_CONFIG + "\n[auth]\naccess_key_id = AKIDCONFIGURED\nsecret_access_key = s3cr3t-cfg\n"
    )
    proc = ServerProcess(tmp_path / "data", config, env=NO_ENV_KEY)
    proc.start()
    try:
        client(proc, ("AKIDCONFIGURED", "s3cr3t-cfg")).describe_volumes()
        assert "[profile" not in proc.stdout_path.read_text()
        assert not (proc.data_dir / "credentials").exists()
    finally:
        proc.stop()
    assert "s3cr3t-cfg" not in proc.log_path.read_text(errors="replace")


def test_a_key_pair_given_in_place_of_another_replaces_it_and_other_keys_stay(
    tmp_path: Path,
) -> None:
    """Rotating the environment's key pair must revoke the old one: it stayed valid."""
    first, second = ("AKIDROTATEFIRST", "secret-one"), ("AKIDROTATESECOND", "secret-two")
    proc = ServerProcess(
        tmp_path / "data",
        TEST_CONFIG,
        env={"EBSEMU_ACCESS_KEY_ID": first[0], "EBSEMU_SECRET_ACCESS_KEY": first[1]},
    )
    proc.start()
    try:
        added = accounts(proc, "add-key", DEFAULT_ACCOUNT)
        kept = (added["AccessKeyId"], added["SecretAccessKey"])
        proc.stop()
        proc.env.update(EBSEMU_ACCESS_KEY_ID=second[0], EBSEMU_SECRET_ACCESS_KEY=second[1])
        proc.start()
        client(proc, second).describe_volumes()
        client(proc, kept).describe_volumes()  # added on the command line: not replaced
        code, _, status = aws_error(client(proc, first).describe_volumes)
        assert (code, status) == ("AuthFailure", 401)
        proc.restart()  # the same pair again: nothing more is removed
        client(proc, second).describe_volumes()
    finally:
        proc.stop()
    assert (proc.data_dir / "configured-key").read_text() == f"{second[0]}\n"
    assert mode(proc.data_dir / "configured-key") == 0o600


def test_half_a_key_pair_in_the_environment_stops_the_server_with_a_clear_message(
    tmp_path: Path,
) -> None:
    proc = ServerProcess(tmp_path / "data", TEST_CONFIG, env={"EBSEMU_SECRET_ACCESS_KEY": None})
    with pytest.raises(RuntimeError, match="set both EBSEMU_ACCESS_KEY_ID and"):
        proc.start()


def test_an_existing_data_dir_and_database_are_made_owner_only(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    (data / "ebsemu.sqlite3").touch()
    (data / "ebsemu.sqlite3").chmod(0o644)
    proc = ServerProcess(data, TEST_CONFIG, store_dsn="")  # an SQLite database file's mode
    proc.start()
    proc.stop()
    assert mode(data) == 0o700
    assert mode(data / "ebsemu.sqlite3") == 0o600
