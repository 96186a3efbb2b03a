"""Configuration: an embedded default that runs with no file, overridden by an INI file.

Every option is documented in config.example.ini at the top of the repository.
"""

from __future__ import annotations

import configparser
import re
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_ACCOUNT_ID = "000000000000"
ACCOUNT_ID = re.compile(r"[0-9]{12}")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True)
class Zone:
    name: str
    zone_id: str
    region: str


@dataclass(frozen=True)
class VmmHost:
    """A VMM host whose domains are instances: its driver, zone and driver options."""

    name: str
    driver: str
    zone: str
    options: dict[str, str] = field(default_factory=dict)
    account_id: str | None = None  # who owns its instances; None: the default account
    url: str = "local"  # "local", or ssh://[user@]host[:port] to run its commands over SSH
    ssh_options: dict[str, str] = field(default_factory=dict)  # key_file, known_hosts, host_key
    initiator_address: str | None = None  # how an iSCSI target sees this host (tgt ACL)
    initiator_name: str | None = None  # its iSCSI initiator IQN, when bound by name


@dataclass(frozen=True)
class StorageHost:
    """A host that holds volumes: its backend and options, zone, and how to reach it.

    ``zone`` None serves every zone: the single ``[storage]`` section, named ``default``."""

    name: str
    zone: str | None
    backend: str = "file"
    url: str = "local"  # "local", or ssh://[user@]host[:port] to run its commands over SSH
    path: Path | None = None  # the file backend's directory; None: under the data directory
    options: dict[str, str] = field(default_factory=dict)  # the backend's own options
    ssh_options: dict[str, str] = field(default_factory=dict)  # key_file, known_hosts, host_key
    export_options: dict[str, str] = field(default_factory=dict)  # export_* keys, over [export]


DEFAULT_STORAGE_HOST = "default"
SSH_OPTIONS = ("key_file", "known_hosts", "host_key")


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8788
    data_dir: Path = Path("ebsemu-data")
    log_level: str = "INFO"
    log_format: str = "text"  # text | json (one JSON object per line)
    metrics: bool = True  # GET /metrics (Prometheus text format, no authentication)
    default_region: str = "us-east-1"
    zones: tuple[Zone, ...] = (Zone("us-east-1a", "use1-az1", "us-east-1"),)
    account_id: str = DEFAULT_ACCOUNT_ID
    storage_backend: str = "file"
    storage_path: Path | None = None
    storage_options: dict[str, str] = field(default_factory=dict)  # backend-specific (lvm)
    export_backend: str = "none"
    export_options: dict[str, str] = field(default_factory=dict)
    blockstore_path: Path | None = None
    blockstore_backend: str = "local"  # local | rados
    blockstore_options: dict[str, str] = field(default_factory=dict)  # rados: conf, pool, …
    deleted_visible_seconds: float = 10.0
    max_volumes: int = 5000
    max_snapshots: int = 100000
    hostcmds: dict[str, dict[str, str]] = field(default_factory=dict)
    vmm_hosts: tuple[VmmHost, ...] = ()
    storage_hosts: tuple[StorageHost, ...] = ()  # [storage NAME] sections; () : [storage] only
    max_attachments_per_instance: int = 26
    # ModifyVolume: AWS refuses a new modification of a volume within 6 hours of the last one;
    # the optimizing phase's length models how long AWS takes to settle the new performance.
    modification_cooldown_seconds: float = 6 * 3600.0
    modification_optimizing_seconds: float = 0.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_request_bytes: int = 1024 * 1024
    request_body_timeout_seconds: float = 60.0  # for the whole body to arrive
    requests_per_second: float = 100.0
    request_burst: int = 300
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    ebs_timeout_minute_seconds: float = 60.0  # a StartSnapshot Timeout minute (tests shorten it)
    store_backend: str = "sqlite"  # sqlite (in the data directory) | postgresql (store_dsn)
    store_dsn: str | None = field(default=None, repr=False)  # may hold a password
    store_instance_id: str | None = None  # this server among those sharing the database
    job_lease_seconds: float = 30.0  # how long a dead instance's jobs wait to be taken over

    def __post_init__(self) -> None:
        if not ACCOUNT_ID.fullmatch(self.account_id):
            raise ValueError(f"account_id must be 12 digits, not {self.account_id!r}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both tls_cert and tls_key")
        if self.max_request_bytes < 1024:
            raise ValueError("max_request_bytes must be at least 1024")
        if self.request_body_timeout_seconds <= 0:
            raise ValueError("request_body_timeout_seconds must be positive")
        if self.requests_per_second < 0 or self.request_burst < 1:
            raise ValueError("requests_per_second must be >= 0 and request_burst >= 1")
        _check_storage_hosts(self.storage_hosts, self.zones)
        if self.ebs_timeout_minute_seconds <= 0:
            raise ValueError("ebs_timeout_minute_seconds must be positive")
        _check_store(self)
        if self.log_format not in ("text", "json"):
            raise ValueError(f"log_format must be text or json, not {self.log_format!r}")
        if self.log_level.upper() not in LOG_LEVELS:
            raise ValueError(
                f"log_level must be one of {', '.join(LOG_LEVELS)}, not {self.log_level!r}"
            )
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port must be from 1 to 65535, not {self.port}")
        if min(self.max_volumes, self.max_snapshots, self.max_attachments_per_instance) < 1:
            raise ValueError(
                "max_volumes, max_snapshots and max_attachments_per_instance must be >= 1"
            )
        if self.modification_cooldown_seconds < 0 or self.modification_optimizing_seconds < 0:
            raise ValueError("modification_*_seconds must be >= 0")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def regions(self) -> tuple[str, ...]:
        seen: dict[str, None] = {self.default_region: None}
        for zone in self.zones:
            seen.setdefault(zone.region, None)
        return tuple(seen)

    def zones_in(self, region: str) -> tuple[Zone, ...]:
        return tuple(zone for zone in self.zones if zone.region == region)

    @property
    def storage_host_list(self) -> tuple[StorageHost, ...]:
        """The storage hosts: the [storage NAME] sections, or else the one [storage] section,
        a host named ``default`` serving every zone."""
        if self.storage_hosts:
            return self.storage_hosts
        return (
            StorageHost(
                DEFAULT_STORAGE_HOST,
                None,
                self.storage_backend,
                path=self.volumes_dir,
                options=self.storage_options,
            ),
        )

    @property
    def volumes_dir(self) -> Path:
        return self.storage_path or self.data_dir / "storage"

    @property
    def blocks_dir(self) -> Path:
        return self.blockstore_path or self.data_dir / "blocks"

    @property
    def database(self) -> Path:
        return self.data_dir / "ebsemu.sqlite3"


