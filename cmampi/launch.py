"""The launcher: ``python -m cmampi -n N prog.py [args]`` starts N ranks on the socket channel.

Modelled on ``mpiexec``: every rank runs the current Python on the same program,
with ``CMAMPI_RANK``/``CMAMPI_SIZE`` and a private rendezvous directory in its
environment; output is forwarded line by line; the first rank to fail, a
forwarded ``SIGINT``/``SIGTERM``/``SIGHUP`` or the timeout ends the whole job.

When a rank fails (killed by a signal, or a non-zero exit), the launcher says
which one, how and with which pid, then gives the others a grace period to
notice (their operations with it fail) and print their own errors before it
ends them; the job's exit code is that rank's, as with ``mpiexec``.
"""

from __future__ import annotations

import argparse
import errno
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, BinaryIO, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType
    from typing import Any, TypeAlias

    #: What ``signal.getsignal`` returns and ``signal.signal`` takes.
    _Handler: TypeAlias = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None

__all__ = ["EXIT_TIMEOUT", "EXIT_USAGE", "GRACE", "main", "rank_environ", "run"]

#: Exit code for bad command lines (as argparse).
EXIT_USAGE = 2
#: Exit code when ``--timeout`` ends the job (as coreutils ``timeout``).
EXIT_TIMEOUT = 124
#: Default seconds the ranks get to exit on their own, at each step of ending a job.
GRACE = 2.0
#: Signals the launcher forwards to the ranks before ending the job.
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

# Launcher options that take a value, so the program is the first word after them.
_VALUE_OPTIONS = frozenset({"-n", "-np", "--timeout", "--grace"})
# Most bytes forwarded as one piece: longer lines are cut (and may interleave).
_MAX_LINE = 1 << 20
# Longest wait for the forwarders to drain the ranks' pipes once all ranks are gone.
_DRAIN = 5.0
# Longest wait for a rank to be reaped after SIGKILL.
_REAP = 5.0


class _Command(NamedTuple):
    size: int
    argv: list[str]
    tag_output: bool
    timeout: float | None
    grace: float


# -- command line -------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of ranks >= 1, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        usage=f"{prog} -n N [--tag-output] [--timeout SECONDS] [--grace SECONDS] "
        "[--mpi4py] (prog.py | -m module) [args ...]",
        description="Start N ranks of this Python on PROG with the cmampi socket channel.",
        epilog="Everything after the program (or -m module) is passed to it untouched. "
        "Python block-buffers the output of the ranks, as it goes to a pipe: set "
        "PYTHONUNBUFFERED=1 to see it as it is printed.",
        allow_abbrev=False,
    )
    p.add_argument("-n", "-np", dest="size", metavar="N", type=_positive_int, required=True,
                   help="number of ranks")
    p.add_argument("--tag-output", action="store_true",
                   help="prefix every line the ranks print with '[rank] '")
    p.add_argument("--timeout", metavar="SECONDS", type=_positive_float,
                   help=f"end the job (exit code {EXIT_TIMEOUT}) if it runs longer")
    p.add_argument("--grace", metavar="SECONDS", type=_positive_float, default=GRACE,
                   help="once a rank has failed, how long the others get to report and exit "
                   "before SIGTERM, and from SIGTERM to SIGKILL (default: %(default)g)")
    p.add_argument("--mpi4py", action="store_true",
                   help="run the program through python -m cmampi.run: its 'from mpi4py "
                   "import MPI' (and its libraries') gets cmampi, mpi4py need not be installed")
    p.add_argument("-m", dest="module", metavar="module", help="run library module as a script")
    p.add_argument("program", nargs="?", help="the Python program every rank runs")
    p.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
    return p


def _split(argv: Sequence[str]) -> tuple[list[str], str | None, list[str]]:
    """Cut *argv* into (launcher options, module, rank command).

    The launcher's options end at the first word that is not one of them or
    their value, at ``--``, or after ``-m module``; the rest is never parsed.
    """
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return list(argv[:i]), None, list(argv[i + 1:])
        if arg == "-m" and i + 1 < len(argv):
            return list(argv[:i]), argv[i + 1], list(argv[i + 2:])
        if arg.startswith("-m") and not arg.startswith("--") and len(arg) > 2:
            return list(argv[:i]), arg[2:], list(argv[i + 1:])
        if arg == "-" or not arg.startswith("-"):
            return list(argv[:i]), None, list(argv[i:])
        i += 2 if arg in _VALUE_OPTIONS else 1
    return list(argv), None, []


