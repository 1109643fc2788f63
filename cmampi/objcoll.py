"""mpi4py's lowercase collectives on Python objects, large buffers pulled single-copy.

Every rank pickles its contribution (one object, or one per destination for
``scatter`` and ``alltoall``) with `objects.Packed`, keeping large buffers out
of band, and the ranks exchange small records: the pickle stream itself when it
is short, else its address, plus the addresses of the out-of-band buffers.
Each rank then pulls exactly the objects its result needs, straight into fresh
arrays; a closing barrier, only when anything was left out of band, keeps
every owner's memory alive until all readers are done. A pickling error on any
rank is raised on every rank; nobody is left waiting.
"""

from __future__ import annotations

import itertools as _itertools
import pickle as _pickle
import struct as _struct
from collections.abc import Callable, Sequence
from typing import Any

import numpy as _np

from . import _cma, _fastpath
from . import coll as _coll
from . import p2p as _p2p
from ._buffers import address
from ._serial import serialized
from ._tuning import OBJECT_MEDIUM, OBJECT_SLOT, STREAM_INLINE
from ._userpickle import DUMPS as _DUMPS
from ._watch import site as _site
from .objects import DECLINED, OOB_MIN, Packed, pull_object

__all__ = ["DECLINED", "KINDS", "SLOT", "SLOT_KINDS", "collective", "slotted"]


#: The collectives, and whether they take a root.
KINDS = {"bcast": True, "scatter": True, "gather": True, "reduce": True,
         "allgather": False, "alltoall": False, "allreduce": False, "scan": False,
         "exscan": False}


#: Bytes of each rank's slot in `slotted`: a flag, then a short pickle (unpickling
#: stops at its end: the rest of the slot is ignored), or the length of a medium
#: one (up to `MEDIUM` bytes), which a second collective moves.
SLOT = OBJECT_SLOT
MEDIUM = OBJECT_MEDIUM
_EMPTY = bytes(SLOT)
_HELD = b"\x01"   # a slot's flag when it holds a pickle
_MEDIUM = 2       # ... when it holds a medium one's length
_HELD_MORE = 3    # ... when it holds a pickle, in a row (scatter, alltoall) with medium ones
_LENGTH = _struct.Struct("=q")
_INT_MAX = 2**31 - 1


class _Long(Exception):
    """A buffer too long for a slot: stop pickling."""


def _short_buffer(pb: _pickle.PickleBuffer) -> bool:
    """Keep a buffer in the stream if it may fit a slot; else stop (a buffer
    mpi4py could not take as it is stops too: the full path decides)."""
    if pb.raw().nbytes > SLOT:
        raise _Long
    return True


def _slot(obj: Any, pickled: list | None = None, medium: list | None = None) -> bytes:
    """*obj*'s slot: its pickle if short; with *medium* given, a medium pickle's
    length (*medium* takes the pickle); else empty (also if it does not pickle:
    the full path raises that on every rank). A pickle too long goes to
    *pickled*, if given: every buffer is in band in it, as the full path pickles
    it, which takes it."""
    try:
        stream = _DUMPS[0](obj, 5, buffer_callback=_short_buffer)
    except Exception:  # noqa: BLE001 - see above
        return _EMPTY
    n = len(stream)
    if n >= SLOT:
        if medium is not None and n <= MEDIUM:
            medium.append(stream)
            return bytes((_MEDIUM,)) + _LENGTH.pack(n) + _EMPTY[1 + _LENGTH.size :]
        if pickled is not None:
            pickled.append(stream)
        return _EMPTY
    return _HELD + stream + _EMPTY[n + 1 :]


def _row(obj: Any, size: int, streams: list | None) -> bytes:
    """The slots of *obj*'s items, one per rank (``scatter``, ``alltoall``): all
    empty unless every item is short or medium (with *streams* given, which
    takes each item's medium pickle or None; the short ones' flags then say
    that medium ones follow) and there are *size* of them."""
    if streams is not None:
        streams[:] = [None] * size
    if obj is None:
        return _slot(None) * size       # as mpi4py
    if (type(obj) is not list and type(obj) is not tuple) or len(obj) != size:
        return _EMPTY * size    # the full path takes it (an iterator can only be read once)
    slots = []
    for r, x in enumerate(tuple(obj)):      # a copy: pickling may change a list
        medium: list | None = None if streams is None else []
        slots.append(_slot(x, None, medium))
        if medium:
            streams[r] = medium[0]      # type: ignore[index]  # medium is a list: streams is
    row = b"".join(slots)
    if 0 in row[::SLOT]:                # the flags: every SLOT-th byte
        return _EMPTY * size
    if streams is not None and any(streams):
        return b"".join(bytes((_HELD_MORE,)) + s[1:] if s[0] == _HELD[0] else s for s in slots)
    return row


