"""The socket channel's matching, as MPI does it for the MPI channel.

Per communicator context: posted receives in posting order, unexpected messages
in arrival order, a receive of ``ANY_SOURCE``/``ANY_TAG`` matching the first
that fits. Side-space messages (replies, payloads, system messages) match by
exact (context, source, key) instead. Nothing here reads or writes a socket:
the hub hands whole messages (or payloads as they complete) to `Matching`.
"""

from __future__ import annotations

import collections as _collections
from collections.abc import Callable

import numpy as _np

from .. import _names
from . import Completion, completion

__all__ = ["BYE", "SIDE", "SYS", "USER", "Handle", "Matching", "bytes_view"]

#: The spaces a frame travels in: user messages (MPI matching), side messages
#: (exact keys), system messages (communicator management), goodbyes.
USER, SIDE, SYS, BYE = 0, 1, 2, 3


def bytes_view(obj) -> memoryview:
    """A writable flat byte view of a contiguous buffer (C or Fortran order)."""
    try:
        return memoryview(obj).cast("B")
    except TypeError:
        return _np.asarray(obj).reshape(-1, order="A").view(_np.uint8).data


#: What a handle's buffer is once it is done (or for a send).
_NOTHING = memoryview(b"")
#: What a handle's completion is until it is done.
PENDING = completion(-1, -1, 0, None)


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
                 target: memoryview = _NOTHING) -> None:
        self.done = False
        self.info: Completion = PENDING
        self.target = target
        self.source = source      # world rank, or ANY_SOURCE
        self.tag = tag
        self.ctx = ctx
        self.space = space
        self.cancelled = False
        #: World rank -> rank in the group of the channel that made it (its infos
        #: are that channel's, whichever channel completes it in a mixed wait).
        self.local: dict[int, int] | None = None

    def __bool__(self) -> bool:
        return not self.done

    def complete(self, info: Completion) -> None:
        self.info = info
        self.done = True
        self.target = _NOTHING

    def Cancel(self) -> None:
        """Mark for cancellation; the channel removes it if it has not matched."""
        self.cancelled = True


def _matches(h: Handle, src: int, tag: int) -> bool:
    return (h.source == _names.ANY_SOURCE or h.source == src) and \
        (h.tag == _names.ANY_TAG or h.tag == tag)


#: A stored user message: (world source, tag, bytes).
Stored = tuple[int, int, "bytes | bytearray | memoryview"]


