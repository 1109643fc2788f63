"""The MPI channel: control traffic over hidden duplicates of an mpi4py communicator."""

from __future__ import annotations

import array as _array
import itertools as _itertools
import os as _os
import pickle as _pickle
import socket as _socket
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .._access import allow_peers
from .._backend import real_mpi
from .._cma import pid_namespace, user_namespace
from .._config import CMA_MIN_DEFAULTS
from .._config import config as _config
from .._tuning import CMA_MIN_BUSY_DEFAULTS, CMA_MIN_BUSY_GUARDED
from .._watch import site as _site
from . import Completion

if TYPE_CHECKING:
    from mpi4py import MPI as _mpi

_MPI = real_mpi()

__all__ = ["MPIChannel"]

_BYTE = _MPI.BYTE
_BOTTOM = _MPI.BOTTOM
_get_address = _MPI.Get_address
_INT_MAX = 2**31 - 1
_GIB = 1 << 30
_new = tuple.__new__


def _allgather(comm: _mpi.Comm, obj) -> list:
    """Every rank's *obj*, in rank order (collective): pickled by pickle itself,
    not by ``MPI.pickle`` as mpi4py's ``allgather``, which a program may have
    given other ``dumps`` and ``loads`` (`_userpickle`)."""
    data = _pickle.dumps(obj, _pickle.HIGHEST_PROTOCOL)
    lens = _array.array("q", bytes(8 * comm.Get_size()))
    comm.Allgather([_array.array("q", [len(data)]), _MPI.INT64_T], [lens, _MPI.INT64_T])
    displs = [0, *_itertools.accumulate(lens[:-1])]
    out = bytearray(sum(lens))
    comm.Allgatherv([data, _BYTE], [out, (list(lens), displs), _BYTE])
    return [_pickle.loads(out[d : d + n]) for d, n in zip(displs, lens)]


def _done(st, error: BaseException | None = None) -> Completion:
    """The `Completion` status *st* describes (made without NamedTuple's
    argument parsing: once per message)."""
    return _new(Completion, (st.Get_source(), st.Get_tag(), st.Get_count(_BYTE), error))


