"""The communicator API over cmampi's engine: point-to-point, objects, collectives.

`Communicator` is a mixin. On the MPI channel it sits in front of mpi4py's own
classes (`cmampi.mpicomm`), so a communicator *is* an mpi4py communicator and
every method not defined here is mpi4py's; on the socket channel it is
completed by `cmampi.socketcomm`. A communicator whose handle cmampi has not
attached an engine to (``_engine`` is None) leaves every call to mpi4py.
Defaults are the named constants of the MPI library in use.
"""

from __future__ import annotations

import os as _os
import pickle as _pickle
import time as _time
import warnings as _warnings
import weakref as _weakref
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as _np

from . import _derived, _wire
from . import _fastpath as _fp
from . import coll as _coll_mod
from . import native as _native
from . import objcoll as _objcoll
from . import objects as _objects
from . import p2p as _p2p
from ._backend import names as _names_in_use
from ._buffers import check_recv_buffer, has_derived_datatype, recv_buffer, send_buffer
from ._config import config as _config
from ._serial import THREADS as _THREADS
from ._tuning import OBJECT_RAW_MAX
from ._userpickle import DUMPS as _DUMPS
from ._watch import site as _site
from .request import NO_PROC_HIT as _NO_PROC_HIT
from .request import (
    Message,
    PartitionedRequest,
    Prequest,
    Request,
    _fast_waits,
    new_request,
)

__all__ = ["Communicator"]

_sched_yield = getattr(_os, "sched_yield", lambda: None)

_NAMES = _names_in_use()
ANY_SOURCE = _NAMES.ANY_SOURCE
ANY_TAG = _NAMES.ANY_TAG
SUM = _NAMES.SUM
INFO_NULL = getattr(_NAMES, "INFO_NULL", None)


_DECLINED = _objects.DECLINED
_PICKLED = _objects.PICKLED
_CONTROL = _wire.Control
_DETACHED = _p2p._DETACHED
_loads = _pickle.loads

_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1   # a C int: what mpi4py converts ranks and tags to


def as_int(x) -> int:
    """*x* as the C int mpi4py would pass to MPI (floats truncate, as they do there;
    a value a C int cannot hold raises ``OverflowError``, as there)."""
    if type(x) is int:
        value = x
    else:
        try:
            value = x.__index__()
        except AttributeError:
            if not (isinstance(x, (float, bool)) or (hasattr(type(x), "__int__") and not
                                                     isinstance(x, (str, bytes)))):
                raise TypeError("an integer is required") from None
            value = int(x)
    if not _INT_MIN <= value <= _INT_MAX:
        raise OverflowError("value too large to convert to int")
    return value


def _buffered(op: _p2p.Op) -> _p2p.Op:
    """A buffered-mode send's op: complete now, as MPI's ``Bsend`` is once it has
    copied the message; *op* (which sends from cmampi's own copy) goes on by itself."""
    _p2p.detach([op])
    done = _p2p.Op(op.engine)
    done.finish()
    return done


class _Freed:
    """The engine of a communicator freed on the socket channel: any use raises
    ERR_COMM, as mpi4py's ``COMM_NULL`` does."""

    __slots__ = ("names",)

    def __init__(self, names) -> None:
        self.names = names

    def __getattr__(self, name: str):
        raise self.names.Exception(self.names.ERR_COMM)


#: Bytes per rank up to which a collective of arrays goes straight to the MPI
#: library (`Communicator._small`).
_SMALL = _native.NATIVE_MAX
#: What mpi4py raises for an array it cannot pass to MPI as it is (strided,
#: structured), while converting the arguments, before any data moves.
_REFUSED = (BufferError, KeyError)


if TYPE_CHECKING:
    class _Fallback:
        """Where a communicator without an engine sends its calls (``super()``): the
        concrete class's next base, mpi4py's communicator (`cmampi.mpicomm`). For the
        type checker only, with cmampi's signatures: its request and message classes
        stand in for mpi4py's."""

        def Send(self, buf, dest: int, tag: int = 0) -> None: ...
        def Recv(self, buf, source: int = ANY_SOURCE, tag: int = ANY_TAG,
                 status=None) -> None: ...
        def Sendrecv(self, sendbuf, dest: int, sendtag: int = 0, recvbuf=None,
                     source: int = ANY_SOURCE, recvtag: int = ANY_TAG,
                     status=None) -> None: ...
        def Isend(self, buf, dest: int, tag: int = 0) -> Request: ...
        def Issend(self, buf, dest: int, tag: int = 0) -> Request: ...
        def Ibsend(self, buf, dest: int, tag: int = 0) -> Request: ...
        def Irsend(self, buf, dest: int, tag: int = 0) -> Request: ...
        def Irecv(self, buf, source: int = ANY_SOURCE, tag: int = ANY_TAG) -> Request: ...
        def Isendrecv(self, sendbuf, dest: int, sendtag: int = 0, recvbuf=None,
                      source: int = ANY_SOURCE, recvtag: int = ANY_TAG) -> Request: ...
        def Isendrecv_replace(self, buf, dest: int, sendtag: int = 0,
                              source: int = ANY_SOURCE, recvtag: int = ANY_TAG) -> Request: ...
        def Send_init(self, buf, dest: int, tag: int = 0) -> Prequest: ...
        def Ssend_init(self, buf, dest: int, tag: int = 0) -> Prequest: ...
        def Bsend_init(self, buf, dest: int, tag: int = 0) -> Prequest: ...
        def Rsend_init(self, buf, dest: int, tag: int = 0) -> Prequest: ...
        def Recv_init(self, buf, source: int = ANY_SOURCE, tag: int = ANY_TAG) -> Prequest: ...
        def Psend_init(self, buf, partitions: int, dest: int, tag: int = 0,
                       info=INFO_NULL) -> PartitionedRequest: ...
        def Precv_init(self, buf, partitions: int, source: int = ANY_SOURCE,
                       tag: int = ANY_TAG, info=INFO_NULL) -> PartitionedRequest: ...
        def Probe(self, source: int = ANY_SOURCE, tag: int = ANY_TAG,
                  status=None) -> Literal[True]: ...
        def Iprobe(self, source: int = ANY_SOURCE, tag: int = ANY_TAG, status=None) -> bool: ...
        def Mprobe(self, source: int = ANY_SOURCE, tag: int = ANY_TAG,
                   status=None) -> Message: ...
        def Improbe(self, source: int = ANY_SOURCE, tag: int = ANY_TAG,
                    status=None) -> Message | None: ...
        def send(self, obj: Any, dest: int, tag: int = 0) -> None: ...
        def ssend(self, obj: Any, dest: int, tag: int = 0) -> None: ...
        def bsend(self, obj: Any, dest: int, tag: int = 0) -> None: ...
        def isend(self, obj: Any, dest: int, tag: int = 0) -> Request: ...
        def issend(self, obj: Any, dest: int, tag: int = 0) -> Request: ...
        def ibsend(self, obj: Any, dest: int, tag: int = 0) -> Request: ...
        def recv(self, buf=None, source: int = ANY_SOURCE, tag: int = ANY_TAG,
                 status=None) -> Any: ...
        def irecv(self, buf=None, source: int = ANY_SOURCE, tag: int = ANY_TAG) -> Request: ...
        def sendrecv(self, sendobj: Any, dest: int, sendtag: int = 0, recvbuf=None,
                     source: int = ANY_SOURCE, recvtag: int = ANY_TAG,
                     status=None) -> Any: ...
