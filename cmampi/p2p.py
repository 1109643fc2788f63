"""Point-to-point protocol: eager messages inline, large ones by descriptor and CMA pull.

The engine is channel-agnostic: it needs a channel (see ``channel/mpi.py``) that
offers a user matching space, a side space for acks and payloads, and completion
of the handles it returns. Payloads above the eager limit never cross the channel
when the peer is CMA-reachable: the receiver pulls them straight from the
sender's buffer and acks, and only then does the send complete.
"""

from __future__ import annotations

import collections as _collections
import os as _os
from typing import Any, List, Optional, Tuple

import numpy as _np

from . import _pull, _wire
from ._buffers import Buffer, recv_buffer, send_buffer

__all__ = ["Engine", "Op", "SendOp", "RecvOp", "ForeignOp", "wait_any", "wait_all", "test"]

_sched_yield = getattr(_os, "sched_yield", lambda: None)

#: Posted receives of every communicator that still wait for their message. A
#: blocking call must keep all of them moving: a peer blocked on one of them
#: (waiting for our pull and ack) may be what the call itself is waiting for.
_PENDING: List["RecvOp"] = []


class Op:
    """The protocol state of one request. ``handle`` is what to wait on next."""

    __slots__ = ("engine", "handle", "done", "error", "source", "tag", "nbytes", "cancelled",
                 "decode", "result")

    def __init__(self, engine: "Engine") -> None:
        self.engine = engine
        self.handle = None
        self.done = False
        self.error: Optional[BaseException] = None
        self.source = engine.names.ANY_SOURCE
        self.tag = engine.names.ANY_TAG
        self.nbytes = 0
        self.cancelled = False
        self.decode = None      # turns the finished op into an object (lowercase API)
        self.result = None

    def advance(self, info) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def finish(self, error: Optional[BaseException] = None) -> None:
        self.handle = None
        self.done = True
        self.error = error


class SendOp(Op):
    """A send: done once every channel handle it posted has completed."""

    __slots__ = ("handles", "keep", "ackbuf")

    def __init__(self, engine: "Engine", handles: List[Any], keep: Any, ackbuf=None) -> None:
        super().__init__(engine)
        self.handles = handles
        self.keep = keep           # the user's buffer (or packed copy) until completion
        self.ackbuf = ackbuf
        self.handle = handles[0] if handles else None
        if not handles:
            self.finish()

    def advance(self, info) -> None:
        self.handles.pop(0)
        if self.handles:
            self.handle = self.handles[0]
        else:
            self.keep = None
            self.finish()


class RecvOp(Op):
    """A receive: matched message -> copy or pull (+ ack) or side payload -> done."""

    __slots__ = ("buf", "stage", "sideinfo")

    def __init__(self, engine: "Engine", buf: Optional[Buffer]) -> None:
        super().__init__(engine)
        self.buf = buf
        self.stage = None
        self.sideinfo = None

    def advance(self, info) -> None:
        source, tag, count = info
        if self.sideinfo is not None:  # the out-of-band payload has arrived
            tmp, nbytes = self.sideinfo
            self.sideinfo = None
            err = None
            if tmp is not None:
                err = self.engine.place(self.buf, memoryview(tmp), nbytes, self.source)
            self.finish(err)
            return
        self.engine.deliver(self, memoryview(self.stage)[:count], source, tag)
        self.stage = None


class ForeignOp(Op):
    """A request of the wrapped library (e.g. a delegated collective) in our waits."""

    __slots__ = ("request",)

    def __init__(self, engine: "Engine", request) -> None:
        super().__init__(engine)
        self.request = request
        self.handle = request

    def advance(self, info) -> None:
        self.source, self.tag, self.nbytes = info
        self.finish()


