"""Python objects: pickle protocol 5, with large buffers pulled out of band, single-copy.

An object is pickled with protocol 5. Contiguous buffers (numpy arrays,
bytearrays, ...) of at least ``P2P_OOB_MIN`` bytes (``OOB_MIN`` in collectives)
stay in the sender's memory: what travels is the pickle stream and their
addresses; the receiver pulls each buffer with
CMA straight into a fresh array, unpickles around them, and tells the sender it
is done, which is when the send completes. Small objects, and peers without
CMA, travel in band.
"""

from __future__ import annotations

import functools
import pickle as _pickle
from collections.abc import Callable, Sequence
from typing import Any

import numpy as _np

from . import _cma, _fastpath, _memory, _wire
from . import p2p as _p2p
from ._buffers import Layout, address, send_buffer
from ._serial import serialized, shared
from ._tuning import OOB_MIN, P2P_OOB_MIN
from ._userpickle import DUMPS as _DUMPS
from .channel import Completion
from .coop import CoopPull

__all__ = ["DECLINED", "OOB_MIN", "P2P_OOB_MIN", "PICKLED", "Packed", "finish_compiled",
           "finish_recv", "isend", "isend_pickled", "loads", "pickle_for", "pull_object", "recv",
           "send", "sendrecv"]

#: Where a buffer lives in its owner: (address, nbytes).
Spot = tuple[int, int]

#: What a compiled call of objects returns for a call it leaves to Python
#: (``Comm.recv``, `sendrecv`, the collectives in slots: `objcoll`).
DECLINED = object()


class Packed:
    """An object pickled with protocol 5, its large buffers left where they are.

    ``views`` keeps those buffers alive (and their owners from being freed)
    for as long as a peer may still read them.
    """

    __slots__ = ("stream", "views")

    def __init__(self, obj: Any, least: int | None) -> None:
        """Pickle *obj*, leaving out of band its buffers of *least* bytes or
        more (None: none)."""
        views: list[memoryview] = []

        def keep_out(pb: _pickle.PickleBuffer) -> bool:
            raw = _out_of_band(pb, least) if least is not None else None
            if raw is None:
                return True
            views.append(raw)
            return False

        self.stream = _DUMPS[0](obj, 5, buffer_callback=keep_out)
        self.views = views

    @classmethod
    def pickled(cls, stream: bytes) -> Packed:
        """An object pickled already, with nothing out of band."""
        self = cls.__new__(cls)
        self.stream, self.views = stream, []
        return self

    def snapshot(self) -> Packed:
        """The object as it is now: its out-of-band buffers copied (one copy each,
        still pulled single-copy by the receiver), so later changes do not travel."""
        self.views = [memoryview(_np.array(_np.frombuffer(v, _np.uint8)))  # type: ignore[arg-type]  # numpy stubs < 3.12
                      for v in self.views]
        return self

    def spots(self) -> list[Spot]:
        return [(address(_np.frombuffer(v, _np.uint8)), v.nbytes) for v in self.views]

    def copy(self) -> Any:
        """An independent copy of the object, from its own pickle."""
        return _pickle.loads(self.stream, buffers=[_np.array(v) for v in self.views])


def _out_of_band(pb: _pickle.PickleBuffer, least: int) -> memoryview | None:
    """The bytes of a buffer worth leaving out of band (*least* bytes or more);
    None for one that stays in the stream (small, or not contiguous)."""
    try:
        raw = pb.raw()
    except BufferError:
        return None
    return raw if raw.nbytes >= least else None


def pull_buffers(pid: int, spots: Sequence[Spot]) -> list[_np.ndarray]:
    """Out-of-band buffers pulled from process *pid*, in order."""
    buffers = []
    for addr, n in spots:
        arr = _memory.empty(n)
        if n:
            _cma.read_into(pid, address(arr), addr, n)
        buffers.append(arr)
    return buffers


def pull_object(pid: int, stream, spots: Sequence[Spot]) -> Any:
    """Unpickle *stream*, pulling its out-of-band buffers from process *pid*."""
    return _pickle.loads(stream, buffers=pull_buffers(pid, spots))


# -- point to point ------------------------------------------------------------------------

class _OutOfBand:
    """What travels when a point-to-point object has out-of-band buffers."""

    __slots__ = ("buffers", "helps", "stream", "xid")

    def __init__(self, stream: bytes, buffers: list[Spot], xid: int, helps: bool) -> None:
        self.stream = stream
        self.buffers = buffers      # (address, nbytes) in the sender
        self.xid = xid
        self.helps = helps          # the sender waits, and may write into the receiver

    def __reduce__(self):
        return (_OutOfBand, (self.stream, self.buffers, self.xid, self.helps))


