"""Every example runs as written, under mpiexec and under cmampi's launcher.

Each example checks its own result and fails (non-zero exit) when it is
wrong. Under the launcher every example also runs with mpi4py blocked
(``tests/no_mpi4py`` first on ``PYTHONPATH``): programs written with
``from cmampi import MPI`` need no MPI there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from jobenv import NO_MPI4PY, ROOT, job_env

EXAMPLES = sorted(f for f in os.listdir(os.path.join(ROOT, "examples")) if f.endswith(".py"))
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")


_env = job_env


def _run(cmd, env) -> str:
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip(), "the example printed nothing"
    return out.stdout


def _launch(example: str, env) -> str:
    return _run([sys.executable, "-m", "cmampi", "-n", "3", "--timeout", "120",
                 os.path.join(ROOT, "examples", example)], env)


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_under_launcher(example):
    _launch(example, _env())


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_under_launcher_without_mpi4py(example):
    out = _launch(example, _env(NO_MPI4PY))
    if example == "no_mpi.py":
        assert "socket channel" in out and "mpi4py imported: False" in out, out


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
@pytest.mark.parametrize("example", EXAMPLES)
def test_example_under_mpiexec(example):
    env = _env()
    env.setdefault("MPIEXEC_TIMEOUT", "120")
    out = _run([MPIEXEC, "-n", "2", sys.executable, os.path.join(ROOT, "examples", example)],
               env)
    if example == "no_mpi.py":
        assert "mpi channel" in out, out


def test_no_mpi4py_stand_in_blocks_mpi4py():
    """The blocked runs above prove something only if the stand-in really blocks."""
    code = "import mpi4py"
    out = subprocess.run([sys.executable, "-c", code], env=_env(NO_MPI4PY),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "ModuleNotFoundError" in out.stderr, out.stderr
