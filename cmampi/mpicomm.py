"""cmampi's communicators on the MPI channel: mpi4py's classes, with cmampi in front.

Each class subclasses its mpi4py counterpart (``Intracomm``, ``Cartcomm``,
``Graphcomm``, ``Distgraphcomm``) and shares its handle, so a cmampi
communicator passes wherever mpi4py's does (``isinstance``, C-level consumers,
``Win.Create``, ``File.Open``, ``pkl5``) and every method cmampi does not define
is mpi4py's own. The engine serving a handle is kept here, by handle: every
Python object of that handle (``Intracomm(comm)``, a subclass's ``__new__``)
finds it. Engines are attached where communicators are made, which is
collective: to the world at start-up and to every communicator derived from
an attached one (``Dup``, ``Split``, ``Create_cart``, ...). A handle without one
(``Idup``'s, or one made by mpi4py alone) is left to mpi4py on every call.
"""

from __future__ import annotations

import copyreg as _copyreg
import functools as _functools
import sys as _sys
from typing import TYPE_CHECKING, Any

from . import p2p as _p2p
from ._backend import real_mpi as _real_mpi
from ._config import config as _config
from ._standin import StandIn
from ._watch import site as _site
from ._watch import start as _start_watch
from .comm import INFO_NULL, Communicator

__all__ = ["Cartcomm", "Comm", "Distgraphcomm", "Graphcomm", "Intracomm", "accelerate", "attach"]

if TYPE_CHECKING:
    from mpi4py import MPI as _MPI
else:
    _MPI = _real_mpi()

#: The engine of each attached handle.
_ENGINES: dict[int, _p2p.Engine] = {}


class _EngineOf:
    """``comm._engine``: the engine of the object's handle, looked up once per object
    (then an instance attribute: a plain dictionary lookup on the hot path)."""

    def __get__(self, comm: Any, owner: Any = None) -> _p2p.Engine | None:
        if comm is None:
            return self     # type: ignore[return-value]
        engine = _ENGINES.get(comm.handle)
        comm.__dict__["_engine"] = engine
        return engine


@_site
def attach(comm: Any) -> Any:
    """Give *comm*'s handle an engine, unless it has one; collective over *comm*."""
    handle = comm.handle
    if handle not in _ENGINES and comm != _MPI.COMM_NULL:
        from .channel.mpi import MPIChannel

        _ENGINES[handle] = _p2p.Engine(MPIChannel(comm), _MPI, _config)
        # pulled messages progress while the main thread blocks elsewhere
        _start_watch(_MPI.Query_thread() == _MPI.THREAD_MULTIPLE, _MPI.Is_finalized)
    comm.__dict__.pop("_engine", None)
    return comm


def accelerate(comm: Any) -> Intracomm:
    """A cmampi communicator over mpi4py communicator *comm* (same handle, same
    ranks), its point-to-point traffic single-copy; collective over *comm*."""
    if not isinstance(comm, _MPI.Intracomm) or comm == _MPI.COMM_NULL:
        raise TypeError(f"cmampi.accelerate takes an mpi4py Intracomm, got {comm!r}")
    return attach(_ours(comm))


@_site
def _ours(comm: Any) -> Any:
    """*comm* as an object of cmampi's class of its kind (the same object if it is)."""
    if isinstance(comm, Communicator):
        return comm
    for real, cls in _KINDS:
        if isinstance(comm, real):
            return cls(comm)
    return comm


@_site
def _derived(comm: Any) -> Any:
    """A communicator mpi4py derived from one of ours, as ours, with an engine; one
    outside the world model (an MPI 4 session's, before ``Init`` or after
    ``Finalize``) is left to mpi4py: cmampi's engine needs the world's ``COMM_SELF``."""
    if not isinstance(comm, _MPI.Intracomm) or comm == _MPI.COMM_NULL:
        return comm
    if not _MPI.Is_initialized() or _MPI.Is_finalized():
        return _ours(comm)
    return attach(_ours(comm))


def _deriving(name: str, base: type):
    """Method *name* of mpi4py's *base*, its result made ours (signature kept)."""
    real = getattr(base, name)

    @_functools.wraps(real)
    def method(self, *args, **kwargs):
        return _derived(real(self, *args, **kwargs))
    return _site(method)


