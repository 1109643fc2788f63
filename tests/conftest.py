"""Shared fixtures: every multi-rank test runs against plain mpi4py and against cmampi.

Under ``mpiexec`` (pytest-mpi, ``--with-mpi``) the ``comm`` fixture gives both a
plain mpi4py communicator and a cmampi one. Under cmampi's own launcher
(``python -m cmampi -n N -m pytest -p no:pytest_mpi ...``) there is no MPI:
only the cmampi side runs, over the socket channel, and ``mpi`` markers are
honoured here instead of by pytest-mpi.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys

import pytest

#: Seconds a test may run before the watchdog calls it hung (a module's own
#: ``WATCHDOG`` overrides it).
WATCHDOG = 120

LAUNCHED = "CMAMPI_RANK" in os.environ


def pytest_collection_modifyitems(config, items):
    if not LAUNCHED:
        return
    size = int(os.environ["CMAMPI_SIZE"])
    for item in items:
        marker = item.get_closest_marker("mpi")
        if marker is None:
            item.add_marker(pytest.mark.skip(reason="serial test: runs outside the launcher"))
            continue
        if size < marker.kwargs.get("min_size", 1):
            item.add_marker(pytest.mark.skip(reason=f"needs {marker.kwargs['min_size']} ranks"))
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("comm") == "mpi4py":
            item.add_marker(pytest.mark.skip(reason="no MPI under the cmampi launcher"))


def _stderr_fd(config) -> int:
    """The real stderr (pytest's capture redirects fd 2 while a test runs)."""
    try:
        from _pytest.faulthandler import fault_handler_stderr_fd_key

        return config.stash[fault_handler_stderr_fd_key]
    except (ImportError, KeyError):
        return sys.__stderr__.fileno()


@pytest.fixture(autouse=True)
def watchdog(request):
    """A hung test fails instead of stalling the job: SIGALRM interrupts a rank
    blocked in Python with an exception pytest reports; after 20 s more,
    faulthandler prints the stacks of a rank stuck in C (an MPI wait) and ends
    it, which ends the job (mpiexec and cmampi's launcher both end the rest)."""
    seconds = getattr(request.module, "WATCHDOG", WATCHDOG)
    name = request.node.nodeid

    def expired(signum, frame):
        raise TimeoutError(f"{name}: still running after {seconds} s (hang?)")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    faulthandler.dump_traceback_later(seconds + 20, exit=True, file=_stderr_fd(request.config))
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(params=["mpi4py", "cmampi"])
def comm(request):
    """A fresh duplicate of the world communicator, plain mpi4py or cmampi-wrapped."""
    if request.param == "mpi4py":
        from mpi4py import MPI

        c = MPI.COMM_WORLD.Dup()
    else:
        from cmampi import MPI

        c = MPI.COMM_WORLD.Dup()
    yield c
    c.Barrier()
    c.Free()


@pytest.fixture
def cmcomm():
    """A fresh cmampi communicator, for behaviour plain mpi4py does not offer."""
    from cmampi import MPI

    c = MPI.COMM_WORLD.Dup()
    yield c
    c.Barrier()
    c.Free()


@pytest.fixture
def checked():
    """A fresh cmampi communicator whose collectives agree on every rank's
    arguments first, as under ``CMAMPI_CHECK_COLLECTIVES=1``: a mismatch raises
    on every rank."""
    from cmampi import MPI

    c = MPI.COMM_WORLD.Dup()
    if c._engine is not None:
        c._engine.checked = True
    yield c
    c.Barrier()
    c.Free()


@pytest.fixture
def MPI(request):
    """The namespace a program would import with the communicator under test:
    ``cmampi.MPI`` for cmampi (its own ``Request``), ``mpi4py.MPI`` otherwise."""
    callspec = getattr(request.node, "callspec", None)
    impl = callspec.params.get("comm", "cmampi") if callspec else "cmampi"
    if impl == "mpi4py" and "cmcomm" not in request.fixturenames \
            and "checked" not in request.fixturenames:
        from mpi4py import MPI

        return MPI
    from cmampi import MPI

    return MPI


@pytest.fixture
def open_mpi_reference(request) -> bool:
    """Whether the communicator under test is plain mpi4py on Open MPI, whose
    library defects some tests document instead of running into them."""
    callspec = getattr(request.node, "callspec", None)
    if not callspec or callspec.params.get("comm") != "mpi4py":
        return False
    from mpi4py import MPI

    return MPI.get_vendor()[0] == "Open MPI"


@pytest.fixture
def mpi_library() -> str:
    """The MPI library in use (``MPI.get_vendor()``'s name), or ``"none"`` on the
    socket channel: where cmampi runs a call in the library, it behaves as it."""
    from cmampi import MPI

    if MPI.CHANNEL != "mpi":
        return "none"
    from mpi4py import MPI as real

    return real.get_vendor()[0]


@pytest.fixture
def needs_mpi(MPI):
    """Skip on the socket channel: the test uses collectives not yet built there."""
    from cmampi import MPI as CMPI

    if CMPI.CHANNEL != "mpi":
        pytest.skip("collectives run on the socket channel once cmampi implements them")
