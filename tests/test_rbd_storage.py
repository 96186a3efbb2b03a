"""The rbd storage backend against a real single-node Ceph cluster (tests/ceph_fixtures.py):
images, snapshots as views, incremental reads through export-diff, writes through import-diff,
and clones of kept views."""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

import pytest

from backends.base import ChangedBlocksSource, RbdSource, StorageBackend
from backends.errors import BackendError, SetupError
from backends.rbd import RbdStorage, RbdView
from ebsemu.model import BLOCK_SIZE
from hostcmds import CommandError, CommandResult, CommandRunner, LocalRunner, load_templates
from tests.ceph_fixtures import COMMAND_TIMEOUT, CephCluster, ceph_cluster

__all__ = ["ceph_cluster"]

MIB = 1 << 20
OBJECT = 4 * MIB  # RBD's default object size: export-diff --whole-object reads whole objects
ZERO = bytes(BLOCK_SIZE)


def _id(prefix: str) -> str:
    return f"{prefix}-{os.urandom(8).hex()}0"


def _storage(cluster: CephCluster, runner: CommandRunner | None = None) -> RbdStorage:
    return RbdStorage.from_options(
        {"pool": cluster.pool, "conf": str(cluster.conf)},
        runner=runner or LocalRunner(),
        templates=load_templates(),
    )


@pytest.fixture
def storage(ceph_cluster: CephCluster) -> RbdStorage:
    backend = _storage(ceph_cluster)
    asyncio.run(backend.check_setup())
    return backend


def _write(cluster: CephCluster, volume_id: str, blocks: dict[int, bytes]) -> None:
    """Write blocks into the image with qemu-io (librbd), as a guest would."""
    if not blocks:
        return
    image = f"rbd:{cluster.pool}/{volume_id}:conf={cluster.conf}"
    for index, data in blocks.items():
        path = cluster.root / f"block-{volume_id}"
        path.write_bytes(data)
        cluster.run(
            "qemu-io", "-f", "raw", "-c",
            f"write -s {path} {index * BLOCK_SIZE} {BLOCK_SIZE}", image,
        )  # fmt: skip


def _read_image(cluster: CephCluster, spec: str, size: int) -> bytes:
    out = cluster.root / "export.raw"
    out.unlink(missing_ok=True)
    cluster.rbd("export", "--no-progress", f"{cluster.pool}/{spec}", str(out))
    data = out.read_bytes()
    assert len(data) == size
    return data


def _random_blocks(rng: random.Random, indexes: list[int]) -> dict[int, bytes]:
    return {i: rng.randbytes(BLOCK_SIZE) for i in indexes}


def _view_blocks(view: RbdView) -> Iterator[tuple[int, bytes]]:
    try:
        yield from view.iter_blocks()
    finally:
        view.close()


def test_rbd_storage_satisfies_the_storage_protocol(storage: RbdStorage) -> None:
    assert isinstance(storage, StorageBackend)


def test_create_extend_list_health_delete_of_an_image(
    storage: RbdStorage, ceph_cluster: CephCluster
) -> None:
    volume, big, missing = _id("vol"), _id("vol"), _id("vol")

    async def control() -> tuple[list[str], dict[str, str], dict[str, str], list[str]]:
        await storage.create(volume, 64 * MIB)
        await storage.create(volume, 64 * MIB)  # idempotent
        await storage.create(big, 16 * 1024 * 1024 * MIB)  # 16 TiB, thin
        await storage.extend(volume, 128 * MIB)
        listed = await storage.list_volumes()
        healthy = await storage.health({volume: 128 * MIB, big: 16 << 40})
        wrong = await storage.health({volume: 64 * MIB, missing: MIB})
        await storage.delete(big)
        await storage.delete(big)  # idempotent
        return listed, healthy, wrong, await storage.list_volumes()

    listed, healthy, wrong, after = asyncio.run(control())
    assert {volume, big} <= set(listed)
    assert healthy == {}
    assert set(wrong) == {volume, missing}
    assert "missing" in wrong[missing]
    assert "not 67108864" in wrong[volume]
    assert big not in after and volume in after
    info = json.loads(ceph_cluster.rbd("info", "--format", "json", f"{ceph_cluster.pool}/{volume}"))
    assert info["size"] == 128 * MIB
    assert ceph_cluster.rbd("image-meta", "get", f"{ceph_cluster.pool}/{volume}", "ebsemu.volume")
    assert big not in ceph_cluster.images()


