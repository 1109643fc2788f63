"""2-D Jacobi iteration with halo exchange of strided boundary columns.

Each rank owns a block of columns of a 2-D grid. The boundary columns are
strided views (``u[:, 1]``); cmampi sends and receives them directly, where
mpi4py would need ``np.ascontiguousarray`` and a copy back.

Run with MPI:            mpiexec -n 2 python examples/halo.py
or without MPI at all:   python -m cmampi -n 3 examples/halo.py
"""

import numpy as np

from cmampi import MPI

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
ROWS, COLS, STEPS = 512, 256, 50

# Local block with one ghost column on each side; the left edge of the global
# grid is held at 1.0, everything else starts at 0.
u = np.zeros((ROWS, COLS + 2))
if rank == 0:
    u[:, 0] = 1.0
left = rank - 1 if rank > 0 else MPI.PROC_NULL
right = rank + 1 if rank < size - 1 else MPI.PROC_NULL

for step in range(STEPS):
    # Send my first interior column left, receive my right ghost from the right.
    comm.Sendrecv(u[:, 1], left, 0, u[:, -1], right, 0)
    # Send my last interior column right, receive my left ghost from the left.
    comm.Sendrecv(u[:, -2], right, 1, u[:, 0], left, 1)
    if rank == 0:
        u[:, 0] = 1.0
    u[1:-1, 1:-1] = 0.25 * (u[:-2, 1:-1] + u[2:, 1:-1] + u[1:-1, :-2] + u[1:-1, 2:])

# Check against the same iteration on one process: rank 0 collects the blocks.
interior = np.ascontiguousarray(u[:, 1:-1])
if rank != 0:
    comm.Send(interior, dest=0, tag=2)
else:
    blocks = [interior] + [np.empty_like(interior) for _ in range(size - 1)]
    for src in range(1, size):
        comm.Recv(blocks[src], source=src, tag=2)
    g = np.zeros((ROWS, size * COLS + 2))
    g[:, 0] = 1.0
    for _ in range(STEPS):
        g[1:-1, 1:-1] = 0.25 * (g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:])
        g[:, 0] = 1.0
    assert np.allclose(np.hstack(blocks), g[:, 1:-1]), "halo exchange gave wrong results"
    print(f"Jacobi with strided halos on {size} ranks matches the serial result")
