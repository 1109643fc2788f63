"""Point-to-point protocol: raw eager messages, side payloads, and CMA pulls.

Messages below ``cma_min`` bytes (``cma_min_busy`` while the sending rank has
receives of its own pending) are sent as themselves: the channel moves
them into the receive buffer (small ones inline; MPI libraries copy larger
ones with their own means). From there on, or whenever a header is
needed, a control message (see ``_wire``) takes the message's place in the
same stream, so matching and ordering apply to every kind alike:

* PULL: the receiver copies the payload out of the sender's memory with
  ``process_vm_readv`` and replies; the send completes on that reply. When the
  sender is blocked waiting anyway, the receiver may ask it to push the tail of
  the payload itself (``process_vm_writev``) while it pulls the head: two
  cores copy at once;
* SIDE: the payload follows in the side space, straight into the receive
  buffer (peers without CMA, lengths in the control band, synchronous mode).

The engine is channel-agnostic: it needs a channel (see ``channel/mpi.py``)
with a user matching space, a side space, and completion of its handles.
"""

from __future__ import annotations

import collections as _collections
import mmap
import os as _os
import time as _time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from . import _cma, _fastpath, _pull, _wire
from ._access import PeerAccess
from ._buffers import Buffer, address, bytes_at, plain_sizes, recv_buffer, send_buffer
from ._serial import ENGINE as _ENGINE
from ._serial import THREADS as _THREADS
from ._serial import nap, pause, serialized
from ._serial import owned as _owned
from ._tuning import OBJECT_RAW_MAX
from ._watch import site as _site
from .channel import Channel, Completion, completion
from .coop import SHARES, CoopPull, CopyShare, now

if TYPE_CHECKING:
    from typing_extensions import Self

    from .objects import Packed

__all__ = [
    "RECORDS",
    "Engine",
    "ForeignOp",
    "Offering",
    "Op",
    "PullSendOp",
    "RecordReader",
    "RecvOp",
    "SendOp",
    "default_engine",
    "detach",
    "fill_status",
    "progress",
    "promote",
    "settle",
    "test",
    "tested",
    "undelivered",
    "wait_all",
    "wait_any",
    "wait_handles",
]

_sched_yield = getattr(_os, "sched_yield", lambda: None)


#: Receives of every communicator that wait on a channel handle. A blocking call
#: keeps all of them moving: a peer may be blocked on one of them (waiting for
#: our pull and reply), and that peer may be what the call itself waits for.
_PENDING: dict[Op, None] = {}   # insertion-ordered set
#: Operations whose requests were freed or dropped in flight: kept alive (with the
#: memory the channel may still write to) and advanced by `progress` until done.
_DETACHED: list[Op] = []
#: Bytes of delivered receive stages an engine keeps for reuse: a window of
#: receives into one buffer, or of objects, takes fresh memory (page faults) otherwise.
_SPARE_BYTES = 64 << 20
#: A receiver looks again for a sender's offer of help after the first piece
#: of a pull (`Engine._pull_until_offered`) until this many looks in a row
#: found none, then once in `LATE_RETRY` messages: a 4 MiB stream whose sender
#: never offers (it completes its sends by tests) ran 25% slower looking after
#: every 512 KiB (process_vm_readv in pieces costs more than in one call).
LATE_MISSES = 8
LATE_RETRY = 16
#: Seconds a sender whose offer was claimed waits for the request at most
#: (see `_answer_claims`); a receiver asks right after it claims.
CLAIM_SECONDS = 0.1
#: A wait or test of pulled sends also offers help for this many more of the
#: oldest sends in flight that offer (`_raise_offers`): a sender that waits
#: for each request in turn (``Wait``) helps copy the next ones meanwhile.
OFFER_AHEAD = 4
#: The first engine made: it completes requests of the MPI library's own.
_DEFAULT: list[Engine] = []
#: The compiled path's module (see `_fastpath`), once an engine uses it: the
#: small nonblocking ops it holds are the engine's as soon as anything but its
#: own waits looks at them (`settle`).
_FAST: list[Any] = []
#: Whether a compiled wait polls and yields (more ranks than cores somewhere).
_FAST_YIELDS = [False]


class RecordReader(NamedTuple):
    """How a buffer receive recognises a message that is a record of cmampi's own
    (an object whose buffers stay with the sender, see objects.py) and turns it
    into what mpi4py would deliver there: the object's in-band pickle."""

    at: int                 # where the record's mark starts in the message
    mark: bytes
    #: (engine, the record's bytes, source) -> the pickle; frees the sender
    in_band: Callable[[Engine, bytes, int], bytes]

    @property
    def end(self) -> int:
        """Bytes a message needs to hold the mark."""
        return self.at + len(self.mark)

    def marks(self, msg) -> bool:
        """Whether *msg* (its first `end` bytes at least) is a record's."""
        return len(msg) >= self.end and bytes(msg[self.at : self.end]) == self.mark

    def read(self, engine: Engine, msg: memoryview, source: int) -> bytes | None:
        """The pickle *msg* stands for, or None if it is not a record."""
        if not self.marks(msg):
            return None
        return self.in_band(engine, bytes(msg), source)


#: The reader buffer receives use (objects.py registers it), or none.
RECORDS: list[RecordReader] = []
#: What an object's receive runs when its message lands and what makes its
#: object (`objects.landed`, `objects.loads`; objects.py registers them).
OBJECT_RECEIVE: list[Callable[[RecvOp], Any]] = []

class Op:
    """The protocol state of one request. ``handle`` is what to wait on next."""

    __slots__ = (
        "cancelled",
        "decode",
        "done",
        "engine",
        "error",
        "handle",
        "nbytes",
        "result",
        "source",
        "tag",
    )

    #: A send: its payload may stay in this process until the receiver takes
    #: it, so the process must not leave before it is done (see `_finalize`).
    sends = False

    @property
    def owed(self) -> bool:
        """Whether another process waits on this op to finish (a send's receiver)."""
        return self.sends and not self.done

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.handle: Any = None     # a channel's handle, or a request of the library's
        self.done = False
        self.error: BaseException | None = None
        self.source = engine.any_source
        self.tag = engine.any_tag
        self.nbytes = 0
        self.cancelled = False
        #: turns the finished op into an object (lowercase API)
        self.decode: Callable[[Self], Any] | None = None
        self.result: Any = None     # the object a receive delivers, or what leads to it

    def advance(self, info: Completion) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def finish(self, error: BaseException | None = None) -> None:
        self.handle = None
        self.done = True
        if error is not None and self.error is None:
            self.error = error

    def take_error(self) -> BaseException | None:
        """The op's error so far, cleared (to be passed on to `finish`)."""
        err, self.error = self.error, None
        return err


class SendOp(Op):
    """A send that is done once its channel handle, then each of *later*, has completed."""

    __slots__ = ("keep", "later")
    sends = True

    def __init__(self, engine: Engine, handle: Any, keep: Any,
                 later: list[Any] | None = None) -> None:
        Op.__init__(self, engine)
        self.handle = handle
        self.later = later
        self.keep = keep           # what the channel reads from, until completion

    def advance(self, info: Completion) -> None:
        if info.error is not None:   # the channel failed it: the receiver is gone
            self.later, self.keep = None, None
            self.finish(info.error)
            return
        later = self.later
        if later:
            self.handle = later.pop(0)
        else:
            self.keep = None
            self.finish()


class PullSendOp(Op):
    """A send whose payload the receiver pulls; done on the receiver's reply.

    If the receiver asks for help, we copy the tail of the payload into its
    buffer, tell it so, and still wait for its reply that it has stopped
    reading our buffer. A send that was not blocked when it started may still
    help: its *offer* word, whose address the descriptor carries, is 1 while a
    wait or test of the send, or of an older send to the same rank, runs
    (`Offering`). A receiver that reads it
    claims the offer first, in the word after it (`_claim_offer`), and a wait
    that returns with the send not done withdraws its offer and answers a
    claim it finds (`_withdraw_offers`): no receiver ever waits for our copy
    while we are outside a call.
    """

    __slots__ = ("base", "buf", "dest", "helped", "notice", "offer", "reply", "xid")
    sends = True

    def __init__(self, engine: Engine, buf: Buffer | Packed, dest: int, xid: int,
                 base: int | None = None, notice: tuple | None = None,
                 offer: np.ndarray | None = None) -> None:
        super().__init__(engine)
        #: [offer, claim]: the words the receiver reads and writes (see above)
        self.offer = offer
        #: (channel handle, bytes) of the descriptor's send, if it was sent without
        #: blocking: completed once the reply shows the receiver has it
        self.notice = notice
        #: the user's buffer (an object's pickle, with *base* 0) stays alive until the reply
        self.buf: Buffer | Packed | None = buf
        #: what help requests' offsets count from: the buffer's start, or (objects,
        #: whose requests name absolute addresses) 0
        self.base = base
        self.dest = dest
        self.xid = xid
        self.reply = bytearray(_wire.REPLY_MAX)
        self.helped: int | None = None     # None: not asked; else the code we sent back
        self.handle = engine.ch.irecv_reply(self.reply, dest, xid)

    def advance(self, info: Completion) -> None:
        if info.error is not None:   # no reply will come: the receiver is gone
            self.buf = self.offer = None
            self.engine.offering.pop(self, None)
            self.finish(info.error)
            return
        code = self.reply[0]
        if code != _wire.ACK_HELP:
            if code == _wire.ACK_FAILED and self.error is None:
                self.error = self.engine.unread(self.dest)
            if self.helped == _wire.ACK_FAILED:
                # Our copy failed: the receiver copies the tail and replies again.
                self.helped = _wire.ACK_OK
                self.handle = self.engine.ch.irecv_reply(self.reply, self.dest, self.xid)
                return
            self.buf = self.offer = None
            self.engine.offering.pop(self, None)
            if self.notice is not None:
                self.engine.ch.waitany([self.notice[0]])
                self.notice = None
            self.finish()
            return
        began = now()       # our part of the copy, the request's handling included
        ch = self.engine.ch
        lo, hi, addr = _wire.parse_help(self.reply)
        self.handle = ch.irecv_reply(self.reply, self.dest, self.xid)
        self.helped = _wire.ACK_OK
        base = self.base if self.base is not None else self.buf.layout.addr  # type: ignore[union-attr]  # no base: buf is a Buffer (None once done)
        try:
            _cma.writev(ch.pids[self.dest], [(base + lo, hi - lo)], [(addr, hi - lo)])
        except OSError:
            self.helped = _wire.ACK_FAILED
        ch.send_payload(_wire.helped(self.helped, began, now()), self.dest, self.xid)


