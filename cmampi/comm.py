"""``Intracomm``: an mpi4py intracommunicator whose point-to-point traffic is single-copy."""

from __future__ import annotations

import pickle as _pickle
from typing import Any, Optional

from ._buffers import recv_buffer, send_buffer
from ._config import config as _config
from . import _wire
from . import coll as _coll_mod
from . import native as _native
from . import objcoll as _objcoll
from . import objects as _objects
from . import p2p as _p2p
from .request import Message, PartitionedRequest, Prequest, Request

__all__ = ["Intracomm", "default_engine"]

_default_engine: Optional[_p2p.Engine] = None

# mpi4py methods that return a new intracommunicator, which we wrap in turn.
_DERIVING = (
    "Dup_with_info", "Create", "Create_group",
    "Create_from_group", "Create_cart", "Create_graph", "Create_dist_graph",
    "Create_dist_graph_adjacent",
)


class _Delegated:
    """An attribute of mpi4py's Intracomm that cmampi does not define: the
    wrapped communicator's own (a derived intracommunicator comes back wrapped).

    Class attributes rather than ``__getattr__``: a class with ``__getattr__``
    makes every attribute lookup on its instances slower, ``send`` included.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, comm: Optional["Intracomm"], owner=None) -> Any:
        if comm is None:
            return self
        if comm._comm is None:
            raise AttributeError(f"cmampi.Intracomm.{self.name} is not available on the "
                                 f"socket channel (no MPI)")
        attr = getattr(comm._comm, self.name)
        if self.name not in _DERIVING:
            return attr

        def derive(*args, **kwargs):
            out = attr(*args, **kwargs)
            names = comm._engine.names
            if isinstance(out, names.Intracomm) and out != names.COMM_NULL:
                return Intracomm(out)
            return out
        derive.__doc__ = attr.__doc__
        return derive


def _delegate(MPI) -> None:
    """Give `Intracomm` every public attribute of mpi4py's intracommunicators
    (topologies' too) that it lacks; once, with mpi4py's *MPI* module."""
    if "_delegated" in Intracomm.__dict__:
        return
    Intracomm._delegated = True
    for cls in ("Intracomm", "Topocomm", "Cartcomm", "Graphcomm", "Distgraphcomm"):
        for name in dir(getattr(MPI, cls, object)):
            if not name.startswith("_") and not hasattr(Intracomm, name):
                setattr(Intracomm, name, _Delegated(name))


def _new_engine(channel, names) -> _p2p.Engine:
    global _default_engine
    engine = _p2p.Engine(channel, names, _config)
    if _default_engine is None:
        _default_engine = engine
    return engine


def default_engine() -> _p2p.Engine:
    """The engine of the first communicator wrapped (used for foreign requests)."""
    if _default_engine is None:
        raise RuntimeError("cmampi: no communicator has been created yet")
    return _default_engine


def _is_int(x) -> bool:
    return hasattr(x, "__index__") and not isinstance(x, bool)


class _Freed:
    """The engine of a freed communicator: any use raises ERR_COMM, as mpi4py's
    ``COMM_NULL`` does (and does on the socket channel, where nothing else would)."""

    __slots__ = ("names",)

    def __init__(self, names) -> None:
        self.names = names

    def __getattr__(self, name: str):
        raise self.names.Exception(self.names.ERR_COMM)


class Intracomm:
    """Wraps an mpi4py intracommunicator; point-to-point runs over cmampi.

    Construction is collective over *comm*: it duplicates it twice (a user space
    and a side space for cmampi's own messages) and exchanges process ids, so
    nothing sent through the wrapper can match traffic on *comm* itself, and
    the reverse. Every method cmampi does not implement is delegated to *comm*,
    and communicators derived from a wrapped one (``Dup``, ``Split``, ...) are
    wrapped too.
    """

    def __init__(self, comm: Any = None) -> None:
        if isinstance(comm, Intracomm):
            self._comm, self._engine = comm._comm, comm._engine
            return
        from mpi4py import MPI as names
        from .channel.mpi import MPIChannel

        if comm is None:
            comm = names.COMM_WORLD
        if not isinstance(comm, names.Intracomm) or comm == names.COMM_NULL:
            raise TypeError(f"cmampi.Intracomm wraps an mpi4py Intracomm, got {comm!r}")
        _delegate(names)
        self._comm = comm
        self._engine = _new_engine(MPIChannel(comm), names)

    @classmethod
    def _from_channel(cls, channel) -> "Intracomm":
        """A communicator over a channel that needs no MPI (the socket channel)."""
        self = cls.__new__(cls)
        self._comm = None
        self._engine = _new_engine(channel, channel.names)
        return self

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Intracomm):
            if self._comm is None:
                return self._engine is other._engine
            return self._comm == other._comm
        return self._comm is not None and self._comm == other

    def __hash__(self) -> int:
        return hash(self._comm) if self._comm is not None else id(self._engine)

    def __repr__(self) -> str:
        if isinstance(self._engine, _Freed):
            return "<cmampi.Intracomm (freed)>"
        if self._comm is None:
            return f"<cmampi.Intracomm rank {self.rank} of {self.size}, socket channel>"
        return f"<cmampi.Intracomm wrapping {self._comm!r}>"

    @property
    def comm(self) -> Any:
        """The wrapped mpi4py communicator (None on the socket channel)."""
        return self._comm

    # -- communicator management without MPI ------------------------------------------------
    def Dup(self, info=None) -> "Intracomm":
        """Duplicate the communicator."""
        if self._comm is not None:
            return Intracomm(self._comm.Dup() if info is None else self._comm.Dup(info))
        return Intracomm._from_channel(self._engine.ch.dup())

    def Clone(self) -> "Intracomm":
        """Clone the communicator (same as ``Dup``)."""
        return Intracomm(self._comm.Clone()) if self._comm is not None else self.Dup()

    def Split(self, color: int = 0, key: int = 0) -> "Intracomm":
        """Split the communicator by *color*, ordering ranks by *key*."""
        if not (_is_int(color) and _is_int(key)):   # floats too: mpi4py would truncate
            raise TypeError("an integer is required")
        if self._comm is not None:
            out = self._comm.Split(color, key)
            return Intracomm(out) if out != self._engine.names.COMM_NULL else out
        ch = self._engine.ch.split(color, key)
        return Intracomm._from_channel(ch) if ch is not None else None

    def Split_type(self, split_type: int, key: int = 0, info=None) -> "Intracomm":
        """Split the communicator by type (``COMM_TYPE_SHARED``: ranks sharing memory)."""
        names = self._engine.names
        if self._comm is not None and split_type != names.COMM_TYPE_SHARED:
            args = (split_type, key) if info is None else (split_type, key, info)
            out = self._comm.Split_type(*args)
            return Intracomm(out) if out != names.COMM_NULL else out
        if split_type == names.UNDEFINED:
            return self.Split(names.UNDEFINED, key)
        # Sharing memory is what cmampi's locality says (which CMAMPI_NODE overrides).
        nodes = self._engine.ch.nodes
        return self.Split(sorted(set(nodes)).index(nodes[self.rank]), key)

    # -- collectives ------------------------------------------------------------------------
    @property
    def _coll(self) -> _coll_mod.Collectives:
        """The collectives, over a private duplicate made on first use (collective)."""
        coll = self._engine.coll
        if coll is None:
            if self._comm is not None:
                from .channel.mpi import MPIChannel

                channel = MPIChannel(self._comm)
            else:
                channel = self._engine.ch.dup()
            coll = self._engine.coll = _coll_mod.Collectives(
                _p2p.Engine(channel, self._engine.names, _config))
        return coll

    def _by_mpi(self, kind: str, send, recv=None, root: int = 0, op=None,
                recvcounts=None) -> bool:
        """Whether the MPI library has run collective *kind*: always across nodes;
        on one node when every rank agrees the call is small and well formed."""
        engine = self._engine
        agreement = engine.native
        if agreement is not None:
            fast = agreement.fast.get(kind)     # a call made like the last of its kind
            if fast is not None:
                done = fast(send, recv, root, op)
                if done is not None:
                    return done
        else:
            if self._comm is None:
                return False
            if engine.multinode:    # the MPI library knows the network; cmampi, one node
                _native.call(self._comm, kind, send, recv, root, op, recvcounts)
                return True
            agreement = engine.native = _native.Agreement(self._comm, engine.names)
        return kind in _native.NATIVE_MAX and _native.run(agreement, kind, send, recv, root, op)

    def _op(self, op):
        return self._engine.names.SUM if op is None else op

    def Barrier(self) -> None:
        """Barrier synchronization."""
        if self._comm is not None:     # MPI's own barrier is the fastest there is
            return self._comm.Barrier()
        self._coll.barrier()

    def barrier(self) -> None:
        """Barrier synchronization."""
        self.Barrier()

    def Bcast(self, buf, root: int = 0) -> None:
        """Broadcast data from one process to all other processes."""
        if not self._by_mpi("Bcast", buf, root=root):
            _coll_mod.bcast(self._coll, buf, root)

    def Gather(self, sendbuf, recvbuf, root: int = 0) -> None:
        """Gather data to one process from all other processes."""
        if not self._by_mpi("Gather", sendbuf, recvbuf, root):
            _coll_mod.gather(self._coll, sendbuf, recvbuf, root)

    def Gatherv(self, sendbuf, recvbuf, root: int = 0) -> None:
        """Gather Vector."""
        if not self._by_mpi("Gatherv", sendbuf, recvbuf, root):
            _coll_mod.gather(self._coll, sendbuf, recvbuf, root, vector_spec=True)

    def Scatter(self, sendbuf, recvbuf, root: int = 0) -> None:
        """Scatter data from one process to all other processes."""
        if not self._by_mpi("Scatter", sendbuf, recvbuf, root):
            _coll_mod.scatter(self._coll, sendbuf, recvbuf, root)

    def Scatterv(self, sendbuf, recvbuf, root: int = 0) -> None:
        """Scatter Vector."""
        if not self._by_mpi("Scatterv", sendbuf, recvbuf, root):
            _coll_mod.scatter(self._coll, sendbuf, recvbuf, root, vector_spec=True)

    def Allgather(self, sendbuf, recvbuf) -> None:
        """Gather to All."""
        if not self._by_mpi("Allgather", sendbuf, recvbuf):
            _coll_mod.allgather(self._coll, sendbuf, recvbuf)

    def Allgatherv(self, sendbuf, recvbuf) -> None:
        """Gather to All Vector."""
        if not self._by_mpi("Allgatherv", sendbuf, recvbuf):
            _coll_mod.allgather(self._coll, sendbuf, recvbuf, vector_spec=True)

    def Alltoall(self, sendbuf, recvbuf) -> None:
        """All to All Scatter/Gather."""
        if not self._by_mpi("Alltoall", sendbuf, recvbuf):
            _coll_mod.alltoall(self._coll, sendbuf, recvbuf)

    def Alltoallv(self, sendbuf, recvbuf) -> None:
        """All to All Scatter/Gather Vector."""
        if not self._by_mpi("Alltoallv", sendbuf, recvbuf):
            _coll_mod.alltoall(self._coll, sendbuf, recvbuf, vector_spec=True)

    def Reduce(self, sendbuf, recvbuf, op=None, root: int = 0) -> None:
        """Reduce to Root."""
        op = self._op(op)
        if not self._by_mpi("Reduce", sendbuf, recvbuf, root, op):
            _coll_mod.reduce_family(self._coll, "reduce", sendbuf, recvbuf, op, root)

    def Allreduce(self, sendbuf, recvbuf, op=None) -> None:
        """Reduce to All."""
        op = self._op(op)
        if not self._by_mpi("Allreduce", sendbuf, recvbuf, op=op):
            _coll_mod.reduce_family(self._coll, "allreduce", sendbuf, recvbuf, op)

    def Reduce_scatter_block(self, sendbuf, recvbuf, op=None) -> None:
        """Reduce-Scatter Block (regular, non-vector version)."""
        op = self._op(op)
        if not self._by_mpi("Reduce_scatter_block", sendbuf, recvbuf, op=op):
            _coll_mod.reduce_family(self._coll, "rsb", sendbuf, recvbuf, op)

    def Reduce_scatter(self, sendbuf, recvbuf, recvcounts=None, op=None) -> None:
        """Reduce-Scatter (vector version)."""
        op = self._op(op)
        if not self._by_mpi("Reduce_scatter", sendbuf, recvbuf, op=op, recvcounts=recvcounts):
            _coll_mod.reduce_family(self._coll, "rs", sendbuf, recvbuf, op,
                                    recvcounts=recvcounts)

    def Scan(self, sendbuf, recvbuf, op=None) -> None:
        """Inclusive Scan."""
        op = self._op(op)
        if not self._by_mpi("Scan", sendbuf, recvbuf, op=op):
            _coll_mod.reduce_family(self._coll, "scan", sendbuf, recvbuf, op)

    def Exscan(self, sendbuf, recvbuf, op=None) -> None:
        """Exclusive Scan."""
        op = self._op(op)
        if not self._by_mpi("Exscan", sendbuf, recvbuf, op=op):
            _coll_mod.reduce_family(self._coll, "exscan", sendbuf, recvbuf, op)

    def Abort(self, errorcode: int = 0) -> None:
        """Terminate the job: every rank (the launcher ends the others)."""
        if self._comm is not None:
            self._comm.Abort(errorcode)
        import os
        import sys
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(errorcode or 1)

    def Is_inter(self) -> bool:
        return False

    def Is_intra(self) -> bool:
        return True

    @property
    def is_inter(self) -> bool:
        return False

    @property
    def is_intra(self) -> bool:
        return True

    # -- basic queries -------------------------------------------------------------------
    def Get_rank(self) -> int:
        """Return the rank of this process in the communicator."""
        return self._engine.rank

    def Get_size(self) -> int:
        """Return the number of processes in the communicator."""
        return self._engine.size

    def transport(self, rank: int) -> str:
        """How large payloads travel between this process and *rank* (cmampi only).

        ``"cma"``: pulled single-copy in both directions; ``"copy"``: through the
        channel, because cross-memory access is refused or switched off (the
        start-up warning says why); ``"network"``: *rank* is on another node, so
        through the MPI library; ``"self"``: this process.
        """
        e = self._engine
        rank = self._dest(rank)
        if rank == e.names.PROC_NULL:
            raise self._err(e.names.ERR_RANK)
        if rank == e.rank:
            return "self"
        if e.ch.nodes[rank] != e.ch.nodes[e.rank]:
            return "network"
        return "cma" if e.cma[rank] and e.can_read[rank] else "copy"

    @property
    def rank(self) -> int:
        """Rank of this process."""
        return self._engine.rank

    @property
    def size(self) -> int:
        """Number of processes."""
        return self._engine.size

    def Free(self) -> None:
        """Free the communicator (and cmampi's private duplicates of it)."""
        engine = self._engine
        engine.free()
        if self._comm is not None:
            self._comm.Free()
        self._engine = _Freed(engine.names)

    # -- argument checks -----------------------------------------------------------------
    def _err(self, errclass: int) -> BaseException:
        return self._engine.names.Exception(errclass)

    def _dest(self, dest) -> int:
        if type(dest) is int and 0 <= dest < self._engine.size:
            return dest
        if not _is_int(dest):
            raise TypeError("an integer is required")
        dest = int(dest)
        names = self._engine.names
        if dest != names.PROC_NULL and not 0 <= dest < self._engine.size:
            raise self._err(names.ERR_RANK)
        return dest

    def _source(self, source) -> int:
        if type(source) is int and 0 <= source < self._engine.size:
            return source
        if not _is_int(source):
            raise TypeError("an integer is required")
        source = int(source)
        names = self._engine.names
        if source not in (names.PROC_NULL, names.ANY_SOURCE) and \
                not 0 <= source < self._engine.size:
            raise self._err(names.ERR_RANK)
        return source

    def _tag(self, tag, receiving: bool) -> int:
        if type(tag) is int and 0 <= tag <= self._engine.tag_ub:
            return tag
        if not _is_int(tag):
            raise TypeError("an integer is required")
        tag = int(tag)
        names = self._engine.names
        if receiving and tag == names.ANY_TAG:
            return tag
        if not 0 <= tag <= self._engine.tag_ub:
            raise self._err(names.ERR_TAG)
        return tag

    def _null_status(self, status) -> None:
        if status is not None:
            names = self._engine.names
            _p2p.fill_status(status, names.PROC_NULL, names.ANY_TAG, 0, None, names)

    def _null_request(self, finish=None) -> Request:
        op = _p2p.Op(self._engine)
        names = self._engine.names
        op.source, op.tag = names.PROC_NULL, names.ANY_TAG
        op.finish()
        if finish is not None:
            op.decode = finish
        return Request(op)

    # -- blocking point-to-point ---------------------------------------------------------
    def Send(self, buf, dest: int, tag: int = 0) -> None:
        """Blocking send."""
        e = self._engine
        if not (type(dest) is int and 0 <= dest < e.size and type(tag) is int
                and 0 <= tag <= e.tag_ub):
            dest, tag = self._dest(dest), self._tag(tag, False)
            if dest == e.names.PROC_NULL:
                return
        e.send(buf, dest, tag)

    def Ssend(self, buf, dest: int, tag: int = 0) -> None:
        """Blocking send in synchronous mode."""
        self.Issend(buf, dest, tag).Wait()

    def Bsend(self, buf, dest: int, tag: int = 0) -> None:
        """Blocking send in buffered mode: returns once *buf* may be reused."""
        self.Ibsend(buf, dest, tag).Wait()

    def Rsend(self, buf, dest: int, tag: int = 0) -> None:
        """Blocking send in ready mode."""
        self.Send(buf, dest, tag)

    def Recv(self, buf, source: int = -2, tag: int = -1, status=None) -> None:
        """Blocking receive."""
        e = self._engine
        if status is not None and not isinstance(status, e.names.Status):
            # Refused before the message is taken, as mpi4py does.
            raise TypeError("Argument 'status' has incorrect type (expected Status, "
                            f"got {type(status).__name__})")
        if not (type(source) is int and 0 <= source < e.size and type(tag) is int
                and 0 <= tag <= e.tag_ub):
            source, tag = self._source(source), self._tag(tag, True)
            if source == e.names.PROC_NULL:
                self._null_status(status)
                return
        e.recv(buf, source, tag, status)

    def Sendrecv(self, sendbuf, dest: int, sendtag: int = 0, recvbuf=None,
                 source: int = -2, recvtag: int = -1, status=None) -> None:
        """Send and receive a message."""
        self.Isendrecv(sendbuf, dest, sendtag, recvbuf, source, recvtag).Wait(status)

    def Sendrecv_replace(self, buf, dest: int, sendtag: int = 0, source: int = -2,
                         recvtag: int = -1, status=None) -> None:
        """Send and receive a message, using a single buffer."""
        self.Isendrecv_replace(buf, dest, sendtag, source, recvtag).Wait(status)

    # -- nonblocking point-to-point ------------------------------------------------------
    def _isend(self, buf, dest, tag, sync: bool, copy: bool = False) -> Request:
        e = self._engine
        if not (type(dest) is int and 0 <= dest < e.size and type(tag) is int
                and 0 <= tag <= e.tag_ub):
            dest, tag = self._dest(dest), self._tag(tag, False)
        if dest == e.names.PROC_NULL:     # as in mpi4py, the buffer is not looked at
            return self._null_request()
        parsed = send_buffer(buf)
        if copy:  # buffered mode: the message leaves from a private copy
            parsed = send_buffer(bytearray(parsed.tobytes()))
        return Request(self._engine.isend(parsed, dest, tag, sync))

    def Isend(self, buf, dest: int, tag: int = 0) -> Request:
        """Nonblocking send."""
        return self._isend(buf, dest, tag, False)

    def Issend(self, buf, dest: int, tag: int = 0) -> Request:
        """Nonblocking send in synchronous mode."""
        return self._isend(buf, dest, tag, True)

    def Ibsend(self, buf, dest: int, tag: int = 0) -> Request:
        """Nonblocking send in buffered mode."""
        return self._isend(buf, dest, tag, False, copy=True)

    def Irsend(self, buf, dest: int, tag: int = 0) -> Request:
        """Nonblocking send in ready mode."""
        return self._isend(buf, dest, tag, False)

    def Irecv(self, buf, source: int = -2, tag: int = -1) -> Request:
        """Nonblocking receive."""
        e = self._engine
        if not (type(source) is int and 0 <= source < e.size and type(tag) is int
                and 0 <= tag <= e.tag_ub):
            source, tag = self._source(source), self._tag(tag, True)
        if source == e.names.PROC_NULL:   # as in mpi4py, the buffer is not looked at
            return self._null_request()
        return Request(e.irecv(recv_buffer(buf), source, tag))

    def Isendrecv(self, sendbuf, dest: int, sendtag: int = 0, recvbuf=None,
                  source: int = -2, recvtag: int = -1) -> Request:
        """Nonblocking send and receive."""
        if recvbuf is None:
            recvbuf = bytearray(0)
        # Check the send's arguments before the receive is posted: a receive left
        # behind by a failed call would take a later message.
        if self._dest(dest) != self._engine.names.PROC_NULL:
            send_buffer(sendbuf)
        self._tag(sendtag, False)
        rreq = self.Irecv(recvbuf, source, recvtag)
        sreq = self.Isend(sendbuf, dest, sendtag)
        return Request(rreq._op, sreq._ops())

    def Isendrecv_replace(self, buf, dest: int, sendtag: int = 0, source: int = -2,
                          recvtag: int = -1) -> Request:
        """Nonblocking send and receive, using a single buffer."""
        self._dest(dest), self._tag(sendtag, False)   # before the receive is posted
        copy = bytearray(send_buffer(buf).tobytes())
        rreq = self.Irecv(buf, source, recvtag)
        sreq = self.Isend(copy, dest, sendtag)
        return Request(rreq._op, sreq._ops())

    # -- persistent requests -------------------------------------------------------------
    def Send_init(self, buf, dest: int, tag: int = 0) -> Prequest:
        """Create a persistent request for a standard send."""
        self._dest(dest), self._tag(tag, False), send_buffer(buf)
        return Prequest(lambda: self.Isend(buf, dest, tag))

    def Ssend_init(self, buf, dest: int, tag: int = 0) -> Prequest:
        """Create a persistent request for a synchronous send."""
        self._dest(dest), self._tag(tag, False), send_buffer(buf)
        return Prequest(lambda: self.Issend(buf, dest, tag))

    def Bsend_init(self, buf, dest: int, tag: int = 0) -> Prequest:
        """Create a persistent request for a buffered send."""
        self._dest(dest), self._tag(tag, False), send_buffer(buf)
        return Prequest(lambda: self.Ibsend(buf, dest, tag))

    def Rsend_init(self, buf, dest: int, tag: int = 0) -> Prequest:
        """Create a persistent request for a ready send."""
        self._dest(dest), self._tag(tag, False), send_buffer(buf)
        return Prequest(lambda: self.Irsend(buf, dest, tag))

    def Recv_init(self, buf, source: int = -2, tag: int = -1) -> Prequest:
        """Create a persistent request for a receive."""
        self._source(source), self._tag(tag, True), recv_buffer(buf)
        return Prequest(lambda: self.Irecv(buf, source, tag))

    def Psend_init(self, buf, partitions: int, dest: int, tag: int = 0,
                   info=None) -> PartitionedRequest:
        """Create a partitioned send (the message leaves whole once all are ready)."""
        self._dest(dest), self._tag(tag, False), send_buffer(buf)
        return PartitionedRequest(lambda: self.Isend(buf, dest, tag), partitions, True)

    def Precv_init(self, buf, partitions: int, source: int = -2, tag: int = -1,
                   info=None) -> PartitionedRequest:
        """Create a partitioned receive."""
        self._source(source), self._tag(tag, True), recv_buffer(buf)
        return PartitionedRequest(lambda: self.Irecv(buf, source, tag), partitions, False)

    # -- probing -------------------------------------------------------------------------
    def _probe_status(self, hit, status) -> None:
        if status is not None:
            src, tag, n = hit
            _p2p.fill_status(status, src, tag, n, None, self._engine.names)

    def Probe(self, source: int = -2, tag: int = -1, status=None) -> bool:
        """Blocking test for a message."""
        source, tag = self._source(source), self._tag(tag, True)
        if source == self._engine.names.PROC_NULL:
            self._null_status(status)
            return True
        self._probe_status(self._engine.probe(source, tag), status)
        return True

    def Iprobe(self, source: int = -2, tag: int = -1, status=None) -> bool:
        """Nonblocking test for a message."""
        source, tag = self._source(source), self._tag(tag, True)
        if source == self._engine.names.PROC_NULL:
            self._null_status(status)
            return True
        hit = self._engine.iprobe(source, tag)
        if hit is None:
            return False
        self._probe_status(hit, status)
        return True

    def _mprobe(self, source, tag, status, block: bool) -> Optional[Message]:
        source, tag = self._source(source), self._tag(tag, True)
        names = self._engine.names
        if source == names.PROC_NULL:
            self._null_status(status)
            return Message(self._engine, (names.PROC_NULL, names.ANY_TAG, b""))
        hit = self._engine.mprobe(source, tag, block)
        if hit is None:
            return None
        src, tg, data = hit
        self._probe_status((src, tg, _wire.payload_size(data, self._engine.limit)), status)
        return Message(self._engine, hit)

    def Mprobe(self, source: int = -2, tag: int = -1, status=None) -> Message:
        """Blocking test for a matched message."""
        return self._mprobe(source, tag, status, True)

    def Improbe(self, source: int = -2, tag: int = -1, status=None) -> Optional[Message]:
        """Nonblocking test for a matched message."""
        return self._mprobe(source, tag, status, False)

    # -- Python objects (pickled in band) -------------------------------------------------
    def _dumps(self, obj) -> bytes:
        return _pickle.dumps(obj, _pickle.HIGHEST_PROTOCOL)

    def _send_obj(self, obj, dest, tag, sync: bool, wait: bool) -> Optional[Request]:
        e = self._engine
        dest, tag = self._dest(dest), self._tag(tag, False)
        if dest == e.names.PROC_NULL:
            self._dumps(obj)    # an unpicklable object fails here too
            return None if wait else self._null_request()
        if wait and not sync:
            _objects.send(e, obj, dest, tag)
            return None
        req = Request(_objects.isend(e, obj, dest, tag, sync, wait))
        if wait:
            req.Wait()
            return None
        return req

    def send(self, obj: Any, dest: int, tag: int = 0) -> None:
        """Send a message."""
        e = self._engine
        if type(dest) is int and type(tag) is int and 0 <= dest < e.size \
                and 0 <= tag <= e.tag_ub:       # the common case, checked at once
            _objects.send(e, obj, dest, tag)
            return
        self._send_obj(obj, dest, tag, False, True)

    def ssend(self, obj: Any, dest: int, tag: int = 0) -> None:
        """Send a message in synchronous mode."""
        self._send_obj(obj, dest, tag, True, True)

    def bsend(self, obj: Any, dest: int, tag: int = 0) -> None:
        """Send a message in buffered mode."""
        self._send_obj(obj, dest, tag, False, True)

    def isend(self, obj: Any, dest: int, tag: int = 0) -> Request:
        """Nonblocking send."""
        return self._send_obj(obj, dest, tag, False, False)

    def issend(self, obj: Any, dest: int, tag: int = 0) -> Request:
        """Nonblocking send in synchronous mode."""
        return self._send_obj(obj, dest, tag, True, False)

    def ibsend(self, obj: Any, dest: int, tag: int = 0) -> Request:
        """Nonblocking send in buffered mode."""
        return self._send_obj(obj, dest, tag, False, False)

    def _irecv_obj(self, source, tag) -> Request:
        source, tag = self._source(source), self._tag(tag, True)
        if source == self._engine.names.PROC_NULL:
            return self._null_request(lambda op: None)
        op = self._engine.irecv(None, source, tag)
        op.decode = _objects.loads
        return Request(op)

    def recv(self, buf=None, source: int = -2, tag: int = -1, status=None) -> Any:
        """Receive a message."""
        e = self._engine
        if type(source) is int and type(tag) is int \
                and (0 <= source < e.size or source == e.any_source) \
                and (0 <= tag <= e.tag_ub or tag == e.any_tag):   # the common case
            return _objects.recv(e, source, tag, status)
        source, tag = self._source(source), self._tag(tag, True)
        if source == self._engine.names.PROC_NULL:
            return self._null_request(lambda op: None).wait(status)
        return _objects.recv(self._engine, source, tag, status)

    def irecv(self, buf=None, source: int = -2, tag: int = -1) -> Request:
        """Nonblocking receive."""
        return self._irecv_obj(source, tag)

    def sendrecv(self, sendobj: Any, dest: int, sendtag: int = 0, recvbuf=None,
                 source: int = -2, recvtag: int = -1, status=None) -> Any:
        """Send and receive a message."""
        sreq = self.isend(sendobj, dest, sendtag)   # an unpicklable object fails first
        rreq = self._irecv_obj(source, recvtag)
        result = rreq.wait(status)
        sreq.Wait()
        return result

    # Lowercase collectives: cmampi's own on every channel, large buffers out of band.
    def _objcoll(self, kind: str, obj, root: int = 0, op=None):
        if self._comm is not None and self._engine.multinode:   # the MPI library's
            fn = getattr(self._comm, kind)
            if _objcoll.KINDS[kind]:
                return fn(obj, self._op(op), root) if kind == "reduce" else fn(obj, root)
            return fn(obj) if kind in ("allgather", "alltoall") else fn(obj, self._op(op))
        return _objcoll.collective(self._coll, kind, obj, root, self._op(op))

    def bcast(self, obj: Any, root: int = 0) -> Any:
        """Broadcast."""
        return self._objcoll("bcast", obj, root)

    def gather(self, sendobj: Any, root: int = 0):
        """Gather."""
        return self._objcoll("gather", sendobj, root)

    def scatter(self, sendobj, root: int = 0) -> Any:
        """Scatter."""
        return self._objcoll("scatter", sendobj, root)

    def allgather(self, sendobj: Any):
        """Gather to All."""
        return self._objcoll("allgather", sendobj)

    def alltoall(self, sendobj):
        """All to All Scatter/Gather."""
        return self._objcoll("alltoall", sendobj)

    def reduce(self, sendobj: Any, op=None, root: int = 0):
        """Reduce to Root."""
        return self._objcoll("reduce", sendobj, root, op)

    def allreduce(self, sendobj: Any, op=None) -> Any:
        """Reduce to All."""
        return self._objcoll("allreduce", sendobj, op=op)

    def scan(self, sendobj: Any, op=None) -> Any:
        """Inclusive Scan."""
        return self._objcoll("scan", sendobj, op=op)

    def exscan(self, sendobj: Any, op=None) -> Any:
        """Exclusive Scan."""
        return self._objcoll("exscan", sendobj, op=op)

    def probe(self, source: int = -2, tag: int = -1, status=None) -> bool:
        """Blocking test for a message."""
        return self.Probe(source, tag, status)

    def iprobe(self, source: int = -2, tag: int = -1, status=None) -> bool:
        """Nonblocking test for a message."""
        return self.Iprobe(source, tag, status)

    def mprobe(self, source: int = -2, tag: int = -1, status=None) -> Message:
        """Blocking test for a matched message."""
        return self.Mprobe(source, tag, status)

    def improbe(self, source: int = -2, tag: int = -1, status=None) -> Optional[Message]:
        """Nonblocking test for a matched message."""
        return self.Improbe(source, tag, status)
