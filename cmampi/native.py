"""Small collectives on the MPI channel: the MPI library's own, after one agreement.

Up to a few MiB an MPI library's shared-memory collectives beat anything built
from pulls driven by Python. So on the MPI channel every uppercase collective
first agrees, in one ``MPI_Allgather`` of five integers, on a signature of its
arguments: the operation, root, bytes per rank, dtype, op, and whether each
rank's arguments are well formed and simple (whole C-contiguous numpy arrays
of matching sizes). Where every rank agrees and the message is small, the
wrapped communicator runs the collective; up to `INLINE` bytes per rank the
payloads travel in the agreement itself, which is then the whole collective.
A call made like the last one of its kind reuses that call's plan, so the
signature is not worked out again.
Anything else -- large messages, strided or vector buffers, mismatched sizes,
a bad argument on any rank -- takes cmampi's own path, on every rank alike,
which raises the same error everywhere instead of leaving ranks hanging; but
a large Allgather or Alltoall that every rank agrees on is the library's too
(`LIBRARY_RUNS`: cmampi's pushes lose to it there).
"""

from __future__ import annotations

import operator as _operator
import struct as _struct
import zlib as _zlib
from typing import Any

import numpy as _np

from . import ops as _ops
from ._buffers import _datatype_size, _parse, send_buffer
from ._tuning import AGREED_INLINE as INLINE
from ._tuning import LIBRARY_RUNS, NATIVE_MAX
from ._watch import sites as _sites
from .coll import flat

__all__ = ["NATIVE_MAX", "Agreement", "call", "cmampi_reduces", "direct", "measure", "run"]

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
    code = _plain(send, me != root)     # the root's buffer is only read
    return (send.nbytes, code, 0) if code else None


def _holds(whole, writable: bool, code: int, nbytes: int) -> bool:
    """Whether *whole* is a plain array (writable, if asked) of dtype *code*
    holding exactly *nbytes*."""
    return _plain(whole, writable) == code and whole.nbytes == nbytes


def _gather(size, me, send, recv, root, op, in_place):
    code = _plain(send, False)
    if not code or (me == root and not _holds(recv, True, code, size * send.nbytes)):
        return None
    return send.nbytes, code, 0


def _scatter(size, me, send, recv, root, op, in_place):
    code = _plain(recv, True)
    if not code or (me == root and not _holds(send, False, code, size * recv.nbytes)):
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
    if not code or (me == root and not _holds(recv, True, code, send.nbytes)):
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


# Payload bytes per rank up to `INLINE` travel inside the agreement itself: such
# a checked collective is that one ``MPI_Allgather`` and a little numpy.
#: What every rank agrees on, compared as bytes: (state, collective, bytes per
#: rank, datatype code, op code, root). State 1: these arguments; 0: refused
#: (cmampi's own path runs the call); 2: `_MPI_ONLY`.
_HEADER = _struct.Struct("<6q")
_HEAD = _HEADER.size
_REFUSED = _HEADER.pack(0, 0, 0, 0, 0, 0)
#: A rank whose arguments only the MPI library can run (a datatype with holes):
#: if any rank says so, every rank runs the call with the MPI library.
_MPI_ONLY = _HEADER.pack(2, 0, 0, 0, 0, 0)


def _only_mpi_can(spec) -> bool:
    """Whether *spec* names a datatype cmampi's collectives cannot lay out (a
    derived one: holes, a lower bound, or no numpy type of its own) but the MPI
    library can."""
    if not isinstance(spec, (list, tuple)) or not spec:
        return False
    datatype = spec[-1]
    get_extent = getattr(datatype, "Get_extent", None)
    if get_extent is None:
        return False
    try:
        if not datatype.is_predefined:
            return True
        lb, extent = get_extent()
        return lb != 0 or extent != datatype.Get_size()
    except Exception:   # noqa: BLE001 - a null datatype: the MPI library's to refuse
        return False


def _any_mpi_only(every, starts) -> bool:
    return any(every.startswith(_MPI_ONLY, start) for start in starts)


