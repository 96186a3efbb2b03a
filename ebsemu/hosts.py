"""Building the backends the configuration names: storage, export, VMM hosts and the runners
(local or SSH) their host commands go through."""

from __future__ import annotations

from pathlib import Path

from backends.base import ExportBackend, Initiator, StorageBackend, VmmBackend
from backends.export import EXPORTS
from backends.file import FileStorage
from backends.luks import LuksFormatter
from backends.lvm import LvmStorage
from backends.rbd import RbdStorage
from backends.remote_file import RemoteFileStorage
from backends.vmm import VMMS
from ebsemu.config import Config, StorageHost
from ebsemu.service.storage_hosts import StorageHostEntry, StorageHosts
from hostcmds import CommandRunner, CommandTemplates, LocalRunner, load_templates


class ConfigError(SystemExit):
    """The configuration names something that cannot be built; the message says what."""


def runner_for(url: str, ssh_options: dict[str, str], local: CommandRunner) -> CommandRunner:
    if url == "local":
        return local
    if not url.startswith("ssh://"):
        raise ConfigError(f"host url {url!r}: use local or ssh://[user@]host[:port]")
    from hostcmds.ssh import ssh_runner  # asyncssh: loaded only for a host reached over SSH

    return ssh_runner(
        url,
        key_file=ssh_options.get("key_file"),
        known_hosts=ssh_options.get("known_hosts"),
        host_key=ssh_options.get("host_key"),
    )


STORAGE_BACKENDS = ("file", "lvm", "rbd", "remote-file")


def build_storage(
    config: Config, host: StorageHost, runner: CommandRunner, templates: CommandTemplates
) -> StorageBackend:
    """The backend of one storage host, its commands run through ``runner`` (its host's)."""
    where = "[storage]" if host.zone is None else f"[storage {host.name}]"
    if host.backend == "file":
        if host.url != "local":
            raise ConfigError(
                f"{where}: backend = file works on this host only; use backend = remote-file "
                "for a file backend on an ssh:// host"
            )
        return FileStorage(
            host.path or config.data_dir / "storage-hosts" / host.name,
            luks_formatter=LuksFormatter(runner, templates),
        )
    if host.backend == "lvm":
        return LvmStorage.from_options(host.options, runner=runner, templates=templates)
    if host.backend == "rbd":
        return RbdStorage.from_options(host.options, runner=runner, templates=templates)
    if host.backend == "remote-file":
        return RemoteFileStorage.from_options(host.options, runner=runner, templates=templates)
    raise ConfigError(
        f"{where} backend = {host.backend!r}: use {', '.join(STORAGE_BACKENDS[:-1])} "
        f"or {STORAGE_BACKENDS[-1]}"
    )


def build_storage_hosts(
    config: Config,
    local: CommandRunner,
    templates: CommandTemplates,
    shared_export: ExportBackend | None,
) -> StorageHosts:
    """Every storage host with its backend and export, each run through its own runner."""
    entries: list[StorageHostEntry] = []
    for host in config.storage_host_list:
        runner = runner_for(host.url, host.ssh_options, local)
        if host.zone is None:  # the one [storage] section: the [export] as configured
            export = shared_export
            label = host.backend
        else:
            export = build_host_export(config, host, runner, templates)
            label = f"{host.name} ({host.backend}, {host.url})"
        backend = build_storage(config, host, runner, templates)
        entries.append(StorageHostEntry(host.name, host.zone, backend, label, export))
    return StorageHosts(entries)


def build_host_export(
    config: Config, host: StorageHost, runner: CommandRunner, templates: CommandTemplates
) -> ExportBackend | None:
    """The [export] backend run on a named storage host (its export_* options win), keeping
    its records under record_dir/<host name>."""
    if config.export_backend == "none":
        return None
    factory = EXPORTS.get(config.export_backend)
    if factory is None:
        raise ConfigError(f"[export] backend = {config.export_backend!r}: use none or tgt")
    options = {**config.export_options, **host.export_options}
    if "record_dir" in config.export_options and "record_dir" not in host.export_options:
        options["record_dir"] = str(Path(config.export_options["record_dir"]) / host.name)
    return factory.from_options(options, runner=runner, templates=templates)


def build_export(
    config: Config, runner: CommandRunner, templates: CommandTemplates
) -> ExportBackend | None:
    """The [export] backend on this host, for the one [storage] section (named storage hosts
    each get their own, see build_host_export)."""
    if config.export_backend == "none" or config.storage_hosts:
        return None
    factory = EXPORTS.get(config.export_backend)
    if factory is None:
        raise ConfigError(f"[export] backend = {config.export_backend!r}: use none or tgt")
    return factory.from_options(config.export_options, runner=runner, templates=templates)


def build_vmms(
    config: Config, local: CommandRunner, templates: CommandTemplates
) -> dict[str, VmmBackend]:
    """One driver per configured VMM host, its commands run locally or over SSH."""
    zones = {zone.name for zone in config.zones}
    vmms: dict[str, VmmBackend] = {}
    for host in config.vmm_hosts:
        factory = VMMS.get(host.driver)
        if factory is None:
            raise ConfigError(
                f"[vmm {host.name}]: unknown driver {host.driver!r}; known: {', '.join(VMMS)}"
            )
        if host.zone not in zones:
            raise ConfigError(f"[vmm {host.name}]: zone {host.zone!r} is not a configured zone")
        runner = runner_for(host.url, host.ssh_options, local)
        vmms[host.name] = factory.from_options(host.options, runner=runner, templates=templates)
    return vmms


def initiators(config: Config) -> dict[str, Initiator]:
    """How the export backend's ACL names each VMM host (required when exports are used)."""
    found: dict[str, Initiator] = {}
    for host in config.vmm_hosts:
        if host.initiator_address is None and host.initiator_name is None:
            if config.export_backend != "none":
                raise ConfigError(
                    f"[vmm {host.name}]: [export] backend = {config.export_backend} needs "
                    "initiator_address (or initiator_name) for this VMM host"
                )
            continue
        found[host.name] = Initiator(address=host.initiator_address, name=host.initiator_name)
    return found


def shared_tools(config: Config) -> tuple[CommandRunner, CommandTemplates]:
    return LocalRunner(), load_templates(config.hostcmds)
