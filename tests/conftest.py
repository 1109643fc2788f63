"""Shared fixtures: every multi-rank test runs against plain mpi4py and against cmampi."""

from __future__ import annotations

import pytest


def _world():
    from mpi4py import MPI

    return MPI


@pytest.fixture(params=["mpi4py", "cmampi"])
def comm(request):
    """A fresh duplicate of the world communicator, plain mpi4py or cmampi-wrapped."""
    MPI = _world()
    if request.param == "mpi4py":
        c = MPI.COMM_WORLD.Dup()
    else:
        from cmampi import MPI as CMPI

        c = CMPI.COMM_WORLD.Dup()
    yield c
    c.Barrier()
    c.Free()


@pytest.fixture
def cmcomm():
    """A fresh cmampi communicator, for behaviour plain mpi4py does not offer."""
    from cmampi import MPI as CMPI

    c = CMPI.COMM_WORLD.Dup()
    yield c
    c.Barrier()
    c.Free()


@pytest.fixture
def MPI(request):
    """The namespace a program would import with the communicator under test:
    ``cmampi.MPI`` for cmampi (its own ``Request``), ``mpi4py.MPI`` otherwise."""
    callspec = getattr(request.node, "callspec", None)
    impl = callspec.params.get("comm", "cmampi") if callspec else "cmampi"
    if impl == "mpi4py" and "cmcomm" not in request.fixturenames:
        return _world()
    from cmampi import MPI as CMPI

    return CMPI
