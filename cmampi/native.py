"""Small collectives on the MPI channel: the MPI library's own, after one agreement.

Up to a few MiB an MPI library's shared-memory collectives beat anything built
from pulls driven by Python. So on the MPI channel every uppercase collective
first agrees, in one ``MPI_Allgather`` of five integers, on a signature of its
arguments: the operation, root, bytes per rank, dtype, op, and whether each
rank's arguments are well formed and simple (whole C-contiguous numpy arrays
of matching sizes). Where every rank agrees and the message is small, the
wrapped communicator runs the collective; up to `INLINE` bytes per rank the
payloads travel in the agreement itself, which is then the whole collective.
Anything else -- large messages, strided or vector buffers, mismatched sizes,
a bad argument on any rank -- takes cmampi's own path, on every rank alike,
which raises the same error everywhere instead of leaving ranks hanging.
"""

from __future__ import annotations

import struct as _struct
import zlib as _zlib
from itertools import repeat as _repeat
from typing import Any, Optional

import numpy as _np

from . import ops as _ops

__all__ = ["NATIVE_MAX", "Agreement", "call", "run"]

#: Bytes per rank up to which the MPI library's collective is used (measured
#: crossovers on 2 ranks, MPICH; see the README's results).
NATIVE_MAX = {
    "Bcast": 4 << 20, "Gather": 2 << 20, "Scatter": 256 << 10, "Allgather": 64 << 10,
    "Alltoall": 1 << 20, "Reduce": 2 << 20, "Allreduce": 4 << 20, "Scan": 64 << 10,
    "Exscan": 64 << 10, "Reduce_scatter_block": 1 << 20,
}
_UFUNCS = {"SUM": _np.add, "PROD": _np.multiply, "MAX": _np.maximum, "MIN": _np.minimum,
           "LAND": _np.logical_and, "LOR": _np.logical_or, "LXOR": _np.logical_xor,
           "BAND": _np.bitwise_and, "BOR": _np.bitwise_or, "BXOR": _np.bitwise_xor}
_OPS = tuple(_UFUNCS)


_DTYPE_CODES: dict = {}


def _dtype_code(dtype: _np.dtype) -> int:
    """A nonzero code naming a number dtype (bool, ints, floats, complex); 0 for others."""
    code = _DTYPE_CODES.get(dtype)
    if code is None:
        code = 0
        if dtype.kind in "biufc" and dtype.fields is None:
            code = _zlib.crc32(dtype.str.encode()) or 1
        _DTYPE_CODES[dtype] = code
    return code


def _plain(a: Any, writable: bool) -> int:
    """The dtype code of a whole C-contiguous numpy array of numbers, which MPI
    takes as it is (and which is writable, if asked); 0 for anything else."""
    if type(a) is not _np.ndarray:
        return 0
    flags = a.flags
    if not flags.c_contiguous or (writable and not flags.writeable):
        return 0
    return _dtype_code(a.dtype)


#: Codes of predefined ops valid for a dtype, by (id(op), dtype): (op, code).
_OP_CODES: dict = {}


def _op_code(op, dtype: _np.dtype) -> int:
    """A predefined op valid for *dtype*, as a number; 0 if not (cmampi's path decides)."""
    hit = _OP_CODES.get((id(op), dtype))
    if hit is not None and hit[0] is op:
        return hit[1]
    name = _ops.predefined_name(op)
    if name not in _OPS:
        return 0
    try:
        _ops.combiner(op, dtype)
    except TypeError:
        return 0
    code = _OPS.index(name) + 1
    _OP_CODES[(id(op), dtype)] = (op, code)     # predefined ops live for good
    return code


# Signatures: (bytes per rank, dtype code, op code) when this rank's arguments
# suit MPI as they are, else None. *size*, *me*: the communicator's.

def _bcast(size, me, send, recv, root, op, in_place):
    code = _plain(send, True)
    return (send.nbytes, code, 0) if code else None


def _holds(whole, writable: bool, code: int, nbytes: int) -> bool:
    """Whether *whole* is a plain array (writable, if asked) of dtype *code*
    holding exactly *nbytes*."""
    return _plain(whole, writable) == code and whole.nbytes == nbytes


def _gather(size, me, send, recv, root, op, in_place):
    code = _plain(send, False)
    if not code or me == root and not _holds(recv, True, code, size * send.nbytes):
        return None
    return send.nbytes, code, 0


def _scatter(size, me, send, recv, root, op, in_place):
    code = _plain(recv, True)
    if not code or me == root and not _holds(send, False, code, size * recv.nbytes):
        return None
    return recv.nbytes, code, 0


