"""Two rbd storage backends on one pool keep apart by ``image_prefix`` (real single-node Ceph
cluster, tests/ceph_fixtures.py): each lists, views, deletes and collects only its own images,
and a backend without a prefix sees none of theirs. A delete reads the pool's free space
(``ceph df``, about a second) after letting go of its volume's lock; a create
does not wait for images being removed, and a long listing that meets one is run again."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Sequence
from typing import Any

import pytest

from backends.base import RbdSource
from backends.errors import BackendError, SetupError
from backends.rbd import RbdStorage
from ebsemu.model import BLOCK_SIZE
from hostcmds import CommandError, CommandResult, LocalRunner, load_templates
from tests.ceph_fixtures import COMMAND_TIMEOUT, CephCluster, ceph_cluster

__all__ = ["ceph_cluster"]

MIB = 1 << 20


def _id(prefix: str) -> str:
    return f"{prefix}-{os.urandom(8).hex()}0"


def _storage(cluster: CephCluster, prefix: str | None) -> RbdStorage:
    options = {"pool": cluster.pool, "conf": str(cluster.conf)}
    if prefix is not None:
        options["image_prefix"] = prefix
    backend = RbdStorage.from_options(options, runner=LocalRunner(), templates=load_templates())
    asyncio.run(backend.check_setup())
    return backend


def test_backends_with_prefixes_share_a_pool_without_seeing_each_other(
    ceph_cluster: CephCluster,
) -> None:
    first, second = _storage(ceph_cluster, "one-"), _storage(ceph_cluster, "two.")
    bare = _storage(ceph_cluster, None)
    volume, view = _id("vol"), _id("snap")
    asyncio.run(first.create(volume, 16 * MIB))
    asyncio.run(second.create(volume, 32 * MIB))  # the same id: another image
    images = ceph_cluster.images()
    assert f"one-{volume}" in images and f"two.{volume}" in images and volume not in images
    assert volume in asyncio.run(first.list_volumes())
    assert asyncio.run(first.health({volume: 16 * MIB})) == {}
    assert asyncio.run(second.health({volume: 32 * MIB})) == {}
    missing = _id("vol")
    problems = asyncio.run(first.health({missing: MIB}))
    assert f"{ceph_cluster.pool}/one-{missing} is missing" in problems[missing]
    assert volume not in asyncio.run(bare.list_volumes())
    assert first.device_path(volume) == f"{ceph_cluster.pool}/one-{volume}"
    assert first.disk_source(volume) == RbdSource(
        ceph_cluster.pool, f"one-{volume}", str(ceph_cluster.conf), "admin"
    )

    block = random.Random(3).randbytes(BLOCK_SIZE)
    first.write_blocks(volume, [(2, block)])
    asyncio.run(first.freeze(volume, view))
    assert view in asyncio.run(first.list_views())
    assert view not in asyncio.run(second.list_views())
    assert view not in asyncio.run(bare.list_views())
    reader = first.open_view(view)
    try:
        assert dict(reader.iter_blocks()) == {2: block}
    finally:
        reader.close()
    with pytest.raises(BackendError, match=f"no view {view}"):
        second.open_view(view)

    # deleted with a pending view: kept as deleted.one-vol-…, which the others never collect
    asyncio.run(first.delete(volume))
    assert f"deleted.one-{volume}" in ceph_cluster.images()
    asyncio.run(second.drop_view(view))  # not its view: nothing happens
    asyncio.run(bare.delete(_id("vol")))  # collects deleted images of its own only
    assert f"deleted.one-{volume}" in ceph_cluster.images()
    assert volume in asyncio.run(second.list_volumes())
    asyncio.run(first.drop_view(view))
    assert f"deleted.one-{volume}" not in ceph_cluster.images()
    asyncio.run(second.delete(volume))
    assert f"two.{volume}" not in ceph_cluster.images()


def test_a_backend_without_a_prefix_leaves_prefixed_images_alone(
    ceph_cluster: CephCluster,
) -> None:
    prefixed, bare = _storage(ceph_cluster, "own-"), _storage(ceph_cluster, None)
    volume = _id("vol")
    asyncio.run(bare.create(volume, 8 * MIB))
    assert volume not in asyncio.run(prefixed.list_volumes())
    asyncio.run(prefixed.delete(volume))  # no own-vol-…: nothing to delete
    assert volume in ceph_cluster.images()
    asyncio.run(bare.delete(volume))


@pytest.mark.parametrize("prefix", ["a/b-", "x@", "deleted.x-", "two words"])
def test_an_image_prefix_rbd_would_misread_is_refused(prefix: str) -> None:
    with pytest.raises(SetupError, match="image_prefix"):
        RbdStorage.from_options(
            {"pool": "rbd", "image_prefix": prefix},
            runner=LocalRunner(),
            templates=load_templates(),
        )


class HeldDf:
    """The real rbd and ceph commands; ``ceph df`` waits while ``go`` is clear."""

    def __init__(self) -> None:
        self.local = LocalRunner()
        self.go = asyncio.Event()
        self.held = 0  # ceph df calls that waited

    async def run(self, argv: Sequence[str], **options: Any) -> CommandResult:
        if argv[0] == "ceph" and not self.go.is_set():
            self.held += 1
            await self.go.wait()
        return await self.local.run(argv, **options)


def test_a_delete_waiting_for_ceph_df_holds_no_other_delete_back(
    ceph_cluster: CephCluster,
) -> None:
    runner = HeldDf()
    backend = RbdStorage.from_options(
        {"pool": ceph_cluster.pool, "conf": str(ceph_cluster.conf), "image_prefix": "df-"},
        runner=runner,
        templates=load_templates(),
    )
    first, second = _id("vol"), _id("vol")

    async def scenario() -> None:
        runner.go.set()
        await backend.create(first, 8 * MIB)
        await backend.create(second, 8 * MIB)
        runner.go.clear()
        deleting = asyncio.create_task(backend.delete(first))
        async with asyncio.timeout(COMMAND_TIMEOUT):
            while runner.held < 1:  # the first delete waits for its ceph df …
                await asyncio.sleep(0.05)
            other = asyncio.create_task(backend.delete(second))
            while runner.held < 2:  # … and the second has removed its image meanwhile
                await asyncio.sleep(0.05)
        removed = ceph_cluster.images()
        runner.go.set()
        await asyncio.gather(deleting, other)
        assert f"df-{second}" not in removed

    asyncio.run(scenario())
    assert not {f"df-{first}", f"df-{second}"} & set(ceph_cluster.images())


class ImageBeingRemoved:
    """The real rbd commands, but the first ``failures`` ``rbd ls --long`` fail as they do while
    an image of the pool is being removed (the long listing opens every image it has listed)."""

    def __init__(self, failures: int) -> None:
        self.local = LocalRunner()
        self.failures = failures
        self.listings = 0

    async def run(self, argv: Sequence[str], **options: Any) -> CommandResult:
        if "ls" in argv and "--long" in argv:
            self.listings += 1
            if self.listings <= self.failures:
                stderr = "rbd: listing images failed: (2) No such file or directory\n"
                if options.get("check", True):
                    raise CommandError(argv, 2, stderr)
                return CommandResult(tuple(argv), 2, b"", stderr.encode())
        return await self.local.run(argv, **options)


def _racing(cluster: CephCluster, runner: ImageBeingRemoved) -> RbdStorage:
    return RbdStorage.from_options(
        {"pool": cluster.pool, "conf": str(cluster.conf), "image_prefix": "race-"},
        runner=runner,
        templates=load_templates(),
    )


def test_create_does_not_wait_for_an_image_being_removed(ceph_cluster: CephCluster) -> None:
    runner = ImageBeingRemoved(failures=1000)
    volume = _id("vol")
    asyncio.run(_racing(ceph_cluster, runner).create(volume, 8 * MIB))
    assert f"race-{volume}" in ceph_cluster.images() and runner.listings == 0
    asyncio.run(_racing(ceph_cluster, ImageBeingRemoved(failures=0)).delete(volume))


def test_a_listing_that_meets_an_image_being_removed_is_run_again(
    ceph_cluster: CephCluster,
) -> None:
    runner = ImageBeingRemoved(failures=3)
    backend = _racing(ceph_cluster, runner)
    volume = _id("vol")
    asyncio.run(backend.create(volume, 8 * MIB))
    assert volume in asyncio.run(backend.list_volumes())
    assert runner.listings == 4
    asyncio.run(backend.delete(volume))
