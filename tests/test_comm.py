"""Communicator management and queries, alike on mpi4py, cmampi's MPI channel
and cmampi's socket channel."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytestmark = pytest.mark.mpi(min_size=1)


def test_predefined_communicators_cannot_be_freed(comm, MPI):
    for predefined in (MPI.COMM_WORLD, MPI.COMM_SELF):
        with pytest.raises(MPI.Exception) as info:
            predefined.Free()
        assert info.value.Get_error_class() == MPI.ERR_COMM
    MPI.COMM_WORLD.Barrier()        # still there
    assert MPI.COMM_SELF.Get_size() == 1


def test_names(comm, MPI):
    assert MPI.COMM_WORLD.Get_name() == "MPI_COMM_WORLD"
    assert MPI.COMM_SELF.Get_name() == "MPI_COMM_SELF"
    assert comm.Get_name() == ""    # a duplicate has no name of its own
    comm.Set_name("solver")
    assert comm.Get_name() == "solver"


def test_tag_ub_attribute(comm, MPI):
    """``Get_attr(TAG_UB)`` is the largest tag, and that tag works."""
    ub = comm.Get_attr(MPI.TAG_UB)
    assert isinstance(ub, int) and ub >= 32767
    rank = comm.Get_rank()
    got = comm.sendrecv(rank, rank, ub, source=rank, recvtag=ub)
    assert got == rank


def test_ibarrier(comm, MPI):
    """No rank's Ibarrier completes before every rank has called it."""
    rank = comm.Get_rank()
    if rank == 0:
        time.sleep(0.2)
    started = time.monotonic()
    req = comm.Ibarrier()
    while not req.Test():
        time.sleep(0.001)
    if rank != 0 and comm.Get_size() > 1:
        assert time.monotonic() - started > 0.1
    req = comm.Ibarrier()
    req.Wait()
    assert req == MPI.REQUEST_NULL


def test_in_place_where_it_means_nothing(comm, MPI, mpi_library):
    """``IN_PLACE`` as Bcast's buffer: an empty message with MPICH and on the
    socket channel; Open MPI refuses it (``ERR_ARG``) on every rank, with
    plain mpi4py and cmampi alike (the library runs small collectives)."""
    if mpi_library == "Open MPI":
        with pytest.raises(MPI.Exception):
            comm.Bcast(MPI.IN_PLACE, 0)
    else:
        comm.Bcast(MPI.IN_PLACE, 0)
    comm.Barrier()


def test_ibarrier_progresses_while_the_rank_waits_elsewhere(comm, MPI):
    """A pending Ibarrier moves on while its rank is blocked in another call
    (MPI's progress rule): rank 1 waits for its barrier before it sends what
    rank 0 is blocked receiving."""
    rank = comm.Get_rank()
    req = comm.Ibarrier()
    if rank == 0 and comm.Get_size() > 1:
        assert comm.recv(source=1, tag=7) == "go"
        req.Wait()
    elif rank == 1:
        req.Wait()
        comm.send("go", 0, 7)
    else:
        req.Wait()


def test_two_ibarriers_in_flight(comm, MPI):
    first, second = comm.Ibarrier(), comm.Ibarrier()
    MPI.Request.Waitall([second, first])


def test_groups_and_communicators_of_them(comm, MPI):
    """``Get_group``, group algebra, ``Create`` (collective over the
    communicator) and ``Create_group`` (collective over the group only)."""
    rank, size = comm.Get_rank(), comm.Get_size()
    group = comm.Get_group()
    assert (group.Get_size(), group.Get_rank()) == (size, rank)
    assert group.Compare(comm.group) == MPI.IDENT
    reverse = group.Incl(list(range(size))[::-1])
    assert reverse.Compare(group) == (MPI.IDENT if size == 1 else MPI.SIMILAR)
    assert group.Translate_ranks([0, size - 1, MPI.PROC_NULL], reverse) == \
        [size - 1, 0, MPI.PROC_NULL]
    assert MPI.Group.Union(group, reverse).Compare(group) == MPI.IDENT
    assert MPI.Group.Difference(group, group).Get_size() == 0
    with pytest.raises(MPI.Exception) as info:
        group.Incl([size])
    assert info.value.Get_error_class() == MPI.ERR_RANK

    reversed_comm = comm.Create(reverse)
    assert reversed_comm.Get_rank() == size - 1 - rank
    assert reversed_comm.allgather(rank) == list(range(size))[::-1]
    reversed_comm.Free()
    first = comm.Create(group.Incl([0]))
    assert (first == MPI.COMM_NULL) == (rank != 0)
    if rank != 0:
        others = comm.Create_group(group.Excl([0]), 5)
        assert others.Get_size() == size - 1
        assert others.allreduce(rank) == sum(range(1, size))
        others.Free()
    else:
        first.Free()
    assert comm.allreduce(1) == size     # the communicator is still in step
    # Disjoint groups passed by different ranks (MPI 2.2): one communicator each.
    half = group.Range_incl([(0, (size - 1) // 2, 1)])
    mine = half if rank <= (size - 1) // 2 else group.Difference(group, half)
    part = comm.Create(mine)
    assert part.Get_size() == mine.Get_size() and part.allgather(rank) == \
        mine.Translate_ranks(None, group)
    part.Free()
    # Point-to-point traffic in flight while a group makes its communicator.
    big = np.full(1 << 15, float(rank))
    if size > 1 and rank < 2:
        req = comm.Isend(big, 1 - rank, 3)
        sub = comm.Create_group(group.Incl([0, 1]), 2)
        got = np.empty_like(big)
        comm.Recv(got, 1 - rank, 3)
        req.Wait()
        assert (got == 1 - rank).all() and sub.allreduce(rank) == 1
        sub.Free()
    for g in (group, reverse):
        g.Free()
    assert group == MPI.GROUP_NULL