def _allgather(size, me, send, recv, root, op, in_place):
    return _gather(size, me, send, recv, me, op, in_place)


def _alltoall(size, me, send, recv, root, op, in_place):
    code = _plain(send, False)
    if not code or not _holds(recv, True, code, send.nbytes) or send.nbytes % size:
        return None
    return send.nbytes, code, 0


def _reduce(size, me, send, recv, root, op, in_place):
    code = _plain(send, False)
    if not code or me == root and not _holds(recv, True, code, send.nbytes):
        return None
    opc = _op_code(op, send.dtype)
    return (send.nbytes, code, opc) if opc else None


def _allreduce(size, me, send, recv, root, op, in_place):
    if send is in_place:
        code = _plain(recv, True)
        opc = code and _op_code(op, recv.dtype)
        return (recv.nbytes, code, opc) if opc else None
    return _reduce(size, me, send, recv, me, op, in_place)


def _scan(size, me, send, recv, root, op, in_place):
    return None if send is in_place else _reduce(size, me, send, recv, me, op, in_place)


def _reduce_scatter_block(size, me, send, recv, root, op, in_place):
    code = _plain(send, False)
    if not code or send is in_place or send.nbytes % size \
            or not _holds(recv, True, code, send.nbytes // size):
        return None
    opc = _op_code(op, send.dtype)
    return (send.nbytes, code, opc) if opc else None


#: Payload bytes per rank that travel inside the agreement itself: up to this,
#: a collective is that one ``MPI_Allgather`` and a little numpy.
INLINE = 1024
_HEADER = _struct.Struct("<5q")
_HEAD = _HEADER.size


class Agreement:
    """Per communicator: one ``MPI_Allgather`` of a header (five integers) and up
    to `INLINE` bytes of payload per rank."""

    __slots__ = ("raw", "size", "rank", "in_place", "mine", "mine_view", "every",
                 "row", "starts", "_rows")

    def __init__(self, raw, names) -> None:
        self.raw = raw
        self.size, self.rank = raw.Get_size(), raw.Get_rank()
        self.in_place = names.IN_PLACE
        self.row = _HEAD + INLINE
        self.mine = bytearray(self.row)
        self.mine_view = memoryview(self.mine)
        self.every = bytearray(self.size * self.row)
        self.starts = range(0, len(self.every), self.row)
        self._rows: dict = {}

    def agree(self, head: tuple, data) -> bool:
        """Gather every rank's *head* (and *data*, an array this rank sends, if it
        fits); whether all heads are equal with a first item of 1."""
        packed = _HEADER.pack(*head)
        self.mine[:_HEAD] = packed
        if data is not None and 0 < data.nbytes <= INLINE:
            self.mine_view[_HEAD : _HEAD + data.nbytes] = memoryview(data).cast("B")
        every = self.every
        self.raw.Allgather(self.mine, every)
        return head[0] == 1 and all(map(every.startswith, _repeat(packed), self.starts))

    def rows(self, dtype: _np.dtype, count: int) -> list:
        """Every rank's payload as *count* items of *dtype*: [all ranks' (a 2-d
        array), rank 0's, rank 1's, ...], views into the gathered bytes."""
        key = (dtype, count)
        rows = self._rows.get(key)
        if rows is None:
            both = _np.ndarray((self.size, count), dtype, self.every, _HEAD,
                               (self.row, dtype.itemsize))
            rows = self._rows[key] = [both, *both]
        return rows


def run(a: "Agreement", kind: str, send=None, recv=None, root: int = 0, op=None) -> bool:
    """Run collective *kind* with the MPI library if every rank agrees it should;
    False if cmampi's own path must run it (on every rank alike)."""
    signature, kind_id, sends, finish = _KINDS[kind]
    sig = None
    if type(root) is not int and hasattr(root, "__index__") and not isinstance(root, bool):
        root = int(root)
    if type(root) is int and 0 <= root < a.size:
        try:
            sig = signature(a.size, a.rank, send, recv, root, op, a.in_place)
        except (TypeError, ValueError, AttributeError):
            sig = None
    data = None
    if sig is None:
        head = (0, 0, 0, 0, 0)
    else:
        nbytes, code, opc = sig
        head = (1, kind_id, nbytes, code, opc * 1000 + root)
        if sends == _EVERY or a.rank == root:
            data = recv if send is a.in_place else send
    if not a.agree(head, data) or head[2] > NATIVE_MAX[kind]:
        return False
    # Agreed by all: the payloads fit in the agreement (a Scatter's root sends size x).
    if (head[2] * a.size if kind == "Scatter" else head[2]) <= INLINE:
        opc = head[4] // 1000
        finish(a, send, recv, root, head[2], _UFUNCS[_OPS[opc - 1]] if opc else None)
    else:
        call(a.raw, kind, send, recv, root, op)
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


# -- results from the payloads gathered in the agreement --------------------------------

def _flat(a: _np.ndarray) -> _np.ndarray:
    return a if a.ndim == 1 else a.reshape(-1)


def _bcast_done(a: Agreement, send, recv, root: int, nbytes: int, ufunc) -> None:
    if a.rank != root and nbytes:
        _flat(send)[...] = a.rows(send.dtype, send.size)[1 + root]


def _scatter_done(a: Agreement, send, recv, root: int, nbytes: int, ufunc) -> None:
    if nbytes:
        every = a.rows(recv.dtype, recv.size * a.size)[1 + root]
        _flat(recv)[...] = every[a.rank * recv.size : (a.rank + 1) * recv.size]


def _gather_done(a: Agreement, send, recv, root: int, nbytes: int, ufunc) -> None:
    if a.rank == root and nbytes:
        recv.reshape(a.size, send.size)[...] = a.rows(send.dtype, send.size)[0]


def _allgather_done(a: Agreement, send, recv, root: int, nbytes: int, ufunc) -> None:
    _gather_done(a, send, recv, a.rank, nbytes, ufunc)


def _alltoall_done(a: Agreement, send, recv, root: int, nbytes: int, ufunc) -> None:
    if nbytes:
        per = send.size // a.size
        both = a.rows(send.dtype, send.size)[0]
        recv.reshape(a.size, per)[...] = both[:, a.rank * per : (a.rank + 1) * per]


def _reduced(a: Agreement, ranks: range, out: _np.ndarray, ufunc, lo: int = 0,
             hi: Optional[int] = None) -> None:
    """*out* = the items [lo, hi) of the payloads of *ranks* reduced in rank order,
    as every rank does alike (so an Allreduce gives every rank the very same bits)."""
    rows = a.rows(out.dtype, len(out) if hi is None else len(out) * a.size)
    first = rows[1 + ranks[0]][lo:hi]
    if len(ranks) == 1:      # one operand is the result as it is (LAND of 5 stays 5)
        out[...] = first
        return
    ufunc(first, rows[1 + ranks[1]][lo:hi], out=out)
    for r in ranks[2:]:
        ufunc(out, rows[1 + r][lo:hi], out=out)


def _reduce_done(a: Agreement, send, recv, root: int, nbytes: int, ufunc) -> None:
    if a.rank == root and nbytes:
        _reduced(a, range(a.size), _flat(recv), ufunc)


def _allreduce_done(a: Agreement, send, recv, root: int, nbytes: int, ufunc) -> None:
    if nbytes:
        _reduced(a, range(a.size), _flat(recv), ufunc)


def _scan_done(a: Agreement, send, recv, root: int, nbytes: int, ufunc) -> None:
    if nbytes:
        _reduced(a, range(a.rank + 1), _flat(recv), ufunc)


def _exscan_done(a: Agreement, send, recv, root: int, nbytes: int, ufunc) -> None:
    if nbytes and a.rank:
        _reduced(a, range(a.rank), _flat(recv), ufunc)


def _reduce_scatter_block_done(a: Agreement, send, recv, root: int, nbytes: int,
                               ufunc) -> None:
    if nbytes:
        out = _flat(recv)
        _reduced(a, range(a.size), out, ufunc, a.rank * out.size, (a.rank + 1) * out.size)


# Whose payloads ride in the agreement: the root's, or every rank's.
_ROOT, _EVERY = 1, 2

#: Per collective: signature, id, whose payloads ride in the agreement, and what
#: finishes it from them.
_KINDS = {
    "Bcast": (_bcast, 1, _ROOT, _bcast_done),
    "Gather": (_gather, 2, _EVERY, _gather_done),
    "Scatter": (_scatter, 3, _ROOT, _scatter_done),
    "Allgather": (_allgather, 4, _EVERY, _allgather_done),
    "Alltoall": (_alltoall, 5, _EVERY, _alltoall_done),
    "Reduce": (_reduce, 6, _EVERY, _reduce_done),
    "Allreduce": (_allreduce, 7, _EVERY, _allreduce_done),
    "Scan": (_scan, 8, _EVERY, _scan_done),
    "Exscan": (_scan, 9, _EVERY, _exscan_done),
    "Reduce_scatter_block": (_reduce_scatter_block, 10, _EVERY, _reduce_scatter_block_done),
}
assert _KINDS.keys() == NATIVE_MAX.keys()