def _parse(argv: Sequence[str], prog: str) -> _Command:
    """The job *argv* asks for; ``SystemExit`` (after a message) if it is not one."""
    parser = _parser(prog)
    options, module, rest = _split(argv)
    ns = parser.parse_args(options)
    python = [sys.executable, "-m", "cmampi.run"] if ns.mpi4py else [sys.executable]
    if module is not None:
        return _Command(ns.size, [*python, "-m", module, *rest], ns.tag_output,
                        ns.timeout, ns.grace)
    if not rest:
        parser.error("missing the program to run (prog.py or -m module)")
    program, args = rest[0], rest[1:]
    if not os.path.exists(program):
        parser.error(f"can't open file {program!r}: no such file or directory")
    return _Command(ns.size, [*python, program, *args], ns.tag_output, ns.timeout,
                    ns.grace)


def _prog_name() -> str:
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "python -m cmampi" if name in ("", "__main__.py", "-c") else name


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m cmampi`` and ``cmampi-run``: the job's exit code."""
    try:
        cmd = _parse(sys.argv[1:] if argv is None else argv, _prog_name())
    except SystemExit as exc:  # argparse: usage errors and --help
        return exc.code if isinstance(exc.code, int) else (EXIT_USAGE if exc.code else 0)
    return run(cmd.argv, cmd.size, tag_output=cmd.tag_output, timeout=cmd.timeout,
               grace=cmd.grace)


# -- the job ------------------------------------------------------------------------------
def rank_environ(base: Mapping[str, str], rank: int, size: int, directory: str,
                 token: str) -> dict[str, str]:
    """The environment of *rank*: *base* plus the socket channel's ``CMAMPI_*`` variables."""
    env = dict(base)
    env.update(
        CMAMPI_CHANNEL="socket",
        CMAMPI_RANK=str(rank),
        CMAMPI_SIZE=str(size),
        CMAMPI_DIR=directory,
        CMAMPI_TOKEN=token,
        CMAMPI_LAUNCHER_PID=str(os.getpid()),
    )
    return env