def _takes_medium(size: int) -> bool:
    """Whether a second collective's counts take *size* medium pickles."""
    return size * MEDIUM <= _INT_MAX


def _length(slots: bytearray, r: int) -> int:
    """The length of the medium pickle slot *r* announces, or 0."""
    return _LENGTH.unpack_from(slots, r * SLOT + 1)[0] if slots[r * SLOT] == _MEDIUM else 0


def _places(counts: list[int]) -> list[int]:
    return [0, *_itertools.accumulate(counts[:-1])]


def _objects(slots: bytearray, count: int, data: bytearray, displs: list[int]) -> list:
    """The objects of the first *count* slots, medium ones unpickled from *data*."""
    view = memoryview(data)
    return [_pickle.loads(view[displs[r] : displs[r] + _length(slots, r)])
            if slots[r * SLOT] == _MEDIUM else _unslot(slots, r) for r in range(count)]


def _unslot(slots: bytearray, r: int) -> Any:
    return _pickle.loads(slots[r * SLOT + 1 : (r + 1) * SLOT])


def _all_objects(plain, byte, obj: Any, size: int, count: int, pickled: list) -> list | None:
    """The objects of the first *count* ranks, every rank's slot gathered
    everywhere (medium pickles by a second collective); None if a slot is empty."""
    mine: list = []
    slots = bytearray(SLOT * size)
    plain.Allgather([_slot(obj, pickled, mine if _takes_medium(size) else None), byte],
                    [slots, byte])
    flags = slots[::SLOT]
    if 0 in flags:
        pickled.extend(mine)    # the full path sends it as it is
        return None
    if _MEDIUM not in flags:
        return [_unslot(slots, r) for r in range(count)]
    lens = [_length(slots, r) for r in range(size)]
    displs = _places(lens)
    data = bytearray(sum(lens))
    plain.Allgatherv([mine[0] if mine else b"", byte], [data, (lens, displs), byte])
    return _objects(slots, count, data, displs)


# The collectives in slots on mpi4py's communicator *plain* (*byte*: ``MPI.BYTE``):
# each the result, or `DECLINED` for the full path (see `slotted`).

def _bcast(plain, byte, obj, root, op, me, size, partial, pickled, side) -> Any:
    mine: list = []
    slot = bytearray(_slot(obj, pickled, mine if _takes_medium(size) else None)) \
        if me == root else bytearray(SLOT)
    plain.Bcast([slot, byte], root)
    if slot[0] == _MEDIUM:
        data = mine[0] if me == root else bytearray(_length(slot, 0))
        plain.Bcast([data, byte], root)
        return _pickle.loads(data)
    return _unslot(slot, 0) if slot[0] else DECLINED


def _packed(streams: list) -> tuple[bytes, list[int], list[int]]:
    """A row's medium pickles (None where none) in one buffer, their counts and places."""
    counts = [len(s) if s else 0 for s in streams]
    return b"".join(s for s in streams if s), counts, _places(counts)


def _scatter(plain, byte, obj, root, op, me, size, partial, pickled, side) -> Any:
    streams: list | None = [] if _takes_medium(size) else None
    slot = bytearray(SLOT)
    plain.Scatter([_row(obj, size, streams), byte] if me == root else None, [slot, byte], root)
    if slot[0] == _MEDIUM or slot[0] == _HELD_MORE:
        data = bytearray(_length(slot, 0))
        if me == root:
            out, counts, displs = _packed(streams)  # type: ignore[arg-type]  # set by _row
            plain.Scatterv([out, (counts, displs), byte], [data, byte], root)
        else:
            plain.Scatterv(None, [data, byte], root)
        return _objects(slot, 1, data, [0])[0]
    return _unslot(slot, 0) if slot[0] else DECLINED


