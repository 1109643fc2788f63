"""Which channel a job uses (MPI under mpiexec, sockets under cmampi's launcher),
and the one place cmampi reaches the real ``mpi4py.MPI`` module."""

from __future__ import annotations

import os as _os
import sys as _sys
from types import ModuleType
from typing import Any

from ._config import config

__all__ = ["choose", "names", "real_mpi", "world"]

_real: ModuleType | None = None


def real_mpi() -> ModuleType:
    """mpi4py's own ``MPI`` module, even once ``mpi4py.MPI`` names cmampi's namespace
    (``python -m cmampi.run``): cmampi's channel and delegated calls need the real one."""
    global _real
    if _real is None:
        loaded = _sys.modules.get("mpi4py.MPI")
        _real = getattr(loaded, "_real_mpi4py", None)   # already redirected
        if _real is None:
            from mpi4py import MPI

            _real = MPI
    return _real


def choose() -> str:
    """``mpi`` or ``socket``: ``CMAMPI_CHANNEL`` if set, else what the launch implies.

    Ranks started by ``python -m cmampi`` use sockets; anything else uses MPI when
    mpi4py and an MPI library can be loaded (a plain ``python prog.py`` is then a
    world of one, as with mpi4py), and sockets (a world of one) when they cannot.
    """
    if config.channel != "auto":
        return config.channel
    if "CMAMPI_RANK" in _os.environ:
        return "socket"
    try:
        real_mpi()
    except (ImportError, RuntimeError):
        return "socket"
    return "mpi"


_names_in_use: Any | None = None


def names() -> Any:
    """The module whose constants this process's MPI uses: mpi4py's on the MPI
    channel, cmampi's own table on the socket channel (MPICH's values). Decided
    once per process, as the channel is (buffer parsing asks on every call)."""
    global _names_in_use
    if _names_in_use is None:
        if choose() == "mpi":
            _names_in_use = real_mpi()
        else:
            from . import _names

            _names_in_use = _names
    return _names_in_use


def world(intracomm) -> tuple[Any, Any]:
    """(COMM_WORLD, COMM_SELF) for this process's channel, as *intracomm* objects;
    collective over the world."""
    if choose() == "mpi":
        from .mpicomm import attach

        MPI = real_mpi()
        return attach(intracomm(MPI.COMM_WORLD)), attach(intracomm(MPI.COMM_SELF))
    from .channel.socket import SocketChannel, hub_from_environ

    hub = hub_from_environ()
    world_ = intracomm._from_channel(SocketChannel(hub, 0, list(range(hub.size))),
                                     "MPI_COMM_WORLD")
    # COMM_SELF's context only has to be unique in this process.
    self_ = intracomm._from_channel(SocketChannel(hub, 2**31 + hub.rank, [hub.rank]),
                                    "MPI_COMM_SELF")
    return world_, self_
