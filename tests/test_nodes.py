"""Ranks on different nodes never use CMA: a faked 2+2 layout on one machine.

The test starts 4 ranks under ``mpiexec`` (MPMD form) with ``CMAMPI_NODE=a``
for ranks 0-1 and ``b`` for ranks 2-3, and runs this file as the program. It
counts every cross-memory read by the pid it targets: pairs on one node must
pull, pairs across nodes must not, and every result must be right either way.
"""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable))


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec beside this Python")
def test_two_plus_two_nodes():
    env = dict(os.environ, MPIEXEC_TIMEOUT="240")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    for key in ("CMAMPI_RANK", "CMAMPI_SIZE", "CMAMPI_DIR", "CMAMPI_TOKEN", "CMAMPI_NODE",
                "CMAMPI_TRANSPORT"):
        env.pop(key, None)
    prog = [sys.executable, os.path.abspath(__file__)]
    cmd = [MPIEXEC, "-n", "2", "-env", "CMAMPI_NODE", "a", *prog, ":",
           "-n", "2", "-env", "CMAMPI_NODE", "b", *prog]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("nodes ok") == 4, out.stdout + out.stderr


# -- the program each rank runs ------------------------------------------------------------

def _count_reads(reads: collections.Counter) -> None:
    """Count CMA reads per target pid (instrumenting cmampi's only read calls)."""
    from cmampi import _cma

    for name in ("read_into", "readv"):
        real = getattr(_cma, name)

        def counted(pid, *args, _real=real, **kwargs):
            reads[pid] += 1
            return _real(pid, *args, **kwargs)

        setattr(_cma, name, counted)


def main() -> None:
    reads: collections.Counter = collections.Counter()
    _count_reads(reads)
    from cmampi import MPI

    world = MPI.COMM_WORLD
    rank, size = world.Get_rank(), world.Get_size()
    assert size == 4, "run with 4 ranks: 2 + 2"
    node = rank // 2
    engine = world._engine
    pids = engine.ch.pids
    for peer in range(size):
        if peer != rank:
            assert engine.cma[peer] == (peer // 2 == node), (rank, peer, engine.cma)
            assert world.transport(peer) == ("cma" if peer // 2 == node else "network")
    assert world.transport(rank) == "self"

    # Point to point, every ordered pair, sizes across every protocol switch
    # (a Sendrecv's send is pulled from the busy threshold on).
    for n in (0, 1, 5000, 70 << 10, 2 << 20, engine.cma_min_busy + 4096):
        for peer in range(size):
            if peer == rank:
                continue
            out = np.full(n, rank * 16 + peer, np.uint8)
            got = np.zeros(n, np.uint8)
            world.Sendrecv(out, peer, 3, got, peer, 3)
            assert (got == peer * 16 + rank).all(), (rank, peer, n)
    same = pids[rank ^ 1]
    others = [pids[p] for p in range(size) if p // 2 != node]
    assert reads[same] > 0, f"rank {rank} never pulled from its node peer"
    assert all(reads[p] == 0 for p in others), f"rank {rank} pulled across nodes: {reads}"

    # Collectives across nodes (the MPI library's own) and within a node (cmampi's).
    n = 2 << 20
    total = np.zeros(n)
    world.Allreduce(np.full(n, float(rank)), total, op=MPI.SUM)
    assert (total == sum(range(size))).all()
    buf = np.arange(n, dtype=np.float64) if rank == 3 else np.zeros(n)
    world.Bcast(buf, root=3)
    assert buf[-1] == n - 1
    every = np.zeros((size, 1000), np.int32)
    world.Allgather(np.full(1000, rank, np.int32), every)
    assert (every == np.arange(size)[:, None]).all()
    obj = world.bcast({"w": np.arange(n // 8)} if rank == 0 else None, root=0)
    assert obj["w"][-1] == n // 8 - 1
    assert world.allgather(rank) == list(range(size))

    local = world.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
    assert local.Get_size() == 2 and all(local._engine.cma)
    before = reads[same]
    part = np.zeros(n)
    local.Allreduce(np.full(n, float(rank)), part, op=MPI.SUM)
    assert (part == (2 * node) + (2 * node + 1)).all()
    assert reads[same] > before, "the node-local Allreduce did not pull"
    assert all(reads[p] == 0 for p in others)
    local.Free()
    world.Barrier()
    print(f"rank {rank}: nodes ok ({sum(reads.values())} reads, all within node {node})",
          flush=True)


if __name__ == "__main__":
    main()