class RecvOp(Op):
    """A receive: matched message -> in place, copied, pulled or side payload -> done."""

    __slots__ = ("buf", "inplace", "landed", "split", "stage", "then")

    def __init__(self, engine: Engine, buf: Buffer | None,
                 landed: Callable[[RecvOp], None] | None = None) -> None:
        Op.__init__(self, engine)
        self.buf = buf
        #: until delivery: the array the channel receives into or, in place, the
        #: bytes of the buffer that a control message would cover
        self.stage: np.ndarray | bytes | None = None
        self.inplace = False   # the channel receives straight into the user's buffer
        #: the channel receives into the user's buffer but for the message's first
        #: bytes (any control message), which land in the stage (`Engine._irecv_split`)
        self.split = False
        #: what to do when the current handle completes
        self.then: Callable[[Completion], None] | None = None
        #: run in progress once the message is in, whether or not anyone waits
        #: (objects pull their out-of-band buffers there: their sender waits on it)
        self.landed = landed

    @property
    def owed(self) -> bool:
        """Matched but not done: its sender waits for what it still does (a pull's reply)."""
        return not self.done and self.then is not None and self.then != self.arrived

    def wait_on(self, handle: Any, then: Callable[[Completion], None]) -> None:
        self.handle, self.then = handle, then
        if self not in _PENDING:
            _PENDING[self] = None
            _POSTED[0] += 1

    def finish(self, error: BaseException | None = None) -> None:
        self.handle = None
        self.done = True
        if error is not None and self.error is None:
            self.error = error
        self.then = None
        _PENDING.pop(self, None)
        engine = self.engine
        if engine.spans:
            engine.unland(self)
        if engine.small_recvs:
            engine.small_recvs.pop(self, None)
        landed, self.landed = self.landed, None
        if landed is not None and self.error is None:
            landed(self)
        buf = self.buf
        if buf is not None and buf.derived is not None:
            # Once the message is the receive's own (an object's record made its pickle).
            try:
                buf.unpack(None if self.error is not None or self.cancelled else self.nbytes)
            except Exception as exc:    # noqa: BLE001 - the receive's error
                self.error = exc

    def advance(self, info: Completion) -> None:
        then, self.then = self.then, None
        if info.error is not None and then != self.arrived:
            self.finish(info.error)  # a reply or payload that cannot come: the sender is gone
            return
        then(info)  # type: ignore[misc]  # a handle is advanced once, after wait_on set then

    def arrived(self, info: Completion) -> None:
        source, tag, count, err = info
        engine, buf = self.engine, self.buf
        if count <= engine.limit and err is None and not self.inplace and buf is not None \
                and not engine.guarded and not self.split:
            # The common case at once: a message as itself, in a stage of its own.
            self.source, self.tag, self.nbytes = source, tag, count
            staged: np.ndarray = self.stage  # type: ignore[assignment]  # not in place: an array
            self.stage = None
            if count > buf.nbytes:
                error = engine.truncated()
            else:
                error = None
                if count:
                    buf.scatter(memoryview(staged)[:count])  # type: ignore[arg-type]  # numpy stubs < 3.12
            engine.spare(staged)
            self.finish(error)
            return
        if self.inplace and err is None and not engine.limit < count <= engine.band:
            # A message as itself, in place: nothing to copy (finish forgets the span).
            self.source, self.tag, self.nbytes = source, tag, count
            self.stage = None
            self.finish()
            return
        split = self.split
        if split:
            self.split = False
            # Recorded until finished: a payload behind a control message lands later.
            span = self.engine.restage(self)
            if count > self.engine.band or err is not None:
                # A payload (every control message fits in the stage): its head
                # is in the stage, the rest where it belongs.
                self.engine.place_head(self, count, span[0])
                if err is None:
                    self.source, self.tag, self.nbytes = source, tag, count
                    self.finish()
                    return
        if err is not None:  # a payload larger than anything it could fit into, or no sender
            self.source, self.tag, self.nbytes = source, tag, count
            names = self.engine.names
            truncated = getattr(err, "error_class", names.ERR_TRUNCATE) == names.ERR_TRUNCATE
            self.finish(self.engine.truncated() if truncated else err)
            return
        if self.inplace:
            self.engine.restage(self)
        if self.engine.guarded and not split:
            stage: np.ndarray = self.stage  # type: ignore[assignment]  # not in place: an array
            if count == len(stage) - 1:     # its last byte landed past the gap
                stage[count - 1] = stage[count]
        # In place, the message is in the buffer (only a buffer receive lands in
        # place) and the stage holds the bytes it covered; else it is in the stage
        # array. *msg*: the buffer's array, the stage array, or a control message's bytes.
        msg: Any = self.buf.flat() if self.inplace else self.stage  # type: ignore[union-attr]  # in place: a buffer
        if self.inplace and self.engine.limit < count <= self.engine.band:
            # A control message landed in the user's buffer: take it out and
            # put back what it covered.
            ctrl = msg[:count].tobytes()
            msg[:count] = np.frombuffer(self.stage, np.uint8, count)  # type: ignore[arg-type]  # in place: bytes
            msg = ctrl
        self.engine.deliver(self, memoryview(msg)[:count], source, tag)
        if not self.inplace:    # delivered (copied, or read if a header): reuse the stage
            self.engine.spare(self.stage)  # type: ignore[arg-type]  # not in place: an array
        self.stage = None


class ForeignOp(Op):
    """A request of the wrapped library (e.g. a delegated collective) in our waits."""

    __slots__ = ("request",)

    def __init__(self, engine: Engine, request) -> None:
        super().__init__(engine)
        self.request = request
        self.handle = request

    def advance(self, info: Completion) -> None:
        self.source, self.tag, self.nbytes, err = info
        self.finish(err)


