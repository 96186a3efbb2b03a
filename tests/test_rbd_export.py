"""An RBD volume exported over iSCSI by a real tgtd with tgt-rbd (``bs_type = rbd``), for VMM
hosts without librbd (Xen, the host itself): bytes written through the iSCSI LUN land in the
image. tgt-rbd reads the cluster's ceph.conf from CEPH_CONF (else /etc/ceph/ceph.conf)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from backends.base import Initiator, IscsiSource
from backends.export import TgtConfig, TgtExport
from backends.rbd import RbdStorage
from hostcmds import LocalRunner, load_templates
from tests.ceph_fixtures import CephCluster, ceph_cluster
from tests.tgt_fixtures import qemu_io, running_tgtd

__all__ = ["ceph_cluster"]

MIB = 1 << 20


def test_tgt_serves_an_rbd_volume_through_its_rbd_backing_store(
    ceph_cluster: CephCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CEPH_CONF", str(ceph_cluster.conf))  # for the tgtd started below
    storage = RbdStorage.from_options(
        {"pool": ceph_cluster.pool, "conf": str(ceph_cluster.conf)},
        runner=LocalRunner(),
        templates=load_templates(),
    )
    volume = f"vol-{os.urandom(8).hex()}0"
    asyncio.run(storage.create(volume, 16 * MIB))
    with running_tgtd(tmp_path) as tgtd:
        export = TgtExport(
            LocalRunner(),
            load_templates(),
            TgtConfig(
                record_dir=tmp_path / "exports",
                portal=tgtd.portal,
                control_port=tgtd.control_port,
                bs_type="rbd",
            ),
        )

        async def exported() -> IscsiSource:
            await export.check_setup()
            info = await export.export(
                volume, storage.device_path(volume), Initiator(address="127.0.0.1")
            )
            assert isinstance(info.source, IscsiSource)
            return info.source

        source = asyncio.run(exported())
        assert f"Backing store path: {ceph_cluster.pool}/{volume}" in tgtd.show_targets()
        out = qemu_io(source, ["write -P 0x6b 1M 1M", "read -P 0x6b 1M 1M"], tmp_path)
        assert out.returncode == 0 and "Pattern verification failed" not in out.stdout, out
        asyncio.run(export.unexport(volume))
    image = tmp_path / "image.raw"
    ceph_cluster.rbd("export", "--no-progress", f"{ceph_cluster.pool}/{volume}", str(image))
    data = image.read_bytes()
    assert data[: 3 * MIB] == bytes(MIB) + b"\x6b" * MIB + bytes(MIB)
    asyncio.run(storage.delete(volume))
