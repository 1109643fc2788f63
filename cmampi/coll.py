"""Collectives on descriptors and CMA pulls/pushes, with errors agreed by every rank.

Every collective starts with one exchange: each rank sends every other rank a
small record (its error, if any, its sizes and dtype, and either its data —
small messages — or the layouts of its buffers). After it, every rank knows
the same things, so all raise the same error, or all take the same path:

* inline: the data came with the exchange; each rank computes its result;
* CMA: ranks copy straight between each other's buffers (a rank pulls what it
  reads, or pushes what it owns), reductions are split so that every rank
  reduces one slice in cache-sized pieces, and a closing barrier keeps every
  buffer alive and unchanged until nobody touches it any more.
"""

from __future__ import annotations

import operator as _operator
import pickle as _pickle
import struct as _struct
from collections.abc import Sequence
from time import perf_counter as _clock
from typing import Any, NamedTuple

import numpy as _np

from . import _cma
from . import ops as _ops
from . import p2p as _p2p
from ._backend import names as _names
from ._buffers import _parse as _parse_spec
from ._buffers import address as _address
from ._buffers import has_derived_datatype, recv_buffer, send_buffer
from ._serial import serialized, shared
from ._tuning import COLL_INLINE_MAX as INLINE_MAX
from ._tuning import PIECE
from .coop import SharedCopies

__all__ = ["INLINE_MAX", "Collectives", "frame"]

#: Largest first message of a record in the exchange (longer ones continue).
RECORD_MAX = INLINE_MAX + 4096
_LEN = _struct.Struct("<Q")
_TAG_X, _TAG_SYNC, _TAG_P, _TAG_ACK = 1, 2, 3, 4


def frame(record: Any) -> tuple[bytes, bytes]:
    """*record* pickled for the wire: a first message (its length, then up to
    `RECORD_MAX` bytes of it) and the rest (empty when it all fits)."""
    data = _pickle.dumps(record, _pickle.HIGHEST_PROTOCOL)
    cut = RECORD_MAX - _LEN.size
    return _LEN.pack(len(data)) + data[:cut], data[cut:]


def _first_part(stage, count: int) -> tuple[memoryview, int]:
    """What a received first message of *count* bytes holds of its record, and the
    record's whole length."""
    total = _LEN.unpack_from(stage)[0]
    return memoryview(stage)[_LEN.size : _LEN.size + min(total, count - _LEN.size)], total


def _noted(exc: BaseException, note: str) -> BaseException:
    """*exc* (of the type mpi4py raises) with an explanation attached."""
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    return exc