class Engine:
    """Matching, protocols and progress for one communicator over one channel."""

    @_site     # a new engine: nothing of it is pending yet
    def __init__(self, channel: Channel, names, config) -> None:
        self.ch = channel
        self.names = names
        self.limit = config.eager_limit
        self.band = self.limit + _wire.CTRL_MAX   # lengths (limit, band] are control
        given = config.cma_min
        self.cma_min = max(channel.cma_min if given is None else given, self.band + 1)
        #: Below this size a rank with receives pending sends as itself (`raw`).
        self.cma_min_busy = max(channel.cma_min_busy if given is None else given, self.cma_min)
        self.coop_min = config.coop_min
        self.chunk = config.chunk
        self.share = SHARES.setdefault(type(channel).__name__, CopyShare())
        self.stream_share = SHARES.setdefault(type(channel).__name__ + " streaming", CopyShare())
        #: cooperative copies under way (asked, the notice not yet taken), per source
        self.helping: dict[int, int] = {}
        #: per source: its messages since a late offer of help was found
        #: (`_pull_until_offered`)
        self.late_misses = [0] * channel.size
        #: the pulled sends in flight that can offer help, oldest first
        self.offering: dict[PullSendOp, None] = {}
        if not _DEFAULT:
            _DEFAULT.append(self)
        self.rank = channel.rank
        self.size = channel.size
        self.tag_ub = channel.tag_ub
        self.any_source, self.any_tag = names.ANY_SOURCE, names.ANY_TAG
        self.stage_size = self.band
        self.stage = bytearray(self.stage_size)
        #: Stages of receives whose messages were delivered, by size (see `spare`).
        self.spare_stages: dict[int, list[np.ndarray]] = {}
        self.spare_bytes = 0
        #: Records of objects (see `RecordReader`) travel behind a control message.
        self.records = RECORDS[0] if RECORDS else None
        self.record_min = self.records.end if self.records else self.limit + 1
        #: Sizes the simplest spec forms, where the channel takes them as they are.
        #: (a bound method: called per message, without the lookup of ``__call__``)
        self.counted = Counted(names).__call__ if hasattr(channel, "send_counted") else None
        #: ``MPI.BYTE`` where the channel sends ``[buffer, count, MPI.BYTE]`` as it is
        #: (`byte_spec`): the MPI library's own parsing and checks, nothing before them.
        self.byte = names.BYTE if hasattr(channel, "send_spec") else None
        #: Large receives may land in place but for their head (see `_irecv_split`):
        #: those into a buffer another pending receive lands in, and on a guarded
        #: channel every one.
        self.split = hasattr(channel, "irecv_split")
        #: Receives whose message may be truncated go through a datatype with a gap
        #: (`channel.mpi.MPIChannel.guarded`): never in place, stages one byte longer.
        self.guarded = getattr(channel, "guarded", False)
        #: A truncated receive's status counts the whole message (Open MPI), not
        #: the bytes the buffer took (MPICH, and the socket channel).
        self.counts_whole = getattr(channel, "counts_whole", False)
        self.stash: _collections.deque = _collections.deque()  # drained by probes
        #: Receives the channel writes straight into the user's buffer, until arrival
        #: (a control message may land in their first `band` bytes) ...
        self.landing: dict[RecvOp, tuple[int, int]] = {}
        #: ... and split receives (see `_irecv_split`), which land there but for
        #: their first `band` bytes.
        self.tails: dict[RecvOp, tuple[int, int]] = {}
        #: ... and large receives that take their message in a stage: its payload
        #: may still land in the buffer later (a side payload, a pull), over a
        #: control message in the head of a receive in place posted after them.
        self.staged: dict[RecvOp, tuple[int, int]] = {}
        #: How many of all three land in each span: a window of receives into one
        #: buffer finds its overlap here, without a pass over all of them.
        self.spans: dict[tuple[int, int], int] = {}
        #: Pending receives into buffers smaller than a stage: their payload too
        #: may land later (a side payload). Their spans are only worked out when
        #: a receive would land in place, so that small windows do not pay for them.
        self.small_recvs: dict[RecvOp, Buffer] = {}
        #: The address of a whole C-contiguous array (the channel's may be cheaper).
        self.address: Callable[[np.ndarray], int] = getattr(channel, "address", address)
        #: The compiled path of small nonblocking messages, or None (see `_fastpath`).
        self.fast: Any = None
        user = getattr(channel, "user", None)
        if user is not None:
            self.fast = _fastpath.module(self.limit, self.band, self.cma_min,
                                         self.cma_min_busy, self.guarded)
            if self.fast is not None:
                if not _FAST:
                    _FAST.append(self.fast)
                if getattr(channel, "oversubscribed", False):
                    _FAST_YIELDS[0] = True
        self.user = user
        self.coll = None    # the communicator's collectives, made on first use
        self.native = None  # the MPI channel's agreement on native collectives (native.py)
        #: What the communicator keeps with its engine, which its copies share
        #: (socket channel): its name, its topology (`sockettopo`), the locks of
        #: its lowercase collectives (on the MPI channel mpi4py's, kept), and how
        #: many ``Ibarrier`` it has started.
        self.comm_name = ""
        self.topo = None
        self.locks: dict[str, Any] = {}
        self.ibarriers = 0
        #: Collectives agree on every rank's arguments first (``CMAMPI_CHECK_COLLECTIVES``).
        self.checked = config.check_collectives
        #: The MPI library's communicator that runs small collectives as they come
        #: (MPI channel, one node, not `checked`); set on the first collective.
        self.small = None
        #: (mpi4py's communicator, the side space's, its free tag) where short
        #: lowercase collectives run in slots (`comm.Comm._slotting`); None where
        #: they do not; False until known.
        self.slots: Any = False
        #: The compiled path's ``coll`` where `small` runs collectives, or None.
        self.small_coll = None
        #: The ranks span several nodes (then collectives are the MPI library's).
        self.multinode = len(set(channel.nodes)) > 1
        self._xid = 0
        #: Who may read whom (probed and agreed now: a collective, as construction is).
        self.access = PeerAccess.discover(channel, config, self.cma_min_busy)
        self.can_read = self.access.can_read
        #: Peers a blocked send may help copy (write into): not this rank itself,
        #: which has no other core to copy with, and whose reply receive cannot
        #: take the help request and the reply both (MPICH's send to the same
        #: process waits to be matched: an Irecv then a Send to itself hung).
        self.helped = [ok and r != self.rank for r, ok in enumerate(self.can_read)]
        self.cma = self.access.cma
        self.raw_max = self.access.raw_max
        self.raw_max_any = self.access.raw_max_any
        self.all_cma = self.access.all_cma
        #: The buffer of an object's receive from each source, and from any, as
        #: the compiled path posts it (`stage_for`; a byte more where guarded).
        self.object_stages = {s: self.stage_for(None, s) + self.guarded
                              for s in (*range(self.size), self.any_source)}

    @property
    def peers(self) -> dict[int, _cma.Peer]:
        """Held pidfds of the peers we may read (see `_access.PeerAccess`)."""
        return self.access.peers

    @serialized
    def free(self) -> None:
        """Close the peers' pidfds and free the channel (and the collectives' own)."""
        self.access.release()
        coll, self.coll = self.coll, None
        if coll is not None:
            coll.e.free()
        self.ch.free()

    def next_xid(self) -> int:
        self._xid = (self._xid + 1) % self.ch.xid_limit
        return self._xid

    def truncated(self) -> BaseException:
        return self.names.Exception(self.names.ERR_TRUNCATE)

    def unread(self, dest: int) -> BaseException:
        """The error of a send whose receiver could not read it from our memory."""
        exc = self.names.Exception(self.names.ERR_OTHER)
        if hasattr(exc, "add_note"):   # Python 3.11
            exc.add_note(f"cmampi: rank {dest} could not read the message from this "
                         f"process (pid {_os.getpid()}): it raised the error; see its output")
        return exc

    # -- sending -------------------------------------------------------------------------
    def send(self, spec, dest: int, tag: int, announce: bool = False) -> None:
        """Blocking standard-mode send (see `isend` for *announce*)."""
        if len(_THREADS) > 1:
            self._send_shared(spec, dest, tag, announce)
            return
        if type(spec) is _ndarray and _plain(spec):
            if self._in_channel(spec.nbytes, dest, announce):
                self.ch.send(spec, dest, tag)
                return
            if self.raw(spec.nbytes, dest, announce):   # as itself, progressing receives
                wait_handles(self.ch, [self.ch.isend(spec, dest, tag)])
                return
        if self.byte is not None:
            n = byte_spec(spec, self.byte)
            if n >= 0 and self._in_channel(n, dest, announce):
                try:
                    self.ch.send_spec(spec, dest, tag)  # type: ignore[attr-defined]  # self.byte is set: the channel has it
                    return
                except _REFUSED:
                    pass    # not a buffer as the library takes it: the full parse decides
        hit = self.counted(spec, False) if self.counted is not None else None
        if hit is not None and self._in_channel(hit[1], dest, announce):
            self.ch.send_counted(hit[0], hit[1], dest, tag)  # type: ignore[attr-defined]  # a hit: self.counted is set, so the channel has it
            return
        buf = send_buffer(spec)
        if self._in_channel(buf.nbytes, dest, announce):
            self.ch.send(buf.wire(), dest, tag)
            return
        op = self._isend(buf, dest, tag, False, True, announce)
        _wait_any([op])
        self._complete(op)

    def _in_channel(self, n: int, dest: int, announce: bool) -> bool:
        """Whether a blocking send of *n* bytes may block inside the channel: it
        travels as itself, and is small (the channel buffers it) or no receive of
        this rank's waits for progress meanwhile. A pending receive may have
        matched a peer's pull descriptor: that peer waits for our reply before
        it receives what we send, so our send must progress it while it waits."""
        if n <= self.limit:
            return True
        settle()
        return not _PENDING and self.raw(n, dest, announce)

    def _send_shared(self, spec, dest: int, tag: int, announce: bool) -> None:
        """`send` with several threads: under the lock, and never blocking inside
        the channel, where even a small send may wait to be matched (Open MPI's
        to the same process does) by a thread that needs the lock."""
        with _ENGINE:
            if type(spec) is _ndarray and _plain(spec) and self.raw(spec.nbytes, dest, announce):
                wait_handles(self.ch, [self.ch.isend(spec, dest, tag)])
                return
            op = self.isend(send_buffer(spec), dest, tag, False, True, announce)
            wait_any([op])
            self.complete(op)

    def raw(self, n: int, dest: int, announce: bool) -> bool:
        """Whether an *n*-byte message to *dest* travels as itself: small, not
        to be pulled, or sent while this rank has receives pending (both
        directions at once: the MPI library's path beats two ranks each pulling)."""
        if n <= self.limit:
            return True
        if n <= self.band or (announce and n > OBJECT_RAW_MAX):
            return False
        return n < self.cma_min or not self.cma[dest] or \
            (n < self.cma_min_busy and bool(_PENDING or (_FAST and _FAST[0].receiving())))

    def _isend(self, buf: Buffer, dest: int, tag: int, sync: bool, blocked: bool = False,
               announce: bool = False) -> Op:
        """Start a send of a parsed buffer.

        *sync* asks for synchronous mode; *blocked* says the caller will wait for
        completion right away, so it can help copy; *announce* sends any payload
        above the eager limit behind a control message, for receivers that size
        their buffer from the message (Python objects).
        """
        n = buf.nbytes
        if not sync and (n <= self.limit or self.raw(n, dest, announce)):
            data = buf.wire()
            return SendOp(self, self.ch.isend(data, dest, tag), data)
        return self._isend_behind(buf, dest, tag, sync, blocked)

    #: `_isend` under the lock when several threads run (the engine's own calls,
    #: locked already, take `_isend`: a wrapper's call costs 0.1 us).
    isend = serialized(_isend)

    def isend_spec(self, spec, dest: int, tag: int, sync: bool) -> Op:
        """Start a send of *spec* (a whole array that travels as itself goes
        unparsed, as `send` does)."""
        if len(_THREADS) > 1 and not _owned():
            with _ENGINE:
                return self.isend_spec(spec, dest, tag, sync)
        if not sync and _plain(spec) and (spec.nbytes <= self.limit
                                          or self.raw(spec.nbytes, dest, False)):
            return SendOp(self, self.ch.isend(spec, dest, tag), spec)
        if not sync and self.byte is not None:
            n = byte_spec(spec, self.byte)
            if n >= 0 and (n <= self.limit or self.raw(n, dest, False)):
                try:
                    return SendOp(self, self.ch.isend_spec(spec, dest, tag), spec)  # type: ignore[attr-defined]  # self.byte is set: the channel has it
                except _REFUSED:
                    pass    # not a buffer as the library takes it: the full parse decides
        return self._isend(send_buffer(spec), dest, tag, sync)

    def _isend_behind(self, buf: Buffer, dest: int, tag: int, sync: bool,
                      blocked: bool, record: bool = False) -> Op:
        """Start a send of *buf* behind a control message: pulled, or in the side
        space. *record*: *buf* is an object's record (see `RecordReader`)."""
        ch = self.ch
        n = buf.nbytes
        xid = self.next_xid()
        kind = (_wire.F_SYNC if sync else 0) | (_wire.F_RECORD if record else 0)
        if self.cma[dest] and n >= self.cma_min:
            flags = kind
            offer = None
            # Helping means writing into the receiver: only if we may. A send
            # not blocked now offers help for when it is (see `PullSendOp`);
            # an object's record is waited for inside its object's op, which
            # offers nothing: its receiver must not look for offers.
            if n >= self.coop_min and buf.contiguous and self.helped[dest]:
                if blocked:
                    flags |= _wire.F_HELP
                elif not record:
                    flags |= _wire.F_OFFER
                    offer = np.zeros(2, np.uint64)
            # The descriptor goes first, without blocking: the MPI library may
            # hold a message just above its eager limit until it is matched
            # (Open MPI does), and both ranks may be sending. The receiver's
            # reply, which the op posts a receive for, waits in the channel if early.
            notice = _wire.pull_control(xid, flags, buf.layout,
                                        0 if offer is None else address(offer), self.limit)
            op = PullSendOp(self, buf, dest, xid, notice=(ch.isend(notice, dest, tag), notice),
                            offer=offer)
            if offer is not None:
                self.offering[op] = None
            return op
        # The payload follows through the side space, straight into the receive
        # buffer. In synchronous mode the receiver replies once it has matched.
        data = buf.wire()
        head = _wire.control(_wire.side_header(xid, kind, n), self.limit)
        later = [ch.isend_payload(data, dest, xid)]
        if sync:
            later.append(ch.irecv_reply(bytearray(1), dest, xid))
        return SendOp(self, ch.isend(head, dest, tag), (head, data), later)

    # -- receiving -----------------------------------------------------------------------
    def recv(self, spec, source: int, tag: int, status=None) -> None:
        """Blocking receive."""
        if len(_THREADS) > 1:   # under the lock, never blocking inside the channel
            with _ENGINE:
                op = self.irecv(recv_buffer(spec), source, tag)
                wait_any([op])
                self.complete(op, status)
            return
        if not self.idle():
            op = self.irecv(recv_buffer(spec), source, tag)
            _wait_any([op])
            self._complete(op, status)
            return
        # Nothing else needs progress: block inside the channel. A matched probe
        # tells the size first, so a payload lands straight in place.
        ch = self.ch
        plain = type(spec) is _ndarray and _plain(spec) and spec.flags.writeable
        n = -1 if plain or self.byte is None else byte_spec(spec, self.byte, True)
        hit = None if plain or n >= 0 or self.counted is None else self.counted(spec, True)
        # Bad buffers fail before blocking.
        buf = None if plain or hit is not None or n >= 0 else recv_buffer(spec)
        if buf is not None and buf.derived is not None:
            # Through an op, whose end unpacks and lets the datatype go, whatever happens.
            op = self.irecv(buf, source, tag)
            _wait_any([op])
            self._complete(op, status)
            return
        handle, (src, tg, count) = ch.mprobe(source, tag)
        if not self.limit < count <= self.band:
            if plain and count <= spec.nbytes:
                ch.mrecv(handle, spec)
                if status is not None:
                    fill_status(status, src, tg, count, None, self.names)
                return
            if 0 <= count <= n:
                try:
                    ch.mrecv_spec(handle, spec)  # type: ignore[attr-defined]  # n >= 0: self.byte is set, the channel has it
                except _REFUSED:
                    pass    # still matched, not received: cmampi's parse takes it below
                else:
                    if status is not None:
                        fill_status(status, src, tg, count, None, self.names)
                    return
            if hit is not None and count <= hit[1]:
                ch.mrecv_counted(handle, hit[0], hit[1])  # type: ignore[attr-defined]  # a hit: self.counted is set, so the channel has it
                if status is not None:
                    fill_status(status, src, tg, count, None, self.names)
                return
            if buf is None:
                buf = recv_buffer(spec)
            if buf.contiguous and count <= buf.nbytes:
                ch.mrecv(handle, buf.wire())
                err = None
            else:  # strided, or truncated: take it whole, then place what fits
                tmp = self.stage if count <= self.stage_size else bytearray(count)
                ch.mrecv(handle, tmp)
                err = self.place(buf, memoryview(tmp)[:count])
            if status is not None:
                fill_status(status, src, tg, count if err is None
                            else self.truncated_count(count, buf.nbytes), err, self.names)
            if err is not None:
                raise err
            return
        op = self._control(handle, buf if buf is not None else recv_buffer(spec), src, tg, count)
        self.complete(op, status)

    def place_message(self, buf: Buffer, msg: memoryview, source: int) -> tuple[int, Any]:
        """Place a whole message *msg* into *buf* (an object's record as the
        object's pickle); (the message's count, the error if any: a record that
        cannot become its pickle is the receive's error)."""
        if self.record_min <= len(msg) and self.records is not None:
            try:
                stream = self.records.read(self, msg, source)
            except Exception as exc:    # noqa: BLE001 - the receive's error
                return len(msg), exc
            if stream is not None:
                msg = memoryview(stream)
        return len(msg), self.place(buf, msg)

    def _control(self, handle, buf: Buffer | None, src: int, tag: int, count: int) -> RecvOp:
        """Receive a matched control message and see its transfer through."""
        self.ch.mrecv(handle, self.stage)
        return self.control(_wire.header(memoryview(self.stage)[:count]), buf, src, tag)

    def control(self, head, buf: Buffer | None, src: int, tag: int) -> RecvOp:
        """See the transfer of a matched control message through, from its
        header: into *buf*, or (None) new memory the size of the message."""
        op = RecvOp(self, buf)
        op.source, op.tag = src, tag
        self.act(op, head)
        if not op.done:
            wait_any([op])
        return op

    def idle(self) -> bool:
        """Whether no receive waits for progress and nothing is stashed: a blocking
        receive may then block inside the channel."""
        settle()
        return not (_PENDING or self.stash)

    def irecv(self, buf: Buffer | None, source: int, tag: int,
              landed: Callable[[RecvOp], None] | None = None) -> RecvOp:
        """Post a receive; *landed* runs once its message is in (see `RecvOp`)."""
        if len(_THREADS) > 1 and not _owned():
            with _ENGINE:
                return self.irecv(buf, source, tag, landed)
        settle()    # small receives of the compiled path land too (`_small_in`)
        op = RecvOp(self, buf, landed)
        if self.stash:
            hit = self.take(source, tag)
            if hit is not None:
                src, tg, data = hit
                self.deliver(op, memoryview(data), src, tg)
                return op
        try:
            if buf is None or not buf.contiguous:
                return self._irecv_staged(op, buf, source, tag)
            if buf.nbytes < self.stage_size:
                # Small: its message comes in a stage of its own (a control message would not fit).
                self.small_recvs[op] = buf
                if not self.guarded:    # the common case, at once
                    op.stage = stage = self._stage(self.stage_size)
                    op.wait_on(self.ch.irecv(stage, source, tag), op.arrived)
                    return op
            else:
                span = self._span(buf)
                if not self.guarded and not self._overlaps(span) \
                        and not (self.small_recvs and self._small_in(span)):
                    return self._irecv_in_place(op, buf, span, source, tag)
                if self.split and buf.nbytes > self.band \
                        and not self._heads_in(span[0] + self.band, span[1]):
                    return self._irecv_split(op, buf, span, source, tag)
                self._land(self.staged, op, span)
            return self._irecv_staged(op, buf, source, tag)
        except BaseException:
            # Not posted: where it would have landed must not slow or split later receives.
            self.unland(op)
            self.small_recvs.pop(op, None)
            if buf is not None and buf.derived is not None:
                buf.unpack(None)
            raise

    def _irecv_in_place(self, op: RecvOp, buf: Buffer, span: tuple[int, int], source: int,
                        tag: int) -> RecvOp:
        """Any control message fits: let the channel write straight into *buf*.
        Keep the bytes one would cover: only the message's own bytes may change
        (MPI 3.1, 3.2.4), and a synchronous one's payload can be shorter than
        its control message."""
        op.inplace = True
        op.stage = bytes_at(span[0], self.band)
        self._land(self.landing, op, span)
        op.wait_on(self.ch.irecv(buf.wire(), source, tag), op.arrived)
        return op

    def _irecv_split(self, op: RecvOp, buf: Buffer, span: tuple[int, int], source: int,
                     tag: int) -> RecvOp:
        """The message lands in place but for its first `band` bytes, which take
        a stage of the op's own: for a buffer another pending receive lands in
        (erroneous in MPI, yet what bandwidth tests do, and MPI libraries let
        be), so that no control message is overwritten before it is read, and
        on a guarded channel, whose library stops a split receive at the
        buffer's end. No payload is copied twice."""
        stage = self._stage(self.band)
        op.stage, op.split = stage, True
        self._land(self.tails, op, span)
        op.wait_on(self.ch.irecv_split(stage, span[0], buf.nbytes,  # type: ignore[attr-defined]  # self.split: the channel has it
                                       source, tag), op.arrived)
        return op

    def _irecv_staged(self, op: RecvOp, buf: Buffer | None, source: int, tag: int) -> RecvOp:
        """A strided buffer, an object's, a small one (a control message would
        not fit), or one shared where `_irecv_split` cannot be used, takes its
        message in a stage first (`stage_for`)."""
        size = self.stage_for(buf, source)
        if self.guarded:
            op.stage = stage = self._stage(size + 1)
            handle = self.ch.irecv_guarded(stage, size, source, tag)  # type: ignore[attr-defined]  # guarded: the MPI channel
        else:
            op.stage = stage = self._stage(size)
            handle = self.ch.irecv(stage, source, tag)
        op.wait_on(handle, op.arrived)
        return op

    def stage_for(self, buf: Buffer | None, source: int) -> int:
        """The size of the stage of a receive into *buf* (None: an object's) from
        *source*: room for the longest message the source may send as itself
        (anything longer is pulled or announced), and no more than the buffer (a
        longer one would be truncated anyway)."""
        size = self.stage_size
        if buf is None or not buf.contiguous or buf.nbytes >= size:
            raw_max = self.raw_max_any if source == self.any_source else \
                self.raw_max[source] if 0 <= source < self.size else None
            # An object's pickle may come as itself up to OBJECT_RAW_MAX.
            most = OBJECT_RAW_MAX if buf is None else buf.nbytes
            size = max(size, most if raw_max is None else min(most, raw_max))
        return size

    def _stage(self, size: int) -> np.ndarray:
        """A receive stage of *size* bytes: a spare one (see `spare`), or new
        memory, not zero-filled (only the bytes the channel writes are read)."""
        spare = self.spare_stages.get(size)
        if spare:
            self.spare_bytes -= size
            return spare.pop()
        return np.empty(size, np.uint8)

    def _span(self, buf: Buffer) -> tuple[int, int]:
        """The address range of a contiguous buffer's message (which may start
        past the start of its array: a displacement)."""
        arr = buf.array
        if buf.whole and type(arr) is _ndarray and arr.flags.c_contiguous:
            lo = self.address(arr)
        else:
            lay = buf.layout
            lo = lay.addr + lay.lo
        return lo, lo + buf.nbytes

    def place_head(self, op: RecvOp, count: int, lo: int) -> None:
        """Copy the head of a split receive's payload from its stage into the
        buffer, which starts at address *lo* (unless a pending in-place receive
        may have a control message there), and keep the stage."""
        stage: np.ndarray = op.stage  # type: ignore[assignment]  # a split receive's stage
        op.stage = None
        n = min(count, len(stage))
        buf: Buffer = op.buf  # type: ignore[assignment]  # split receives are buffer receives
        if not (self.landing and self._heads_in(lo, lo + n)):
            buf.scatter(memoryview(stage)[:n])  # type: ignore[arg-type]  # numpy stubs < 3.12
        self.spare(stage)

    def spare(self, stage: np.ndarray) -> None:
        """Keep a receive stage whose message was delivered, for the next receive
        of its size (up to `_SPARE_BYTES` in all); not a compiled op's, whose
        memory is that op's (see `promote`)."""
        if self.spare_bytes + stage.nbytes <= _SPARE_BYTES and stage.base is None:
            self.spare_stages.setdefault(stage.nbytes, []).append(stage)
            self.spare_bytes += stage.nbytes

    def _land(self, where: dict[RecvOp, tuple[int, int]], op: RecvOp,
              span: tuple[int, int]) -> None:
        """Record that *op* lands in *span* (*where*: `landing` or `tails`)."""
        where[op] = span
        self.spans[span] = self.spans.get(span, 0) + 1

    def restage(self, op: RecvOp) -> tuple[int, int]:
        """*op*, in place or split, has its message: its head is no longer a
        control message's to keep, but a payload may still land in its span
        until it finishes (then `unland`)."""
        span = self.landing.pop(op, None) or self.tails.pop(op)
        self.staged[op] = span
        return span

    def unland(self, op: RecvOp) -> tuple[int, int] | None:
        """Forget where *op* lands, once its message is in; that span, if any."""
        span = self.landing.pop(op, None) or self.tails.pop(op, None) \
            or self.staged.pop(op, None)
        if span is not None:
            left = self.spans.pop(span) - 1
            if left:
                self.spans[span] = left
        return span

    def _overlaps(self, span: tuple[int, int]) -> bool:
        """Whether a pending receive (in place, split or large and staged) lands
        in part of *span*."""
        spans = self.spans
        if not spans:
            return False
        if span in spans:
            return True
        lo, hi = span
        return any(olo < hi and lo < ohi for olo, ohi in spans)

    def _small_in(self, span: tuple[int, int]) -> bool:
        """Whether a pending receive into a small buffer lands in part of *span*."""
        lo, hi = span
        for buf in self.small_recvs.values():
            olo, ohi = self._span(buf)
            if olo < hi and lo < ohi:
                return True
        return False

    def _heads_in(self, lo: int, hi: int) -> bool:
        """Whether a control message may land in [lo, hi): the first `band` bytes
        of a pending receive in place."""
        if not self.landing:
            return False
        band = self.band
        return any(olo < hi and lo < min(olo + band, ohi) for olo, ohi in self.landing.values())

    def _read_heads_first(self, op: RecvOp, span: tuple[int, int]) -> BaseException | None:
        """Advance every receive in place into *span*, *op*'s buffer, whose
        message is in, before *op*'s payload lands there: its head may hold a
        control message not read yet. Receives into one buffer (a bandwidth
        test's window) meet this when the channel takes several messages in
        one call and a later receive is advanced first. What one of them
        raised, for *op*'s act to raise once it is done."""
        for other, where in list(self.landing.items()):
            if where != span or other is op or other.handle is None:
                continue
            info = self.ch.test(other.handle)
            if info is not None:
                _ROUNDS[0] += 1     # a wait's list of handles is stale now
                try:
                    other.advance(info)
                except BaseException as exc:    # noqa: BLE001 - raised once op has its message
                    return exc
        return None

    @serialized
    def irecv_matched(self, buf: Buffer | None, hit,
                      landed: Callable[[RecvOp], None] | None = None) -> RecvOp:
        """Receive a message already taken from the stash (a matched probe)."""
        op = RecvOp(self, buf, landed)
        src, tg, data = hit
        self.deliver(op, memoryview(data), src, tg)
        return op

    def deliver(self, op: RecvOp, msg: memoryview, source: int, tag: int) -> None:
        """Act on a matched message: place it, pull it, or wait for its payload."""
        op.source, op.tag = source, tag
        count = len(msg)
        if not self.limit < count <= self.band:
            op.nbytes = count
            if op.buf is None:          # an object's pickle: a copy of its own
                op.buf = Buffer.new(msg)
                op.finish()
                return
            op.finish(None if op.inplace else self.place(op.buf, msg))
            return
        self.act(op, _wire.header(msg))

    def _unrecord_landed(self, op: RecvOp) -> None:
        """A buffer receive's message came behind a control message: if it is a
        record of an object, the object's pickle replaces it."""
        buf: Buffer = op.buf  # type: ignore[assignment]  # act sets this on buffer receives only
        if op.nbytes < self.record_min:
            return
        records: RecordReader = self.records  # type: ignore[assignment]  # act sets this hook with records only
        try:
            if not records.marks(buf.head(records.end)):    # its first bytes tell
                return
            msg = memoryview(buf.flat() if buf.contiguous else buf.tobytes())  # type: ignore[arg-type]  # numpy stubs < 3.12
            stream = records.read(self, msg[:op.nbytes], op.source)
            if stream is not None:
                op.nbytes, op.error = len(stream), self.place(buf, memoryview(stream))
        except Exception as exc:    # noqa: BLE001 - the receive's error
            op.error = exc

    def act(self, op: RecvOp, head) -> None:
        """Act on the header of a matched control message: pull, or await the payload."""
        raised = None
        if self.landing and op.buf is not None and op.buf.contiguous:
            span = self._span(op.buf)
            # another receive into this buffer (op counts there once restaged)
            if self.spans.get(span, 0) > (op in self.staged):
                raised = self._read_heads_first(op, span)
        try:
            self._act(op, head)
        except BaseException as exc:
            # This message's error (an interrupted pull) wins; the other's rides along.
            if raised is not None and exc.__context__ is None:
                exc.__context__ = raised
            raise
        if raised is not None:
            raise raised

    def _act(self, op: RecvOp, head) -> None:
        if op.buf is not None and op.landed is None and self.records is not None \
                and _wire.flags(head) & _wire.F_RECORD:
            # A buffer receive, and an object's record comes behind.
            op.landed = self._unrecord_landed
        kind = _wire.kind(head)
        if kind == _wire.PULL:
            self._act_pull(op, head, op.source)
        elif kind == _wire.SIDE:
            self._act_side(op, head, op.source)
        elif kind == _wire.RECORD:
            self._act_record(op, _wire.parse_record(head))
        else:
            op.finish(RuntimeError(f"cmampi: unknown message kind {kind} from rank {op.source}"))

    def _act_pull(self, op: RecvOp, msg, source: int) -> None:
        ch = self.ch
        flags, xid, n, remote, offer = _wire.parse_pull(msg)
        op.nbytes = n
        if op.buf is None:
            op.buf = Buffer.new(n)
        buf = op.buf
        if n > buf.nbytes:
            if op.landed == self._unrecord_landed:
                # An object's record: it stands for its pickle, which would not fit
                # either, but the object's sender must be freed.
                whole = Buffer.new(n)
                try:
                    _pull.pull(ch.pids[source], remote, whole.layout, whole.array, self.chunk)
                except OSError as exc:
                    ch.send_reply(bytes((_wire.ACK_FAILED,)), source, xid)
                    op.finish(exc)
                    return
                ch.send_reply(bytes((_wire.ACK_OK,)), source, xid)
                op.finish(self._placed(op, memoryview(whole.array)))  # type: ignore[arg-type]  # numpy stubs < 3.12
                return
            ch.send_reply(bytes((_wire.ACK_TRUNCATED,)), source, xid)
            op.finish(self.truncated())
            return
        pid = ch.pids[source]
        run = buf.contiguous and remote.contiguous_run
        if run and (flags & _wire.F_HELP or (offer and _claim_offer(pid, offer))):
            self._coop_pull(op, source, xid, remote, buf.layout, buf.array, 0, bool(offer))
            return
        # We pull alone: the replies held for senders that offered help go now,
        # and their senders, back in a wait, may offer for what we look at next.
        release_held()
        code, err = _wire.ACK_OK, None
        try:
            if run and offer:
                start = self._pull_until_offered(pid, source, remote, buf.layout, offer)
                if start < n:
                    self._coop_pull(op, source, xid, remote.window(start, n),
                                    buf.layout.window(start, n), buf.array, start, True)
                    return
            else:
                _pull.pull(pid, remote, buf.layout, buf.array, self.chunk)
        except OSError as exc:
            code, err = _wire.ACK_FAILED, exc
        ch.send_reply(bytes((code,)), source, xid)
        op.finish(err)

    def reply(self, code: int, source: int, xid: int, offered: bool) -> None:
        """Send the reply that ends a pull from *source*: at once, or, if we
        claimed its sender's offer of help (*offered*) and a `Holding` block
        runs, at the block's end."""
        held = _HELD[0]
        if offered and held is not None:
            held.append((self.ch, bytes((code,)), source, xid))
        else:
            self.ch.send_reply(bytes((code,)), source, xid)

    def _coop_pull(self, op: RecvOp, source: int, xid: int, remote, local, array,
                   base: int, offered: bool = False) -> None:
        """Pull the contiguous run *remote* into *local* with its sender's help:
        it writes the tail while we read the head (see `CoopPull`); *base* is
        where the run starts in the message; *offered*: the sender offered
        help (its reply may be held, `Engine.reply`)."""
        coop = CoopPull(self, source, xid, remote, local, array, base=base, offered=offered)
        op.wait_on(coop.notice, lambda info: op.finish(coop.finish(op.take_error())))
        try:
            op.error = coop.own_part()
        except BaseException as exc:
            # Our part may be partly read: the receive fails once the notice comes.
            op.error = RuntimeError("cmampi: a pull was interrupted")
            op.error.__cause__ = exc
            raise

    def _pull_until_offered(self, pid: int, source: int, remote, local, offer: int) -> int:
        """Pull the contiguous run *remote* into *local* alone, but for one look
        at its sender's *offer* word after a first piece (`coop_min` / 2) when
        what is left is worth help: a sender completing a window one request
        at a time (`Waitany`) is between two waits when it learns that the
        message before is done, and offers again in the next. A source whose
        offers did not come `LATE_MISSES` times in a row is looked at once in
        `LATE_RETRY` messages only (one look costs a few percent of the copy).
        The bytes pulled: all, or where the sender's help may start."""
        n, head = remote.nbytes, self.coop_min // 2
        mine, theirs = local.addr + local.lo, remote.addr + remote.lo
        if n - head < self.coop_min:
            head = 0
        else:
            misses = self.late_misses[source]
            self.late_misses[source] = misses + 1
            if misses >= LATE_MISSES and misses % LATE_RETRY:
                head = 0
            else:
                _cma.read_into(pid, mine, theirs, head)
                if _claim_offer(pid, offer):
                    self.late_misses[source] = 0
                    return head
        _cma.read_into(pid, mine + head, theirs + head, n - head)
        return n

    @serialized
    def send_record(self, record: bytes, dest: int, tag: int, blocked: bool) -> Op:
        """Start sending *record* (see `RecordReader`): in a control message,
        where every receive recognises it, or if it is too long for one behind
        a control message (buffer receives look for it in what arrives then)."""
        if not _wire.holds_record(len(record), self.limit):
            return self._isend_behind(send_buffer(np.frombuffer(record, np.uint8)), dest, tag,
                                      False, blocked, record=True)
        msg = _wire.control(_wire.record_header(record), self.limit)
        return SendOp(self, self.ch.isend(msg, dest, tag), msg)

    def _act_record(self, op: RecvOp, data) -> None:
        """A record arrived: an object receive (no buffer of its own) takes it as
        its message; a buffer receive what it stands for (`RecordReader`)."""
        if op.buf is None:
            op.nbytes = len(data)
            op.buf = Buffer.new(data)
            op.finish()
            return
        op.nbytes, err = self.place_message(op.buf, memoryview(data), op.source)
        op.finish(err)

    def _act_side(self, op: RecvOp, msg, source: int) -> None:
        flags, xid, n = _wire.parse_side(msg)
        op.nbytes = n
        if op.buf is None:
            op.buf = Buffer.new(n)
        buf = op.buf
        if flags & _wire.F_SYNC:
            self.ch.send_reply(bytes((_wire.ACK_OK,)), source, xid)
        if buf.contiguous and n <= buf.nbytes:
            op.wait_on(self.ch.irecv_payload(buf.wire(), source, xid),
                       lambda info: op.finish())
            return
        tmp = bytearray(n)  # strided, or truncated: the payload must still be drained
        op.wait_on(self.ch.irecv_payload(tmp, source, xid),
                   lambda info: op.finish(self._placed(op, memoryview(tmp))))

    def _placed(self, op: RecvOp, msg: memoryview):
        """Place a buffer receive's whole message *msg*, which came behind a
        control message; return the error, if any."""
        if op.landed != self._unrecord_landed:
            return self.place(op.buf, msg)  # type: ignore[arg-type]  # set by now (_act_pull, _act_side)
        op.landed = None        # done here
        op.nbytes, err = self.place_message(op.buf, msg, op.source)  # type: ignore[arg-type]  # set by now
        return err

    def place(self, buf: Buffer, data: memoryview):
        """Copy a payload into the receive buffer; return the error, if any."""
        if len(data) > buf.nbytes:
            return self.truncated()
        if len(data):
            buf.scatter(data)
        return None

    def _complete(self, op: Op, status=None) -> None:
        """Fill *status* from a finished op and raise its error, if any."""
        if op.decode is not None and op.error is None:
            decode, op.decode = op.decode, None
            op.result = decode(op)
        if status is not None:
            fill_status(status, op.source, op.tag, self.status_count(op), op.error, self.names,
                        op.cancelled)
        if op.error is not None:
            err, op.error = op.error, None
            raise err

    complete = serialized(_complete)

    def status_count(self, op: Op) -> int:
        """The bytes a finished op's status counts: for a truncated receive,
        what the library counts (`counts_whole`)."""
        buf = getattr(op, "buf", None)     # a receive's
        if op.error is not None and buf is not None \
                and getattr(op.error, "error_class", None) == self.names.ERR_TRUNCATE:
            return self.truncated_count(op.nbytes, buf.nbytes)
        return op.nbytes

    def truncated_count(self, nbytes: int, room: int) -> int:
        """What a status counts of a message of *nbytes* truncated to *room*."""
        return nbytes if self.counts_whole else min(nbytes, room)

    # -- matching and probing ------------------------------------------------------------

    def take(self, source: int, tag: int):
        """Remove and return the first stashed message matching (source, tag)."""
        if not self.stash:
            return None
        anys, anyt = self.names.ANY_SOURCE, self.names.ANY_TAG
        for i, (src, tg, data) in enumerate(self.stash):
            if source in (anys, src) and tag in (anyt, tg):
                del self.stash[i]
                return src, tg, data
        return None

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
            if source in (anys, src) and tag in (anyt, tg):
                return src, tg, _wire.payload_size(data, self.limit)
        return None

    @serialized
    def iprobe(self, source: int, tag: int):
        progress()
        self.drain()
        return self.peek(source, tag)

    @serialized
    def probe(self, source: int, tag: int):
        while True:
            hit = self.iprobe(source, tag)
            if hit is not None:
                return hit
            if len(_THREADS) > 1:     # never block holding the lock
                self.ch.probe_any(source, False)
                _pause_on(self.ch)
            elif _PENDING:
                self.ch.probe_any(source, False)   # raises if *source* is gone
                _sched_yield()
            else:
                self.ch.probe_any(source)

    @serialized
    def mprobe(self, source: int, tag: int, block: bool):
        """Take the first matching message out of the stream, or None (non-blocking)."""
        hit = self.probe(source, tag) if block else self.iprobe(source, tag)
        return None if hit is None else self.take(source, tag)

    @serialized
    def cancel(self, op: Op) -> None:
        """Cancel a posted receive that has not matched yet (sends cannot be cancelled)."""
        if isinstance(op, RecvOp) and op.then == op.arrived and op.handle is not None:
            h = op.handle
            h.Cancel()
            info = self.ch.wait_cancelled(h)
            if info is None:        # cancelled before anything matched
                op.cancelled = True
                op.finish()
            else:                   # matched meanwhile: complete it normally
                op.advance(info)


