"""EBS encryption: the per-account, per-region settings, and encryption at rest of volumes.

Settings (EnableEbsEncryptionByDefault, ModifyEbsDefaultKmsKeyId, …) apply to CreateVolume as
in EC2: with encryption by default on, a new volume is encrypted; an encrypted snapshot makes an
encrypted volume with the snapshot's key unless another is named; an encrypted volume with no
KmsKeyId gets the default key. KMS keys are identifiers only (ebsemu/service/kms_keys.py).

Encryption at rest is real or refused, never claimed: a volume is encrypted only on a storage
backend that keeps it as a LUKS image (backends/luks.py), with a data key of its own wrapped by
the local master key (ebsemu/keyvault.py); it attaches only to a VMM that opens LUKS itself.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from backends import luks
from backends.base import EncryptingStorage, LuksKey, LuksOpener, VmmBackend
from backends.errors import BackendError
from ebsemu import errors
from ebsemu.keyvault import KeyVault, KeyVaultError
from ebsemu.model import GIB, Snapshot, Volume
from ebsemu.service import kms_keys
from ebsemu.service.context import RequestContext
from ebsemu.service.core import Core

log = logging.getLogger(__name__)

SSE_TYPE = "sse-ebs"  # EBS-managed server-side encryption, as EC2 reports it


@dataclass(frozen=True)
class VolumeEncryption:
    encrypted: bool
    kms_key_id: str | None  # a key ARN when encrypted


class EncryptionService:
    def __init__(self, core: Core, vault: KeyVault) -> None:
        self._core = core
        self._vault = vault

    # ---- settings ------------------------------------------------------------------------

    async def by_default(self, ctx: RequestContext) -> bool:
        settings = await self._core.store.encryption_settings(ctx.account_id, ctx.region)
        return settings.by_default

    async def set_by_default(self, ctx: RequestContext, on: bool) -> bool:
        await self._core.store.set_encryption_by_default(ctx.account_id, ctx.region, on)
        log.info(
            "account %s in %s: encryption by default %s",
            ctx.account_id,
            ctx.region,
            "on" if on else "off",
        )
        return on

    async def default_key(self, ctx: RequestContext) -> str:
        """The default key's ARN once one is set; else the alias of the AWS managed key."""
        settings = await self._core.store.encryption_settings(ctx.account_id, ctx.region)
        return settings.kms_key_id or kms_keys.DEFAULT_ALIAS

    async def modify_default_key(self, ctx: RequestContext, key_id: str) -> str:
        arn = kms_keys.key_arn(key_id, account_id=ctx.account_id, region=ctx.region)
        await self._core.store.set_default_kms_key(ctx.account_id, ctx.region, arn)
        return arn

    async def reset_default_key(self, ctx: RequestContext) -> str:
        await self._core.store.set_default_kms_key(ctx.account_id, ctx.region, None)
        return kms_keys.DEFAULT_ALIAS

    # ---- volumes -------------------------------------------------------------------------

    async def for_new_volume(
        self,
        ctx: RequestContext,
        zone: str,
        encrypted: bool | None,
        kms_key_id: str | None,
        snapshot: Snapshot | Volume | None,
    ) -> VolumeEncryption:
        """Whether a new volume is encrypted and under which key, as EC2 decides it; refused
        (UnsupportedOperation, saying why) when this store cannot keep it so. ``snapshot``:
        what the volume is made from, a snapshot (CreateVolume) or a volume (CopyVolumes). The
        caller has refused a KmsKeyId without Encrypted (InvalidParameterDependency)."""
        named = (
            kms_keys.key_arn(kms_key_id, account_id=ctx.account_id, region=ctx.region)
            if kms_key_id is not None
            else None
        )
        by_default = await self.by_default(ctx)
        from_encrypted = snapshot is not None and snapshot.encrypted
        if not (encrypted or by_default or from_encrypted):
            return VolumeEncryption(False, None)
        why = self._unavailable(zone)
        if why is not None:
            if encrypted:
                cause = "Encrypted is set"
            elif from_encrypted:
                assert snapshot is not None
                cause = f"the {_kind(snapshot)} {snapshot.id} is encrypted"
            else:
                cause = f"EBS encryption by default is enabled for this account in {ctx.region}"
            raise errors.UnsupportedOperation(
                f"Cannot create the volume: {cause}, but this volume store cannot encrypt at "
                f"rest ({why})."
                + (" Disable it with DisableEbsEncryptionByDefault." if not encrypted else "")
            )
        if snapshot is not None and not snapshot.encrypted:
            raise errors.UnsupportedOperation(
                f"Cannot create an encrypted volume from the unencrypted {_kind(snapshot)} "
                f"{snapshot.id}: this volume store encrypts a volume only from its creation or "
                "from an encrypted snapshot or volume."
                + (
                    " Encryption by default is enabled; disable it with "
                    f"DisableEbsEncryptionByDefault to use this {_kind(snapshot)}."
                    if by_default and not encrypted
                    else ""
                )
            )
        if named is None and snapshot is not None:
            named = snapshot.kms_key_id
        if named is None:
            named = await self._default_key_arn(ctx)
        return VolumeEncryption(True, named)

    async def prepare_key(self, volume: Volume) -> None:
        """Before an encrypted volume is stored: its data key, a new one, or its snapshot's
        or copied volume's (whose LUKS image it holds)."""
        if not volume.encrypted:
            return
        store = self._core.store
        origin = volume.snapshot_id or volume.source_volume_id
        if origin is not None:
            wrapped = await store.data_key(origin)
            if wrapped is None:
                raise errors.IncorrectState(
                    f"The resource '{origin}' has no data key; it cannot be restored or copied."
                )
        else:
            wrapped = await asyncio.to_thread(self._vault_new_key)
        await store.put_data_key(volume.id, wrapped)

    async def keep_snapshot_key(self, volume: Volume, snapshot_id: str) -> None:
        """A snapshot of an encrypted volume holds its ciphertext: keep its data key with it."""
        if not volume.encrypted:
            return
        wrapped = await self._core.store.data_key(volume.id)
        if wrapped is None:
            raise errors.IncorrectState(f"The volume '{volume.id}' has no data key.")
        await self._core.store.put_data_key(snapshot_id, wrapped)

    async def copy_key_arn(
        self, ctx: RequestContext, source: Snapshot, kms_key_id: str | None
    ) -> str | None:
        """The KmsKeyId a copy of ``source`` reports: the one named, else the source's. The
        copy keeps the source's data key either way (its blocks are the source's ciphertext);
        the key named is a label, as for a volume restored from an encrypted snapshot."""
        if not source.encrypted:
            return None
        if kms_key_id is not None:
            return kms_keys.key_arn(kms_key_id, account_id=ctx.account_id, region=ctx.region)
        return source.kms_key_id or await self._default_key_arn(ctx)

    async def copy_data_key(self, source_id: str, copy_id: str) -> None:
        """Give a copy of an encrypted snapshot the source's data key (nothing for a plain one)."""
        wrapped = await self._core.store.data_key(source_id)
        if wrapped is not None:
            await self._core.store.put_data_key(copy_id, wrapped)

    async def drop_key(self, resource_id: str) -> None:
        await self._core.store.drop_data_key(resource_id)

    async def create_storage(self, volume: Volume) -> None:
        """Create an encrypted volume on the backend: a new LUKS image, or (from a snapshot) a
        file the snapshot's image is written into."""
        storage = self._core.storage_for(volume)
        if not isinstance(storage, EncryptingStorage):
            raise BackendError(f"{type(storage).__name__} cannot encrypt volumes")
        size = volume.size_gib * GIB
        if volume.snapshot_id is not None:
            await storage.create_encrypted(volume.id, size, None)
            return
        await storage.create_encrypted(volume.id, size, await self._passphrase(volume.id))

    async def luks_key(self, volume: Volume) -> LuksKey | None:
        """How a VMM opens the volume: None for a volume not encrypted."""
        if not volume.encrypted:
            return None
        return LuksKey(await self._passphrase(volume.id), luks.image_bytes(volume.size_gib * GIB))

    @staticmethod
    def check_vmm(volume: Volume, vmm: VmmBackend, instance_id: str) -> None:
        """Refuse to hand an encrypted volume to a VMM that would expose its ciphertext."""
        if volume.encrypted and not (isinstance(vmm, LuksOpener) and vmm.opens_luks()):
            raise errors.UnsupportedOperation(
                f"The volume '{volume.id}' is encrypted at rest and the VMM of instance "
                f"'{instance_id}' cannot open encrypted volumes (only the QEMU driver can); "
                "attach it to an instance on a QEMU host."
            )

    # ---- helpers -------------------------------------------------------------------------

    def _unavailable(self, zone: str) -> str | None:
        """Why a new volume in ``zone`` could not be encrypted, or None. Every storage host of
        the zone must be able to encrypt, since the scheduler may place it on any of them."""
        for entry in self._core.storage_hosts.in_zone(zone):
            storage = entry.backend
            if not isinstance(storage, EncryptingStorage):
                return f"storage host {entry.name} keeps volumes in plain text"
            why = storage.encryption_unavailable()
            if why is not None:
                return why
        return None

    async def _default_key_arn(self, ctx: RequestContext) -> str:
        settings = await self._core.store.encryption_settings(ctx.account_id, ctx.region)
        return settings.kms_key_id or kms_keys.default_key_arn(ctx.account_id, ctx.region)

    def _vault_new_key(self) -> str:
        try:
            return self._vault.new_wrapped_key()
        except KeyVaultError as exc:
            log.error("cannot make a data key: %s", exc)
            raise errors.InternalError() from exc

    async def _passphrase(self, resource_id: str) -> str:
        wrapped = await self._core.store.data_key(resource_id)
        if wrapped is None:
            raise BackendError(f"{resource_id} has no data key")
        try:
            return await asyncio.to_thread(self._vault.passphrase, wrapped)
        except KeyVaultError as exc:
            raise BackendError(f"{resource_id}: {exc}") from exc


def check_shareable(snapshot: Snapshot, grantees: list[str]) -> None:
    """EC2 shares an encrypted snapshot with accounts only under a customer key, and never with
    everyone."""
    if not (snapshot.encrypted and grantees):
        return
    if "all" in grantees:
        raise errors.OperationNotPermitted("Encrypted snapshots cannot be made public.")
    if snapshot.kms_key_id == kms_keys.default_key_arn(snapshot.owner_id, snapshot.region):
        raise errors.OperationNotPermitted(
            "Encrypted snapshots with EBS default key cannot be shared"
        )


def _kind(origin: Snapshot | Volume) -> str:
    return "snapshot" if isinstance(origin, Snapshot) else "volume"