def test_delete_leaves_a_foreign_image_alone(
    storage: RbdStorage, ceph_cluster: CephCluster
) -> None:
    foreign = _id("vol")
    ceph_cluster.rbd("create", "--size", "8", f"{ceph_cluster.pool}/{foreign}")
    with pytest.raises(BackendError, match="not ebsemu's"):
        asyncio.run(storage.delete(foreign))
    assert foreign in ceph_cluster.images()


def test_free_bytes_is_unknown_without_a_ceph_mgr(storage: RbdStorage) -> None:
    # The test cluster runs no ceph-mgr, so ceph df has no pool statistics.
    with pytest.raises(BackendError, match="ceph-mgr"):
        storage.free_bytes()


def test_freeze_then_open_view_gives_the_bytes_written_then(
    storage: RbdStorage, ceph_cluster: CephCluster
) -> None:
    volume, view = _id("vol"), _id("snap")
    rng = random.Random(1)
    asyncio.run(storage.create(volume, 32 * MIB))
    written = _random_blocks(rng, [0, 3, 17, 63])
    _write(ceph_cluster, volume, written)
    asyncio.run(storage.freeze(volume, view))
    _write(ceph_cluster, volume, _random_blocks(rng, [3, 40]))  # after the freeze: not in the view
    assert view in asyncio.run(storage.list_views())
    source = storage.open_view(view)
    assert source.base_view_id is None
    assert dict(_view_blocks(source)) == written
    asyncio.run(storage.drop_view(view))
    asyncio.run(storage.drop_view(view))
    assert view not in asyncio.run(storage.list_views())