_ndarray = np.ndarray
_mmap = mmap.mmap


def _plain(spec) -> bool:
    """A whole C-contiguous numpy array of plain data: the channel takes it as is."""
    return type(spec) is _ndarray and spec.flags.c_contiguous and \
        spec.dtype.kind not in "OMm" and spec.dtype.isnative


#: What mpi4py raises for a buffer it cannot take, before it sends anything.
_REFUSED = (BufferError, ValueError, TypeError)


def byte_spec(spec, byte, writable: bool = False) -> int:
    """The bytes of a spec ``[buffer, count, MPI.BYTE]`` whose count fits its
    buffer (a numpy array, ``bytearray``, ``bytes`` or ``mmap``), *writable* if
    asked; else -1. The channel hands such a spec to mpi4py as it is; a buffer
    mpi4py refuses (a strided view, say) goes through cmampi's own parse instead."""
    t = type(spec)
    if (t is list or t is tuple) and len(spec) == 3 and spec[2] is byte:
        buf, count = spec[0], spec[1]
        if type(count) is int and count >= 0:
            tb = type(buf)
            if tb is _ndarray:
                # (an array of Python objects has no bytes to move: the full parse refuses it)
                bad = buf.dtype.hasobject or (writable and not buf.flags.writeable)
                size = -1 if bad else buf.nbytes
            elif tb is bytearray or (tb is bytes and not writable):
                size = len(buf)
            elif tb is _mmap:
                size = -1 if writable and memoryview(buf).readonly else len(buf)
            else:
                size = -1
            if count <= size:
                return count
    return -1


