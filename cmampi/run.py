"""``python -m cmampi.run [options] prog.py [args]``: an unmodified mpi4py program on cmampi.

Every ``from mpi4py import MPI`` in the process, the program's and every
library's it imports (``mpi4py.util.pkl5``, ``mpi4py.futures``, h5py, ...),
gets cmampi's namespace (`cmampi.MPI`); cmampi itself keeps the real module.
The command line is ``python -m mpi4py``'s: ``pyfile``, ``-m mod``, ``-c cmd``
or ``-``, then the program's arguments, and ``--rc key=value`` options; an
unhandled exception aborts the job, as there. Run each rank under ``mpiexec``::

    mpiexec -n 4 python -m cmampi.run prog.py args
"""

from __future__ import annotations

import sys as _sys
from types import ModuleType
from typing import Optional, Sequence

__all__ = ["redirect", "main"]


def redirect() -> ModuleType:
    """Make ``mpi4py.MPI`` cmampi's namespace for the rest of the process; it.

    Collective over the world (cmampi's namespace attaches it), and to be called
    before the program imports ``mpi4py.MPI``: a module that already holds the
    real one keeps it.
    """
    import mpi4py

    from ._channels import real_mpi

    real = real_mpi()   # cmampi's own hold on the real module, before it is replaced
    from . import MPI as ours

    # Where tools look for the MPI library (mpi4py's --mpi-library, ctypes.CDLL):
    # mpi4py's extension module, which cmampi's namespace stands for.
    ours.__file__ = real.__file__

    _sys.modules["mpi4py.MPI"] = ours
    mpi4py.MPI = ours   # type: ignore[attr-defined]
    return ours


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``python -m mpi4py``, with ``mpi4py.MPI`` served by cmampi."""
    import mpi4py.run as _run

    run_command_line = _run.run_command_line

    def redirected(args=None):
        redirect()      # after --rc options have been applied, before the program
        return run_command_line(args)

    _run.run_command_line = redirected
    if argv is not None:
        _sys.argv[1:] = list(argv)
    _run.main()


if __name__ == "__main__":
    main()
