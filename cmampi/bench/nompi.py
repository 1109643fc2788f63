"""Ping-pong without MPI: cmampi's socket channel against multiprocessing, and the MPI channel.

Run with plain Python (not under mpiexec or cmampi's launcher)::

    python -m cmampi.bench.nompi [--sizes 8,1k,16m] [--rounds 5] [--format table|csv|json]
        [--output FILE] [--skip-mpi] [--timeout SECONDS]

The script is a driver: it runs ``python -m cmampi.bench pingpong`` as up to two
2-rank jobs and puts their results side by side.

1. ``python -m cmampi -n 2 -m cmampi.bench pingpong``: cmampi's socket channel,
   which needs no MPI, interleaved in the same processes with the baseline a
   Python user without MPI reaches for, a ``multiprocessing`` Connection
   (``send_bytes``/``recv_bytes_into``) between the two ranks.
2. ``mpiexec -n 2 python -m cmampi.bench pingpong``, only if mpi4py and an
   ``mpiexec`` (next to this Python, else on ``PATH``) are found: the same
   cmampi ping-pong on the MPI channel, for reference.

The method (verification, warm-up, calibration, interleaved rounds, medians) is
the benchmark's own: see ``python -m cmampi.bench pingpong --help``. A failed
job, wrong data or a timeout makes the driver report it and exit non-zero.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from ._common import format_size, parse_sizes, positive_int
from ._report import emit, markdown_table

#: Where the cmampi package lives: the jobs import it from there too.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: Message sizes (bytes), unless ``--sizes`` says otherwise.
DEFAULT_SIZES: tuple[int, ...] = (8, 1 << 10, 64 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20)
DEFAULT_ROUNDS = 5
#: Longest a job may run before the driver ends it (seconds).
DEFAULT_TIMEOUT = 300.0
#: Grace period between SIGTERM and SIGKILL when a job is ended.
GRACE_S = 5.0
#: Columns: (key, implementation, channel job) of the three measured series.
SERIES = (("pipe", "pipe", "socket"), ("socket", "cmampi", "socket"), ("mpi", "cmampi", "mpi"))


class JobError(RuntimeError):
    """A job failed: non-zero exit, timeout or no result."""


def positive_float(text: str) -> float:
    value = float(text) if text.replace(".", "", 1).isdigit() else 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Ping-pong benchmark without MPI: cmampi's socket channel vs a "
                    "multiprocessing Connection (and cmampi's MPI channel when MPI is there). "
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
                   help=f"end a job that runs longer (default: {DEFAULT_TIMEOUT:g})")
    return p.parse_args(argv)


# -- jobs --------------------------------------------------------------------------------
def find_mpiexec() -> tuple[str | None, str]:
    """(mpiexec path, why not) for the MPI-channel job; the path is None if it cannot run."""
    if importlib.util.find_spec("mpi4py") is None:
        return None, "mpi4py not installed"
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    path = here if os.access(here, os.X_OK) else shutil.which("mpiexec")
    if path is None:
        return None, "no mpiexec next to python or on PATH"
    return path, ""


def job_environ(channel: str) -> dict[str, str]:
    """The driver's environment, with cmampi importable and no stale rank variables."""
    env = dict(os.environ)
    for key in ("CMAMPI_RANK", "CMAMPI_SIZE", "CMAMPI_DIR", "CMAMPI_TOKEN",
                "CMAMPI_LAUNCHER_PID", "CMAMPI_CHANNEL"):
        env.pop(key, None)
    if channel == "mpi":
        env["CMAMPI_CHANNEL"] = "mpi"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    return env