class Counted:
    """The simplest message forms, sized without parsing: ``[buffer, count,
    datatype]`` of a predefined datatype without holes over contiguous memory
    (any buffer: numpy, ``bytearray``, ``mmap``, ``array.array``), ``bytearray``
    and ``bytes``. For channels that take (buffer, bytes) as they are."""

    def __init__(self, names) -> None:
        #: id -> (the predefined datatype, kept alive so that its id stays its own,
        #: size) of those without holes, read once per process (`plain_sizes`)
        self.sizes = plain_sizes(names)

    def __call__(self, spec, writable: bool) -> tuple[Any, int] | None:
        """(buffer, bytes) of *spec* in one of the simplest forms, checked as
        mpi4py would accept it (fits, writable if asked); else None."""
        t = type(spec)
        if t is list or t is tuple:
            if len(spec) != 3:
                return None
            buf, count, datatype = spec
            hit = self.sizes.get(id(datatype))
            if hit is None or hit[0] is not datatype or type(count) is not int or count < 0:
                return None
            nbytes = count * hit[1]
            if type(buf) is _ndarray and buf.dtype.kind not in "OMm":   # no buffer view to make
                flags = buf.flags
                if not flags.c_contiguous or nbytes > buf.nbytes \
                        or (writable and not flags.writeable):
                    return None
                return buf, nbytes
            try:
                mem = memoryview(buf)
            except (TypeError, ValueError, BufferError):    # (datetimes: ValueError)
                return None
            if not mem.c_contiguous or nbytes > mem.nbytes or (writable and mem.readonly) \
                    or (writable and mem.format == "O"):   # bytes over Python objects' pointers
                return None
            return buf, nbytes
        if t is bytearray:
            return spec, len(spec)
        if t is bytes:
            return (None if writable else (spec, len(spec)))
        return None


