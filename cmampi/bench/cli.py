"""The command line: ``python -m cmampi.bench SUBCOMMAND [options]`` on 2 ranks.

Run it under ``mpiexec -n 2`` (MPI channel: cmampi against plain mpi4py in the
same processes) or ``python -m cmampi -n 2`` (socket channel, no MPI: cmampi
against a ``multiprocessing`` Connection). Only rank 0 prints.
"""

from __future__ import annotations

import argparse as _argparse
import contextlib as _contextlib
import io as _io
import os as _os
import sys as _sys
import time as _time
import traceback as _traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from . import bandwidth, collectives, lowercase, objects, patterns, pingpong
from ._common import CMAMPI, SOCKET, Context, Result, Timing, parse_sizes, positive_int
from ._pipe import PipeComm, connect
from ._report import emit, machine_info, render
from .plot import available, plot

__all__ = ["BENCHMARKS", "main", "parse_args"]

if TYPE_CHECKING:
    from ._common import Case

    class _Benchmark(Protocol):
        """A benchmark module (`pingpong`, ...): its docstring, its cases, their description."""

        __doc__: str

        def plan(self, ctx: Context) -> list[Case]: ...

        def describe(self, ctx: Context) -> str: ...


#: Subcommands, in the order ``all`` runs them.
BENCHMARKS: dict[str, _Benchmark] = {
    "pingpong": pingpong, "bandwidth": bandwidth, "patterns": patterns,
    "collectives": collectives, "objects": objects, "lowercase": lowercase}
PROG = "python -m cmampi.bench"
#: --quick: sizes (unless --sizes), rounds (unless --rounds), fixed iterations per
#: block (unless --reps): no calibration, few synchronisations.
QUICK_SIZES = (8, 1 << 20)   # inline and pulled, on either channel
QUICK = {"rounds": 2, "reps": 2, "warmup_iters": 1}
#: On a terminal, the progress bar appears once a run has taken this long.
PROGRESS_DELAY_S = 2.0


