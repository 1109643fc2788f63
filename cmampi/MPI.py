"""Drop-in namespace for ``mpi4py.MPI``: change the import line, keep the program.

``COMM_WORLD`` and ``COMM_SELF`` are cmampi communicators; ``Request``,
``Prequest`` and ``Message`` are cmampi's; every other name (constants,
datatypes, ``Status``, ``Wtime``, ``Exception``, ops, ...) is mpi4py's own.
Importing this module is collective over ``COMM_WORLD``.
"""

from mpi4py import MPI as _MPI

from .comm import Intracomm
from .request import Message, Prequest, Request

COMM_WORLD = Intracomm(_MPI.COMM_WORLD)
COMM_SELF = Intracomm(_MPI.COMM_SELF)


def __getattr__(name: str):
    return getattr(_MPI, name)


def __dir__():
    return sorted(set(globals()) | set(dir(_MPI)))
