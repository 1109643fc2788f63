"""Benchmark for users without MPI: cmampi's socket channel against multiprocessing.Pipe.

Run with plain Python (not under mpiexec or cmampi's launcher)::

    python bench/nompi.py [--sizes 8,1k,16m] [--rounds 5] [--format table|csv|json]
        [--output FILE] [--skip-mpi] [--timeout SECONDS]

The script is its own driver: it starts up to two 2-rank jobs of itself and
reads back what their rank 0 wrote to a temporary JSON file.

1. ``python -m cmampi -n 2 bench/nompi.py --worker socket``: cmampi's socket
   channel, which needs no MPI. Rank 0 also measures the baseline a Python user
   without MPI reaches for, in the same run: a ``multiprocessing`` (fork)
   ``Pipe`` to an echo child, the parent sending the numpy array with
   ``conn.send`` and the child sending back what it received (as in
   ``anchors/mp_pipe.py``). Every round runs the Pipe block, then the cmampi
   block; rank 1 waits in a blocking ``comm.Barrier()`` during the Pipe block.
2. ``mpiexec -n 2 python bench/nompi.py --worker mpi``, only if mpi4py and an
   ``mpiexec`` (next to this Python, else on ``PATH``) are found: the same
   cmampi ping-pong on the MPI channel, for reference.

Each job ping-pongs numpy ``uint8`` arrays between ranks 0 and 1 with
``comm.Send``/``comm.Recv`` on warm (pre-touched, reused) buffers: rank 0
sends, rank 1 receives and echoes the received buffer back. Per size, after a
verified exchange and warm-up iterations, each implementation's iteration count
is calibrated so that its block takes about 50 ms (at least 5 iterations); then
``--rounds`` rounds are timed. Reported: the median over rounds of the one-way
time (round trip / 2) and the bandwidth it implies (GB/s = 1e9 B/s); the time
ratio socket / Pipe (< 1: cmampi faster) and the speed-up Pipe / socket; the
bandwidth ratio socket channel / MPI channel.

Correctness is checked, not assumed: CRC-32 of the received data once per size
and implementation (on both ranks for cmampi), the first and last byte after
every timed block (receive buffers are poisoned before it). Wrong data, an
exception, a non-zero worker exit or a timeout makes the driver report it and
exit non-zero.
"""

from __future__ import annotations

import argparse
import csv
import gc
import importlib.util
import io
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from benchlib import (DataError, format_size, markdown_table, parse_sizes, pattern,
                      pingpong, poison_ends, positive_int)

#: Message sizes (bytes), unless ``--sizes`` says otherwise.
DEFAULT_SIZES: Tuple[int, ...] = (8, 1 << 10, 64 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20)
DEFAULT_ROUNDS = 5
#: Longest a worker job may run before the driver ends it (seconds).
DEFAULT_TIMEOUT = 300.0
#: Target duration of one implementation's timed block in a round, in seconds.
BLOCK_TARGET_S = 0.05
#: Fewest iterations in a timed block.
MIN_ITERS = 5
#: Calibration doubles its iteration count until a block takes this long.
CALIBRATION_S = 0.01
#: Blocks at the final calibration count; the fastest one sets the block length.
CALIBRATION_TRIALS = 3
#: Untimed iterations per implementation before calibration.
WARMUP_ITERS = 3
#: Tag of the driver-to-follower control messages (iteration counts, decisions).
CTRL_TAG = 18
#: Implementations each job measures, in the order every round runs them.
JOB_IMPLS = {"socket": ("pipe", "cmampi"), "mpi": ("cmampi",)}
#: Grace period between SIGTERM and SIGKILL when a job is ended.
GRACE_S = 5.0
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.abspath(__file__)