class Agreement:
    """Per communicator: one ``MPI_Allgather`` of a header (six integers) and up
    to `INLINE` bytes of payload per rank, and per kind the fast run of its last
    call whose payloads rode in the agreement."""

    __slots__ = (
        "every",
        "fast",
        "in_place",
        "mine",
        "packed",
        "rank",
        "raw",
        "row",
        "size",
        "starts",
    )

    def __init__(self, raw, names) -> None:
        self.raw = raw
        self.size, self.rank = raw.Get_size(), raw.Get_rank()
        self.in_place = names.IN_PLACE
        self.row = _HEAD + INLINE
        self.mine = bytearray(self.row)
        self.every = bytearray(self.size * self.row)
        self.starts = tuple(range(0, len(self.every), self.row))
        self.fast: dict = {}
        self.packed: bytes | None = None      # the header now in `mine`

    def agree(self, packed: bytes) -> bool:
        """Gather every rank's header *packed* (and the payload already in `mine`);
        whether all headers equal this one, which is not a refusal."""
        if packed is not self.packed:
            self.mine[:_HEAD] = self.packed = packed
        every = self.every
        self.raw.Allgather(self.mine, every)
        return packed is not _REFUSED and all(every.startswith(packed, start)
                                              for start in self.starts)

    def payload(self, rank: int, shape: tuple, dtype: _np.dtype, skip: int = 0) -> _np.ndarray:
        """A view of rank *rank*'s gathered payload, from byte *skip*, as an array."""
        return _np.ndarray(shape, dtype, self.every, rank * self.row + _HEAD + skip)

    def payloads(self, dtype: _np.dtype, count: int) -> _np.ndarray:
        """Every rank's gathered payload as a row of *count* items: a 2-d view."""
        return _np.ndarray((self.size, count), dtype, self.every, _HEAD,
                           (self.row, dtype.itemsize))


def run(a: Agreement, kind: str, send=None, recv=None, root: int = 0, op=None) -> bool:
    """Run collective *kind* with the MPI library if every rank agrees it should;
    False if cmampi's own path must run it (on every rank alike). This is the full
    path, which signs the call and, if the MPI library runs it, keeps its fast
    run in ``a.fast[kind]``: the caller tries that first."""
    signature, kind_id, sends, finisher = _KINDS[kind]
    if type(root) is not int and hasattr(root, "__index__") and not isinstance(root, bool):
        root = int(root)
    sig = None
    if type(root) is int and 0 <= root < a.size:
        try:
            sig = signature(a.size, a.rank, send, recv, root, op, a.in_place)
        except (TypeError, ValueError, AttributeError):
            sig = None
    natively = _calling(a.raw, kind, root, op)
    if sig is None:
        a.agree(_MPI_ONLY if _only_mpi_can(send) or _only_mpi_can(recv) else _REFUSED)
        if _any_mpi_only(a.every, a.starts):
            natively(send, recv)
            return True
        return False
    nbytes, code, opc = sig
    packed = _HEADER.pack(1, kind_id, nbytes, code, opc, root)
    if nbytes > NATIVE_MAX[kind] and kind not in LIBRARY_RUNS:
        a.agree(packed)
        if _any_mpi_only(a.every, a.starts):
            natively(send, recv)
            return True
        return False
    load = finish = _nothing
    # Payloads ride in the agreement when they fit (a Scatter's root sends size x).
    if (nbytes * a.size if kind == "Scatter" else nbytes) > INLINE:
        finish = _calling(a.raw, kind, root, op)
    elif nbytes:
        data = recv if send is a.in_place else send
        if sends == _EVERY or a.rank == root:
            load = _loader(_np.ndarray(data.shape, data.dtype, a.mine, _HEAD),
                           send is a.in_place)
        finish = finisher(a, send, recv, root, _UFUNCS[_OPS[opc - 1]] if opc else None) \
            or _nothing
    a.fast[kind], body = _fast(a, send, recv, root, op, packed, load, finish,
                               _written(kind, a.rank, root), natively)
    return body(send, recv)     # not through the guard, which may be stricter


def _written(kind: str, me: int, root: int) -> int | None:
    """Which argument of *kind* this rank receives into, as its signature checks
    it (0: send, 1: recv, None: neither)."""
    if kind == "Bcast":
        return None if me == root else 0
    if kind in ("Gather", "Reduce") and me != root:
        return None
    return 1


#: A stand-in for an argument that is not an array and may be anything.
_ANY = object()


def _looks(x, in_place) -> tuple:
    """What a fast run checks of argument *x*: its type, and then its shape and
    dtype (an array), or the very object (None, ``IN_PLACE``), or nothing more."""
    if type(x) is _np.ndarray:
        return _np.ndarray, x.shape, x.dtype
    return type(x), None, x if x is None or x is in_place else _ANY