# -- progress ----------------------------------------------------------------------------
def default_engine() -> Engine:
    """An engine to complete requests of the MPI library's own with."""
    if not _DEFAULT:
        raise RuntimeError("cmampi: no communicator has been created yet")
    return _DEFAULT[0]


def detach(ops: Sequence[Op]) -> None:
    """Let *ops* finish on their own (their request was freed or dropped): kept
    alive until done, so the channel never writes into freed memory, and
    advanced by `progress`. Safe to call from a finalizer: it only records."""
    _DETACHED.extend(op for op in ops if not op.done)


def undelivered() -> int:
    """How many detached ops, and posted receives, another process waits on
    (see `Op.owed`)."""
    settle()
    return sum(op.owed for op in {*_DETACHED, *_PENDING})


def advance_detached() -> None:
    """Advance the detached ops whose handles have completed; those done leave."""
    for op in list(_DETACHED):
        while not op.done and op.handle is not None and op not in _PENDING:
            info = op.engine.ch.test(op.handle)
            if info is None:
                break
            op.advance(info)
    for op in [op for op in _DETACHED if op.done]:
        _DETACHED.remove(op)    # in place: a finalizer in another thread may add ops


def progressed(op: Op) -> None:
    """Let every wait and test advance *op* (a posted receive, a nonblocking
    collective) until it finishes, whoever waits."""
    _PENDING[op] = None
    _POSTED[0] += 1