def _from_handle(cls: type, make: str, arg: int) -> Any:
    """mpi4py's class method *make* (``fromhandle``, ...) with the result made ours."""
    real = next(b for b in cls.__mro__ if b.__module__.startswith("mpi4py"))
    return _ours(getattr(real, make)(arg))


class _Handles:
    """Communicators from handles are cmampi's, of their kind (``Comm.fromint``)."""

    @classmethod
    def fromhandle(cls, handle: int) -> Any:
        """fromhandle(handle)

        Create object from MPI handle.
        """
        return _from_handle(cls, "fromhandle", handle)

    @classmethod
    def fromint(cls, arg: int, /) -> Any:
        """fromint(arg)

        Create object from integer handle.
        """
        return _from_handle(cls, "fromint", arg)

    @classmethod
    def f2py(cls, arg: int) -> Any:
        """f2py(arg)

        Create object from Fortran handle.
        """
        return _from_handle(cls, "f2py", arg)


class Comm(_Handles, _MPI.Comm, metaclass=StandIn):
    """
    Communication context.
    """

    __module__ = "cmampi.MPI"   # where pickle and repr find it
    _stand_in = True     # isinstance(x, MPI.Comm) holds for mpi4py's own too


if TYPE_CHECKING:
    class _MixedIn(Communicator, _MPI.Intracomm):
        """For the type checker: `_MPICommunicator` always comes before mpi4py's
        ``Intracomm`` (or a subclass of it) in its concrete classes' bases."""
else:
    _MixedIn = Communicator


class _MPICommunicator(_Handles, _MixedIn):
    """What cmampi's MPI-channel communicators add to mpi4py's: the engine, and
    derived communicators that are cmampi's too."""

    _engine = _EngineOf()

    def _plain(self) -> Any:
        e = self._engine
        return (e.ch.comm  # type: ignore[attr-defined]  # attach() made it an MPIChannel
                if e is not None else _MPI.Intracomm(self))

    def __reduce__(self) -> Any:
        # The world and self travel by name: cmampi's, which the receiver resolves
        # to its own (mpi4py's names would give mpi4py's objects).
        from . import MPI as namespace

        for name in ("COMM_WORLD", "COMM_SELF"):
            # (not getattr: before they are first used, making them is collective)
            constant = vars(namespace).get(name)
            if constant is None:
                continue
            if self is constant:
                return name
            if self == constant:
                return (_copyreg.__newobj__,  # type: ignore[attr-defined]  # not in typeshed
                        (type(self), constant))
        return super().__reduce__()

    def _lock(self, kind: str) -> Any:
        e = self._engine
        if e is None:
            return _MPI._comm_lock(self, kind)
        lock = e.locks.get(kind)    # mpi4py's, kept: its table lives as long as the handle
        if lock is None:
            lock = e.locks[kind] = _MPI._comm_lock(self, kind)
        return lock

    def __repr__(self) -> str:
        where = "cmampi" if self._engine is not None else "the MPI library"
        return f"<{type(self).__module__}.{type(self).__name__} {self.handle:#x}, via {where}>"

    @_site
    def Dup(self, info=None) -> Any:
        """Duplicate the communicator."""
        return _derived(_MPI.Intracomm.Dup(self, info))

    Clone = _deriving("Clone", _MPI.Intracomm)
    Dup_with_info = _deriving("Dup_with_info", _MPI.Intracomm)
    Create = _deriving("Create", _MPI.Intracomm)
    Create_group = _deriving("Create_group", _MPI.Intracomm)
    Create_cart = _deriving("Create_cart", _MPI.Intracomm)
    Create_graph = _deriving("Create_graph", _MPI.Intracomm)
    Create_dist_graph = _deriving("Create_dist_graph", _MPI.Intracomm)
    Create_dist_graph_adjacent = _deriving("Create_dist_graph_adjacent", _MPI.Intracomm)

    @classmethod
    @_site
    def Create_from_group(cls, group, stringtag: str = "org.mpi4py", info=INFO_NULL,
                          errhandler=None) -> Any:
        """Create_from_group(group, stringtag='org.mpi4py', info=INFO_NULL, errhandler=None)

        Create communicator from group.
        """
        return _derived(_MPI.Intracomm.Create_from_group(group, stringtag, info, errhandler))

    @_site
    def Split(self, color: int = 0, key: int = 0) -> Any:
        """Split communicator by color and key."""
        return _derived(_MPI.Intracomm.Split(self, color, key))

    @_site
    def Split_type(self, split_type: int, key: int = 0, info=INFO_NULL) -> Any:
        """Split communicator by split type."""
        e = self._engine
        if e is not None and split_type == _MPI.COMM_TYPE_SHARED and _config.node is not None:
            # Sharing memory is what cmampi's locality says (CMAMPI_NODE overrides it).
            nodes = e.ch.nodes
            return self.Split(sorted(set(nodes)).index(nodes[e.rank]), key)
        return _derived(_MPI.Intracomm.Split_type(self, split_type, key, info))

    def _release(self, primitive) -> None:
        """Run mpi4py's *primitive* (``Free``, ``Disconnect``), then free the engine of
        the handle it released."""
        handle, engine = self.handle, self._engine
        primitive(self)
        self.__dict__.pop("_engine", None)
        if engine is not None:
            _ENGINES.pop(handle, None)
            engine.free()

    def Free(self) -> None:
        """Free a communicator (and cmampi's private duplicates of it)."""
        self._release(_MPI.Comm.Free)

    def free(self) -> None:
        """Call ``Free`` if not null or predefined."""
        constants = vars(_sys.modules.get(f"{__package__}.MPI", _sys))
        if any(self is constants.get(name) for name in ("COMM_WORLD", "COMM_SELF")):
            return      # constants, as mpi4py's own are (a copy of one is not)
        handle, engine = self.handle, self._engine
        _MPI.Comm.free(self)
        self.__dict__.pop("_engine", None)
        # A copy of a predefined communicator is only nulled: the handle, and the
        # engine serving it, live on.
        predefined = handle in (_MPI.COMM_WORLD.handle, _MPI.COMM_SELF.handle)
        if engine is not None and self.handle != handle and not predefined:
            _ENGINES.pop(handle, None)
            engine.free()

    def Disconnect(self) -> None:
        """Disconnect from a communicator (and free cmampi's duplicates of it)."""
        self._release(_MPI.Comm.Disconnect)