def _fast(a: Agreement, send, recv, root: int, op, packed: bytes, load, finish,
          writes: int | None, natively) -> tuple:
    """(fast, body): *body* runs this call; *fast* runs calls made like it, whose
    arguments have the same types, shapes and dtypes, arrays still C-contiguous,
    the one this rank receives into (*writes*: 0 send, 1 recv) still writable,
    and the same root and op. For any other call *fast* returns None,
    and the call takes the full path."""
    s_type, s_shape, s_what = _looks(send, a.in_place)
    r_type, r_shape, r_what = _looks(recv, a.in_place)
    # As the signature does, whether or not this rank's finish writes it.
    writes_send, writes_recv = writes == 0, writes == 1
    allgather, mine, every, starts = a.raw.Allgather, a.mine, a.every, a.starts

    # The checks of send and recv, and in `body` the agreement, are written out
    # here rather than called: a helper call each measured 3-6% of a small
    # collective's time, which is this path's whole point.
    def fast(send, recv, root_, op_):
        if (type(send) is not s_type or type(recv) is not r_type or op_ is not op
                or type(root_) is not int or root_ != root):
            return None
        if s_shape is not None:
            if send.shape != s_shape or send.dtype is not s_what:
                return None
            flags = send.flags
            if not flags.c_contiguous or (writes_send and not flags.writeable):
                return None
        elif s_what is not _ANY and send is not s_what:
            return None
        if r_shape is not None:
            if recv.shape != r_shape or recv.dtype is not r_what:
                return None
            flags = recv.flags
            if not flags.c_contiguous or (writes_recv and not flags.writeable):
                return None
        elif r_what is not _ANY and recv is not r_what:
            return None
        return body(send, recv)

    def body(send, recv):
        load(send, recv)
        if a.packed is not packed:
            mine[:_HEAD] = a.packed = packed
        allgather(mine, every)
        for start in starts:
            if not every.startswith(packed, start):
                if _any_mpi_only(every, starts):
                    natively(send, recv)
                    return True
                return False
        finish(send, recv)
        return True
    return fast, body


#: Per collective: (send's blocks, recv's blocks) in a spec's count (a Gather's
#: receive ``[buf, n, type]`` holds n per rank), and which rank reads each
#: argument ("root": only the root, "all": every rank).
_ARGS = {
    "Bcast": ((1, "all"), None), "Gather": ((1, "all"), ("size", "root")),
    "Scatter": (("size", "root"), (1, "all")), "Allgather": ((1, "all"), ("size", "all")),
    "Alltoall": (("size", "all"), ("size", "all")), "Reduce": ((1, "all"), (1, "root")),
    "Allreduce": ((1, "all"), (1, "all")), "Scan": ((1, "all"), (1, "all")),
    "Exscan": ((1, "all"), (1, "all")), "Reduce_scatter_block": (("size", "all"), (1, "all")),
}


def arrays(kind: str, send, recv, root, size: int, me: int, in_place) -> tuple:
    """*send* and *recv* of collective *kind* as numpy arrays over the same memory
    where they are buffer specs (``[buf, n, MPI.INT]``, ``array.array``,
    ``bytearray``, ``mmap``) of contiguous memory, so that they take the same
    path as bare arrays; anything else (None, ``IN_PLACE``, strided or vector
    layouts, bad specs) as it was, for the full path to judge."""
    spec = _ARGS.get(kind)
    if spec is None or (kind == "Reduce_scatter_block" and send is in_place):
        return send, recv       # (in place, its receive spec counts every rank's block)
    out = []
    for arg, how, writable in ((send, spec[0], kind == "Bcast" and me != root),
                               (recv, spec[1], True)):
        if how is None or type(arg) is _np.ndarray or arg is None or arg is in_place \
                or (how[1] == "root" and me != root):
            out.append(arg)
            continue
        out.append(_array_of(arg, writable, size if how[0] == "size" else 1))
    return out[0], out[1]


def _array_of(spec, writable: bool, blocks: int):
    try:
        f = flat(spec, writable, blocks)
    except Exception:   # noqa: BLE001 - a bad spec: the full path raises it on every rank
        return spec
    if f.copied:        # not the user's memory: the full path keeps the layout
        return spec
    return f.array


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


# -- straight to the MPI library (collectives not checked across ranks) ----------------

