"""cmampi's communicator on the socket channel: mpi4py's API with no MPI library."""

from __future__ import annotations

import inspect as _inspect
import os as _os
import sys as _sys
import threading as _threading
from collections.abc import Callable
from typing import Any, TypeVar

from . import p2p as _p2p
from ._config import config as _config
from ._names import _ADDED as _added_errors
from ._serial import serialized
from .channel import Completion
from .comm import Communicator, _Freed, as_int
from .request import Prequest, Request, complete_all, new_request
from .sockgroup import Group

__all__ = ["Intracomm"]

_Comm = TypeVar("_Comm", bound="Intracomm")


class Intracomm(Communicator):
    """
    An intracommunicator over cmampi's socket channel (no MPI library).
    """

    __module__ = "cmampi.MPI"   # where pickle and repr find it

    def __init__(self, comm: Intracomm | None = None) -> None:
        if comm is None:
            from . import MPI

            comm = MPI.COMM_WORLD
        if not isinstance(comm, Intracomm):
            raise TypeError(f"expected a cmampi Intracomm, got {comm!r}")
        self._engine = comm._engine
        self._predefined = comm._predefined     # the same communicator, by another object

    _predefined = False

    #: Set below the class, beside the nonblocking and persistent collectives.
    Barrier_init: Callable[..., Prequest]

    @classmethod
    def _from_channel(cls: type[_Comm], channel, predefined: str = "") -> _Comm:
        """A communicator over *channel* (*predefined*: ``COMM_WORLD``'s or
        ``COMM_SELF``'s name, for those two)."""
        self = cls.__new__(cls)
        self._engine = _p2p.Engine(channel, channel.names, _config)
        self._engine.comm_name = predefined     # kept by the engine, which copies share
        self._predefined = bool(predefined)
        return self

    def __eq__(self, other: object) -> bool:
        # Null communicators (COMM_NULL, freed ones, Split's UNDEFINED) are all one.
        return isinstance(other, Intracomm) and (self._engine is other._engine or (
            isinstance(self._engine, _Freed) and isinstance(other._engine, _Freed)))

    def __hash__(self) -> int:
        return 0 if isinstance(self._engine, _Freed) else id(self._engine)

    def __bool__(self) -> bool:
        return not isinstance(self._engine, _Freed)

    def __repr__(self) -> str:
        if isinstance(self._engine, _Freed):
            return "<cmampi.Intracomm (null)>"
        return f"<cmampi.Intracomm rank {self.rank} of {self.size}, socket channel>"

    # -- communicator management ------------------------------------------------------------
    def Dup(self, info=None) -> Intracomm:
        """Duplicate the communicator."""
        return Intracomm._from_channel(self._engine.ch.dup())

    def Clone(self) -> Intracomm:
        """Clone the communicator (same as ``Dup``)."""
        return self.Dup()

    def Split(self, color: int = 0, key: int = 0) -> Intracomm:
        """Split the communicator by *color*, ordering ranks by *key* (``COMM_NULL``
        for color ``UNDEFINED``)."""
        ch = self._engine.ch.split(as_int(color), as_int(key))
        return Intracomm._from_channel(ch) if ch is not None else _topo().null_comm()

    def Get_group(self) -> Group:
        """Access the group associated with a communicator."""
        ch = self._engine.ch
        return Group._of(ch.group, ch.hub.rank)

    @property
    def group(self) -> Group:
        """Group."""
        return self.Get_group()

    def Create(self, group: Group) -> Intracomm:
        """Create a communicator of the processes of *group* (``COMM_NULL`` for the
        others); collective over this communicator."""
        ch = self._engine.ch
        members = group._live()
        if any(w not in ch.local for w in members):
            raise self._engine.names.Exception(self._engine.names.ERR_GROUP)
        me = ch.hub.rank
        if me not in members:
            return self.Split(self._engine.names.UNDEFINED, 0)
        # Ranks may pass different groups if they are disjoint (MPI 2.2): one
        # communicator per group, told apart by its first member.
        return self.Split(min(members), members.index(me))

    def Create_group(self, group: Group, tag: int = 0) -> Intracomm:
        """Create a communicator of the processes of *group*; collective over those
        processes only (*tag* tells apart creations under way at once)."""
        ch = self._engine.ch
        names = self._engine.names
        members = group._live()
        if ch.hub.rank not in members or any(w not in ch.local for w in members):
            raise names.Exception(names.ERR_GROUP)
        tag = as_int(tag)
        if tag < 0:
            raise names.Exception(names.ERR_TAG)
        return Intracomm._from_channel(ch.create_group(list(members), tag))

    def Split_type(self, split_type: int, key: int = 0, info=None) -> Intracomm:
        """Split the communicator by type (``COMM_TYPE_SHARED``: ranks sharing memory)."""
        names = self._engine.names
        if split_type == names.UNDEFINED:
            return self.Split(names.UNDEFINED, key)
        nodes = self._engine.ch.nodes
        return self.Split(sorted(set(nodes)).index(nodes[self.rank]), key)

    def Free(self) -> None:
        """Free the communicator (and cmampi's private duplicates of it)."""
        engine = self._engine
        if self._predefined:    # as MPI: COMM_WORLD and COMM_SELF cannot be freed
            raise engine.names.Exception(engine.names.ERR_COMM)
        engine.free()
        self._engine = _Freed(engine.names)

    def Barrier(self) -> None:
        """Barrier synchronization."""
        self._coll.barrier()

    def barrier(self) -> None:
        """Barrier synchronization."""
        self.Barrier()

    @serialized
    def Ibarrier(self) -> Request:
        """Nonblocking Barrier."""
        coll = self._coll       # the collectives' private space (made on first use)
        seq = coll.e.ibarriers
        coll.e.ibarriers = seq + 1  # the same on every rank: collectives are called in order
        return new_request(_BarrierOp(coll.e, _TAG_IBARRIER + seq % _IBARRIER_TAGS))

    def _lock(self, kind: str):
        """The lock of this communicator for lowercase collective *kind*: one such
        call at a time per communicator, as mpi4py's (made on first use)."""
        table = _comm_lock_table(self)
        lock = table.get(kind)
        if lock is None:
            lock = table[kind] = _threading.Lock()
        return lock

    def Alltoallw(self, sendbuf, recvbuf) -> None:
        """All to All Scatter/Gather, general: per-rank counts, byte displacements
        and datatypes. Sent point-to-point on the collectives' private space."""
        e = self._engine
        names = e.names
        rmem, rcounts, rdispls, rtypes = _w_spec(recvbuf, e.size, True)
        if sendbuf is names.IN_PLACE:
            smem, scounts, sdispls, stypes = rmem.copy(), rcounts, rdispls, rtypes
        else:
            smem, scounts, sdispls, stypes = _w_spec(sendbuf, e.size, False)
        private = Intracomm.__new__(Intracomm)
        private._engine = self._coll.e
        tag = private._engine.tag_ub    # a tag of its own beside the blocking collectives'
        requests = []
        for peer in range(e.size):
            lo, n = rdispls[peer], rcounts[peer] * rtypes[peer].Get_size()
            requests.append(private.Irecv(rmem[lo:lo + n], peer, tag))
        for peer in range(e.size):
            lo, n = sdispls[peer], scounts[peer] * stypes[peer].Get_size()
            requests.append(private.Isend(smem[lo:lo + n], peer, tag))
        complete_all(requests)

    # -- process topologies (cmampi.sockettopo) ------------------------------------------
    def Create_cart(self, dims, periods=None, reorder: bool = False):
        """Create cartesian communicator."""
        return _topo().create_cart(self, dims, periods, reorder)

    def Create_graph(self, index, edges, reorder: bool = False):
        """Create graph communicator."""
        return _topo().create_graph(self, index, edges, reorder)

    def Create_dist_graph_adjacent(self, sources, destinations, sourceweights=None,
                                   destweights=None, info=None, reorder: bool = False):
        """Create distributed graph communicator."""
        return _topo().create_dist_graph_adjacent(self, sources, destinations, sourceweights,
                                                  destweights, info, reorder)

    def Create_dist_graph(self, sources, degrees, destinations, weights=None, info=None,
                          reorder: bool = False):
        """Create distributed graph communicator."""
        return _topo().create_dist_graph(self, sources, degrees, destinations, weights, info,
                                         reorder)

    def Cart_map(self, dims, periods=None) -> int:
        """Return an optimal placement for the calling process on the physical machine."""
        return _topo().cart_map(self, dims, periods)

    def Graph_map(self, index, edges) -> int:
        """Return an optimal placement for the calling process on the physical machine."""
        return _topo().graph_map(self, index, edges)

    def Get_topology(self) -> int:
        """Return the type of topology (if any) associated with a communicator."""
        topo = self._engine.topo
        return self._engine.names.UNDEFINED if topo is None else topo.kind

    @property
    def topology(self) -> int:
        """Topology type."""
        return self.Get_topology()

    @property
    def is_topo(self) -> bool:
        """Is a topology."""
        return self.Get_topology() != self._engine.names.UNDEFINED

    # -- names and attributes ---------------------------------------------------------------
    def Get_name(self) -> str:
        """Get the print name for this communicator."""
        return self._engine.comm_name

    def Set_name(self, name: str) -> None:
        """Set the print name for this communicator."""
        self._engine.comm_name = str(name)

    def Get_attr(self, keyval: int):
        """Retrieve attribute value by key: ``TAG_UB`` (the largest tag) and
        ``LASTUSEDCODE`` (the largest error class or code the program added) are
        the attributes the socket channel has; any other key has no value (None)."""
        names = self._engine.names
        if keyval == names.TAG_UB:
            return self._engine.tag_ub
        if keyval == names.LASTUSEDCODE:
            return _added_errors.last_used
        return None

    def Abort(self, errorcode: int = 0) -> None:
        """Terminate the job: every rank (the launcher ends the others)."""
        _sys.stdout.flush()
        _sys.stderr.flush()
        _os._exit(errorcode or 1)

    # -- queries ----------------------------------------------------------------------------
    def Is_inter(self) -> bool:
        """Test to see if a comm is an intercommunicator."""
        return False

    def Is_intra(self) -> bool:
        """Test to see if a comm is an intracommunicator."""
        return True

    @property
    def is_inter(self) -> bool:
        """Is intercommunicator."""
        return False

    @property
    def is_intra(self) -> bool:
        """Is intracommunicator."""
        return True

    def Get_rank(self) -> int:
        """Return the rank of this process in the communicator."""
        return self._engine.rank

    def Get_size(self) -> int:
        """Return the number of processes in the communicator."""
        return self._engine.size

    @property
    def rank(self) -> int:
        """Rank of this process."""
        return self._engine.rank

    @property
    def size(self) -> int:
        """Number of processes."""
        return self._engine.size


