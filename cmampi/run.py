"""``python -m cmampi.run [options] prog.py [args]``: an unmodified mpi4py program on cmampi.

Every ``from mpi4py import MPI`` in the process, the program's and every
library's it imports (``mpi4py.util.pkl5``, ``mpi4py.futures``, h5py, ...),
gets cmampi's namespace (`cmampi.MPI`); cmampi itself keeps the real module.
The command line is ``python -m mpi4py``'s: ``pyfile``, ``-m mod``, ``-c cmd``
or ``-``, then the program's arguments, and ``--rc key=value`` options; an
unhandled exception aborts the job, as there. Run each rank under ``mpiexec``,
or under cmampi's own launcher (``python -m cmampi -n 4 --mpi4py prog.py``),
where mpi4py need not be installed::

    mpiexec -n 4 python -m cmampi.run prog.py args
"""

from __future__ import annotations

import sys as _sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

__all__ = ["main", "redirect"]


def redirect() -> ModuleType:
    """Make ``mpi4py.MPI`` cmampi's namespace for the rest of the process; it.

    Collective over the world (cmampi's namespace attaches it), and to be called
    before the program imports ``mpi4py.MPI``: a module that already holds the
    real one keeps it. On the socket channel an ``mpi4py`` package is made up
    where none is installed.
    """
    from ._backend import choose, real_mpi

    real = real_mpi() if choose() == "mpi" else None   # cmampi's own hold on it
    from . import MPI as ours

    try:
        import mpi4py
    except ImportError:
        mpi4py = ModuleType("mpi4py", "cmampi standing in for mpi4py (no MPI library)")
        mpi4py.__path__ = []
        _sys.modules["mpi4py"] = mpi4py
        rc = mpi4py.__dict__["rc"] = _Rc()
        _sys.modules["mpi4py.rc"] = rc  # type: ignore[assignment]  # as mpi4py has it: an object
    if real is not None:
        # Where tools look for the MPI library (mpi4py's --mpi-library,
        # ctypes.CDLL): mpi4py's extension module, which cmampi stands for.
        ours.__file__ = real.__file__  # type: ignore[assignment]  # an extension module: has one
    _sys.modules["mpi4py.MPI"] = ours
    mpi4py.MPI = ours
    return ours


class _Rc:
    """``mpi4py.rc`` as mpi4py has it (its defaults; unknown options refused;
    called to update), for programs that set it before the import. The socket
    channel reads none of them: it has no MPI library to initialize."""

    initialize = True
    threads = True
    thread_level = "multiple"
    finalize = None
    fast_reduce = True
    recv_mprobe = True
    irecv_bufsz = 32768
    errors = "exception"

    def __init__(self, **kwargs: Any) -> None:
        self(**kwargs)

    def __setattr__(self, name: str, value: Any) -> None:
        if not hasattr(self, name):
            raise TypeError(f"object has no attribute {name!r}")
        super().__setattr__(name, value)

    def __call__(self, **kwargs: Any) -> None:
        for key, value in kwargs.items():
            setattr(self, key, value)

    def __repr__(self) -> str:
        return "<mpi4py.rc (cmampi's stand-in)>"


def _run_command_line(args: list[str]) -> None:
    """``pyfile | -m mod | -c cmd | -`` and the program's arguments, as mpi4py runs
    them (for the socket channel, where mpi4py's own runner may be missing)."""
    import os
    import runpy

    _sys.argv[:] = args
    if args[0] == "-":
        code = compile(_sys.stdin.read(), "<stdin>", "exec")
        exec(code, {"__name__": "__main__"})
    elif args[0] == "-c":
        command = _sys.argv.pop(1)
        exec(compile(command, "<string>", "exec"), {"__name__": "__main__"})
    elif args[0] == "-m":
        del _sys.argv[0]
        runpy.run_module(_sys.argv[0], run_name="__main__", alter_sys=True)
    else:
        _sys.path[0] = os.path.realpath(os.path.dirname(_sys.argv[0]))
        runpy.run_path(_sys.argv[0], run_name="__main__")


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m mpi4py``, with ``mpi4py.MPI`` served by cmampi."""
    if argv is not None:
        _sys.argv[1:] = list(argv)
    from ._backend import choose

    if choose() != "mpi":
        args = _sys.argv[1:]
        if not args or (args[0] in ("-m", "-c") and len(args) < 2):
            raise SystemExit("usage: python -m cmampi.run (prog.py | -m mod | -c cmd | -) "
                             "[arg ...]")
        redirect()
        _run_command_line(args)
        return
    import mpi4py.run as _run

    run_command_line = _run.run_command_line

    def redirected(args=None):
        redirect()      # after --rc options have been applied, before the program
        return run_command_line(args)

    _run.run_command_line = redirected
    _run.main()


if __name__ == "__main__":
    main()
