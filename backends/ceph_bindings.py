"""The librados Python bindings (Debian's python3-rados), loaded by path.

The bindings are a compiled module installed for the system Python 3.11 under
``/usr/lib/python3/dist-packages``; our venv runs the same Python, so the one extension module
imports cleanly on its own. Only that file is loaded (``importlib`` by location): putting all of
dist-packages on ``sys.path`` would let Debian's copies of other packages shadow the venv's.

The bindings ship no type stubs; ``RadosModule``/``Cluster``/``IoCtx`` type the small surface
the block store uses.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, cast

from backends.errors import SetupError

DIST_PACKAGES = Path("/usr/lib/python3/dist-packages")
MODULE_FILE = "rados.cpython-311-x86_64-linux-gnu.so"
INSTALL_HINT = "apt-get install python3-rados"


class RadosObject(Protocol):
    key: str
    nspace: str


class Completion(Protocol):
    def get_return_value(self) -> int: ...


class IoCtx(Protocol):
    def write_full(self, key: str, data: bytes) -> int: ...
    def read(self, key: str, length: int = ..., offset: int = ...) -> bytes: ...
    def stat(self, key: str) -> tuple[int, Any]: ...
    def aio_stat(
        self, object_name: str, oncomplete: Callable[[Completion, int | None, Any], None]
    ) -> Completion: ...
    def remove_object(self, key: str) -> bool: ...
    def list_objects(self) -> Iterator[RadosObject]: ...
    def set_namespace(self, nspace: str) -> None: ...
    def close(self) -> None: ...


class Cluster(Protocol):
    def connect(self, timeout: int = ...) -> None: ...
    def pool_exists(self, pool_name: str) -> bool: ...
    def open_ioctx(self, ioctx_name: str) -> IoCtx: ...
    def shutdown(self) -> None: ...


class RadosModule(Protocol):
    Error: type[Exception]
    ObjectNotFound: type[Exception]
    NoSpace: type[Exception]
    PermissionError: type[Exception]

    def Rados(
        self, *, conffile: str, rados_id: str | None = ..., conf: dict[str, str] | None = ...
    ) -> Cluster: ...


@functools.cache
def load_rados(directory: Path = DIST_PACKAGES) -> RadosModule:
    """The ``rados`` module; SetupError naming the package to install when it is absent or
    does not load."""
    path = directory / MODULE_FILE
    if not path.is_file():
        raise SetupError(f"the librados Python bindings ({path}) are missing: {INSTALL_HINT}")
    spec = importlib.util.spec_from_file_location("rados", path)
    if spec is None or spec.loader is None:
        raise SetupError(f"cannot load {path}: {INSTALL_HINT}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError as exc:
        raise SetupError(f"cannot load {path} ({exc}): {INSTALL_HINT}") from exc
    return cast(RadosModule, module)
