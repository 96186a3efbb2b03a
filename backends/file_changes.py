"""Changed blocks between two reflinked views of a file-backend volume, from their extent maps.

On a filesystem with reflink (XFS reflink=1, btrfs) a view is a clone of the volume's segment
files: it shares the volume's extents, and a later write to the volume goes to new extents
(copy on write), never into a shared one. Two frozen views of the same volume therefore hold
the same bytes wherever their files map to the same physical ranges; only the blocks whose
mapping differs need reading. Per 512 KiB block the two maps are compared piece by piece (a
piece: offset in the block, physical address, length, adjacent pieces merged, so the same
ranges split into different extents compare equal):

- the same pieces in both files (holes in both included): unchanged;
- anything else: changed, and read from the new view (zeros where it now has a hole);
- a piece whose extent is flagged unknown, delayed, encoded, encrypted, unaligned, inline or
  tail-packed (``sparse.FIEMAP_EXTENT_UNSURE``) makes its block changed whatever the other
  file maps there.

The answer is conservative: a block rewritten with the same bytes is reported changed (it
costs a read, never correctness). Past the end of the base (the volume was extended since),
the base counts as holes: the new view's data blocks there are changed, its holes are not
(the base snapshot's manifest has no rows there either).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from backends import sparse
from backends.errors import BackendError
from backends.file import FileView, Layout, _read_layout, segment_name
from backends.file_base import FileBases
from ebsemu.model import BLOCK_SIZE, ZERO_BLOCK

logger = logging.getLogger(__name__)

UNSURE = -1  # the physical address of a piece whose extent cannot be trusted

Piece = tuple[int, int, int]  # (offset in the block, physical address or UNSURE, length)
BlockMap = tuple[int, tuple[Piece, ...]]  # (block index in the file, its pieces)


def block_maps(extents: Iterable[sparse.Extent], size: int) -> Iterator[BlockMap]:
    """For each block of the first ``size`` bytes that an extent touches, in order: its
    pieces, adjacent ones merged where they continue each other on the device too."""
    current = -1
    pieces: list[Piece] = []
    for extent in extents:
        position = extent.logical
        end = min(extent.logical + extent.length, size)
        while position < end:
            block = position // BLOCK_SIZE
            stop = min(end, (block + 1) * BLOCK_SIZE)
            physical = UNSURE if extent.unsure else extent.physical + position - extent.logical
            piece = (position - block * BLOCK_SIZE, physical, stop - position)
            if block != current:
                if pieces:
                    yield current, tuple(pieces)
                current, pieces = block, [piece]
            elif _continues(pieces[-1], piece):
                offset, start, length = pieces[-1]
                pieces[-1] = (offset, start, length + piece[2])
            else:
                pieces.append(piece)
            position = stop
    if pieces:
        yield current, tuple(pieces)


def _continues(before: Piece, after: Piece) -> bool:
    return (
        before[1] != UNSURE
        and after[1] != UNSURE
        and before[0] + before[2] == after[0]
        and before[1] + before[2] == after[1]
    )


def changed_in(new: Iterable[BlockMap], base: Iterable[BlockMap]) -> Iterator[tuple[int, bool]]:
    """(block index, whether the new file has data there) of every block whose pieces differ
    between two block-map streams of the same file range, in index order."""
    new_it, base_it = iter(new), iter(base)
    new_next, base_next = next(new_it, None), next(base_it, None)
    while new_next is not None or base_next is not None:
        if base_next is None or (new_next is not None and new_next[0] < base_next[0]):
            assert new_next is not None
            yield new_next[0], True  # data where the base has a hole
            new_next = next(new_it, None)
        elif new_next is None or base_next[0] < new_next[0]:
            yield base_next[0], False  # a hole where the base has data
            base_next = next(base_it, None)
        else:
            pieces = new_next[1]
            if pieces != base_next[1] or any(p[1] == UNSURE for p in (*pieces, *base_next[1])):
                yield new_next[0], True
            new_next, base_next = next(new_it, None), next(base_it, None)


@dataclass
class ChangeStats:
    compared: bool = False  # changed_blocks was called
    changed: int = 0  # blocks reported changed
    read: int = 0  # of those, read from the view (the others are holes in it now)


class BaseFiles:
    """The segment files of a kept base view, opened for mapping (the files stay readable,
    and their extents allocated, until closed, even if the base is removed meanwhile)."""

    def __init__(self, view_id: str, directory: Path, layout: Layout) -> None:
        self.view_id = view_id
        self.layout = layout
        self.fds: list[int] = []
        try:
            for index in range(layout.segment_count):
                self.fds.append(os.open(directory / segment_name(index), os.O_RDONLY))
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        fds, self.fds = self.fds, []
        for fd in fds:
            os.close(fd)


class ChangedFileView(FileView):
    """A FileView that can also read only the blocks changed since a kept base view of the same
    volume (``ChangedBlocksSource``). It holds the base's files open until closed."""

    def __init__(self, directory: Path, layout: Layout, base: BaseFiles) -> None:
        if base.layout.segment_bytes != layout.segment_bytes:
            raise BackendError(
                f"base {base.view_id} of view {directory.name} is cut into other segments"
            )
        super().__init__(directory, layout)
        self._view_id = directory.name
        self._directory = directory
        self._new_layout = layout
        self._base: BaseFiles | None = base
        self._base_view_id = base.view_id
        self.stats = ChangeStats()

    @property
    def base_view_id(self) -> str | None:
        """The kept view whose capture this one's changes apply to."""
        return self._base_view_id

    def changed_blocks(self) -> Iterator[tuple[int, bytes]]:
        """(index, 512 KiB) of every block whose extents differ from the base's, in index
        order; a block that is now a hole comes as zeros."""
        if self._base is None:
            raise BackendError(f"view {self._view_id} is closed")
        base = self._base
        self.stats.compared = True
        layout = self._new_layout
        per_segment = layout.segment_bytes // BLOCK_SIZE
        fds = self._open_segments()
        try:
            for segment, fd in enumerate(fds):
                first = segment * per_segment
                for local, has_data in self._segment_changes(segment, fd, base):
                    self.stats.changed += 1
                    if not has_data:
                        yield first + local, ZERO_BLOCK
                        continue
                    data = os.pread(fd, BLOCK_SIZE, local * BLOCK_SIZE)
                    if len(data) != BLOCK_SIZE:
                        raise BackendError(f"segment {segment} is shorter than its recorded size")
                    self.stats.read += 1
                    yield first + local, data
        finally:
            for fd in fds:
                os.close(fd)

    def _segment_changes(
        self, segment: int, fd: int, base: BaseFiles
    ) -> Iterator[tuple[int, bool]]:
        size = self._new_layout.segment_size(segment)
        new = block_maps(sparse.physical_extents(fd, 0, size), size)
        if segment < base.layout.segment_count:
            base_size = min(base.layout.segment_size(segment), size)
            base_fd = base.fds[segment]
            old = block_maps(sparse.physical_extents(base_fd, 0, base_size), base_size)
        else:
            old = iter(())
        try:
            yield from changed_in(new, old)
        except OSError as exc:
            raise BackendError(f"cannot map the extents of view {self._view_id}: {exc}") from exc

    def _open_segments(self) -> Sequence[int]:
        fds: list[int] = []
        try:
            for index in range(self._new_layout.segment_count):
                fds.append(os.open(self._directory / segment_name(index), os.O_RDONLY))
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            raise BackendError(f"cannot open view {self._view_id}: {exc}") from exc
        return fds

    def close(self) -> None:
        base, self._base = self._base, None
        if base is not None:
            base.close()
        if base is not None and self.stats.compared:
            logger.info(
                "view %s: %d blocks changed since %s (%d read, %d now holes)",
                self._view_id,
                self.stats.changed,
                self._base_view_id,
                self.stats.read,
                self.stats.changed - self.stats.read,
            )
        super().close()