class Matching:
    """Posted receives and unexpected messages of every context of one hub."""

    def __init__(self, on_goodbye: Callable[[int], None]) -> None:
        self.posted: dict[int, list[Handle]] = _collections.defaultdict(list)
        self.unexpected: dict[int, _collections.deque[Stored]] = _collections.defaultdict(
            _collections.deque)
        self.side_posted: dict[tuple[int, int, int], Handle] = {}
        self.side_unexpected: dict[tuple[int, int, int], _collections.deque] = \
            _collections.defaultdict(_collections.deque)
        #: Called with the world rank of a peer whose goodbye arrived.
        self.on_goodbye = on_goodbye

    # -- receives as they are posted ------------------------------------------------------
    def take_unexpected(self, h: Handle) -> bool:
        """Complete user receive *h* with the first stored message it matches, if any."""
        q = self.unexpected[h.ctx]
        for i, (src, tg, data) in enumerate(q):
            if _matches(h, src, tg):
                del q[i]
                self.fill(h, src, tg, memoryview(data))
                return True
        return False

    def take_side(self, h: Handle) -> bool:
        """Complete side receive *h* with the stored message of its key, if any."""
        q = self.side_unexpected.get((h.ctx, h.source, h.tag))
        if not q:
            return False
        self.fill(h, h.source, h.tag, memoryview(q.popleft()))
        return True

    def post(self, h: Handle) -> None:
        """Wait for the message *h* matches (a user or a side receive)."""
        if h.space == USER:
            self.posted[h.ctx].append(h)
        else:
            self.side_posted[(h.ctx, h.source, h.tag)] = h

    def cancel(self, h: Handle) -> bool:
        """Take user receive *h* back if nothing has matched it yet; whether it was."""
        posted = self.posted.get(h.ctx)
        if posted and h in posted:
            posted.remove(h)
            return True
        return False

    # -- messages as they arrive ----------------------------------------------------------
    @staticmethod
    def fill(h: Handle, src: int, tag: int, data: memoryview) -> None:
        """Complete *h* with *data*, truncated (``ERR_TRUNCATE``) to its buffer."""
        n = len(data)
        err = None
        if n > len(h.target):
            err = _names.Exception(_names.ERR_TRUNCATE)
            n = len(h.target)
        h.target[:n] = data[:n]
        h.complete(completion(src, tag, len(data), err))

    def match(self, src: int, space: int, ctx: int, tag: int) -> Handle | None:
        """Take the posted receive a message with this header completes, if any."""
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

    def arrive(self, src: int, space: int, ctx: int, tag: int, data) -> None:
        """A whole message that stays valid: match it or keep it."""
        h = self.match(src, space, ctx, tag)
        if h is not None:
            self.fill(h, src, tag, memoryview(data))
        else:
            self.store(src, space, ctx, tag, data)

    def store(self, src: int, space: int, ctx: int, tag: int, data) -> None:
        """Keep a message no receive was waiting for."""
        if space == USER:
            self.unexpected[ctx].append((src, tag, data))
        elif space == SYS:
            self.side_unexpected[(ctx, src, -1 - tag)].append(data)
        elif space == BYE:
            self.on_goodbye(src)
        else:
            self.side_unexpected[(ctx, src, tag)].append(data)

    def hand_over(self, h: Handle | None, src: int, space: int, ctx: int, tag: int,
                  data: memoryview) -> None:
        """A whole message, in a buffer that is about to be reused: into the receive
        *h* it matched (None: kept, as a copy)."""
        if h is None:
            self.store(src, space, ctx, tag, bytearray(data))
        elif len(data) <= len(h.target):
            h.target[: len(data)] = data
            h.complete(completion(src, tag, len(data), None))
        else:
            self.fill(h, src, tag, data)

    def payload_done(self, src: int, dest: memoryview, header: tuple) -> None:
        """A payload that arrived in pieces is whole in *dest*; *header* is
        (space, ctx, tag, nbytes, the receive matched when it began or None)."""
        space, ctx, tag, n, h = header
        if h is None:
            # A receive may have been posted while the payload was streaming in.
            self.arrive(src, space, ctx, tag, dest.obj)
        elif dest.obj is h.target.obj or n <= len(h.target):
            if dest.obj is not h.target.obj:
                h.target[:n] = dest
            h.complete(completion(src, tag, n, None))
        else:
            self.fill(h, src, tag, dest)

    # -- failures -------------------------------------------------------------------------
    def fail(self, dead: int, member_of: set[int], collectives: set[int], finished: bool,
             err: Exception) -> None:
        """Complete with *err* every receive world rank *dead* kept from completing:
        those naming it; on the contexts *member_of* it belonged to, ``ANY_SOURCE``
        ones unless it said goodbye (*finished*), and every one of a collective context.
        """
        for ctx, posted in self.posted.items():
            member = ctx in member_of
            every = member and ctx in collectives
            anys = _names.ANY_SOURCE if member and not finished else dead
            for h in [h for h in posted if every or h.source in (dead, anys)]:
                posted.remove(h)
                h.complete(completion(dead, h.tag, 0, err))
        for key in [k for k in self.side_posted
                    if k[1] == dead or (k[0] in member_of and k[0] in collectives)]:
            h = self.side_posted.pop(key)
            h.complete(completion(dead, h.tag, 0, err))

