"""Drop-in namespace for ``mpi4py.MPI``: change the import line, keep the program.

``COMM_WORLD`` and ``COMM_SELF`` are cmampi communicators; ``Request``,
``Prequest`` and ``Message`` are cmampi's. Every other name (constants,
datatypes, ``Status``, ``Wtime``, ``Exception``, ops, ...) comes from mpi4py on
the MPI channel, and from cmampi's own table (``_names``) on the socket
channel, where mpi4py need not be installed. Importing this module is
collective over ``COMM_WORLD``.
"""

from ._channels import world as _world
from .comm import Intracomm
from .request import Message, Prequest, Request  # noqa: F401 - the namespace

_base, COMM_WORLD, COMM_SELF = _world(Intracomm)
CHANNEL = "mpi" if COMM_WORLD.comm is not None else "socket"


def __getattr__(name: str):
    return getattr(_base, name)


def __dir__():
    return sorted(set(globals()) | set(dir(_base)))
