"""Memory for large received buffers: mapped once, faulted once, then reused.

The large buffers of a received object are fresh arrays handed to the user.
Fresh memory costs a page fault per page on every receive -- and for huge
pages, zeroing and at times compaction -- which at 64 MiB takes longer than
the copy itself. So buffers from ``POOL_MIN`` bytes on are anonymous mappings
advised for huge pages; when the user drops the last array using one, the
mapping goes back to a small pool (at most ``CMAMPI_POOL`` bytes) instead of
to the kernel, and a later receive of the same size takes its pages as they
are: already faulted in.
"""

from __future__ import annotations

import mmap as _mmap
import threading as _threading
import weakref as _weakref

import numpy as _np

from ._config import config as _config
from ._tuning import POOL_MIN

__all__ = ["POOL_MIN", "empty", "pooled_bytes"]

_ROUND = 2 << 20      # one huge page

_free: dict[int, list[_mmap.mmap]] = {}
_held = 0
_lock = _threading.RLock()    # reentrant: a mapping may come back during a collection


def _release(mapping: _mmap.mmap) -> None:
    """The array over *mapping* is gone: keep the mapping for reuse, if there is room."""
    global _held
    size = len(mapping)
    with _lock:
        if _held + size <= _config.pool:
            _free.setdefault(size, []).append(mapping)
            _held += size
    # Otherwise it is unmapped once the dying array's export of it is released.


def empty(nbytes: int) -> _np.ndarray:
    """A writable uint8 array of *nbytes*, its pages reused when possible."""
    global _held
    if nbytes < POOL_MIN or _config.pool < POOL_MIN:
        return _np.empty(nbytes, dtype=_np.uint8)   # large: numpy asks for huge pages
    size = -(-nbytes // _ROUND) * _ROUND
    mapping = None
    with _lock:
        spare = _free.get(size)
        if spare:
            mapping = spare.pop()
            _held -= size
    if mapping is None:
        # Private: shared anonymous memory would get huge pages only if shmem allows.
        mapping = _mmap.mmap(-1, size, flags=_mmap.MAP_PRIVATE | _mmap.MAP_ANONYMOUS)
        if hasattr(_mmap, "MADV_HUGEPAGE"):
            mapping.madvise(_mmap.MADV_HUGEPAGE)
    arr = _np.frombuffer(mapping, dtype=_np.uint8, count=nbytes)
    # Every array the user gets from it is a view of *arr*: once all are gone,
    # so is *arr*, and the mapping goes back to the pool.
    _weakref.finalize(arr, _release, mapping).atexit = False
    return arr


def pooled_bytes() -> int:
    """Bytes of mappings kept for reuse."""
    return _held