STORE_BACKENDS = ("sqlite", "postgresql")


def _check_store(config: Config) -> None:
    if config.store_backend not in STORE_BACKENDS:
        raise ValueError(
            f"[store] backend must be sqlite or postgresql, not {config.store_backend!r}"
        )
    if config.store_backend == "postgresql" and not (config.store_dsn or "").startswith(
        ("postgresql://", "postgres://")
    ):
        raise ValueError("[store] backend = postgresql needs dsn = postgresql://…")
    if config.job_lease_seconds <= 0:
        raise ValueError("[store] job_lease_seconds must be positive")


def _store_options(store: configparser.SectionProxy) -> dict[str, object]:
    values: dict[str, object] = {"store_backend": store.get("backend", "sqlite")}
    if store.get("dsn"):
        values["store_dsn"] = store["dsn"]
    if store.get("instance_id"):
        values["store_instance_id"] = store["instance_id"]
    if "job_lease_seconds" in store:
        values["job_lease_seconds"] = store.getfloat("job_lease_seconds")
    return values


def _zone_id(region: str, index: int) -> str:
    parts = region.split("-")
    short = parts[0] + "".join(p[0] for p in parts[1:-1]) + parts[-1]
    return f"{short}-az{index + 1}"


def load(path: Path | None, **overrides: object) -> Config:
    """Read ``path`` (if given) over the embedded default; ``overrides`` (CLI flags) win."""
    values: dict[str, object] = {}
    if path is not None:
        parser = configparser.ConfigParser(interpolation=None)
        parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep hostcmd keys' case
        with path.open(encoding="utf-8") as handle:
            parser.read_file(handle)
        try:
            values.update(_from_parser(parser, path.parent))
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
    values.update({key: value for key, value in overrides.items() if value is not None})
    return Config(**values)  # type: ignore[arg-type]  # keys come from the known option tables