# --------------------------------------------------------------------------------------
# Command line


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Ping-pong benchmark without MPI: cmampi's socket channel vs "
                    "multiprocessing.Pipe (and cmampi's MPI channel when MPI is there). "
                    "Run with plain python; it starts its own 2-rank jobs.")
    p.add_argument("--sizes", type=parse_sizes, default=list(DEFAULT_SIZES),
                   help="comma-separated message sizes, binary units "
                        "(default: 8,1k,64k,1m,4m,16m,64m)")
    p.add_argument("--rounds", type=positive_int, default=DEFAULT_ROUNDS,
                   help=f"interleaved rounds per size; the median is reported "
                        f"(default: {DEFAULT_ROUNDS})")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table",
                   help="output format (default: table)")
    p.add_argument("--output", metavar="FILE", help="also write the results to FILE")
    p.add_argument("--skip-mpi", action="store_true",
                   help="do not run the MPI-channel job even if MPI is available")
    p.add_argument("--timeout", type=positive_float, default=DEFAULT_TIMEOUT,
                   metavar="SECONDS",
                   help=f"end a worker job that runs longer (default: {DEFAULT_TIMEOUT:g})")
    # Internal: set by the driver on the command line of the jobs it starts.
    p.add_argument("--worker", choices=tuple(JOB_IMPLS), help=argparse.SUPPRESS)
    p.add_argument("--result", metavar="FILE", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------
# Helpers shared by the workers


def check_ends(impl: str, rank: int, got: Any, expected: np.ndarray) -> None:
    if not isinstance(got, np.ndarray) or got.dtype != np.uint8 or got.shape != expected.shape:
        raise DataError(f"{impl}, {format_size(expected.size)}, rank {rank}: received "
                        f"{type(got).__name__} {getattr(got, 'dtype', '')} "
                        f"{getattr(got, 'shape', '')}, expected uint8 {expected.shape}")
    for i in (0, expected.size - 1):
        if got[i] != expected[i]:
            raise DataError(f"{impl}, {format_size(expected.size)}, rank {rank}: "
                            f"byte {i} is {got[i]}, expected {expected[i]}")


def check_full(impl: str, rank: int, got: Any, expected: np.ndarray, crc: int) -> None:
    check_ends(impl, rank, got, expected)
    value = zlib.crc32(got)
    if value != crc:
        bad = np.flatnonzero(got != expected)
        first = f"; first wrong byte {bad[0]}: {got[bad[0]]}, expected {expected[bad[0]]}" \
            if bad.size else ""
        raise DataError(f"{impl}, {format_size(expected.size)}, rank {rank}: CRC-32 "
                        f"{value:#010x}, expected {crc:#010x}; {bad.size} of {expected.size} "
                        f"bytes wrong{first}")


def calibrate(run: Callable[[int], float], decide: Callable[[Optional[int]], int]) -> int:
    """Iterations so that a block of *run* takes about BLOCK_TARGET_S.

    Doubles a trial count until one block takes CALIBRATION_S, then takes the
    fastest of CALIBRATION_TRIALS blocks of that count, so one stall cannot
    shrink the blocks. *decide* makes every rank agree with rank 0: it gets
    rank 0's value (None on the other ranks) and returns rank 0's value.
    """
    n = 1
    while True:
        elapsed = run(n)
        if decide(int(elapsed >= CALIBRATION_S)):
            break
        n *= 2
    for _ in range(CALIBRATION_TRIALS - 1):
        elapsed = min(elapsed, run(n))
    return decide(max(MIN_ITERS, math.ceil(n * BLOCK_TARGET_S / elapsed)))


# --------------------------------------------------------------------------------------
# The multiprocessing.Pipe baseline (rank 0 of the socket job only)

def _echo(conn: Any, other: Any) -> None:
    """The Pipe child: send back every object received, until None or EOF."""
    other.close()                    # else the parent's death would never reach us as EOF
    while True:
        try:
            x = conn.recv()
        except EOFError:
            return
        if x is None:
            return
        conn.send(x)


class PipePeer:
    """A fork-context Pipe to an echo child process."""

    def __init__(self) -> None:
        import multiprocessing
        ctx = multiprocessing.get_context("fork")
        self.conn, child_end = ctx.Pipe()
        self.proc = ctx.Process(target=_echo, args=(child_end, self.conn), daemon=True,
                                name="nompi-pipe-echo")
        self.proc.start()
        child_end.close()

    def pingpong(self, sbuf: np.ndarray, iters: int) -> Tuple[float, Any]:
        """*iters* round trips; the elapsed time and the last array received back."""
        send, recv = self.conn.send, self.conn.recv
        got = None
        t0 = time.perf_counter()
        for _ in range(iters):
            send(sbuf)
            got = recv()
        return time.perf_counter() - t0, got

    def close(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


# --------------------------------------------------------------------------------------
# Worker: one rank of a 2-rank job



def size_case(comm: Any, rank: int, pipe: Optional[PipePeer], nbytes: int,
              rounds: int) -> Dict[str, Any]:
    """Benchmark one size; on rank 0, per implementation, per-round one-way times (s)."""
    expected = pattern(nbytes)       # rank 0 sends it; everyone checks against it
    crc = zlib.crc32(expected)
    rbuf = np.empty(nbytes, dtype=np.uint8)
    rbuf.fill(0)                     # warm: every page touched before any timing
    ctrl = np.zeros(1, dtype=np.int64)

    def decide(value: Optional[int]) -> int:
        """Rank 0's *value*, on both ranks."""
        if rank == 0:
            ctrl[0] = value
            comm.Send(ctrl, 1, CTRL_TAG)
        else:
            comm.Recv(ctrl, 0, CTRL_TAG)
        return int(ctrl[0])

    def alone(value: Optional[int]) -> int:
        return int(value)

    out: Dict[str, Any] = {"size_bytes": nbytes}
    pipe_iters = 0
    if pipe is not None:             # rank 0; rank 1 waits in the barrier below
        _, got = pipe.pingpong(expected, 1)
        check_full("Pipe", rank, got, expected, crc)
        pipe.pingpong(expected, WARMUP_ITERS)
        pipe_iters = calibrate(lambda n: pipe.pingpong(expected, n)[0], alone)
    comm.Barrier()
    pingpong(comm, rank, expected, rbuf, 1)
    check_full("cmampi", rank, rbuf, expected, crc)
    pingpong(comm, rank, expected, rbuf, WARMUP_ITERS)

    def run(n: int) -> float:
        comm.Barrier()
        return pingpong(comm, rank, expected, rbuf, n)

    iters = calibrate(run, decide)
    times: Dict[str, List[float]] = {"pipe": [], "cmampi": []}
    for _ in range(rounds):
        if pipe is not None:
            gc.collect()
            elapsed, got = pipe.pingpong(expected, pipe_iters)
            check_ends("Pipe", rank, got, expected)
            del got
            times["pipe"].append(elapsed / pipe_iters / 2)
        poison_ends(rbuf, expected)
        gc.collect()
        comm.Barrier()
        elapsed = pingpong(comm, rank, expected, rbuf, iters)
        check_ends("cmampi", rank, rbuf, expected)
        times["cmampi"].append(elapsed / iters / 2)
    out["cmampi"] = {"iters": iters, "rounds_s": times["cmampi"]}
    if pipe is not None:
        out["pipe"] = {"iters": pipe_iters, "rounds_s": times["pipe"]}
    return out


def worker_info(MPI: Any, channel: str) -> Dict[str, Any]:
    from cmampi._config import config
    info: Dict[str, Any] = {"channel": MPI.CHANNEL, "eager_limit": config.eager_limit,
                            "transport": config.transport}
    if channel == "mpi":
        import mpi4py
        info["mpi"] = " ".join(MPI.Get_library_version().splitlines()[0].split())
        info["mpi4py"] = mpi4py.__version__
    return info


def worker(args: argparse.Namespace) -> int:
    """One rank of a job the driver started: measure, rank 0 writes the JSON result."""
    from cmampi import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    pipe: Optional[PipePeer] = None
    try:
        if MPI.CHANNEL != args.worker or size != 2:
            raise RuntimeError(f"worker {args.worker!r} runs on the {MPI.CHANNEL} channel with "
                               f"{size} rank(s); expected the {args.worker} channel, 2 ranks")
        if rank == 0 and args.worker == "socket":
            pipe = PipePeer()        # forked before the large buffers exist
        results = [size_case(comm, rank, pipe, n, args.rounds) for n in args.sizes]
        if pipe is not None:
            pipe.close()
            pipe = None
        comm.Barrier()
        if rank == 0:
            doc = {"info": worker_info(MPI, args.worker), "rounds": args.rounds,
                   "results": results}
            with open(args.result, "w", encoding="utf-8") as f:
                json.dump(doc, f)
    except Exception:
        sys.stdout.flush()
        sys.stderr.write(f"nompi.py: {args.worker} job, rank {rank} failed:\n"
                         f"{traceback.format_exc()}")
        sys.stderr.flush()
        if pipe is not None:
            pipe.proc.kill()
        comm.Abort(1)
        return 1
    return 0


# --------------------------------------------------------------------------------------
# Driver

class JobError(RuntimeError):
    """A worker job failed: non-zero exit, timeout or no result."""


def find_mpiexec() -> Tuple[Optional[str], str]:
    """(mpiexec path, why not) for the MPI-channel job; the path is None if it cannot run."""
    if importlib.util.find_spec("mpi4py") is None:
        return None, "mpi4py not installed"
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    path = here if os.access(here, os.X_OK) else shutil.which("mpiexec")
    if path is None:
        return None, "no mpiexec next to python or on PATH"
    return path, ""


def job_environ(channel: str) -> Dict[str, str]:
    """The driver's environment, with cmampi importable and no stale rank variables."""
    env = dict(os.environ)
    for key in ("CMAMPI_RANK", "CMAMPI_SIZE", "CMAMPI_DIR", "CMAMPI_TOKEN",
                "CMAMPI_LAUNCHER_PID", "CMAMPI_CHANNEL"):
        env.pop(key, None)
    if channel == "mpi":
        env["CMAMPI_CHANNEL"] = "mpi"
    if ROOT in sys.path:             # put there by drive() if cmampi was not importable
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    return env


def run_job(channel: str, mpiexec: Optional[str], args: argparse.Namespace) -> Dict[str, Any]:
    """Run one 2-rank worker job; its result document. JobError if it fails."""
    fd, result = tempfile.mkstemp(prefix=f"nompi-{channel}-", suffix=".json")
    os.close(fd)
    worker_args = [SCRIPT, "--worker", channel, "--result", result,
                   "--sizes", ",".join(str(n) for n in args.sizes), "--rounds", str(args.rounds)]
    if channel == "socket":
        cmd = [sys.executable, "-m", "cmampi", "-n", "2", "--timeout", f"{args.timeout:g}",
               *worker_args]
    else:
        cmd = [mpiexec, "-n", "2", sys.executable, *worker_args]
    started = time.monotonic()
    try:
        # Its own session, so a timeout or Ctrl-C ends every process of the job (ranks,
        # the Pipe child) and nothing else. The ranks' stdout goes to our stderr:
        # our stdout carries the report only.
        proc = subprocess.Popen(cmd, env=job_environ(channel), stdin=subprocess.DEVNULL,
                                stdout=sys.stderr.fileno(), start_new_session=True)
        try:
            code = proc.wait(args.timeout)
        except subprocess.TimeoutExpired:
            end_job(proc)
            raise JobError(f"{channel} job exceeded the timeout of {args.timeout:g} s "
                           f"and was ended") from None
        except BaseException:
            end_job(proc)
            raise
        if code != 0:
            how = f"exit code {code}" if code > 0 else f"signal {-code}"
            raise JobError(f"{channel} job failed ({how}): {' '.join(cmd)}")
        try:
            with open(result, encoding="utf-8") as f:
                doc = json.load(f)
        except (OSError, ValueError) as exc:
            raise JobError(f"{channel} job exited 0 but left no result: {exc}") from None
    finally:
        os.unlink(result)
    doc["elapsed_s"] = time.monotonic() - started
    return doc


def end_job(proc: subprocess.Popen) -> None:
    """SIGTERM the job's process group, SIGKILL it after GRACE_S."""
    for signum, wait in ((signal.SIGTERM, GRACE_S), (signal.SIGKILL, GRACE_S)):
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        try:                         # the group may outlive its leader
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return


def validate(doc: Dict[str, Any], channel: str, args: argparse.Namespace) -> None:
    """A result document must hold every size and implementation asked for."""
    sizes = [r.get("size_bytes") for r in doc.get("results", [])]
    if sizes != list(args.sizes):
        raise JobError(f"{channel} job returned sizes {sizes}, expected {list(args.sizes)}")
    for r in doc["results"]:
        for impl in JOB_IMPLS[channel]:
            if len(r.get(impl, {}).get("rounds_s", [])) != args.rounds:
                raise JobError(f"{channel} job: {impl} at {format_size(r['size_bytes'])} "
                               f"has not {args.rounds} rounds")


# --------------------------------------------------------------------------------------
# Results and output

#: Columns: (key, implementation, channel job) of the three measured series.
SERIES = (("pipe", "pipe", "socket"), ("socket", "cmampi", "socket"), ("mpi", "cmampi", "mpi"))


def summarize(docs: Dict[str, Dict[str, Any]], sizes: List[int]) -> List[Dict[str, Any]]:
    """Per size: median/min/max one-way time (us), GB/s and iterations per series, ratios."""
    rows = []
    for i, nbytes in enumerate(sizes):
        row: Dict[str, Any] = {"size": format_size(nbytes), "size_bytes": nbytes}
        for key, impl, channel in SERIES:
            if channel not in docs:
                row[key] = None
                continue
            entry = docs[channel]["results"][i][impl]
            us = [t * 1e6 for t in entry["rounds_s"]]
            med = statistics.median(us)
            row[key] = {"median_us": med, "min_us": min(us), "max_us": max(us),
                        "gbps": nbytes / med / 1e3, "iters_per_round": entry["iters"],
                        "rounds_us": us}
        pipe, sock, mpi = row["pipe"], row["socket"], row["mpi"]
        row["socket_over_pipe_time"] = sock["median_us"] / pipe["median_us"]
        row["speedup_vs_pipe"] = pipe["median_us"] / sock["median_us"]
        row["socket_over_mpi_bw"] = sock["gbps"] / mpi["gbps"] if mpi else None
        rows.append(row)
    return rows


def machine_info(docs: Dict[str, Dict[str, Any]], mpi_note: str) -> Dict[str, Any]:
    import cmampi
    info: Dict[str, Any] = {
        "hostname": socket.gethostname(),
        "cpus": os.cpu_count(),
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "cmampi": cmampi.__version__,
        "eager_limit": docs["socket"]["info"]["eager_limit"],
        "transport": docs["socket"]["info"]["transport"],
        "mpi_job": "mpi" in docs,
    }
    if "mpi" in docs:
        info["mpi"] = docs["mpi"]["info"]["mpi"]
        info["mpi4py"] = docs["mpi"]["info"]["mpi4py"]
    else:
        info["mpi_job_skipped"] = mpi_note
    info["job_seconds"] = {k: round(d["elapsed_s"], 1) for k, d in docs.items()}
    return info


def _us(x: Optional[Dict[str, Any]]) -> str:
    return "-" if x is None else f"{x['median_us']:.2f}"


def _gbps(x: Optional[Dict[str, Any]]) -> str:
    if x is None:
        return "-"
    return f"{x['gbps']:.3f}" if x["gbps"] < 1 else f"{x['gbps']:.2f}"


def _ratio(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.2f}"


def render_table(info: Dict[str, Any], rounds: int, rows: List[Dict[str, Any]]) -> str:
    if info["mpi_job"]:
        mpi = f"MPI job: ran ({info['mpi']}, mpi4py {info['mpi4py']})"
    else:
        mpi = f"MPI job: not run ({info['mpi_job_skipped']})"
    out = [
        f"host {info['hostname']} | {info['cpus']} CPUs | kernel {info['kernel']} | "
        f"python {info['python']} | numpy {info['numpy']} | cmampi {info['cmampi']} "
        f"(eager limit {format_size(info['eager_limit'])}, transport {info['transport']}) | "
        f"{mpi}",
        "",
        f"Ping-pong of numpy uint8 arrays between 2 processes. One-way time = round trip / 2, "
        f"median of {rounds} rounds; GB/s = 1e9 B/s. Pipe: multiprocessing (fork) Pipe, "
        f"conn.send/recv to an echo child (pickled, a new array per message), measured in "
        f"the socket job, interleaved round by round with cmampi. socket / MPI ch.: cmampi Send/Recv under `python -m cmampi -n 2` "
        f"/ under mpiexec. sock/Pipe = socket time / Pipe time (< 1: cmampi faster); "
        f"speed-up = Pipe time / socket time; sock/MPI BW = socket GB/s / MPI-channel GB/s.",
        "",
    ]
    header = ["size", "Pipe us", "Pipe GB/s", "socket us", "socket GB/s", "sock/Pipe",
              "speed-up", "MPI ch. us", "MPI ch. GB/s", "sock/MPI BW"]
    cells = [[r["size"], _us(r["pipe"]), _gbps(r["pipe"]), _us(r["socket"]), _gbps(r["socket"]),
              _ratio(r["socket_over_pipe_time"]), _ratio(r["speedup_vs_pipe"]) + "x",
              _us(r["mpi"]), _gbps(r["mpi"]), _ratio(r["socket_over_mpi_bw"])] for r in rows]
    out += markdown_table(header, cells)
    out += ["", f"Iterations per block are calibrated to ~{BLOCK_TARGET_S * 1e3:.0f} ms "
                f"(at least {MIN_ITERS}); per-round min/max and iteration counts: --format csv "
                f"or json. Jobs took " + ", ".join(f"{k} {v} s" for k, v in
                                                   info["job_seconds"].items()) + "."]
    return "\n".join(out)


def render_csv(rows: List[Dict[str, Any]]) -> str:
    cols = ["size", "size_bytes"]
    for key, _, _ in SERIES:
        cols += [f"{key}_us", f"{key}_gbps", f"{key}_min_us", f"{key}_max_us", f"{key}_iters"]
    cols += ["socket_over_pipe_time", "speedup_vs_pipe", "socket_over_mpi_bw"]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(cols)
    for r in rows:
        cells: List[Any] = [r["size"], r["size_bytes"]]
        for key, _, _ in SERIES:
            s = r[key]
            cells += ["", "", "", "", ""] if s is None else [
                f"{s['median_us']:.3f}", f"{s['gbps']:.4f}", f"{s['min_us']:.3f}",
                f"{s['max_us']:.3f}", s["iters_per_round"]]
        cells += [f"{r['socket_over_pipe_time']:.4f}", f"{r['speedup_vs_pipe']:.4f}",
                  "" if r["socket_over_mpi_bw"] is None else f"{r['socket_over_mpi_bw']:.4f}"]
        writer.writerow(cells)
    return text.getvalue().rstrip("\n")


def render_json(info: Dict[str, Any], rounds: int, rows: List[Dict[str, Any]]) -> str:
    doc = {
        "machine": info,
        "method": {
            "rounds": rounds, "block_target_s": BLOCK_TARGET_S, "min_iters": MIN_ITERS,
            "statistic": "median over rounds", "one_way": "round trip / 2", "gb": 1e9,
            "pipe": "multiprocessing fork Pipe, conn.send/recv to an echo child, "
                    "in the socket job, interleaved with cmampi",
            "socket_over_pipe_time": "socket time / Pipe time (< 1: cmampi faster)",
            "speedup_vs_pipe": "Pipe time / socket time",
            "socket_over_mpi_bw": "socket-channel GB/s / MPI-channel GB/s",
        },
        "results": rows,
    }
    return json.dumps(doc, indent=2)


def drive(args: argparse.Namespace) -> int:
    """Run the jobs, print the report; the exit code."""
    for key in ("CMAMPI_RANK", "PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        if key in os.environ:
            print("nompi.py: run it with plain python (it starts its own 2-rank jobs), "
                  "not under mpiexec or python -m cmampi", file=sys.stderr)
            return 2
    if importlib.util.find_spec("cmampi") is None and os.path.isdir(os.path.join(ROOT, "cmampi")):
        sys.path.insert(0, ROOT)     # a source checkout: the jobs get it through PYTHONPATH
    mpiexec, mpi_note = (None, "--skip-mpi") if args.skip_mpi else find_mpiexec()
    jobs = ["socket"] + (["mpi"] if mpiexec else [])
    docs: Dict[str, Dict[str, Any]] = {}
    failed = False
    for channel in jobs:
        print(f"nompi.py: running the {channel} job ({len(args.sizes)} sizes, "
              f"{args.rounds} rounds)...", file=sys.stderr, flush=True)
        try:
            doc = run_job(channel, mpiexec, args)
            validate(doc, channel, args)
        except JobError as exc:
            print(f"nompi.py: {exc}", file=sys.stderr, flush=True)
            failed = True
            continue
        docs[channel] = doc
    if failed:
        print("nompi.py: a job failed; no report", file=sys.stderr)
        return 1
    rows = summarize(docs, args.sizes)
    info = machine_info(docs, mpi_note)
    if args.format == "csv":
        report = render_csv(rows)
    elif args.format == "json":
        report = render_json(info, args.rounds, rows)
    else:
        report = render_table(info, args.rounds, rows)
    print(report, flush=True)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(report + "\n")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        if not args.result:
            print("nompi.py: --worker needs --result", file=sys.stderr)
            return 2
        return worker(args)
    try:
        return drive(args)
    except KeyboardInterrupt:        # the running job was ended by run_job
        print("nompi.py: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
