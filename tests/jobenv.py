"""The environment of a job a test starts (``mpiexec``, ``python -m cmampi``, a child)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["NO_MPI4PY", "ROOT", "job_env"]

#: The checkout, first on the PYTHONPATH of every job a test starts.
ROOT = Path(__file__).resolve().parent.parent
#: On the PYTHONPATH, makes ``import mpi4py`` fail: the job proves it needs no MPI.
NO_MPI4PY = ROOT / "tests" / "no_mpi4py"
#: What tells a process which job it belongs to: never passed on to a new job.
_JOB_PREFIXES = ("PMI_", "PMIX_", "HYDI_", "HYDRA_", "MPIR_", "OMPI_COMM_WORLD_")
_JOB_VARS = ("CMAMPI_RANK", "CMAMPI_SIZE", "CMAMPI_DIR", "CMAMPI_TOKEN", "CMAMPI_CHANNEL")


def job_env(*paths, settings: bool = True, **extra: str) -> dict:
    """This process's environment for a new job: without the variables of the
    job the test runs in, with *paths* and the checkout first on PYTHONPATH,
    and *extra* set. ``settings=False`` also drops every ``CMAMPI_*`` setting
    (the new job runs with the defaults)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(_JOB_PREFIXES) and k not in _JOB_VARS
           and (settings or not k.startswith("CMAMPI_"))}
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [*map(str, paths), str(ROOT), *os.environ.get("PYTHONPATH", "").split(
            os.pathsep)]))
    env.update(extra)
    return env
