"""The socket channel's hub: one per process, connected to every other rank.

The hub sets up the connections (`_handshake`), queues frames to peers
(`_peer.Peer` writes them), makes progress (takes what rings and sockets hold
and hands it to `_matching.Matching`) and notices peers' ends. How a peer's
death fails operations is described in `cmampi.channel.socket`.
"""

from __future__ import annotations

import os as _os
import pickle as _pickle
import select as _select
import socket as _socket
import time as _time
from collections.abc import Sequence
from typing import Any

from .. import _names, _tuning
from .._access import allow_peers
from .._config import config as _config
from .._serial import THREADS as _THREADS
from .._serial import nap as _nap
from .._serial import pause as _pause
from .._serial import serialized as _serialized
from . import _handshake, _ring, completion
from ._matching import BYE, SIDE, SYS, USER, Handle, Matching, bytes_view
from ._peer import FRAME, Peer, PeerFailed, consume, frame, why

__all__ = ["Hub", "hub_beside", "hub_from_environ"]

_RING_HEAD, _RING_TAIL, _RING_ASLEEP = _ring.HEAD, _ring.TAIL, _ring.ASLEEP
_FLAT = (bytes, bytearray)      # taken as they are: flat bytes already
_LOOK_EVERY = 16     # ring sends between two looks at the kernel
_LOOK_SECONDS = _tuning.LOOK_SECONDS
_SPIN_SECONDS = _tuning.SPIN_SECONDS
#: What `Hub.ctx_held` holds for a context id a communicator uses.
_IN_USE = object()
#: With several threads, how long a wait that saw nothing move sleeps between
#: looks (without the engine's lock): it cannot sleep in poll() holding it.
_SHARED_NAP = 2e-4
_sched_yield = getattr(_os, "sched_yield", lambda: None)