# -- nonblocking and persistent collectives ---------------------------------------------------
#
# The socket channel's collectives are blocking algorithms, so ``Ibcast`` and the
# others run the collective when called and return a completed request, and a
# persistent collective (``Bcast_init``) runs it at each ``Start``. The buffers are
# read and written when MPI allows (at the call, at ``Start``); what differs from an
# MPI library is progress: the call returns when the collective has ended on this
# rank, so a program must not make a rank's entry into the collective wait for a
# point-to-point message sent only after another rank's entry. (``Ibarrier`` and
# ``Barrier_init`` are truly nonblocking.)

_COLLECTIVES = ("Bcast", "Gather", "Gatherv", "Scatter", "Scatterv", "Allgather",
                "Allgatherv", "Alltoall", "Alltoallv", "Reduce", "Allreduce",
                "Reduce_scatter_block", "Reduce_scatter", "Scan", "Exscan", "Alltoallw")


def _w_spec(spec, size: int, writable: bool):
    """An Alltoallw message as (bytes of buf, counts, byte displacements, datatypes),
    read by mpi4py's rules and with its exceptions: ``[buf, counts, displs,
    datatypes]``, ``[buf, (counts, displs), datatypes]``, or ``[buf, datatypes]`` and
    ``[buf, None, None, datatypes]`` (one item of each datatype, at displacement 0);
    each segment is checked to lie in the buffer."""
    import operator

    from ._names import BOTTOM, Datatype, _bytes_of

    def items(seq, what: str) -> list:
        values = [operator.index(x) for x in seq]   # None or a number: TypeError
        if len(values) != size:
            raise ValueError(f"message: expecting {size} {what}, got {len(values)}")
        return values

    if not isinstance(spec, (list, tuple)):
        raise TypeError("message: expecting a list or tuple")
    counts = displs = None
    if len(spec) == 2:
        buf, types = spec
    elif len(spec) == 3:
        buf, (counts, displs), types = spec
    elif len(spec) == 4:
        buf, counts, displs, types = spec
    else:
        raise ValueError("message: expecting 2 to 4 items")
    if buf is BOTTOM:
        if counts is None:
            raise ValueError("message: BOTTOM requires counts")
        if displs is None:
            raise ValueError("message: BOTTOM requires displs")
        mem = _bytes_of(bytearray())
    else:
        mem = _bytes_of(buf)
        if writable and not mem.flags.writeable:
            raise BufferError("Object is not writable.")
    if counts is None and displs is None:
        counts, displs = [1] * size, [0] * size
    else:
        counts, displs = items(counts, "counts"), items(displs, "displacements")
    if isinstance(types, Datatype):
        types = [types] * size
    types = list(types)
    if len(types) != size:
        raise ValueError(f"message: expecting {size} datatypes, got {len(types)}")
    for t in types:
        if not isinstance(t, Datatype):
            raise TypeError(f"message: expecting a Datatype, got {type(t).__name__}")
    for c, d, t in zip(counts, displs, types):
        n = c * t.Get_size()
        if n and buf is BOTTOM:
            raise NotImplementedError("Alltoallw at MPI.BOTTOM (absolute addresses, "
                                      "derived datatypes) needs an MPI library")
        if c < 0 or d < 0 or (n and d + n > mem.size):
            raise ValueError(f"message: {c} items of {t!r} at byte {d} exceed the buffer")
    return mem, counts, displs, types