def not_progressed(op: Op) -> None:
    _PENDING.pop(op, None)


@serialized
def progress() -> None:
    """Advance every posted receive whose handle has completed (and detached ops)."""
    settle()
    _ROUNDS[0] += 1
    if _PENDING:
        outer = hold()      # a `Holding` block, inline: progress runs in every test
        try:
            for op in list(_PENDING):
                h = op.handle
                if h is not None:
                    info = op.engine.ch.test(h)
                    if info is not None:
                        op.advance(info)
        finally:
            if outer:
                unhold()
    if _DETACHED:
        advance_detached()


@serialized
def test(op: Op) -> bool:
    """Progress everything; True once *op* is done."""
    progress()
    return _tested(op, False)


@serialized
def tested(op: Op) -> bool:
    """Advance *op* alone, by its own handle, if it has completed; True once
    it is done. For a pass over a list of requests after one `progress`: a
    receive that progress tested before a later test took its message in
    is seen done, as MPI's own calls on a list see it."""
    return _tested(op, True)


def _tested(op: Op, pending: bool) -> bool:
    """Advance *op* by its own handle (*pending*: even if `progress` advances it)."""
    _ROUNDS[0] += 1
    while not op.done and op.handle is not None and (pending or op not in _PENDING):
        info = op.engine.ch.test(op.handle)
        if info is None:
            break
        op.advance(info)
    return op.done


def _wait_any(ops) -> None:
    """Block until at least one of *ops* is done, progressing every posted
    receive. Pulled sends among them offer help meanwhile, as do a few older
    ones to the same ranks, whose requests for help the wait takes in too
    (`Offering`)."""
    settle()
    if any(op.done for op in ops):
        return
    with Offering(ops) as offering:
        while not any(op.done for op in ops):
            _advance_some(ops, also=offering.ahead)


wait_any = serialized(_wait_any)


#: Counts the rounds of advancing: a round that sees it change knows that
#: handles may have moved under it (an op advanced by a nested wait or test).
_ROUNDS = [0]
#: Counts the ops that began waiting on a handle (posted receives, nonblocking
#: collectives): a wait that sees it change has handles to add to its list.
_POSTED = [0]


def _pause_on(ch) -> None:
    """A turn of a polling wait on channel *ch* (see `pause`): the core is
    yielded where the channel's ranks outnumber the cores."""
    pause(not getattr(ch, "oversubscribed", False))


def _first_done(ch, handles: Sequence[Any], polling: bool):
    """(index, info) of a completed handle of *handles*: waited for in the
    channel; or, *polling* (several threads: never block holding the lock),
    tested, and None after a `pause` if none has completed."""
    if not polling:
        release_held()      # a nested wait: the senders may wait for them
        return ch.waitany(handles)
    hit = ch.testany(handles)
    if hit is None:
        _pause_on(ch)
    return hit


def _waiting(ops, also: Sequence[Op] = ()) -> tuple[list[Op], list[Any]]:
    """The ops of *ops*, then of *also*, then the posted receives, that wait
    on a handle, in order and each once; and their handles."""
    live: dict[Op, None] = {}
    for group in (ops, also, _PENDING):
        for op in group:
            if op.handle is not None:
                live[op] = None
    if not live:
        raise RuntimeError("cmampi: waiting on requests that can never complete")
    return list(live), [op.handle for op in live]


def _advance_some(ops, every: bool = False, also: Sequence[Op] = ()) -> None:
    """Block until a handle of *ops* or of a posted receive completes; advance its
    op, and every other op whose handle has completed meanwhile; with *every*,
    go on until each op of *ops* that has a handle is done. One list serves
    the whole wait: a window of requests costs one pass per completion in the
    MPI library, not one in Python. Returns early when the list may be stale
    (a nested wait or test advanced ops; an op began waiting): call it again.

    With several threads it never blocks inside the channel while holding the
    lock (a thread that sends what this one waits for must get in): it tests,
    and if nothing has completed, `pause`s once and returns."""
    owners, handles = _waiting(ops, also)
    ch = owners[0].engine.ch
    polling = len(_THREADS) > 1
    null = ch.null_handle
    mine = {op for op in ops if op.handle is not None} if every else set()
    every = every and bool(mine)    # else: return after a round, as without it
    left, posted = len(mine), _POSTED[0]
    lo, last = 0, len(handles) - 1
    hit = _first_done(ch, handles, polling)
    if hit is None:
        return
    i, info = hit
    outer = hold()      # a `Holding` block, inline: a wait runs one per completion
    try:
        while True:
            _ROUNDS[0] += 1
            rounds = _ROUNDS[0]
            handles[i] = null
            op = owners[i]
            op.advance(info)
            if _ROUNDS[0] != rounds or _POSTED[0] != posted:
                return
            if every:
                if op.done:
                    if op in mine:
                        left -= 1
                        if not left:
                            return
                elif op.handle is None:
                    return
                else:
                    handles[i] = op.handle
            # Messages mostly complete in the order their requests were posted: the
            # next handle alone is cheaper to test than the whole list, and the
            # library's calls on a list cost per handle, taken or not (1.3 us for
            # 64, 2.1 for 128 with MPICH): they see it from its first live handle.
            i += 1
            if i < len(handles) and handles[i] is not null:
                got = ch.test(handles[i])
                if got is not None:
                    info = got
                    continue
            while handles[lo] is null and lo < last:
                lo += 1
            rest = handles[lo:] if lo else handles
            if every and not polling:
                release_held()      # before blocking: the senders may wait for them
                i, info = ch.waitany(rest)
                i += lo
                continue
            hit = ch.testany(rest)
            if hit is None:
                return
            i, info = hit
            i += lo
    finally:
        if outer:
            unhold()


@serialized
def wait_handles(ch, handles: Sequence[Any]) -> list[Any]:
    """Wait for raw channel *handles*, progressing every posted receive meanwhile;
    their completion infos, in order. A handle the channel failed (its peer is
    gone) raises its error at once."""
    settle()
    _ROUNDS[0] += 1
    infos: list[Any] = [None] * len(handles)
    left = list(range(len(handles)))
    while left:
        owners = [op for op in _PENDING if op.handle is not None]
        hit = _first_done(ch, [handles[k] for k in left] + [op.handle for op in owners],
                          len(_THREADS) > 1)
        if hit is None:
            continue
        i, info = hit
        if i < len(left):
            if info.error is not None:
                raise info.error
            infos[left.pop(i)] = info
        else:
            owners[i - len(left)].advance(info)
    return infos


@serialized
def wait_all(ops) -> None:
    """Block until every op of *ops* is done, progressing every posted receive.

    Pulled sends among them offer help meanwhile (`Offering`).
    """
    settle()
    todo = [op for op in ops if not op.done]
    with Offering(todo) as offering:
        while todo:
            if _PENDING or any(op.handle is not None for op in todo):
                _advance_some(todo, every=True, also=offering.ahead)
            else:   # only requests another thread completes (generalized ones): poll
                progress()
                nap(1e-4)
            todo = [op for op in todo if not op.done]