#: Per collective: the argument that holds a rank's part, and how many blocks it
#: holds (1 or the communicator's size): (send=0/recv=1, blocks) as given, and
#: where the other argument may be ``IN_PLACE``; then how many blocks
#: `NATIVE_MAX` measures (Alltoall and Reduce_scatter_block: the whole buffer).
_PARTS = {
    "Bcast": ((0, 1), (0, 1), 1), "Gather": ((0, 1), (1, 0), 1),
    "Scatter": ((1, 1), (0, 0), 1), "Allgather": ((0, 1), (1, 0), 1),
    "Alltoall": ((1, 0), (1, 0), 0), "Reduce": ((0, 1), (1, 1), 1),
    "Allreduce": ((0, 1), (1, 1), 1), "Scan": ((0, 1), (1, 1), 1),
    "Exscan": ((0, 1), (1, 1), 1), "Reduce_scatter_block": ((0, 0), (1, 0), 0),
}
#: Reductions: a structured dtype (MAXLOC's (value, index) pairs) is cmampi's own.
_REDUCTIONS = ("Reduce", "Allreduce", "Scan", "Exscan", "Reduce_scatter_block")


def measure(kind: str, send, recv, size: int, in_place) -> int | None:
    """What `NATIVE_MAX` bounds for collective *kind* with these arguments: a
    rank's block (the whole buffer for Alltoall and Reduce_scatter_block), as
    every rank of a correct program computes it alike, whatever its buffers'
    forms (type signatures match); None if the argument that tells is not a
    buffer or spec at all (then every rank agrees first, which raises)."""
    plain, other, measured = _PARTS[kind]
    # None where a buffer may be IN_PLACE means IN_PLACE, as in mpi4py (a
    # root's Gather(None, recv), Scatter(send, None)).
    maybe = recv if kind == "Scatter" else send
    which, one = other if maybe is in_place or maybe is None else plain
    x = recv if which else send
    if type(x) is _np.ndarray:
        block = x.nbytes if one else x.nbytes // size
    else:
        nbytes, counted = _bytes_of(x)
        if nbytes is None:
            return None
        # A spec's own count counts one block (mpi4py's rule for collectives).
        block = nbytes if one or counted else nbytes // size
    return block if measured else block * size


def _bytes_of(x) -> tuple[int | None, bool]:
    """(bytes of data, whether a spec's count gave them) of buffer or spec *x*
    (``[buffer, count]`` counts items of the buffer's own type); None if none."""
    try:
        if isinstance(x, (list, tuple)):
            buf, count, _, datatype = _parse(x)
            if count is not None:
                item = _datatype_size(datatype)[0] if datatype is not None else \
                    send_buffer(buf).array.itemsize
                return _operator.index(count) * item, True
        return send_buffer(x).nbytes, False
    except Exception:   # noqa: BLE001 - not a buffer: the agreement raises it everywhere
        return None, False


def cmampi_reduces(kind: str, send, recv, in_place) -> bool:
    """Whether reduction *kind* is cmampi's own: an array of a structured dtype
    (MAXLOC's pairs), which MPI cannot reduce. The same on every rank of a
    correct program (reductions need one type everywhere)."""
    if kind not in _REDUCTIONS:
        return False
    x = recv if send is in_place or send is None else send
    return type(x) is _np.ndarray and x.dtype.names is not None


def _as_mpi_takes(spec, writes: bool) -> tuple[Any, Any | None]:
    """*spec* as mpi4py takes it, and what to write back afterwards: a numpy view
    that is not contiguous, or a spec of one, goes through a contiguous copy; a
    structured array travels as its bytes (its type signature); anything else
    (None, IN_PLACE, specs of contiguous memory, derived datatypes) as it is."""
    if type(spec) is _np.ndarray:
        arr = spec
    elif isinstance(spec, (list, tuple)) and spec and type(spec[0]) is _np.ndarray \
            and not (spec[0].flags.c_contiguous or spec[0].flags.f_contiguous):
        f = flat(spec, writes)
        return f.array, f
    else:
        return spec, None
    contiguous = arr.flags.c_contiguous or arr.flags.f_contiguous
    if contiguous and arr.dtype.names is None:
        return spec, None
    copy = arr if contiguous else _np.ascontiguousarray(arr)
    back = None if contiguous else (arr, copy)
    if arr.dtype.names is not None:
        return copy.reshape(-1).view(_np.uint8), back
    return copy, back