def _completed(comm: Intracomm) -> Request:
    op = _p2p.Op(comm._engine)
    op.finish()
    return new_request(op)


def _make_nonblocking(name: str):
    blocking = getattr(Intracomm, name)

    def method(self, *args, **kwargs) -> Request:
        blocking(self, *args, **kwargs)
        return _completed(self)

    method.__name__ = method.__qualname__ = "I" + name.lower()[0] + name[1:]
    method.__doc__ = f"Nonblocking {name} (run when called: see above)."
    method.__signature__ = (  # type: ignore[attr-defined]  # a function's, read by inspect
        _inspect.signature(blocking).replace(return_annotation=Request))
    return method


def _make_persistent(name: str):
    blocking = getattr(Intracomm, name)
    signature = _inspect.signature(blocking)

    def method(self, *args, **kwargs) -> Prequest:
        bound = _inspect.signature(init).bind(self, *args, **kwargs)
        bound.arguments.pop("info", None)
        args_, kwargs_ = bound.args[1:], bound.kwargs

        def start() -> Request:
            blocking(self, *args_, **kwargs_)
            return _completed(self)
        return Prequest._starting(start)

    init = method
    method.__name__ = method.__qualname__ = name + "_init"
    method.__doc__ = f"Persistent {name} (run at each Start)."
    info = _inspect.Parameter("info", _inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)
    method.__signature__ = signature.replace(  # type: ignore[attr-defined]  # read by inspect
        parameters=[*signature.parameters.values(), info], return_annotation=Prequest)
    return method


