"""Building the backends the configuration names: storage, export, VMM hosts and the runners
(local or SSH) their host commands go through."""

from __future__ import annotations

from backends.base import ExportBackend, Initiator, StorageBackend, VmmBackend
from backends.export import EXPORTS
from backends.file import FileStorage
from backends.luks import LuksFormatter
from backends.lvm import LvmStorage
from backends.vmm import VMMS
from ebsemu.config import Config
from hostcmds import CommandRunner, CommandTemplates, LocalRunner, load_templates
from hostcmds.ssh import ssh_runner


class ConfigError(SystemExit):
    """The configuration names something that cannot be built; the message says what."""


def runner_for(url: str, ssh_options: dict[str, str], local: CommandRunner) -> CommandRunner:
    if url == "local":
        return local
    if not url.startswith("ssh://"):
        raise ConfigError(f"host url {url!r}: use local or ssh://[user@]host[:port]")
    return ssh_runner(
        url,
        key_file=ssh_options.get("key_file"),
        known_hosts=ssh_options.get("known_hosts"),
        host_key=ssh_options.get("host_key"),
    )


def build_storage(
    config: Config, runner: CommandRunner, templates: CommandTemplates
) -> StorageBackend:
    if config.storage_backend == "file":
        return FileStorage(config.volumes_dir, luks_formatter=LuksFormatter(runner, templates))
    if config.storage_backend == "lvm":
        return LvmStorage.from_options(config.storage_options, runner=runner, templates=templates)
    raise ConfigError(f"[storage] backend = {config.storage_backend!r}: use file or lvm")


def build_export(
    config: Config, runner: CommandRunner, templates: CommandTemplates
) -> ExportBackend | None:
    if config.export_backend == "none":
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


def initiators(config: Config, export: ExportBackend | None) -> dict[str, Initiator]:
    """How the export backend's ACL names each VMM host (required when exports are used)."""
    found: dict[str, Initiator] = {}
    for host in config.vmm_hosts:
        if host.initiator_address is None and host.initiator_name is None:
            if export is not None:
                raise ConfigError(
                    f"[vmm {host.name}]: [export] backend = {config.export_backend} needs "
                    "initiator_address (or initiator_name) for this VMM host"
                )
            continue
        found[host.name] = Initiator(address=host.initiator_address, name=host.initiator_name)
    return found


def shared_tools(config: Config) -> tuple[CommandRunner, CommandTemplates]:
    return LocalRunner(), load_templates(config.hostcmds)