class Intracomm(_MPICommunicator, _MPI.Intracomm, metaclass=StandIn):
    """
    An mpi4py intracommunicator whose point-to-point traffic is single-copy.
    """

    __module__ = "cmampi.MPI"   # where pickle and repr find it
    _stand_in = True     # isinstance(x, MPI.Intracomm) holds for mpi4py's own too


class Cartcomm(_MPICommunicator, _MPI.Cartcomm, metaclass=StandIn):
    """
    An mpi4py Cartesian communicator whose point-to-point traffic is single-copy.
    """

    __module__ = "cmampi.MPI"   # where pickle and repr find it
    _stand_in = True     # isinstance(x, MPI.Cartcomm) holds for mpi4py's own too

    Sub = _deriving("Sub", _MPI.Cartcomm)


class Graphcomm(_MPICommunicator, _MPI.Graphcomm, metaclass=StandIn):
    """
    An mpi4py graph communicator whose point-to-point traffic is single-copy.
    """

    __module__ = "cmampi.MPI"   # where pickle and repr find it
    _stand_in = True     # isinstance(x, MPI.Graphcomm) holds for mpi4py's own too


class Distgraphcomm(_MPICommunicator, _MPI.Distgraphcomm, metaclass=StandIn):
    """
    An mpi4py distributed-graph communicator whose point-to-point traffic is single-copy.
    """

    __module__ = "cmampi.MPI"   # where pickle and repr find it
    _stand_in = True     # isinstance(x, MPI.Distgraphcomm) holds for mpi4py's own too


#: mpi4py's classes and ours, most derived first.
_KINDS = ((_MPI.Cartcomm, Cartcomm), (_MPI.Graphcomm, Graphcomm),
          (_MPI.Distgraphcomm, Distgraphcomm), (_MPI.Intracomm, Intracomm))
