"""What LVM reports about a volume group and its logical volumes, parsed into dataclasses, and
how the lvm storage backend names and tags its LVs.

Reports come from ``lvs``/``vgs --reportformat json --units b --nosuffix``: every value is a
string, sizes are plain byte counts, and a field that does not apply is an empty string.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from backends.errors import BackendError

# Tags on the backend's LVs (backends/lvm.py explains them).
VOLUME_TAG = "ebsemu_vol_"
VIEW_TAG = "ebsemu_view_"
NEW_TAG = "ebsemu_new_"
GROW_TAG = "ebsemu_grow_"

# LVM's own rules for VG and LV names (lvm(8), "VALID NAMES"), restricted to what a command
# template accepts as a value: no leading '-', at most 127 characters.
_NAME = re.compile(r"[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,126}")
_RESERVED_PREFIXES = ("snapshot", "pvmove")
_RESERVED_PARTS = (
    "_cdata",
    "_cmeta",
    "_corig",
    "_cpool",
    "_cvol",
    "_wcorig",
    "_mimage",
    "_mlog",
    "_pmspare",
    "_rimage",
    "_rmeta",
    "_tdata",
    "_tmeta",
    "_vdata",
    "_vorigin",
)


def check_name(name: str, kind: str) -> str:
    """Return ``name`` if LVM accepts it as a VG or LV name; BackendError otherwise."""
    if (
        not _NAME.fullmatch(name)
        or name in (".", "..")
        or name.startswith(_RESERVED_PREFIXES)
        or any(part in name for part in _RESERVED_PARTS)
    ):
        raise BackendError(f"{name!r} cannot be an LVM {kind} name")
    return name


@dataclass(frozen=True)
class LogicalVolume:
    """One row of ``lvs``."""

    name: str
    size_bytes: int
    attr: str
    tags: frozenset[str]
    pool: str | None
    origin: str | None
    data_percent: float | None

    @property
    def view_id(self) -> str | None:
        """The view this LV holds, from its view tag."""
        return _tagged(self.tags, VIEW_TAG)

    @property
    def volume_id(self) -> str | None:
        """The volume this LV holds, from its volume tag (or the tag of a volume still being
        zeroed). An LV tagged as a view is a view even if it also carries a volume tag (copied
        from its origin)."""
        if self.view_id is not None:
            return None
        return _tagged(self.tags, VOLUME_TAG) or _tagged(self.tags, NEW_TAG)

    @property
    def unzeroed_from(self) -> int | None:
        """Where the range of this LV that an interrupted create or extend left unzeroed
        begins (it runs to the end of the LV); None when there is none."""
        if _tagged(self.tags, NEW_TAG) is not None:
            return 0
        offsets = [
            int(tag.removeprefix(GROW_TAG))
            for tag in self.tags
            if tag.startswith(GROW_TAG) and tag.removeprefix(GROW_TAG).isdigit()
        ]
        return min(offsets, default=None)

    @property
    def is_thin_pool(self) -> bool:
        return self.attr.startswith("t")

    @property
    def is_thin(self) -> bool:
        """A thin LV (it names its pool); its snapshots are thin snapshots."""
        return self.pool is not None


@dataclass(frozen=True)
class VolumeGroup:
    """One row of ``vgs``."""

    name: str
    size_bytes: int
    free_bytes: int
    extent_bytes: int


def _tagged(tags: frozenset[str], prefix: str) -> str | None:
    found = sorted(tag.removeprefix(prefix) for tag in tags if tag.startswith(prefix))
    return found[0] if found else None


def parse_lvs(text: str) -> list[LogicalVolume]:
    """Parse ``lvs --reportformat json --units b --nosuffix`` (the fields of lvsCmd)."""
    try:
        return [
            LogicalVolume(
                name=_text(row, "lv_name"),
                size_bytes=_bytes(row, "lv_size"),
                attr=_text(row, "lv_attr"),
                tags=frozenset(t for t in _text(row, "lv_tags", "").split(",") if t),
                pool=_text(row, "pool_lv", "") or None,
                origin=_text(row, "origin", "") or None,
                data_percent=_percent(row, "data_percent"),
            )
            for row in _rows(text, "lv")
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise BackendError(f"cannot parse lvs output: {exc!r}") from exc


def parse_vgs(text: str) -> list[VolumeGroup]:
    """Parse ``vgs --reportformat json --units b --nosuffix`` (the fields of vgsCmd)."""
    try:
        return [
            VolumeGroup(
                name=_text(row, "vg_name"),
                size_bytes=_bytes(row, "vg_size"),
                free_bytes=_bytes(row, "vg_free"),
                extent_bytes=_bytes(row, "vg_extent_size"),
            )
            for row in _rows(text, "vg")
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise BackendError(f"cannot parse vgs output: {exc!r}") from exc


def _rows(text: str, kind: str) -> list[dict[str, Any]]:
    data = json.loads(text)
    rows: list[dict[str, Any]] = []
    for report in data["report"]:
        rows.extend(report.get(kind, []))
    return rows


def _text(row: dict[str, Any], key: str, default: str | None = None) -> str:
    value = row.get(key, default)
    if not isinstance(value, str):
        raise ValueError(f"field {key} is {value!r}")
    return value


def _bytes(row: dict[str, Any], key: str) -> int:
    value = int(_text(row, key))
    if value < 0:
        raise ValueError(f"field {key} is negative")
    return value


def _percent(row: dict[str, Any], key: str) -> float | None:
    value = _text(row, key, "")
    return float(value) if value else None
