"""cmampi's communicator on the socket channel: mpi4py's API with no MPI library."""

from __future__ import annotations

import inspect as _inspect
import os as _os
import sys as _sys
import threading as _threading
from typing import Optional

from ._config import config as _config
from .comm import Communicator, _Freed
from .request import Prequest, Request, new_request
from . import p2p as _p2p

__all__ = ["Intracomm"]


class Intracomm(Communicator):
    """
    An intracommunicator over cmampi's socket channel (no MPI library).
    """

    __module__ = "cmampi.MPI"   # where pickle and repr find it

    def __init__(self, comm: Optional["Intracomm"] = None) -> None:
        if comm is None:
            from . import MPI

            comm = MPI.COMM_WORLD
        if not isinstance(comm, Intracomm):
            raise TypeError(f"expected a cmampi Intracomm, got {comm!r}")
        self._engine = comm._engine
        self._predefined = comm._predefined     # the same communicator, by another object

    _predefined = False

    @classmethod
    def _from_channel(cls, channel, predefined: str = "") -> "Intracomm":
        """A communicator over *channel* (*predefined*: ``COMM_WORLD``'s or
        ``COMM_SELF``'s name, for those two)."""
        self = cls.__new__(cls)
        self._engine = _p2p.Engine(channel, channel.names, _config)
        self._engine.comm_name = predefined     # kept by the engine, which copies share
        self._predefined = bool(predefined)
        return self

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Intracomm) and self._engine is other._engine

    def __hash__(self) -> int:
        return id(self._engine)

    def __repr__(self) -> str:
        if isinstance(self._engine, _Freed):
            return "<cmampi.Intracomm (freed)>"
        return f"<cmampi.Intracomm rank {self.rank} of {self.size}, socket channel>"

    # -- communicator management ------------------------------------------------------------
    def Dup(self, info=None) -> "Intracomm":
        """Duplicate the communicator."""
        return Intracomm._from_channel(self._engine.ch.dup())

    def Clone(self) -> "Intracomm":
        """Clone the communicator (same as ``Dup``)."""
        return self.Dup()

    def Split(self, color: int = 0, key: int = 0) -> Optional["Intracomm"]:
        """Split the communicator by *color*, ordering ranks by *key*."""
        from .comm import as_int

        ch = self._engine.ch.split(as_int(color), as_int(key))
        return Intracomm._from_channel(ch) if ch is not None else None

    def Split_type(self, split_type: int, key: int = 0, info=None) -> Optional["Intracomm"]:
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

    def Ibarrier(self) -> Request:
        """Nonblocking Barrier."""
        coll = self._coll       # the collectives' private space (made on first use)
        seq = getattr(coll, "ibarriers", 0)
        coll.ibarriers = seq + 1    # the same on every rank: collectives are called in order
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
        Request.Waitall(requests)

    # Process topologies: not on the socket channel. NotImplementedError is what
    # mpi4py raises for what the MPI library in use does not provide.
    def Create_cart(self, dims, periods=None, reorder: bool = False):
        """Create cartesian communicator (not on the socket channel)."""
        raise NotImplementedError("process topologies: not on cmampi's socket channel")

    def Create_graph(self, index, edges, reorder: bool = False):
        """Create graph communicator (not on the socket channel)."""
        raise NotImplementedError("process topologies: not on cmampi's socket channel")

    def Create_dist_graph_adjacent(self, sources, destinations, sourceweights=None,
                                   destweights=None, info=None, reorder: bool = False):
        """Create distributed graph communicator (not on the socket channel)."""
        raise NotImplementedError("process topologies: not on cmampi's socket channel")

    def Create_dist_graph(self, sources, degrees, destinations, weights=None, info=None,
                          reorder: bool = False):
        """Create distributed graph communicator (not on the socket channel)."""
        raise NotImplementedError("process topologies: not on cmampi's socket channel")

    # -- names and attributes ---------------------------------------------------------------
    def Get_name(self) -> str:
        """Get the print name for this communicator."""
        return getattr(self._engine, "comm_name", "")

    def Set_name(self, name: str) -> None:
        """Set the print name for this communicator."""
        self._engine.comm_name = str(name)

    def Get_attr(self, keyval: int):
        """Retrieve attribute value by key: ``TAG_UB`` (the largest tag) is the one
        attribute the socket channel has; any other key has no value (None)."""
        names = self._engine.names
        if keyval == names.TAG_UB:
            return self._engine.tag_ub
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
    """An Alltoallw message ``[buf, (counts, displs), datatypes]`` or ``[buf, counts,
    displs, datatypes]`` as (bytes of buf, counts, byte displacements, datatypes),
    each segment checked to lie in the buffer."""
    from ._names import Datatype, _bytes_of

    if not isinstance(spec, (list, tuple)) or len(spec) not in (3, 4):
        raise ValueError("message: expecting a list or tuple of 3 or 4 items")
    if len(spec) == 3:
        buf, (counts, displs), types = spec
    else:
        buf, counts, displs, types = spec
    mem = _bytes_of(buf)
    if writable and not mem.flags.writeable:
        raise BufferError("Object is not writable.")
    if isinstance(types, Datatype):
        types = [types] * size
    counts, displs, types = list(counts), list(displs), list(types)
    if not len(counts) == len(displs) == len(types) == size:
        raise ValueError(f"message: expecting {size} counts, displacements and datatypes")
    for c, d, t in zip(counts, displs, types):
        if c < 0 or d < 0 or (c and d + c * t.Get_size() > mem.size):
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
    method.__signature__ = _inspect.signature(blocking).replace(return_annotation=Request)
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
    method.__signature__ = signature.replace(
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

    __slots__ = ("step", "handles", "empty", "tag")

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

    def advance(self, info) -> None:
        if info[3] is not None:     # a rank of the barrier is gone
            self.finish(info[3])
            return
        self.handles.pop(0)
        if self.handles:
            self.handle = self.handles[0]
            return
        self.step *= 2
        self._round()


def _comm_lock_table(comm: Intracomm) -> dict:
    """The locks of *comm*'s lowercase collectives, by kind (mpi4py's table)."""
    engine = comm._engine
    table = getattr(engine, "locks", None)
    if table is None:
        table = engine.locks = {}
    return table