# The options of the sections read here, whole. [storage], [export], [blockstore] and the
# [vmm …], [storage …] and [hostcmds …] sections hand their options on to what they configure.
SECTION_OPTIONS: dict[str, frozenset[str]] = {
    "server": frozenset(
        {
            "host",
            "port",
            "log_level",
            "log_format",
            "default_region",
            "account_id",
            "metrics",
            "data_dir",
            "deleted_visible_seconds",
            "ebs_timeout_minute_seconds",
            "tls_cert",
            "tls_key",
        }
    ),
    "limits": frozenset(
        {
            "max_volumes",
            "max_snapshots",
            "max_attachments_per_instance",
            "max_request_bytes",
            "request_body_timeout_seconds",
            "request_burst",
            "requests_per_second",
            "modification_cooldown_seconds",
            "modification_optimizing_seconds",
        }
    ),
    "auth": frozenset({"access_key_id", "secret_access_key"}),
    "store": frozenset({"backend", "dsn", "instance_id", "job_lease_seconds"}),
    "region": frozenset({"zones"}),
}
OTHER_SECTIONS = frozenset({"storage", "export", "blockstore", "vmm", "hostcmds"})
NAMED_SECTIONS = frozenset({"region", "vmm", "hostcmds"})  # [storage] and [storage NAME] both


def _check_names(parser: configparser.ConfigParser) -> None:
    """ValueError for a section or an option nothing reads: a typo there would otherwise
    leave its setting at the default without a word."""
    defaults = set(parser.defaults())
    for section in parser.sections():
        kind = section.split(None, 1)[0]
        if kind not in SECTION_OPTIONS and kind not in OTHER_SECTIONS:
            raise ValueError(f"unknown section [{section}]")
        named = " " in section.strip()
        if kind in NAMED_SECTIONS and not named:
            raise ValueError(f"section [{section}] needs a name: [{kind} NAME]")
        if kind not in NAMED_SECTIONS and kind != "storage" and named:
            raise ValueError(f"section [{section}] takes no name: [{kind}]")
        known = SECTION_OPTIONS.get(kind)
        if known is None:
            continue
        unknown = sorted(set(parser[section]) - known - defaults)
        if unknown:
            raise ValueError(
                f"[{section}] has no option {unknown[0]!r} (it has {', '.join(sorted(known))})"
            )


def _from_parser(parser: configparser.ConfigParser, base: Path) -> dict[str, object]:
    _check_names(parser)
    values: dict[str, object] = {}
    if parser.has_section("server"):
        server = parser["server"]
        for key in ("host", "log_level", "log_format", "default_region", "account_id"):
            if key in server:
                values[key] = server[key]
        if "port" in server:
            values["port"] = server.getint("port")
        if "metrics" in server:
            values["metrics"] = server.getboolean("metrics")
        if "data_dir" in server:
            values["data_dir"] = base / server["data_dir"]
        for key in ("deleted_visible_seconds", "ebs_timeout_minute_seconds"):
            if key in server:
                values[key] = server.getfloat(key)
        for key in ("tls_cert", "tls_key"):
            if server.get(key):
                values[key] = base / server[key]
    if parser.has_section("limits"):
        limits = parser["limits"]
        for key in (
            "max_volumes",
            "max_snapshots",
            "max_attachments_per_instance",
            "max_request_bytes",
            "request_burst",
        ):
            if key in limits:
                values[key] = limits.getint(key)
        for key in (
            "requests_per_second",
            "request_body_timeout_seconds",
            "modification_cooldown_seconds",
            "modification_optimizing_seconds",
        ):
            if key in limits:
                values[key] = limits.getfloat(key)
    if parser.has_section("auth"):
        auth = parser["auth"]
        for key in ("access_key_id", "secret_access_key"):
            if auth.get(key):
                values[key] = auth[key]
    if parser.has_section("storage"):
        storage = parser["storage"]
        values["storage_backend"] = storage.get("backend", "file")
        if "path" in storage:
            values["storage_path"] = base / storage["path"]
        values["storage_options"] = {
            key: value for key, value in storage.items() if key not in ("backend", "path")
        }
    if parser.has_section("export"):
        export = dict(parser["export"])
        values["export_backend"] = export.pop("backend", "none")
        values["export_options"] = export
    if parser.has_section("store"):
        values.update(_store_options(parser["store"]))
    if parser.has_section("blockstore"):
        blockstore = dict(parser["blockstore"])
        values["blockstore_backend"] = blockstore.pop("backend", "local")
        if "path" in blockstore:
            values["blockstore_path"] = base / blockstore.pop("path")
        if "conf" in blockstore:
            blockstore["conf"] = str(base / blockstore["conf"])
        values["blockstore_options"] = blockstore
    zones: list[Zone] = []
    for section in parser.sections():
        if section.startswith("region "):
            region = section.split(None, 1)[1].strip()
            names = [n.strip() for n in parser[section].get("zones", "").split(",") if n.strip()]
            zones += [Zone(name, _zone_id(region, i), region) for i, name in enumerate(names)]
    if zones:
        values["zones"] = tuple(zones)
        values.setdefault("default_region", zones[0].region)
    values["vmm_hosts"] = tuple(
        _vmm_host(section.split(None, 1)[1].strip(), dict(parser[section]))
        for section in parser.sections()
        if section.startswith("vmm ")
    )
    storage_hosts = tuple(
        _storage_host(section.split(None, 1)[1].strip(), dict(parser[section]), base)
        for section in parser.sections()
        if section.startswith("storage ")
    )
    if storage_hosts:
        if parser.has_section("storage"):
            raise ValueError("use either one [storage] section or [storage NAME] sections")
        values["storage_hosts"] = storage_hosts
    values["hostcmds"] = {
        section.split(None, 1)[1].strip(): dict(parser[section])
        for section in parser.sections()
        if section.startswith("hostcmds ")
    }
    return values


