"""Every example runs as written, under mpiexec and under cmampi's launcher."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = sorted(f for f in os.listdir(os.path.join(ROOT, "examples")) if f.endswith(".py"))
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    for key in ("CMAMPI_RANK", "CMAMPI_SIZE", "CMAMPI_DIR", "CMAMPI_TOKEN"):
        env.pop(key, None)
    return env


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_under_launcher(example):
    out = subprocess.run([sys.executable, "-m", "cmampi", "-n", "3", "--timeout", "120",
                          os.path.join(ROOT, "examples", example)],
                         env=_env(), capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip()


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
@pytest.mark.parametrize("example", EXAMPLES)
def test_example_under_mpiexec(example):
    env = _env()
    env.setdefault("MPIEXEC_TIMEOUT", "120")
    out = subprocess.run([MPIEXEC, "-n", "2", sys.executable,
                          os.path.join(ROOT, "examples", example)],
                         env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip()