class Hub:
    """All connections of this process: sending, progress, failures; the matching
    over them is `matching`'s."""

    def __init__(self, rank: int, size: int, directory: str | None, token: bytes,
                 expected_pids: list[int] | None = None,
                 rings: bool | None = None) -> None:
        self.rank = rank
        self.size = size
        self.pids: list[int] = [0] * size
        self.pids[rank] = _os.getpid()
        self.conns: list[Peer | None] = [None] * size
        self.matching = Matching(self._goodbye_from)
        self.next_ctx = 1
        #: Context ids in use here (`_IN_USE`), or held by a communicator's
        #: creation under way (its token): creations from several threads at once
        #: must not agree on one id (see `SocketChannel._new_ctx`).
        self.ctx_held: dict[int, object] = {}
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
        self.by_fd: dict[int, Peer] = {}
        #: Whether frames may travel through shared-memory rings (both sides must agree).
        self.use_rings = (_config.rings if rings is None else rings) and _ring.supported()
        #: Live connections whose frames travel through rings; those of them with
        #: frames waiting for room in their ring.
        self.ringed: tuple = ()
        self.waiting_room: set[Peer] = set()
        self.unringed = 0        # live connections whose frames come through the socket
        self._sends = 0
        self._look_at = 0.0      # when a spinning wait next looks at the kernel
        if size > 1:
            if directory is None:
                raise ValueError("cmampi: a hub of several ranks needs a rendezvous directory")
            allow_peers(_config)    # before connecting: peers probe us once connected
            _handshake.connect_all(self.rank, self.size, directory, token, expected_pids,
                                   self.use_rings, lambda peer: self.conns[peer] is not None,
                                   self._add)

    # -- set-up ---------------------------------------------------------------------------
    def _add(self, sock: _socket.socket, peer: int, pid: int, rx=None, tx=None) -> None:
        sock.setblocking(False)
        conn = Peer(sock, peer, pid)
        conn.rx, conn.tx = rx, tx
        conn.on_lost = self._lost
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
        return PeerFailed(rank, self.peer(rank).dead or "", self.pids[rank])

    def peer(self, rank: int) -> Peer:
        """The connection to world rank *rank* (any rank but this one)."""
        conn = self.conns[rank]
        if conn is None:
            raise ValueError(f"cmampi: rank {rank} is this rank: it has no connection")
        return conn

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
        view = bytes_view(data) if data is not None else memoryview(b"")
        n = len(view)
        if dest == self.rank:   # to ourselves: a copy goes straight to matching
            self.matching.arrive(self.rank, space, ctx, tag, bytes(view))
            h.complete(completion(dest, tag, n, None))
            return h
        conn = self.peer(dest)
        if conn.dead:
            raise self.failure(dest)
        dead = self.broken(ctx)
        if dead is not None:
            raise self.failure(dead)
        parts = frame(space, ctx, tag, view)
        if not conn.out:     # nothing queued before it: try to write it all now
            try:
                sent = conn.write(parts)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                sent = -1    # _flush meets the error again and handles it
            if sent == FRAME.size + n:
                h.complete(completion(self.rank, 0, n, None))
                return h
            if sent > 0:
                consume(parts, sent)
        conn.out.append([parts, h, n])
        if len(conn.out) == 1:
            self._flush(conn)
        if conn.out:
            self._want_room(conn)
        return h

    def send_now(self, dest: int, space: int, ctx: int, tag: int, data) -> bool:
        """Write a frame to world rank *dest* at once if nothing is queued before it
        and it fits; whether it did (else `post_send` queues it, or raises)."""
        return self.put_now(dest, space, ctx, tag, data) >= 0

    def put_now(self, dest: int, space: int, ctx: int, tag: int, data) -> int:
        """`send_now`, telling the payload bytes written (-1: none, nothing was)."""
        conn = self.conns[dest]     # None for ourselves
        if conn is None or conn.out or conn.dead:
            return -1
        tx = conn.tx
        if tx is None:
            return -1
        self._sends += 1
        if not self._sends % _LOOK_EVERY:   # rings say nothing of a peer's end: ask
            self.progress(0)
            if conn.dead:
                return -1
        if ctx in self.collectives and self.broken(ctx) is not None:
            return -1
        view = data if type(data) in _FLAT else bytes_view(data)
        n = len(view)
        if not tx.put(FRAME.pack(space, ctx, tag, n), view):
            return -1
        if tx.words[_RING_ASLEEP]:
            conn.ring_doorbell()
        return n

    def _want_room(self, conn: Peer) -> None:
        """Flush *conn*'s queue when it can take more: on POLLOUT (socket) or at
        every progress (ring)."""
        if conn.tx is not None:
            self.waiting_room.add(conn)
        elif not conn.polling_out:
            conn.polling_out = True
            self.poller.modify(conn.sock.fileno(), _select.POLLIN | _select.POLLOUT)

    def _flush(self, conn: Peer) -> bool:
        """Write what *conn*'s queue can take now; whether anything was written."""
        wrote = False
        while conn.out:
            item = conn.out[0]
            parts, h, n = item
            try:
                sent = conn.write(parts)
            except (BlockingIOError, InterruptedError):
                return wrote
            except OSError as exc:
                # Take what the peer sent before it went: that is still ours.
                conn.pump(self.matching)
                self._lost(conn, why(exc))
                return wrote
            wrote = wrote or sent > 0
            consume(parts, sent)
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
        h = Handle(USER, ctx, source, tag, bytes_view(target))
        if self.matching.take_unexpected(h):
            return h
        if source == _names.ANY_SOURCE:
            dead = self.dead_member(ctx)
        elif source != self.rank and self.peer(source).dead:
            dead = source
        else:
            dead = self.broken(ctx)
        if dead is not None:
            h.complete(completion(dead, tag, 0, self.failure(dead)))
            return h
        self.matching.post(h)
        return h

    def post_side(self, ctx: int, source: int, key: int, target) -> Handle:
        """Post a side-space receive for exactly (source, key)."""
        h = Handle(SIDE, ctx, source, key, bytes_view(target))
        if self.matching.take_side(h):
            return h
        conn = self.conns[source]
        dead = source if conn is not None and conn.dead else self.broken(ctx)
        if dead is not None:
            h.complete(completion(dead, key, 0, self.failure(dead)))
            return h
        self.matching.post(h)
        return h

    def _goodbye_from(self, rank: int) -> None:
        """World rank *rank* said goodbye: its leaving will be no failure."""
        self.peer(rank).finished = True

    def _lost(self, conn: Peer, why: str) -> None:
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
        conn.unmap()       # what it wrote has been taken
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
        member_of = {ctx for ctx, group in self.groups.items() if dead in group}
        self.matching.fail(dead, member_of, self.collectives, conn.finished, err)
        for _parts, h, _n in conn.out:
            h.complete(completion(dead, 0, 0, err))
        conn.out.clear()
        if conn.cur is not None:    # a payload streaming in: its receive, if matched, fails
            h = conn.cur[2][4]
            if h is not None:
                h.complete(completion(dead, h.tag, 0, err))
            conn.cur = None

    def _exited(self, conn: Peer) -> None:
        """The peer's pidfd fired: take what it sent before dying, then fail the rest."""
        if not conn.dead:
            if conn.rx is not None:
                conn.pump_ring(self.matching)
            else:
                conn.pump(self.matching)
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
                moved = conn.pump_ring(self.matching) or moved
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
                    conn.pump(self.matching)
        return moved

    def _sleep(self, ringed: tuple, ms: int) -> list:
        """Poll the kernel for up to *ms* ms (-1: as long as the rings allow) with
        the rings' readers asleep and the writers of full rings waiting, so the
        other sides ring doorbells; a doorbell both sides missed (see `_ring`)
        costs at most ``_ring.RECHECK``."""
        full = [(conn, conn.tx) for conn in self.waiting_room if conn.tx is not None]
        for conn in ringed:
            conn.rx.sleep(True)
        for _, tx in full:
            tx.wait_for_room(True)
        try:
            if any(conn.rx.available() for conn in ringed) or any(tx.room() for _, tx in full):
                ms = 0
            else:
                bound = max(1, int(_ring.RECHECK * 1000))
                ms = bound if ms < 0 else min(ms, bound)
            return self.poller.poll(ms)
        finally:
            for conn in ringed:
                conn.rx.sleep(False)
            for conn, tx in full:
                if conn.tx is not None:     # else lost meanwhile: its rings are unmapped
                    tx.wait_for_room(False)

    def _doorbell(self, conn: Peer) -> bool:
        """A ringed connection's socket is readable: doorbells, or its end.
        Whether anything moved (frames taken, or the peer found gone)."""
        try:
            got = conn.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            conn.pump_ring(self.matching)   # what it wrote before it went is still ours
            self._lost(conn, why(exc))
            return True
        moved = conn.pump_ring(self.matching)
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
        if len(_THREADS) > 1:
            self._wait_shared(done)
            return
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
            self._check_senders()
            if self.progress(None):     # woken with frames: spin again before sleeping
                until = _time.monotonic() + _SPIN_SECONDS

    def _check_senders(self) -> None:
        """Raise if no live rank is left to send what a wait waits for."""
        if all(c is None or c.dead for c in self.conns):
            if self.failed:
                raise self.failure(self.failed[0])
            raise RuntimeError("cmampi: deadlock: waiting for a message that no live "
                               "rank can send")

    @_serialized
    def _wait_shared(self, done) -> None:
        """`wait` while several threads run: under the engine's lock, which a
        thread must hold to touch the hub (one poller, one matching state), and
        never sleeping in the kernel while holding it: the thread that sends
        what this one waits for may need it. Spins, handing the lock to any
        thread that waits for it, then naps between looks."""
        mono = _time.monotonic
        until = mono() + _SPIN_SECONDS
        while not done():
            now = mono()
            if self.progress(0) or self._rings():
                until = now + _SPIN_SECONDS
            elif now >= until:
                self._check_senders()
                _nap(_SHARED_NAP)
                continue
            _pause(not self.crowded)

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
                conn.unmap()
                try:
                    conn.sock.close()
                    if conn.pidfd >= 0:
                        _os.close(conn.pidfd)
                        conn.pidfd = -1
                except OSError:
                    pass

    # -- system messages (communicator management) ---------------------------------------
    @_serialized
    def sys_allgather(self, ctx: int, group: Sequence[int], seq: int, obj: Any) -> list[Any]:
        """Every member's *obj*, in group order (pickled over the SYS space)."""
        data = _pickle.dumps(obj)
        handles = [self.post_send(r, SYS, ctx, seq, data) for r in group if r != self.rank]
        side = self.matching.side_unexpected
        out = []
        for r in group:
            if r == self.rank:
                out.append(obj)
                continue
            key = (ctx, r, -1 - seq)
            self.wait(lambda key=key, r=r: bool(side.get(key)) or self.is_dead(r))
            if not side.get(key):
                raise self.failure(r)
            out.append(_pickle.loads(side[key].popleft()))
        self.wait(lambda: all(h.done for h in handles))
        return out

    # -- context ids ----------------------------------------------------------------------
    def propose_ctx(self, owner: object) -> int:
        """A context id free here, held for creation *owner*: this rank's proposal."""
        ctx = self.next_ctx    # every id from here on is free (see `hold_ctx`)
        self.hold_ctx(ctx, 1, owner)
        return ctx

    def hold_ctx(self, lo: int, n: int, owner: object) -> bool:
        """Hold ids ``lo .. lo+n-1`` for *owner*; False if another holds or uses one."""
        self.next_ctx = max(self.next_ctx, lo + n)
        ids = range(lo, lo + n)
        if any(self.ctx_held.get(c, owner) is not owner for c in ids):
            return False
        for c in ids:
            self.ctx_held[c] = owner
        return True

    def settle_ctx(self, owner: object, keep: range) -> None:
        """Creation *owner* is over: *keep* is in use, the rest it held is free."""
        for c in [c for c, o in self.ctx_held.items() if o is owner]:
            del self.ctx_held[c]
        for c in keep:
            self.ctx_held[c] = _IN_USE

    def is_dead(self, r: int) -> bool:
        """Whether world rank *r*'s connection has failed or closed."""
        conn = self.conns[r]
        return conn is not None and conn.dead is not None


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
        if rank == 0 and directory is not None:
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
