"""Snapshot blocks as Ceph RADOS objects, so every API instance and storage host that reaches
the cluster sees the same snapshots.

One object per 512 KiB block, named by the block's SHA-256 in hex, in one pool and namespace
(default ``ebsemu-blocks``; the namespace keeps blocks apart from RBD images sharing the pool).
A block is written with one full-object write, which RADOS applies atomically: a reader sees
the whole block or no object, never half of one, so there are no temp objects to clean up.

It talks to the cluster through librados (Debian's python3-rados, see ``ceph_bindings``), not
the ``rados`` CLI: a process per 512 KiB block (fork, exec, connect to the monitors, fetch the
maps) costs tens of milliseconds, more than the write itself, and a snapshot has thousands of
blocks. One ``Rados`` connection and one I/O context serve the store for its lifetime.
librados is thread-safe and the bindings release the GIL around each call, so the data path's
worker threads share that I/O context; its settings (pool, namespace) are fixed when it is
opened and never changed afterwards, the one thing librados asks callers to serialise.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

from backends.base import BlockBytes
from backends.ceph_bindings import Cluster, Completion, IoCtx, RadosModule, load_rados
from backends.errors import (
    BackendError,
    CapacityError,
    CorruptBlockError,
    MissingBlockError,
    SetupError,
)
from ebsemu.model import BLOCK_SIZE

logger = logging.getLogger(__name__)

DIGEST_BYTES = 32
DEFAULT_NAMESPACE = "ebsemu-blocks"
CONNECT_TIMEOUT_SECONDS = 30
OP_TIMEOUT_SECONDS = 60  # a monitor or OSD operation that takes longer fails (no hang)
PROBE_PREFIX = ".ebsemu-probe-"
STAT_WINDOW = 64  # asynchronous stats in flight while summing the blocks' sizes
# Read past a block's size so an object that grew (bytes appended) is read whole and fails
# the hash check instead of passing on its first BLOCK_SIZE bytes.
_READ_LENGTH = BLOCK_SIZE + 1
_BLOCK_NAME = re.compile(r"[0-9a-f]{64}")


class RadosBlockStore:
    """Snapshot blocks as RADOS objects in ``pool``/``namespace``, verified by SHA-256."""

    def __init__(
        self,
        conf: Path,
        pool: str,
        namespace: str = DEFAULT_NAMESPACE,
        user: str | None = None,
        connect_timeout: int = CONNECT_TIMEOUT_SECONDS,
    ) -> None:
        self._conf = conf
        self._connect_timeout = connect_timeout
        self._pool = pool
        self._namespace = namespace
        self._user = user
        self._lock = threading.Lock()
        self._cluster: Cluster | None = None
        self._ioctx: IoCtx | None = None

    def __repr__(self) -> str:
        return f"RadosBlockStore({self._where})"

    @property
    def _where(self) -> str:
        return f"pool {self._pool} namespace {self._namespace}"

    @staticmethod
    def _key(digest: bytes) -> str:
        if len(digest) != DIGEST_BYTES:
            raise ValueError(f"a SHA-256 digest has {DIGEST_BYTES} bytes, not {len(digest)}")
        return digest.hex()

    def _open(self) -> tuple[RadosModule, IoCtx]:
        """The bindings and the store's I/O context, connecting on first use."""
        rados = load_rados()
        ready = self._ioctx
        if ready is not None:
            return rados, ready
        with self._lock:
            if self._ioctx is not None:
                return rados, self._ioctx
            cluster = rados.Rados(
                conffile=str(self._conf),
                rados_id=self._user,
                conf={
                    "rados_mon_op_timeout": str(OP_TIMEOUT_SECONDS),
                    "rados_osd_op_timeout": str(OP_TIMEOUT_SECONDS),
                    "client_mount_timeout": str(self._connect_timeout),
                },
            )
            try:
                cluster.connect(timeout=self._connect_timeout)
            except rados.Error as exc:
                raise SetupError(
                    f"cannot connect to the Ceph cluster of {self._conf}"
                    f" as {self._user or 'the default user'}: {exc}"
                ) from exc
            try:
                if not cluster.pool_exists(self._pool):
                    raise SetupError(
                        f"Ceph pool {self._pool} does not exist"
                        f" (create it: ceph osd pool create {self._pool})"
                    )
                ioctx = cluster.open_ioctx(self._pool)
                ioctx.set_namespace(self._namespace)
            except BaseException:
                cluster.shutdown()
                raise
            self._cluster, self._ioctx = cluster, ioctx
            return rados, ioctx

    def close(self) -> None:
        """Close the I/O context and the cluster connection (a later call reconnects)."""
        with self._lock:
            if self._ioctx is not None:
                self._ioctx.close()
            if self._cluster is not None:
                self._cluster.shutdown()
            self._cluster = self._ioctx = None

    def check_setup(self) -> None:
        """Connect, find the pool and write, read back and remove a probe object in the
        namespace; SetupError saying what is wrong."""
        rados, ioctx = self._open()
        probe = f"{PROBE_PREFIX}{secrets.token_hex(8)}"
        payload = secrets.token_bytes(64)
        try:
            ioctx.write_full(probe, payload)
            read = ioctx.read(probe, len(payload) + 1, 0)
            ioctx.remove_object(probe)
        except rados.Error as exc:
            raise SetupError(f"cannot write a probe object to {self._where}: {exc}") from exc
        if read != payload:
            raise SetupError(f"a probe object written to {self._where} read back different")

    def put(self, digest: bytes, data: BlockBytes) -> bool:
        """Store ``data`` under ``digest`` (trusted to be its SHA-256; ``get`` verifies).
        Returns False, writing nothing, when the block is already stored."""
        key = self._key(digest)
        if self.contains(digest):
            return False
        rados, ioctx = self._open()
        try:
            ioctx.write_full(key, bytes(data))
        except rados.NoSpace as exc:
            raise CapacityError(f"no space left for block {key} in {self._where}") from exc
        except rados.Error as exc:
            raise BackendError(f"cannot store block {key} in {self._where}: {exc}") from exc
        return True

    def get(self, digest: bytes) -> bytes:
        key = self._key(digest)
        rados, ioctx = self._open()
        try:
            data = ioctx.read(key, _READ_LENGTH, 0)
        except rados.ObjectNotFound:
            raise MissingBlockError(f"block {key} is not in {self._where}") from None
        except rados.Error as exc:
            raise BackendError(f"cannot read block {key} from {self._where}: {exc}") from exc
        actual = hashlib.sha256(data).digest()
        if actual != digest:
            raise CorruptBlockError(
                f"block {key} in {self._where} is corrupt: its bytes hash to {actual.hex()}"
            )
        return data

    def contains(self, digest: bytes) -> bool:
        key = self._key(digest)
        rados, ioctx = self._open()
        try:
            ioctx.stat(key)
        except rados.ObjectNotFound:
            return False
        except rados.Error as exc:
            raise BackendError(f"cannot stat block {key} in {self._where}: {exc}") from exc
        return True

    def delete(self, digest: bytes) -> None:
        key = self._key(digest)
        rados, ioctx = self._open()
        try:
            ioctx.remove_object(key)
        except rados.ObjectNotFound:
            pass
        except rados.Error as exc:
            raise BackendError(f"cannot delete block {key} from {self._where}: {exc}") from exc

    def flush(self) -> None:
        """Nothing to do: a RADOS write returns only once every replica of the placement
        group has committed it (the OSDs' journals/BlueStore WAL are on stable storage), so a
        block ``put`` returned is already durable."""

    def iter_digests(self) -> Iterator[bytes]:
        """Every block in the namespace, by listing it (one pass over the pool's placement
        groups; objects of other namespaces and probe leftovers are skipped)."""
        rados, ioctx = self._open()
        try:
            for obj in ioctx.list_objects():
                if _BLOCK_NAME.fullmatch(obj.key):
                    yield bytes.fromhex(obj.key)
        except rados.Error as exc:
            raise BackendError(f"cannot list the blocks in {self._where}: {exc}") from exc

    def stored_bytes(self) -> int:
        """Sum of the blocks' sizes: a listing plus a stat per block, O(blocks) round trips,
        pipelined (up to STAT_WINDOW asynchronous stats in flight). The pool statistics would
        be one call but count the whole pool (every namespace, the RBD images sharing it) and
        lag behind writes by the OSDs' reporting interval."""
        rados, ioctx = self._open()
        window = threading.BoundedSemaphore(STAT_WINDOW)
        sizes: list[int] = []
        failures: list[str] = []

        def done(completion: Completion, size: int | None, _mtime: object) -> None:
            try:
                code = completion.get_return_value()
                if code >= 0 and size is not None:
                    sizes.append(size)
                elif code != -errno.ENOENT:  # ENOENT: deleted since it was listed
                    failures.append(os.strerror(-code))
            finally:
                window.release()

        try:
            for digest in self.iter_digests():
                window.acquire()
                try:
                    ioctx.aio_stat(digest.hex(), done)
                except BaseException as exc:
                    window.release()
                    if isinstance(exc, rados.Error):
                        raise BackendError(f"cannot stat blocks in {self._where}: {exc}") from exc
                    raise
        finally:
            for _ in range(STAT_WINDOW):  # every stat in flight has called back
                window.acquire()
        if failures:
            raise BackendError(f"cannot stat blocks in {self._where}: {failures[0]}")
        return sum(sizes)

    def remove_temp_files(self) -> int:
        """Nothing can be left half-written (full-object writes are atomic): always 0."""
        return 0
