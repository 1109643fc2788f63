"""The socket channel: control traffic over Unix sockets between the ranks of one job.

One ``Hub`` per process holds a connection to every other rank (set up at
start, all to all) and does the matching that MPI does for the MPI channel:
posted receives in posting order, unexpected messages in arrival order, per
communicator context. ``SocketChannel`` is one communicator's view of the hub.
Payloads above the eager limit never cross the sockets when CMA is allowed:
only their descriptors do.

A peer's death is noticed by its socket (end of file, reset) and, where the
kernel has them, by a pidfd (which also covers sockets kept open by a forked
child). From then on every operation that needs that peer fails with
``PeerFailed`` (error class ``ERR_PROC_FAILED``) instead of waiting:

* receives and probes from it, sends to it, and replies it was to send;
* everything on a collective context it belongs to (see
  `SocketChannel.collective`), so that no survivor waits on another survivor
  that has given up on the collective;
* unless it said goodbye (see below): an ``ANY_SOURCE`` receive or probe on a
  communicator it belongs to, when no message that has already arrived
  matches. This is ULFM's ``MPI_ERR_PROC_FAILED_PENDING``: the message
  awaited may have been the dead rank's, and nothing here can tell; there is
  no way to acknowledge the failure, so it holds for the rest of the job.

Traffic between surviving ranks with a named source keeps working. A rank of
the launcher that ends in good order (its interpreter exits without an
uncaught exception) says goodbye to every peer first: its leaving then fails
only what needs it by name, and ``ANY_SOURCE`` receives go on waiting for the
others.
"""

from __future__ import annotations

import collections as _collections
import os as _os
import pickle as _pickle
import select as _select
import socket as _socket
import struct as _struct
import time as _time
from collections.abc import Sequence
from typing import Any

import numpy as _np

from .. import _names, _tuning
from .._access import allow_peers
from .._cma import user_namespace
from .._config import CMA_MIN_DEFAULTS
from .._config import config as _config
from . import Completion, _handshake, _ring, completion

__all__ = ["Hub", "PeerFailed", "SocketChannel", "hub_beside", "hub_from_environ"]

# Frame header: space, context id, tag (or key), payload length.
_FRAME = _struct.Struct("<B3xIiQ")
_FRAME_SIZE, _FRAME_UNPACK = _FRAME.size, _FRAME.unpack_from
USER, SIDE, SYS, BYE = 0, 1, 2, 3
_READ_CHUNK = 1 << 16
_DIRECT = 1 << 15    # payload bytes still missing from which we read straight into place
_RING_HEAD, _RING_TAIL, _RING_ASLEEP, _RING_WAITING = \
    _ring.HEAD, _ring.TAIL, _ring.ASLEEP, _ring.WAITING
_FLAT = (bytes, bytearray)      # taken as they are: flat bytes already
_NOSIGNAL = getattr(_socket, "MSG_NOSIGNAL", 0)   # a gone peer is an error, not SIGPIPE
_LOOK_EVERY = 16     # ring sends between two looks at the kernel
_LOOK_SECONDS = _tuning.LOOK_SECONDS
_SPIN_SECONDS = _tuning.SPIN_SECONDS
_sched_yield = getattr(_os, "sched_yield", lambda: None)


class PeerFailed(_names.Exception):
    """A peer rank exited or its connection broke (error class ``ERR_PROC_FAILED``).

    ``rank`` is the peer's rank in the job (``COMM_WORLD``), ``pid`` its process id.
    """

    def __init__(self, rank: int, why: str = "", pid: int | None = None) -> None:
        who = f"rank {rank}" if not pid else f"rank {rank} (pid {pid})"
        super().__init__(_names.ERR_PROC_FAILED, f"{who} is gone{': ' + why if why else ''}")
        self.rank = rank
        self.pid = pid


def _bytes_view(obj) -> memoryview:
    """A writable flat byte view of a contiguous buffer (C or Fortran order)."""
    try:
        return memoryview(obj).cast("B")
    except TypeError:
        return memoryview(_np.asarray(obj).reshape(-1, order="A").view(_np.uint8))


class Handle:
    """A channel-level operation: a posted receive or a queued send."""

    __slots__ = (
        "cancelled",
        "ctx",
        "done",
        "info",
        "local",
        "source",
        "space",
        "tag",
        "target",
    )

    def __init__(self, space: int = USER, ctx: int = 0, source: int = 0, tag: int = 0,
                 target=None) -> None:
        self.done = False
        self.info: Completion | None = None   # once done
        self.target = target
        self.source = source      # world rank, or ANY_SOURCE
        self.tag = tag
        self.ctx = ctx
        self.space = space
        self.cancelled = False
        #: World rank -> rank in the group of the channel that made it (its infos
        #: are that channel's, whichever channel completes it in a mixed wait).
        self.local = None

    def __bool__(self) -> bool:
        return not self.done

    def complete(self, info: Completion) -> None:
        self.info = info
        self.done = True
        self.target = None

    def Cancel(self) -> None:
        """Mark for cancellation; the channel removes it if it has not matched."""
        self.cancelled = True