def test_second_view_reads_only_the_objects_changed_since_the_kept_one(
    storage: RbdStorage, ceph_cluster: CephCluster
) -> None:
    volume, first, second = _id("vol"), _id("snap"), _id("snap")
    size = 128 * MIB
    blocks = size // BLOCK_SIZE
    rng = random.Random(2)
    asyncio.run(storage.create(volume, size))
    everything = _random_blocks(rng, list(range(blocks)))
    asyncio.run(asyncio.to_thread(storage.write_blocks, volume, everything.items()))
    asyncio.run(storage.freeze(volume, first))
    whole = storage.open_view(first)
    assert dict(_view_blocks(whole)) == everything
    assert whole.stats.data_bytes == size
    asyncio.run(storage.keep_view(first))
    assert first not in asyncio.run(storage.list_views())  # kept as a base, no pending view

    # 1% of the blocks change (one of them to zeros), then the second view
    changed_indexes = sorted(rng.sample(range(blocks), blocks // 100))
    changed = _random_blocks(rng, changed_indexes)
    changed[changed_indexes[0]] = ZERO
    _write(ceph_cluster, volume, changed)
    asyncio.run(storage.freeze(volume, second))
    source = storage.open_view(second)
    assert isinstance(source, ChangedBlocksSource)
    assert source.base_view_id == first
    try:
        delta = dict(source.changed_blocks())
    finally:
        source.close()
    changed_objects = {i * BLOCK_SIZE // OBJECT for i in changed_indexes}
    assert source.stats.data_extents == len(changed_objects)
    assert source.stats.data_bytes == len(changed_objects) * OBJECT  # not the 128 MiB
    for index, data in changed.items():
        assert delta[index] == data
    for index, data in delta.items():  # the rest of each changed object, as it was
        assert data == changed.get(index, everything[index])

    asyncio.run(storage.keep_view(second))  # replaces the first as the base
    assert list(ceph_cluster.snapshots(volume)) == [f"{second}.base"]


class StreamSpy(LocalRunner):
    """A local runner noting which commands were streamed and which returned whole."""

    def __init__(self) -> None:
        super().__init__()
        self.streamed: list[str] = []
        self.whole: list[str] = []

    def read_stream(
        self, argv: Sequence[str], *, timeout: float, secrets: Sequence[str] = ()
    ) -> AbstractContextManager[Callable[[int], bytes]]:
        self.streamed.append(" ".join(argv))
        return super().read_stream(argv, timeout=timeout, secrets=secrets)

    async def run(self, argv: Sequence[str], **kwargs: Any) -> CommandResult:
        self.whole.append(" ".join(argv))
        return await super().run(argv, **kwargs)


def test_views_are_read_from_a_streamed_export_diff_never_held_whole(
    ceph_cluster: CephCluster,
) -> None:
    runner = StreamSpy()
    storage = _storage(ceph_cluster, runner)
    volume, first, second = _id("vol"), _id("snap"), _id("snap")
    rng = random.Random(7)
    asyncio.run(storage.create(volume, 32 * MIB))
    written = _random_blocks(rng, [0, 1, 40])
    _write(ceph_cluster, volume, written)
    asyncio.run(storage.freeze(volume, first))
    assert dict(_view_blocks(storage.open_view(first))) == written
    asyncio.run(storage.keep_view(first))
    later = _random_blocks(rng, [8])
    _write(ceph_cluster, volume, later)
    asyncio.run(storage.freeze(volume, second))
    source = storage.open_view(second)
    try:
        assert dict(source.changed_blocks())[8] == later[8]
    finally:
        source.close()
    assert [c for c in runner.streamed if " export-diff " in c] == runner.streamed
    assert len(runner.streamed) == 2 and "--from-snap" in runner.streamed[1]
    assert not [c for c in runner.whole if " export-diff " in c]
    asyncio.run(storage.drop_view(second))
    asyncio.run(storage.delete(volume))


def test_a_base_replaced_while_a_view_still_diffs_against_it_goes_after_that_read(
    storage: RbdStorage, ceph_cluster: CephCluster
) -> None:
    """Snapshots of one volume captured out of order: the third is kept (replacing the first
    as the volume's base) while the second, which diffs against the first, is still read."""
    volume, first, second, third = _id("vol"), _id("snap"), _id("snap"), _id("snap")
    rng = random.Random(9)
    asyncio.run(storage.create(volume, 16 * MIB))
    _write(ceph_cluster, volume, _random_blocks(rng, [1]))
    asyncio.run(storage.freeze(volume, first))
    asyncio.run(storage.keep_view(first))
    changed = _random_blocks(rng, [2])
    _write(ceph_cluster, volume, changed)
    asyncio.run(storage.freeze(volume, second))
    asyncio.run(storage.freeze(volume, third))
    slow = storage.open_view(second)  # opened: it diffs against the first's base
    asyncio.run(storage.keep_view(third))
    try:
        assert slow.base_view_id == first
        assert dict(slow.changed_blocks())[2] == changed[2]
    finally:
        slow.close()  # now the first's base goes
    assert sorted(ceph_cluster.snapshots(volume)) == sorted([second, f"{third}.base"])
    asyncio.run(storage.keep_view(second))  # older than the base kept: removed
    asyncio.run(storage.delete(volume))


class HoldsAListingsAnswer(LocalRunner):
    """The real rbd commands; once armed, the next long listing's answer is handed back only
    when ``go`` is set (a busy pool: what it lists may have changed by then)."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.held = asyncio.Event()
        self.go = asyncio.Event()

    async def run(self, argv: Sequence[str], **kwargs: Any) -> CommandResult:
        result = await super().run(argv, **kwargs)
        if self.armed and "--long" in argv:
            self.armed = False
            self.held.set()
            await self.go.wait()
        return result


def test_a_view_kept_while_the_next_is_opened_leaves_that_one_its_base(
    ceph_cluster: CephCluster,
) -> None:
    """The second view is being opened (its listing names the first's base) when the third is
    kept, which replaces that base: the base stays until the second view's read ends."""
    runner = HoldsAListingsAnswer()
    backend = _storage(ceph_cluster, runner)
    volume, first, second, third = _id("vol"), _id("snap"), _id("snap"), _id("snap")
    rng = random.Random(12)
    changed = _random_blocks(rng, [5])

    async def scenario() -> dict[int, bytes]:
        await backend.create(volume, 16 * MIB)
        await backend.freeze(volume, first)
        await backend.keep_view(first)
        await asyncio.to_thread(_write, ceph_cluster, volume, changed)
        await backend.freeze(volume, second)
        await backend.freeze(volume, third)
        runner.armed = True
        opening = asyncio.create_task(asyncio.to_thread(backend.open_view, second))
        await runner.held.wait()
        keeping = asyncio.create_task(backend.keep_view(third))
        await asyncio.sleep(2.0)  # time to remove the first's base, were it not held back
        runner.go.set()
        view = await opening
        try:
            assert view.base_view_id == first
            return await asyncio.to_thread(lambda: dict(view.changed_blocks()))
        finally:
            await keeping
            await asyncio.to_thread(view.close)  # now the first's base goes

    assert asyncio.run(scenario())[5] == changed[5]
    assert sorted(ceph_cluster.snapshots(volume)) == sorted([second, f"{third}.base"])
    asyncio.run(backend.delete(volume))


def test_restore_through_import_diff_keeps_holes_and_bytes(
    storage: RbdStorage, ceph_cluster: CephCluster
) -> None:
    source_volume, view, target = _id("vol"), _id("snap"), _id("vol")
    size = 64 * MIB
    rng = random.Random(3)
    written = _random_blocks(rng, [1, 2, 3, 30, 100, 127])
    asyncio.run(storage.create(source_volume, size))
    _write(ceph_cluster, source_volume, written)
    asyncio.run(storage.freeze(source_volume, view))
    blocks = list(_view_blocks(storage.open_view(view)))
    asyncio.run(storage.create(target, size))
    asyncio.run(asyncio.to_thread(storage.write_blocks, target, [*blocks, (50, ZERO)]))

    extents = json.loads(ceph_cluster.rbd("diff", "--format", "json", f"rbd/{target}"))
    covered = {
        i for e in extents for i in range(e["offset"] // BLOCK_SIZE,
                                          -(-(e["offset"] + e["length"]) // BLOCK_SIZE))
    }  # fmt: skip
    # Only the objects written hold data (the zero block 50 and the rest stay unallocated);
    # memstore reports an object's extent from its start, so compare objects, not blocks.
    per_object = OBJECT // BLOCK_SIZE
    assert {i // per_object for i in covered} == {i // per_object for i in written}
    assert max(covered) == max(written) and 50 not in covered
    assert _read_image(ceph_cluster, target, size) == _read_image(
        ceph_cluster, f"{source_volume}@{view}", size
    )


def test_clone_from_a_kept_view_is_byte_identical_and_survives_the_snapshot(
    storage: RbdStorage, ceph_cluster: CephCluster
) -> None:
    volume, view, clone = _id("vol"), _id("snap"), _id("vol")
    rng = random.Random(4)
    written = _random_blocks(rng, [0, 9, 33])
    asyncio.run(storage.create(volume, 32 * MIB))
    _write(ceph_cluster, volume, written)
    asyncio.run(storage.freeze(volume, view))
    assert not asyncio.run(storage.clone_from_view(view, clone, 64 * MIB))  # not kept yet
    asyncio.run(storage.keep_view(view))
    assert asyncio.run(storage.clone_from_view(view, clone, 64 * MIB))
    info = json.loads(ceph_cluster.rbd("info", "--format", "json", f"rbd/{clone}"))
    assert info["parent"]["image"] == volume and info["size"] == 64 * MIB
    expected = _read_image(ceph_cluster, f"{volume}@{view}.base", 32 * MIB)
    assert _read_image(ceph_cluster, clone, 64 * MIB) == expected + bytes(32 * MIB)

    # the snapshot and its volume are deleted: the clone keeps them until it goes itself
    asyncio.run(storage.drop_view(view))
    asyncio.run(storage.delete(volume))
    assert volume not in asyncio.run(storage.list_volumes())
    assert f"deleted.{volume}" in ceph_cluster.images()
    assert _read_image(ceph_cluster, clone, 64 * MIB) == expected + bytes(32 * MIB)
    asyncio.run(storage.delete(clone))
    assert f"deleted.{volume}" not in ceph_cluster.images()


def test_clones_of_one_view_made_while_its_volume_is_deleted_all_succeed(
    storage: RbdStorage, ceph_cluster: CephCluster
) -> None:
    """Two restores of one snapshot at once, while its source volume is being deleted: each
    clone finds the base protected by the other or protects it, and the delete keeps it."""
    volume, view, clones = _id("vol"), _id("snap"), [_id("vol"), _id("vol")]
    written = _random_blocks(random.Random(6), [2, 17])
    asyncio.run(storage.create(volume, 32 * MIB))
    _write(ceph_cluster, volume, written)
    asyncio.run(storage.freeze(volume, view))
    asyncio.run(storage.keep_view(view))
    expected = _read_image(ceph_cluster, f"{volume}@{view}.base", 32 * MIB)

    async def restore_twice_and_delete() -> tuple[bool, bool, None]:
        return await asyncio.gather(
            storage.clone_from_view(view, clones[0], 32 * MIB),
            storage.clone_from_view(view, clones[1], 64 * MIB),
            storage.delete(volume),
        )

    first, second, _ = asyncio.run(restore_twice_and_delete())
    assert first and second
    assert volume not in asyncio.run(storage.list_volumes())
    assert _read_image(ceph_cluster, clones[0], 32 * MIB) == expected
    assert _read_image(ceph_cluster, clones[1], 64 * MIB) == expected + bytes(32 * MIB)
    for clone in clones:
        asyncio.run(storage.delete(clone))
    assert f"deleted.{volume}" not in ceph_cluster.images()


def test_a_snapshot_dropped_while_clones_need_it_goes_with_its_last_clone(
    storage: RbdStorage, ceph_cluster: CephCluster
) -> None:
    """The volume lives on; its snapshot is deleted while a volume restored from it (a clone)
    exists. The RBD snapshot stays for the clone, and goes when the clone is deleted."""
    volume, view, clone = _id("vol"), _id("snap"), _id("vol")
    asyncio.run(storage.create(volume, 16 * MIB))
    _write(ceph_cluster, volume, _random_blocks(random.Random(8), [3]))
    asyncio.run(storage.freeze(volume, view))
    asyncio.run(storage.keep_view(view))
    assert asyncio.run(storage.clone_from_view(view, clone, 16 * MIB))

    def snaps() -> list[str]:
        return list(ceph_cluster.snapshots(volume))

    asyncio.run(storage.drop_view(view))
    assert snaps() == [f"{view}.gone"]  # still the clone's parent, no view's any more
    listing = json.loads(ceph_cluster.rbd("ls", "--long", "--format", "json", "rbd"))
    (child,) = [row for row in listing if row["image"] == clone]
    assert (child["parent"]["image"], child["parent"]["snapshot"]) == (volume, f"{view}.gone")
    assert not asyncio.run(storage.clone_from_view(view, _id("vol"), 16 * MIB))
    asyncio.run(storage.delete(clone))
    assert snaps() == []
    asyncio.run(storage.delete(volume))
    assert volume not in ceph_cluster.images()


class HoldsTheFirstRemove(LocalRunner):
    """The real rbd commands, but the first image removal (``rbd trash rm``, or ``rbd rm``)
    waits until ``go`` is set: an image whose removal takes long (many objects, a busy
    cluster). Counts the long listings that fail meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.go = asyncio.Event()
        self.held = asyncio.Event()
        self.failed_listings = 0

    async def run(self, argv: Sequence[str], **kwargs: Any) -> CommandResult:
        if "rm" in argv and "snap" not in argv and not self.held.is_set():
            self.held.set()
            await self.go.wait()
        result = await super().run(argv, **{**kwargs, "check": False})
        if "--long" in argv and result.returncode != 0:
            self.failed_listings += 1
        if kwargs.get("check", True) and result.returncode != 0:
            raise CommandError(argv, result.returncode, result.stderr.decode())
        return result


def test_a_slow_delete_holds_back_no_call_on_another_volume(ceph_cluster: CephCluster) -> None:
    """While one volume's image is being removed, a clone of another volume's view, a view
    kept and a view dropped go ahead: each waits only for calls on its own volume."""
    slow, volume, clone = _id("vol"), _id("vol"), _id("vol")
    first, second = _id("snap"), _id("snap")
    runner = HoldsTheFirstRemove()
    backend = _storage(ceph_cluster, runner)

    async def scenario() -> None:
        await backend.create(slow, 16 * MIB)
        await backend.create(volume, 16 * MIB)
        await backend.freeze(volume, first)
        await backend.keep_view(first)
        deleting = asyncio.create_task(backend.delete(slow))
        async with asyncio.timeout(COMMAND_TIMEOUT):
            await runner.held.wait()
            assert await backend.clone_from_view(first, clone, 16 * MIB)
            await backend.freeze(volume, second)
            await backend.keep_view(second)
            await backend.drop_view(first)
        assert not deleting.done()
        runner.go.set()
        await deleting
        for gone in (clone, volume):
            await backend.delete(gone)

    asyncio.run(scenario())
    assert not {slow, volume, clone} & set(ceph_cluster.images())


def test_a_removal_cut_short_in_the_trash_is_finished_at_the_next_start(
    storage: RbdStorage, ceph_cluster: CephCluster
) -> None:
    """The process died between `rbd trash mv` and `rbd trash rm`: the next check_setup removes
    its own image from the trash, and leaves a foreign one there."""
    volume, foreign = _id("vol"), f"foreign-{os.urandom(4).hex()}"
    asyncio.run(storage.create(volume, 16 * MIB))
    ceph_cluster.rbd("create", "--size", "16", f"{ceph_cluster.pool}/{foreign}")
    for image in (volume, foreign):
        ceph_cluster.rbd("trash", "mv", f"{ceph_cluster.pool}/{image}")

    def trash() -> dict[str, str]:  # name: id
        listing = ceph_cluster.rbd("trash", "ls", "--format", "json", ceph_cluster.pool)
        return {entry["name"]: entry["id"] for entry in json.loads(listing)}

    assert {volume, foreign} <= trash().keys()
    asyncio.run(_storage(ceph_cluster).check_setup())
    left = trash()
    assert volume not in left and foreign in left
    ceph_cluster.rbd("trash", "rm", "--pool", ceph_cluster.pool, "--image-id", left[foreign])


def test_listings_go_on_while_a_large_image_is_removed(ceph_cluster: CephCluster) -> None:
    """Removing an empty 64 TiB image takes seconds (rbd visits every object). The backend
    removes it through the trash, so its name goes at once: `rbd ls --long`, which opens every
    image it lists, does not fail meanwhile (with `rbd rm` it fails until the removal ends)."""
    runner = HoldsTheFirstRemove()
    runner.go.set()
    backend = _storage(ceph_cluster, runner)
    large, other = _id("vol"), _id("vol")

    async def scenario() -> None:
        await backend.create(large, 64 << 40)
        await backend.create(other, 16 * MIB)
        deleting = asyncio.create_task(backend.delete(large))
        await runner.held.wait()
        await asyncio.sleep(0.5)
        for _ in range(3):
            assert other in await backend.list_volumes()
        assert not deleting.done(), "the removal ended before the listings: nothing was shown"
        await deleting
        await backend.delete(other)

    asyncio.run(scenario())
    assert runner.failed_listings == 0
    assert not {large, other} & set(ceph_cluster.images())


class RemovesTheBaseFirst(LocalRunner):
    """Another instance sharing the pool removes the base between a listing and its protect."""

    def __init__(self, cluster: CephCluster) -> None:
        super().__init__()
        self.cluster = cluster

    async def run(self, argv: Sequence[str], **kwargs: Any) -> CommandResult:
        if "protect" in argv:
            self.cluster.rbd("snap", "rm", argv[-1])
        return await super().run(argv, **kwargs)


def test_a_base_removed_by_another_instance_while_cloned_leaves_a_block_restore(
    storage: RbdStorage, ceph_cluster: CephCluster
) -> None:
    volume, view, clone = _id("vol"), _id("snap"), _id("vol")
    asyncio.run(storage.create(volume, 16 * MIB))
    asyncio.run(storage.freeze(volume, view))
    asyncio.run(storage.keep_view(view))
    racing = _storage(ceph_cluster, RemovesTheBaseFirst(ceph_cluster))
    assert not asyncio.run(racing.clone_from_view(view, clone, 16 * MIB))
    assert clone not in ceph_cluster.images()
    asyncio.run(storage.delete(volume))


def test_volume_deleted_with_a_pending_view_stays_until_the_view_is_dropped(
    storage: RbdStorage, ceph_cluster: CephCluster
) -> None:
    volume, view = _id("vol"), _id("snap")
    written = _random_blocks(random.Random(5), [4])
    asyncio.run(storage.create(volume, 16 * MIB))
    _write(ceph_cluster, volume, written)
    asyncio.run(storage.freeze(volume, view))
    asyncio.run(storage.delete(volume))
    assert volume not in asyncio.run(storage.list_volumes())
    assert dict(_view_blocks(storage.open_view(view))) == written  # still readable
    asyncio.run(storage.drop_view(view))
    assert f"deleted.{volume}" not in ceph_cluster.images()


def test_a_view_captured_after_its_volume_was_deleted_is_not_kept(
    storage: RbdStorage, ceph_cluster: CephCluster
) -> None:
    volume, view = _id("vol"), _id("snap")
    asyncio.run(storage.create(volume, 16 * MIB))
    asyncio.run(storage.freeze(volume, view))
    asyncio.run(storage.delete(volume))
    assert f"deleted.{volume}" in ceph_cluster.images()
    asyncio.run(storage.keep_view(view))  # no next view of a deleted volume: nothing to keep
    assert f"deleted.{volume}" not in ceph_cluster.images()


def test_attach_source_is_the_rbd_image(storage: RbdStorage, ceph_cluster: CephCluster) -> None:
    volume = _id("vol")
    assert storage.disk_source(volume) == RbdSource(
        ceph_cluster.pool, volume, str(ceph_cluster.conf), "admin"
    )
    assert storage.device_path(volume) == f"{ceph_cluster.pool}/{volume}"


def test_check_setup_names_a_pool_that_does_not_exist(ceph_cluster: CephCluster) -> None:
    """At once: rbd's ENOENT for a missing pool is not taken for an image being removed."""
    runner = HoldsTheFirstRemove()
    backend = RbdStorage.from_options(
        {"pool": "no-such-pool", "conf": str(ceph_cluster.conf), "command_timeout": "20"},
        runner=runner,
        templates=load_templates(),
    )
    with pytest.raises(SetupError, match="RBD pool no-such-pool is not usable"):
        asyncio.run(backend.check_setup())
    assert runner.failed_listings == 1


def test_unknown_options_are_refused() -> None:
    with pytest.raises(SetupError, match="unknown option"):
        RbdStorage.from_options(
            {"pool": "rbd", "keyring": "/k"}, runner=LocalRunner(), templates=load_templates()
        )


def test_a_base_dropped_while_the_next_view_reads_from_it_goes_when_that_read_ends(
    storage: RbdStorage, ceph_cluster: CephCluster
) -> None:
    volume, first, second = _id("vol"), _id("snap"), _id("snap")
    rng = random.Random(6)
    asyncio.run(storage.create(volume, 16 * MIB))
    _write(ceph_cluster, volume, _random_blocks(rng, [0, 20]))
    asyncio.run(storage.freeze(volume, first))
    asyncio.run(storage.keep_view(first))
    changed = _random_blocks(rng, [20])
    _write(ceph_cluster, volume, changed)
    asyncio.run(storage.freeze(volume, second))
    source = storage.open_view(second)
    assert source.base_view_id == first
    asyncio.run(storage.drop_view(first))  # its snapshot is deleted meanwhile
    assert f"{first}.base" in ceph_cluster.snapshots(volume)  # still there for the read
    delta = dict(source.changed_blocks())
    source.close()
    assert delta[20] == changed[20]
    snaps = ceph_cluster.snapshots(volume)
    assert f"{first}.base" not in snaps and second in snaps
