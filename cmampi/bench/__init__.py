"""Benchmarks of cmampi against mpi4py and multiprocessing: ``python -m cmampi.bench``.

Run under ``mpiexec -n 2`` (MPI channel: cmampi against plain mpi4py) or under
``python -m cmampi -n 2`` (socket channel: cmampi against
``multiprocessing.connection``); see ``python -m cmampi.bench --help``.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark command line *argv* (default ``sys.argv[1:]``); the exit code."""
    from .cli import main as _main

    return _main(argv)
