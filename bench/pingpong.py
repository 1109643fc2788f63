"""Point-to-point benchmark: cmampi against plain mpi4py, same processes, same run.

Run with exactly two ranks::

    mpiexec -n 2 python bench/pingpong.py [--sizes 8,1k,1m] [--rounds 7]
        [--format table|csv|json] [--output FILE] [--skip-strided]

``from cmampi import MPI`` gives ``MPI.COMM_WORLD``, the cmampi communicator;
its ``.comm`` is the plain mpi4py communicator it wraps. Both implementations
run in the same two processes, on the same (pre-touched) buffers.

Part 1, contiguous ping-pong of numpy ``uint8`` arrays. Rank 0 sends, rank 1
receives and echoes the received buffer back. For every size the two
implementations are interleaved in ``--rounds`` rounds; each round runs
mpi4py, then cmampi, each for the same number of iterations, chosen by a
calibration run so that a round takes about 50 ms (at least 5 iterations).
Every timed block is preceded by a barrier on the raw communicator. Reported:
the median over rounds of the one-way time (round-trip / 2), the bandwidth
it implies (bytes / one-way time, GB/s = 1e9 B/s) and the ratio
``mpi4py time / cmampi time`` (> 1 means cmampi is faster).

Part 2, strided: a 4096 x 4096 float64 matrix ``A`` on rank 0; the message
is every other column, ``A[:, ::2]`` (64 MiB), received into every other
column of ``B[:, ::2]`` on rank 1. cmampi sends and receives the views
directly. The mpi4py baseline is what a careful user writes: the sender packs
with ``np.ascontiguousarray`` (inside the timing: it is part of the cost),
the receiver receives into a contiguous temporary allocated once outside the
timing and unpacks with ``B[:, ::2] = tmp`` (inside the timing). Each
iteration is the transfer rank 0 -> rank 1 followed by a zero-byte reply that
closes it, so the reported one-way time is the full iteration time (the reply
adds one small-message latency, negligible next to a 64 MiB transfer).

Correctness is checked, not assumed: in Part 1 the receive buffers are cleared
and a CRC-32 of the received data is compared once per size and implementation
on both ranks, and the first and last byte are checked after every timed
block; in Part 2 ``B[:, ::2]`` is reset before and compared in full after every
timed block, and ``B[:, 1::2]`` must keep its sentinel. Any error (wrong data
or an exception) aborts the job with a message naming rank, implementation
and case.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import gc
import json
import math
import os
import socket
import statistics
import sys
import time
import traceback
import zlib
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from benchlib import (DataError, format_size, markdown_table, parse_sizes, pattern,
                      TAG, pingpong, poison_ends, positive_int)

#: Message sizes of Part 1 (bytes), unless ``--sizes`` says otherwise.
DEFAULT_SIZES: Tuple[int, ...] = (
    8, 1 << 10, 16 << 10, 32 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20,
)
DEFAULT_ROUNDS = 7
#: Target duration of one round (both implementations), in seconds.
ROUND_TARGET_S = 0.05
#: Fewest iterations per implementation in a round.
MIN_ITERS = 5
#: Calibration doubles its iteration count until a run of both takes this long.
CALIBRATION_S = 0.01
#: Runs at the final calibration count; the fastest one sets the round length.
CALIBRATION_TRIALS = 3
#: Untimed iterations per implementation before calibration.
WARMUP_ITERS = 3
#: Implementations in the order each round runs them.
IMPLS: Tuple[str, ...] = ("mpi4py", "cmampi")
#: Part 2: order of the square float64 matrix and the value of the untouched columns.
STRIDED_N = 4096
SENTINEL = -1.0
STRIDED_CASE = f"{STRIDED_N}x{STRIDED_N} float64, A[:, ::2] -> B[:, ::2]"


# --------------------------------------------------------------------------------------
# Results

@dataclasses.dataclass
class Result:
    """Per-round one-way times (seconds) of both implementations for one case."""

    case: str
    nbytes: int
    iters: int
    times: Dict[str, List[float]]

    def median(self, impl: str) -> float:
        return statistics.median(self.times[impl])

    def gbps(self, impl: str) -> float:
        return self.nbytes / self.median(impl) / 1e9

    @property
    def ratio(self) -> float:
        """mpi4py time / cmampi time: above 1 when cmampi is faster."""
        return self.median("mpi4py") / self.median("cmampi")

    def as_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"case": self.case, "size_bytes": self.nbytes,
                               "iters_per_round": self.iters, "rounds": len(self.times[IMPLS[0]])}
        for impl in IMPLS:
            us = [t * 1e6 for t in self.times[impl]]
            out[impl] = {"median_us": self.median(impl) * 1e6, "min_us": min(us),
                         "max_us": max(us), "gbps": self.gbps(impl), "rounds_us": us}
        out["ratio"] = self.ratio
        return out


# --------------------------------------------------------------------------------------
# Command line

class _Parser(argparse.ArgumentParser):
    """An argument parser that prints (usage, errors, help) on one rank only."""

    def __init__(self, *args: Any, silent: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.silent = silent

    def _print_message(self, message: str, file: Any = None) -> None:
        if not self.silent:
            super()._print_message(message, file)


def parse_args(argv: Optional[Sequence[str]], silent: bool) -> argparse.Namespace:
    p = _Parser(description="Ping-pong benchmark: cmampi vs plain mpi4py "
                            "(run with mpiexec -n 2).", silent=silent)
    p.add_argument("--sizes", type=parse_sizes, default=list(DEFAULT_SIZES),
                   help="comma-separated message sizes, binary units (default: "
                        "8,1k,16k,32k,64k,256k,1m,4m,16m,64m)")
    p.add_argument("--rounds", type=positive_int, default=DEFAULT_ROUNDS,
                   help=f"interleaved rounds per case; the median is reported "
                        f"(default: {DEFAULT_ROUNDS})")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table",
                   help="output format (default: table)")
    p.add_argument("--output", metavar="FILE",
                   help="also write the results to FILE")
    p.add_argument("--skip-strided", action="store_true",
                   help="skip Part 2, the strided-column transfer")
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------
# Helpers


def machine_info(MPI: Any) -> Dict[str, Any]:
    import mpi4py
    import cmampi
    from cmampi._config import config
    return {
        "hostname": socket.gethostname(),
        "cpus": os.cpu_count(),
        "kernel": os.uname().release,
        "mpi": " ".join(MPI.Get_library_version().splitlines()[0].split()),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "mpi4py": mpi4py.__version__,
        "cmampi": cmampi.__version__,
        "eager_limit": config.eager_limit,
        "transport": config.transport,
        "cma_min": MPI.COMM_WORLD._engine.cma_min,
        "coop_min": config.coop_min,
    }


def calibrate(raw: Any, run_both: Callable[[int], float]) -> int:
    """Iterations per implementation so that a round (both) takes ~ROUND_TARGET_S.

    Doubles a trial count until one run of both implementations takes
    CALIBRATION_S on rank 0, then takes the fastest of CALIBRATION_TRIALS runs
    of that count, so one stall cannot shrink the rounds. Rank 0 decides and
    broadcasts, so both ranks agree.
    """
    n = 1
    while True:
        raw.Barrier()
        elapsed = run_both(n)
        if raw.bcast(elapsed >= CALIBRATION_S, root=0):
            break
        n *= 2
    for _ in range(CALIBRATION_TRIALS - 1):
        raw.Barrier()
        elapsed = min(elapsed, run_both(n))
    iters = max(MIN_ITERS, math.ceil(n * ROUND_TARGET_S / elapsed))
    return raw.bcast(iters, root=0)


# --------------------------------------------------------------------------------------
# Part 1: contiguous ping-pong




def check_ends(impl: str, rank: int, rbuf: np.ndarray, expected: np.ndarray) -> None:
    for i in (0, rbuf.size - 1):
        if rbuf[i] != expected[i]:
            raise DataError(f"{impl}, {format_size(rbuf.size)} ping-pong, rank {rank}: "
                            f"byte {i} is {rbuf[i]}, expected {expected[i]}")


def check_full(impl: str, rank: int, rbuf: np.ndarray, expected: np.ndarray,
               crc: int) -> None:
    got = zlib.crc32(rbuf)
    if got != crc:
        bad = np.flatnonzero(rbuf != expected)
        first = f"; first wrong byte {bad[0]}: {rbuf[bad[0]]}, expected {expected[bad[0]]}" \
            if bad.size else ""
        raise DataError(f"{impl}, {format_size(rbuf.size)} ping-pong, rank {rank}: CRC-32 "
                        f"{got:#010x}, expected {crc:#010x}; {bad.size} of {rbuf.size} "
                        f"bytes wrong{first}")


def contiguous_case(comms: Dict[str, Any], raw: Any, rank: int, nbytes: int,
                    rounds: int) -> Result:
    """Benchmark one message size; the times are rank 0's (rank 1's are discarded)."""
    expected = pattern(nbytes)       # rank 0 sends it; both ranks check against it
    crc = zlib.crc32(expected)
    rbuf = np.empty(nbytes, dtype=np.uint8)
    for impl, c in comms.items():    # verified exchange into a cleared buffer, warm-up
        rbuf.fill(0)
        raw.Barrier()
        pingpong(c, rank, expected, rbuf, 1)
        check_full(impl, rank, rbuf, expected, crc)
        pingpong(c, rank, expected, rbuf, WARMUP_ITERS)

    def run_both(n: int) -> float:
        return sum(pingpong(c, rank, expected, rbuf, n) for c in comms.values())

    iters = calibrate(raw, run_both)
    times: Dict[str, List[float]] = {impl: [] for impl in comms}
    for _ in range(rounds):
        for impl, c in comms.items():
            poison_ends(rbuf, expected)
            gc.collect()
            raw.Barrier()
            elapsed = pingpong(c, rank, expected, rbuf, iters)
            check_ends(impl, rank, rbuf, expected)
            times[impl].append(elapsed / iters / 2)
    return Result(format_size(nbytes), nbytes, iters, times)


# --------------------------------------------------------------------------------------
# Part 2: strided columns

@dataclasses.dataclass
class StridedBuffers:
    """Rank 0 holds ``src``; rank 1 holds ``B``, ``dst`` = B[:, ::2], ``tmp`` and ``expected``."""

    empty: np.ndarray
    src: Optional[np.ndarray] = None
    B: Optional[np.ndarray] = None
    dst: Optional[np.ndarray] = None
    tmp: Optional[np.ndarray] = None
    expected: Optional[np.ndarray] = None


def strided_buffers(rank: int) -> StridedBuffers:
    n = STRIDED_N
    bufs = StridedBuffers(empty=np.empty(0, dtype=np.uint8))
    if rank == 0:
        A = np.arange(n * n, dtype=np.float64).reshape(n, n)   # A[i, j] = i*n + j
        bufs.src = A[:, ::2]
    else:
        bufs.B = np.full((n, n), SENTINEL)
        bufs.dst = bufs.B[:, ::2]
        bufs.tmp = np.zeros(bufs.dst.shape)                    # once, outside timing
        bufs.expected = np.add.outer(np.arange(n, dtype=np.float64) * n,
                                     np.arange(0, n, 2, dtype=np.float64))
    return bufs


def strided_transfer(impl: str, c: Any, rank: int, b: StridedBuffers, iters: int) -> float:
    """*iters* transfers rank 0 -> rank 1 of A[:, ::2] into B[:, ::2], each closed by a
    zero-byte reply; returns the elapsed time."""
    t0 = time.perf_counter()
    if rank == 0:
        for _ in range(iters):
            if impl == "mpi4py":
                c.Send(np.ascontiguousarray(b.src), 1, TAG)
            else:
                c.Send(b.src, 1, TAG)
            c.Recv(b.empty, 1, TAG)
    else:
        for _ in range(iters):
            if impl == "mpi4py":
                c.Recv(b.tmp, 0, TAG)
                b.dst[...] = b.tmp
            else:
                c.Recv(b.dst, 0, TAG)
            c.Send(b.empty, 0, TAG)
    return time.perf_counter() - t0


def check_strided(impl: str, rank: int, b: StridedBuffers) -> None:
    """On rank 1: B[:, ::2] must equal A[:, ::2] and B[:, 1::2] must keep its sentinel."""
    if rank != 1:
        return
    where = f"{impl}, strided A[:, ::2] -> B[:, ::2], rank 1"
    if not np.array_equal(b.dst, b.expected):
        bad = np.argwhere(b.dst != b.expected)
        i, j = bad[0]
        raise DataError(f"{where}: {len(bad)} of {b.dst.size} received elements wrong; first "
                        f"B[{i}, {2 * j}] = {float(b.dst[i, j])}, "
                        f"expected {float(b.expected[i, j])}")
    holes = b.B[:, 1::2]
    if not (holes == SENTINEL).all():
        bad = np.argwhere(holes != SENTINEL)
        i, j = bad[0]
        raise DataError(f"{where}: {len(bad)} elements of B[:, 1::2] overwritten; first "
                        f"B[{i}, {2 * j + 1}] = {float(holes[i, j])}, expected {SENTINEL}")


def reset_strided(rank: int, b: StridedBuffers) -> None:
    if rank == 1:
        b.dst[...] = 0.0


def strided_case(comms: Dict[str, Any], raw: Any, rank: int, rounds: int) -> Result:
    b = strided_buffers(rank)
    for impl, c in comms.items():    # verified first transfer, then warm-up
        reset_strided(rank, b)
        raw.Barrier()
        strided_transfer(impl, c, rank, b, 1)
        check_strided(impl, rank, b)
        strided_transfer(impl, c, rank, b, 1)

    def run_both(n: int) -> float:
        return sum(strided_transfer(impl, c, rank, b, n) for impl, c in comms.items())

    iters = calibrate(raw, run_both)
    times: Dict[str, List[float]] = {impl: [] for impl in comms}
    for _ in range(rounds):
        for impl, c in comms.items():
            reset_strided(rank, b)
            gc.collect()
            raw.Barrier()
            elapsed = strided_transfer(impl, c, rank, b, iters)
            check_strided(impl, rank, b)
            times[impl].append(elapsed / iters)
    nbytes = STRIDED_N * (STRIDED_N // 2) * 8
    return Result(STRIDED_CASE, nbytes, iters, times)


# --------------------------------------------------------------------------------------
# Output

def _num(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"


def _gbps(x: float) -> str:
    return f"{x:.3f}" if x < 1 else f"{x:.2f}"


def _row(r: Result, first: str) -> List[str]:
    return [first, _num(r.median("mpi4py") * 1e6), _gbps(r.gbps("mpi4py")),
            _num(r.median("cmampi") * 1e6), _gbps(r.gbps("cmampi")), _num(r.ratio)]


def render_table(info: Dict[str, Any], rounds: int, part1: List[Result],
                 part2: Optional[Result]) -> str:
    cols = ["mpi4py us", "mpi4py GB/s", "cmampi us", "cmampi GB/s", "ratio"]
    out = [
        f"host {info['hostname']} | {info['cpus']} CPUs | kernel {info['kernel']} | "
        f"{info['mpi']} | numpy {info['numpy']} | mpi4py {info['mpi4py']} | "
        f"python {info['python']} | cmampi {info['cmampi']} (eager limit "
        f"{format_size(info['eager_limit'])}, transport {info['transport']})",
        "",
        f"Part 1: contiguous ping-pong, numpy uint8, 2 ranks. One-way time = round trip / 2, "
        f"median of {rounds} rounds (mpi4py and cmampi interleaved in each round); "
        f"GB/s = 1e9 B/s; ratio = mpi4py time / cmampi time (> 1: cmampi faster).",
        "",
    ]
    out += markdown_table(["size"] + cols, [_row(r, r.case) for r in part1])
    large = ("pulled by the receiver with process_vm_readv, the sender copying part "
             f"itself from {format_size(info['coop_min'])} on" if info["transport"] == "cma"
             else "copied through a separate MPI payload message")
    out += ["", f"cmampi sends messages below {format_size(info['cma_min'])} as themselves "
                f"through MPI; from {format_size(info['cma_min'])} on they are {large} "
                f"({info['transport']} transport). Iterations per round are calibrated "
                f"to ~{ROUND_TARGET_S * 1e3:.0f} ms a round (at least {MIN_ITERS}); per-round "
                f"min/max and iteration counts: --format csv or json."]
    if part2 is not None:
        out += [
            "",
            f"Part 2: strided, {STRIDED_N}x{STRIDED_N} float64, every other column "
            f"A[:, ::2] -> B[:, ::2] ({format_size(part2.nbytes)}), median of {rounds} rounds of "
            f"{part2.iters} transfers. One-way time = transfer rank 0 -> 1 plus a zero-byte "
            f"reply. cmampi sends/receives the views; mpi4py: np.ascontiguousarray on the "
            f"sender + Send/Recv + B[:, ::2] = tmp on the receiver (tmp allocated once).",
            "",
        ]
        out += markdown_table(["case"] + cols, [_row(part2, part2.case)])
    return "\n".join(out)


def render_csv(part1: List[Result], part2: Optional[Result]) -> str:
    cols = ["part", "case", "size_bytes", "iters_per_round", "rounds"]
    for impl in IMPLS:
        cols += [f"{impl}_us", f"{impl}_gbps", f"{impl}_min_us", f"{impl}_max_us"]
    cols.append("ratio")
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(cols)
    for part, r in [("contiguous", r) for r in part1] + ([("strided", part2)] if part2 else []):
        d = r.as_dict()
        cells = [part, r.case, r.nbytes, r.iters, d["rounds"]]
        for impl in IMPLS:
            s = d[impl]
            cells += [f"{s['median_us']:.3f}", f"{s['gbps']:.4f}", f"{s['min_us']:.3f}",
                      f"{s['max_us']:.3f}"]
        cells.append(f"{r.ratio:.4f}")
        writer.writerow(cells)
    return text.getvalue().rstrip("\n")


def render_json(info: Dict[str, Any], rounds: int, part1: List[Result],
                part2: Optional[Result]) -> str:
    doc = {
        "machine": info,
        "method": {
            "rounds": rounds, "round_target_s": ROUND_TARGET_S, "min_iters": MIN_ITERS,
            "statistic": "median over rounds", "gb": 1e9,
            "contiguous_one_way": "round trip / 2",
            "strided_one_way": "transfer rank 0 -> 1 plus zero-byte reply",
            "ratio": "mpi4py time / cmampi time (> 1: cmampi faster)",
        },
        "contiguous": [r.as_dict() for r in part1],
        "strided": part2.as_dict() if part2 is not None else None,
    }
    return json.dumps(doc, indent=2)


# --------------------------------------------------------------------------------------
# Main

def run(args: argparse.Namespace, MPI: Any, comm: Any, raw: Any) -> Optional[str]:
    """Run both parts; rank 0 returns the rendered report, rank 1 None."""
    rank = raw.Get_rank()
    comms = {"mpi4py": raw, "cmampi": comm}
    info = machine_info(MPI)
    part1 = [contiguous_case(comms, raw, rank, n, args.rounds) for n in args.sizes]
    part2 = None if args.skip_strided else strided_case(comms, raw, rank, args.rounds)
    raw.Barrier()
    if rank != 0:
        return None
    if args.format == "csv":
        return render_csv(part1, part2)
    if args.format == "json":
        return render_json(info, args.rounds, part1, part2)
    return render_table(info, args.rounds, part1, part2)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from cmampi import MPI

    comm = MPI.COMM_WORLD
    raw = comm.comm
    rank, size = raw.Get_rank(), raw.Get_size()
    args = parse_args(argv, silent=rank != 0)
    if size != 2:
        if rank == 0:
            print(f"pingpong.py: needs exactly 2 ranks, got {size} "
                  f"(run: mpiexec -n 2 python bench/pingpong.py)", file=sys.stderr)
        return 2
    try:
        report = run(args, MPI, comm, raw)
    except Exception:
        sys.stdout.flush()
        sys.stderr.write(f"pingpong.py: rank {rank} failed:\n{traceback.format_exc()}")
        sys.stderr.flush()
        raw.Abort(1)
        return 1
    if report is not None:
        print(report, flush=True)
        if args.output:
            with open(args.output, "w", encoding="utf-8") as f:
                f.write(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