class Engine:
    """Matching, protocols and progress for one communicator over one channel."""

    def __init__(self, channel, names, config) -> None:
        self.ch = channel
        self.names = names
        self.limit = config.eager_limit
        self.chunk = config.chunk
        self.rank = channel.rank
        self.size = channel.size
        self.tag_ub = channel.tag_ub
        self.stage_size = self.limit + _wire.CTRL_MAX
        self.stage = bytearray(self.stage_size)
        self.stage_mv = memoryview(self.stage)
        self.pending = _PENDING
        self.stash: _collections.deque = _collections.deque()  # drained by probes
        self._xid = 0
        self.cma = [channel.nodes[p] == channel.nodes[self.rank] and config.transport == "cma"
                    for p in range(self.size)]

    # -- helpers -------------------------------------------------------------------------
    def next_xid(self) -> int:
        self._xid = (self._xid + 1) % self.ch.xid_limit
        return self._xid

    def truncated(self, nbytes: int, cap: int) -> BaseException:
        exc = self.names.Exception(self.names.ERR_TRUNCATE)
        return exc

    # -- sending -------------------------------------------------------------------------
    def send(self, spec, dest: int, tag: int) -> None:
        """Blocking standard-mode send."""
        if type(spec) is _np.ndarray and spec.flags.c_contiguous and spec.nbytes <= self.limit:
            self.ch.send(_wire.eager(spec.tobytes()), dest, tag)
            return
        buf = send_buffer(spec)
        if buf.nbytes <= self.limit:
            self.ch.send(_wire.eager(buf.tobytes()), dest, tag)
            return
        wait_any([self.isend(buf, dest, tag, False)])

    def isend(self, buf: Buffer, dest: int, tag: int, sync: bool) -> SendOp:
        """Start a send of a parsed buffer; *sync* asks for synchronous mode."""
        ch = self.ch
        n = buf.nbytes
        if n <= self.limit:
            data = buf.tobytes()
            if not sync:
                return SendOp(self, [ch.isend(_wire.eager(data), dest, tag)], None)
            xid = self.next_xid()
            ackbuf = bytearray(1)
            ack = ch.irecv_ack(ackbuf, dest, xid)
            h = ch.isend(_wire.sync(xid) + data, dest, tag)
            return SendOp(self, [h, ack], data, ackbuf)
        xid = self.next_xid()
        ackbuf = bytearray(1)
        if self.cma[dest]:
            # The ack is posted before the descriptor leaves, so the receiver's ack
            # always finds a posted receive and never waits on us.
            ack = ch.irecv_ack(ackbuf, dest, xid)
            h = ch.isend(_wire.pull(xid, buf.layout), dest, tag)
            return SendOp(self, [h, ack], buf, ackbuf)
        # No CMA to this peer: the payload follows through the side space. The
        # receiver acks on matching, which gives synchronous mode for free.
        data = buf.flat() if buf.contiguous else buf.tobytes()
        ack = ch.irecv_ack(ackbuf, dest, xid)
        handles = [ch.isend(_wire.side(xid, n), dest, tag),
                   ch.isend_payload(data, dest, xid), ack]
        return SendOp(self, handles, (buf, data), ackbuf)

    # -- receiving -----------------------------------------------------------------------
    def recv(self, spec, source: int, tag: int, status=None) -> None:
        """Blocking receive."""
        buf = recv_buffer(spec)
        if not _PENDING and not self.stash:
            # Nothing else needs progress: block inside the channel.
            src, tg, count = self.ch.recv(self.stage, source, tag)
            if self.stage[0] == _wire.EAGER:
                n = count - 1
                err = self.place(buf, self.stage_mv[1:count], n, src)
                if status is not None:
                    _fill(status, src, tg, n, err, self.names)
                if err is not None:
                    raise err
                return
            op = RecvOp(self, buf)
            self.deliver(op, self.stage_mv[:count], src, tg)
        else:
            op = self.irecv(buf, source, tag)
        wait_any([op])
        self.complete(op, status)

    def irecv(self, buf: Optional[Buffer], source: int, tag: int) -> RecvOp:
        op = RecvOp(self, buf)
        hit = self.take(source, tag)
        if hit is not None:
            src, tg, data = hit
            self.deliver(op, memoryview(data), src, tg)
            return op
        op.stage = bytearray(self.stage_size)
        op.handle = self.ch.irecv(op.stage, source, tag)
        self.pending.append(op)
        return op

    def irecv_matched(self, buf: Optional[Buffer], hit) -> RecvOp:
        """Receive a message already taken from the stash (a matched probe)."""
        op = RecvOp(self, buf)
        src, tg, data = hit
        self.deliver(op, memoryview(data), src, tg)
        return op

    def mprobe(self, source: int, tag: int, block: bool):
        """Take the first matching message out of the stream, or None (non-blocking)."""
        hit = self.probe(source, tag) if block else self.iprobe(source, tag)
        return None if hit is None else self.take(source, tag)

    def take(self, source: int, tag: int):
        """Remove and return the first stashed message matching (source, tag)."""
        if not self.stash:
            return None
        anys, anyt = self.names.ANY_SOURCE, self.names.ANY_TAG
        for i, (src, tg, data) in enumerate(self.stash):
            if (source == anys or source == src) and (tag == anyt or tag == tg):
                del self.stash[i]
                return src, tg, data
        return None

    def deliver(self, op: RecvOp, msg: memoryview, source: int, tag: int) -> None:
        """Act on a matched message: copy it, pull it, or wait for its side payload."""
        if op in self.pending:
            self.pending.remove(op)
        op.source, op.tag = source, tag
        kind = msg[0]
        buf = op.buf
        if buf is None:  # a receive without a buffer: sized by the message itself
            buf = op.buf = recv_buffer(bytearray(_payload_size(msg)))
        if kind == _wire.EAGER or kind == _wire.EAGER_SYNC:
            start = 1
            if kind == _wire.EAGER_SYNC:
                start = _wire.SYNC_SIZE
                self.ch.send_ack(_wire.ACK_OK, source, _wire.parse_sync(msg)).Wait()
            n = len(msg) - start
            op.nbytes = n
            op.finish(self.place(buf, msg[start:], n, source))
        elif kind == _wire.PULL:
            xid, n, layout = _wire.parse_pull(msg)
            op.nbytes = n
            err = None
            code = _wire.ACK_OK
            if n > buf.nbytes:
                err, code = self.truncated(n, buf.nbytes), _wire.ACK_TRUNCATED
            else:
                try:
                    _pull.pull(self.ch.pids[source], layout, buf.layout, buf.array, self.chunk)
                except OSError as exc:
                    err, code = exc, _wire.ACK_FAILED
            self.ch.send_ack(code, source, xid).Wait()
            op.finish(err)
        elif kind == _wire.SIDE:
            xid, n = _wire.parse_side(msg)
            op.nbytes = n
            self.ch.send_ack(_wire.ACK_OK, source, xid).Wait()
            if buf.contiguous and n <= buf.nbytes:
                target, tmp = buf.flat()[:n], None
            else:
                target = tmp = bytearray(n)
            op.sideinfo = (tmp, n)
            op.handle = self.ch.irecv_payload(target, source, xid)
        else:
            op.finish(RuntimeError(f"cmampi: unknown message kind {kind} from rank {source}"))

    def place(self, buf: Optional[Buffer], data: memoryview, n: int, source: int):
        """Copy an inline payload into the receive buffer; return the error, if any."""
        if n > buf.nbytes:
            return self.truncated(n, buf.nbytes)
        if n:
            buf.scatter(data[:n])
        return None

    def complete(self, op: Op, status=None) -> None:
        """Fill *status* from a finished op and raise its error, if any."""
        if op.decode is not None and op.error is None:
            decode, op.decode = op.decode, None
            op.result = decode(op)
        if status is not None:
            _fill(status, op.source, op.tag, op.nbytes, op.error, self.names, op.cancelled)
        if op.error is not None:
            err, op.error = op.error, None
            raise err

    # -- probing -------------------------------------------------------------------------
    def drain(self) -> None:
        """Move every arrived user-space message into the stash, keeping arrival order.

        Everything still inside the channel arrived after what the stash holds,
        so matching the stash first preserves MPI's non-overtaking order.
        """
        while True:
            got = self.ch.take_any()
            if got is None:
                return
            self.stash.append(got)

    def peek(self, source: int, tag: int):
        """(source, tag, payload size) of the first stashed match, or None."""
        anys, anyt = self.names.ANY_SOURCE, self.names.ANY_TAG
        for src, tg, data in self.stash:
            if (source == anys or source == src) and (tag == anyt or tag == tg):
                return src, tg, _payload_size(data)
        return None

    def iprobe(self, source: int, tag: int):
        progress()
        self.drain()
        return self.peek(source, tag)

    def probe(self, source: int, tag: int):
        while True:
            hit = self.iprobe(source, tag)
            if hit is not None:
                return hit
            if _PENDING:
                _sched_yield()
            else:
                self.ch.probe_any()

    # -- progress ------------------------------------------------------------------------
    def progress(self) -> None:
        progress()

    def test(self, op: Op) -> bool:
        return test(op)

    def wait(self, op: Op) -> None:
        wait_any([op])

    def cancel(self, op: Op) -> None:
        """Cancel a posted receive that has not matched yet (sends cannot be cancelled)."""
        if isinstance(op, RecvOp) and op in self.pending and op.handle is not None:
            h = op.handle
            h.Cancel()
            info = self.ch.wait_cancelled(h)
            if info is None:        # cancelled before anything matched
                self.pending.remove(op)
                op.cancelled = True
                op.finish()
            else:                   # matched meanwhile: complete it normally
                op.advance(info)