#: Where a pickle of protocol 5 starts after its first frame's header, and what an
#: `_OutOfBand` record has there (its class): how a receive tells one without unpickling.
_FRAMED = 11
_MARK = (lambda p: p[_FRAMED : p.index(b"_OutOfBand") + len(b"_OutOfBand")])(
    _pickle.dumps(_OutOfBand(b"", [], 0, False), 5))


def in_band(engine: _p2p.Engine, record: bytes, source: int) -> bytes:
    """What mpi4py's ``send(obj)`` delivers to a buffer receive, for the *record*
    of an object whose buffers stayed with its sender: the buffers are pulled
    (which frees the sender), and the object pickled in band, with the pickle
    of the communicator's namespace (``MPI.pickle``)."""
    obj = _fetched(engine, _pickle.loads(record), source).load()
    return engine.names.pickle.dumps(obj)


#: How receives tell an `_OutOfBand` record (buffer receives, through p2p, too).
_RECORD = _p2p.RecordReader(_FRAMED, _MARK, in_band)
_p2p.RECORDS[:] = [_RECORD]


class _Pulled:
    """An object's stream and the out-of-band buffers pulled for it on arrival
    (or the error of the pull), until the receiver asks for the object."""

    __slots__ = ("buffers", "error", "stream")

    def __init__(self, stream: bytes, buffers: list[_np.ndarray],
                 error: BaseException | None) -> None:
        self.stream, self.buffers, self.error = stream, buffers, error

    def load(self) -> Any:
        """The object, or the pull's error raised."""
        if self.error is not None:
            raise self.error
        return _pickle.loads(self.stream, buffers=self.buffers)


class _TooBig(Exception):
    """A buffer worth sending out of band: stop pickling in band."""


def _in_band(pb: _pickle.PickleBuffer) -> bool:
    """Keep a buffer in the stream, unless it is one to leave out of band (as
    `_out_of_band` tells, inline: this runs for every buffer of every pickle)."""
    try:
        if pb.raw().nbytes < P2P_OOB_MIN:
            return True
    except BufferError:     # not contiguous: in band
        return True
    raise _TooBig


#: The callback `_pickled_in_band` uses: `_in_band`, or its compiled twin once
#: the compiled path loads (`_fastpath.register_in_band`).
_IN_BAND: list[Callable[[_pickle.PickleBuffer], bool]] = [_in_band]


def _pickled_in_band(obj: Any, oob: bool) -> bytes | None:
    """*obj*'s pickle if it has no buffer to leave out of band (*oob*: the peer
    may pull), else None."""
    try:
        return _DUMPS[0](obj, 5, buffer_callback=_IN_BAND[0] if oob else None)
    except _TooBig:
        return None


#: `_pickled_in_band`, or its compiled twin once the compiled path loads.
PICKLED: list[Callable[[Any, bool], bytes | None]] = [_pickled_in_band]


def pickle_for(engine: _p2p.Engine, obj: Any, dest: int) -> bytes | None:
    """*obj*'s pickle, everything in band, unless it has a buffer to leave out
    of band for *dest*: None (an object that does not pickle raises its error).
    Hot paths call ``PICKLED[0](obj, engine.cma[dest])`` themselves."""
    return PICKLED[0](obj, engine.cma[dest])


@serialized
def send(engine: _p2p.Engine, obj: Any, stream: bytes | None, dest: int, tag: int) -> None:
    """Blocking standard-mode send of *obj*, whose `pickle_for` is *stream*: a
    short pickle goes out as itself."""
    oob = engine.cma[dest]
    if stream is not None and len(stream) <= engine.limit:
        if shared():    # never block in the channel holding the engine's lock
            _p2p.wait_handles(engine.ch, [engine.ch.isend(stream, dest, tag)])
        else:
            engine.ch.send(stream, dest, tag)
        return
    packed = Packed.pickled(stream) if stream is not None else \
        Packed(obj, P2P_OOB_MIN if oob else None)
    op = _start(engine, packed, dest, tag, False, True)
    _p2p.wait_any([op])
    engine.complete(op)


@serialized
def isend(engine: _p2p.Engine, obj: Any, dest: int, tag: int, sync: bool,
          blocked: bool) -> _p2p.Op:
    """Start sending *obj* as it is now (as mpi4py, which pickles it at once); the
    op completes once the receiver has its buffers."""
    return _isend_pickled(engine, obj, pickle_for(engine, obj, dest), dest, tag, sync, blocked)


