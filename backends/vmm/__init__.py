"""VMM drivers: where volumes attach. Each implements backends.base.VmmBackend and is built
with ``from_options(options, runner=..., templates=...)`` from its configuration section."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from backends.base import VmmBackend
from backends.vmm.host import HostVmm
from backends.vmm.libvirt import LibvirtVmm
from backends.vmm.qemu import QemuVmm
from backends.vmm.xen import XenVmm
from hostcmds import CommandRunner, CommandTemplates


class VmmFactory(Protocol):
    """How the service builds a VMM driver from its configuration section."""

    def from_options(
        self, options: Mapping[str, str], *, runner: CommandRunner, templates: CommandTemplates
    ) -> VmmBackend: ...


VMMS: Mapping[str, VmmFactory] = {
    "qemu": QemuVmm,
    "libvirt": LibvirtVmm,
    "xen": XenVmm,
    "host": HostVmm,
}

__all__ = ["VMMS", "HostVmm", "LibvirtVmm", "QemuVmm", "VmmFactory", "XenVmm"]
