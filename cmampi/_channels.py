"""Which channel a job uses: MPI under mpiexec, sockets under cmampi's launcher."""

from __future__ import annotations

import os as _os
from typing import Any, Tuple

from ._config import config

__all__ = ["choose", "world"]


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
        from mpi4py import MPI  # noqa: F401 - can MPI be loaded?
    except (ImportError, RuntimeError):
        return "socket"
    return "mpi"


def world(intracomm) -> Tuple[Any, Any, Any]:
    """(names module, COMM_WORLD, COMM_SELF) for this process's channel."""
    if choose() == "mpi":
        from mpi4py import MPI

        return MPI, intracomm(MPI.COMM_WORLD), intracomm(MPI.COMM_SELF)
    from . import _names
    from .channel.socket import SocketChannel, hub_from_environ

    hub = hub_from_environ()
    world_ = intracomm._from_channel(SocketChannel(hub, 0, list(range(hub.size))))
    # COMM_SELF's context only has to be unique in this process.
    self_ = intracomm._from_channel(SocketChannel(hub, 2**31 + hub.rank, [hub.rank]))
    return _names, world_, self_
