"""A pending operation never writes into memory the process may have freed, whether or
not the program keeps its request (checked under ``PYTHONMALLOC=debug``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

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
