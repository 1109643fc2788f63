"""Small collectives on the MPI channel: the MPI library's own, after one agreement.

Below a few hundred KiB an MPI library's shared-memory collectives beat
anything built from pulls driven by Python. So on the MPI channel every
uppercase collective first agrees, in one ``MPI_Allreduce`` of a few integers,
on a signature of its arguments: the operation, root, bytes per rank, dtype,
op, and whether each rank's arguments are well formed and simple (whole
C-contiguous numpy arrays of matching sizes). Where every rank agrees and the
message is small, the wrapped communicator runs the collective. Anything else
-- large messages, strided or vector buffers, mismatched sizes, a bad argument
on any rank -- takes cmampi's own path, on every rank alike, which raises the
same error everywhere instead of leaving ranks hanging.
"""

from __future__ import annotations

import zlib as _zlib
from typing import Any, Optional

import numpy as _np

from . import ops as _ops

__all__ = ["NATIVE_MAX", "run"]

#: Bytes per rank up to which the MPI library's collective is used (measured
#: crossovers on 2 ranks, MPICH; see the README's results).
NATIVE_MAX = {
    "Bcast": 1 << 20, "Gather": 1 << 20, "Scatter": 256 << 10, "Allgather": 64 << 10,
    "Alltoall": 1 << 20, "Reduce": 1 << 20, "Allreduce": 64 << 10, "Scan": 64 << 10,
    "Exscan": 64 << 10, "Reduce_scatter_block": 1 << 20,
}
_KIND_ID = {k: i + 1 for i, k in enumerate(NATIVE_MAX)}
_OPS = ("SUM", "PROD", "MAX", "MIN", "LAND", "LOR", "LXOR", "BAND", "BOR", "BXOR")


def _plain(a: Any, writable: bool) -> bool:
    """A whole C-contiguous numpy array of a number type: what MPI takes as is."""
    return (type(a) is _np.ndarray and a.flags.c_contiguous and a.dtype.kind in "biufc"
            and a.dtype.fields is None and (a.flags.writeable or not writable))


def _op_code(op, dtype: _np.dtype) -> int:
    """A predefined op valid for *dtype*, as a number; 0 if not (cmampi's path decides)."""
    name = _ops.predefined_name(op)
    if name not in _OPS:
        return 0
    try:
        _ops.combiner(op, dtype)
    except TypeError:
        return 0
    return _OPS.index(name) + 1


def _signature(kind: str, size: int, me: int, send, recv, root: int, op, in_place) -> Optional[tuple]:
    """(bytes per rank, dtype, op) if this rank's arguments suit MPI as they are."""
    if kind in ("Bcast",):
        if not _plain(send, True):
            return None
        return send.nbytes, send.dtype, 0
    rooted = kind in ("Gather", "Scatter", "Reduce")
    at_root = not rooted or me == root
    if send is in_place:
        if kind != "Allreduce" or not _plain(recv, True):
            return None
        return recv.nbytes, recv.dtype, _op_code(op, recv.dtype)
    if kind == "Scatter":
        if not _plain(recv, True) or (at_root and not (
                _plain(send, False) and send.dtype == recv.dtype
                and send.nbytes == size * recv.nbytes)):
            return None
        return recv.nbytes, recv.dtype, 0
    if not _plain(send, False):
        return None
    if at_root or kind != "Gather" and kind != "Reduce":
        if not _plain(recv, True) or recv.dtype != send.dtype:
            return None
        want = {"Gather": size * send.nbytes, "Allgather": size * send.nbytes,
                "Reduce_scatter_block": send.nbytes // size}.get(kind, send.nbytes)
        if recv.nbytes != want or (kind in ("Alltoall", "Reduce_scatter_block")
                                   and send.nbytes % size):
            return None
    code = 0
    if kind in ("Reduce", "Allreduce", "Scan", "Exscan", "Reduce_scatter_block"):
        code = _op_code(op, send.dtype)
        if not code:
            return None
    return send.nbytes, send.dtype, code


def _dtype_code(dtype: _np.dtype) -> int:
    return _zlib.crc32(dtype.str.encode())


def run(comm, kind: str, send=None, recv=None, root: int = 0, op=None) -> bool:
    """Run collective *kind* with the MPI library if every rank agrees it should;
    False if cmampi's own path must run it (on every rank alike)."""
    names = comm._engine.names
    raw = comm._comm
    size, me = raw.Get_size(), raw.Get_rank()
    sig = None
    if hasattr(root, "__index__") and not isinstance(root, bool) and 0 <= root < size:
        try:
            sig = _signature(kind, size, me, send, recv, int(root), op, names.IN_PLACE)
        except (TypeError, ValueError, AttributeError):
            sig = None
    if sig is None:
        mine = [0, 0, 0, 0, 0]
    else:
        nbytes, dtype, code = sig
        mine = [1, _KIND_ID[kind], nbytes, _dtype_code(dtype), code * 1000 + int(root)]
    vec = _np.array(mine + [-x for x in mine], dtype=_np.int64)
    raw.Allreduce(names.IN_PLACE, vec, op=names.MAX)
    top, low = vec[:5], -vec[5:]
    if not (top == low).all() or top[0] != 1 or top[2] > NATIVE_MAX[kind]:
        return False
    if kind == "Bcast":
        raw.Bcast(send, root)
    elif kind in ("Gather", "Scatter"):
        getattr(raw, kind)(send, recv, root)
    elif kind == "Reduce":
        raw.Reduce(send, recv, op, root)
    elif kind in ("Allgather", "Alltoall"):
        getattr(raw, kind)(send, recv)
    else:
        getattr(raw, kind)(send, recv, op)
    return True
