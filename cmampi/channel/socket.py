"""The socket channel: control traffic over Unix sockets between the ranks of one job.

One ``Hub`` per process (`_hub`) holds a connection to every other rank (set
up at start, all to all, by `_handshake`; one `_peer.Peer` each) and does, in
`_matching`, the matching that MPI does for the MPI channel: posted receives
in posting order, unexpected messages in arrival order, per communicator
context. ``SocketChannel`` is one communicator's view of the hub.
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

import pickle as _pickle
from collections.abc import Callable, Sequence
from typing import Any

from .. import _names
from .._cma import user_namespace
from .._config import CMA_MIN_DEFAULTS
from .._serial import serialized
from .._tuning import CMA_MIN_BUSY_DEFAULTS
from . import completion
from ._hub import Hub, hub_beside, hub_from_environ
from ._matching import SIDE, USER, Handle, bytes_view
from ._peer import PeerFailed

__all__ = ["Hub", "PeerFailed", "SocketChannel", "hub_beside", "hub_from_environ"]


class SocketChannel:
    """One communicator over the hub: a context id and a group of world ranks."""

    names = _names
    cma_min = CMA_MIN_DEFAULTS["socket"]
    cma_min_busy = CMA_MIN_BUSY_DEFAULTS["socket"]

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
        hub, world = self.hub, self.group[dest]
        n = hub.put_now(world, USER, self.ctx, tag, data)
        if n < 0:
            return self._own(hub.post_send(world, USER, self.ctx, tag, data))
        h = Handle(USER, self.ctx)      # written already: done
        h.complete(completion(hub.rank, 0, n, None))
        h.local = self.local
        return h

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
        q = self.hub.matching.unexpected[self.ctx]
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
                gone = self._gone(source)
                assert gone is not None, "the wait ends with a match or a loss"
                raise hub.failure(gone)
        q = hub.matching.unexpected[self.ctx]
        src, tg, data = q[i]
        del q[i]
        return data, (self.local[src], tg, len(data))

    def mrecv(self, handle, buf) -> None:
        view = bytes_view(buf)
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
        q = self.hub.matching.unexpected[self.ctx]
        if not q:
            return None
        src, tag, data = q.popleft()
        return self.local[src], tag, data

    def probe_any(self, source: int = _names.ANY_SOURCE, block: bool = True) -> None:
        """Wait until some user-space message has arrived (not at all unless *block*);
        raise if none has and *source* (a rank, or ANY_SOURCE) can no longer send one."""
        hub = self.hub
        q = hub.matching.unexpected[self.ctx]
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
        done = -1

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
            if self.hub.matching.cancel(handle):
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

    def _new_ctx(self, gather: Callable[[Any], list], count: Callable[[list], int],
                 extra: Any = None) -> tuple[int, list]:
        """Context ids for new communicators, agreed by the ranks *gather*
        exchanges with: (the first id, the ranks' *extra*); *count* says from
        those how many ids. Each rank proposes an id free here, the largest
        wins, and the ranks confirm that it (and the ids after it) is free on
        each of them: another thread's creation, under way at once, may have
        taken it meanwhile (then they try again)."""
        hub, owner = self.hub, object()
        while True:
            entries = gather((hub.propose_ctx(owner), extra))
            lo, extras = max(e[0] for e in entries), [e[1] for e in entries]
            n = count(extras)
            free = n == 0 or hub.hold_ctx(lo, n, owner)
            agreed = all(gather(free))
            hub.settle_ctx(owner, range(lo, lo + n) if agreed else range(0))
            if agreed:
                return lo, extras

    @serialized
    def dup(self) -> SocketChannel:
        ctx, _ = self._new_ctx(self.allgather, lambda _: 1)
        return SocketChannel(self.hub, ctx, list(self.group))

    @serialized
    def create_group(self, members: list[int], tag: int) -> SocketChannel:
        """A channel over world ranks *members* (this process among them, all of
        them in this channel); collective over *members* only. Their exchange
        has a context of its own and sequence numbers from *tag*, so the other
        ranks' next collective exchanges on this channel still match."""
        # A context of its own for the exchange (high bit set: never a
        # communicator's), so it matches nothing else on this channel.
        def gather(obj: Any) -> list:
            return self.hub.sys_allgather(self.ctx | 0x80000000, members, tag, obj)
        ctx, _ = self._new_ctx(gather, lambda _: 1)
        return SocketChannel(self.hub, ctx, members)

    @serialized
    def split(self, color: int, key: int) -> SocketChannel | None:
        def colors_of(entries: list) -> list:
            return sorted({c for c, _ in entries if c != _names.UNDEFINED and c >= 0})
        base, entries = self._new_ctx(self.allgather, lambda entries: len(colors_of(entries)),
                                      (color, key))
        if color == _names.UNDEFINED or color < 0:
            return None
        members = sorted((k, r) for r, (c, k) in enumerate(entries) if c == color)
        group = [self.group[r] for _, r in members]
        return SocketChannel(self.hub, base + colors_of(entries).index(color), group)

    def free(self) -> None:
        pass
