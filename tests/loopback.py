"""An in-process `cmampi.channel.Channel`: two ranks in one process, for unit
tests of the protocol engine (`cmampi.p2p`) without mpiexec.

Both ranks are this process, so pulls are real CMA reads of our own memory.
Everything runs on one thread: a send is queued (or lands in a receive posted
for it) at once, and a wait that nothing already done can satisfy would wait
forever, so it raises `WouldBlock` instead, which a test reads as a hang of the
protocol.
"""

from __future__ import annotations

import os
import pickle
from collections import deque
from collections.abc import Sequence
from typing import Any

from cmampi import _cma, _names
from cmampi.channel import Completion, completion

ANY_SOURCE, ANY_TAG = _names.ANY_SOURCE, _names.ANY_TAG


class WouldBlock(RuntimeError):
    """A blocking call no message in flight can complete."""


class Handle:
    """A posted operation: done at once (sends) or once a message lands (receives)."""

    def __init__(self, buf=None, source: int = ANY_SOURCE, tag: int = ANY_TAG) -> None:
        self.buf, self.source, self.tag = buf, source, tag
        self.info: Completion | None = None

    @property
    def done(self) -> bool:
        return self.info is not None

    def land(self, src: int, tag: int, data: bytes) -> None:
        """Copy *data* into the buffer (MPI's truncation error if it is too small)."""
        view = memoryview(self.buf).cast("B")
        if len(data) > len(view):
            view[:] = data[: len(view)]
            self.info = completion(src, tag, len(view), Truncated())
            return
        view[: len(data)] = data
        self.info = completion(src, tag, len(data))

    def Cancel(self) -> None:
        self.cancelled = True


class Truncated(Exception):
    """MPI_ERR_TRUNCATE, as a channel reports it in a completion."""

    error_class = _names.ERR_TRUNCATE


def _matches(h: Handle, src: int, tag: int) -> bool:
    return (h.source in (ANY_SOURCE, src)) and (h.tag in (ANY_TAG, tag))


class _Wires:
    """What both ranks share: per rank, messages not yet matched and receives posted."""

    def __init__(self) -> None:
        self.unexpected: list[deque[tuple[int, int, bytes]]] = [deque(), deque()]
        self.posted: list[list[Handle]] = [[], []]
        #: side space: (dest, source, kind, xid) -> queued data / posted handles
        self.side: dict[tuple, deque[bytes]] = {}
        self.side_posted: dict[tuple, deque[Handle]] = {}


