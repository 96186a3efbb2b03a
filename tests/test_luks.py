"""The parts of encryption at rest below the API, on real tools: KMS key identifiers, the key
vault, LUKS images from qemu-img in the file backend, and QEMU's driver opening them (or
refusing a wrong key, leaving nothing behind)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from backends import luks
from backends.base import AttachSpec, EncryptingStorage, LocalSource, LuksKey, LuksOpener
from backends.errors import BackendError
from backends.file import FileStorage
from backends.luks import LuksFormatter
from backends.lvm import LvmStorage
from backends.vmm import VMMS
from backends.vmm.errors import AttachError
from backends.vmm.qemu import QemuConfig, QemuVmm
from ebsemu import errors
from ebsemu.keyvault import KeyVault, KeyVaultError
from ebsemu.model import BLOCK_SIZE
from ebsemu.service import kms_keys
from hostcmds import (
    CommandError,
    CommandResult,
    LocalRunner,
    RecordingRunner,
    Reply,
    load_templates,
)
from tests import test_backend_compliance as compliance
from tests.vmm_fixtures import QemuVm, new_volume_id, qmp, run, running_vm

MIB = 1024 * 1024
ACCOUNT = "123456789012"
REGION = "us-east-1"
KEY = "1234abcd-12ab-34cd-56ef-1234567890ab"


# ---- the optional roles ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("protocol", "cls"), [(EncryptingStorage, FileStorage), (LuksOpener, QemuVmm)]
)
def test_backends_that_encrypt_or_open_luks_implement_those_roles(
    protocol: type[Any], cls: type[Any]
) -> None:
    compliance.test_backend_implements_protocol_with_matching_signatures(protocol, cls)


def test_only_the_qemu_driver_opens_luks() -> None:
    assert [name for name, cls in VMMS.items() if hasattr(cls, "opens_luks")] == ["qemu"]
    assert not any(hasattr(cls, "create_encrypted") for cls in [LvmStorage])


# ---- KMS key identifiers ---------------------------------------------------------------------


def test_key_id_and_key_arn_name_the_same_key() -> None:
    arn = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{KEY}"
    assert kms_keys.key_arn(KEY, account_id=ACCOUNT, region=REGION) == arn
    assert kms_keys.key_arn(arn, account_id="999999999999", region=REGION) == arn


def test_an_alias_resolves_to_a_stable_key_per_account_and_region() -> None:
    one = kms_keys.key_arn("alias/a", account_id=ACCOUNT, region=REGION)
    assert one == kms_keys.key_arn("alias/a", account_id=ACCOUNT, region=REGION)
    assert one == kms_keys.key_arn(
        f"arn:aws:kms:{REGION}:{ACCOUNT}:alias/a", account_id=ACCOUNT, region=REGION
    )
    assert one != kms_keys.key_arn("alias/a", account_id="210987654321", region=REGION)
    assert one != kms_keys.key_arn("alias/a", account_id=ACCOUNT, region="eu-west-1")
    assert kms_keys.KEY_ARN.fullmatch(one)
    assert kms_keys.default_key_arn(ACCOUNT, REGION) == kms_keys.key_arn(
        "alias/aws/ebs", account_id=ACCOUNT, region=REGION
    )


@pytest.mark.parametrize(
    "bad", ["", "key", "alias", "alias/", f"arn:aws:kms:{REGION}:{ACCOUNT}:key/nope", KEY.upper()]
)
def test_malformed_identifiers_are_invalid_parameter_value(bad: str) -> None:
    with pytest.raises(errors.InvalidParameterValue, match="KmsKeyId"):
        kms_keys.key_arn(bad, account_id=ACCOUNT, region=REGION)


# ---- the key vault ---------------------------------------------------------------------------


def test_vault_makes_a_private_master_key_and_unwraps_only_its_own_keys(tmp_path: Path) -> None:
    vault = KeyVault(tmp_path / "keys" / "master.key")
    wrapped = vault.new_wrapped_key()
    passphrase = vault.passphrase(wrapped)
    assert len(base64.b64decode(passphrase)) == 32
    assert passphrase not in wrapped
    assert vault.new_wrapped_key() != wrapped
    assert oct((tmp_path / "keys" / "master.key").stat().st_mode & 0o777) == "0o600"
    # The same file, read again, unwraps it; another master key does not.
    assert KeyVault(tmp_path / "keys" / "master.key").passphrase(wrapped) == passphrase
    with pytest.raises(KeyVaultError, match="does not unwrap"):
        KeyVault(tmp_path / "other.key").passphrase(wrapped)


def test_vault_refuses_a_master_key_readable_by_others(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    KeyVault(path).new_wrapped_key()
    os.chmod(path, 0o644)
    with pytest.raises(KeyVaultError, match="readable by others"):
        KeyVault(path).new_wrapped_key()


# ---- LUKS images in the file backend -----------------------------------------------------------


@pytest.fixture
def storage(tmp_path: Path) -> FileStorage:
    formatter = LuksFormatter(LocalRunner(), load_templates())
    backend = FileStorage(tmp_path / "data", luks_formatter=formatter)
    asyncio.run(backend.check_setup())
    return backend


def passphrase() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def test_file_storage_can_encrypt_when_qemu_img_runs(storage: FileStorage) -> None:
    assert isinstance(storage, EncryptingStorage)
    assert storage.encryption_unavailable() is None


def test_encrypted_volume_is_one_padded_luks_file_described_as_such(
    storage: FileStorage, tmp_path: Path
) -> None:
    asyncio.run(storage.create_encrypted("vol-1", 64 * MIB, passphrase()))
    directory = tmp_path / "data" / "volumes" / "vol-1"
    meta = json.loads((directory / "volume.json").read_text())
    assert meta["encryption"] == "luks"
    assert meta["size_bytes"] == luks.file_bytes(64 * MIB) == 64 * MIB + 2 * MIB
    segment = directory / "seg-0000"
    assert storage.device_path("vol-1") == str(segment)
    assert segment.stat().st_size == luks.file_bytes(64 * MIB)
    assert luks.payload_offset(segment.read_bytes()[:4096]) == luks.PAYLOAD_BYTES
    assert not list(directory.parent.glob(".tmp-*")), "the key file is removed"
    # Created again with that size: kept. A snapshot view carries the header block.
    asyncio.run(storage.create_encrypted("vol-1", 64 * MIB, passphrase()))
    asyncio.run(storage.freeze("vol-1", "snap-1"))
    with storage.open_view("snap-1") as view:
        blocks = list(view.iter_blocks())
    assert [index for index, _ in blocks] == [0]
    assert bytes(blocks[0][1]).startswith(luks.MAGIC)
    with pytest.raises(BackendError, match="encrypted"):
        asyncio.run(storage.extend("vol-1", 128 * MIB))


def test_an_unformatted_encrypted_volume_takes_a_restored_image(storage: FileStorage) -> None:
    asyncio.run(storage.create_encrypted("vol-src", 8 * MIB, passphrase()))
    asyncio.run(storage.freeze("vol-src", "snap-src"))
    with storage.open_view("snap-src") as view:
        blocks = list(view.iter_blocks())
    asyncio.run(storage.create_encrypted("vol-copy", 16 * MIB, None))
    copy = Path(storage.device_path("vol-copy"))
    assert copy.read_bytes() == bytes(luks.file_bytes(16 * MIB))
    storage.write_blocks("vol-copy", blocks)
    assert copy.read_bytes()[:BLOCK_SIZE] == blocks[0][1]


def test_without_qemu_img_the_backend_says_why_it_cannot_encrypt(tmp_path: Path) -> None:
    templates = load_templates({"qemu-img": {"versionCmd": "/nonexistent/qemu-img --version"}})
    backend = FileStorage(tmp_path, luks_formatter=LuksFormatter(LocalRunner(), templates))
    asyncio.run(backend.check_setup())
    assert "qemu-img is not installed" in (backend.encryption_unavailable() or "")
    with pytest.raises(BackendError, match="cannot encrypt"):
        asyncio.run(backend.create_encrypted("vol-1", 8 * MIB, passphrase()))
    assert FileStorage(tmp_path).encryption_unavailable() == "no LUKS formatter is configured"


def test_create_luks_command_keeps_the_passphrase_off_the_command_line(tmp_path: Path) -> None:
    secret = passphrase()
    seen: list[str] = []

    def read_key_file(argv: tuple[str, ...]) -> Reply:
        option = next(a for a in argv if a.startswith("secret,"))
        key_file = Path(option.split("file=")[1].split(",")[0])
        seen.append(key_file.read_text())
        assert oct(key_file.stat().st_mode & 0o777) == "0o600"
        return Reply(returncode=1, stderr=b"refused for the test")

    runner = RecordingRunner(responder=read_key_file)
    formatter = LuksFormatter(runner, load_templates(), iter_time_ms=10)
    with pytest.raises(BackendError, match="cannot format"):
        asyncio.run(formatter.format(tmp_path / "seg-0000", 8 * MIB, secret))
    (call,) = runner.calls
    key_file = next(a for a in call.argv if a.startswith("secret,")).split("file=")[1].split(",")[0]
    assert list(call.argv) == [
        "qemu-img",
        "create",
        "-q",
        "-f",
        "luks",
        "--object",
        f"secret,id=ebs-key,file={key_file},format=raw",
        "-o",
        "key-secret=ebs-key,iter-time=10",
        str(tmp_path / "seg-0000"),
        str(8 * MIB),
    ]
    assert all(secret not in arg for arg in call.argv)
    assert seen == [secret]  # the file held it while qemu-img ran, and is gone after
    assert not Path(key_file).exists()


class TimingFails(LocalRunner):
    """qemu-img, whose first ``misses`` LUKS creates fail as it does when it reads no CPU time
    (the real one still can after them: about a third of its runs on a fast host)."""

    def __init__(self, stderr: str, misses: int = 1) -> None:
        super().__init__()
        self.stderr = stderr
        self.misses = misses
        self.creates = 0

    async def run(self, argv: Sequence[str], **kwargs: Any) -> CommandResult:
        if "luks" in argv:
            self.creates += 1
            if self.creates <= self.misses:
                Path(argv[-2]).write_bytes(b"partial")
                raise CommandError(argv, 1, f"qemu-img: {argv[-2]}: {self.stderr}\n")
        return await super().run(argv, **kwargs)


def test_a_luks_create_that_could_not_time_its_key_derivation_is_run_again(
    tmp_path: Path,
) -> None:
    runner = TimingFails(luks.NO_CPU_TIME, misses=5)  # seen 3 times in a row on a fast host
    formatter = LuksFormatter(runner, load_templates())
    segment = tmp_path / "seg-0000"
    asyncio.run(formatter.format(segment, 8 * MIB, passphrase()))
    assert 5 < runner.creates <= luks.CREATE_ATTEMPTS
    assert luks.payload_offset(segment.read_bytes()[:4096]) == luks.PAYLOAD_BYTES

    always = TimingFails(luks.NO_CPU_TIME, misses=luks.CREATE_ATTEMPTS)
    with pytest.raises(BackendError, match="accurate CPU usage"):
        asyncio.run(LuksFormatter(always, load_templates()).format(tmp_path / "seg-1", MIB, "k"))
    assert always.creates == luks.CREATE_ATTEMPTS

    other = TimingFails("Could not create image: No space left on device")
    with pytest.raises(BackendError, match="No space left"):
        asyncio.run(LuksFormatter(other, load_templates()).format(tmp_path / "seg-2", 8 * MIB, "k"))
    assert other.creates == 1


# ---- QEMU opens the image ----------------------------------------------------------------------


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[QemuVm]:
    with running_vm(tmp_path, "vm1", ports=2) as started:
        yield started


def luks_spec(storage: FileStorage, secret: str, volume_id: str) -> AttachSpec:
    key = LuksKey(secret, luks.image_bytes(64 * MIB))
    return AttachSpec(volume_id, "/dev/sdf", LocalSource(storage.device_path(volume_id)), key)


async def objects(vm: QemuVm) -> set[str]:
    return {entry["name"] for entry in await qmp(vm, "qom-list", {"path": "/objects"})}


def test_qemu_opens_the_image_with_its_key_at_its_exact_size(
    vm: QemuVm, storage: FileStorage, tmp_path: Path
) -> None:
    volume_id = new_volume_id()
    secret = passphrase()
    asyncio.run(storage.create_encrypted(volume_id, 64 * MIB, secret))
    driver = QemuVmm(QemuConfig(socket_dir=tmp_path))

    async def scenario() -> None:
        disk = await driver.attach("vm1", luks_spec(storage, secret, volume_id))
        nodes: list[dict[str, Any]] = await qmp(vm, "query-named-block-nodes", {"flat": True})
        node = next(n for n in nodes if n["node-name"] == f"ebs-{volume_id}")
        assert (node["drv"], node["image"]["virtual-size"]) == ("luks", 64 * MIB)
        assert f"ebs-{volume_id}-luks" in await objects(vm)
        assert disk.source == storage.device_path(volume_id)
        await driver.detach("vm1", volume_id)
        assert f"ebs-{volume_id}-luks" not in await objects(vm)

    run(scenario())


def test_a_wrong_key_fails_the_attach_and_leaves_no_node_and_no_secret(
    vm: QemuVm, storage: FileStorage, tmp_path: Path
) -> None:
    volume_id = new_volume_id()
    asyncio.run(storage.create_encrypted(volume_id, 64 * MIB, passphrase()))
    driver = QemuVmm(QemuConfig(socket_dir=tmp_path))
    wrong = passphrase()

    async def scenario() -> None:
        with pytest.raises(AttachError, match="Invalid password") as caught:
            await driver.attach("vm1", luks_spec(storage, wrong, volume_id))
        assert wrong not in str(caught.value)
        nodes = await qmp(vm, "query-named-block-nodes", {"flat": True})
        assert f"ebs-{volume_id}" not in {n["node-name"] for n in nodes}
        assert f"ebs-{volume_id}-luks" not in await objects(vm)
        assert await driver.list_attached("vm1") == []

    run(scenario())