def _write_atomic(path: str, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class _Sink:
    """One of the launcher's output streams, shared by the forwarders one whole piece at a time."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self.lock:
            try:
                self.stream.write(data)
                self.stream.flush()
            except (OSError, ValueError):  # closed or broken: the output is lost, not the job
                pass

    def say(self, message: str) -> None:
        self.write(f"cmampi: {message}\n".encode(errors="replace"))


def _forward(pipe: BinaryIO, sink: _Sink, prefix: bytes) -> None:
    """Copy *pipe* to *sink* line by line, each line prefixed with *prefix*, until EOF.

    With a prefix, a last line without its newline gets one, in the same write
    (so no other rank's line lands between them).
    """
    at_start = True
    held = b""      # a tagged piece without its newline: EOF or more of the line follows
    with pipe:
        while True:
            try:
                piece = pipe.readline(_MAX_LINE)
            except (OSError, ValueError):
                piece = b""
            if not piece:
                if held:
                    sink.write(held + b"\n")
                return
            out = held + (prefix + piece if at_start else piece)
            held = b""
            at_start = piece.endswith(b"\n")
            if at_start or not prefix or len(out) >= _MAX_LINE:   # (a long line goes on)
                sink.write(out)
            else:
                held = out


def _binary(stream) -> BinaryIO:
    try:
        stream.flush()
    except (AttributeError, OSError, ValueError):
        pass
    return getattr(stream, "buffer", stream)


#: Run first in each rank's process, then replaced by the program itself (same pid):
#: asks the kernel to SIGKILL the rank when the launcher dies (PR_SET_PDEATHSIG,
#: which survives exec), and exits at once if the launcher is already gone. A
#: launcher killed with SIGKILL cannot end its ranks itself.
_ORPHAN_GUARD = """\
import ctypes, os, sys
ctypes.CDLL(None, use_errno=True).prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL
if os.getppid() != int(sys.argv[1]):
    os._exit(137)
try:
    os.execv(sys.argv[2], sys.argv[2:])
except OSError as exc:
    sys.stderr.write(f"cmampi: cannot run {sys.argv[2]}: {exc.strerror}\\n")
    os._exit(127)
"""


class _Job:
    """Ranks started by one ``run``; only these pids are ever signalled."""

    def __init__(self, tag_output: bool, out: _Sink, err: _Sink, grace: float) -> None:
        self.tag_output = tag_output
        self.out, self.err = out, err
        self.grace = grace
        self.procs: list[subprocess.Popen] = []
        self.exited: list[int] = []  # ranks, in the order their exits were seen
        self.forwarders: list[threading.Thread] = []
        self.signals: list[int] = []  # appended to by the signal handlers
        self.sel = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.sel.register(self.wake_r, selectors.EVENT_READ)
        self._saved: dict[int, _Handler] = {}
        self._saved_wakeup: int | None = None

    # -- signals --------------------------------------------------------------------------
    def install_handlers(self) -> None:
        """Catch the forwarded signals (those not ignored) and wake up on SIGCHLD.

        Only possible in the main thread; elsewhere the job polls and signals
        reach whoever handles them.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        self._saved_wakeup = signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        for signum in (*FORWARDED, signal.SIGCHLD):
            previous = signal.getsignal(signum)
            if previous == signal.SIG_IGN and signum != signal.SIGCHLD:
                continue  # e.g. nohup: stay immune, like the ranks will be
            self._saved[signum] = previous
            signal.signal(signum, self._on_signal)

    def restore_handlers(self) -> None:
        for signum, previous in self._saved.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._saved.clear()
        if self._saved_wakeup is not None:
            signal.set_wakeup_fd(self._saved_wakeup)
            self._saved_wakeup = None

    def _on_signal(self, signum: int, frame) -> None:
        if signum != signal.SIGCHLD:
            self.signals.append(signum)

    # -- ranks ----------------------------------------------------------------------------
    def start(self, argv: Sequence[str], env: Mapping[str, str]) -> int:
        """Start the next rank: its pid. The rank is killed if the launcher dies,
        however it dies (see `_ORPHAN_GUARD`)."""
        rank = len(self.procs)
        program = shutil.which(argv[0], path=env.get("PATH")) if os.sep not in argv[0] \
            else argv[0]
        if program is None or not os.path.isfile(program):
            raise FileNotFoundError(errno.ENOENT, "no such program", argv[0])
        if not os.access(program, os.X_OK):
            raise PermissionError(errno.EACCES, "not executable", program)
        guarded = [sys.executable, "-S", "-c", _ORPHAN_GUARD, str(os.getpid()), program,
                   *argv[1:]]
        proc = subprocess.Popen(
            guarded, env=env, stdin=None if rank == 0 else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.procs.append(proc)
        prefix = f"[{rank}] ".encode() if self.tag_output else b""
        for pipe, sink in ((proc.stdout, self.out), (proc.stderr, self.err)):
            t = threading.Thread(target=_forward, args=(pipe, sink, prefix),
                                 name=f"cmampi-forward-{rank}", daemon=True)
            t.start()
            self.forwarders.append(t)
        return proc.pid

    def alive(self) -> list[subprocess.Popen]:
        """Ranks not yet exited (reaping the others)."""
        self._reap()
        return [p for p in self.procs if p.returncode is None]

    def _reap(self) -> None:
        seen = set(self.exited)
        new = [r for r, p in enumerate(self.procs) if r not in seen and p.poll() is not None]
        # Exits seen together: a rank killed by a signal most likely went first
        # (its peers fail because it is gone), then ranks that failed.
        new.sort(key=lambda r: (self.procs[r].returncode >= 0, self.procs[r].returncode == 0))
        self.exited.extend(new)

    def failed(self) -> tuple[int, subprocess.Popen] | None:
        """The first rank seen to exit with a non-zero status, if any."""
        self._reap()
        for rank in self.exited:
            if self.procs[rank].returncode != 0:
                return rank, self.procs[rank]
        return None

    def settle(self, seconds: float) -> None:
        """Give the ranks up to *seconds* to exit on their own (a signal cuts it short)."""
        deadline = time.monotonic() + seconds
        pending = len(self.signals)
        while self.alive() and len(self.signals) == pending:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.sleep(left)

    def sleep(self, seconds: float | None) -> None:
        """Wait at most *seconds* for a rank to exit or a signal to arrive."""
        if self._saved_wakeup is None:  # no SIGCHLD wake-ups: poll
            seconds = 0.05 if seconds is None else min(seconds, 0.05)
        if self.sel.select(None if seconds is None else max(seconds, 0.0)):
            try:
                while os.read(self.wake_r, 512):
                    pass
            except BlockingIOError:
                pass

    def send(self, signum: int) -> None:
        for p in self.alive():  # unreaped, so the pid is still this rank's
            try:
                p.send_signal(signum)
            except ProcessLookupError:
                pass

    def end(self, signum: int = signal.SIGTERM) -> None:
        """Send *signum* to the ranks still running; SIGKILL those left after the grace period.

        Another forwarded signal arriving meanwhile kills them at once.
        """
        self.send(signum)
        deadline = time.monotonic() + self.grace
        pending = len(self.signals)
        while self.alive():
            left = deadline - time.monotonic()
            if left <= 0 or len(self.signals) > pending:
                break
            self.sleep(left)
        if self.alive():
            self.send(signal.SIGKILL)
        for p in self.procs:
            try:
                p.wait(_REAP)
            except subprocess.TimeoutExpired:
                self.err.say(f"rank pid {p.pid} survives SIGKILL; giving up on it")

    def drain(self) -> None:
        """Let the forwarders copy what the ranks left in their pipes."""
        deadline = time.monotonic() + _DRAIN
        for t in self.forwarders:
            t.join(max(deadline - time.monotonic(), 0.0))

    def close(self) -> None:
        self.sel.close()
        os.close(self.wake_r)
        os.close(self.wake_w)


def run(argv: Sequence[str], size: int, *, tag_output: bool = False,
        timeout: float | None = None, grace: float = GRACE,
        env: Mapping[str, str] | None = None,
        stdout: BinaryIO | None = None, stderr: BinaryIO | None = None) -> int:
    """Run *size* ranks of the command *argv* as one job; its exit code.

    0 if every rank exits 0; else the first failing rank's code (128 + signal
    number if a signal killed it), 128 + signum after forwarding a signal the
    launcher received, or ``EXIT_TIMEOUT`` after *timeout* seconds. A job that
    ends early is ended for every rank: SIGTERM, then SIGKILL after *grace*
    seconds; after a rank's failure the others first get *grace* seconds to
    notice it, report and exit by themselves. The rendezvous directory is
    removed whatever happens.
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    out = _Sink(stdout if stdout is not None else _binary(sys.stdout))
    err = _Sink(stderr if stderr is not None else _binary(sys.stderr))
    job = _Job(tag_output, out, err, grace)
    job.install_handlers()
    directory: str | None = None
    try:
        started = time.monotonic()
        try:
            directory = tempfile.mkdtemp(prefix="cmampi-")
            token = secrets.token_hex(16)
            base = os.environ if env is None else env
            for rank in range(size):
                if job.signals:
                    break
                job.start(argv, rank_environ(base, rank, size, directory, token))
            else:
                pids = "".join(f"{p.pid}\n" for p in job.procs)
                _write_atomic(os.path.join(directory, "pids"), pids)
        except OSError as exc:
            what = f"rank {len(job.procs)}" if len(job.procs) < size else "the job"
            err.say(f"cannot start {what} ({' '.join(argv)}): {exc}")
            job.end()
            return 1
        deadline = None if timeout is None else started + timeout
        code = _supervise(job, deadline, timeout)
        job.drain()
        return code
    finally:
        try:
            if job.alive():  # only on an unexpected error: never leave ranks behind
                job.end(signal.SIGKILL)
        finally:
            job.restore_handlers()
            job.close()
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)


def _supervise(job: _Job, deadline: float | None, timeout: float | None) -> int:
    """Wait for the ranks; end the job on the first failure, signal or the timeout."""
    while True:
        if job.signals:
            signum = job.signals[0]
            job.err.say(f"received {_signal_name(signum)}; forwarding it to the ranks")
            job.end(signum)
            return 128 + signum
        failed = job.failed()
        if failed is not None:
            rank, p = failed
            code = p.returncode
            how = (f"exited with code {code}" if code > 0
                   else f"was killed by {_signal_name(-code)} (signal {-code})")
            job.err.say(f"rank {rank} (pid {p.pid}) {how}; terminating the other ranks")
            # The others' operations with it fail at once: let them say so themselves.
            job.settle(job.grace)
            job.end()
            return code if code > 0 else 128 - code
        if not job.alive():
            return 0
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            job.err.say(f"job exceeded the timeout of {timeout:g} s; terminating the ranks")
            job.end()
            return EXIT_TIMEOUT
        job.sleep(left)