@serialized
def _raise_offers(ops) -> tuple[list[PullSendOp], list[PullSendOp]]:
    """Offer help for each pulled send of *ops* that has an offer word (see
    `PullSendOp`), and if there is one, for up to `OFFER_AHEAD` more of its
    engine's oldest sends in flight to the same ranks, not helped yet; (the
    sends offered, those of them not in *ops*, whose requests for help a wait
    takes in too). Only a rank with no
    receive to see through offers: one that is pulling messages itself has no
    core to spare (both directions at once ran 1.7x slower with help)."""
    if _PENDING or (_FAST and _FAST[0].receiving()):
        return [], []
    offered = [op for op in ops if type(op) is PullSendOp and op.offer is not None]
    ahead: list[PullSendOp] = []
    if offered and OFFER_AHEAD:
        waited = set(offered)
        dests = {op.dest for op in offered}
        for op in offered[0].engine.offering:
            # not helped yet (a helped send is not claimed again), to a rank we wait on
            if op.helped is None and op.dest in dests and op not in waited \
                    and op.offer is not None:
                ahead.append(op)
                if len(ahead) == OFFER_AHEAD:
                    break
        offered += ahead
    for op in offered:
        op.offer[0] = 1     # type: ignore[index]  # checked above
    return offered, ahead


@serialized
def _withdraw_offers(offered: list[PullSendOp]) -> None:
    """Withdraw the offers `_raise_offers` made; answer each claim of one whose
    send is not done (a receiver that claimed it asks for our copy).

    A handshake of two words (Dekker's): we clear the offer, then read the
    claim; a receiver sets the claim, then reads the offer again. One of us
    sees the other's write: either we see the claim and stay for the request
    (or for the claim to be dropped), or the receiver sees no offer and pulls
    alone. Our read of the claims comes after a system call that reads our
    own memory: the kernel orders it after our stores (on x86 the lock it
    takes; on arm64 the fully ordered release of the page it pinned).

    Claims made already are answered first, the offers still up: a receiver
    that finishes its part of a message as we finish ours claims the next
    message meanwhile, and that claim is answered too. Both answer within one
    `CLAIM_SECONDS`."""
    end = _time.monotonic() + CLAIM_SECONDS
    _answer_claims(offered, end)
    for op in offered:
        word = op.offer
        if word is not None:
            word[0] = 0
    live = [op for op in offered if not op.done and op.offer is not None]
    if not live:
        return
    _cma.peek_word(_os.getpid(), live[0].offer.ctypes.data)  # type: ignore[union-attr]  # checked above
    _answer_claims(live, end)


def _claimed(ops: list[PullSendOp]) -> list[PullSendOp]:
    """The sends of *ops* whose offer a receiver has claimed and not asked yet."""
    return [op for op in ops if not op.done and op.offer is not None
            and op.offer[1] and op.helped is None]


def _answer_claims(ops: list[PullSendOp], end: float) -> None:
    """Answer the requests of the receivers that claimed the offers of *ops*
    (or dropped their claim): they ask at once. A request that has not come
    by *end* (``time.monotonic``; its receiver was interrupted before it
    asked) is answered by whatever call waits for its send next."""
    claimed = _claimed(ops)
    while claimed and _time.monotonic() < end:
        ch = claimed[0].engine.ch
        hit = ch.testany([op.handle for op in claimed])
        if hit is not None:
            claimed[hit[0]].advance(hit[1])
        else:
            _pause_on(ch)
        claimed = _claimed(claimed)


#: The replies ending pulls whose senders offered help, held back while a
#: wait or a test takes in the messages that are in, one after another
#: (`Holding`); None outside such a block.
_HELD: list[list[tuple] | None] = [None]


class Holding:
    """A block of a wait or a test that takes in, one after another, the
    messages that are in: it holds back the replies that end the pulls of
    senders whose offer of help we claimed (`Engine.reply`), and sends them
    at its end. A sender completing its window one request at a time
    (``Waitany``) stays in its call until then, offering: the next message's
    claim finds the offer up (`_claim_offer`). A wait that blocks sends them
    first (`release_held`), as does a pull without its sender's help; what
    else waits inside (a descriptor's send, a full ring) the peer completes
    from its own wait."""

    __slots__ = ("outer",)

    def __enter__(self) -> None:
        self.outer = hold()

    def __exit__(self, *exc: object) -> None:
        if self.outer:
            unhold()


def hold() -> bool:
    """Begin a `Holding` block; whether it is the outermost (only that one ends it)."""
    if _HELD[0] is None:
        _HELD[0] = []
        return True
    return False


def unhold() -> None:
    """End the outermost `Holding` block: send what it holds."""
    held, _HELD[0] = _HELD[0], None
    if held:
        _send_held(held)


def release_held() -> None:
    """Send the replies a `Holding` block holds, now (before blocking)."""
    held = _HELD[0]
    if held:
        _HELD[0] = []
        _send_held(held)


def _send_held(held: list[tuple]) -> None:
    """Send every held reply, in order. A reply that cannot go is dropped: its
    sender is gone (the receive itself is complete), and the error must not
    fail whatever unrelated message or wait releases it. An interrupt is
    raised once the other replies have gone: their senders wait for them."""
    interrupted = None
    for ch, data, dest, xid in held:
        try:
            ch.send_reply(data, dest, xid)
        except Exception:   # noqa: BLE001 - see above
            continue
        except BaseException as exc:    # noqa: BLE001 - the others are still owed
            interrupted = interrupted or exc
    if interrupted is not None:
        raise interrupted


class Offering:
    """A block (a wait or a test of *ops*) during which their pulled sends
    offer help, and a few more (`ahead`, see `_raise_offers`); at its end the
    offers are withdrawn and the claims answered (`_withdraw_offers`)."""

    __slots__ = ("ahead", "offered")

    def __init__(self, ops) -> None:
        #: the sends offered; those of them not in *ops* (see `_raise_offers`)
        self.offered, self.ahead = _raise_offers(ops)

    def __enter__(self) -> Offering:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.offered:
            _withdraw_offers(self.offered)


def _claim_offer(pid: int, offer: int) -> bool:
    """Whether the sender *pid* offers help for a send whose offer word is at
    *offer*, claimed: once this is True, the sender answers our request
    before its wait returns (see `_withdraw_offers`)."""
    if not _cma.peek_word(pid, offer):
        return False
    claim = offer + 8
    try:
        if not _cma.poke_word(pid, claim, 1):
            return False
    except OSError:
        return False
    try:
        if _cma.peek_word(pid, offer):
            return True
    except BaseException:   # interrupted: the sender must not wait for our request
        _drop_claim(pid, claim)
        raise
    _drop_claim(pid, claim)
    return False


def _drop_claim(pid: int, claim: int) -> None:
    try:
        _cma.poke_word(pid, claim, 0)
    except OSError:
        pass    # the sender is gone


def settle() -> None:
    """Let the engines take over every op the compiled path still holds (posted,
    or arrived with a message they act on): their waits, probes and blocking
    calls progress them from then on, and later receives see where they land.
    Ops a compiled wait in another thread holds stay with it."""
    if _FAST and _FAST[0].pending():
        for staged in _FAST[0].live():
            if not staged.busy:
                promote(staged)


@serialized
def promote(staged) -> Op:
    """The op of the Python engine a compiled op becomes, once and for good. The
    compiled op is claimed first (its request released, or its message taken),
    before anything here allocates: a finalizer run meanwhile finds it taken.
    Under the engine's lock whenever several threads run: another thread's
    progress (`settle`) may be taking the same op over."""
    op = staged.op
    if op is not None:
        return op
    engine: Engine = staged.engine
    state = staged.state
    if state == _fastpath.RELEASED:
        raise RuntimeError("this request is being taken over by the engine elsewhere")
    handle = staged.release() if state == _fastpath.POSTED else None
    if state == _fastpath.ARRIVED:
        staged.taken()
    error = engine.names.Exception(staged.error) if staged.error else None
    if staged.whole:
        # an object's receive, as `Engine._irecv_staged` posts it: its buffer is the stage
        landed, decode = OBJECT_RECEIVE
        op = RecvOp(engine, None, landed)
        op.decode = decode
        op.stage = np.frombuffer(staged, np.uint8)  # its buffer, the op's now (not spared)
        if handle is not None:
            op.wait_on(handle, op.arrived)
        else:   # its message is in the array (done, or for the engine to act on)
            staged.op = op
            op.arrived(completion(staged.source, staged.tag, staged.count, error))
    elif not staged.is_recv:
        if handle is not None:
            op = SendOp(engine, handle, staged)     # it holds the buffer
        else:
            op = SendOp(engine, None, None)
            op.finish(error)
    elif state == _fastpath.DONE:
        op = RecvOp(engine, None)
        op.source, op.tag, op.nbytes, op.done = staged.source, staged.tag, staged.count, True
    else:
        op = RecvOp(engine, recv_buffer(staged.obj))
        # the stage's memory is the compiled op's (`Engine.spare` leaves it alone)
        op.stage = np.frombuffer(staged, np.uint8)
        buf: Buffer = op.buf    # type: ignore[assignment]  # a buffer receive
        if staged.split:        # as `Engine._irecv_split` leaves it
            op.split = True
            engine._land(engine.tails, op, engine._span(buf))
        else:
            engine.small_recvs[op] = buf
        if handle is not None:
            op.wait_on(handle, op.arrived)
        else:   # its message is in the stage: a control message, or one too long
            staged.op = op
            op.arrived(completion(staged.source, staged.tag, staged.count, error))
    staged.op = op
    return op


def fill_status(status, source, tag, nbytes, err, names, cancelled=False) -> None:
    status.Set_source(source)
    status.Set_tag(tag)
    status.Set_elements(names.BYTE, nbytes)
    status.Set_cancelled(cancelled)
    status.Set_error(getattr(err, "error_class", names.ERR_OTHER) if err is not None else 0)