class Collectives:
    """The collectives of one communicator, over a private channel of their own."""

    def __init__(self, engine: _p2p.Engine) -> None:
        self.e = engine
        self.names = engine.names
        self.rank = engine.rank
        self.size = engine.size
        self.pids = engine.ch.pids
        self.all_cma = engine.all_cma    # the same on every rank
        self._stages = [bytearray(RECORD_MAX) for _ in range(self.size - 1)]
        self._empty = bytearray(0)
        #: how two ranks share a large Bcast's copy (see `SharedCopies`)
        self.copies = SharedCopies()
        # A channel that can tell failed ranks fails every collective they were in,
        # on every survivor: none waits on another that has given up on it.
        engine.ch.collective()

    # -- the exchange and the closing barrier ----------------------------------------------
    def exchange(self, record: Any) -> list[Any]:
        """Every rank's *record*, in rank order (an allgather of small objects).

        Records go straight through the private channel: one message to each
        peer, received into a buffer posted in advance; a record too large for
        it continues in a second message.
        """
        me, n = self.rank, self.size
        if n == 1:
            return [record]
        ch = self.e.ch
        head, rest = frame(record)
        peers = [r for r in range(n) if r != me]
        recvs = [ch.irecv(self._stages[k], src, _TAG_X) for k, src in enumerate(peers)]
        sends = [ch.isend(head, dst, _TAG_X) for dst in peers]
        # A long record's remainder may need the peer's receive posted before its
        # send completes: wait for it only together with our own second receives.
        more_sends = [ch.isend(rest, dst, _TAG_X) for dst in peers] if rest else []
        infos = _p2p.wait_handles(ch, recvs + sends)
        out = {me: record}
        second, parts = [], {}
        for k, src in enumerate(peers):
            part, total = _first_part(self._stages[k], infos[k].nbytes)
            if len(part) < total:   # the record continues in a second message
                more = bytearray(total - len(part))
                second.append(ch.irecv(more, src, _TAG_X))
                parts[src] = (bytes(part), more)
            else:
                out[src] = _pickle.loads(part)
        _p2p.wait_handles(ch, second + more_sends)
        for src, (head_part, more) in parts.items():
            out[src] = _pickle.loads(head_part + more)
        return [out[r] for r in range(n)]

    @serialized
    def barrier(self) -> None:
        """Dissemination barrier: log2(size) rounds of empty messages."""
        me, n = self.rank, self.size
        ch = self.e.ch
        step = 1
        while step < n:
            _p2p.wait_handles(ch, [ch.irecv(self._empty, (me - step) % n, _TAG_SYNC),
                                   ch.isend(self._empty, (me + step) % n, _TAG_SYNC)])
            step *= 2

    # -- records between two ranks, and acknowledgements -------------------------------
    def isend_record(self, framed: tuple[bytes, bytes], dest: int) -> list:
        """Start sending a record (as `frame` made it) to *dest*; the handles to wait on."""
        ch = self.e.ch
        head, rest = framed
        handles = [ch.isend(head, dest, _TAG_P)]
        if rest:
            handles.append(ch.isend(rest, dest, _TAG_P))
        return handles

    def recv_record(self, source: int) -> Any:
        """The record *source* sent with `isend_record`."""
        ch = self.e.ch
        stage = self._stages[0]
        info = _p2p.wait_handles(ch, [ch.irecv(stage, source, _TAG_P)])[0]
        part, total = _first_part(stage, info.nbytes)
        if len(part) == total:
            return _pickle.loads(part)
        head = bytes(part)
        more = bytearray(total - len(head))
        _p2p.wait_handles(ch, [ch.irecv(more, source, _TAG_P)])
        return _pickle.loads(head + more)

    def ack(self, dest: int) -> None:
        """Tell *dest* we no longer read its memory."""
        ch = self.e.ch
        if shared():    # never block in the channel holding the engine's lock
            _p2p.wait_handles(ch, [ch.isend(self._empty, dest, _TAG_ACK)])
        else:
            ch.send(self._empty, dest, _TAG_ACK)

    def wait_acks(self, sources: Sequence[int]) -> None:
        """Wait until every rank in *sources* has sent its `ack`."""
        ch = self.e.ch
        _p2p.wait_handles(ch, [ch.irecv(self._empty, s, _TAG_ACK) for s in sources])

    def agree(self, error: BaseException | None, info: Any, payload=None,
              inline: bool = False, call: Call | None = None) -> list[Agreed]:
        """Exchange (error, info, payload, call); raise the first error any rank
        had, then, on every rank alike, a mismatch of the calls themselves
        (another collective, root or op on some rank). Every rank's `Agreed`."""
        # Infos travel as plain tuples (a NamedTuple pickles with its class's
        # name: 4-6 us more per small collective on the socket channel) and
        # are named again below, once every rank is known to make this call.
        records: list[tuple[tuple[int, str] | None, Any, bytes | None, Call | None]] = \
            self.exchange((self.error_record(error), _plain(info),
                           payload if inline else None, call))
        for r, (failed, _, _, _) in enumerate(records):
            if failed is not None:
                if error is not None:
                    raise error
                raise self.remote_error(*failed, rank=r)
        calls = [called for _, _, _, called in records]
        if any(other != call for other in calls):
            raise self.mismatch(*_disagreement(calls, self.names))
        named = type(info) if hasattr(info, "_fields") else None
        return [_new(Agreed, (_named(named, i), payload)) for _, i, payload, _ in records]

    def error_record(self, error: BaseException | None) -> tuple[int, str] | None:
        """What travels of a local error: (error class, text); None for no error."""
        if error is None:
            return None
        return (getattr(error, "error_class", self.names.ERR_OTHER),
                f"{type(error).__name__}: {error}")

    def remote_error(self, errclass: int, text: str, rank: int) -> BaseException:
        """The error another rank raised, raised here with the same error class."""
        return _noted(self.names.Exception(errclass),
                      f"cmampi collective failed on rank {rank}: {text}")

    def mismatch(self, what: str, errclass: int | None = None) -> BaseException:
        errclass = self.names.ERR_ARG if errclass is None else errclass
        return _noted(self.names.Exception(errclass), f"cmampi collective: {what}")

    # -- copies between ranks --------------------------------------------------------------
    def read(self, src: int, raddr: int, dst: _np.ndarray) -> None:
        """Copy ``dst.nbytes`` bytes at *raddr* in rank *src* into contiguous *dst*."""
        n = dst.nbytes
        if not n:
            return
        _cma.read_into(self.pids[src], _address(dst), raddr, n)

    def write(self, dst: int, src: _np.ndarray, raddr: int) -> None:
        """Copy contiguous *src* to *raddr* in rank *dst*."""
        n = src.nbytes
        if n:
            _cma.writev(self.pids[dst], [(_address(src), n)], [(raddr, n)])


def addr(arr: _np.ndarray | None) -> int:
    return 0 if arr is None or arr.nbytes == 0 else _address(arr)


# -- buffers as flat typed arrays ------------------------------------------------------------

class Flat:
    """A message buffer as a flat, typed, contiguous array (a temporary for a
    strided receive buffer, written back by ``finish``)."""

    __slots__ = ("_back", "array", "copied")

    def __init__(self, array: _np.ndarray, back: _np.ndarray | None = None,
                 copied: bool = False) -> None:
        self.array = array
        self._back = back
        #: *array* is a contiguous copy of a strided buffer (not its memory)
        self.copied = copied or back is not None

    def finish(self) -> None:
        if self._back is not None:
            self._back[...] = self.array.reshape(self._back.shape)


def _dtype_of(buf, datatype) -> _np.dtype:
    if datatype is None:
        return buf.array.dtype
    code = datatype if isinstance(datatype, str) else datatype.tocode()
    return _np.dtype(code)