for _name in _COLLECTIVES:
    _nb = _make_nonblocking(_name)
    setattr(Intracomm, _nb.__name__, _nb)
    _pr = _make_persistent(_name)
    setattr(Intracomm, _pr.__name__, _pr)


def _barrier_init(self, info=None) -> Prequest:
    """Persistent Barrier."""
    return Prequest._starting(self.Ibarrier)


Intracomm.Barrier_init = _barrier_init


#: Tags of Ibarriers on the collectives' private space: one per barrier in
#: flight (a sequence number), apart from the blocking collectives' own tags.
_TAG_IBARRIER, _IBARRIER_TAGS = 1 << 10, 1 << 20


class _BarrierOp(_p2p.Op):
    """A nonblocking dissemination barrier: log2(size) rounds of empty messages
    on a tag of its own, each round started when the last has ended, advanced
    by any wait or test (it is a pending op, as a posted receive is)."""

    __slots__ = ("empty", "handles", "step", "tag")

    #: This round's channel handles (the channel's own type), the next to wait on first.
    handles: list[Any]

    def __init__(self, engine: _p2p.Engine, tag: int) -> None:
        super().__init__(engine)
        self.step, self.handles, self.empty, self.tag = 1, [], bytearray(0), tag
        self._round()

    def finish(self, error=None) -> None:
        super().finish(error)
        _p2p.not_progressed(self)

    def _round(self) -> None:
        e = self.engine
        if self.step >= e.size:
            self.finish()
            return
        ch, me, step = e.ch, e.rank, self.step
        self.handles = [ch.irecv(self.empty, (me - step) % e.size, self.tag),
                        ch.isend(self.empty, (me + step) % e.size, self.tag)]
        self.handle = self.handles[0]
        _p2p.progressed(self)

    def advance(self, info: Completion) -> None:
        if info.error is not None:     # a rank of the barrier is gone
            self.finish(info.error)
            return
        self.handles.pop(0)
        if self.handles:
            self.handle = self.handles[0]
            return
        self.step *= 2
        self._round()


def _topo():
    """cmampi.sockettopo (imported on first use: it builds on this module)."""
    from . import sockettopo

    return sockettopo


def _comm_lock_table(comm: Intracomm) -> dict:
    """The locks of *comm*'s lowercase collectives, by kind (mpi4py's table)."""
    engine = comm._engine
    return engine.locks
