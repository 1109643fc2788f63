"""Large receive buffers come from mappings that are reused once the user drops them."""

from __future__ import annotations

import gc

import numpy as np

from cmampi import _memory
from cmampi._buffers import address


def test_small_buffers_are_numpys():
    a = _memory.empty(1000)
    assert a.nbytes == 1000 and a.dtype == np.uint8 and a.flags.writeable


def test_a_dropped_buffer_is_reused():
    n = _memory.POOL_MIN + 12345
    a = _memory.empty(n)
    a[:] = 7
    where = address(a)
    view = a[10:20].view()           # a view keeps the mapping in use
    del a
    gc.collect()
    b = _memory.empty(n)
    assert address(b) != where        # still used by *view*
    assert (view == 7).all()
    held = _memory.pooled_bytes()
    del view, b
    gc.collect()
    assert _memory.pooled_bytes() >= held + n
    c = _memory.empty(n)
    assert c.nbytes == n and c.flags.writeable
    assert address(c) == where or _memory.pooled_bytes() >= n   # taken from the pool


def test_pool_is_bounded(monkeypatch):
    from cmampi import _config

    monkeypatch.setattr(_config, "config", _config.config.__class__(
        **{**_config.config.__dict__, "pool": _memory.POOL_MIN}))
    monkeypatch.setattr(_memory, "_config", _config.config)
    before = _memory.pooled_bytes()
    arrays = [_memory.empty(_memory.POOL_MIN) for _ in range(3)]
    del arrays
    gc.collect()
    assert _memory.pooled_bytes() <= max(before, _memory.POOL_MIN)