else:
    _Fallback = object


def _check_status(status, names) -> None:
    """Refuse a status that is not one, before any message is taken, as mpi4py does."""
    if status is not None and not isinstance(status, names.Status):
        raise TypeError("Argument 'status' has incorrect type (expected Status, "
                        f"got {type(status).__name__})")


class Communicator(_Fallback):
    """Point-to-point, object and collective methods over cmampi's engine.

    ``_engine`` (set by the concrete class) is the communicator's
    `p2p.Engine`, or None where cmampi leaves the communicator to mpi4py.
    """

    _engine: Any = None

    # -- collectives ------------------------------------------------------------------------
    def _plain(self) -> Any:
        """mpi4py's own view of this communicator (same handle, none of our methods);
        None on the socket channel."""
        return None

    @property
    def _coll(self) -> _coll_mod.Collectives:
        """The collectives, over a private duplicate made on first use (collective)."""
        engine = self._engine
        coll = engine.coll
        if coll is None:
            coll = engine.coll = _coll_mod.Collectives(
                _p2p.Engine(engine.ch.dup(), engine.names, _config))
        return coll

    def _ran_by_library(self, kind: str, send, recv=None, root: int = 0, op=None,
                recvcounts=None) -> bool:
        """Whether the MPI library has run collective *kind*: always across nodes and
        where cmampi has no engine; on one node when every rank agrees the call is
        small and well formed."""
        engine = self._engine
        if engine is None:
            _native.call(self._plain(), kind, send, recv, root, op, recvcounts)
            return True
        if not engine.checked and kind in _native.NATIVE_MAX \
                and not engine.multinode:
            # Small ones go straight to the MPI library, as with mpi4py; large
            # ones (cmampi's own) agree first, every rank alike.
            plain = engine.small = self._plain()
            if plain is not None and engine.fast is not None:
                engine.small_coll = engine.fast.coll
            if plain is not None:
                in_place = engine.names.IN_PLACE
                nbytes = _native.measure(kind, send, recv, engine.size, in_place)
                if nbytes is not None and nbytes <= _native.NATIVE_MAX[kind] \
                        and not _native.cmampi_reduces(kind, send, recv, in_place):
                    _native.direct(plain, kind, send, recv, root, op, engine.rank)
                    return True
        if type(send) is not _np.ndarray or type(recv) is not _np.ndarray:
            send, recv = _native.arrays(kind, send, recv, root, engine.size, engine.rank,
                                        engine.names.IN_PLACE)
        agreement = engine.native
        if agreement is not None:
            fast = agreement.fast.get(kind)     # a call made like the last of its kind
            if fast is not None:
                done = fast(send, recv, root, op)
                if done is not None:
                    return done
        else:
            plain = self._plain()
            if plain is None:
                return False
            if engine.multinode:    # the MPI library knows the network; cmampi, one node
                _native.call(plain, kind, send, recv, root, op, recvcounts)
                return True
            agreement = engine.native = _native.Agreement(plain, engine.names)
        return kind in _native.NATIVE_MAX and _native.run(agreement, kind, send, recv, root, op)

    def _small(self, send, recv, limit: int) -> Any:
        """The MPI library's communicator if it may run this collective as it
        comes: unchecked across ranks (`Engine.small`), *send* an array of at
        most *limit* bytes, *recv* None or an array. The caller falls back to
        `_ran_by_library` where mpi4py refuses the arrays (`_REFUSED`: not contiguous,
        not numbers), before anything moves. Else None: `_ran_by_library` decides."""
        engine = self._engine
        small = engine.small if engine is not None else None
        if small is None or type(send) is not _np.ndarray or send.nbytes > limit \
                or (recv is not None and type(recv) is not _np.ndarray):
            return None
        return small

    def Bcast(self, buf, root: int = 0) -> None:
        """Broadcast data from one process to all other processes."""
        coll = self._engine.small_coll if self._engine is not None else None
        if coll is not None and \
                coll(self, _fp.BCAST, buf, None, root, None, _SMALL["Bcast"]):
            return None     # small numbers: the compiled path runs it
        small = self._small(buf, None, _SMALL["Bcast"])
        if small is not None:
            try:
                return small.Bcast(buf, root)
            except _REFUSED:    # buffers mpi4py cannot take: cmampi's path judges
                pass
        root = root if type(root) is int else as_int(root)
        if not self._ran_by_library("Bcast", buf, root=root):
            _coll_mod.bcast(self._coll, buf, root)
        return None

    def Gather(self, sendbuf, recvbuf, root: int = 0) -> None:
        """Gather data to one process from all other processes."""
        coll = self._engine.small_coll if self._engine is not None else None
        if coll is not None and \
                coll(self, _fp.GATHER, sendbuf, recvbuf, root, None, _SMALL["Gather"]):
            return None     # small numbers: the compiled path runs it
        small = self._small(sendbuf, recvbuf, _SMALL["Gather"])
        if small is not None:
            try:
                return small.Gather(sendbuf, recvbuf, root)
            except _REFUSED:    # buffers mpi4py cannot take: cmampi's path judges
                pass
        root = root if type(root) is int else as_int(root)
        if not self._ran_by_library("Gather", sendbuf, recvbuf, root):
            _coll_mod.gather(self._coll, sendbuf, recvbuf, root)
        return None

    def Gatherv(self, sendbuf, recvbuf, root: int = 0) -> None:
        """Gather Vector."""
        root = root if type(root) is int else as_int(root)
        if not self._ran_by_library("Gatherv", sendbuf, recvbuf, root):
            _coll_mod.gather(self._coll, sendbuf, recvbuf, root, vector_spec=True)

    def Scatter(self, sendbuf, recvbuf, root: int = 0) -> None:
        """Scatter data from one process to all other processes."""
        coll = self._engine.small_coll if self._engine is not None else None
        if coll is not None and \
                coll(self, _fp.SCATTER, sendbuf, recvbuf, root, None, _SMALL["Scatter"]):
            return None     # small numbers: the compiled path runs it
        small = self._small(recvbuf, sendbuf, _SMALL["Scatter"])
        if small is not None:
            try:
                return small.Scatter(sendbuf, recvbuf, root)
            except _REFUSED:    # buffers mpi4py cannot take: cmampi's path judges
                pass
        root = root if type(root) is int else as_int(root)
        if not self._ran_by_library("Scatter", sendbuf, recvbuf, root):
            _coll_mod.scatter(self._coll, sendbuf, recvbuf, root)
        return None

    def Scatterv(self, sendbuf, recvbuf, root: int = 0) -> None:
        """Scatter Vector."""
        root = root if type(root) is int else as_int(root)
        if not self._ran_by_library("Scatterv", sendbuf, recvbuf, root):
            _coll_mod.scatter(self._coll, sendbuf, recvbuf, root, vector_spec=True)

    def Allgather(self, sendbuf, recvbuf) -> None:
        """Gather to All."""
        coll = self._engine.small_coll if self._engine is not None else None
        if coll is not None and \
                coll(self, _fp.ALLGATHER, sendbuf, recvbuf, 0, None, _SMALL["Allgather"]):
            return None     # small numbers: the compiled path runs it
        small = self._small(sendbuf, recvbuf, _SMALL["Allgather"])
        if small is not None:
            try:
                return small.Allgather(sendbuf, recvbuf)
            except _REFUSED:    # buffers mpi4py cannot take: cmampi's path judges
                pass
        if not self._ran_by_library("Allgather", sendbuf, recvbuf):
            _coll_mod.allgather(self._coll, sendbuf, recvbuf)
        return None

    def Allgatherv(self, sendbuf, recvbuf) -> None:
        """Gather to All Vector."""
        if not self._ran_by_library("Allgatherv", sendbuf, recvbuf):
            _coll_mod.allgather(self._coll, sendbuf, recvbuf, vector_spec=True)

    def Alltoall(self, sendbuf, recvbuf) -> None:
        """All to All Scatter/Gather."""
        coll = self._engine.small_coll if self._engine is not None else None
        if coll is not None and \
                coll(self, _fp.ALLTOALL, sendbuf, recvbuf, 0, None, _SMALL["Alltoall"]):
            return None     # small numbers: the compiled path runs it
        small = self._small(sendbuf, recvbuf, _SMALL["Alltoall"])
        if small is not None:
            try:
                return small.Alltoall(sendbuf, recvbuf)
            except _REFUSED:    # buffers mpi4py cannot take: cmampi's path judges
                pass
        if not self._ran_by_library("Alltoall", sendbuf, recvbuf):
            _coll_mod.alltoall(self._coll, sendbuf, recvbuf)
        return None

    def Alltoallv(self, sendbuf, recvbuf) -> None:
        """All to All Scatter/Gather Vector."""
        if not self._ran_by_library("Alltoallv", sendbuf, recvbuf):
            _coll_mod.alltoall(self._coll, sendbuf, recvbuf, vector_spec=True)

    def Reduce(self, sendbuf, recvbuf, op=SUM, root: int = 0) -> None:
        """Reduce to Root."""
        coll = self._engine.small_coll if self._engine is not None else None
        if coll is not None and \
                coll(self, _fp.REDUCE, sendbuf, recvbuf, root, op, _SMALL["Reduce"]):
            return None     # small numbers: the compiled path runs it
        small = self._small(sendbuf, recvbuf, _SMALL["Reduce"])
        if small is not None:
            try:
                return small.Reduce(sendbuf, recvbuf, op, root)
            except _REFUSED:    # buffers mpi4py cannot take: cmampi's path judges
                pass
        root = root if type(root) is int else as_int(root)
        if not self._ran_by_library("Reduce", sendbuf, recvbuf, root, op):
            _coll_mod.reduce_family(self._coll, "reduce", sendbuf, recvbuf, op, root)
        return None

    def Allreduce(self, sendbuf, recvbuf, op=SUM) -> None:
        """Reduce to All."""
        coll = self._engine.small_coll if self._engine is not None else None
        if coll is not None and \
                coll(self, _fp.ALLREDUCE, sendbuf, recvbuf, 0, op, _SMALL["Allreduce"]):
            return None     # small numbers: the compiled path runs it
        small = self._small(sendbuf, recvbuf, _SMALL["Allreduce"])
        if small is not None:
            try:
                return small.Allreduce(sendbuf, recvbuf, op)
            except _REFUSED:    # buffers mpi4py cannot take: cmampi's path judges
                pass
        if not self._ran_by_library("Allreduce", sendbuf, recvbuf, op=op):
            _coll_mod.reduce_family(self._coll, "allreduce", sendbuf, recvbuf, op)
        return None

    def Reduce_scatter_block(self, sendbuf, recvbuf, op=SUM) -> None:
        """Reduce-Scatter Block (regular, non-vector version)."""
        small = self._small(sendbuf, recvbuf, _SMALL["Reduce_scatter_block"])
        if small is not None:
            try:
                return small.Reduce_scatter_block(sendbuf, recvbuf, op)
            except _REFUSED:    # buffers mpi4py cannot take: cmampi's path judges
                pass
        if not self._ran_by_library("Reduce_scatter_block", sendbuf, recvbuf, op=op):
            _coll_mod.reduce_family(self._coll, "reduce_scatter_block", sendbuf, recvbuf, op)
        return None

    def Reduce_scatter(self, sendbuf, recvbuf, recvcounts=None, op=SUM) -> None:
        """Reduce-Scatter (vector version)."""
        if not self._ran_by_library("Reduce_scatter", sendbuf, recvbuf, op=op,
                                    recvcounts=recvcounts):
            _coll_mod.reduce_family(self._coll, "reduce_scatter", sendbuf, recvbuf, op,
                                    recvcounts=recvcounts)

    def Scan(self, sendbuf, recvbuf, op=SUM) -> None:
        """Inclusive Scan."""
        small = self._small(sendbuf, recvbuf, _SMALL["Scan"])
        if small is not None:
            try:
                return small.Scan(sendbuf, recvbuf, op)
            except _REFUSED:    # buffers mpi4py cannot take: cmampi's path judges
                pass
        if not self._ran_by_library("Scan", sendbuf, recvbuf, op=op):
            _coll_mod.reduce_family(self._coll, "scan", sendbuf, recvbuf, op)
        return None

    def Exscan(self, sendbuf, recvbuf, op=SUM) -> None:
        """Exclusive Scan."""
        small = self._small(sendbuf, recvbuf, _SMALL["Exscan"])
        if small is not None:
            try:
                return small.Exscan(sendbuf, recvbuf, op)
            except _REFUSED:    # buffers mpi4py cannot take: cmampi's path judges
                pass
        if not self._ran_by_library("Exscan", sendbuf, recvbuf, op=op):
            _coll_mod.reduce_family(self._coll, "exscan", sendbuf, recvbuf, op)
        return None

    def transport(self, rank: int) -> str:
        """How large payloads travel between this process and *rank* (cmampi only).

        ``"cma"``: pulled single-copy in both directions; ``"copy"``: through the
        channel, because cross-memory access is refused or switched off (the
        start-up warning says why); ``"network"``: *rank* is on another node, so
        through the MPI library; ``"self"``: this process; ``"mpi"``: cmampi has
        left this communicator to the MPI library.
        """
        e = self._engine
        if e is None:
            return "mpi"
        rank = self._dest(rank)
        if rank == e.names.PROC_NULL:
            raise self._err(e.names.ERR_RANK)
        if rank == e.rank:
            return "self"
        if e.ch.nodes[rank] != e.ch.nodes[e.rank]:
            return "network"
        return "cma" if e.cma[rank] and e.can_read[rank] else "copy"

    # -- argument checks -----------------------------------------------------------------
    def _err(self, errclass: int) -> BaseException:
        return self._engine.names.Exception(errclass)

    def _dest(self, dest) -> int:
        e = self._engine
        if type(dest) is int and 0 <= dest < e.size:
            return dest
        dest = as_int(dest)
        if dest != e.names.PROC_NULL and not 0 <= dest < e.size:
            raise self._err(e.names.ERR_RANK)
        return dest

    def _source(self, source) -> int:
        e = self._engine
        if type(source) is int and 0 <= source < e.size:
            return source
        source = as_int(source)
        if source not in (e.names.PROC_NULL, e.any_source) and not 0 <= source < e.size:
            raise self._err(e.names.ERR_RANK)
        return source

    def _tag(self, tag, receiving: bool) -> int:
        e = self._engine
        if type(tag) is int and 0 <= tag <= e.tag_ub:
            return tag
        tag = as_int(tag)
        if receiving and tag == e.any_tag:
            return tag
        if not 0 <= tag <= e.tag_ub:
            raise self._err(e.names.ERR_TAG)
        return tag

    def _null_status(self, status) -> None:
        if status is not None:
            names = self._engine.names
            _p2p.fill_status(status, names.PROC_NULL, names.ANY_TAG, 0, None, names)

    def _null_op(self) -> _p2p.Op:
        """A finished op with ``PROC_NULL``'s status."""
        op = _p2p.Op(self._engine)
        names = self._engine.names
        op.source, op.tag = names.PROC_NULL, names.ANY_TAG
        op.finish()
        return op

    def _null_request(self, method: str | None = None, *args, finish=None) -> Request:
        """The request of a call naming ``PROC_NULL``: the MPI library's own (*method*
        of mpi4py's, with *args*: no message moves), where there is one."""
        plain = self._plain()
        if plain is not None and method is not None:
            return Request(getattr(plain, method)(*args))
        op = self._null_op()
        if finish is not None:
            op.decode = finish
        return new_request(op)

    # -- blocking point-to-point ---------------------------------------------------------
    def Send(self, buf, dest: int, tag: int = 0) -> None:
        """Blocking send."""
        e = self._engine
        if e is None:
            return super().Send(buf, dest, tag)
        fast = e.fast
        if fast is not None and len(_THREADS) < 2 and fast.send(e.user, buf, dest, tag):
            return None     # plain, as itself: sent by the compiled path
        if not (type(dest) is int and 0 <= dest < e.size and type(tag) is int
                and 0 <= tag <= e.tag_ub):
            dest, tag = self._dest(dest), self._tag(tag, False)
            if dest == e.names.PROC_NULL:
                plain = self._plain()
                if plain is not None:   # the MPI library's own (a revoked comm fails)
                    plain.Send(buf, dest, tag)
                return None
        e.send(buf, dest, tag)
        return None

    def Ssend(self, buf, dest: int, tag: int = 0) -> None:
        """Blocking send in synchronous mode."""
        self.Issend(buf, dest, tag).Wait()

    def Bsend(self, buf, dest: int, tag: int = 0) -> None:
        """Blocking send in buffered mode: returns once *buf* may be reused."""
        self.Ibsend(buf, dest, tag).Wait()

    def Rsend(self, buf, dest: int, tag: int = 0) -> None:
        """Blocking send in ready mode."""
        self.Send(buf, dest, tag)

    def Recv(self, buf, source: int = ANY_SOURCE, tag: int = ANY_TAG, status=None) -> None:
        """Blocking receive."""
        e = self._engine
        if e is None:
            return super().Recv(buf, source, tag, status)
        _check_status(status, e.names)
        if not (type(source) is int and 0 <= source < e.size and type(tag) is int
                and 0 <= tag <= e.tag_ub):
            source, tag = self._source(source), self._tag(tag, True)
            if source == e.names.PROC_NULL:
                plain = self._plain()
                if plain is not None:
                    plain.Recv(buf, source, tag, status)
                else:
                    self._null_status(status)
                return None
        fast = e.fast
        if fast is not None and not (e.stash or e.landing) and _fast_waits():
            # the compiled path's receive and wait (anything it declines, the engine's),
            # for buffers too small for a pulled message: a pulled one lands in place
            # at once on the engine's path, which probes first
            yields = _p2p._FAST_YIELDS[0]
            req = fast.recv(e.user, buf, source, tag, e, e.cma_min, yields, status)
            if req is True:
                return None
            if req is not None:     # its wait is the compiled one where it can be
                req.Wait(status)
                return None
        e.recv(buf, source, tag, status)
        return None

    def Sendrecv(self, sendbuf, dest: int, sendtag: int = 0, recvbuf=None,
                 source: int = ANY_SOURCE, recvtag: int = ANY_TAG, status=None) -> None:
        """Send and receive a message."""
        e = self._engine
        if e is None:
            return super().Sendrecv(sendbuf, dest, sendtag, recvbuf, source, recvtag, status)
        _check_status(status, e.names)
        fast = e.fast
        if fast is not None and not (e.stash or e.landing) and _fast_waits():
            # small and plain: the compiled path's send, receive and wait
            got = fast.sendrecv(e.user, sendbuf, dest, sendtag, recvbuf, source, recvtag, e,
                                _p2p._FAST_YIELDS[0])
            if type(got) is tuple:   # for the requests' waits: the engine acts, or raises
                recv_req, send_req = got
                try:
                    if send_req is None:    # MPI refused the compiled send
                        send_req = self._isend(sendbuf, dest, sendtag, False)
                    recv_req.Wait(status)
                finally:    # both complete, as with mpi4py, whatever the receive raised
                    if send_req is not None:
                        send_req.Wait()
                return None
            if got is not None:
                if status is not None:
                    _p2p.fill_status(status, got.source, got.tag, got.count, None, e.names)
                return None
        self.Isendrecv(sendbuf, dest, sendtag, recvbuf, source, recvtag).Wait(status)
        return None

    def Sendrecv_replace(self, buf, dest: int, sendtag: int = 0, source: int = ANY_SOURCE,
                         recvtag: int = ANY_TAG, status=None) -> None:
        """Send and receive a message, using a single buffer."""
        self.Isendrecv_replace(buf, dest, sendtag, source, recvtag).Wait(status)

    # -- nonblocking point-to-point ------------------------------------------------------
    def _isend_op(self, buf, dest, tag, sync: bool, copy: bool = False) -> _p2p.Op:
        """The op of a nonblocking send (a finished one for ``PROC_NULL``)."""
        e = self._engine
        if not (type(dest) is int and 0 <= dest < e.size and type(tag) is int
                and 0 <= tag <= e.tag_ub):
            dest, tag = self._dest(dest), self._tag(tag, False)
        if dest == e.names.PROC_NULL:     # as in mpi4py, the buffer is not looked at
            return self._null_op()
        parsed = send_buffer(buf)
        if copy:  # buffered mode: the message leaves from a private copy
            parsed = send_buffer(bytearray(parsed.tobytes()))
        return e.isend(parsed, dest, tag, sync)

    def _isend(self, buf, dest, tag, sync: bool, copy: bool = False) -> Request:
        e = self._engine
        if type(dest) is int and 0 <= dest < e.size and type(tag) is int \
                and 0 <= tag <= e.tag_ub and not copy:  # the common case, at once
            return new_request(e.isend_spec(buf, dest, tag, sync))
        if type(dest) is int and 0 <= dest < e.size:    # a rank
            op = self._isend_op(buf, dest, tag, sync, copy)
            return new_request(_buffered(op) if copy else op)
        if dest == e.names.PROC_NULL and self._plain() is not None:
            method = "Issend" if sync else "Ibsend" if copy else "Isend"
            self._tag(tag, False)
            return self._null_request(method, buf, dest, tag)
        op = self._isend_op(buf, dest, tag, sync, copy)
        return new_request(_buffered(op) if copy else op)

    def _irecv_op(self, buf, source, tag) -> _p2p.Op:
        """The op of a nonblocking receive (a finished one for ``PROC_NULL``)."""
        e = self._engine
        if not (type(source) is int and 0 <= source < e.size and type(tag) is int
                and 0 <= tag <= e.tag_ub):
            source, tag = self._source(source), self._tag(tag, True)
        if source == e.names.PROC_NULL:   # as in mpi4py, the buffer is not looked at
            return self._null_op()
        return e.irecv(recv_buffer(buf), source, tag)

    def Isend(self, buf, dest: int, tag: int = 0) -> Request:
        """Nonblocking send."""
        e = self._engine
        if e is None:
            return super().Isend(buf, dest, tag)
        fast = e.fast
        if fast is not None and len(_THREADS) < 2:
            # small and plain: the compiled path (it declines anything else)
            req = fast.isend(e.user, buf, dest, tag, e)
            if req is not None:
                return req
        return self._isend(buf, dest, tag, False)

    def Issend(self, buf, dest: int, tag: int = 0) -> Request:
        """Nonblocking send in synchronous mode."""
        if self._engine is None:
            return super().Issend(buf, dest, tag)
        return self._isend(buf, dest, tag, True)

    def Ibsend(self, buf, dest: int, tag: int = 0) -> Request:
        """Nonblocking send in buffered mode."""
        if self._engine is None:
            return super().Ibsend(buf, dest, tag)
        return self._isend(buf, dest, tag, False, copy=True)

    def Irsend(self, buf, dest: int, tag: int = 0) -> Request:
        """Nonblocking send in ready mode."""
        if self._engine is None:
            return super().Irsend(buf, dest, tag)
        return self._isend(buf, dest, tag, False)

    def Irecv(self, buf, source: int = ANY_SOURCE, tag: int = ANY_TAG) -> Request:
        """Nonblocking receive."""
        e = self._engine
        if e is None:
            return super().Irecv(buf, source, tag)
        fast = e.fast
        if fast is not None and not (e.stash or e.landing) and len(_THREADS) < 2:
            # plain: the compiled path (it declines anything else)
            req = fast.irecv(e.user, buf, source, tag, e)
            if req is not None:
                return req
        if type(source) is int and (0 <= source < e.size or source == e.any_source) \
                and type(tag) is int and (0 <= tag <= e.tag_ub or tag == e.any_tag):
            # the common case, at once
            return new_request(e.irecv(recv_buffer(buf), source, tag))
        if source == e.names.PROC_NULL and self._plain() is not None:
            self._tag(tag, True)
            return self._null_request("Irecv", buf, source, tag)
        return new_request(self._irecv_op(buf, source, tag))

    def Isendrecv(self, sendbuf, dest: int, sendtag: int = 0, recvbuf=None,
                  source: int = ANY_SOURCE, recvtag: int = ANY_TAG) -> Request:
        """Nonblocking send and receive."""
        e = self._engine
        if e is None:
            return super().Isendrecv(sendbuf, dest, sendtag, recvbuf, source, recvtag)
        # Check the send's arguments before the receive is posted: a receive left
        # behind by a failed call would take a later message.
        if self._dest(dest) != e.names.PROC_NULL:
            send_buffer(sendbuf)
        self._tag(sendtag, False)
        if recvbuf is None:
            recvbuf = bytearray(0)
        rop = self._irecv_op(recvbuf, source, recvtag)
        return new_request(rop, [self._isend_op(sendbuf, dest, sendtag, False)])

    def Isendrecv_replace(self, buf, dest: int, sendtag: int = 0, source: int = ANY_SOURCE,
                          recvtag: int = ANY_TAG) -> Request:
        """Nonblocking send and receive, using a single buffer."""
        e = self._engine
        if e is None:
            return super().Isendrecv_replace(buf, dest, sendtag, source, recvtag)
        dest, _ = self._dest(dest), self._tag(sendtag, False)   # before the receive is posted
        copy = bytearray(send_buffer(buf).tobytes()) if dest != e.names.PROC_NULL else None
        rop = self._irecv_op(buf, source, recvtag)
        return new_request(rop, [self._isend_op(copy, dest, sendtag, False)])

    # -- persistent requests -------------------------------------------------------------
    def _persistent(self, init: str, start, buf, peer, tag, sending: bool) -> Prequest:
        """A persistent request running *start* (a nonblocking method) on each Start;
        its arguments are checked now, as MPI checks them at init. With ``PROC_NULL``,
        mpi4py's own *init* (no message moves)."""
        e = self._engine
        peer = self._dest(peer) if sending else self._source(peer)
        self._tag(tag, not sending)
        plain = self._plain()
        if peer == e.names.PROC_NULL and plain is not None:
            return Prequest(getattr(plain, init)(buf, peer, tag))
        if peer != e.names.PROC_NULL:
            send_buffer(buf) if sending else check_recv_buffer(buf)
        spec = _kept(buf)
        return Prequest._starting(_starter(lambda: start(spec, peer, tag), buf, spec))

    def Send_init(self, buf, dest: int, tag: int = 0) -> Prequest:
        """Create a persistent request for a standard send."""
        if self._engine is None:
            return super().Send_init(buf, dest, tag)
        return self._persistent("Send_init", self.Isend, buf, dest, tag, True)

    def Ssend_init(self, buf, dest: int, tag: int = 0) -> Prequest:
        """Create a persistent request for a synchronous send."""
        if self._engine is None:
            return super().Ssend_init(buf, dest, tag)
        return self._persistent("Ssend_init", self.Issend, buf, dest, tag, True)

    def Bsend_init(self, buf, dest: int, tag: int = 0) -> Prequest:
        """Create a persistent request for a buffered send."""
        if self._engine is None:
            return super().Bsend_init(buf, dest, tag)
        return self._persistent("Bsend_init", self.Ibsend, buf, dest, tag, True)

    def Rsend_init(self, buf, dest: int, tag: int = 0) -> Prequest:
        """Create a persistent request for a ready send."""
        if self._engine is None:
            return super().Rsend_init(buf, dest, tag)
        return self._persistent("Rsend_init", self.Irsend, buf, dest, tag, True)

    def Recv_init(self, buf, source: int = ANY_SOURCE, tag: int = ANY_TAG) -> Prequest:
        """Create a persistent request for a receive."""
        if self._engine is None:
            return super().Recv_init(buf, source, tag)
        return self._persistent("Recv_init", self.Irecv, buf, source, tag, False)

    def Psend_init(self, buf, partitions: int, dest: int, tag: int = 0,
                   info=INFO_NULL) -> PartitionedRequest:
        """Create a partitioned send (the message leaves whole once all are ready)."""
        if self._engine is None:
            return super().Psend_init(buf, partitions, dest, tag, info)
        self._dest(dest), self._tag(tag, False), send_buffer(buf)
        spec = _kept(buf)
        return PartitionedRequest._partitioned(
            _starter(lambda: self.Isend(spec, dest, tag), buf, spec), partitions, True)

    def Precv_init(self, buf, partitions: int, source: int = ANY_SOURCE, tag: int = ANY_TAG,
                   info=INFO_NULL) -> PartitionedRequest:
        """Create a partitioned receive."""
        if self._engine is None:
            return super().Precv_init(buf, partitions, source, tag, info)
        self._source(source), self._tag(tag, True)
        check_recv_buffer(buf)
        spec = _kept(buf)
        return PartitionedRequest._partitioned(
            _starter(lambda: self.Irecv(spec, source, tag), buf, spec), partitions, False)

    # -- probing -------------------------------------------------------------------------
    def _probe_status(self, hit, status) -> None:
        if status is not None:
            src, tag, n = hit
            _p2p.fill_status(status, src, tag, n, None, self._engine.names)

    # Probes look in cmampi's matching space, then in the MPI library's own on this
    # handle: code calling mpi4py's base-class methods directly (``MPI.Comm.Send(comm,
    # ...)``, as ``mpi4py.util.pkl5`` does) sends there.
    def _look(self, source: int, tag: int, status, matched: bool) -> Any:
        """One nonblocking look: a hit of the engine's (matched: taken out of its
        stream), an mpi4py Message or True from the MPI library, or None."""
        e = self._engine
        hit = e.mprobe(source, tag, False) if matched else e.iprobe(source, tag)
        if hit is not None:
            if matched:
                src, tg, data = hit
                self._probe_status((src, tg, _wire.payload_size(data, e.limit)), status)
            else:
                self._probe_status(hit, status)
            return hit
        plain = self._plain()
        if plain is None:
            return None
        if matched:
            return plain.Improbe(source, tag, status)
        return True if plain.Iprobe(source, tag, status) else None

    def _probe(self, source, tag, status, matched: bool, block: bool) -> Any:
        source, tag = self._source(source), self._tag(tag, True)
        if source == self._engine.names.PROC_NULL:
            plain = self._plain()
            if plain is not None:       # the MPI library's own answer
                return Message(plain.Mprobe(source, tag, status)) if matched \
                    else plain.Iprobe(source, tag, status)
            self._null_status(status)
            if matched:
                return Message._matched(self._engine, _NO_PROC_HIT)
            return True
        if block and self._plain() is None:     # nothing to watch beside the engine
            hit = self._engine.probe(source, tag)
            if not matched:
                self._probe_status(hit, status)
                return True
        spins = 0
        while True:
            found = self._look(source, tag, status, matched)
            if found is not None or not block:
                break
            spins += 1
            _sched_yield() if spins < 1000 else _time.sleep(20e-6)
        if found is None or found is True:
            return found
        if matched:
            return Message._matched(self._engine, found) if type(found) is tuple \
                else Message(found)
        return True

    def Probe(self, source: int = ANY_SOURCE, tag: int = ANY_TAG,
              status=None) -> Literal[True]:
        """Blocking test for a message."""
        if self._engine is None:
            return super().Probe(source, tag, status)
        return self._probe(source, tag, status, False, True)

    def Iprobe(self, source: int = ANY_SOURCE, tag: int = ANY_TAG, status=None) -> bool:
        """Nonblocking test for a message."""
        if self._engine is None:
            return super().Iprobe(source, tag, status)
        return bool(self._probe(source, tag, status, False, False))

    def Mprobe(self, source: int = ANY_SOURCE, tag: int = ANY_TAG, status=None) -> Message:
        """Blocking test for a matched message."""
        if self._engine is None:
            return super().Mprobe(source, tag, status)
        return self._probe(source, tag, status, True, True)

    def Improbe(self, source: int = ANY_SOURCE, tag: int = ANY_TAG,
                status=None) -> Message | None:
        """Nonblocking test for a matched message."""
        if self._engine is None:
            return super().Improbe(source, tag, status)
        return self._probe(source, tag, status, True, False)

    def probe(self, source: int = ANY_SOURCE, tag: int = ANY_TAG,
              status=None) -> Literal[True]:
        """Blocking test for a message."""
        return self.Probe(source, tag, status)

    def iprobe(self, source: int = ANY_SOURCE, tag: int = ANY_TAG, status=None) -> bool:
        """Nonblocking test for a message."""
        return self.Iprobe(source, tag, status)

    def mprobe(self, source: int = ANY_SOURCE, tag: int = ANY_TAG, status=None) -> Message:
        """Blocking test for a matched message."""
        return self.Mprobe(source, tag, status)

    def improbe(self, source: int = ANY_SOURCE, tag: int = ANY_TAG,
                status=None) -> Message | None:
        """Nonblocking test for a matched message."""
        return self.Improbe(source, tag, status)

    # -- Python objects ------------------------------------------------------------------
    @overload
    def _send_obj(self, obj, dest, tag, sync: bool, wait: Literal[True],
                  buffered: bool = False) -> None: ...
    @overload
    def _send_obj(self, obj, dest, tag, sync: bool, wait: Literal[False],
                  buffered: bool = False) -> Request: ...
    def _send_obj(self, obj, dest, tag, sync: bool, wait: bool,
                  buffered: bool = False) -> Request | None:
        e = self._engine
        dest, tag = self._dest(dest), self._tag(tag, False)
        if dest == e.names.PROC_NULL:
            _DUMPS[0](obj, _pickle.HIGHEST_PROTOCOL)   # an unpicklable object fails here too
            return None if wait else self._null_request("issend" if sync else "isend",
                                                        obj, dest, tag)
        if wait and not sync:
            _objects.send(e, obj, _objects.pickle_for(e, obj, dest), dest, tag)
            return None
        op = _objects.isend(e, obj, dest, tag, sync, wait)
        req = new_request(_buffered(op) if buffered else op)
        if wait:
            req.Wait()
            return None
        return req

    def send(self, obj: Any, dest: int, tag: int = 0) -> None:
        """Send a message."""
        e = self._engine
        if e is None:
            return super().send(obj, dest, tag)
        if type(dest) is int and type(tag) is int and 0 <= dest < e.size \
                and 0 <= tag <= e.tag_ub:       # the common case, checked at once
            stream = _PICKLED[0](obj, e.cma[dest])     # objects.pickle_for, inline
            fast = e.fast
            if fast is not None and stream is not None and len(stream) <= OBJECT_RAW_MAX \
                    and len(_THREADS) < 2 and fast.send(e.user, stream, dest, tag):
                # a pickle that travels as itself (up to the eager limit, or past the
                # control band while nothing else waits), sent from the compiled path
                return None
            _objects.send(e, obj, stream, dest, tag)
            return None
        return self._send_obj(obj, dest, tag, False, True)

    def ssend(self, obj: Any, dest: int, tag: int = 0) -> None:
        """Send a message in synchronous mode."""
        if self._engine is None:
            return super().ssend(obj, dest, tag)
        return self._send_obj(obj, dest, tag, True, True)

    def bsend(self, obj: Any, dest: int, tag: int = 0) -> None:
        """Send a message in buffered mode."""
        if self._engine is None:
            return super().bsend(obj, dest, tag)
        self._send_obj(obj, dest, tag, False, False, buffered=True)
        return None

    def isend(self, obj: Any, dest: int, tag: int = 0) -> Request:
        """Nonblocking send."""
        e = self._engine
        if e is None:
            return super().isend(obj, dest, tag)
        fast = e.fast
        if fast is not None and len(_THREADS) < 2:
            # pickled, and sent as itself if short, by the compiled path in one call
            got = fast.isend_object(e.user, obj, dest, tag, e, e.cma)
            if type(got) is tuple:      # pickled (or None: out of band), not sent
                return new_request(_objects.isend_pickled(e, obj, got[0], dest, tag))
            if got is not None:
                return got
        return self._send_obj(obj, dest, tag, False, False)

    def issend(self, obj: Any, dest: int, tag: int = 0) -> Request:
        """Nonblocking send in synchronous mode."""
        if self._engine is None:
            return super().issend(obj, dest, tag)
        return self._send_obj(obj, dest, tag, True, False)

    def ibsend(self, obj: Any, dest: int, tag: int = 0) -> Request:
        """Nonblocking send in buffered mode."""
        if self._engine is None:
            return super().ibsend(obj, dest, tag)
        return self._send_obj(obj, dest, tag, False, False, buffered=True)

    def _irecv_obj(self, source, tag) -> Request:
        source, tag = self._source(source), self._tag(tag, True)
        if source == self._engine.names.PROC_NULL:
            return self._null_request("irecv", None, source, tag, finish=lambda op: None)
        op = self._engine.irecv(None, source, tag, _objects.landed)
        op.decode = _objects.loads
        return new_request(op)

    def recv(self, buf=None, source: int = ANY_SOURCE, tag: int = ANY_TAG,
             status=None) -> Any:
        """Receive a message."""
        e = self._engine
        if e is None:
            return super().recv(buf, source, tag, status)
        if buf is not None:
            _warnings.warn("the 'buf' argument is deprecated", UserWarning, stacklevel=2)
        fast = e.fast
        if fast is not None and not e.stash and len(_THREADS) < 2:
            # objects.recv_compiled, inline: received and unpickled by the compiled
            # path while nothing else waits (it declines a source or tag it does not take)
            if _DETACHED:   # finished ones leave: they would keep this path off
                _p2p.advance_detached()
            obj = fast.recv_object(e.user, source, tag, _loads, status, _DECLINED)
            if obj is not _DECLINED:
                return obj if type(obj) is not _CONTROL else \
                    _objects.finish_compiled(e, obj, status)
        if type(source) is int and type(tag) is int \
                and (0 <= source < e.size or source == e.any_source) \
                and (0 <= tag <= e.tag_ub or tag == e.any_tag):   # the common case
            return _objects.recv(e, source, tag, status)
        source, tag = self._source(source), self._tag(tag, True)
        if source == e.names.PROC_NULL:
            return self._null_request("irecv", None, source, tag,
                                      finish=lambda op: None).wait(status)
        return _objects.recv(e, source, tag, status)

    def irecv(self, buf=None, source: int = ANY_SOURCE, tag: int = ANY_TAG) -> Request:
        """Nonblocking receive."""
        e = self._engine
        if e is None:
            return super().irecv(buf, source, tag)
        fast = e.fast
        if fast is not None and buf is None and not (e.stash or e.landing) \
                and len(_THREADS) < 2 and type(source) is int \
                and (0 <= source < e.size or source == e.any_source):
            # the compiled path: the message lands whole in a stage (it declines the rest)
            req = fast.irecv_object(e.user, e.object_stages[source], source, tag, e)
            if req is not None:
                return req
        return self._irecv_obj(source, tag)

    def sendrecv(self, sendobj: Any, dest: int, sendtag: int = 0, recvbuf=None,
                 source: int = ANY_SOURCE, recvtag: int = ANY_TAG, status=None) -> Any:
        """Send and receive a message."""
        e = self._engine
        if e is None:
            return super().sendrecv(sendobj, dest, sendtag, recvbuf, source, recvtag, status)
        if type(dest) is int and type(sendtag) is int and type(source) is int \
                and type(recvtag) is int and 0 <= dest < e.size and 0 <= sendtag <= e.tag_ub \
                and (0 <= source < e.size or source == e.any_source) \
                and (0 <= recvtag <= e.tag_ub or recvtag == e.any_tag):   # the common case
            stream = _PICKLED[0](sendobj, e.cma[dest])     # objects.pickle_for, inline
            fast = e.fast
            if fast is not None and stream is not None and not e.stash and len(_THREADS) < 2:
                # a short pickle sent as itself while the receive blocks, in one call
                if _DETACHED:   # finished ones leave: they would keep this path off
                    _p2p.advance_detached()
                got = fast.sendrecv_object(e.user, stream, dest, sendtag, source, recvtag,
                                           _loads, status, _DECLINED)
                if got is not _DECLINED:
                    return got if type(got) is not _CONTROL else \
                        _objects.finish_compiled(e, got, status)
            got, sent = _objects.sendrecv(e, sendobj, stream, dest, sendtag, source, recvtag,
                                          status)
            if sent is None:
                return got
            sreq = new_request(sent)
        else:
            sreq = self.isend(sendobj, dest, sendtag)   # an unpicklable object fails first
        rreq = self._irecv_obj(source, recvtag)
        result = rreq.wait(status)
        sreq.Wait()
        return result

    # Lowercase collectives: cmampi's own on one node, large buffers out of band.
    def _objcoll(self, kind: str, obj, root: int = 0, op=SUM):
        root = root if type(root) is int else as_int(root)  # every rank's the same way
        e = self._engine
        if e is not None:
            slots = e.slots
            if slots is False:
                slots = e.slots = self._slotting()
            if slots is not None and type(root) is int and 0 <= root < e.size:
                plain, side, tag = slots
                coll = e.coll or self._coll     # made first: making it takes mpi4py's locks
                with self._lock(kind):  # as mpi4py: one lowercase collective of a kind at a time
                    # short pickles: one MPI collective of fixed-size slots
                    fast = e.fast
                    partial: list = []
                    pickled: list = []      # obj's pickle, if too long for a slot
                    if fast is not None:
                        result = fast.slots(plain, _objcoll.SLOT_KINDS[kind], obj, root, op,
                                            partial, pickled, side, tag)
                    else:
                        result = _objcoll.slotted[kind](plain, e.names.BYTE, obj, root, op,
                                                        e.rank, e.size, partial, pickled,
                                                        (side, tag))
                    if result is not _objcoll.DECLINED:
                        return result
                    return _objcoll.collective(coll, kind, obj, root, op, partial or None,
                                               pickled[0] if pickled else None)
        plain = self._plain()
        if e is None or (plain is not None and e.multinode):   # the MPI library's
            fn = getattr(plain, kind)
            if _objcoll.KINDS[kind]:
                return fn(obj, op, root) if kind == "reduce" else fn(obj, root)
            return fn(obj) if kind in ("allgather", "alltoall") else fn(obj, op)
        coll = self._coll       # made first: making it takes mpi4py's locks
        lock = self._lock(kind)
        if lock is None:
            return _objcoll.collective(coll, kind, obj, root, op)
        with lock:      # as mpi4py: one lowercase collective of a kind at a time
            return _objcoll.collective(coll, kind, obj, root, op)

    def _slotting(self) -> Any:
        """(mpi4py's communicator, the side space's and its free tag) where short
        lowercase collectives run in slots (`objcoll.slotted`): on one node,
        collectives not `checked`, not an intercommunicator; else None."""
        e = self._engine
        plain = self._plain()
        if plain is None or e.checked or e.multinode or plain.Is_inter():
            return None
        return plain, e.ch.side, e.ch.slot_tag

    def _lock(self, kind: str) -> Any:
        """mpi4py's lock of this communicator for *kind* (None without MPI)."""
        return None

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

    def reduce(self, sendobj: Any, op=SUM, root: int = 0):
        """Reduce to Root."""
        return self._objcoll("reduce", sendobj, root, op)

    def allreduce(self, sendobj: Any, op=SUM) -> Any:
        """Reduce to All."""
        return self._objcoll("allreduce", sendobj, op=op)

    def scan(self, sendobj: Any, op=SUM) -> Any:
        """Inclusive Scan."""
        return self._objcoll("scan", sendobj, op=op)

    def exscan(self, sendobj: Any, op=SUM) -> Any:
        """Exclusive Scan."""
        return self._objcoll("exscan", sendobj, op=op)


#: Where the main thread may block in the MPI library holding no engine state:
#: the collectives the library runs, and the calls on the way to it (`_watch`).
for _name in ("Bcast", "Gather", "Gatherv", "Scatter", "Scatterv", "Allgather", "Allgatherv",
              "Alltoall", "Alltoallv", "Reduce", "Allreduce", "Reduce_scatter_block",
              "Reduce_scatter", "Scan", "Exscan", "bcast", "gather", "scatter", "allgather",
              "alltoall", "reduce", "allreduce", "scan", "exscan", "_ran_by_library", "_small",
              "_objcoll", "_slotting", "_lock", "_plain", "_coll"):
    _site(vars(Communicator)[_name])


def _kept(spec):
    """*spec* for a request that reads it at each start: with a datatype of its own
    if it names a derived one, which the program may free meanwhile (MPI keeps a
    persistent request's)."""
    return _derived.kept(spec) if has_derived_datatype(spec) else spec


def _starter(start, spec, kept):
    """*start*, which lets the datatype of *kept* go once no request holds it."""
    if kept is not spec:
        _weakref.finalize(start, _derived.release, kept)
    return start
