"""The memory-traffic floor of a 2-rank Allreduce/Reduce on this machine.

``python -m cmampi.bench.memory_floor [--sizes 16m,64m] [--piece 512k]``

Two processes, started together, each do the work one rank of cmampi's
slice-parallel Allreduce must do, with no communication at all: for its half of
the vector, in pieces that stay in cache, copy the "peer's" piece (a local
array standing in for the pulled one), add it to its own input into its
result, and copy the sum into a second array (standing in for the peer's
result, which the rank pushes). Whatever an implementation does, it reads both
inputs and writes both results, so no Allreduce on these two cores can beat
this time by much; dividing mpi4py's time by it bounds the ratio any
implementation can reach. (A Reduce moves the same bytes, minus nothing: its
root's result is as large.) Median of 9 runs; the slower process counts.
"""

from __future__ import annotations

import argparse
import multiprocessing as _mp
import time
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from multiprocessing.queues import Queue


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower()
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def _rank_work(nbytes: int, piece: int, start, out) -> None:
    n = nbytes // 8
    half, per = n // 2, max(1, piece // 8)
    mine, other = np.ones(n), np.full(n, 2.0)
    result, pushed = np.zeros(n), np.zeros(n)
    stage = np.empty(per)
    times = []
    for _ in range(9):
        start.wait()
        t0 = time.perf_counter()
        for o in range(0, half, per):
            e = min(o + per, half)
            np.copyto(stage[: e - o], other[o:e])                # the pull
            np.add(mine[o:e], stage[: e - o], out=result[o:e])   # reduce while in cache
            np.copyto(pushed[o:e], result[o:e])                  # the push
        times.append(time.perf_counter() - t0)
        start.wait()
    out.put(sorted(times)[len(times) // 2])


def floor(nbytes: int, piece: int) -> float:
    """Seconds: the median time of one rank's share, two ranks at once."""
    start = _mp.Barrier(2)
    out: Queue[float] = _mp.Queue()      # each process's median time
    procs = [_mp.Process(target=_rank_work, args=(nbytes, piece, start, out))
             for _ in range(2)]
    for p in procs:
        p.start()
    times = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return max(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="4m,16m,64m", help="vector sizes in bytes (float64)")
    ap.add_argument("--piece", default="512k", help="bytes per piece (cmampi._tuning.PIECE)")
    args = ap.parse_args()
    piece = _size(args.piece)
    print("| size | floor ms |")
    print("|-----:|---------:|")
    for text in args.sizes.split(","):
        print(f"| {text} | {floor(_size(text), piece) * 1e3:.2f} |")


if __name__ == "__main__":
    main()
