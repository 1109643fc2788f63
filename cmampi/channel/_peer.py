"""One peer of the socket channel: its connection, and frames in and out of it.

A frame is a header (`FRAME`: space, context id, tag or key, payload length)
and its payload. Frames travel through the connection's shared-memory rings
when both sides have them (`_ring`), else through the Unix socket itself; the
socket then carries only doorbells and tells when the peer is gone.
"""

from __future__ import annotations

import collections as _collections
import socket as _socket
import struct as _struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import _names
from . import _ring

if TYPE_CHECKING:
    from ._matching import Matching

__all__ = ["FRAME", "Peer", "PeerFailed", "consume", "frame", "why"]

#: Frame header: space, context id, tag (or key), payload length.
FRAME = _struct.Struct("<B3xIiQ")
_FRAME_SIZE, _FRAME_UNPACK = FRAME.size, FRAME.unpack_from
_READ_CHUNK = 1 << 16
_DIRECT = 1 << 15    # payload bytes still missing from which we read straight into place
_RING_HEAD, _RING_TAIL, _RING_WAITING = _ring.HEAD, _ring.TAIL, _ring.WAITING
NOSIGNAL = getattr(_socket, "MSG_NOSIGNAL", 0)   # a gone peer is an error, not SIGPIPE


class PeerFailed(_names.Exception):
    """A peer rank exited or its connection broke (error class ``ERR_PROC_FAILED``).

    ``rank`` is the peer's rank in the job (``COMM_WORLD``), ``pid`` its process id.
    """

    def __init__(self, rank: int, why: str = "", pid: int | None = None) -> None:
        who = f"rank {rank}" if not pid else f"rank {rank} (pid {pid})"
        super().__init__(_names.ERR_PROC_FAILED, f"{who} is gone{': ' + why if why else ''}")
        self.rank = rank
        self.pid = pid


def why(exc: OSError) -> str:
    """How a connection broke, for `PeerFailed`."""
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
        return f"its connection broke ({exc.strerror}: it exited or was killed)"
    return exc.strerror or str(exc)


def frame(space: int, ctx: int, tag: int, view: memoryview) -> list:
    """The parts of a frame carrying *view*: its header, then the payload if any."""
    head = FRAME.pack(space, ctx, tag, len(view))
    return [head, view] if len(view) else [head]


def consume(parts: list, sent: int) -> None:
    """Drop the first *sent* bytes from *parts* (bytes and memoryviews), in place."""
    while sent and parts:
        k = len(parts[0])
        if sent >= k:
            sent -= k
            parts.pop(0)
        else:
            parts[0] = memoryview(parts[0])[sent:]
            sent = 0


def _never_lost(peer: Peer, why: str) -> None:
    raise AssertionError(f"rank {peer.rank}'s loss has no one to tell: {why}")