def _vmm_host(name: str, options: dict[str, str]) -> VmmHost:
    driver = options.pop("driver", "")
    zone = options.pop("zone", "")
    account = options.pop("account", None)
    if not driver or not zone:
        raise ValueError(f"[vmm {name}] needs both driver = … and zone = …")
    if account is not None and not ACCOUNT_ID.fullmatch(account):
        raise ValueError(f"[vmm {name}] account must be a 12-digit account id")
    url = options.pop("url", "local")
    ssh_keys: tuple[str, ...] = ("key_file", "known_hosts", "host_key")
    ssh_options = {key: options.pop(key) for key in ssh_keys if key in options}
    address = options.pop("initiator_address", None)
    # QEMU presents the initiator name itself (its driver option); other drivers do not see it.
    iqn = options.get("initiator_name") if driver == "qemu" else options.pop("initiator_name", None)
    return VmmHost(name, driver, zone, options, account, url, ssh_options, address, iqn)


def _storage_host(name: str, options: dict[str, str], base: Path) -> StorageHost:
    zone = options.pop("zone", "").strip()
    if not zone:
        raise ValueError(f"[storage {name}] needs zone = …")
    backend = options.pop("backend", "file").strip()
    url = options.pop("url", "local").strip()
    ssh_options = {key: options.pop(key) for key in SSH_OPTIONS if key in options}
    export_options = {
        key.removeprefix("export_"): options.pop(key)
        for key in list(options)
        if key.startswith("export_")
    }
    raw_path = options.pop("path", None)
    path = base / raw_path if raw_path is not None and url == "local" else None
    if raw_path is not None and url != "local":
        options["path"] = raw_path  # a directory on the remote host, not relative to this file
    return StorageHost(name, zone, backend, url, path, options, ssh_options, export_options)


def _check_storage_hosts(hosts: tuple[StorageHost, ...], zones: tuple[Zone, ...]) -> None:
    """Every name once, every host in a configured zone, every zone with a host."""
    if not hosts:
        return
    names: set[str] = set()
    zone_names = {zone.name for zone in zones}
    for host in hosts:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", host.name):
            raise ValueError(f"[storage {host.name}]: a storage host name is letters, digits, _.-")
        if host.name in names:
            raise ValueError(f"[storage {host.name}] is configured twice")
        names.add(host.name)
        if host.zone not in zone_names:
            raise ValueError(
                f"[storage {host.name}]: zone {host.zone!r} is not a configured zone "
                f"({', '.join(sorted(zone_names))})"
            )
    served = {host.zone for host in hosts}
    bare = [zone.name for zone in zones if zone.name not in served]
    if bare:
        raise ValueError(
            f"zone(s) {', '.join(bare)} have no storage host: add a [storage NAME] section "
            "with zone = … for each"
        )