def _alltoall(plain, byte, obj, root, op, me, size, partial, pickled, side) -> Any:
    streams: list | None = [] if _takes_medium(size) else None
    slots = bytearray(SLOT * size)
    plain.Alltoall([_row(obj, size, streams), byte], [slots, byte])
    flags = slots[::SLOT]
    if 0 in flags:
        return DECLINED
    if _MEDIUM in flags or _HELD_MORE in flags:
        out, counts, displs = _packed(streams)  # type: ignore[arg-type]  # set by _row
        lens = [_length(slots, r) for r in range(size)]
        places = _places(lens)
        data = bytearray(sum(lens))
        plain.Alltoallv([out, (counts, displs), byte], [data, (lens, places), byte])
        return _objects(slots, size, data, places)
    return [_unslot(slots, r) for r in range(size)]


def _at_root(plain, byte, obj, root, me, size, partial, pickled, side) -> Any:
    """gather and reduce: every rank's slot at the root alone; a rank whose slot
    announces a medium pickle sends it to the root next, point to point on the
    side space (*side*: its communicator and tag). The objects at the root (a
    list); None elsewhere, or `DECLINED` on a rank whose object is long, and at
    the root if any is (*partial* then holds each rank's object or `DECLINED`:
    the full path brings the long ones)."""
    mine: list = []
    slot = _slot(obj, pickled, mine if _takes_medium(size) else None)
    comm, tag = side
    if me != root:
        plain.Gather([slot, byte], None, root)
        if mine:
            comm.Send([mine[0], byte], root, tag)
        return None if slot[0] else DECLINED
    slots = bytearray(SLOT * size)
    plain.Gather([slot, byte], [slots, byte], root)
    data: dict[int, bytes | bytearray] = {}
    for r in range(size):       # every pickle sent is taken first
        if slots[r * SLOT] == _MEDIUM:
            if r == me:
                data[r] = mine[0]
            else:
                data[r] = bytearray(_length(slots, r))
                comm.Recv([data[r], byte], r, tag)
    got = [_pickle.loads(data[r]) if r in data else
           _unslot(slots, r) if slots[r * SLOT] else DECLINED for r in range(size)]
    if any(x is DECLINED for x in got):
        partial[:] = got
        return DECLINED
    return got


def _gather(plain, byte, obj, root, op, me, size, partial, pickled, side) -> Any:
    return _at_root(plain, byte, obj, root, me, size, partial, pickled, side)


def _reduce(plain, byte, obj, root, op, me, size, partial, pickled, side) -> Any:
    got = _at_root(plain, byte, obj, root, me, size, partial, pickled, side)
    return got if got is None or got is DECLINED else _fold(op, got)


def _allgather(plain, byte, obj, root, op, me, size, partial, pickled, side) -> Any:
    objs = _all_objects(plain, byte, obj, size, size, pickled)
    return DECLINED if objs is None else objs


def _allreduce(plain, byte, obj, root, op, me, size, partial, pickled, side) -> Any:
    objs = _all_objects(plain, byte, obj, size, size, pickled)
    return DECLINED if objs is None else _fold(op, objs)


def _scan(plain, byte, obj, root, op, me, size, partial, pickled, side) -> Any:
    objs = _all_objects(plain, byte, obj, size, me + 1, pickled)
    return DECLINED if objs is None else _fold(op, objs)


def _exscan(plain, byte, obj, root, op, me, size, partial, pickled, side) -> Any:
    objs = _all_objects(plain, byte, obj, size, me, pickled)
    if objs is None:
        return DECLINED
    return _fold(op, objs) if me else None


#: Lowercase collective -> its run in slots: ``slotted[kind](plain, byte, obj,
#: root, op, me, size, partial, pickled, side)`` is the result of the collective run as one MPI
#: collective of fixed-size slots on *plain* (mpi4py's communicator; *byte*:
#: ``MPI.BYTE``) when every object it moves pickles short; else `DECLINED`, and
#: every rank that needs the others' objects, told by the same collective, takes
#: the full path. ``bcast`` and ``scatter`` take the root's slots; ``alltoall``
#: each rank's row of them, a row left empty if any of its items is long, so that
#: every rank sees it; ``gather`` and ``reduce`` gather the slots at the root,
#: and only the ranks whose objects are long send them the full path's way
#: (`collective` with *partial*, the root's list); the others gather every rank's
#: slot everywhere, so that every rank knows whether all are short, and only the
#: ranks with a result unpickle. A rank's own *obj* (not a scatter's or an
#: alltoall's items) that pickles long leaves its pickle in the list *pickled*,
#: which the full path sends rather than pickle it again. Medium pickles (up to
#: `MEDIUM` bytes) travel in a second collective, the slots giving their lengths;
#: in gather and reduce, point to point to the root on *side* (a communicator and
#: a tag no other message there uses).
slotted: dict[str, Callable[..., Any]] = {
    "bcast": _bcast, "scatter": _scatter, "gather": _gather, "reduce": _reduce,
    "allgather": _allgather, "alltoall": _alltoall, "allreduce": _allreduce, "scan": _scan,
    "exscan": _exscan}