def flat(spec, writable: bool, blocks: int = 1) -> Flat:
    """*spec* (a buffer or mpi4py spec) as a `Flat`. With *blocks*, a count in the
    spec counts each of that many blocks, as in mpi4py (``Gather``'s receive
    ``[buf, n, type]`` is n per rank)."""
    if type(spec) is _np.ndarray and spec.flags.c_contiguous and spec.dtype.kind not in "OMm" \
            and (spec.flags.writeable or not writable):
        return Flat(spec.reshape(-1))
    if spec is _names().IN_PLACE:    # where it means nothing: an empty buffer, as in mpi4py
        return Flat(_np.empty(0, _np.uint8))
    if blocks > 1 and isinstance(spec, (list, tuple)):
        buf, count, displ, datatype = _parse_spec(spec)
        if count is not None:
            window = (_operator.index(count) * blocks, 0 if displ is None else displ)
            spec = [buf, window] if datatype is None else [buf, window, datatype]
    if has_derived_datatype(spec):     # the MPI library's to run (`native._only_mpi_can`)
        lb, extent = _parse_spec(spec)[3].Get_extent()
        if extent <= 0:     # mpi4py's error for what cannot be counted
            raise ValueError(f"message: cannot count in a datatype of extent {extent} "
                             f"(lb:{lb}, ub:{lb + extent})")
        raise TypeError("message: cmampi's own collectives take no derived datatypes")
    buf = recv_buffer(spec) if writable else send_buffer(spec)
    datatype = spec[-1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and \
        not isinstance(spec[-1], (int, tuple, list)) else None
    dtype = _dtype_of(buf, datatype)
    if buf.contiguous:
        raw = buf.flat()
        return Flat(raw.view(dtype) if raw.size else _np.empty(0, dtype))
    arr = buf.array
    if writable:  # a copy of the current contents: collectives may read them too
        tmp = _np.ascontiguousarray(arr).reshape(-1)
        return Flat(tmp.view(dtype), arr)
    return Flat(_np.ascontiguousarray(arr).reshape(-1).view(dtype), copied=True)


def vector(spec, size: int, writable: bool):
    """A vector spec as (Flat, counts, displs) in elements, by mpi4py's rules:
    ``[buf, counts, displs, datatype]``, ``[buf, (counts, displs), datatype]``,
    ``[buf, counts, datatype]``, ``[buf, datatype]``, ``[buf, counts]`` or
    ``[buf, (counts, displs)]``; counts None: the buffer split evenly, an int: that
    many each; displs None: packed, an int: that stride."""
    counts = displs = datatype = None
    if isinstance(spec, (list, tuple)):
        if len(spec) == 2:
            buf, counts = spec
            if _is_datatype(counts):
                counts, datatype = None, counts
            elif isinstance(counts, tuple):
                counts, displs = counts
        elif len(spec) == 3:
            buf, counts, datatype = spec
            if isinstance(counts, tuple):
                counts, displs = counts
        elif len(spec) == 4:
            buf, counts, displs, datatype = spec
        else:
            raise ValueError("message: expecting 2 to 4 items")
    else:
        buf = spec
    if buf is None:
        f = Flat(_np.empty(0, _np.dtype(_dtype_of_datatype(datatype))))
    else:
        f = flat([buf, datatype] if datatype is not None else buf, writable)
    if counts is None:
        total = f.array.size
        counts = [total // size + (total % size > i) for i in range(size)]
    elif _integral(counts):
        counts = [_operator.index(counts)] * size
    else:
        counts = [_operator.index(c) for c in counts]   # floats refused, as mpi4py
    if len(counts) != size:
        raise ValueError(f"expecting {size} items, got {len(counts)}")
    if displs is None:
        displs = [sum(counts[:i]) for i in range(size)]
    elif _integral(displs):
        displs = [_operator.index(displs) * i for i in range(size)]
    else:
        displs = [_operator.index(d) for d in displs]
    if len(displs) != size:
        raise ValueError(f"expecting {size} items, got {len(displs)}")
    for c, d in zip(counts, displs):
        if c < 0 or d < 0 or (c and d + c > f.array.size):
            raise ValueError(f"count {c} at displacement {d} exceeds the buffer's "
                             f"{f.array.size} elements")
    return f, counts, displs


def _integral(x) -> bool:
    """An integer where mpi4py takes one for every rank (a 0-d array too)."""
    if isinstance(x, _np.ndarray):
        return x.ndim == 0
    return hasattr(type(x), "__index__")


def _is_datatype(x) -> bool:
    return isinstance(x, str) or hasattr(x, "Get_extent")


def _dtype_of_datatype(datatype) -> str:
    """The numpy type of an MPI datatype or type code (bytes for anything else)."""
    if isinstance(datatype, str):
        return datatype
    code = getattr(datatype, "tocode", None)
    try:
        return code() if code is not None else "B"
    except (ValueError, KeyError):
        return "B"


# -- algorithms -------------------------------------------------------------------------------

def _payload(c: Collectives, arr: _np.ndarray | None) -> bytes | None:
    """The bytes to send inline, or None when peers will copy them with CMA."""
    if arr is None:
        return None
    if arr.nbytes <= INLINE_MAX or not c.all_cma:
        return arr.tobytes()
    return None


def _from(payload: bytes, dtype) -> _np.ndarray:
    return _np.frombuffer(payload, dtype=dtype)


def _guard(fn):
    """Run *fn*; return (result, None) or (None, the exception), so that a bad
    argument on one rank becomes an error on every rank instead of a hang."""
    try:
        return fn(), None
    except Exception as exc:  # noqa: BLE001 - re-raised on every rank by agree()
        return None, exc


def _check_root(c: Collectives, root) -> None:
    """Raise for a bad root (called under `_guard`: every rank then raises)."""
    if not hasattr(root, "__index__") or isinstance(root, bool):
        raise TypeError("an integer is required")   # the API layer has made floats ints
    if not 0 <= root < c.size:
        raise c.names.Exception(c.names.ERR_ROOT)


class Call(NamedTuple):
    """What every rank's call of a collective must have alike."""

    kind: str
    root: int | None = None
    op: str | None = None      # a predefined op's name; "" for a user op


def _plain(info: Any) -> Any:
    """*info* with its NamedTuples (its ``_nested`` fields too) as plain tuples."""
    nested = getattr(info, "_nested", None)
    if nested is None:
        return tuple(info) if hasattr(info, "_fields") else info
    return tuple(tuple(x) if x is not None and f in nested else x
                 for f, x in zip(info._fields, info))


def _named(cls: Any, info: Any) -> Any:
    """A plain *info* as the NamedTuple *cls* again (its ``_nested`` fields too)."""
    if cls is None or info is None:
        return info
    nested = getattr(cls, "_nested", None)
    if nested is not None:
        info = [_new(nested[f], x) if x is not None and f in nested else x
                for f, x in zip(cls._fields, info)]
    return _new(cls, info)


#: Makes a NamedTuple of a tuple without its argument parsing (small collectives
#: make a few per call).
_new = tuple.__new__


class Agreed(NamedTuple):
    """One rank's part of a collective's agreement, as `Collectives.agree` returns it."""

    info: Any
    payload: bytes | None           # the rank's data, when it came inline


class BcastInfo(NamedTuple):
    """A rank's Bcast buffer."""

    nbytes: int
    addr: int
    copied: tuple = ()      # its copies' timings in the last shared copy (`SharedCopies`)


class RootBuffer(NamedTuple):
    """The root's whole buffer of a Gather (receive) or Scatter (send): its
    blocks, one per rank (counts and displs None: equal blocks)."""

    size: int                           # in elements
    dtype: str
    addr: int
    counts: list[int] | None
    displs: list[int] | None


class GatherInfo(NamedTuple):
    """A rank's Gather block, and at the root its receive buffer."""

    size: int                           # elements sent
    dtype: str
    addr: int
    recv: RootBuffer | None          # the root's only


# Which fields hold NamedTuples (see `_plain`), read only: a class attribute set here,
# as a NamedTuple's body would make a name starting with _ a field (for mypy).
GatherInfo._nested = {"recv": RootBuffer}  # type: ignore[attr-defined]  # not a field


class ScatterInfo(NamedTuple):
    """A rank's Scatter receive buffer (None in place at the root), and the root's send buffer."""

    size: int | None                 # elements received
    dtype: str | None
    send: RootBuffer | None          # the root's only


ScatterInfo._nested = {"send": RootBuffer}  # type: ignore[attr-defined]  # not a field


class AllgatherInfo(NamedTuple):
    """A rank's Allgather block and the layout of its receive buffer."""

    size: int                           # elements sent
    dtype: str
    recv_addr: int
    displs: list[int]                   # where each rank's block goes, in elements
    counts: list[int]


class AlltoallInfo(NamedTuple):
    """A rank's Alltoall dtype, receive buffer address, and block layouts (in elements)."""

    dtype: str
    recv_addr: int
    recv_counts: list[int]
    recv_displs: list[int]
    send_counts: list[int]
    send_displs: list[int]


class ReduceInfo(NamedTuple):
    """A rank's reduction input and receive buffer (None where it has none)."""

    size: int                           # elements of the input
    dtype: str
    addr: int
    recv_size: int | None
    recv_addr: int | None


def _call(kind: str, root=None, op=None) -> Call:
    return Call(kind, root if isinstance(root, int) else None,
                None if op is None else _ops.predefined_name(op))


def _disagreement(calls: Sequence[Call | None], names) -> tuple[str, int]:
    """The message and error class of ranks calling different collectives."""
    def said(r: int, c: Call | None) -> str:
        text = f"rank {r}: {c.kind if c else '?'}"
        if c is not None and c.root is not None:
            text += f" root {c.root}"
        if c is not None and c.op is not None:
            text += f" op {c.op or 'user'}"
        return text

    listed = ", ".join(said(r, c) for r, c in enumerate(calls))
    kinds = {c.kind if c else None for c in calls}
    if len(kinds) > 1:
        return f"ranks call different collectives ({listed})", names.ERR_OTHER
    if len({c.root if c else None for c in calls}) > 1:     # (no None: the kinds agree)
        return f"ranks name different roots ({listed})", names.ERR_ROOT
    return f"ranks name different ops ({listed})", names.ERR_OP


def _per_rank(n: int, size: int) -> int:
    """Elements per rank of a buffer of *n* shared by *size* ranks (checked as mpi4py does)."""
    if n % size:
        raise ValueError(f"message: cannot infer count, number of entries {n} is not a "
                         f"multiple of required number {size}")
    return n // size


@serialized
def bcast(c: Collectives, spec, root: int) -> None:
    def parse():
        _check_root(c, root)
        return flat(spec, c.rank != root)     # the root's buffer is only read

    f, err = _guard(parse)
    a: _np.ndarray = f.array if f else None  # type: ignore[assignment]  # None: agree() raises
    me = c.rank
    info = None if a is None else BcastInfo(a.nbytes, addr(a), c.copies.report())
    records = c.agree(err, info, _payload(c, a) if me == root else None, inline=me == root,
                      call=_call("bcast", root))
    c.copies.learn([r.info.copied for r in records])
    nbytes = [r.info.nbytes for r in records]
    if len(set(nbytes)) != 1:
        raise c.mismatch(f"Bcast buffer sizes differ across ranks: {nbytes}")
    n, raddr, payload = records[root].info.nbytes, records[root].info.addr, records[root].payload
    if payload is not None:
        if me != root:
            a.view(_np.uint8)[...] = _np.frombuffer(payload, _np.uint8)
            f.finish()
        return
    # Between two ranks the root, idle otherwise, writes the tail while the
    # peer reads the head, in parts that end together; with more ranks every
    # peer reads it all.
    head = c.copies.reader_part(n) if c.size == 2 else n
    start = _clock()
    if me != root:
        c.read(root, raddr, a.view(_np.uint8)[:head])
        if c.size == 2:
            c.copies.timed("read", head, _clock() - start)
    elif c.size == 2:
        peer = 1 - root
        c.write(peer, a.view(_np.uint8)[head:], records[peer].info.addr + head)
        c.copies.timed("write", n - head, _clock() - start)
    c.barrier()               # every copy into every buffer has landed
    if me != root:
        f.finish()


@serialized
def gather(c: Collectives, sendspec, recvspec, root: int, vector_spec: bool = False) -> None:
    """Gather (and Gatherv when *vector_spec*): ranks push their block into the root."""
    names, me, size = c.names, c.rank, c.size
    # A root sending None sends in place, as with mpi4py.
    in_place = sendspec is names.IN_PLACE or (sendspec is None and me == root)

    def parse():
        _check_root(c, root)
        if in_place and me != root:
            raise ValueError("IN_PLACE is only valid at the root")
        recv = None
        cnts = dsps = None
        if me == root:
            if vector_spec:
                recv, cnts, dsps = vector(recvspec, size, True)
            else:
                recv = flat(recvspec, True, size)
                _per_rank(recv.array.size, size)
        send = None if in_place else flat(sendspec, False)
        return send, recv, cnts, dsps

    got, err = _guard(parse)
    send, recv, cnts, dsps = got if got else (None, None, None, None)
    if in_place and me == root and recv is not None:
        k = recv.array.size // size if cnts is None else cnts[me]
        sarr = recv.array[(dsps[me] if dsps else me * k):][:k]
    else:
        sarr = send.array if send is not None else None
    info = None
    if err is None:
        info = GatherInfo(sarr.size, sarr.dtype.str, addr(sarr),
                          None if recv is None else
                          RootBuffer(recv.array.size, recv.array.dtype.str, addr(recv.array),
                                     cnts, dsps))
    records = c.agree(err, info, _payload(c, sarr), inline=True,
                      call=_call("gatherv" if vector_spec else "gather", root))
    rinfo = records[root].info.recv
    rsize, raddr, cnts, dsps = rinfo.size, rinfo.addr, rinfo.counts, rinfo.displs
    dtype = _np.dtype(records[root].info.dtype)
    if cnts is None:
        k = records[root].info.size
        cnts, dsps = [k] * size, [r * k for r in range(size)]
    sizes = [r.info.size for r in records]
    if sizes != list(cnts) or any(r.info.dtype != dtype.str for r in records):
        # A block longer than its slot at the root: MPI's truncation error.
        longer = any(s > k for s, k in zip(sizes, cnts))
        raise c.mismatch(f"Gather blocks differ from the root's: sent {sizes}, expected {cnts}",
                         names.ERR_TRUNCATE if longer else None)
    if max(d + k for d, k in zip(dsps, cnts)) > rsize:
        raise c.mismatch(f"Gather: the root's receive buffer holds {rsize} elements, "
                         f"the blocks need {max(d + k for d, k in zip(dsps, cnts))}",
                         names.ERR_TRUNCATE)
    isz = dtype.itemsize
    any_cma = any(r.payload is None for r in records)
    if me == root:
        out = recv.array  # type: ignore[union-attr]  # the root's (else agree() raised)
        for r, rec in enumerate(records):
            if r == me:
                if not in_place:
                    out[dsps[r] : dsps[r] + cnts[r]] = sarr
            elif rec.payload is not None:
                out[dsps[r] : dsps[r] + cnts[r]] = _from(rec.payload, dtype)
    elif records[me].payload is None:
        c.write(root, sarr, raddr + dsps[me] * isz)
    if any_cma:
        c.barrier()
    if me == root:
        recv.finish()  # type: ignore[union-attr]  # the root's (else agree() raised)


@serialized
def scatter(c: Collectives, sendspec, recvspec, root: int, vector_spec: bool = False) -> None:
    """Scatter (and Scatterv): ranks pull their block from the root."""
    names, me, size = c.names, c.rank, c.size
    in_place = recvspec is names.IN_PLACE or (recvspec is None and me == root)

    def parse():
        _check_root(c, root)
        if in_place and me != root:
            raise ValueError("IN_PLACE is only valid at the root")
        send = cnts = dsps = None
        if me == root:
            if vector_spec:
                send, cnts, dsps = vector(sendspec, size, False)
            else:
                send = flat(sendspec, False, size)
                _per_rank(send.array.size, size)
        recv = None if in_place else flat(recvspec, True)
        return send, recv, cnts, dsps

    got, err = _guard(parse)
    send, recv, cnts, dsps = got if got else (None, None, None, None)
    info = None
    if err is None:
        rarr = recv.array if recv is not None else None
        info = ScatterInfo(None if rarr is None else rarr.size,
                           None if rarr is None else rarr.dtype.str,
                           None if send is None else
                           RootBuffer(send.array.size, send.array.dtype.str,
                                      addr(send.array), cnts, dsps))
    payload = _payload(c, send.array) if send is not None else None
    records = c.agree(err, info, payload, inline=me == root,
                      call=_call("scatterv" if vector_spec else "scatter", root))
    sinfo = records[root].info.send
    ssize, sdtype, saddr, cnts, dsps = \
        sinfo.size, sinfo.dtype, sinfo.addr, sinfo.counts, sinfo.displs
    dtype = _np.dtype(sdtype)
    if cnts is None:
        k = ssize // size
        cnts, dsps = [k] * size, [r * k for r in range(size)]
    for r, rec in enumerate(records):
        if rec.info.size is not None and rec.info.size != cnts[r]:
            # Shorter: MPI's truncation; longer: the signatures differ (erroneous, and
            # with 3 ranks or more MPICH then delivers the wrong elements).
            raise c.mismatch(f"Scatter: rank {r} receives {rec.info.size} elements, "
                             f"the root sends it {cnts[r]}",
                             names.ERR_TRUNCATE if rec.info.size < cnts[r] else None)
    if me == root and in_place:
        pass
    # Below, *recv* is not None (only an in-place root has none), nor the root's *send*.
    elif records[root].payload is not None:
        src = _from(records[root].payload, dtype)  # type: ignore[arg-type]  # elif: not None
        recv.array[: cnts[me]] = (  # type: ignore[union-attr]  # not in place: has one
            src[dsps[me] : dsps[me] + cnts[me]])
    elif me == root:
        recv.array[: cnts[me]] = send.array[  # type: ignore[union-attr]  # root: has both
            dsps[me] : dsps[me] + cnts[me]]
    else:
        c.read(root, saddr + dsps[me] * dtype.itemsize,
               recv.array[: cnts[me]])  # type: ignore[union-attr]  # not in place: has one
    if records[root].payload is None:
        c.barrier()
    if recv is not None:
        recv.finish()


@serialized
def allgather(c: Collectives, sendspec, recvspec, vector_spec: bool = False) -> None:
    """Allgather (and Allgatherv): every rank pushes its block to every other."""
    names, me, size = c.names, c.rank, c.size
    in_place = sendspec is names.IN_PLACE or sendspec is None

    def parse():
        if vector_spec:
            recv, cnts, dsps = vector(recvspec, size, True)
        else:
            recv = flat(recvspec, True, size)
            k = _per_rank(recv.array.size, size)
            cnts, dsps = [k] * size, [r * k for r in range(size)]
        send = recv.array[dsps[me]:dsps[me] + cnts[me]] if in_place else flat(sendspec, False).array
        return recv, send, cnts, dsps

    got, err = _guard(parse)
    recv: Flat
    send: _np.ndarray
    cnts: list[int]
    dsps: list[int]
    recv, send, cnts, dsps = \
        got if got else (None, None, None, None)  # type: ignore[assignment]  # None: agree() raises
    info = None if err else AllgatherInfo(send.size, send.dtype.str, addr(recv.array), dsps, cnts)
    records = c.agree(err, info, _payload(c, send), inline=True,
                      call=_call("allgatherv" if vector_spec else "allgather"))
    # Judge from the records alone, so that every rank reaches the same verdict.
    sizes = [r.info.size for r in records]
    layouts = {(tuple(r.info.counts), tuple(r.info.displs)) for r in records}
    if len(layouts) != 1 or sizes != list(records[0].info.counts) or \
            len({r.info.dtype for r in records}) != 1:
        raise c.mismatch(f"Allgather: blocks {sizes} do not fit the receive layouts "
                         f"{sorted(layouts)}")
    out = recv.array
    isz = out.dtype.itemsize
    if not in_place:
        out[dsps[me] : dsps[me] + cnts[me]] = send
    for r, rec in enumerate(records):
        if r != me and rec.payload is not None:
            out[dsps[r] : dsps[r] + cnts[r]] = _from(rec.payload, out.dtype)
    if records[me].payload is None:
        for r in range(size):
            if r != me:
                c.write(r, send, records[r].info.recv_addr + records[r].info.displs[me] * isz)
    if any(rec.payload is None for rec in records):
        c.barrier()
    recv.finish()


@serialized
def alltoall(c: Collectives, sendspec, recvspec, vector_spec: bool = False) -> None:
    """Alltoall (and Alltoallv): block j of my send buffer goes to rank j."""
    names, me, size = c.names, c.rank, c.size
    in_place = sendspec is names.IN_PLACE

    def parse():
        if vector_spec:
            recv, rc, rd = vector(recvspec, size, True)
            if in_place:
                send, sc, sd = Flat(recv.array.copy()), rc, rd
            else:
                send, sc, sd = vector(sendspec, size, False)
        else:
            recv = flat(recvspec, True, size)
            k = _per_rank(recv.array.size, size)
            rc, rd = [k] * size, [r * k for r in range(size)]
            send = Flat(recv.array.copy()) if in_place else flat(sendspec, False, size)
            ks = _per_rank(send.array.size, size)
            sc, sd = [ks] * size, [r * ks for r in range(size)]
        return recv, send, rc, rd, sc, sd

    got, err = _guard(parse)
    recv: Flat
    send: Flat
    rc: list[int]
    rd: list[int]
    sc: list[int]
    sd: list[int]
    recv, send, rc, rd, sc, sd = \
        got if got else (None,) * 6  # type: ignore[assignment]  # None: agree() raises
    info = None if err else AlltoallInfo(send.array.dtype.str, addr(recv.array), rc, rd, sc, sd)
    records = c.agree(err, info, _payload(c, send.array) if send else None, inline=True,
                      call=_call("alltoallv" if vector_spec else "alltoall"))
    for r, rec in enumerate(records):        # every pair, on every rank
        for j in range(size):
            to = records[j].info
            if rec.info.send_counts[j] != to.recv_counts[r] or rec.info.dtype != to.dtype:
                raise c.mismatch(f"Alltoall: rank {r} sends {rec.info.send_counts[j]} elements "
                                 f"to rank {j}, which expects {to.recv_counts[r]}")
    out = recv.array
    isz = out.dtype.itemsize
    out[rd[me] : rd[me] + rc[me]] = send.array[sd[me] : sd[me] + sc[me]]
    for r, rec in enumerate(records):
        if r != me and rec.payload is not None:
            src = _from(rec.payload, out.dtype)
            at = rec.info.send_displs[me]
            out[rd[r] : rd[r] + rc[r]] = src[at : at + rc[r]]
    if records[me].payload is None:
        for r in range(size):
            if r != me:
                raddr, rdr = records[r].info.recv_addr, records[r].info.recv_displs
                c.write(r, send.array[sd[r] : sd[r] + sc[r]], raddr + rdr[me] * isz)
    if any(rec.payload is None for rec in records):
        c.barrier()
    recv.finish()


# -- reductions -------------------------------------------------------------------------------

def _fold(combine, parts: Sequence[_np.ndarray], out: _np.ndarray) -> None:
    """out = parts[0] op parts[1] op ... op parts[-1], evaluated right to left so
    that non-commutative ops keep rank order."""
    _np.copyto(out, parts[-1])
    for x in reversed(parts[:-1]):
        combine(x, out)


def _split(n: int, size: int) -> list[int]:
    """Slice bounds giving each rank a nearly equal share of *n* elements."""
    base, extra = divmod(n, size)
    bounds = [0]
    for r in range(size):
        bounds.append(bounds[-1] + base + (1 if r < extra else 0))
    return bounds


@serialized
def reduce_family(c: Collectives, kind: str, sendspec, recvspec, op, root: int = 0,
                  recvcounts=None) -> None:
    """Allreduce, Reduce, Reduce_scatter(_block), Scan and Exscan."""
    names, me, size = c.names, c.rank, c.size
    in_place = sendspec is names.IN_PLACE

    def parse():
        if kind == "reduce":
            _check_root(c, root)
        recv = None
        if kind != "reduce" or me == root:
            recv = flat(recvspec, True)
        if in_place:
            if recv is None:
                raise ValueError("IN_PLACE is only valid at the root")
            copied = ("reduce_scatter_block", "reduce_scatter", "scan", "exscan")
            x = recv.array.copy() if kind in copied else recv.array
        else:
            x = flat(sendspec, False).array
            if recv is not None:        # checked locally, as mpi4py does
                if recv.array.dtype != x.dtype:
                    raise ValueError("mismatch in send and receive MPI datatypes")
                want = {"reduce_scatter_block": x.size // max(size, 1),
                        "reduce_scatter": None}.get(kind, x.size)
                if want is not None and recv.array.size != want:
                    raise ValueError(f"mismatch in send count {x.size} and receive "
                                     f"count {recv.array.size}")
        if kind == "reduce_scatter_block":
            _per_rank(x.size, size)
        elif kind == "reduce_scatter" and recvcounts is not None:
            if len(recvcounts) != size:
                raise ValueError(f"expecting {size} items, got {len(recvcounts)}")
            if sum(recvcounts) != x.size:
                raise ValueError(f"mismatch in send count {x.size} and sum(counts) "
                                 f"{sum(recvcounts)}")
            if recv is not None and not in_place and recv.array.size != recvcounts[me]:
                raise ValueError(f"mismatch in receive count {recv.array.size} and "
                                 f"counts[{me}] {recvcounts[me]}")
        try:
            combine = _ops.combiner(op, x.dtype)
        except TypeError as exc:
            if not isinstance(op, names.Op):
                raise   # not an operation at all: mpi4py's TypeError
            raise _noted(names.Exception(names.ERR_OP), f"cmampi: {exc}") from None
        if x.size:
            probe = x[:1].copy()
            combine(x[:1], probe)   # undefined op/dtype pairs fail here, before any copy
        return recv, x, combine

    got, err = _guard(parse)
    x: _np.ndarray
    recv, x, combine = \
        got if got else (None, None, None)  # type: ignore[assignment]  # None: agree() raises
    info = None
    if err is None:
        info = ReduceInfo(x.size, x.dtype.str, addr(x),
                          None if recv is None else recv.array.size,
                          None if recv is None else addr(recv.array))
    records = c.agree(err, info, _payload(c, x), inline=True,
                      call=_call(kind, root if kind == "reduce" else None, op))
    sizes = [r.info.size for r in records]
    dtypes = {r.info.dtype for r in records}
    if len(set(sizes)) != 1 or len(dtypes) != 1:
        raise c.mismatch(f"reduction inputs differ across ranks: sizes {sizes}, "
                         f"dtypes {sorted(dtypes)}")
    n = sizes[0]
    # What each rank produces: [lo, hi) of the input vector.
    if kind in ("allreduce", "reduce", "scan", "exscan"):
        mine = (0, n)
        for r, rec in enumerate(records):   # every rank checks every rank's buffer
            if rec.info.recv_size is not None and rec.info.recv_size < n:
                raise c.mismatch(f"rank {r}'s receive buffer holds {rec.info.recv_size} elements, "
                                 f"need {n}")
    else:
        counts = recvcounts
        if kind == "reduce_scatter_block":
            if n % size:
                raise c.mismatch(f"Reduce_scatter_block: {n} elements do not split in {size}")
            counts = [n // size] * size
        elif counts is None:
            counts = [r.info.recv_size for r in records]
        counts = [int(k) for k in counts]
        if len(counts) != size or sum(counts) != n:
            raise c.mismatch(f"Reduce_scatter counts {counts} do not add up to {n}")
        offs = [0]
        for k in counts:
            offs.append(offs[-1] + k)
        mine = (offs[me], offs[me + 1])
        for r, rec in enumerate(records):
            if rec.info.recv_size < counts[r]:
                raise c.mismatch(f"rank {r}'s receive buffer holds {rec.info.recv_size} elements, "
                                 f"need {counts[r]}")
    ranks = {"scan": range(me + 1), "exscan": range(me)}.get(kind, range(size))
    if all(rec.payload is not None for rec in records):
        # Everything came inline: compute our part locally.
        lo, hi = mine
        if kind == "exscan" and me == 0:
            return
        if kind == "reduce" and me != root:
            return
        parts = [_from(records[s].payload, x.dtype)[lo:hi]  # type: ignore[arg-type]  # all inline
                 for s in ranks]
        out = recv.array[: hi - lo]  # type: ignore[union-attr]  # a Reduce's non-roots returned
        _fold(combine, parts, out)
        recv.finish()  # type: ignore[union-attr]  # a Reduce's non-roots returned
        return
    _reduce_cma(c, kind, records, x, recv, combine, mine, list(ranks), root, op)
    c.barrier()
    if recv is not None:
        recv.finish()


def _reduce_cma(c: Collectives, kind, records, x, recv, combine, mine, ranks, root,
                op) -> None:
    me, size = c.rank, c.size
    dtype = x.dtype
    isz = dtype.itemsize
    per = max(1, PIECE // isz)
    if kind in ("allreduce", "reduce"):
        # Every rank reduces one slice and sends the result where it belongs.
        bounds = _split(x.size, size)
        lo, hi = bounds[me], bounds[me + 1]
        targets = [r for r in range(size) if r != me] if kind == "allreduce" else \
            ([root] if root != me else [])
        keep = kind == "allreduce" or me == root
    else:
        lo, hi = mine
        targets, keep = [], True
        if kind == "exscan" and me == 0:
            return
    acc_buf = _np.empty(per, dtype=dtype)
    tmp_buf = _np.empty(per, dtype=dtype)
    # None only where this rank keeps no result (a Reduce's non-root), which never uses it.
    out_base: _np.ndarray = \
        recv.array if recv is not None else None  # type: ignore[assignment]  # unused if None
    shift = lo if kind in ("reduce_scatter_block", "reduce_scatter") else 0
    fused = _ops.combiner_out(op, dtype) if len(ranks) == 2 and me in ranks and keep else None
    for o in range(lo, hi, per):
        e = min(o + per, hi)
        m = e - o
        acc, tmp = acc_buf[:m], tmp_buf[:m]
        if fused is not None:
            # Two inputs, one ours: pull the other and combine straight into the
            # result, while the pulled piece is still in cache.
            other = ranks[0] if ranks[1] == me else ranks[1]
            c.read(other, records[other].info.addr + o * isz, tmp)
            acc = out_base[o - shift : e - shift]
            a, b = (tmp, x[o:e]) if other < me else (x[o:e], tmp)
            fused(a, b, acc)
        else:
            last = ranks[-1]
            if last == me:
                _np.copyto(acc, x[o:e])
            else:
                c.read(last, records[last].info.addr + o * isz, acc)
            for s in reversed(ranks[:-1]):
                if s == me:
                    combine(x[o:e], acc)
                else:
                    c.read(s, records[s].info.addr + o * isz, tmp)
                    combine(tmp, acc)
            if keep:
                out_base[o - shift : e - shift] = acc
        for t in targets:
            c.write(t, acc, records[t].info.recv_addr + o * isz)
