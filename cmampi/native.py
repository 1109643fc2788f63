"""Small collectives on the MPI channel: the MPI library's own, after one agreement.

Below a few hundred KiB an MPI library's shared-memory collectives beat
anything built from pulls driven by Python. So on the MPI channel every
uppercase collective first agrees, in one ``MPI_Allgather`` of five integers,
on a signature of its arguments: the operation, root, bytes per rank, dtype,
op, and whether each rank's arguments are well formed and simple (whole
C-contiguous numpy arrays of matching sizes). Where every rank agrees and the
message is small, the wrapped communicator runs the collective. Anything else
-- large messages, strided or vector buffers, mismatched sizes, a bad argument
on any rank -- takes cmampi's own path, on every rank alike, which raises the
same error everywhere instead of leaving ranks hanging.
"""

from __future__ import annotations

import struct as _struct
import zlib as _zlib
from typing import Any, Optional

import numpy as _np

from . import ops as _ops

__all__ = ["NATIVE_MAX", "call", "run"]

#: Bytes per rank up to which the MPI library's collective is used (measured
#: crossovers on 2 ranks, MPICH; see the README's results).
NATIVE_MAX = {
    "Bcast": 1 << 20, "Gather": 1 << 20, "Scatter": 256 << 10, "Allgather": 64 << 10,
    "Alltoall": 1 << 20, "Reduce": 1 << 20, "Allreduce": 64 << 10, "Scan": 64 << 10,
    "Exscan": 64 << 10, "Reduce_scatter_block": 1 << 20,
}
_KIND_ID = {k: i + 1 for i, k in enumerate(NATIVE_MAX)}
_UFUNCS = {"SUM": _np.add, "PROD": _np.multiply, "MAX": _np.maximum, "MIN": _np.minimum,
           "LAND": _np.logical_and, "LOR": _np.logical_or, "LXOR": _np.logical_xor,
           "BAND": _np.bitwise_and, "BOR": _np.bitwise_or, "BXOR": _np.bitwise_xor}
_OPS = tuple(_UFUNCS)


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


def _signature(kind: str, size: int, me: int, send, recv, root: int, op,
               in_place) -> Optional[tuple]:
    """(bytes per rank, dtype, op) if this rank's arguments suit MPI as they are."""
    if kind in ("Bcast",):
        if not _plain(send, True):
            return None
        return send.nbytes, send.dtype, 0
    rooted = kind in ("Gather", "Scatter", "Reduce")
    at_root = not rooted or me == root
    if send is in_place:
        code = _op_code(op, recv.dtype) if kind == "Allreduce" and _plain(recv, True) else 0
        return (recv.nbytes, recv.dtype, code) if code else None
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


_DTYPE_CODES: dict = {}


def _dtype_code(dtype: _np.dtype) -> int:
    code = _DTYPE_CODES.get(dtype)
    if code is None:
        code = _DTYPE_CODES[dtype] = _zlib.crc32(dtype.str.encode())
    return code


#: Payload bytes per rank that travel inside the agreement itself: up to this,
#: a collective is that one ``MPI_Allgather`` and a little numpy.
INLINE = 1024
_HEADER = _struct.Struct("<5q")
_HEAD = _HEADER.size


class _Agreement:
    """Per communicator: one ``MPI_Allgather`` of a header (five integers) and up
    to `INLINE` bytes of payload per rank."""

    __slots__ = ("raw", "size", "rank", "in_place", "mine", "every", "view", "row")

    def __init__(self, raw, names) -> None:
        self.raw = raw
        self.size, self.rank = raw.Get_size(), raw.Get_rank()
        self.in_place = names.IN_PLACE
        self.row = _HEAD + INLINE
        self.mine = bytearray(self.row)
        self.every = bytearray(self.size * self.row)
        self.view = memoryview(self.every)

    def agree(self, head, data) -> bool:
        """Gather every rank's *head* (and *data*, bytes this rank sends, if it fits);
        whether all heads are equal with a first item of 1."""
        mine = self.mine
        _HEADER.pack_into(mine, 0, *head)
        if data is not None and data.nbytes <= INLINE:
            mine[_HEAD : _HEAD + data.nbytes] = memoryview(data).cast("B")
        self.raw.Allgather(mine, self.every)
        view, row = self.view, self.row
        first = view[:_HEAD]
        return head[0] == 1 and all(view[i : i + _HEAD] == first
                                    for i in range(row, len(view), row))

    def raw_data(self, rank: int, nbytes: int) -> memoryview:
        """The payload bytes *rank* sent in the agreement."""
        at = rank * self.row + _HEAD
        return self.view[at : at + nbytes]