for _fn in (*slotted.values(), _at_root, _all_objects):
    _site(_fn)      # one MPI collective, no engine state (`_watch`)

#: The same, in one call of the compiled path (``_fastpath.c``, its twin):
#: ``fast.slots(plain, SLOT_KINDS[kind], obj, root, op, partial, pickled, *side)``.
SLOT_KINDS = {"bcast": _fastpath.BCAST, "scatter": _fastpath.SCATTER,
              "gather": _fastpath.GATHER, "reduce": _fastpath.REDUCE,
              "allgather": _fastpath.ALLGATHER, "alltoall": _fastpath.ALLTOALL,
              "allreduce": _fastpath.ALLREDUCE, "scan": _fastpath.SCAN,
              "exscan": _fastpath.EXSCAN}
_fastpath.register_slots(_pickle.loads, {"buffer_callback": _short_buffer}, SLOT,
                         DECLINED, MEDIUM)


def _record(p: Packed, oob: bool) -> tuple:
    """(inline stream or None, stream length, stream address, buffer spots)."""
    n = len(p.stream)
    if not oob or n <= STREAM_INLINE:
        return (p.stream, n, 0, p.spots())
    return (None, n, address(_np.frombuffer(p.stream, _np.uint8)), p.spots())


def _remote(record: Sequence[tuple] | None) -> bool:
    """Whether a rank's records leave anything in its memory for others to pull."""
    return bool(record and any(r[0] is None or r[3] for r in record))


def _fold(op: Callable[[Any, Any], Any], items: list[Any]) -> Any:
    """items[0] op items[1] op ... in rank order, as mpi4py's reductions do."""
    result = items[0]
    for item in items[1:]:
        result = op(result, item)
    return result


def _contribution(kind: str, obj: Any, me: int, root: int, size: int) -> list | None:
    """The objects this rank sends: one, one per rank, or none."""
    if kind in ("bcast", "scatter") and me != root:
        return None
    if kind in ("scatter", "alltoall"):
        items = [None] * size if obj is None else list(obj)   # as mpi4py
        if len(items) != size:
            raise ValueError(f"expecting {size} items, got {len(items)}")
        return items
    return [obj]


def _load(coll, rank: int, record: tuple) -> Any:
    """The object *record* describes, pulled from *rank*."""
    inline, n, saddr, spots = record
    pid = coll.pids[rank]
    stream = inline
    if stream is None:
        stream = bytearray(n)
        _cma.read_into(pid, address(_np.frombuffer(stream, _np.uint8)), saddr, n)
    return pull_object(pid, stream, spots)


@serialized
def collective(coll, kind: str, obj: Any, root: int = 0,
               op: Callable[[Any, Any], Any] | None = None, partial: list | None = None,
               pickled: bytes | None = None) -> Any:
    """Run the lowercase collective *kind* on *coll* (a `coll.Collectives`).
    *partial*: a gather or reduce in slots left the root these objects, `DECLINED`
    where they are long, which only their ranks send (`slotted`). *pickled*:
    *obj*'s pickle (every buffer in band), which the slots found too long."""
    me, size = coll.rank, coll.size
    if KINDS[kind] and not (isinstance(root, int) and 0 <= root < size):
        raise coll.names.Exception(coll.names.ERR_ROOT)
    oob = coll.all_cma
    packs: list[Packed] | None = None
    err = None
    try:
        items = _contribution(kind, obj, me, root, size)
        if items is not None:
            if pickled is not None and kind not in ("scatter", "alltoall"):
                packs = [Packed.pickled(pickled)]      # items is [obj]
            else:
                packs = [Packed(x, OOB_MIN if oob else None) for x in items]
    except Exception as exc:  # noqa: BLE001 - raised on every rank that needs the result
        err = exc
    mine = None if packs is None else [_record(p, oob) for p in packs]
    if kind in ("bcast", "scatter"):
        got = [_from_root(coll, kind, err, packs, mine, root)]
    elif kind in ("gather", "reduce"):
        got = _to_root(coll, err, packs, mine, root, partial)
    else:
        got = _among_all(coll, kind, err, packs, mine)
    return _result(kind, got, me, root, op)