class Peer:
    """One connection: a socket (and its rings), its outgoing queue and its frame parser."""

    __slots__ = (
        "cur",
        "dead",
        "finished",
        "on_lost",
        "out",
        "pid",
        "pidfd",
        "polling_out",
        "rank",
        "rbuf",
        "rhi",
        "rlo",
        "rmv",
        "rx",
        "sock",
        "tx",
    )

    def __init__(self, sock: _socket.socket, rank: int, pid: int) -> None:
        self.sock = sock
        self.rank = rank
        self.pid = pid
        self.pidfd = -1          # readable once the peer process has exited
        self.out: _collections.deque[list] = _collections.deque()   # [parts, handle, nbytes]
        self.rbuf = bytearray(_READ_CHUNK)
        self.rmv = memoryview(self.rbuf)
        self.rlo = self.rhi = 0
        self.cur: list | None = None   # payload being filled: [dest view, filled, header]
        self.dead: str | None = None
        self.finished = False    # it said goodbye: its leaving is no failure
        self.polling_out = False
        #: The shared-memory rings frames travel through (None: the socket itself).
        self.rx: _ring.Ring | None = None
        self.tx: _ring.Ring | None = None
        #: Told (peer, why) when a read finds the connection broken or closed.
        self.on_lost: Callable[[Peer, str], None] = _never_lost

    # -- out ------------------------------------------------------------------------------
    def write(self, parts: list) -> int:
        """Write what fits of *parts* now (its ring, else its socket); the bytes written."""
        tx = self.tx
        if tx is None:
            return self.sock.sendmsg(parts, (), NOSIGNAL)
        sent = tx.write(parts)
        if sent and tx.asleep():
            self.ring_doorbell()
        return sent

    def ring_doorbell(self) -> None:
        """Wake the peer, which sleeps in poll()."""
        try:
            self.sock.send(b"\0", NOSIGNAL)
        except OSError:             # full of doorbells already, or the peer is gone
            pass

    # -- in -------------------------------------------------------------------------------
    def read(self, view: memoryview) -> int:
        """Bytes read into *view*: 0 when nothing is there now, or the peer is lost."""
        if self.rx is not None:
            return self.rx.read_into(view)
        try:
            got = self.sock.recv_into(view)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            self.on_lost(self, why(exc))
            return 0
        if got == 0:
            self.on_lost(self, "its connection closed (it exited or was killed)")
        return got

    def pump(self, matching: Matching) -> None:
        """Read and hand to *matching* everything this connection has for us now."""
        drained = False      # a read came back short: the socket is (very likely) empty
        while True:
            cur = self.cur
            if cur is not None:
                dest, filled, header = cur
                need = len(dest) - filled
                have = self.rhi - self.rlo
                if have:
                    k = min(have, need)
                    dest[filled : filled + k] = self.rmv[self.rlo : self.rlo + k]
                    self.rlo += k
                    filled += k
                    need -= k
                if need >= _DIRECT:
                    got = self.read(dest[filled:])
                    if not got:
                        cur[1] = filled
                        return
                    filled += got
                    need -= got
                cur[1] = filled
                if need == 0:
                    self.cur = None
                    matching.payload_done(self.rank, dest, header)
                    continue
            elif self.rhi - self.rlo >= _FRAME_SIZE:
                space, ctx, tag, n = _FRAME_UNPACK(self.rbuf, self.rlo)
                lo = self.rlo = self.rlo + _FRAME_SIZE
                h = matching.match(self.rank, space, ctx, tag)
                if self.rhi - lo >= n:      # all of it is here already
                    self.rlo = lo + n
                    matching.hand_over(h, self.rank, space, ctx, tag, self.rmv[lo : lo + n])
                    continue
                if h is not None and n <= len(h.target):
                    dest = h.target[:n]
                else:
                    dest = memoryview(bytearray(n))
                self.cur = [dest, 0, (space, ctx, tag, n, h)]
                continue
            # Need more bytes: compact the buffer and read.
            if drained:
                return
            if self.rlo:
                left = self.rhi - self.rlo
                self.rmv[:left] = self.rmv[self.rlo : self.rhi]
                self.rlo, self.rhi = 0, left
            got = self.read(self.rmv[self.rhi :])
            if not got:
                return
            drained = self.rhi + got < len(self.rbuf)
            self.rhi += got

    def pump_ring(self, matching: Matching) -> bool:
        """Take what the ring holds; ring the writer's doorbell if it sleeps until
        room is freed. Whether anything was taken.

        Whole frames are handed on straight from the shared memory; anything
        else (a frame in pieces, or around the ring's end, or a stream under
        way) goes the general way, `pump`.
        """
        rx = self.rx
        assert rx is not None, "pump_ring of a peer without rings"
        words = rx.words
        start = words[_RING_TAIL]
        try:
            if self.cur is not None or self.rhi != self.rlo:
                self.pump(matching)
            else:
                data, mask, cap = rx.data, rx.mask, rx.capacity
                src, size, tail = self.rank, _FRAME_SIZE, start
                match, hand_over = matching.match, matching.hand_over
                while True:
                    avail = words[_RING_HEAD] - tail
                    at = tail & mask
                    if avail < size or at + size > cap:
                        if avail:
                            self.pump(matching)
                        break
                    space, ctx, tag, n = _FRAME_UNPACK(data, at)
                    at += size
                    if avail < size + n or at + n > cap:
                        self.pump(matching)
                        break
                    payload = data[at : at + n]
                    try:
                        hand_over(match(src, space, ctx, tag), src, space, ctx, tag, payload)
                    finally:    # taken, even if handing it on failed: never delivered twice
                        payload.release()
                        tail += size + n
                        words[_RING_TAIL] = tail
        finally:
            if self.rx is not None and words[_RING_WAITING]:
                words[_RING_WAITING] = 0      # one doorbell is enough
                self.ring_doorbell()
        return self.rx is not None and words[_RING_TAIL] != start

    def unmap(self) -> None:
        """Unmap the rings (what the peer wrote into them has been taken)."""
        for ring in (self.rx, self.tx):
            if ring is not None:
                ring.close()
        self.rx = self.tx = None
