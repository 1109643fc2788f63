"""MPI's progress rule: a rank blocked in a collective still completes the
receives it has posted, so that their senders, blocked in a standard-mode send,
get on to the collective too.

On cmampi a message of 1 MiB or more, or an object with a large buffer, is
pulled by its receiver, which then frees the sender: a rank blocked in a
collective of the MPI library acts through the progress helper (`_watch`).
Each buffer test runs on plain mpi4py and on cmampi; on the socket channel a
rank making a communicator does not act (README, Limits): they are skipped
there.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.mpi(min_size=2)

#: A hang here is the failure: fail well before the job's watchdog.
WATCHDOG = 60

#: 2 MiB of float64: pulled on cmampi's MPI channel.
N = 1 << 18

COLLECTIVES = {
    "Barrier": lambda c, rank: c.Barrier(),
    "barrier": lambda c, rank: c.barrier(),
    "Bcast": lambda c, rank: c.Bcast(np.zeros(4), 0),
    "Allreduce": lambda c, rank: c.Allreduce(np.ones(4), np.zeros(4)),
    "Allreduce 16 MiB": lambda c, rank: c.Allreduce(np.ones(1 << 21), np.zeros(1 << 21)),
    "allgather": lambda c, rank: c.allgather(rank),
    "gather": lambda c, rank: c.gather(rank, 0),
    "Dup": lambda c, rank: c.Dup().Free(),
    "Split": lambda c, rank: c.Split(rank % 2, rank).Free(),
}


def _socket(MPI) -> bool:
    return getattr(MPI, "CHANNEL", "mpi") == "socket"


@pytest.mark.parametrize("call", list(COLLECTIVES))
def test_a_receive_posted_before_a_collective_completes_during_it(comm, MPI, call):
    """Rank 1 sends rank 0 2 MiB with a blocking ``Send``, then enters the
    collective; rank 0, its ``Irecv`` posted, enters the collective at once and
    waits for the receive after it."""
    if _socket(MPI):
        pytest.skip("the socket channel: a rank making a communicator does not act")
    rank = comm.Get_rank()
    collective = COLLECTIVES[call]
    for step in range(2):
        if rank == 0:
            buf = np.zeros(N)
            req = comm.Irecv(buf, 1, 30 + step)
            collective(comm, rank)
            req.Wait()
            assert (buf == np.arange(N) + step).all()
        elif rank == 1:
            comm.Send(np.arange(N, dtype=np.float64) + step, 0, 30 + step)
            collective(comm, rank)
        else:
            collective(comm, rank)


@pytest.mark.parametrize("call", list(COLLECTIVES))
def test_an_object_receive_posted_before_a_collective_completes_during_it(cmcomm, MPI, call):
    """The same with objects: rank 1 ``send``s an object holding a large array
    (its buffer pulled), and a long pickle (announced first), then enters the
    collective; rank 0's ``irecv`` is posted before it enters."""
    if _socket(MPI):
        pytest.skip("the socket channel: a rank making a communicator does not act")
    rank = cmcomm.Get_rank()
    collective = COLLECTIVES[call]
    objects = [{"array": np.arange(N, dtype=np.float64)}, list(range(300_000))]
    for step, obj in enumerate(objects):
        if rank == 0:
            req = cmcomm.irecv(source=1, tag=40 + step)
            collective(cmcomm, rank)
            got = req.wait()
            if step == 0:
                assert (got["array"] == obj["array"]).all()
            else:
                assert got == obj
        elif rank == 1:
            cmcomm.send(obj, 0, 40 + step)
            collective(cmcomm, rank)
        else:
            collective(cmcomm, rank)


def test_the_helper_stays_out_of_sight(cmcomm, MPI):
    """The progress helper is no thread the program sees, and acted where a
    rank was blocked with a pulled message pending (the MPI channel, with
    ``MPI_THREAD_MULTIPLE``)."""
    import threading

    from cmampi import _watch

    if _socket(MPI) or MPI.Query_thread() < MPI.THREAD_MULTIPLE:
        pytest.skip("no progress helper here")
    threads = threading.enumerate()
    assert _watch._STATE.thread not in [t.ident for t in threads]
    rank = cmcomm.Get_rank()
    before = _watch.acted()
    if rank == 0:
        buf = np.zeros(N)
        req = cmcomm.Irecv(buf, 1, 50)
        cmcomm.Barrier()
        req.Wait()
        assert buf[-1] == N - 1
        if cmcomm._engine.cma[1]:   # pulled: only the helper could act
            assert _watch.acted() > before
    elif rank == 1:
        cmcomm.Send(np.arange(N, dtype=np.float64), 0, 50)
        cmcomm.Barrier()
    else:
        cmcomm.Barrier()
    assert threading.enumerate() == threads


def test_requests_dropped_while_the_helper_acts(cmcomm, MPI):
    """Rank 0 posts many receives, blocks in ``Barrier`` while the helper takes
    them over, then drops their requests at once (their finalizers detach the
    ops, under the engine's lock): every message still lands, and the helper
    goes on."""
    import time

    from cmampi import _watch
    from cmampi import p2p as _p2p

    if _socket(MPI) or MPI.Query_thread() < MPI.THREAD_MULTIPLE:
        pytest.skip("no progress helper here")
    rank, many = cmcomm.Get_rank(), 20000
    if rank == 0:
        bufs = [bytearray(8) for _ in range(many)]
        reqs = [cmcomm.Irecv(b, 1, 60 + k % 100) for k, b in enumerate(bufs)]
        cmcomm.Barrier()        # rank 1 is late: the helper acts meanwhile
        while reqs:
            reqs.pop()
        cmcomm.Barrier()
        cmcomm.Barrier()        # rank 1 has sent them all
        while _p2p._DETACHED:
            _p2p.progress()
        assert all(b == (k % 251).to_bytes(8, "little") for k, b in enumerate(bufs))
        assert not _watch._STATE.warned and _watch._STATE.done.locked()
    elif rank == 1:
        time.sleep(0.3)
        cmcomm.Barrier()
        cmcomm.Barrier()
        for k in range(many):
            cmcomm.Send((k % 251).to_bytes(8, "little"), 0, 60 + k % 100)
        cmcomm.Barrier()
    else:
        cmcomm.Barrier()
        cmcomm.Barrier()
        cmcomm.Barrier()