@serialized
def isend_pickled(engine: _p2p.Engine, obj: Any, stream: bytes | None, dest: int,
                  tag: int) -> _p2p.Op:
    """A standard-mode `isend` of *obj*, whose `pickle_for` is *stream*."""
    return _isend_pickled(engine, obj, stream, dest, tag, False, False)


def _isend_pickled(engine: _p2p.Engine, obj: Any, stream: bytes | None, dest: int, tag: int,
                   sync: bool, blocked: bool) -> _p2p.Op:
    """`isend` of *obj*, whose in-band pickle is *stream* (None: it has buffers to
    leave out of band)."""
    if stream is not None:
        if not sync and engine.raw(len(stream), dest, True):   # the common case
            return _p2p.SendOp(engine, engine.ch.isend(stream, dest, tag), stream)
        packed = Packed.pickled(stream)
    else:
        packed = Packed(obj, P2P_OOB_MIN)
        if not blocked:
            packed.snapshot()
    return _start(engine, packed, dest, tag, sync, blocked)


def _start(engine: _p2p.Engine, packed: Packed, dest: int, tag: int, sync: bool,
           blocked: bool) -> _p2p.Op:
    if not packed.views:
        return engine.isend(send_buffer(_np.frombuffer(packed.stream, _np.uint8)), dest, tag,
                            sync, blocked, announce=True)
    xid = engine.next_xid()
    op = _p2p.PullSendOp(engine, packed, dest, xid, base=0)   # posts the reply receive
    spots = packed.spots()
    helps = blocked and engine.helped[dest] and max(n for _, n in spots) >= engine.coop_min
    head = _pickle.dumps(_OutOfBand(packed.stream, spots, xid, helps), 5)   # see _MARK
    # Started, not waited for: a long head completes only once the receiver
    # matches it, and an isend must not wait for that.
    sent = engine.send_record(head, dest, tag, blocked)
    return _InTurn(engine, [sent, op])


@serialized
def sendrecv(engine: _p2p.Engine, obj: Any, stream: bytes | None, dest: int, sendtag: int,
             source: int, recvtag: int, status=None) -> tuple[Any, _p2p.Op | None]:
    """Send *obj*, whose `pickle_for` is *stream*, and receive an object in one
    call, where the compiled path (``sendrecv_object``, which ``Comm.sendrecv``
    tries first) declined: (the object, None) when the pickle is short, sent
    as itself while the receive blocks; else (None, the send's op, started),
    and the caller receives."""
    if stream is None or len(stream) > engine.limit:
        return None, _isend_pickled(engine, obj, stream, dest, sendtag, False, False)
    # (the compiled path would decline the receive alone too)
    sent = engine.ch.isend(stream, dest, sendtag)
    try:
        return recv(engine, source, recvtag, status), None
    finally:
        # eager: it completes whatever the receive did, mostly by now
        info = engine.ch.test(sent)
        if info is None:
            _p2p.wait_handles(engine.ch, [sent])
        elif info.error is not None:
            raise info.error


class _InTurn(_p2p.Op):
    """Done once each of *ops* is: their handles are waited for in turn."""

    __slots__ = ("ops",)
    sends = True

    def __init__(self, engine: _p2p.Engine, ops: list[_p2p.Op]) -> None:
        super().__init__(engine)
        self.ops = ops
        self._step()

    def _step(self) -> None:
        while self.ops and self.ops[0].done:
            op = self.ops.pop(0)
            if op.error is not None and self.error is None:
                self.error = op.error
            if op.error is not None:
                # What the later ops wait for cannot come now (the receiver never
                # got the record): they finish on their own, if ever, keeping
                # what the channel may still write to.
                _p2p.detach(self.ops)
                self.ops = []
        if self.ops:
            self.handle = self.ops[0].handle
        else:
            self.finish()

    def advance(self, info: Completion) -> None:
        self.ops[0].advance(info)
        self._step()


def finish_compiled(engine: _p2p.Engine, control: _wire.Control, status) -> Any:
    """The object of a blocking receive by the compiled path (``recv_object``,
    which ``Comm.recv`` calls) that took a control message."""
    src, tg, count = engine.fast.last()
    return finish_recv(engine, control, src, tg, count, status)


@serialized
def recv(engine: _p2p.Engine, source: int, tag: int, status=None) -> Any:
    """Blocking receive of an object."""
    # Other receives need progress while this waits; other threads must get in.
    if not engine.idle() or shared():
        op = engine.irecv(None, source, tag, landed)
        if not op.done:
            _p2p.wait_any([op])
        return _completed(engine, op, status)
    # The channel receives and unpickles in one call; a control message loads
    # as what it is.
    ch = engine.ch
    obj = ch.recv_object(source, tag)
    if type(obj) is not _wire.Control and status is None:
        return obj                  # the common case: nothing more to learn
    return finish_recv(engine, obj, *ch.last(), status)