# -- command line ------------------------------------------------------------------------
def _collectives(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [n for n in names if n not in collectives.COLLECTIVES]
    if bad or not names:
        raise _argparse.ArgumentTypeError(
            f"unknown collective(s) {', '.join(bad) or text!r}: choose from "
            f"{','.join(collectives.COLLECTIVES)}")
    return names


def _parser() -> _argparse.ArgumentParser:
    common = _argparse.ArgumentParser(add_help=False)
    common.add_argument("--sizes", type=parse_sizes, metavar="LIST",
                        help="comma-separated message sizes, binary units, e.g. "
                             "8,1k,64k,1m,16m (default: per benchmark)")
    common.add_argument("--rounds", type=positive_int, metavar="N",
                        help=f"interleaved rounds per case; the median is reported "
                             f"(default: {Timing.rounds})")
    common.add_argument("--reps", type=positive_int, metavar="N",
                        help=f"iterations per timed block (default: calibrated to "
                             f"~{Timing.block_s * 1e3:g} ms)")
    common.add_argument("--format", choices=("table", "csv", "json"), default="table",
                        help="output format (default: table)")
    common.add_argument("--output", metavar="FILE", help="also write the report to FILE")
    common.add_argument("--plot", metavar="FILE.png",
                        help="draw the size sweeps to a PNG file (needs matplotlib)")
    common.add_argument("--quick", action="store_true",
                        help="a smoke test: sizes 8 and 1m, 2 rounds of 2 iterations")
    common.add_argument("--progress", action="store_true",
                        help="show the progress bar on stderr even when it is not a terminal")
    strided = _argparse.ArgumentParser(add_help=False)
    strided.add_argument("--skip-strided", action="store_true",
                         help="pingpong: skip the strided-column case")
    window = _argparse.ArgumentParser(add_help=False)
    window.add_argument("--window", type=positive_int, default=bandwidth.WINDOW, metavar="N",
                        help=f"bandwidth: messages in flight (default: {bandwidth.WINDOW})")
    beside = _argparse.ArgumentParser(add_help=False)
    beside.add_argument("--socket", action="store_true",
                        help="pingpong, bandwidth, patterns under mpiexec: also time cmampi "
                             "over its socket channel, set up beside the MPI one in the same "
                             "processes (column 'socket'; socket/cmampi > 1: the socket channel "
                             "is slower)")
    only = _argparse.ArgumentParser(add_help=False)
    only.add_argument("--only", type=_collectives, metavar="LIST",
                      help="collectives: which ones (default: "
                           f"{','.join(collectives.COLLECTIVES)})")

    p = _argparse.ArgumentParser(
        prog=PROG, description=__doc__.split("\n\n")[1].replace("\n", " ").replace("``", ""),
        epilog="Ratios are the alternative's time / cmampi's time: above 1, cmampi is faster.")
    sub = p.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    for name, parents in (("pingpong", [strided, beside]), ("bandwidth", [window, beside]),
                          ("patterns", [beside]), ("collectives", [only]), ("objects", []),
                          ("lowercase", []),
                          ("all", [strided, window, beside, only])):
        doc = "every benchmark in turn" if name == "all" else \
            BENCHMARKS[name].__doc__.splitlines()[0].replace("``", "")
        sp = sub.add_parser(name, parents=[common, *parents], help=doc, description=doc)
        sp.set_defaults(skip_strided=False, window=bandwidth.WINDOW, only=None, socket=False)
    return p


def parse_args(argv: Sequence[str] | None = None, quiet: bool = False) -> _argparse.Namespace:
    """The options; usage errors exit 2, printed unless *quiet* (ranks other than 0)."""
    parser = _parser()
    sink = _io.StringIO()
    with _contextlib.ExitStack() as stack:
        if quiet:
            stack.enter_context(_contextlib.redirect_stdout(sink))
            stack.enter_context(_contextlib.redirect_stderr(sink))
        args = parser.parse_args(argv)
        if args.plot and (why := available()):
            parser.error(why)
    return args


def _launch_rank() -> int:
    """This process's rank as its launcher says, before any communicator exists."""
    for key in ("CMAMPI_RANK", "PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK"):
        if _os.environ.get(key, "").isdigit():
            return int(_os.environ[key])
    return 0


def _timing(args: _argparse.Namespace) -> Timing:
    base: dict[str, Any] = dict(QUICK) if args.quick else {}
    base.update({k: v for k, v in (("rounds", args.rounds), ("reps", args.reps)) if v})
    return Timing(**base)


# -- progress ------------------------------------------------------------------------------
def _terminal_stderr() -> bool:
    """Whether this process's stderr ends up on a terminal.

    mpiexec and ``python -m cmampi`` give the ranks pipes and forward them, so
    this follows stderr up the process tree, through the pipes, to where it
    ends up.
    """
    pid = _os.getpid()
    for _ in range(4):
        try:
            target = _os.readlink(f"/proc/{pid}/fd/2")
            if not target.startswith("pipe:"):
                return target.startswith(("/dev/pts/", "/dev/tty"))
            with open(f"/proc/{pid}/stat", encoding="ascii") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])    # the parent
        except (OSError, ValueError, IndexError):
            return False
    return False


class Progress:
    """A progress line on stderr: ``[####................] 12/70 31s objects 1 MiB``.

    On a terminal it appears once the run has taken PROGRESS_DELAY_S and is
    redrawn in place; when *forced* it appears from the start, one line per
    step if stderr is not a terminal. Every write ends with a newline, as
    launchers forward the ranks' output line by line.
    """

    _UP = "\x1b[F\x1b[K"             # to the start of the previous line, erased

    def __init__(self, total: int, enabled: bool, forced: bool,
                 terminal: bool | None = None) -> None:
        self.total, self.count, self.drawn = total, 0, False
        self.terminal = _terminal_stderr() if terminal is None and enabled else bool(terminal)
        self.enabled = enabled and (forced or self.terminal)
        self.delay = 0.0 if forced else PROGRESS_DELAY_S
        self.start = _time.monotonic()

    def step(self, label: str) -> None:
        self.count += 1
        elapsed = _time.monotonic() - self.start
        if not self.enabled or elapsed < self.delay:
            return
        filled = 20 * (self.count - 1) // max(self.total, 1)
        line = (f"[{'#' * filled}{'.' * (20 - filled)}] {self.count}/{self.total} "
                f"{elapsed:.0f}s {label}")
        self._write(line)

    def close(self) -> None:
        if self.terminal and self.drawn:
            _sys.stderr.write(self._UP)
            _sys.stderr.flush()
            self.drawn = False

    def _write(self, line: str) -> None:
        redraw = self._UP if self.terminal and self.drawn else ""
        _sys.stderr.write(f"{redraw}{line}\n")
        _sys.stderr.flush()
        self.drawn = True