def _from_root(coll, kind: str, err, packs, mine, root: int) -> Any:
    """bcast and scatter: the root sends each rank its record; readers ack."""
    me = coll.rank
    if me != root:
        err_rec, record = coll.recv_record(root)
        if err_rec is not None:
            raise coll.remote_error(*err_rec, rank=root)
        try:
            return _load(coll, root, record)
        finally:
            if _remote([record]):
                coll.ack(root)
    others = [r for r in range(coll.size) if r != root]
    err_rec = coll.error_record(err)
    pick = (lambda r: None) if mine is None else (
        (lambda r: mine[0]) if kind == "bcast" else (lambda r: mine[r]))
    handles = []
    if kind == "bcast" or mine is None:     # one record for everyone: pickled once
        framed = _coll.frame((err_rec, pick(root)))
        for r in others:
            handles += coll.isend_record(framed, r)
    else:
        for r in others:
            handles += coll.isend_record(_coll.frame((err_rec, pick(r))), r)
    _p2p.wait_handles(coll.e.ch, handles)
    if err is not None:
        raise err
    readers = [r for r in others if _remote([pick(r)])]  # type: ignore[list-item]  # err is None: mine is set
    try:
        return packs[0 if kind == "bcast" else me].copy()
    finally:
        coll.wait_acks(readers)     # our buffers stay put until they are read


def _to_root(coll, err, packs, mine, root: int, partial: list | None = None) -> list[Any]:
    """gather and reduce: every rank sends the root its record (only those
    *partial* marks `DECLINED`, if given); the root acks."""
    me = coll.rank
    err_rec = coll.error_record(err)
    if me != root:
        _p2p.wait_handles(coll.e.ch, coll.isend_record(_coll.frame((err_rec, mine)), root))
        if err is not None:
            raise err
        if _remote(mine):
            coll.wait_acks([root])
        return []
    records = {r: coll.recv_record(r) for r in range(coll.size)
               if r != root and (partial is None or partial[r] is DECLINED)}
    got = []
    try:
        if err is not None:
            raise err
        for r in range(coll.size):
            if partial is not None and partial[r] is not DECLINED:
                got.append(partial[r])      # short: in its slot
                continue
            if r == me:
                got.append(packs[0].copy())
                continue
            rec_err, rec = records[r]
            if rec_err is not None:
                raise coll.remote_error(*rec_err, rank=r)
            got.append(_load(coll, r, rec[0]))
    finally:
        for r, (_, rec) in records.items():
            if _remote(rec):
                coll.ack(r)
    return got


def _among_all(coll, kind: str, err, packs, mine) -> list[Any]:
    """allgather, alltoall, allreduce, scan, exscan: one exchange of records,
    then each rank pulls what it needs; a barrier closes it if anything was pulled."""
    me = coll.rank
    records = [r.info for r in coll.agree(err, mine)]
    got = []
    try:
        for r, i in _needed(kind, me, coll.size):
            got.append(packs[i].copy() if r == me else _load(coll, r, records[r][i]))
    finally:
        if any(_remote(rec) for rec in records):
            coll.barrier()      # owners keep their buffers until everyone has pulled
    return got


def _needed(kind: str, me: int, size: int) -> list[tuple]:
    """(rank, item index) of every object this rank's result is made of."""
    if kind in ("allgather", "allreduce"):
        return [(r, 0) for r in range(size)]
    if kind == "alltoall":
        return [(r, me) for r in range(size)]
    if kind == "scan":
        return [(r, 0) for r in range(me + 1)]
    if kind == "exscan":
        return [(r, 0) for r in range(me)]
    raise ValueError(kind)


def _result(kind: str, got: list[Any], me: int, root: int, op) -> Any:
    if kind in ("bcast", "scatter"):
        return got[0]
    if kind in ("gather", "reduce") and me != root:
        return None
    if kind in ("gather", "allgather", "alltoall"):
        return got
    if kind == "exscan" and me == 0:
        return None
    return _fold(op, got)
