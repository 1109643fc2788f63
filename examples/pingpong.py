"""Ping-pong of a numpy array between ranks 0 and 1, as an mpi4py program would write it.

Run with MPI:            mpiexec -n 2 python examples/pingpong.py
or without MPI at all:   python -m cmampi -n 2 examples/pingpong.py

Only the import line differs from the mpi4py version of this program.
"""

import numpy as np

from cmampi import MPI

comm = MPI.COMM_WORLD
rank = comm.Get_rank()
assert comm.Get_size() >= 2, "run with at least 2 ranks"

for n in (8, 1 << 20, 16 << 20):
    buf = np.arange(n, dtype=np.uint8) if rank == 0 else np.empty(n, dtype=np.uint8)
    comm.Barrier()
    t0 = MPI.Wtime()
    for _ in range(10):
        if rank == 0:
            comm.Send(buf, dest=1, tag=7)
            comm.Recv(buf, source=1, tag=7)
        elif rank == 1:
            comm.Recv(buf, source=0, tag=7)
            comm.Send(buf, dest=0, tag=7)
    dt = (MPI.Wtime() - t0) / 20
    if rank < 2:
        assert np.array_equal(buf, np.arange(n, dtype=np.uint8)), "the payload was corrupted"
    if rank == 0:
        print(f"{n:>10} bytes: {dt * 1e6:9.1f} us one way, {n / dt / 1e9:6.2f} GB/s")
