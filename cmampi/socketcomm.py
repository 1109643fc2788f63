"""cmampi's communicator on the socket channel: mpi4py's API with no MPI library."""

from __future__ import annotations

import os as _os
import sys as _sys
from typing import Optional

from ._config import config as _config
from .comm import Communicator, _Freed
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

    @classmethod
    def _from_channel(cls, channel) -> "Intracomm":
        """A communicator over *channel*."""
        self = cls.__new__(cls)
        self._engine = _p2p.Engine(channel, channel.names, _config)
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
        engine.free()
        self._engine = _Freed(engine.names)

    def Barrier(self) -> None:
        """Barrier synchronization."""
        self._coll.barrier()

    def barrier(self) -> None:
        """Barrier synchronization."""
        self.Barrier()

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
