"""Keep the C heap from giving block buffers back to the kernel between batches.

The data path holds a batch or two of 512 KiB blocks (``bytes`` read from a view or from the
block store) and frees them as it goes. glibc serves allocations that large with ``mmap`` and
trims the freed top of the heap back to the kernel, so every new block's pages are faulted in
afresh: reading a cached view cost three times the CPU of the copy itself. Below, blocks come
from the heap and up to ``TRIM_BYTES`` of freed heap stays mapped for the next batch.
"""

from __future__ import annotations

import ctypes
import functools
import logging

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_BYTES = 1024 * 1024  # a block (512 KiB) is served from the heap
TRIM_BYTES = 80 * 1024 * 1024  # two 32 MiB batches and some


@functools.cache
def keep_block_buffers() -> bool:
    """Tune glibc's malloc once for the data path; False where the C library has no mallopt."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_BYTES)
    )
    if not done:
        logger.warning("could not tune malloc for block buffers; the data path uses more CPU")
    return done