# -- run -----------------------------------------------------------------------------------
def _context(args: _argparse.Namespace, MPI: Any, p2p: bool) -> Context:
    comm = MPI.COMM_WORLD
    raw = _plain_world(MPI)
    pipe = connect(comm) if raw is None and p2p else None
    comms: dict[str, Any] = {"mpi4py": raw} if raw is not None else \
        {"pipe": PipeComm(pipe) if pipe is not None else None}
    if args.socket:
        comms[SOCKET] = _socket_beside(raw)
    comms[CMAMPI] = comm
    if args.quick and not args.sizes:
        args.sizes = list(QUICK_SIZES)
    return Context(MPI, comm, raw, pipe, comms, args, _timing(args))


def _plain_world(MPI: Any) -> Any:
    """mpi4py's own world communicator, to compare with (None on the socket channel)."""
    if MPI.CHANNEL != "mpi":
        return None
    from .._backend import real_mpi

    return real_mpi().COMM_WORLD


def _socket_beside(raw: Any) -> Any:
    """cmampi over a socket channel among the ranks of mpi4py communicator *raw*."""
    from ..channel.socket import SocketChannel, hub_beside
    from ..socketcomm import Intracomm

    hub = hub_beside(raw)
    return Intracomm._from_channel(SocketChannel(hub, 0, list(range(hub.size))))


def _run(ctx: Context, names: list[str]) -> list[Result]:
    cases = [case for name in names for case in BENCHMARKS[name].plan(ctx)]
    progress = Progress(len(cases), ctx.rank == 0, ctx.args.progress)
    try:
        results = []
        for case in cases:
            progress.step(case.label)
            results.append(case.run())
    finally:
        progress.close()
    ctx.barrier()
    return results


def _publish(ctx: Context, names: list[str], results: list[Result]) -> None:
    """On rank 0: print the report, write --output and --plot."""
    args, info = ctx.args, machine_info(ctx)
    notes = {name: BENCHMARKS[name].describe(ctx) for name in names}
    report = render(args.format, ctx, info, notes, results)
    emit(report, args.output)
    if args.plot:
        plot(args.plot, info, results)


def main(argv: Sequence[str] | None = None) -> int:
    """The benchmark command line; the exit code (2: usage, 1: a failure)."""
    args = parse_args(argv, quiet=_launch_rank() != 0)
    names = list(BENCHMARKS) if args.command == "all" else [args.command]
    from cmampi import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    p2p = names != ["collectives"]
    if size < 2 or (p2p and size != 2):
        if rank == 0:
            need = "at least 2 ranks" if not p2p else "exactly 2 ranks"
            print(f"{PROG} {args.command}: needs {need}, got {size} (run it under "
                  f"mpiexec -n 2 or python -m cmampi -n 2)", file=_sys.stderr)
        return 2
    if args.socket and MPI.CHANNEL != "mpi":
        if rank == 0:
            print(f"{PROG} {args.command}: --socket sets the socket channel beside the MPI "
                  f"one: run it under mpiexec (here the socket channel is cmampi's own)",
                  file=_sys.stderr)
        return 2
    ctx: Context | None = None
    try:
        ctx = _context(args, MPI, p2p)
        results = _run(ctx, names)
        if rank == 0:
            _publish(ctx, names, results)
    except Exception:  # noqa: BLE001 (any failure on one rank must abort them all)
        _sys.stdout.flush()
        _sys.stderr.write(f"{PROG}: rank {rank} failed:\n{_traceback.format_exc()}")
        _sys.stderr.flush()
        comm.Abort(1)
        return 1
    finally:
        if ctx is not None and ctx.pipe is not None:
            ctx.pipe.close()
    return 0
