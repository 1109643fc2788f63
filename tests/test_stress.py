"""Stress: over 20 000 random messages between 4 ranks, every one checked.

The traffic and its checks are ``cmampi.bench.soak``'s (see its docstring): sizes
from 0 to 4 MiB with every protocol boundary, random tags, specific and
wildcard receives, blocking and nonblocking calls in every mode, strided
buffers, object messages. Here it runs a fixed plan from a fixed seed, so a
failure reproduces.
"""

from __future__ import annotations

import os

import pytest

from cmampi.bench.soak import DTYPES, Soak

pytestmark = pytest.mark.mpi(min_size=4)

SEED = 20240607
#: The test command also runs a shorter storm under Python's debug allocator.
MESSAGES = int(os.environ.get("CMAMPI_TEST_STRESS_MESSAGES", 20_000))


def test_stress(cmcomm, MPI, capfd):
    soak = Soak(cmcomm, MPI, seed=SEED)
    try:
        # Uncaptured, so that a deadlock's stack dump (the watchdog's) is seen.
        with capfd.disabled():
            soak.run(min_messages=MESSAGES, watchdog=240)
        totals = soak.totals()
    finally:
        soak.close()
    assert totals["errors"] == 0, "\n".join(totals["first_errors"])
    assert totals["messages"] >= MESSAGES
    assert totals["received"] == totals["messages"], "messages lost"


def test_same_traffic_on_plain_mpi4py(capfd):
    """The same storm on plain mpi4py (contiguous buffers, no float16): the
    harness's expectations are MPI's, so cmampi's results are mpi4py's."""
    from cmampi import MPI as ours

    if ours.CHANNEL != "mpi":
        pytest.skip("plain mpi4py needs the MPI channel")
    if "CMAMPI_TRANSPORT" in os.environ or os.environ.get("PYTHONMALLOC"):
        pytest.skip("the reference runs once, in the plain stress run")
    from mpi4py import MPI


    comm = MPI.COMM_WORLD.Dup()
    soak = Soak(comm, MPI, seed=SEED, strided=False, dtypes=[d for d in DTYPES if d != "f2"])
    try:
        with capfd.disabled():
            soak.run(min_messages=min(MESSAGES, 3000), watchdog=240)
        totals = soak.totals()
    finally:
        soak.close()
        comm.Free()
    assert totals["errors"] == 0, "\n".join(totals["first_errors"])
    assert totals["received"] == totals["messages"], "messages lost"
