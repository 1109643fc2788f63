"""A program for cmampi's own launcher: no MPI library and no mpi4py, only ``import cmampi``.

``cmampi.COMM_WORLD`` is the communicator ``from cmampi import MPI`` would give
as ``MPI.COMM_WORLD``. Under the launcher it runs over Unix sockets and never
imports mpi4py; under mpiexec the same program runs over MPI. It passes a
2 MiB token around a ring until every token has come home.

Run without MPI:   python -m cmampi -n 3 examples/no_mpi.py
or with MPI:       mpiexec -n 2 python examples/no_mpi.py
"""

import sys

import numpy as np

import cmampi

comm = cmampi.COMM_WORLD
MPI = cmampi.MPI
assert comm is MPI.COMM_WORLD, "cmampi.COMM_WORLD is not cmampi.MPI.COMM_WORLD"
rank, size = comm.Get_rank(), comm.Get_size()
if MPI.CHANNEL == "socket":
    assert "mpi4py" not in sys.modules, "the socket channel imported mpi4py"

# Each rank's token starts as 1000 * rank; at every step it moves one rank to
# the right and its new holder adds its own rank to it.
right, left = (rank + 1) % size, (rank - 1) % size
token = np.full(1 << 18, 1000.0 * rank)
incoming = np.empty_like(token)
status = MPI.Status()
t0 = MPI.Wtime()
for step in range(size):
    comm.Sendrecv(token, right, step, incoming, left, step, status)
    assert status.Get_source() == left and status.Get_tag() == step
    token, incoming = incoming, token
    token += rank
dt = (MPI.Wtime() - t0) / size

# After a full circle my own token is back, having collected every rank.
assert (token == 1000.0 * rank + size * (size - 1) // 2).all(), "a token came home wrong"
homes = comm.allgather(int(token[0]) // 1000)
assert homes == list(range(size)), homes

if rank == 0:
    print(f"ring of {size} ranks on the {MPI.CHANNEL} channel: every 2 MiB token came home, "
          f"{dt * 1e6:.0f} us per step; mpi4py imported: {'mpi4py' in sys.modules}")
