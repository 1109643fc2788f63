"""Programs that start MPI themselves: ``mpi4py.rc.initialize = False`` then
``MPI.Init``, and MPI 4 sessions, as mpi4py's own demos (``demo/init-fini``) do.
Each runs in a process of its own (a singleton MPI job)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

LATE_INIT = r"""
    import mpi4py
    mpi4py.rc.initialize = False
    import numpy as np
    from cmampi import MPI

    assert not MPI.Is_initialized()
    assert type(MPI.COMM_WORLD).__module__ == "mpi4py.MPI"   # mpi4py's, until MPI is up
    MPI.Init()
    # Pickling or freeing another communicator does not make the world (collective).
    import pickle
    import cmampi
    from mpi4py import MPI as real
    other = cmampi.accelerate(real.COMM_SELF.Dup())
    try:
        pickle.dumps(other)
    except ValueError:      # as mpi4py: only the predefined ones pickle
        pass
    other.free()
    assert "COMM_WORLD" not in vars(MPI)
    names = {}
    exec("from cmampi.MPI import *", names)
    comm = MPI.COMM_WORLD
    assert names["COMM_WORLD"] is comm and names["COMM_SELF"] is MPI.COMM_SELF
    assert comm._engine is not None and comm is MPI.COMM_WORLD
    a, b = np.arange(5.0), np.zeros(5)
    comm.Sendrecv(a, 0, 1, b, 0, 1)
    assert np.array_equal(a, b)
    assert MPI.COMM_SELF.Get_size() == 1
    MPI.Finalize()
    assert MPI.Is_finalized()
    print("done")
"""

SESSION = r"""
    import mpi4py
    mpi4py.rc.initialize = False
    from cmampi import MPI

    name, version = MPI.get_vendor()
    if not (name == "MPICH" and version >= (5, 0, 0)
            or name == "Open MPI" and version >= (5, 1, 0)):
        print("done")       # sessions as mpi4py's demo runs them: not before these versions
        raise SystemExit
    for _ in range(2):
        session = MPI.Session.Init()
        group = session.Create_group("mpi://WORLD")
        comm = MPI.Intracomm.Create_from_group(group)
        assert comm.Get_size() == group.Get_size() == 1
        comm.Barrier()
        comm.Dup().Free()       # derived from a session's: mpi4py's too
        group.Free()
        comm.Free()
        session.Finalize()
    assert not MPI.Is_initialized()
    print("done")
"""


@pytest.mark.parametrize("program", [LATE_INIT, SESSION], ids=["late init", "session"])
def test_a_program_that_starts_mpi_itself(program):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(program)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "done", run.stdout + run.stderr
