"""Collectives benchmark, cmampi vs plain mpi4py: ``python -m cmampi.bench collectives``.

Kept for existing command lines: ``mpiexec -n 2 python bench/collectives.py [options]``
is ``mpiexec -n 2 python -m cmampi.bench collectives [options]`` (see its ``--help``).
"""

import sys

from cmampi.bench import main

if __name__ == "__main__":
    sys.exit(main(["collectives", *sys.argv[1:]]))
