"""Export records: what an export is, kept as one small file per volume, and a JSON form of
ExportInfo for the caller's store.

A record file is written atomically (temporary file, fsync, rename, fsync of the directory)
with mode 0600 in a directory of mode 0700: it holds the volume's CHAP secret.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backends.base import DiskSource, ExportInfo, Initiator, IscsiSource, LocalSource, RbdSource
from backends.export.errors import ExportError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SUFFIX = ".json"
VOLUME_ID = re.compile(r"vol-(?:[0-9a-f]{17}|[0-9a-f]{8})")


def check_volume_id(volume_id: str) -> str:
    if not VOLUME_ID.fullmatch(volume_id):
        raise ExportError(f"not a volume id: {volume_id!r}")
    return volume_id


@dataclass(frozen=True)
class TargetRecord:
    """One volume's iSCSI target as ebsemu configures it."""

    volume_id: str
    iqn: str
    lun: int
    backing_store: str
    bs_type: str
    initiator: Initiator
    chap_user: str
    chap_secret: str = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "volume_id": self.volume_id,
            "iqn": self.iqn,
            "lun": self.lun,
            "backing_store": self.backing_store,
            "bs_type": self.bs_type,
            "initiator": {"address": self.initiator.address, "name": self.initiator.name},
            "chap_user": self.chap_user,
            "chap_secret": self.chap_secret,
        }

    @classmethod
    def from_json(cls, data: Any) -> TargetRecord:
        if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"not a format version {FORMAT_VERSION} export record")
        initiator = data["initiator"]
        record = cls(
            volume_id=_text(data, "volume_id"),
            iqn=_text(data, "iqn"),
            lun=int(data["lun"]),
            backing_store=_text(data, "backing_store"),
            bs_type=_text(data, "bs_type"),
            initiator=Initiator(initiator.get("address"), initiator.get("name")),
            chap_user=_text(data, "chap_user"),
            chap_secret=_text(data, "chap_secret"),
        )
        check_volume_id(record.volume_id)
        return record


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} is not a non-empty string")
    return value


class RecordDirectory:
    """``<directory>/<volume id>.json``, one record per exported volume (blocking I/O)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def ensure(self) -> None:
        """Create the directory (0700) if needed and make sure nobody else can read it."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.directory.stat().st_mode & 0o077:
            self.directory.chmod(0o700)

    def path(self, volume_id: str) -> Path:
        return self.directory / f"{check_volume_id(volume_id)}{SUFFIX}"

    def save(self, record: TargetRecord) -> None:
        self.ensure()
        path = self.path(record.volume_id)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        data = json.dumps(record.to_json(), indent=1).encode() + b"\n"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        self._sync_directory()

    def load(self, volume_id: str) -> TargetRecord | None:
        """The record, or None if there is none (an unreadable one is logged and ignored)."""
        path = self.path(volume_id)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            record = TargetRecord.from_json(json.loads(text))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.error("%s: unreadable export record ignored: %s", path, type(exc).__name__)
            return None
        if record.volume_id != volume_id:
            log.error("%s: record names another volume (%s); ignored", path, record.volume_id)
            return None
        return record

    def remove(self, volume_id: str) -> None:
        try:
            self.path(volume_id).unlink()
        except FileNotFoundError:
            return
        self._sync_directory()

    def volume_ids(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        names = (p.name.removesuffix(SUFFIX) for p in self.directory.glob(f"vol-*{SUFFIX}"))
        return sorted(name for name in names if VOLUME_ID.fullmatch(name))

    def remove_temp_files(self) -> int:
        """Remove what interrupted saves left behind; returns the count."""
        if not self.directory.is_dir():
            return 0
        count = 0
        for tmp in self.directory.glob(".vol-*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                count += 1
        return count

    def _sync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- ExportInfo as JSON, for the caller's store --------------------------------------------


def export_to_dict(info: ExportInfo) -> dict[str, Any]:
    """A JSON-ready form of ``info``, CHAP secret included: store it where only the service
    can read it."""
    return {
        "volume_id": info.volume_id,
        "device_path": info.device_path,
        "initiator": {"address": info.initiator.address, "name": info.initiator.name},
        "source": _source_to_dict(info.source),
    }


def export_from_dict(data: Mapping[str, Any]) -> ExportInfo:
    """Inverse of ``export_to_dict``; raises ValueError on anything else."""
    try:
        initiator = data["initiator"]
        return ExportInfo(
            volume_id=str(data["volume_id"]),
            device_path=str(data["device_path"]),
            initiator=Initiator(initiator.get("address"), initiator.get("name")),
            source=_source_from_dict(data["source"]),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not an export record: {type(exc).__name__} {exc}") from None


def _source_to_dict(source: DiskSource) -> dict[str, Any]:
    if isinstance(source, LocalSource):
        return {"kind": "local", "path": source.path}
    if isinstance(source, IscsiSource):
        return {
            "kind": "iscsi",
            "portal": source.portal,
            "iqn": source.iqn,
            "lun": source.lun,
            "chap_user": source.chap_user,
            "chap_secret": source.chap_secret,
        }
    return {
        "kind": "rbd",
        "pool": source.pool,
        "image": source.image,
        "conf": source.conf,
        "user": source.user,
        "key": source.key,
    }


def _source_from_dict(data: Mapping[str, Any]) -> DiskSource:
    kind = data["kind"]
    if kind == "local":
        return LocalSource(str(data["path"]))
    if kind == "iscsi":
        return IscsiSource(
            portal=str(data["portal"]),
            iqn=str(data["iqn"]),
            lun=int(data["lun"]),
            chap_user=data.get("chap_user"),
            chap_secret=data.get("chap_secret"),
        )
    if kind == "rbd":
        return RbdSource(
            pool=str(data["pool"]),
            image=str(data["image"]),
            conf=data.get("conf"),
            user=data.get("user"),
            key=data.get("key"),
        )
    raise ValueError(f"unknown source kind {kind!r}")