def open_view(directory: Path, layout: Layout, bases: FileBases) -> FileView:
    """Open the view, against its volume's kept base when there is one it can be compared
    with (a reflinked view, a base of the same segment size on a filesystem FIEMAP maps);
    otherwise as a plain FileView, read whole."""
    info = bases.view_info(directory)
    if info is None or not info.reflinked:
        return FileView(directory, layout)
    with bases.lock:
        base = bases.newest(info.volume_id, exclude=directory.name)
        files = None if base is None else _open_base(base.view_id, base.path, layout)
    if files is None:
        return FileView(directory, layout)
    try:
        return ChangedFileView(directory, layout, files)
    except BaseException:
        files.close()
        raise


def _open_base(view_id: str, directory: Path, layout: Layout) -> BaseFiles | None:
    try:
        base_layout = _read_layout(directory)
        if base_layout is None or base_layout.segment_bytes != layout.segment_bytes:
            return None
        files = BaseFiles(view_id, directory, base_layout)
    except (OSError, BackendError) as exc:
        logger.warning("base %s cannot be opened; the view is read whole: %s", view_id, exc)
        return None
    try:
        list(sparse.physical_extents(files.fds[0], 0, BLOCK_SIZE))
    except OSError as exc:
        files.close()
        logger.warning(
            "base %s cannot be mapped (FIEMAP: %s); the view is read whole", view_id, exc
        )
        return None
    return files