#: Collectives whose small payloads ride in the agreement (reductions do not:
#: the MPI library reduces a few elements faster than numpy is called).
_INLINE_KINDS = {"Bcast": 0, "Gather": 1, "Allgather": 1, "Alltoall": 1, "Scatter": 0}


def _inline_bytes(kind: str, nbytes: int, size: int) -> int:
    """Bytes a rank contributes to the agreement for *kind* (its whole send buffer)."""
    return size * nbytes if kind == "Scatter" else nbytes


def run(comm, kind: str, send=None, recv=None, root: int = 0, op=None) -> bool:
    """Run collective *kind* with the MPI library if every rank agrees it should;
    False if cmampi's own path must run it (on every rank alike)."""
    engine = comm._engine
    agreement = engine.native
    if agreement is None:
        agreement = engine.native = _Agreement(comm._comm, engine.names)
    size, me = agreement.size, agreement.rank
    sig = None
    if hasattr(root, "__index__") and not isinstance(root, bool) and 0 <= root < size:
        try:
            sig = _signature(kind, size, me, send, recv, int(root), op, agreement.in_place)
        except (TypeError, ValueError, AttributeError):
            sig = None
    data = None
    if sig is None:
        head = (0, 0, 0, 0, 0)
    else:
        nbytes, dtype, code = sig
        head = (1, _KIND_ID[kind], nbytes, _dtype_code(dtype), code * 1000 + int(root))
        if kind in _INLINE_KINDS and (me == root or _INLINE_KINDS[kind]):
            data = send
    if not agreement.agree(head, data) or head[2] > NATIVE_MAX[kind]:
        return False
    if kind in _INLINE_KINDS and _inline_bytes(kind, head[2], size) <= INLINE:
        _finish_inline(agreement, kind, send, recv, int(root), head[2])
        return True
    call(agreement.raw, kind, send, recv, root, op)
    return True


def call(raw, kind: str, send, recv, root: int = 0, op=None, recvcounts=None) -> None:
    """Collective *kind* (``"Bcast"``, ``"Gatherv"``, ...) of mpi4py communicator *raw*,
    its arguments in mpi4py's order."""
    fn = getattr(raw, kind)
    if kind == "Bcast":
        fn(send, root)
    elif kind in ("Gather", "Gatherv", "Scatter", "Scatterv"):
        fn(send, recv, root)
    elif kind == "Reduce":
        fn(send, recv, op, root)
    elif kind == "Reduce_scatter":
        fn(send, recv, recvcounts, op)
    elif kind in ("Allgather", "Allgatherv", "Alltoall", "Alltoallv"):
        fn(send, recv)
    else:
        fn(send, recv, op)


def _finish_inline(a: _Agreement, kind: str, send, recv, root: int, nbytes: int) -> None:
    """Copy this rank's result out of the payloads gathered in the agreement."""
    size, me = a.size, a.rank
    if kind == "Bcast":
        if me != root and nbytes:
            memoryview(send).cast("B")[:] = a.raw_data(root, nbytes)
        return
    if kind == "Scatter":
        if nbytes:
            memoryview(recv).cast("B")[:] = a.raw_data(root, size * nbytes)[
                me * nbytes : (me + 1) * nbytes]
        return
    if kind in ("Gather", "Allgather"):
        if (kind == "Allgather" or me == root) and nbytes:
            out = memoryview(recv).cast("B")
            for r in range(size):
                out[r * nbytes : (r + 1) * nbytes] = a.raw_data(r, nbytes)
        return
    if kind == "Alltoall":
        per = nbytes // size
        if per:
            out = memoryview(recv).cast("B")
            for r in range(size):
                out[r * per : (r + 1) * per] = a.raw_data(r, nbytes)[me * per : (me + 1) * per]
        return
    raise ValueError(kind)
