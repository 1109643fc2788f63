"""``python -m cmampi.run``: unmodified mpi4py programs, and the libraries they
import, on cmampi."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from jobenv import NO_MPI4PY, job_env
from jobenv import ROOT as REPO

LIMIT = 120

# An mpi4py program that knows nothing of cmampi: it checks, from inside, that it
# got cmampi's namespace, and that mpi4py's own pure-Python library (pkl5) did too.
PROGRAM = """
    import sys
    import numpy as np
    from mpi4py import MPI
    import mpi4py

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    assert type(comm).__module__ == "cmampi.MPI", type(comm)
    assert mpi4py.MPI is MPI and isinstance(comm, MPI.Intracomm)
    peer = (rank + 1) % size
    out, got = np.full(1 << 18, float(rank)), np.empty(1 << 18)
    comm.Sendrecv(out, peer, 3, got, (rank - 1) % size, 3)
    assert (got == (rank - 1) % size).all()
    assert comm.allreduce(rank) == size * (size - 1) // 2
    if MPI.CHANNEL == "mpi":
        from mpi4py.util import pkl5
        pcomm = pkl5.Intracomm(comm)
        assert pcomm.sendrecv({"r": rank}, peer, 4, None, (rank - 1) % size, 4) == \\
            {"r": (rank - 1) % size}
        assert type(comm.Create_cart([size])).__name__ == "Cartcomm"
    import os
    with open(os.path.join(os.environ["RESULTS"], f"rank{rank}"), "w") as f:
        f.write(f"ok {' '.join(sys.argv[1:])}")
"""


def _mpiexec() -> str:
    found = shutil.which("mpiexec", path=os.path.dirname(sys.executable))
    if found is None:
        pytest.skip("no mpiexec next to this Python")
    return found


_env = job_env


def _results(tmp_path: Path) -> dict:
    return {p.name: p.read_text() for p in sorted(tmp_path.glob("rank*"))}


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "prog.py"
    path.write_text(textwrap.dedent(body))
    return path


def _oversubscribe(mpiexec: str) -> list:
    """Open MPI's mpiexec needs to be told that 2 ranks may share 1-2 cores."""
    out = subprocess.run([mpiexec, "--version"], capture_output=True, text=True).stdout
    return ["--oversubscribe"] if "Open MPI" in out or "OpenRTE" in out else []


def test_an_unmodified_program_runs_on_cmampi_under_mpiexec(tmp_path):
    mpiexec = _mpiexec()
    prog = _write(tmp_path, PROGRAM)
    cmd = [mpiexec, *_oversubscribe(mpiexec), "-n", "2", sys.executable, "-m", "cmampi.run"]
    done = subprocess.run([*cmd, str(prog), "a", "b"], env=_env(RESULTS=str(tmp_path)),
                          capture_output=True, text=True, timeout=LIMIT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _results(tmp_path) == {"rank0": "ok a b", "rank1": "ok a b"}
    # -c and -m as python -m mpi4py takes them
    code = ("import os; from mpi4py import MPI; c = MPI.COMM_WORLD; "
            "open(os.path.join(os.environ['RESULTS'], f'rank{c.rank}'), 'w')"
            ".write(type(c).__module__)")
    done = subprocess.run([*cmd, "-c", code], env=_env(RESULTS=str(tmp_path)),
                          capture_output=True, text=True, timeout=LIMIT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _results(tmp_path) == {"rank0": "cmampi.MPI", "rank1": "cmampi.MPI"}


def test_an_unhandled_exception_aborts_the_job(tmp_path):
    """As with python -m mpi4py: one rank's exception ends every rank, not a hang."""
    mpiexec = _mpiexec()
    prog = _write(tmp_path, """
        from mpi4py import MPI
        if MPI.COMM_WORLD.Get_rank() == 0:
            raise SystemExit(3)
        MPI.COMM_WORLD.recv(source=0)    # never sent: only the abort ends this rank
    """)
    done = subprocess.run([mpiexec, *_oversubscribe(mpiexec), "-n", "2", sys.executable,
                           "-m", "cmampi.run", str(prog)], env=_env(), capture_output=True,
                          text=True, timeout=LIMIT)
    assert done.returncode != 0


def test_the_launcher_serves_mpi4py_without_mpi(tmp_path):
    """``python -m cmampi -n 2 --mpi4py prog.py``: the same program on the socket
    channel, mpi4py not even importable."""
    prog = _write(tmp_path, PROGRAM)
    env = _env(PYTHONPATH=os.pathsep.join([str(NO_MPI4PY), str(REPO)]), RESULTS=str(tmp_path))
    done = subprocess.run([sys.executable, "-m", "cmampi", "-n", "2", "--mpi4py", str(prog), "x"],
                          env=env, capture_output=True, text=True, timeout=LIMIT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _results(tmp_path) == {"rank0": "ok x", "rank1": "ok x"}


# A threaded mpi4py program that configures mpi4py first, as mpi4py's own
# test_threads.py does: the launcher's stand-in package has ``mpi4py.rc``.
THREADED = """
    import mpi4py.rc
    mpi4py.rc.thread_level = "multiple"
    mpi4py.rc(initialize=True, recv_mprobe=True)
    try:
        mpi4py.rc.no_such_option = 1
    except TypeError:
        pass
    else:
        raise AssertionError("an unknown option was taken")
    import os, threading
    import numpy as np
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    assert MPI.Init_thread(MPI.THREAD_SERIALIZED) == MPI.THREAD_MULTIPLE
    assert MPI.Query_thread() == MPI.THREAD_MULTIPLE and MPI.Is_thread_main()
    seen, got = [], np.zeros(1 << 20)
    receiver = threading.Thread(target=lambda: (seen.append(MPI.Is_thread_main()),
                                                comm.Recv(got, rank, 7)))
    receiver.start()
    comm.Send(np.full(1 << 20, 3.0), rank, 7)       # to itself, from the main thread
    receiver.join()
    assert seen == [False] and (got == 3.0).all()
    with open(os.path.join(os.environ["RESULTS"], f"rank{rank}"), "w") as f:
        f.write(f"ok {mpi4py.rc.thread_level}")
"""


def test_the_launcher_serves_mpi4py_rc_and_threads(tmp_path):
    prog = _write(tmp_path, THREADED)
    env = _env(PYTHONPATH=os.pathsep.join([str(NO_MPI4PY), str(REPO)]), RESULTS=str(tmp_path))
    done = subprocess.run([sys.executable, "-m", "cmampi", "-n", "2", "--mpi4py", str(prog)],
                          env=env, capture_output=True, text=True, timeout=LIMIT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _results(tmp_path) == {"rank0": "ok multiple", "rank1": "ok multiple"}
