"""A pending operation never writes into memory the process may have freed, whether or
not the program keeps its request (checked under ``PYTHONMALLOC=debug``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from jobenv import NO_MPI4PY, job_env

REPO = Path(__file__).resolve().parents[1]

# Requests dropped at once (fire-and-forget sends, a dropped irecv of an object
# with a pulled array), then plenty of allocation: with the reply buffers freed
# under a posted receive, the debug allocator sees the program's objects
# overwritten, or the process dies in the garbage collector.
PROGRAM = r"""
    import gc
    import numpy as np
    from cmampi import MPI

    comm = MPI.COMM_WORLD
    x = np.full(1 << 18, 7.0)                       # 2 MiB: a pulled message
    big = {"a": np.arange(1 << 19, dtype=np.float64)}
    if comm.rank == 0:
        for _ in range(20):
            comm.Isend(x, 1, 1)                     # request objects dropped at once
        comm.isend(big, 1, 2)
        # Blocks the size of the transport's reply buffers, likely to land where
        # dropped ones were freed: a reply written there breaks the pattern.
        blocks = [bytearray(b"\xaa" * 32) for _ in range(20000)]
        junk = [{"i": i} for i in range(20000)]
        comm.Barrier()
        gc.collect()
        assert all(d["i"] == i for i, d in enumerate(junk)), "heap overwritten"
        assert all(b == b"\xaa" * 32 for b in blocks), "a freed buffer was written to"
        assert comm.recv(source=1, tag=3) == "done"
    else:
        b = np.empty_like(x)
        for _ in range(20):
            comm.Recv(b, 0, 1)
            assert (b == 7.0).all()
        req = comm.irecv(source=0, tag=2)
        del req                                     # dropped: the message is still taken
        comm.Barrier()
        junk = [{"i": i} for i in range(20000)]
        gc.collect()
        assert all(d["i"] == i for i, d in enumerate(junk)), "heap overwritten"
        comm.send("done", 0, 3)
    print("ok", comm.rank, flush=True)
"""


def test_dropped_requests_under_the_debug_allocator(tmp_path):
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable))
    if mpiexec is None:
        pytest.skip("no mpiexec next to this Python")
    prog = tmp_path / "prog.py"
    prog.write_text(textwrap.dedent(PROGRAM))
    env = dict(os.environ, PYTHONMALLOC="debug",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([mpiexec, "-n", "2", sys.executable, str(prog)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("ok") == 2, out.stdout    # each rank's last line


# Rank 1 sends 8 MiB (pulled on both channels) in a way that completes before
# rank 0 takes it, then leaves at once (``MPI.Finalize()`` first or not); rank 0
# receives a second later. MPI delivers such messages: the sender's exit waits.
LEAVING = r"""
    import sys, time
    import numpy as np
    from cmampi import MPI

    case, finalize = sys.argv[1], sys.argv[2] == "finalize"
    comm = MPI.COMM_WORLD
    x = np.arange(1 << 20, dtype=np.float64)
    if comm.rank == 1:
        MPI.Attach_buffer(bytearray(2 * x.nbytes + 4 * MPI.BSEND_OVERHEAD))
        if case in ("Bsend", "never"):
            comm.Bsend(x, 0, 1)
        elif case == "bsend":
            comm.bsend({"x": x}, 0, 1)
        elif case == "Free":
            comm.Isend(x, 0, 1).Free()
        elif case == "dropped":
            comm.isend({"x": x}, 0, 1)          # the request is dropped at once
        if finalize:
            MPI.Finalize()
        print("sender leaves", flush=True)
    elif case != "never":
        time.sleep(1.0)
        if case in ("bsend", "dropped"):
            got = comm.recv(source=1, tag=1)["x"]
        else:
            got = np.empty_like(x)
            comm.Recv(got, 1, 1)
        assert (got == x).all(), "the message changed"
        print("received intact", flush=True)
"""


def _two_rank_job(tmp_path, program: str, channel: str, *args, **env):
    """Run *program* at 2 ranks (``mpiexec`` or the launcher), with *args* and *env*."""
    prog = tmp_path / "prog.py"
    prog.write_text(textwrap.dedent(program))
    if channel == "mpi":
        mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable))
        if mpiexec is None:
            pytest.skip("no mpiexec next to this Python")
        cmd = [mpiexec, "-n", "2", sys.executable, str(prog), *args]
        environ = job_env(settings=False, **env)
    else:
        cmd = [sys.executable, "-m", "cmampi", "-n", "2", "--timeout", "100", str(prog), *args]
        environ = job_env(NO_MPI4PY, settings=False, **env)
    return subprocess.run(cmd, env=environ, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("channel", ["mpi", "socket"], ids=["mpiexec", "launcher"])
@pytest.mark.parametrize("case", ["Bsend", "bsend", "Free", "dropped"])
@pytest.mark.parametrize("finalize", ["finalize", "exit"])
def test_sender_leaving_before_its_message_is_taken(tmp_path, channel, case, finalize):
    """A message sent in buffered mode or from a freed (or dropped) request is
    delivered intact though its sender finalizes or exits first."""
    out = _two_rank_job(tmp_path, LEAVING, channel, case, finalize)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "received intact" in out.stdout and "sender leaves" in out.stdout, text


def test_sender_leaving_a_message_nobody_takes(tmp_path):
    """A buffered message its receiver never takes keeps the sender only
    ``CMAMPI_EXIT_WAIT`` seconds, then it leaves with a warning (MPI channel; on
    the socket channel the receiver's exit fails the send at once)."""
    out = _two_rank_job(tmp_path, LEAVING, "mpi", "never", "exit", CMAMPI_EXIT_WAIT="0.5")
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "sender leaves" in out.stdout, text
    lost = ("1 message(s) sent in buffered mode or from freed requests were not received "
            "within 0.5 s (CMAMPI_EXIT_WAIT)")
    assert lost in out.stderr, text


# Rank 0 has a receive posted when it forks a child that exits normally: the
# child's exit must not take the parent's message (its connections are the
# parent's). Rank 1, having sent, drops a large send and dies of an uncaught
# exception: it leaves at once, not after waiting for its receiver.
FORK_AND_CRASH = r"""
    import os, sys, time
    import numpy as np
    from cmampi import MPI

    comm = MPI.COMM_WORLD
    if comm.rank == 0:
        buf = np.zeros(4)
        req = comm.Irecv(buf, 1, 5)
        time.sleep(0.5)                 # rank 1 has sent; nothing progressed it here
        pid = os.fork()
        if pid == 0:
            sys.exit(0)                 # the child's interpreter exit runs atexit handlers
        os.waitpid(pid, 0)
        req.Wait()
        assert (buf == np.arange(4.0)).all()
        print("parent got its message", flush=True)
        try:
            comm.recv(source=1, tag=2)
        except Exception as exc:
            print("rank 0 saw", type(exc).__name__, flush=True)
    else:
        comm.Send(np.arange(4.0), 0, 5)
        comm.Isend(np.zeros(1 << 20), 0, 1)     # dropped at once: pulled later
        time.sleep(1.0)
        raise RuntimeError("rank 1 fails")
"""


def test_forked_child_and_crashing_rank_leave_at_once(tmp_path):
    """Socket channel (the launcher ends the job once rank 1 fails)."""
    t0 = time.monotonic()
    out = _two_rank_job(tmp_path, FORK_AND_CRASH, "socket")
    assert time.monotonic() - t0 < 60, "the failing rank waited for its receiver"
    assert "parent got its message" in out.stdout, out.stdout + out.stderr
    assert "rank 1 fails" in out.stderr and out.returncode != 0, out.stdout + out.stderr
