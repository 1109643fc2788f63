"""cmampi's communicator on the socket channel: mpi4py's API with no MPI library."""

from __future__ import annotations

import os as _os
import sys as _sys
from typing import Optional

from ._config import config as _config
from .comm import Communicator, _Freed
from .request import Request, new_request
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