def end_job(proc: subprocess.Popen) -> None:
    """SIGTERM the job's process group, SIGKILL it after GRACE_S."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            return
        try:
            proc.wait(GRACE_S)
        except subprocess.TimeoutExpired:
            continue
        try:                         # the group may outlive its leader
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return


def run_job(channel: str, mpiexec: str | None, args: argparse.Namespace) -> dict[str, Any]:
    """Run one 2-rank benchmark job; its JSON report. JobError if it fails."""
    fd, result = tempfile.mkstemp(prefix=f"nompi-{channel}-", suffix=".json")
    os.close(fd)
    bench = ["-m", "cmampi.bench", "pingpong", "--skip-strided", "--format", "json",
             "--output", result, "--sizes", ",".join(str(n) for n in args.sizes),
             "--rounds", str(args.rounds)]
    if channel == "socket":
        cmd = [sys.executable, "-m", "cmampi", "-n", "2", "--timeout", f"{args.timeout:g}",
               *bench]
    else:
        assert mpiexec is not None      # the MPI job runs only when one was found
        cmd = [mpiexec, "-n", "2", sys.executable, *bench]
    started = time.monotonic()
    try:
        # Its own session, so a timeout or Ctrl-C ends every process of the job and
        # nothing else. The report comes through --output; stderr says what failed.
        proc = subprocess.Popen(cmd, env=job_environ(channel), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, start_new_session=True)
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


def validate(doc: dict[str, Any], channel: str, args: argparse.Namespace) -> None:
    """A report must hold every size asked for, with every series this job measures."""
    sizes = [r.get("size_bytes") for r in doc.get("results", [])]
    if sizes != list(args.sizes):
        raise JobError(f"{channel} job returned sizes {sizes}, expected {list(args.sizes)}")
    for r in doc["results"]:
        for _, impl, job in SERIES:
            if job == channel and len(r.get(impl, {}).get("rounds_us", [])) != args.rounds:
                raise JobError(f"{channel} job: {impl} at {format_size(r['size_bytes'])} "
                               f"has not {args.rounds} rounds")


# -- report ------------------------------------------------------------------------------
def summarize(docs: dict[str, dict[str, Any]], sizes: list[int]) -> list[dict[str, Any]]:
    """Per size: each series' entry of its job's report, and the ratios between them."""
    rows = []
    for i, nbytes in enumerate(sizes):
        row: dict[str, Any] = {"size": format_size(nbytes), "size_bytes": nbytes}
        for key, impl, channel in SERIES:
            row[key] = docs[channel]["results"][i][impl] if channel in docs else None
        pipe, sock, mpi = row["pipe"], row["socket"], row["mpi"]
        row["socket_over_pipe_time"] = sock["median_us"] / pipe["median_us"]
        row["speedup_vs_pipe"] = pipe["median_us"] / sock["median_us"]
        row["socket_over_mpi_bw"] = sock["gbps"] / mpi["gbps"] if mpi else None
        rows.append(row)
    return rows


def machine_info(docs: dict[str, dict[str, Any]], mpi_note: str) -> dict[str, Any]:
    info = dict(docs["socket"]["machine"])
    info["mpi_job"] = "mpi" in docs
    if "mpi" in docs:
        info["mpi"] = docs["mpi"]["machine"]["mpi"]
        info["mpi4py"] = docs["mpi"]["machine"]["mpi4py"]
    else:
        info["mpi_job_skipped"] = mpi_note
    info["job_seconds"] = {k: round(d["elapsed_s"], 1) for k, d in docs.items()}
    return info


def _us(x: dict[str, Any] | None) -> str:
    return "-" if x is None else f"{x['median_us']:.2f}"


def _gbps(x: dict[str, Any] | None) -> str:
    if x is None:
        return "-"
    return f"{x['gbps']:.3f}" if x["gbps"] < 1 else f"{x['gbps']:.2f}"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def render_table(info: dict[str, Any], rounds: int, rows: list[dict[str, Any]]) -> str:
    if info["mpi_job"]:
        mpi = f"MPI job: ran ({info['mpi']}, mpi4py {info['mpi4py']})"
    else:
        mpi = f"MPI job: not run ({info['mpi_job_skipped']})"
    out = [
        (f"host {info['hostname']} | {info['cpu']}, {info['cpus']} CPUs | kernel "
        f"{info['kernel']} | python {info['python']} | numpy {info['numpy']} | cmampi "
        f"{info['cmampi']} (eager limit {format_size(info['eager_limit'])}, transport "
        f"{info['transport']}) | {mpi}"),
        "",
        (f"Ping-pong of numpy uint8 arrays between 2 processes. One-way time = round trip / 2, "
        f"median of {rounds} rounds; GB/s = 1e9 B/s. Pipe: a multiprocessing Connection "
        f"(send_bytes/recv_bytes_into) between the ranks of the socket job, interleaved round "
        f"by round with cmampi. socket / MPI ch.: cmampi Send/Recv under `python -m cmampi "
        f"-n 2` / under mpiexec. sock/Pipe = socket time / Pipe time (< 1: cmampi faster); "
        f"speed-up = Pipe time / socket time; sock/MPI BW = socket GB/s / MPI-channel GB/s."),
        "",
    ]
    header = ["size", "Pipe us", "Pipe GB/s", "socket us", "socket GB/s", "sock/Pipe",
              "speed-up", "MPI ch. us", "MPI ch. GB/s", "sock/MPI BW"]
    cells = [[r["size"], _us(r["pipe"]), _gbps(r["pipe"]), _us(r["socket"]), _gbps(r["socket"]),
              _ratio(r["socket_over_pipe_time"]), _ratio(r["speedup_vs_pipe"]) + "x",
              _us(r["mpi"]), _gbps(r["mpi"]), _ratio(r["socket_over_mpi_bw"])] for r in rows]
    out += markdown_table(header, cells)
    out += ["", "Per-round times and iteration counts: --format csv or json. Jobs took " +
            ", ".join(f"{k} {v} s" for k, v in info["job_seconds"].items()) + "."]
    return "\n".join(out)


def render_csv(rows: list[dict[str, Any]]) -> str:
    cols = ["size", "size_bytes"]
    for key, _, _ in SERIES:
        cols += [f"{key}_us", f"{key}_gbps", f"{key}_min_us", f"{key}_max_us", f"{key}_iters"]
    cols += ["socket_over_pipe_time", "speedup_vs_pipe", "socket_over_mpi_bw"]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(cols)
    for r in rows:
        cells: list[Any] = [r["size"], r["size_bytes"]]
        for key, _, _ in SERIES:
            s = r[key]
            cells += ["", "", "", "", ""] if s is None else [
                f"{s['median_us']:.3f}", f"{s['gbps']:.4f}", f"{s['min_us']:.3f}",
                f"{s['max_us']:.3f}", s["iters_per_round"]]
        cells += [f"{r['socket_over_pipe_time']:.4f}", f"{r['speedup_vs_pipe']:.4f}",
                  "" if r["socket_over_mpi_bw"] is None else f"{r['socket_over_mpi_bw']:.4f}"]
        writer.writerow(cells)
    return text.getvalue().rstrip("\n")


def render_json(info: dict[str, Any], rounds: int, rows: list[dict[str, Any]]) -> str:
    doc = {
        "machine": info,
        "method": {
            "rounds": rounds, "statistic": "median over rounds", "one_way": "round trip / 2",
            "gb": 1e9,
            "pipe": "multiprocessing Connection send_bytes/recv_bytes_into between the ranks "
                    "of the socket job, interleaved with cmampi",
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
    mpiexec, mpi_note = (None, "--skip-mpi") if args.skip_mpi else find_mpiexec()
    docs: dict[str, dict[str, Any]] = {}
    failed = False
    for channel in ["socket"] + (["mpi"] if mpiexec else []):
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
    emit(report, args.output)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return drive(args)
    except KeyboardInterrupt:        # the running job was ended by run_job
        print("nompi.py: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