class _Conn:
    """One connection: a socket, its outgoing queue and its frame parser."""

    __slots__ = (
        "cur",
        "dead",
        "finished",
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
        self.out: _collections.deque[list] = _collections.deque()   # [memoryviews, handle]
        self.rbuf = bytearray(_READ_CHUNK)
        self.rmv = memoryview(self.rbuf)
        self.rlo = self.rhi = 0
        self.cur = None          # payload being filled: [dest view, filled, header info]
        self.dead: str | None = None
        self.finished = False    # it said goodbye: its leaving is no failure
        self.polling_out = False
        #: The shared-memory rings frames travel through (None: the socket itself).
        self.rx: _ring.Ring | None = None
        self.tx: _ring.Ring | None = None


class Hub:
    """All connections of this process, and the matching over them."""

    def __init__(self, rank: int, size: int, directory: str | None, token: bytes,
                 expected_pids: list[int] | None = None,
                 rings: bool | None = None) -> None:
        self.rank = rank
        self.size = size
        self.pids: list[int] = [0] * size
        self.pids[rank] = _os.getpid()
        self.conns: list[_Conn | None] = [None] * size
        self.posted: dict[int, list[Handle]] = _collections.defaultdict(list)
        self.unexpected: dict[int, _collections.deque[tuple]] = _collections.defaultdict(
            _collections.deque)
        self.side_posted: dict[tuple, Handle] = {}
        self.side_unexpected: dict[tuple, _collections.deque[bytes]] = _collections.defaultdict(
            _collections.deque)
        self.next_ctx = 1
        #: world ranks of each context's communicator, and the collective contexts
        self.groups: dict[int, Sequence[int]] = {}
        self.collectives: set[int] = set()
        #: world ranks gone (in the order noticed), and those of them that failed
        #: (left without a goodbye)
        self.gone: list[int] = []
        self.failed: list[int] = []
        self.losses = 0          # peers lost so far: a waiter checks liveness when it moves
        self.crashed = False     # an uncaught exception: leave without a goodbye
        #: More ranks than CPUs we may run on: a spinning wait yields the CPU.
        self.crowded = size > len(_os.sched_getaffinity(0)) \
            if hasattr(_os, "sched_getaffinity") else True
        self.poller = _select.poll()
        self.by_fd: dict[int, _Conn] = {}
        #: Whether frames may travel through shared-memory rings (both sides must agree).
        self.use_rings = (_config.rings if rings is None else rings) and _ring.supported()
        #: Live connections whose frames travel through rings; those of them with
        #: frames waiting for room in their ring.
        self.ringed: tuple = ()
        self.waiting_room: set[_Conn] = set()
        self.unringed = 0        # live connections whose frames come through the socket
        self._sends = 0
        self._look_at = 0.0      # when a spinning wait next looks at the kernel
        if size > 1:
            allow_peers(_config)    # before connecting: peers probe us once connected
            _handshake.connect_all(self.rank, self.size, directory, token, expected_pids,
                                   self.use_rings, lambda peer: self.conns[peer] is not None,
                                   self._add)

    # -- set-up ---------------------------------------------------------------------------
    def _add(self, sock: _socket.socket, peer: int, pid: int, rx=None, tx=None) -> None:
        sock.setblocking(False)
        conn = _Conn(sock, peer, pid)
        conn.rx, conn.tx = rx, tx
        if rx is not None:
            self.ringed += (conn,)
        else:
            self.unringed += 1
        self.conns[peer] = conn
        self.pids[peer] = pid
        self.by_fd[sock.fileno()] = conn
        self.poller.register(sock.fileno(), _select.POLLIN)
        try:
            conn.pidfd = _os.pidfd_open(pid)
        except (AttributeError, OSError):   # old kernel or Python: the socket alone tells
            return
        self.by_fd[conn.pidfd] = conn
        self.poller.register(conn.pidfd, _select.POLLIN)

    # -- failures -------------------------------------------------------------------------
    def failure(self, rank: int) -> PeerFailed:
        """The error for an operation that needs world rank *rank*, which is gone."""
        return PeerFailed(rank, self.conns[rank].dead, self.pids[rank])

    def dead_member(self, ctx: int, failed: bool = True) -> int | None:
        """The first member of context *ctx* found failed (or just gone), if any."""
        ranks = self.failed if failed else self.gone
        if ranks:
            group = self.groups.get(ctx, ())
            for r in ranks:
                if r in group:
                    return r
        return None

    def broken(self, ctx: int) -> int | None:
        """A member gone from *ctx* if it is a collective context: it can no longer be used."""
        return self.dead_member(ctx, False) if ctx in self.collectives else None

    def goodbye(self, timeout: float = 1.0) -> None:
        """Tell every peer that this rank ends in good order (at interpreter exit).

        Sends still queued go first, as the goodbye follows them; a peer that
        reads nothing for *timeout* seconds misses it, and sees a failure.
        """
        if self.crashed or _os.getpid() != self.pids[self.rank]:   # or a forked child's exit
            return
        handles = []
        for r, conn in enumerate(self.conns):
            if conn is not None and not conn.dead:
                try:
                    handles.append(self.post_send(r, BYE, 0, 0, None))
                except PeerFailed:
                    pass
        deadline = _time.monotonic() + timeout
        while not all(h.done for h in handles):
            left = deadline - _time.monotonic()
            if left <= 0:
                return
            self.progress(left)

    # -- sending --------------------------------------------------------------------------
    def post_send(self, dest: int, space: int, ctx: int, tag: int, data) -> Handle:
        """Queue a frame to world rank *dest*; the handle completes once it is written."""
        h = Handle(space, ctx)
        view = _bytes_view(data) if data is not None else memoryview(b"")
        n = len(view)
        if dest == self.rank:   # to ourselves: a copy goes straight to matching
            self._arrive(self.rank, space, ctx, tag, bytes(view))
            h.complete(completion(dest, tag, n, None))
            return h
        conn = self.conns[dest]
        if conn.dead:
            raise self.failure(dest)
        dead = self.broken(ctx)
        if dead is not None:
            raise self.failure(dead)
        parts = _frame(space, ctx, tag, view)
        if not conn.out:     # nothing queued before it: try to write it all now
            try:
                sent = self._write(conn, parts)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                sent = -1    # _flush meets the error again and handles it
            if sent == _FRAME.size + n:
                h.complete(completion(self.rank, 0, n, None))
                return h
            if sent > 0:
                _consume(parts, sent)
        conn.out.append([parts, h, n])
        if len(conn.out) == 1:
            self._flush(conn)
        if conn.out:
            self._want_room(conn)
        return h

    def send_now(self, dest: int, space: int, ctx: int, tag: int, data) -> bool:
        """Write a frame to world rank *dest* at once if nothing is queued before it
        and it fits; whether it did (else `post_send` queues it, or raises)."""
        conn = self.conns[dest]     # None for ourselves
        if conn is None or conn.out or conn.dead:
            return False
        tx = conn.tx
        if tx is None:
            return False
        self._sends += 1
        if not self._sends % _LOOK_EVERY:   # rings say nothing of a peer's end: ask
            self.progress(0)
            if conn.dead:
                return False
        if ctx in self.collectives and self.broken(ctx) is not None:
            return False
        view = data if type(data) in _FLAT else _bytes_view(data)
        if not tx.put(_FRAME.pack(space, ctx, tag, len(view)), view):
            return False
        if tx.words[_RING_ASLEEP]:
            self._ring_doorbell(conn)
        return True

    def _write(self, conn: _Conn, parts: list) -> int:
        """Write what fits of *parts* now (its ring, else its socket); the bytes written."""
        tx = conn.tx
        if tx is None:
            return conn.sock.sendmsg(parts, (), _NOSIGNAL)
        sent = tx.write(parts)
        if sent and tx.asleep():
            self._ring_doorbell(conn)
        return sent

    @staticmethod
    def _ring_doorbell(conn: _Conn) -> None:
        """Wake the peer on *conn*, which sleeps in poll()."""
        try:
            conn.sock.send(b"\0", _NOSIGNAL)
        except OSError:             # full of doorbells already, or the peer is gone
            pass

    def _want_room(self, conn: _Conn) -> None:
        """Flush *conn*'s queue when it can take more: on POLLOUT (socket) or at
        every progress (ring)."""
        if conn.tx is not None:
            self.waiting_room.add(conn)
        elif not conn.polling_out:
            conn.polling_out = True
            self.poller.modify(conn.sock.fileno(), _select.POLLIN | _select.POLLOUT)

    def _flush(self, conn: _Conn) -> bool:
        """Write what *conn*'s queue can take now; whether anything was written."""
        wrote = False
        while conn.out:
            item = conn.out[0]
            parts, h, n = item
            try:
                sent = self._write(conn, parts)
            except (BlockingIOError, InterruptedError):
                return wrote
            except OSError as exc:
                # Take what the peer sent before it went: that is still ours.
                self._pump(conn)
                self._lost(conn, _why(exc))
                return wrote
            wrote = wrote or sent > 0
            _consume(parts, sent)
            if parts:
                return wrote
            conn.out.popleft()
            h.complete(completion(self.rank, 0, n, None))
        self.waiting_room.discard(conn)
        if conn.polling_out:
            conn.polling_out = False
            self.poller.modify(conn.sock.fileno(), _select.POLLIN)
        return wrote

    # -- receiving ------------------------------------------------------------------------
    def post_recv(self, ctx: int, source: int, tag: int, target) -> Handle:
        """Post a user-space receive (world source or ANY_SOURCE)."""
        h = Handle(USER, ctx, source, tag, _bytes_view(target))
        q = self.unexpected[ctx]
        for i, (src, tg, data) in enumerate(q):
            if _matches(h, src, tg):
                del q[i]
                self._fill(h, src, tg, memoryview(data))
                return h
        if source == _names.ANY_SOURCE:
            dead = self.dead_member(ctx)
        elif source != self.rank and self.conns[source].dead:
            dead = source
        else:
            dead = self.broken(ctx)
        if dead is not None:
            h.complete(completion(dead, tag, 0, self.failure(dead)))
            return h
        self.posted[ctx].append(h)
        return h

    def post_side(self, ctx: int, source: int, key: int, target) -> Handle:
        """Post a side-space receive for exactly (source, key)."""
        h = Handle(SIDE, ctx, source, key, _bytes_view(target))
        q = self.side_unexpected.get((ctx, source, key))
        if q:
            data = q.popleft()
            self._fill(h, source, key, memoryview(data))
            return h
        conn = self.conns[source]
        dead = source if conn is not None and conn.dead else self.broken(ctx)
        if dead is not None:
            h.complete(completion(dead, key, 0, self.failure(dead)))
            return h
        self.side_posted[(ctx, source, key)] = h
        return h

    def _fill(self, h: Handle, src: int, tag: int, data: memoryview) -> None:
        n = len(data)
        err = None
        if n > len(h.target):
            err = _names.Exception(_names.ERR_TRUNCATE)
            n = len(h.target)
        h.target[:n] = data[:n]
        h.complete(completion(src, tag, len(data), err))

    def _match(self, src: int, space: int, ctx: int, tag: int) -> Handle | None:
        if space == USER:
            posted = self.posted.get(ctx)
            if posted:
                for i, h in enumerate(posted):
                    if _matches(h, src, tag):
                        del posted[i]
                        return h
            return None
        if space == SIDE:
            return self.side_posted.pop((ctx, src, tag), None)
        return None

    def _arrive(self, src: int, space: int, ctx: int, tag: int, data: bytes) -> None:
        """A whole message from ourselves: match it or keep it."""
        h = self._match(src, space, ctx, tag)
        if h is not None:
            self._fill(h, src, tag, memoryview(data))
        else:
            self._store_unexpected(src, space, ctx, tag, data)

    def _store_unexpected(self, src: int, space: int, ctx: int, tag: int, data) -> None:
        """Store a message no receive was waiting for."""
        if space == USER:
            self.unexpected[ctx].append((src, tag, data))
        elif space == SYS:
            self.side_unexpected[(ctx, src, -1 - tag)].append(data)
        elif space == BYE:
            self.conns[src].finished = True
        else:
            self.side_unexpected[(ctx, src, tag)].append(data)

    def _pump(self, conn: _Conn) -> None:
        """Read and dispatch everything this connection has for us now."""
        drained = False      # a read came back short: the socket is (very likely) empty
        while True:
            cur = conn.cur
            if cur is not None:
                dest, filled, info = cur
                need = len(dest) - filled
                have = conn.rhi - conn.rlo
                if have:
                    k = min(have, need)
                    dest[filled : filled + k] = conn.rmv[conn.rlo : conn.rlo + k]
                    conn.rlo += k
                    filled += k
                    need -= k
                if need >= _DIRECT:
                    got = self._read(conn, dest[filled:])
                    if not got:
                        cur[1] = filled
                        return
                    filled += got
                    need -= got
                cur[1] = filled
                if need == 0:
                    conn.cur = None
                    self._payload_done(conn.rank, dest, info)
                    continue
            elif conn.rhi - conn.rlo >= _FRAME.size:
                space, ctx, tag, n = _FRAME.unpack_from(conn.rbuf, conn.rlo)
                lo = conn.rlo = conn.rlo + _FRAME.size
                h = self._match(conn.rank, space, ctx, tag)
                if conn.rhi - lo >= n:      # all of it is here already
                    conn.rlo = lo + n
                    self._hand_over(h, conn.rank, space, ctx, tag, conn.rmv[lo : lo + n])
                    continue
                if h is not None and n <= len(h.target):
                    dest = h.target[:n]
                else:
                    dest = memoryview(bytearray(n))
                conn.cur = [dest, 0, (space, ctx, tag, n, h)]
                continue
            # Need more bytes: compact the buffer and read.
            if drained:
                return
            if conn.rlo:
                left = conn.rhi - conn.rlo
                conn.rmv[:left] = conn.rmv[conn.rlo : conn.rhi]
                conn.rlo, conn.rhi = 0, left
            got = self._read(conn, conn.rmv[conn.rhi :])
            if not got:
                return
            drained = conn.rhi + got < len(conn.rbuf)
            conn.rhi += got

    def _pump_ring(self, conn: _Conn) -> bool:
        """Take what *conn*'s ring holds; ring the writer's doorbell if it sleeps
        until room is freed. Whether anything was taken.

        Whole frames are handed on straight from the shared memory; anything
        else (a frame in pieces, or around the ring's end, or a stream under
        way) goes the general way, `_pump`.
        """
        rx = conn.rx
        words = rx.words
        start = words[_RING_TAIL]
        try:
            if conn.cur is not None or conn.rhi != conn.rlo:
                self._pump(conn)
            else:
                data, mask, cap = rx.data, rx.mask, rx.capacity
                src, size, tail = conn.rank, _FRAME_SIZE, start
                while True:
                    avail = words[_RING_HEAD] - tail
                    at = tail & mask
                    if avail < size or at + size > cap:
                        if avail:
                            self._pump(conn)
                        break
                    space, ctx, tag, n = _FRAME_UNPACK(data, at)
                    at += size
                    if avail < size + n or at + n > cap:
                        self._pump(conn)
                        break
                    payload = data[at : at + n]
                    try:
                        self._hand_over(self._match(src, space, ctx, tag), src, space, ctx, tag,
                                   payload)
                    finally:    # taken, even if handing it on failed: never delivered twice
                        payload.release()
                        tail += size + n
                        words[_RING_TAIL] = tail
        finally:
            if conn.rx is not None and words[_RING_WAITING]:
                words[_RING_WAITING] = 0      # one doorbell is enough
                self._ring_doorbell(conn)
        return conn.rx is not None and words[_RING_TAIL] != start

    def _hand_over(self, h: Handle | None, src: int, space: int, ctx: int, tag: int,
              data: memoryview) -> None:
        """A whole message, in a buffer that is about to be reused: into the receive
        *h* it matched (None: kept, as a copy)."""
        if h is None:
            self._store_unexpected(src, space, ctx, tag, bytearray(data))
        elif len(data) <= len(h.target):
            h.target[: len(data)] = data
            h.complete(completion(src, tag, len(data), None))
        else:
            self._fill(h, src, tag, data)

    def _read(self, conn: _Conn, view: memoryview) -> int:
        """Bytes read into *view*: 0 when nothing is there now, or the peer is lost."""
        if conn.rx is not None:
            return conn.rx.read_into(view)
        try:
            got = conn.sock.recv_into(view)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            self._lost(conn, _why(exc))
            return 0
        if got == 0:
            self._lost(conn, "its connection closed (it exited or was killed)")
        return got

    def _payload_done(self, src: int, dest: memoryview, info) -> None:
        space, ctx, tag, n, h = info
        if h is None:
            # A receive may have been posted while the payload was streaming in.
            self._arrive(src, space, ctx, tag, dest.obj)
        elif dest.obj is h.target.obj or n <= len(h.target):
            if dest.obj is not h.target.obj:
                h.target[:n] = dest
            h.complete(completion(src, tag, n, None))
        else:
            self._fill(h, src, tag, dest)

    def _lost(self, conn: _Conn, why: str) -> None:
        """A peer is gone: fail everything that can no longer complete (see the module)."""
        if conn.dead:
            return
        dead = conn.rank
        self.gone.append(dead)
        self.losses += 1
        if conn in self.ringed:
            self.ringed = tuple(c for c in self.ringed if c is not conn)
        else:
            self.unringed -= 1
        self.waiting_room.discard(conn)
        self._unmap(conn)       # what it wrote has been taken
        if conn.finished:
            why = "it has ended in good order"
        else:
            self.failed.append(dead)
        conn.dead = why
        for fd in (conn.sock.fileno(), conn.pidfd):
            if fd >= 0:
                try:
                    self.poller.unregister(fd)
                except (KeyError, ValueError, OSError):
                    pass
        err = self.failure(dead)
        gone = {ctx for ctx, group in self.groups.items() if dead in group}
        for ctx, posted in self.posted.items():
            member = ctx in gone
            every = member and ctx in self.collectives
            anys = _names.ANY_SOURCE if member and not conn.finished else dead
            for h in [h for h in posted if every or h.source == dead or h.source == anys]:
                posted.remove(h)
                h.complete(completion(dead, h.tag, 0, err))
        for key in [k for k in self.side_posted
                    if k[1] == dead or (k[0] in gone and k[0] in self.collectives)]:
            h = self.side_posted.pop(key)
            h.complete(completion(dead, h.tag, 0, err))
        for _parts, h, _n in conn.out:
            h.complete(completion(dead, 0, 0, err))
        conn.out.clear()
        conn.cur = None

    def _exited(self, conn: _Conn) -> None:
        """The peer's pidfd fired: take what it sent before dying, then fail the rest."""
        if not conn.dead:
            if conn.rx is not None:
                self._pump_ring(conn)
            else:
                self._pump(conn)
        self._lost(conn, "its process exited")

    # -- progress -------------------------------------------------------------------------
    def _spin(self, now: float) -> bool:
        """One turn of a spinning wait at monotonic time *now*: the rings, and the
        kernel once ``_LOOK_SECONDS`` have passed since it was last asked (on
        every turn if any peer's frames come through its socket).
        Whether frames moved through a ring."""
        if now >= self._look_at or self.unringed or not self.ringed:
            self._look_at = now + _LOOK_SECONDS
            return self.progress(0)
        return self._rings()

    def _rings(self) -> bool:
        """Take what the rings hold and write what full rings can take now;
        whether frames moved."""
        moved = False
        for conn in self.ringed:
            words = conn.rx.words
            if words[_RING_HEAD] != words[_RING_TAIL]:
                moved = self._pump_ring(conn) or moved
        if self.waiting_room:
            for conn in list(self.waiting_room):
                moved = self._flush(conn) or moved
        return moved

    def spin_once(self) -> bool:
        """Progress without blocking, as a turn of a spinning wait does: the rings
        now, the kernel only once every ``_LOOK_SECONDS``. Whether frames moved."""
        return self._spin(_time.monotonic())

    def progress(self, timeout: float | None = 0) -> bool:
        """Move bytes: wait up to *timeout* seconds (None: until something happens);
        whether frames moved through a ring (or a peer was found gone).

        Rings are looked at first, then the kernel (sockets, pidfds). With rings,
        a call that may block returns within ``_ring.RECHECK``.
        """
        moved = self._rings()
        ringed = self.ringed
        if not self.by_fd:
            return moved
        # Frames taken from a ring may be what the caller waits for: look, not sleep.
        ms = 0 if moved else -1 if timeout is None else int(timeout * 1000)
        try:
            if ms != 0 and (ringed or self.waiting_room):
                events = self._sleep(ringed, ms)
            else:
                events = self.poller.poll(ms)
        except InterruptedError:
            return moved
        for fd, ev in events:
            conn = self.by_fd[fd]
            if conn.dead:
                continue
            if fd == conn.pidfd:
                self._exited(conn)
                moved = True
                continue
            if ev & _select.POLLOUT:
                self._flush(conn)
            if ev & (_select.POLLIN | _select.POLLHUP | _select.POLLERR):
                if conn.rx is not None:
                    moved = self._doorbell(conn) or moved
                else:
                    self._pump(conn)
        return moved

    def _sleep(self, ringed: tuple, ms: int) -> list:
        """Poll the kernel for up to *ms* ms (-1: as long as the rings allow) with
        the rings' readers asleep and the writers of full rings waiting, so the
        other sides ring doorbells; a doorbell both sides missed (see `_ring`)
        costs at most ``_ring.RECHECK``."""
        full = [conn for conn in self.waiting_room if conn.tx is not None]
        for conn in ringed:
            conn.rx.sleep(True)
        for conn in full:
            conn.tx.wait_for_room(True)
        try:
            if any(conn.rx.available() for conn in ringed) or \
                    any(conn.tx.room() for conn in full):
                ms = 0
            else:
                bound = max(1, int(_ring.RECHECK * 1000))
                ms = bound if ms < 0 else min(ms, bound)
            return self.poller.poll(ms)
        finally:
            for conn in ringed:
                conn.rx.sleep(False)
            for conn in full:
                if conn.tx is not None:
                    conn.tx.wait_for_room(False)

    def _doorbell(self, conn: _Conn) -> bool:
        """A ringed connection's socket is readable: doorbells, or its end.
        Whether anything moved (frames taken, or the peer found gone)."""
        try:
            got = conn.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            self._pump_ring(conn)   # what it wrote before it went is still ours
            self._lost(conn, _why(exc))
            return True
        moved = self._pump_ring(conn)
        if not got:
            self._lost(conn, "its connection closed (it exited or was killed)")
            return True
        return moved

    def wait(self, done) -> None:
        """Progress until ``done()`` is true: poll, then sleep in poll once nothing
        has moved through a ring for ``_SPIN_SECONDS``.

        Polling first saves the wake-up of a sleeping process (tens to hundreds
        of µs here) when the answer is already on its way; with more ranks than
        CPUs, yielding while polling keeps the other ranks moving.
        """
        if done() or (self._rings() and done()):    # what it waits for may be in a ring
            return
        mono = _time.monotonic
        until = mono() + _SPIN_SECONDS
        while not done():
            now = mono()
            if now < until:
                if self._spin(now):      # frames move: spin on, not sleep
                    until = now + _SPIN_SECONDS
                if self.crowded:
                    _sched_yield()
                continue
            if all(c is None or c.dead for c in self.conns):
                if self.failed:
                    raise self.failure(self.failed[0])
                raise RuntimeError("cmampi: deadlock: waiting for a message that no live "
                                   "rank can send")
            if self.progress(None):     # woken with frames: spin again before sleeping
                until = _time.monotonic() + _SPIN_SECONDS

    def _unmap(self, conn: _Conn) -> None:
        for ring in (conn.rx, conn.tx):
            if ring is not None:
                ring.close()
        conn.rx = conn.tx = None

    def close(self) -> None:
        self.ringed = ()
        self.unringed = 0
        self.waiting_room.clear()
        for fd in list(self.by_fd):
            try:
                self.poller.unregister(fd)
            except (KeyError, ValueError, OSError):
                pass
        self.by_fd.clear()
        for conn in self.conns:
            if conn is not None:
                conn.dead = conn.dead or "this rank closed its connections"
                self._unmap(conn)
                try:
                    conn.sock.close()
                    if conn.pidfd >= 0:
                        _os.close(conn.pidfd)
                        conn.pidfd = -1
                except OSError:
                    pass

    # -- system messages (communicator management) ---------------------------------------
    def sys_allgather(self, ctx: int, group: Sequence[int], seq: int, obj: Any) -> list[Any]:
        """Every member's *obj*, in group order (pickled over the SYS space)."""
        data = _pickle.dumps(obj)
        handles = [self.post_send(r, SYS, ctx, seq, data) for r in group if r != self.rank]
        out = []
        for r in group:
            if r == self.rank:
                out.append(obj)
                continue
            key = (ctx, r, -1 - seq)
            self.wait(lambda key=key, r=r: bool(self.side_unexpected.get(key))
                      or self.is_dead(r))
            if not self.side_unexpected.get(key):
                raise self.failure(r)
            out.append(_pickle.loads(self.side_unexpected[key].popleft()))
        self.wait(lambda: all(h.done for h in handles))
        return out

    def is_dead(self, r: int) -> bool:
        """Whether world rank *r*'s connection has failed or closed."""
        conn = self.conns[r]
        return conn is not None and conn.dead is not None


def _why(exc: OSError) -> str:
    """How a connection broke, for `PeerFailed`."""
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
        return f"its connection broke ({exc.strerror}: it exited or was killed)"
    return exc.strerror or str(exc)


def _frame(space: int, ctx: int, tag: int, view: memoryview) -> list:
    """The parts of a frame carrying *view*: its header, then the payload if any."""
    head = _FRAME.pack(space, ctx, tag, len(view))
    return [head, view] if len(view) else [head]


def _consume(parts: list, sent: int) -> None:
    """Drop the first *sent* bytes from *parts* (bytes and memoryviews), in place."""
    while sent and parts:
        k = len(parts[0])
        if sent >= k:
            sent -= k
            parts.pop(0)
        else:
            parts[0] = memoryview(parts[0])[sent:]
            sent = 0


def _matches(h: Handle, src: int, tag: int) -> bool:
    return (h.source == _names.ANY_SOURCE or h.source == src) and \
        (h.tag == _names.ANY_TAG or h.tag == tag)


def hub_from_environ() -> Hub:
    """The hub of a rank started by ``python -m cmampi`` (or a world of one)."""
    env = _os.environ
    if "CMAMPI_RANK" not in env:
        return Hub(0, 1, None, b"")
    rank, size = int(env["CMAMPI_RANK"]), int(env["CMAMPI_SIZE"])
    directory = env["CMAMPI_DIR"]
    token = bytes.fromhex(env["CMAMPI_TOKEN"]).ljust(32, b"\0")[:32]
    expected = None
    pids_file = _os.path.join(directory, "pids")
    deadline = _time.monotonic() + _handshake.CONNECT_TIMEOUT
    while size > 1:
        try:
            with open(pids_file) as f:
                expected = [int(x) for x in f.read().split()]
            if len(expected) == size:
                break
        except FileNotFoundError:
            pass
        if _time.monotonic() > deadline:
            raise TimeoutError("cmampi: the launcher never published the rank pids")
        _time.sleep(0.002)
    hub = Hub(rank, size, directory, token, expected)
    if size > 1:
        _say_goodbye_at_exit(hub)
    return hub


def hub_beside(raw) -> Hub:
    """A hub among the ranks of mpi4py communicator *raw* (collective), so the
    socket channel can be measured beside the MPI one in the same processes.

    Rank 0 makes the private rendezvous directory and the token and sends them
    through *raw*; every rank's pid comes from *raw* too, as the launcher's pid
    file would give it. The directory is gone when this returns.
    """
    import shutil
    import tempfile

    rank, size = raw.Get_rank(), raw.Get_size()
    directory = token = None
    if rank == 0:
        directory, token = tempfile.mkdtemp(prefix="cmampi-"), _os.urandom(32)
    try:
        directory, token = raw.bcast((directory, token), root=0)
        pids = raw.allgather(_os.getpid())
        hub = Hub(rank, size, directory, token, pids)
        raw.Barrier()                      # everyone is connected
    finally:
        if rank == 0:
            shutil.rmtree(directory, ignore_errors=True)
    _say_goodbye_at_exit(hub)
    return hub


def _say_goodbye_at_exit(hub: Hub) -> None:
    """Have *hub* say goodbye when the interpreter exits, unless an exception ends it."""
    import atexit
    import sys

    previous = sys.excepthook

    def excepthook(*args) -> None:
        hub.crashed = True
        previous(*args)

    sys.excepthook = excepthook
    atexit.register(hub.goodbye)


class SocketChannel:
    """One communicator over the hub: a context id and a group of world ranks."""

    names = _names
    cma_min = CMA_MIN_DEFAULTS["socket"]

    def __init__(self, hub: Hub, ctx: int, group: list[int]) -> None:
        self.hub = hub
        self.ctx = ctx
        self.group = group                     # local rank -> world rank
        self.local = {w: i for i, w in enumerate(group)}
        self.rank = self.local[hub.rank]
        self.size = len(group)
        self.pids = [hub.pids[w] for w in group]
        self.nodes = ["local"] * self.size     # Unix sockets: one node, always
        # SO_PEERCRED reports peers' pids as our namespace sees them.
        self.pidns = [None] * self.size
        # As the kernel shows it, to those who may ptrace-read the peer (else None).
        self.userns = [user_namespace(pid) for pid in self.pids]
        self.tag_ub = _names.TAG_UB
        self.xid_limit = (self.tag_ub - 1) // 2
        self._seq = 0
        self._last = (0, 0, 0)                 # what `last` returns
        hub.groups[ctx] = tuple(group)

    def collective(self) -> None:
        """Make this a context for collectives only: once a member has failed, every
        operation on it fails, as every collective needs every member."""
        self.hub.collectives.add(self.ctx)

    def _gone(self, source: int) -> int | None:
        """The dead world rank that keeps a message from *source* (or ANY_SOURCE) from coming."""
        hub = self.hub
        if source == _names.ANY_SOURCE:
            return hub.dead_member(self.ctx)
        w = self.group[source]
        if hub.is_dead(w):
            return w
        return hub.broken(self.ctx)

    # -- rank translation -----------------------------------------------------------------
    def _world_rank(self, r: int) -> int:
        return r if r == _names.ANY_SOURCE else self.group[r]

    def _info(self, h: Handle):
        src, tag, n, err = h.info
        local = h.local if h.local is not None else self.local
        return completion(local.get(src, src), tag, n, err)

    def _own(self, h: Handle) -> Handle:
        h.local = self.local
        return h

    # -- user space -----------------------------------------------------------------------
    def send(self, data, dest: int, tag: int) -> None:
        if self.hub.send_now(self.group[dest], USER, self.ctx, tag, data):
            return
        h = self.hub.post_send(self.group[dest], USER, self.ctx, tag, data)
        if not h.done:
            self.hub.wait(lambda: h.done)
        if h.info.error is not None:
            raise h.info.error

    def isend(self, data, dest: int, tag: int) -> Handle:
        return self._own(self.hub.post_send(self.group[dest], USER, self.ctx, tag, data))

    def recv(self, buf, source: int, tag: int):
        h = self.irecv(buf, source, tag)
        self.hub.wait(lambda: h.done)
        src, tg, n, err = self._info(h)
        if err is not None:
            raise err
        return src, tg, n

    def irecv(self, buf, source: int, tag: int) -> Handle:
        return self._own(self.hub.post_recv(self.ctx, self._world_rank(source), tag, buf))

    def _find(self, source: int, tag: int):
        q = self.hub.unexpected[self.ctx]
        if not q:
            return None
        ws = self._world_rank(source)
        for i, (src, tg, _data) in enumerate(q):
            if (ws == _names.ANY_SOURCE or ws == src) and (tag == _names.ANY_TAG or tag == tg):
                return i
        return None

    def mprobe(self, source: int, tag: int):
        """Block until a message matches; take it out of the stream unreceived."""
        hub = self.hub
        i = self._find(source, tag)
        if i is None:
            hub.spin_once()
            i = self._find(source, tag)
        if i is None:
            if self._gone(source) is None:   # liveness changes only when a peer is lost
                losses = hub.losses
                hub.wait(lambda: self._find(source, tag) is not None
                         or (hub.losses != losses and self._gone(source) is not None))
            i = self._find(source, tag)
            if i is None:
                raise hub.failure(self._gone(source))
        q = hub.unexpected[self.ctx]
        src, tg, data = q[i]
        del q[i]
        return data, (self.local[src], tg, len(data))

    def mrecv(self, handle, buf) -> None:
        view = _bytes_view(buf)
        view[: len(handle)] = handle

    def recv_object(self, source: int, tag: int):
        """Blocking receive of a message, unpickled (an empty one is None); its
        (source, tag, nbytes) are `last`'s."""
        data, self._last = self.mprobe(source, tag)
        return _pickle.loads(data) if len(data) else None

    def last(self):
        """(source, tag, nbytes) of the message `recv_object` returned last."""
        return self._last

    def take_any(self):
        self.hub.spin_once()
        q = self.hub.unexpected[self.ctx]
        if not q:
            return None
        src, tag, data = q.popleft()
        return self.local[src], tag, data

    def probe_any(self, source: int = _names.ANY_SOURCE, block: bool = True) -> None:
        """Wait until some user-space message has arrived (not at all unless *block*);
        raise if none has and *source* (a rank, or ANY_SOURCE) can no longer send one."""
        hub = self.hub
        q = hub.unexpected[self.ctx]
        if block:
            hub.wait(lambda: bool(q) or self._gone(source) is not None)
        else:
            hub.spin_once()
        if not q:
            dead = self._gone(source)
            if dead is not None:
                raise hub.failure(dead)

    # -- side space -----------------------------------------------------------------------
    def send_reply(self, data, dest: int, xid: int) -> None:
        self.send_side(data, dest, 2 * xid)

    def irecv_reply(self, buf, source: int, xid: int) -> Handle:
        return self._own(self.hub.post_side(self.ctx, self.group[source], 2 * xid, buf))

    def send_payload(self, data, dest: int, xid: int) -> None:
        self.send_side(data, dest, 2 * xid + 1)

    def isend_payload(self, data, dest: int, xid: int) -> Handle:
        return self._own(self.hub.post_send(self.group[dest], SIDE, self.ctx, 2 * xid + 1,
                                            data))

    def irecv_payload(self, buf, source: int, xid: int) -> Handle:
        return self._own(self.hub.post_side(self.ctx, self.group[source], 2 * xid + 1, buf))

    def send_side(self, data, dest: int, key: int) -> None:
        # Side messages answer a peer or continue what it waits for: a dead peer
        # needs none, and whatever we wait for from it fails on its own.
        if self.hub.send_now(self.group[dest], SIDE, self.ctx, key, data):
            return
        try:
            h = self.hub.post_send(self.group[dest], SIDE, self.ctx, key, data)
        except PeerFailed:
            return
        if not h.done:
            self.hub.wait(lambda: h.done)

    # -- completion -----------------------------------------------------------------------
    def waitany(self, handles: Sequence[Handle]):
        done = None

        def any_done() -> bool:
            nonlocal done
            for i, h in enumerate(handles):
                if h.done:
                    done = i
                    return True
            return False

        self.hub.wait(any_done)
        return done, self._info(handles[done])

    def test(self, handle: Handle):
        if not handle.done:
            self.hub.spin_once()
        return self._info(handle) if handle.done else None

    #: Stands in a handle list for a handle already taken: never completes.
    null_handle = Handle()

    def testany(self, handles: Sequence[Handle]):
        """(index, info) of a completed handle of *handles*, without blocking; or None."""
        self.hub.spin_once()
        for i, h in enumerate(handles):
            if h.done:
                return i, self._info(h)
        return None

    def wait_cancelled(self, handle: Handle):
        """Complete a cancelled handle: None if the cancel won, else its message info."""
        if not handle.done:
            posted = self.hub.posted.get(handle.ctx, [])
            if handle in posted:
                posted.remove(handle)
                handle.complete(completion(_names.ANY_SOURCE, _names.ANY_TAG, 0, None))
                return None
            self.hub.wait(lambda: handle.done)
        return self._info(handle)

    # -- communicators --------------------------------------------------------------------
    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def allgather(self, obj: Any) -> list[Any]:
        """Every rank's *obj* (small, pickled), in rank order; collective."""
        return self.hub.sys_allgather(self.ctx, self.group, self._next_seq(), obj)

    def barrier(self) -> None:
        self.allgather(None)

    def dup(self) -> SocketChannel:
        ctx = max(self.allgather(self.hub.next_ctx))
        self.hub.next_ctx = ctx + 1
        return SocketChannel(self.hub, ctx, list(self.group))

    def create_group(self, members: list[int], tag: int) -> SocketChannel:
        """A channel over world ranks *members* (this process among them, all of
        them in this channel); collective over *members* only. Their exchange
        has a context of its own and sequence numbers from *tag*, so the other
        ranks' next collective exchanges on this channel still match."""
        # A context of its own for the exchange (high bit set: never a
        # communicator's), so it matches nothing else on this channel.
        ctx = max(self.hub.sys_allgather(self.ctx | 0x80000000, members, tag,
                                         self.hub.next_ctx))
        self.hub.next_ctx = ctx + 1
        return SocketChannel(self.hub, ctx, members)

    def split(self, color: int, key: int) -> SocketChannel | None:
        entries = self.allgather((color, key, self.hub.next_ctx))
        base = max(e[2] for e in entries)
        colors = sorted({e[0] for e in entries if e[0] != _names.UNDEFINED and e[0] >= 0})
        self.hub.next_ctx = base + len(colors) + 1
        if color == _names.UNDEFINED or color < 0:
            return None
        members = sorted((e[1], r) for r, e in enumerate(entries) if e[0] == color)
        group = [self.group[r] for _, r in members]
        return SocketChannel(self.hub, base + colors.index(color), group)

    def free(self) -> None:
        pass
