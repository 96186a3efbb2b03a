"""The lvm storage backend's settings, read from the ``[storage]`` section of the service
configuration (``backend = lvm``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from backends.errors import BackendError, SetupError
from backends.lvm_report import check_name
from backends.options import Options

THIN = "thin"
LINEAR = "linear"
OPTIONS = (
    "vg",
    "lv_type",
    "thin_pool",
    "cow_snapshot_percent",
    "zero_linear",
    "lvm_config",
    "dev_dir",
    "command_timeout",
    "zero_timeout",
)


@dataclass(frozen=True)
class LvmConfig:
    """Where and how the backend keeps volumes.

    ``vg``: the volume group. ``lv_type``: ``thin`` (volumes are thin LVs in ``thin_pool``) or
    ``linear``. ``cow_snapshot_percent``: the size of a linear volume's copy-on-write snapshot,
    in percent of the volume. ``zero_linear``: zero new linear volumes and the range they grow
    by (turn it off only on storage that reads back zeros from unwritten extents).
    ``lvm_config``: a string passed to every LVM command as ``--config`` (for example
    ``devices{filter=[…]}`` or, on hosts without udev, ``activation{udev_sync=0
    udev_rules=0}``). ``dev_dir``: where device nodes appear (LVM's ``devices/dir``).
    ``command_timeout`` and ``zero_timeout`` (seconds): the limit of one LVM command and of
    zeroing one range.
    """

    vg: str
    lv_type: str = THIN
    thin_pool: str = "ebsemu_pool"
    cow_snapshot_percent: float = 25.0
    zero_linear: bool = True
    lvm_config: str | None = None
    dev_dir: Path = Path("/dev")
    command_timeout: float = 60.0
    zero_timeout: float = 3600.0

    def __post_init__(self) -> None:
        try:
            check_name(self.vg, "volume group")
            check_name(self.thin_pool, "thin pool")
        except BackendError as exc:
            raise SetupError(str(exc)) from None
        if self.lv_type not in (THIN, LINEAR):
            raise SetupError(f"lv_type must be {THIN} or {LINEAR}, not {self.lv_type!r}")
        if not 0 < self.cow_snapshot_percent <= 100:
            raise SetupError("cow_snapshot_percent must be above 0 and at most 100")
        if self.lvm_config is not None and (not self.lvm_config or "\x00" in self.lvm_config):
            raise SetupError("lvm_config must be a non-empty string without NUL")

    @property
    def thin(self) -> bool:
        return self.lv_type == THIN


def config_from_options(options: Mapping[str, str]) -> LvmConfig:
    """Read the ``[storage]`` options (``backend`` and ``path`` are the service's, not ours)."""
    opts = Options("storage", options)
    opts.refuse_unknown(OPTIONS)
    return LvmConfig(
        vg=opts.text("vg"),
        lv_type=opts.choice("lv_type", (THIN, LINEAR), LvmConfig.lv_type),
        thin_pool=opts.text("thin_pool", LvmConfig.thin_pool),
        cow_snapshot_percent=opts.number("cow_snapshot_percent", LvmConfig.cow_snapshot_percent),
        zero_linear=opts.choice("zero_linear", ("yes", "no"), "yes") == "yes",
        lvm_config=options.get("lvm_config", "").strip() or None,
        dev_dir=Path(opts.text("dev_dir", str(LvmConfig.dev_dir))),
        command_timeout=opts.number("command_timeout", LvmConfig.command_timeout),
        zero_timeout=opts.number("zero_timeout", LvmConfig.zero_timeout),
    )
