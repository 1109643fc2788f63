"""Pull a remote layout into a local one with CMA, choosing iovecs or cache-sized staging."""

from __future__ import annotations

import math as _math
import threading as _threading

import numpy as _np

from . import _cma
from ._buffers import Layout, raw_view
from ._tuning import COARSE_RUN

__all__ = ["COARSE_RUN", "pull"]

#: Read a remote row span (gaps included) while it is at most this many times
#: the payload, or while its gaps are cheap next to the iovecs they save: one
#: segment costs about a microsecond (a page walk and pin), in which memory
#: streams several KiB. Sparser views go run by run.
MAX_SPAN_RATIO = 4
GAP_PER_SEGMENT = 4096
#: Most bytes one staged piece may span in the sender's memory, gaps included.
MAX_PIECE_SPAN = 8 << 20

_local = _threading.local()


def _scratch(name: str, nbytes: int) -> _np.ndarray:
    """A per-thread reusable buffer: fresh pages each pull would cost a fault per page."""
    buf = getattr(_local, name, None)
    if buf is None or buf.size < nbytes:
        buf = _np.empty(max(nbytes, 1 << 16), dtype=_np.uint8)
        setattr(_local, name, buf)
    return buf[:nbytes]


def _addr(arr: _np.ndarray) -> int:
    return arr.__array_interface__["data"][0]


def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _row_bytes(lay: Layout) -> int:
    n = 1
    for d in lay.shape[1:]:
        n *= d
    return n


def _rows(lay: Layout, r0: int, r1: int) -> Layout:
    """Rows [r0, r1) of a strided layout (window ignored) as a layout of their own."""
    return Layout(lay.addr + r0 * lay.strides[0], (r1 - r0, *lay.shape[1:]), lay.strides)


def _extent(lay: Layout):
    """(lowest, highest + 1) byte offsets touched by *lay*, relative to its addr."""
    lo = hi = 0
    for n, s in zip(lay.shape, lay.strides):
        if s < 0:
            lo += (n - 1) * s
        else:
            hi += (n - 1) * s
    return lo, hi + 1


def _fetch(pid: int, remote: Layout, o: int, e: int, dst: _np.ndarray) -> _np.ndarray:
    """Remote stream bytes [o, e) as an array shaped like the remote rows, in cache."""
    if remote.contiguous_run:
        _cma.read_into(pid, _addr(dst), remote.addr + remote.lo + o, e - o)
        return dst
    if remote.run >= COARSE_RUN:
        _cma.readv(pid, [(_addr(dst), e - o)], remote.window(o, e).segments())
        return dst
    rb = _row_bytes(remote)
    rows = _rows(remote, o // rb, e // rb)
    lo, hi = _extent(rows)
    span = _scratch("span", hi - lo)
    _cma.read_into(pid, _addr(span), rows.addr + lo, hi - lo)
    return _np.lib.stride_tricks.as_strided(span[-lo:], rows.shape, rows.strides)


def _store(local: Layout, owner, o: int, e: int, src: _np.ndarray) -> None:
    """Write stream bytes [o, e) of *local* from *src* (any shape with e - o bytes)."""
    if local.contiguous_run:
        dst = raw_view(Layout.contiguous(local.addr + local.lo + o, e - o), owner)
    else:
        rb = _row_bytes(local)
        dst = raw_view(_rows(local, o // rb, e // rb), owner)
    if src.shape != dst.shape:
        src = _np.ascontiguousarray(src).reshape(dst.shape)
    _np.copyto(_widen(dst), _widen(src))


def _widen(a: _np.ndarray) -> _np.ndarray:
    """View uint8 runs as the widest unsigned integers that tile them: numpy copies
    eight bytes per element far faster than one byte per element."""
    run = a.shape[-1]
    for t in (_np.uint64, _np.uint32, _np.uint16):
        w = _np.dtype(t).itemsize
        if run % w == 0 and _addr(a) % w == 0 and all(s % w == 0 for s in a.strides[:-1]):
            return a.view(t)
    return a


def _sparse(lay: Layout) -> bool:
    """True for a fine-grained layout whose span is mostly gaps.

    Pieces of rows are read span and all: both one row's span (rows may
    interleave) and the whole layout's span (rows may lie far apart) must stay
    within ``MAX_SPAN_RATIO`` times their payload.
    """
    if lay.contiguous_run or lay.run >= COARSE_RUN:
        return False
    return _gappy(_rows(lay, 0, 1)) or _gappy(lay)


def _gappy(lay: Layout) -> bool:
    """Whether reading *lay*'s whole span costs more than reading it run by run."""
    lo, hi = _extent(lay)
    payload = _prod(lay.shape)
    return hi - lo > max(MAX_SPAN_RATIO * payload, GAP_PER_SEGMENT * (payload // lay.run))


def pull(pid: int, remote: Layout, local: Layout, owner, chunk: int) -> None:
    """Copy the remote stream into the first ``remote.nbytes`` bytes of *local*.

    *owner* keeps the local memory alive while numpy views of it exist.
    """
    n = remote.nbytes
    if n == 0:
        return
    local = local.window(0, n)
    if remote.contiguous_run and local.contiguous_run:
        _cma.read_into(pid, local.addr + local.lo, remote.addr + remote.lo, n)
        return
    rfine = not remote.contiguous_run and remote.run < COARSE_RUN
    lfine = not local.contiguous_run and local.run < COARSE_RUN
    rstep = 1 if remote.contiguous_run else _row_bytes(remote)
    lstep = 1 if local.contiguous_run else _row_bytes(local)
    step = rstep * lstep // _math.gcd(rstep, lstep)
    aligned = ((remote.contiguous_run or remote.lo == 0)
               and (local.contiguous_run or local.lo == 0))
    if (not rfine and not lfine) or not aligned or step > 4 * chunk \
            or _sparse(remote) or _sparse(local):
        _cma.readv(pid, local.segments(), remote.segments())
        return
    # Fine-grained on at least one side: move row-aligned pieces through a buffer
    # that stays in cache, so each byte crosses memory once on each side.
    steps = chunk // step
    if rfine:   # bound the sender's span one piece reads, gaps included
        steps = min(steps, MAX_PIECE_SPAN // (abs(remote.strides[0]) * (step // rstep)))
    per = max(1, steps) * step
    bulk = n - n % step
    stage = _scratch("stage", min(per, bulk))
    for o in range(0, bulk, per):
        e = min(o + per, bulk)
        _store(local, owner, o, e, _fetch(pid, remote, o, e, stage[: e - o]))
    if bulk < n:
        _cma.readv(pid, local.window(bulk, n).segments(), remote.window(bulk, n).segments())