class LoopbackChannel:
    """One rank of a two-rank in-process channel (see the module's docstring)."""

    tag_ub = 32767
    xid_limit = 16383
    cma_min = 1 << 15           # small, so that pulls are exercised with small buffers
    #: Both engines share one process's pending receives: one threshold, so that
    #: a receive pending on one rank does not turn the other's pulls into raw sends.
    cma_min_busy = cma_min
    null_handle = Handle()

    def __init__(self, wires: _Wires, rank: int) -> None:
        self.wires, self.rank, self.size = wires, rank, 2
        self.pids = [os.getpid()] * 2
        self.nodes = ["here"] * 2
        self.pidns = [None] * 2
        self.userns = [_cma.user_namespace()] * 2
        self._last: tuple[int, int, int] = (0, 0, 0)

    @classmethod
    def pair(cls) -> tuple[LoopbackChannel, LoopbackChannel]:
        wires = _Wires()
        return cls(wires, 0), cls(wires, 1)

    # -- user space -----------------------------------------------------------------------
    def isend(self, data, dest: int, tag: int) -> Handle:
        payload = bytes(memoryview(data).cast("B"))
        posted = self.wires.posted[dest]
        for i, h in enumerate(posted):
            if _matches(h, self.rank, tag):
                del posted[i]
                h.land(self.rank, tag, payload)
                break
        else:
            self.wires.unexpected[dest].append((self.rank, tag, payload))
        done = Handle()
        done.info = completion(dest, tag, len(payload))
        return done

    def send(self, data, dest: int, tag: int) -> None:
        self.isend(data, dest, tag)

    def irecv(self, buf, source: int, tag: int) -> Handle:
        h = Handle(buf, source, tag)
        queue = self.wires.unexpected[self.rank]
        for i, (src, tg, data) in enumerate(queue):
            if _matches(h, src, tg):
                del queue[i]
                h.land(src, tg, data)
                return h
        self.wires.posted[self.rank].append(h)
        return h

    def recv(self, buf, source: int, tag: int) -> tuple[int, int, int]:
        h = self.irecv(buf, source, tag)
        self._wait(h)
        return h.info[:3]

    def mprobe(self, source: int, tag: int):
        queue = self.wires.unexpected[self.rank]
        for i, (src, tg, data) in enumerate(queue):
            if _matches(Handle(None, source, tag), src, tg):
                del queue[i]
                return data, (src, tg, len(data))
        raise WouldBlock(f"rank {self.rank}: no message from {source} with tag {tag}")

    def mrecv(self, handle, buf) -> None:
        memoryview(buf).cast("B")[: len(handle)] = handle

    def recv_object(self, source: int, tag: int) -> object:
        data, self._last = self.mprobe(source, tag)
        return pickle.loads(data) if data else None

    def last(self) -> tuple[int, int, int]:
        return self._last

    def take_any(self) -> tuple[int, int, bytes] | None:
        queue = self.wires.unexpected[self.rank]
        return queue.popleft() if queue else None

    def probe_any(self, source: int = ANY_SOURCE, block: bool = True) -> None:
        if block and not self.wires.unexpected[self.rank]:
            raise WouldBlock(f"rank {self.rank}: nothing has arrived")

    # -- side space -----------------------------------------------------------------------
    def _side_send(self, kind: str, data, dest: int, xid: int) -> Handle:
        key = (dest, self.rank, kind, xid)
        payload = bytes(memoryview(data).cast("B"))
        posted = self.wires.side_posted.get(key)
        if posted:
            posted.popleft().land(self.rank, xid, payload)
        else:
            self.wires.side.setdefault(key, deque()).append(payload)
        done = Handle()
        done.info = completion(dest, xid, len(payload))
        return done

    def _side_recv(self, kind: str, buf, source: int, xid: int) -> Handle:
        key = (self.rank, source, kind, xid)
        h = Handle(buf, source, xid)
        queued = self.wires.side.get(key)
        if queued:
            h.land(source, xid, queued.popleft())
        else:
            self.wires.side_posted.setdefault(key, deque()).append(h)
        return h

    def send_reply(self, data, dest: int, xid: int) -> None:
        self._side_send("reply", data, dest, xid)

    def irecv_reply(self, buf, source: int, xid: int) -> Handle:
        return self._side_recv("reply", buf, source, xid)

    def send_payload(self, data, dest: int, xid: int) -> None:
        self._side_send("payload", data, dest, xid)

    def isend_payload(self, data, dest: int, xid: int) -> Handle:
        return self._side_send("payload", data, dest, xid)

    def irecv_payload(self, buf, source: int, xid: int) -> Handle:
        return self._side_recv("payload", buf, source, xid)

    # -- completion -----------------------------------------------------------------------
    def _wait(self, h: Handle) -> None:
        if not h.done:
            raise WouldBlock(f"rank {self.rank}: waits for a message that was never sent")

    def testany(self, handles: Sequence[Handle]):
        for i, h in enumerate(handles):
            if h is not self.null_handle and h.done:
                return i, h.info
        return None

    def waitany(self, handles: Sequence[Handle]):
        got = self.testany(handles)
        if got is None:
            raise WouldBlock(f"rank {self.rank}: none of {len(handles)} handles can complete")
        return got

    def test(self, handle: Handle) -> Completion | None:
        return handle.info

    def wait_cancelled(self, handle: Handle) -> Completion | None:
        if handle.done:
            return handle.info
        for posted in self.wires.posted:
            if handle in posted:
                posted.remove(handle)
        return None

    # -- collective -----------------------------------------------------------------------
    def allgather(self, obj: Any) -> list[Any]:
        """Both ranks are made one after the other: each sees its own answer twice
        (the two ranks of a pair are configured alike)."""
        return [obj, obj]

    def dup(self) -> LoopbackChannel:
        raise NotImplementedError("a loopback pair is not duplicated")

    def collective(self) -> None:
        pass

    def free(self) -> None:
        pass
