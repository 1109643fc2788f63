"""Point-to-point with derived datatypes: the same tests against plain mpi4py and
cmampi (differential). A derived datatype's message is its type map's bytes in
order, whatever the buffer's own layout: holes, a lower bound, or an order of
its own (a transpose), on the MPI channel."""

from __future__ import annotations

import numpy as np
import pytest

from cmampi._config import CMA_MIN_DEFAULTS
from cmampi._tuning import CMA_MIN_BUSY_DEFAULTS

pytestmark = pytest.mark.mpi(min_size=2)

#: Elements per side of a square matrix whose transpose is pulled (above every threshold).
BIG = int((2 * max({*CMA_MIN_DEFAULTS.values(), *CMA_MIN_BUSY_DEFAULTS.values()}) // 8) ** 0.5) + 3


@pytest.fixture(autouse=True)
def _mpi_library():
    from cmampi import MPI

    if MPI.CHANNEL != "mpi":
        pytest.skip("derived datatypes need an MPI library (the socket channel has none)")


@pytest.fixture
def every_other(MPI):
    """``every_other(n)``: a committed vector of *n* doubles, one of every two,
    freed after the test."""
    made = []

    def make(n):
        made.append(MPI.DOUBLE.Create_vector(n, 1, 2).Commit())
        return made[-1]

    yield make
    for dt in made:
        dt.Free()


def _upper(MPI, n):
    i = np.arange(n)
    return MPI.DOUBLE.Create_indexed(list(n - i), list(n * i + i)).Commit()


def _transpose(MPI, n):
    row = MPI.DOUBLE.Create_vector(n, 1, n)
    xpose = row.Create_hvector(n, 1, MPI.DOUBLE.Get_extent()[1]).Commit()
    row.Free()
    return xpose


def test_indexed_to_itself(comm, MPI):
    """mpi4py's demo ex-3.01: the upper triangle, sent and received with one type."""
    n = 10
    a = np.arange(n * n, dtype=float).reshape(n, n)
    b = np.zeros((n, n))
    upper = _upper(MPI, n)
    me = comm.Get_rank()
    comm.Sendrecv((a, 1, upper), me, 0, [b, 1, upper], me, 0)
    upper.Free()
    assert np.array_equal(np.triu(b), np.triu(a)) and not np.tril(b, -1).any()


@pytest.mark.parametrize("n", [100, BIG])
@pytest.mark.parametrize("side", ["send", "recv"])
def test_a_transpose_between_ranks(comm, MPI, n, side):
    """mpi4py's demo ex-3.09, between ranks: the transposing type on either side,
    a plain receive or send on the other; small and pulled."""
    rank = comm.Get_rank()
    a = np.arange(n * n, dtype=float).reshape(n, n)
    xpose = _transpose(MPI, n)
    try:
        if rank == 0:
            comm.Send((a, xpose) if side == "send" else (a, MPI.DOUBLE), 1, 4)
        elif rank == 1:
            b = np.zeros((n, n))
            st = MPI.Status()
            comm.Recv((b, MPI.DOUBLE) if side == "send" else (b, xpose), 0, 4, st)
            assert np.array_equal(b, a.T)
            assert st.Get_count(xpose) == 1 and st.Get_count(MPI.DOUBLE) == n * n
    finally:
        xpose.Free()


def test_nonblocking_beside_another_pending_receive(comm, MPI):
    """Strided slices of a matrix (demo ex-3.08) through Isend/Irecv, completed by one
    Waitall with a plain receive pending beside them."""
    rank = comm.Get_rank()
    a = np.arange(30, dtype=float).reshape(6, 5, order="F")
    one = MPI.DOUBLE.Create_vector(3, 1, 2)
    two = one.Create_hvector(3, 1, 12 * MPI.DOUBLE.Get_extent()[1]).Commit()
    one.Free()
    try:
        if rank == 0:
            reqs = [comm.Isend([a, 1, two], 1, 8), comm.Isend(np.arange(4.0), 1, 9)]
            MPI.Request.Waitall(reqs)
        elif rank == 1:
            e = np.zeros((3, 3), order="F")
            other = np.zeros(4)
            reqs = [comm.Irecv(other, 0, 9), comm.Irecv((e, MPI.DOUBLE), 0, 8)]
            MPI.Request.Waitall(reqs)
            assert np.array_equal(e, a[::2, ::2]) and np.array_equal(other, np.arange(4.0))
    finally:
        two.Free()


def test_a_shorter_message_fills_the_type_map_from_its_start(comm, MPI, every_other):
    rank = comm.Get_rank()
    vec = every_other(10)
    if rank == 0:
        comm.Send(np.arange(1.0, 6.0), 1, 3)
    elif rank == 1:
        b = np.full(20, -1.0)
        st = MPI.Status()
        comm.Recv([b, 1, vec], 0, 3, st)
        assert np.array_equal(b[:10:2], np.arange(1.0, 6.0))
        assert (b[1::2] == -1).all() and (b[10:] == -1).all()
        assert st.Get_count(MPI.DOUBLE) == 5 and st.Get_count(vec) == MPI.UNDEFINED


def test_a_longer_message_is_truncated_and_writes_nothing_outside(comm, MPI, every_other):
    rank = comm.Get_rank()
    vec = every_other(4)
    if rank == 0:
        comm.Send(np.arange(10.0), 1, 3)
    elif rank == 1:
        b = np.full(12, -1.0)
        with pytest.raises(MPI.Exception) as info:
            comm.Recv([b, 1, vec], 0, 3)
        assert info.value.Get_error_class() == MPI.ERR_TRUNCATE
        assert (b[1:8:2] == -1).all() and (b[8:] == -1).all()
    comm.Barrier()      # the communicator still works
    if rank == 0:
        comm.Send(np.arange(4.0), 1, 5)
    elif rank == 1:
        got = np.zeros(4)
        comm.Recv(got, 0, 5)
        assert np.array_equal(got, np.arange(4.0))


def test_a_struct_at_absolute_addresses(comm, MPI):
    rank = comm.Get_rank()
    x, k = np.zeros(3), np.zeros(2, np.int32)
    if rank == 0:
        x[:], k[:] = [1.5, 2.5, 3.5], [7, 9]
    st = MPI.Datatype.Create_struct([3, 2], [MPI.Get_address(x), MPI.Get_address(k)],
                                    [MPI.DOUBLE, MPI.INT]).Commit()
    try:
        if rank == 0:
            comm.Send([MPI.BOTTOM, 1, st], 1, 6)
        elif rank == 1:
            comm.Recv([MPI.BOTTOM, 1, st], 0, 6)
            assert x.tolist() == [1.5, 2.5, 3.5] and k.tolist() == [7, 9]
    finally:
        st.Free()


def test_predefined_pairs_with_holes(comm, MPI):
    """``DOUBLE_INT`` (12 bytes in an extent of 16) over a numpy structured array."""
    rank = comm.Get_rank()
    dt = np.dtype([("v", "f8"), ("i", "i4")], align=True)
    assert dt.itemsize == MPI.DOUBLE_INT.Get_extent()[1]
    if rank == 0:
        a = np.zeros(5, dt)
        a["v"], a["i"] = np.arange(5) * 0.5, np.arange(5) + 10
        comm.Send([a, MPI.DOUBLE_INT], 1, 2)
    elif rank == 1:
        b = np.zeros(5, dt)
        st = MPI.Status()
        comm.Recv([b, MPI.DOUBLE_INT], 0, 2, st)
        assert b["v"].tolist() == [0, 0.5, 1, 1.5, 2] and b["i"].tolist() == [10, 11, 12, 13, 14]
        assert st.Get_count(MPI.BYTE) == 5 * MPI.DOUBLE_INT.Get_size()


def test_persistent_and_synchronous_sends_read_the_buffer_when_started(comm, MPI, every_other):
    rank = comm.Get_rank()
    vec = every_other(3)
    if rank == 0:
        a = np.zeros(6)
        req = comm.Send_init([a, 1, vec], 1, 1)
        for k in range(3):
            a[:] = np.arange(6) + 10 * k
            req.Start()
            req.Wait()
        req.Free()
        comm.Ssend([a, 1, vec], 1, 2)
    elif rank == 1:
        for k in range(3):
            got = np.zeros(3)
            comm.Recv(got, 0, 1)
            assert got.tolist() == [10 * k, 10 * k + 2, 10 * k + 4]
        comm.Recv(got, 0, 2)
        assert got.tolist() == [20, 22, 24]


def test_a_count_past_the_buffer_raises_before_anything_moves(cmcomm, every_other):
    vec, me = every_other(4), cmcomm.Get_rank()
    with pytest.raises(ValueError, match="span bytes"):
        cmcomm.Isend([np.zeros(6), 1, vec], me, 1)
    with pytest.raises(ValueError, match="span bytes"):
        cmcomm.Irecv([np.zeros(6), 1, vec], me, 1)
    with pytest.raises(BufferError):
        cmcomm.Irecv([_read_only(8), 1, vec], me, 1)
    from cmampi import MPI

    down = MPI.INT.Create_resized(0, -4).Commit()     # each element 4 bytes before the last
    try:
        with pytest.raises(ValueError, match="span bytes"):
            cmcomm.Isend([np.arange(8, dtype=np.int32)[4:], 3, down], me, 1)
    finally:
        down.Free()
    assert not cmcomm.Iprobe(me, 1)


def _read_only(n):
    a = np.zeros(n)
    a.flags.writeable = False
    return a


def test_the_program_may_free_its_datatype_while_a_receive_is_pending(comm, MPI):
    rank = comm.Get_rank()
    if rank == 0:
        comm.Send(np.arange(3.0), 1, 4)
        comm.Send(np.arange(3.0) + 10, 1, 5)
        comm.Send(np.arange(3.0) + 20, 1, 5)
    elif rank == 1:
        every_other = MPI.DOUBLE.Create_vector(3, 1, 2).Commit()
        b = np.full(6, -1.0)
        req = comm.Irecv([b, 1, every_other], 0, 4)
        c = np.full(6, -1.0)
        persistent = comm.Recv_init([c, 1, every_other], 0, 5)
        every_other.Free()
        req.Wait()
        assert b.tolist() == [0, -1, 1, -1, 2, -1]
        for k in (1, 2):
            persistent.Start()
            persistent.Wait()
            assert c.tolist() == [10 * k, -1, 10 * k + 1, -1, 10 * k + 2, -1]
        persistent.Free()


def test_a_datatype_of_zero_extent_repeats_its_element(comm, MPI):
    rank = comm.Get_rank()
    same = MPI.INT.Create_resized(0, 0).Commit()
    try:
        if rank == 0:
            comm.Send([np.array([7, 8], np.int32), 3, same], 1, 2)
        elif rank == 1:
            got = np.zeros(4, np.int32)
            st = MPI.Status()
            comm.Recv(got, 0, 2, st)
            assert got.tolist() == [7, 7, 7, 0] and st.Get_count(MPI.INT) == 3
    finally:
        same.Free()


def test_an_objects_message_into_a_derived_receive_is_its_pickle(comm, MPI):
    """A buffer receive of what ``send`` sent gets the object's pickle: also when
    it is large enough to travel behind a record (cmampi) and lands in a type map."""
    import pickle

    rank = comm.Get_rank()
    obj = [np.arange(1 << 17, dtype=np.float64), b"x" * 100000]
    n = 4 << 20
    every_other = MPI.BYTE.Create_vector(n, 1, 2).Commit()
    try:
        if rank == 0:
            comm.send(obj, 1, 3)
        elif rank == 1:
            buf = np.zeros(2 * n, np.uint8)
            st = MPI.Status()
            comm.Recv([buf, 1, every_other], 0, 3, st)
            got = pickle.loads(buf[::2][:st.Get_count(MPI.BYTE)].tobytes())
            assert np.array_equal(got[0], obj[0]) and got[1] == obj[1]
    finally:
        every_other.Free()


def test_copies_of_persistent_and_partitioned_requests_keep_their_datatype(comm, MPI):
    """The program frees its datatype, and keeps only a copy of the request object."""
    import gc

    rank = comm.Get_rank()
    if rank > 1:
        return
    every_other = MPI.DOUBLE.Create_vector(2, 1, 2).Commit()
    a = np.arange(4.0) if rank == 0 else np.zeros(4)
    make = comm.Send_init if rank == 0 else comm.Recv_init
    first = make([a, 1, every_other], 1 - rank, 7)
    req = MPI.Prequest(first)
    del first
    gc.collect()
    every_other.Free()
    req.Start()
    req.Wait()
    req.Free()
    if rank == 1:
        assert a.tolist() == [0, 0, 2, 0]
    if not hasattr(comm, "Psend_init") or MPI.Get_version() < (4, 0):
        return
    again = MPI.DOUBLE.Create_vector(2, 1, 2).Commit()
    b = np.arange(4.0) + 10 if rank == 0 else np.zeros(4)
    part = comm.Psend_init([b, 1, again], 1, 1, 8) if rank == 0 else \
        comm.Precv_init([b, 1, again], 1, 0, 8)
    again.Free()
    part.Start()
    if rank == 0:
        part.Pready(0)
    part.Wait()
    part.Free()
    if rank == 1:
        assert b.tolist() == [10, 0, 12, 0]