class MPIChannel:
    """Two private spaces over duplicates of *comm*.

    The *user* space carries cmampi's messages matched by the user's
    ``(source, tag)``; the *side* space carries acks and out-of-band payloads,
    keyed by a transfer id, so no user receive can ever match them. Both are
    duplicates, so nothing here matches traffic on *comm* itself.
    Construction is collective over *comm*.
    """

    cma_min = CMA_MIN_DEFAULTS["mpi"]
    cma_min_busy = CMA_MIN_BUSY_DEFAULTS["mpi"]

    @_site     # the library's collectives, on a channel nothing uses yet (`_watch`)
    def __init__(self, comm: _mpi.Intracomm, node: str | None = None) -> None:
        allow_peers(_config)     # before the handshake below: peers probe us after it
        #: mpi4py's own view of *comm* (a cmampi communicator's methods would recurse)
        self.comm = comm = _MPI.Intracomm(comm)
        self.node = node
        self.user = comm.Dup()
        self.side = comm.Dup()
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        tag_ub = comm.Get_attr(_MPI.TAG_UB) or 32767
        self.tag_ub = int(tag_ub)
        #: transfer ids live in [0, xid_limit) so that 2*xid+1 is a valid tag
        self.xid_limit = (self.tag_ub - 1) // 2
        #: A tag of the side space that no transfer id's uses: the medium pickles
        #: of a gather or reduce in slots (`objcoll`) travel with it.
        self.slot_tag = self.tag_ub
        # Locality: ranks sharing memory, as MPI sees it, unless overridden.
        shared = comm.Split_type(_MPI.COMM_TYPE_SHARED, key=self.rank)
        try:
            local_id = min(_allgather(shared, self.rank))
        finally:
            shared.Free()
        node = node if node is not None else _config.node
        key = node if node is not None else f"{_socket.gethostname()}#{local_id}"
        info = _allgather(comm, (_os.getpid(), key, pid_namespace(), user_namespace(),
                                sorted(_os.sched_getaffinity(0))))
        self.pids: list[int] = [rec[0] for rec in info]
        self.nodes: list[str] = [rec[1] for rec in info]
        #: A peer's pid is only usable for CMA inside the same pid namespace.
        self.pidns = [rec[2] for rec in info]
        #: More ranks on this node than cores we may run on: a wait that spins in
        #: the MPI library holds a core the rank it waits for needs, for a whole
        #: time slice. Waits then poll and yield instead (see `waitany`).
        here = [r for r, k in enumerate(self.nodes) if k == self.nodes[self.rank]]
        usable = set().union(*(info[r][4] for r in here))    # a rank may be bound to one
        self.oversubscribed = len(here) > len(usable)
        #: CMA is only used inside one user namespace.
        self.userns = [rec[3] for rec in info]
        self.status = _MPI.Status()
        #: Open MPI (5.0) writes a message that a contiguous receive buffer
        #: truncates past that buffer's end; receives through a datatype with a
        #: gap stop at the buffer's end. Where the size is not known before the
        #: receive, the engine posts those (`irecv_guarded`, `irecv_split`).
        self.guarded = _MPI.get_vendor()[0] == "Open MPI"
        #: ... and counts the whole message in a truncated receive's status
        #: (MPICH counts the bytes the buffer took).
        self.counts_whole = self.guarded
        if self.guarded:
            self.cma_min_busy = CMA_MIN_BUSY_GUARDED
        self.types: dict[tuple[int, int, int, int], _mpi.Datatype] = {}
        self.gib: _mpi.Datatype | None = None

    @_site
    def dup(self) -> MPIChannel:
        """A channel over new duplicates of the same communicator; collective."""
        return MPIChannel(self.comm, self.node)

    def allgather(self, obj):
        """Every rank's *obj* (small, pickled), in rank order; collective."""
        return _allgather(self.side, obj)

    #: The address of a buffer: mpi4py's is a third of the cost of ctypes'.
    address = staticmethod(_get_address)

    # -- user space --------------------------------------------------------------------
    def send(self, data, dest: int, tag: int) -> None:
        self.user.Send([data, _BYTE], dest, tag)

    def isend(self, data, dest: int, tag: int) -> _mpi.Request:
        return self.user.Isend([data, _BYTE], dest, tag)

    def recv(self, buf, source: int, tag: int) -> tuple[int, int, int]:
        """Blocking receive into *buf*: (source, tag, nbytes)."""
        st = self.status
        self.user.Recv([buf, _BYTE], source, tag, st)
        return st.Get_source(), st.Get_tag(), st.Get_count(_BYTE)

    def irecv(self, buf, source: int, tag: int) -> _mpi.Request:
        return self.user.Irecv([buf, _BYTE], source, tag)

    def irecv_guarded(self, buf, nbytes: int, source: int, tag: int) -> _mpi.Request:
        """Receive a message of up to *nbytes* (at least 1) into *buf*, which has one
        byte more: its last byte lands at ``buf[nbytes]``, past a gap (`guarded`)."""
        addr = _get_address(buf)
        dt = self._two_blocks(nbytes - 1, addr, 1, addr + nbytes)
        return self.user.Irecv([_BOTTOM, 1, dt], source, tag)

    def irecv_split(self, head, addr: int, nbytes: int, source: int, tag: int) -> _mpi.Request:
        """Receive into the *nbytes* at address *addr*, except the message's first
        ``len(head)`` bytes, which land in *head* instead (one derived datatype)."""
        k = len(head)
        dt = self._two_blocks(k, _get_address(head), nbytes - k, addr + k)
        return self.user.Irecv([_BOTTOM, 1, dt], source, tag)

    #: Two-block datatypes kept for reuse: receives reuse their stages and buffers.
    TYPES_KEPT = 256

    def _two_blocks(self, n1: int, a1: int, n2: int, a2: int) -> _mpi.Datatype:
        """The committed datatype of *n1* bytes at address *a1*, then *n2* at *a2*
        (it names only addresses, so it serves whatever memory lies there)."""
        key = (n1, a1, n2, a2)
        dt = self.types.get(key)
        if dt is None:
            if len(self.types) >= self.TYPES_KEPT:
                # The oldest goes; MPI keeps it for receives still using it.
                self.types.pop(next(iter(self.types))).Free()
            if n2 <= _INT_MAX:
                dt = _BYTE.Create_hindexed([n1, n2], [a1, a2])
            else:   # block lengths are C ints (Open MPI refuses more): whole GiBs, then the rest
                whole, rest = divmod(n2, _GIB)
                dt = _MPI.Datatype.Create_struct([n1, whole, rest], [a1, a2, a2 + whole * _GIB],
                                                 [_BYTE, self._gib(), _BYTE])
            self.types[key] = dt = dt.Commit()
        return dt

    def _gib(self) -> _mpi.Datatype:
        """A committed datatype of 1 GiB of contiguous bytes."""
        if self.gib is None:
            self.gib = _BYTE.Create_contiguous(_GIB).Commit()
        return self.gib

    def mprobe(self, source: int, tag: int):
        """Block until a message matches; take it out of the stream unreceived.

        Returns (handle, (source, tag, nbytes)); receive it with `mrecv`.
        """
        st = self.status
        msg = self.user.Mprobe(source, tag, st)
        return msg, (st.Get_source(), st.Get_tag(), st.Get_count(_BYTE))

    def mrecv(self, handle, buf) -> None:
        handle.Recv([buf, _BYTE])

    # The first *nbytes* of buffer *buf*, as they are: the MPI library reads the
    # buffer itself (a ``bytearray``, ``mmap``, array of a spec), with no parsing here.
    def send_counted(self, buf, nbytes: int, dest: int, tag: int) -> None:
        self.user.Send([buf, nbytes, _BYTE], dest, tag)

    def mrecv_counted(self, handle, buf, nbytes: int) -> None:
        handle.Recv([buf, nbytes, _BYTE])

    # A ``[buffer, count, MPI.BYTE]`` spec, as the user gave it (see `p2p.byte_spec`).
    def send_spec(self, spec, dest: int, tag: int) -> None:
        self.user.Send(spec, dest, tag)

    def isend_spec(self, spec, dest: int, tag: int) -> _mpi.Request:
        return self.user.Isend(spec, dest, tag)

    def mrecv_spec(self, handle, spec) -> None:
        handle.Recv(spec)

    def recv_object(self, source: int, tag: int) -> object:
        """Blocking receive of a message, unpickled (an empty one is None), as
        cmampi pickles (the standard pickle, whatever ``MPI.pickle`` is); its
        (source, tag, nbytes) are `last`'s."""
        st = self.status
        msg = self.user.Mprobe(source, tag, st)
        n = st.Get_count(_BYTE)
        data = bytearray(n)
        msg.Recv([data, _BYTE])
        return _pickle.loads(data) if n else None

    def last(self) -> tuple[int, int, int]:
        """(source, tag, nbytes) of the message `recv_object` returned last."""
        st = self.status
        return st.Get_source(), st.Get_tag(), st.Get_count(_BYTE)

    def take_any(self) -> tuple[int, int, bytes | bytearray] | None:
        """Receive the oldest arrived user-space message, if any: (source, tag, data)."""
        st = self.status
        msg = self.user.Improbe(_MPI.ANY_SOURCE, _MPI.ANY_TAG, st)
        if msg is None:
            return None
        data = bytearray(st.Get_count(_BYTE))
        src, tag = st.Get_source(), st.Get_tag()
        msg.Recv([data, _BYTE])
        return src, tag, data

    def probe_any(self, source: int = _MPI.ANY_SOURCE, block: bool = True) -> None:
        """Block until some user-space message has arrived (no-op unless *block*).

        *source* is for channels that can tell a dead peer; MPI cannot.
        """
        if block:
            self.user.Probe(_MPI.ANY_SOURCE, _MPI.ANY_TAG)

    # -- side space: replies (receiver -> sender) on 2*xid, payloads on 2*xid + 1 --------
    def send_reply(self, data, dest: int, xid: int) -> None:
        # Small: MPI sends it eagerly. Where it waits to be matched, the sender
        # posts its receive for it as soon as its send of the descriptor
        # returns, which needs nothing more from us. (Likewise the helper's
        # notice, `send_payload`, for which we post a receive once our help
        # request is sent.)
        self.side.Send([data, _BYTE], dest, 2 * xid)

    def irecv_reply(self, buf, source: int, xid: int) -> _mpi.Request:
        return self.side.Irecv([buf, _BYTE], source, 2 * xid)

    def send_payload(self, data, dest: int, xid: int) -> None:
        self.side.Send([data, _BYTE], dest, 2 * xid + 1)

    def isend_payload(self, data, dest: int, xid: int) -> _mpi.Request:
        return self.side.Isend([data, _BYTE], dest, 2 * xid + 1)

    def irecv_payload(self, buf, source: int, xid: int) -> _mpi.Request:
        return self.side.Irecv([buf, _BYTE], source, 2 * xid + 1)

    # -- completion --------------------------------------------------------------------
    # A receive into a buffer too small for its message completes with MPI's
    # truncation error in its Completion, not an exception.
    def waitany(self, handles: Sequence[_mpi.Request]) -> tuple[int, Completion]:
        st = self.status
        try:
            if self.oversubscribed:
                i = _yielding_waitany(handles, st)
            else:
                i = _MPI.Request.Waitany(handles, st)
        except _MPI.Exception as exc:
            # The failed request has been completed and nulled: find it.
            i = next(k for k, h in enumerate(handles) if not h and h is not _MPI.REQUEST_NULL)
            return i, _done(st, exc)
        return i, _done(st)

    #: Stands in a handle list for a handle already taken: MPI skips it.
    null_handle = _MPI.REQUEST_NULL

    def testany(self, handles: Sequence[_mpi.Request]) -> tuple[int, Completion] | None:
        """(index, info) of a completed handle of *handles*, without blocking; or
        None. Taken handles must have been replaced by `null_handle`."""
        st = self.status
        try:
            i, done = _MPI.Request.Testany(handles, st)
        except _MPI.Exception as exc:
            # The failed request has been completed and nulled in place.
            i = next(k for k, h in enumerate(handles) if not h and h is not _MPI.REQUEST_NULL)
            return i, _done(st, exc)
        if not done or i < 0:   # MPI_UNDEFINED: every handle is null
            return None
        return i, _done(st)

    def test(self, handle: _mpi.Request) -> Completion | None:
        st = self.status
        try:
            if not handle.Test(st):
                return None
        except _MPI.Exception as exc:
            return _done(st, exc)
        return _done(st)

    def wait_cancelled(self, handle: _mpi.Request) -> Completion | None:
        """Complete a cancelled handle: None if the cancel won, else its message info."""
        st = self.status
        try:
            handle.Wait(st)
        except _MPI.Exception as exc:
            return _done(st, exc)
        if st.Is_cancelled():
            return None
        return _done(st)

    def collective(self) -> None:
        """Nothing to mark: the MPI library ends the job when a rank fails."""

    def free(self) -> None:
        for dt in self.types.values():
            dt.Free()
        self.types.clear()
        if self.gib is not None:
            self.gib.Free()
            self.gib = None
        for c in (self.user, self.side):
            if c != _MPI.COMM_NULL:
                c.Free()


def _yielding_waitany(handles: Sequence[_mpi.Request], status: _mpi.Status) -> int:
    """``MPI_Waitany`` that gives the core away between polls."""
    testany, yield_ = _MPI.Request.Testany, _os.sched_yield
    while True:
        i, done = testany(handles, status)
        if done:
            return i
        yield_()
