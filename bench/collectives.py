"""Collectives benchmark: cmampi against plain mpi4py, same processes, same run.

Run under MPI with any number of ranks (2 is the meaningful case on 2 cores)::

    mpiexec -n 2 python bench/collectives.py [--sizes 1k,1m,16m,64m] [--rounds 5]
        [--only Allreduce,Bcast] [--format table|csv|json] [--output FILE]

For every collective and size (bytes of float64 per rank), the two
implementations run interleaved: each round times mpi4py, then cmampi, over the
same buffers, after a barrier on the raw communicator. Reported: the median
over rounds of the time per call, and ratio = mpi4py time / cmampi time
(> 1: cmampi faster). Results are checked against each other once per size.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Callable, Dict, List

import numpy as np

from benchlib import parse_sizes
from cmampi import MPI

COLLECTIVES = ["Allreduce", "Reduce", "Bcast", "Gather", "Allgather", "Scatter", "Alltoall",
               "Reduce_scatter_block", "Scan", "Barrier"]


def calls(comm, nbytes: int, name: str):
    """(run, result) for one collective on *comm*, buffers allocated and touched."""
    size, rank = comm.Get_size(), comm.Get_rank()
    n = max(1, nbytes // 8)
    rng = np.random.default_rng(rank)
    a = rng.random(n * (size if name in ("Alltoall", "Reduce_scatter_block") else 1))
    many = np.zeros(n * size)
    one = np.zeros(n)
    table: Dict[str, Callable[[], None]] = {
        "Allreduce": lambda: comm.Allreduce(a, one),
        "Reduce": lambda: comm.Reduce(a, one, root=0),
        "Bcast": lambda: comm.Bcast(one, root=0),
        "Gather": lambda: comm.Gather(a, many, root=0),
        "Allgather": lambda: comm.Allgather(a, many),
        "Scatter": lambda: comm.Scatter(many, one, root=0),
        "Alltoall": lambda: comm.Alltoall(a, many),
        "Reduce_scatter_block": lambda: comm.Reduce_scatter_block(a, one),
        "Scan": lambda: comm.Scan(a, one),
        "Barrier": lambda: comm.Barrier(),
    }
    if name == "Bcast" and rank == 0:
        one[:] = a[:n]
    if name == "Scatter" and rank == 0:
        many[:] = rng.random(n * size)
    result = many if name in ("Gather", "Allgather", "Alltoall") else one
    return table[name], result


def measure(run, raw, reps: int) -> float:
    raw.Barrier()
    t = time.perf_counter()
    for _ in range(reps):
        run()
    return (time.perf_counter() - t) / reps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1k,64k,1m,16m,64m")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", default=",".join(COLLECTIVES))
    ap.add_argument("--format", choices=("table", "csv", "json"), default="table")
    ap.add_argument("--output")
    args = ap.parse_args(argv)
    comm = MPI.COMM_WORLD
    if MPI.CHANNEL != "mpi":
        print("run under mpiexec: the comparison needs mpi4py", file=sys.stderr)
        return 2
    raw = comm.comm
    rank = comm.Get_rank()
    sizes = parse_sizes(args.sizes)
    rows: List[dict] = []
    for name in args.only.split(","):
        for nbytes in sizes if name != "Barrier" else [0]:
            c_run, c_res = calls(comm, nbytes, name)
            m_run, m_res = calls(raw, nbytes, name)
            c_run()
            m_run()
            if rank == 0 or name in ("Allreduce", "Allgather", "Alltoall", "Scan"):
                if not np.allclose(c_res, m_res):
                    raise SystemExit(f"rank {rank}: {name} {nbytes}: results differ")
            reps = max(3, min(2000, (1 << 27) // max(nbytes, 1 << 10) // 2))
            times = {"mpi4py": [], "cmampi": []}
            for _ in range(args.rounds):
                times["mpi4py"].append(measure(m_run, raw, reps))
                times["cmampi"].append(measure(c_run, raw, reps))
            m, c = statistics.median(times["mpi4py"]), statistics.median(times["cmampi"])
            rows.append({"collective": name, "bytes": nbytes, "mpi4py_us": m * 1e6,
                         "cmampi_us": c * 1e6, "ratio": m / c})
            if rank == 0 and args.format == "table":
                print(f"| {name:20s} | {nbytes:>9} | {m * 1e6:10.1f} | {c * 1e6:10.1f} | "
                      f"{m / c:5.2f} |", flush=True)
    if rank == 0:
        if args.format == "json":
            text = json.dumps(rows, indent=1)
        elif args.format == "csv":
            text = "collective,bytes,mpi4py_us,cmampi_us,ratio\n" + "\n".join(
                f"{r['collective']},{r['bytes']},{r['mpi4py_us']:.2f},{r['cmampi_us']:.2f},"
                f"{r['ratio']:.3f}" for r in rows)
        else:
            head = (f"{comm.Get_size()} ranks, {os.uname().release}, "
                    f"{MPI.Get_library_version().splitlines()[0]}, numpy {np.__version__}\n"
                    "| collective | bytes/rank | mpi4py us | cmampi us | ratio |\n"
                    "|---|---:|---:|---:|---:|\n")
            text = head + "\n".join(
                f"| {r['collective']} | {r['bytes']} | {r['mpi4py_us']:.1f} | "
                f"{r['cmampi_us']:.1f} | {r['ratio']:.2f} |" for r in rows)
        if args.format != "table":
            print(text)
        if args.output:
            with open(args.output, "w") as f:
                f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