def finish_recv(engine: _p2p.Engine, obj: Any, src: int, tg: int, count: int, status) -> Any:
    """The object of a blocking receive whose message (from *src*, with *tg*, of
    *count* bytes) loaded as *obj*: a control message acted on; *status* filled."""
    if type(obj) is _wire.Control:
        head = obj.head
        if _wire.kind(head) != _wire.RECORD:
            return _completed(engine, engine.control(head, None, src, tg), status)
        record = _wire.parse_record(head)
        obj, count = _pickle.loads(record), len(record)
    if status is not None:
        _p2p.fill_status(status, src, tg, count, None, engine.names)
    return _unpacked(engine, obj, src)


def _completed(engine: _p2p.Engine, op: _p2p.RecvOp, status) -> Any:
    """The object of a finished receive op, *status* filled."""
    op.decode = loads
    engine.complete(op, status)
    return op.result


def landed(op: _p2p.RecvOp) -> None:
    """On arrival of an object receive's message (in progress, whether or not
    anyone waits): pull its out-of-band buffers now and free the sender, which
    waits for that. The object itself is unpickled by `loads`, when asked for."""
    if op.buf is None or not op.nbytes or not _RECORD.marks(op.buf.array):
        return
    # cmampi's own record: its stream stays bytes
    head = _pickle.loads(op.buf.array)  # type: ignore[arg-type]  # numpy stubs < 3.12
    op.result = _fetched(op.engine, head, op.source)


def _fetched(engine: _p2p.Engine, head: _OutOfBand, source: int) -> _Pulled:
    """Pull the buffers *head* names from *source*, then reply to the sender: it
    holds its buffers until that reply, whatever happened here."""
    code, buffers, error = _wire.ACK_OK, [], None
    try:
        buffers = pull_buffers(engine.ch.pids[source], head.buffers)
    except BaseException as exc:    # noqa: BLE001 - any failure: the sender must hear of it
        code, error = _wire.ACK_FAILED, exc
    engine.ch.send_reply(bytes((code,)), source, head.xid)
    if error is not None and not isinstance(error, Exception):
        raise error                 # KeyboardInterrupt and the like: now, once replied
    return _Pulled(head.stream, buffers, error)


def loads(op: _p2p.RecvOp) -> Any:
    """The object a finished receive holds (its out-of-band buffers pulled on arrival)."""
    if type(op.result) is _Pulled:
        pulled, op.result = op.result, None
        return pulled.load()
    if op.buf is None or not op.nbytes:
        return None
    return _unpacked(op.engine, _pickle.loads(op.buf.array), op.source)  # type: ignore[arg-type]  # numpy stubs < 3.12


def _unpacked(engine: _p2p.Engine, obj: Any, source: int) -> Any:
    """A received object itself, its out-of-band buffers pulled from *source*. Only
    a failed pull is the sender's business: unpickling comes after the reply."""
    if type(obj) is not _OutOfBand:
        return obj
    if obj.helps:
        return _pull_helped(engine, source, obj)
    return _fetched(engine, obj, source).load()


def _pull_helped(engine: _p2p.Engine, source: int, obj: _OutOfBand) -> Any:
    """Pull an object's buffers while its blocked sender writes the tail of the
    largest one into our copy (`coop.CoopPull`, as for buffers)."""
    pid = engine.ch.pids[source]
    arrays = [_memory.empty(n) for _, n in obj.buffers]
    big = max(range(len(arrays)), key=lambda i: obj.buffers[i][1])
    saddr, n = obj.buffers[big]
    coop = CoopPull(engine, source, obj.xid, Layout.contiguous(saddr, n),
                    Layout.contiguous(address(arrays[big]), n), arrays[big], base=saddr)
    others = [functools.partial(_cma.read_into, pid, address(arr), addr, m)
              for i, ((addr, m), arr) in enumerate(zip(obj.buffers, arrays)) if i != big and m]
    err = coop.own_part(others)
    _p2p.wait_handles(engine.ch, [coop.notice])
    err = coop.finish(err)
    if err is not None:
        raise err
    return _pickle.loads(obj.stream, buffers=arrays)


_p2p.OBJECT_RECEIVE[:] = [landed, loads]
_fastpath.register_in_band(P2P_OOB_MIN, _TooBig, _IN_BAND, PICKLED)