def direct(raw, kind: str, send, recv, root: int, op, me: int) -> None:
    """Collective *kind* by the MPI library on *raw*, as mpi4py runs it, for every
    form cmampi takes: strided views (bare or in a spec) go through a contiguous
    copy, the one this rank receives into written back; structured arrays
    travel as their bytes."""
    writes = _written(kind, me, root)
    send, back_send = _as_mpi_takes(send, writes == 0)
    recv, back_recv = _as_mpi_takes(recv, writes == 1)
    call(raw, kind, send, recv, root, op)
    for back, written in ((back_send, writes == 0), (back_recv, writes == 1)):
        if back is None or not written:
            continue
        if isinstance(back, tuple):
            back[0][...] = back[1]
        else:
            back.finish()


# -- payloads in, results out ---------------------------------------------------------

def _calling(raw, kind: str, root: int, op):
    """A finish that runs the collective with the MPI library (payloads too large
    to ride in the agreement)."""
    def finish(send, recv):
        call(raw, kind, send, recv, root, op)
    return finish


def _nothing(send, recv) -> None:
    """No payload to load, or no result to make, on this rank."""


def _loader(view: _np.ndarray, from_recv: bool):
    """Copies this rank's payload (*recv* for ``IN_PLACE``, else *send*) into *view*."""
    if from_recv:
        def load(send, recv):
            view[...] = recv
    else:
        def load(send, recv):
            view[...] = send
    return load


def _into(which: int, source: _np.ndarray):
    """A finish that copies *source* into the argument *which* (0: send, 1: recv)."""
    if which:
        def finish(send, recv):
            recv[...] = source
    else:
        def finish(send, recv):
            send[...] = source
    return finish


def _bcast_done(a: Agreement, send, recv, root: int, ufunc):
    if a.rank == root:
        return None
    return _into(0, a.payload(root, send.shape, send.dtype))


def _scatter_done(a: Agreement, send, recv, root: int, ufunc):
    return _into(1, a.payload(root, recv.shape, recv.dtype, a.rank * recv.nbytes))


def _gather_done(a: Agreement, send, recv, root: int, ufunc):
    if a.rank != root:
        return None
    rows, size = a.payloads(send.dtype, send.size), a.size

    def finish(send, recv):
        recv.reshape(size, -1)[...] = rows
    return finish


def _allgather_done(a: Agreement, send, recv, root: int, ufunc):
    return _gather_done(a, send, recv, a.rank, ufunc)


def _alltoall_done(a: Agreement, send, recv, root: int, ufunc):
    size, per = a.size, send.size // a.size
    source = a.payloads(send.dtype, send.size)[:, a.rank * per : (a.rank + 1) * per]

    def finish(send, recv):
        recv.reshape(size, per)[...] = source
    return finish


def _folding(a: Agreement, ranks: range, out: _np.ndarray, ufunc, skip: int = 0):
    """A finish that reduces the payloads of *ranks* (from byte *skip*) into the
    receive buffer, in rank order, as every rank does alike (so an Allreduce gives
    every rank the very same bits); None if *ranks* is empty."""
    if not ranks:
        return None
    operands = [a.payload(r, out.shape, out.dtype, skip) for r in ranks]
    if len(operands) == 1:   # one operand is the result as it is (LAND of 5 stays 5)
        return _into(1, operands[0])
    first, second, rest = operands[0], operands[1], operands[2:]

    def finish(send, recv):
        ufunc(first, second, out=recv)
        for x in rest:
            ufunc(recv, x, out=recv)
    return finish


def _reduce_done(a: Agreement, send, recv, root: int, ufunc):
    return _folding(a, range(a.size), recv, ufunc) if a.rank == root else None


def _allreduce_done(a: Agreement, send, recv, root: int, ufunc):
    return _folding(a, range(a.size), recv, ufunc)


def _scan_done(a: Agreement, send, recv, root: int, ufunc):
    return _folding(a, range(a.rank + 1), recv, ufunc)


def _exscan_done(a: Agreement, send, recv, root: int, ufunc):
    return _folding(a, range(a.rank), recv, ufunc)


def _reduce_scatter_block_done(a: Agreement, send, recv, root: int, ufunc):
    return _folding(a, range(a.size), recv, ufunc, a.rank * recv.nbytes)


# Whose payloads ride in the agreement: the root's, or every rank's.
_ROOT, _EVERY = 1, 2

#: Per collective: signature, id, whose payloads ride in the agreement, and what
#: makes the finish of a plan whose payloads ride there.
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


#: Nothing here holds engine state: the main thread blocked in the MPI library
#: from here lets the progress helper act (`_watch`).
_sites(__name__)