def progress() -> None:
    """Advance every posted receive whose message has arrived."""
    for op in list(_PENDING):
        h = op.handle
        if h is not None:
            info = op.engine.ch.test(h)
            if info is not None:
                op.advance(info)


def test(op: Op) -> bool:
    """Progress everything; True once *op* is done."""
    progress()
    while not op.done and op.handle is not None and op not in _PENDING:
        info = op.engine.ch.test(op.handle)
        if info is None:
            break
        op.advance(info)
    return op.done


def wait_any(ops) -> None:
    """Block until at least one of *ops* is done, progressing every posted receive."""
    while True:
        for op in ops:
            if op.done:
                return
        owners: List[Op] = []
        handles = []
        for group in (ops, _PENDING):
            for op in group:
                if op.handle is not None and op not in owners:
                    owners.append(op)
                    handles.append(op.handle)
        if not handles:
            raise RuntimeError("cmampi: waiting on requests that can never complete")
        i, info = owners[0].engine.ch.waitany(handles)
        owners[i].advance(info)


def wait_all(ops) -> None:
    todo = [op for op in ops if not op.done]
    while todo:
        wait_any(todo)
        todo = [op for op in todo if not op.done]


def _fill(status, source, tag, nbytes, err, names, cancelled=False) -> None:
    status.Set_source(source)
    status.Set_tag(tag)
    status.Set_elements(names.BYTE, nbytes)
    status.Set_cancelled(cancelled)
    status.Set_error(getattr(err, "error_class", names.ERR_OTHER) if err is not None else 0)


def _payload_size(msg) -> int:
    kind = msg[0]
    if kind == _wire.EAGER:
        return len(msg) - 1
    if kind == _wire.EAGER_SYNC:
        return len(msg) - _wire.SYNC_SIZE
    if kind == _wire.PULL:
        return _wire.parse_pull(msg)[1]
    return _wire.parse_side(msg)[1]
