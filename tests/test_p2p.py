"""Point-to-point: the same tests against plain mpi4py and cmampi (differential)."""

from __future__ import annotations

import array
import mmap
import time

import numpy as np
import pytest

from cmampi._config import CMA_MIN_DEFAULTS, config
from cmampi._tuning import CMA_MIN_BUSY_DEFAULTS
from cmampi._wire import CTRL_MAX

pytestmark = pytest.mark.mpi(min_size=2)

LIMIT = config.eager_limit
#: Each channel's pull thresholds (a rank with receives pending pulls from the higher).
PULL_THRESHOLDS = {*CMA_MIN_DEFAULTS.values(), *CMA_MIN_BUSY_DEFAULTS.values()}
# Around every protocol switch: eager limit, control band, the pull thresholds,
# cooperative copy.
SIZES = sorted({0, 1, 7, 1023, LIMIT - 1, LIMIT, LIMIT + 1, LIMIT + 300, 3 * LIMIT + 5,
                config.coop_min - 1, config.coop_min, 3 * config.coop_min + 17}
               | {m + d for m in PULL_THRESHOLDS for d in (-1, 0, 1)})
DTYPES = ["b1", "i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4", "f8", "c8", "c16"]


def pattern(n: int, dtype="u1", seed: int = 0) -> np.ndarray:
    """Deterministic, position-dependent content, so misplaced bytes are caught."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=n * np.dtype(dtype).itemsize, dtype=np.uint8)
    return raw.view(dtype)


# -- sizes and types ------------------------------------------------------------------------

@pytest.mark.parametrize("n", SIZES)
def test_sizes(comm, n):
    rank = comm.Get_rank()
    if rank == 0:
        comm.Send(pattern(n, seed=n), 1, tag=3)
    elif rank == 1:
        buf = np.zeros(n, np.uint8)
        comm.Recv(buf, 0, 3)
        assert np.array_equal(buf, pattern(n, seed=n))


def test_fifty_mib(comm):
    rank = comm.Get_rank()
    n = 50 << 20
    if rank == 0:
        a = np.arange(n // 8, dtype=np.int64)
        comm.Send(a, 1, 1)
    elif rank == 1:
        b = np.empty(n // 8, np.int64)
        comm.Recv(b, 0, 1)
        assert b[0] == 0 and b[-1] == n // 8 - 1 and np.array_equal(b, np.arange(n // 8))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (3,), (5, 7), (2, 3, 4096)])
def test_dtypes_shapes(comm, dtype, shape):
    rank = comm.Get_rank()
    n = int(np.prod(shape))
    src = pattern(n, dtype, seed=len(shape)).reshape(shape)
    if rank == 0:
        comm.Send(src, 1, 5)
    elif rank == 1:
        dst = np.zeros(shape, dtype)
        comm.Recv(dst, 0, 5)
        assert dst.tobytes() == src.tobytes()


@pytest.mark.parametrize("n", [100, LIMIT + 8])
def test_fortran_order_is_memory_order(comm, n):
    """Fortran-contiguous buffers travel in memory order, as in mpi4py."""
    rank = comm.Get_rank()
    src = np.asfortranarray(np.arange(n * 4, dtype=np.float64).reshape(n, 4))
    if rank == 0:
        comm.Send(src, 1, 2)
    elif rank == 1:
        dst = np.zeros(n * 4)
        comm.Recv(dst, 0, 2)
        assert np.array_equal(dst, src.ravel(order="F"))


@pytest.mark.parametrize("spec", ["bytes", "bytearray", "memoryview", "array", "typed"])
def test_buffer_kinds(comm, spec, MPI):
    import array

    rank = comm.Get_rank()
    data = bytes(range(256)) * 300  # above the eager limit
    if rank == 0:
        send = {"bytes": data, "bytearray": bytearray(data), "memoryview": memoryview(data),
                "array": array.array("B", data), "typed": [data, MPI.BYTE]}[spec]
        comm.Send(send, 1, 0)
    elif rank == 1:
        out = bytearray(len(data))
        recv = {"array": array.array("B", bytes(len(data))),
                "typed": [out, len(data), MPI.BYTE]}.get(spec, out)
        comm.Recv(recv, 0, 0)
        got = bytes(recv) if spec == "array" else bytes(out)
        assert got == data


@pytest.mark.parametrize("nonblocking", [False, True], ids=["Send", "Isend"])
@pytest.mark.parametrize("n", [0, 8, LIMIT, LIMIT + 8, 64 << 10])
@pytest.mark.parametrize("kind", ["numpy-spec", "float64", "bytearray", "bytes", "mmap-spec"])
def test_byte_specs_of_every_buffer_kind(comm, MPI, kind, n, nonblocking):
    """``[buffer, count, MPI.BYTE]`` sends exactly *count* bytes of the buffer,
    whatever holds them (numpy arrays of any item type, bytearray, bytes, mmap),
    in every size range (as themselves, control band, larger)."""
    rank = comm.Get_rank()
    # Longer than the count, in whole float64 items.
    data = (bytes(range(256)) * (n // 256 + 1))[: (n // 8 + 2) * 8]
    if rank == 0:
        if kind == "float64":
            buf = np.frombuffer(data, np.float64).copy()
        else:   # the buffer of the form programs pass (see `_form`)
            made = _form(MPI, kind, np.frombuffer(data, np.uint8), False)[0]
            buf = made[0] if isinstance(made, list) else made
        spec = [buf, n, MPI.BYTE]
        if nonblocking:
            comm.Isend(spec, 1, 4).Wait()
        else:
            comm.Send(spec, 1, 4)
    elif rank == 1:
        out = bytearray(len(data) + 16)
        status = MPI.Status()
        comm.Recv(out, 0, 4, status)
        assert status.Get_count(MPI.BYTE) == n
        assert bytes(out[:n]) == data[:n] and not any(out[n:])


def test_byte_spec_of_a_strided_view(cmcomm, MPI):
    """A strided numpy view in a ``[buffer, count, MPI.BYTE]`` send, which
    mpi4py refuses, sends its elements in order with cmampi, as its other spec
    forms do."""
    rank = cmcomm.Get_rank()
    a = np.arange(64, dtype=np.uint8)
    for k, call in enumerate((cmcomm.Send, lambda *args: cmcomm.Isend(*args).Wait())):
        if rank == 0:
            call([a[::2], 8, MPI.BYTE], 1, k)
        elif rank == 1:
            out = bytearray(8)
            cmcomm.Recv(out, 0, k)
            assert bytes(out) == bytes(range(0, 16, 2))


def test_byte_spec_receives_refuse_before_taking_the_message(cmcomm, MPI):
    """Blocking ``[buffer, count, MPI.BYTE]`` receives into a read-only ``mmap``
    or an array of Python objects raise before the message is taken; one into a
    strided view (mpi4py refuses it) gets the message in order, as cmampi's
    other spec forms do."""
    rank = cmcomm.Get_rank()
    data = pattern(16, seed=3)
    if rank == 0:
        cmcomm.Send(data, 1, 9)
    elif rank == 1:
        with mmap.mmap(-1, 16, access=mmap.ACCESS_READ) as ro, \
                pytest.raises((BufferError, TypeError)):
            cmcomm.Recv([ro, 16, MPI.BYTE], 0, 9)
        for call in (cmcomm.Recv, lambda *args: cmcomm.Irecv(*args).Wait()):
            with pytest.raises(TypeError):
                call([np.empty(16, object), 16, MPI.BYTE], 0, 9)
        base = np.zeros(32, np.uint8)
        cmcomm.Recv([base[::2], 16, MPI.BYTE], 0, 9)
        assert (base[::2] == data).all() and not base[1::2].any()
    cmcomm.Barrier()


def test_nonblocking_byte_spec_of_python_objects_is_refused(cmcomm, MPI):
    """An array of Python objects in a nonblocking ``[buffer, count, MPI.BYTE]``
    send has no bytes to send: refused whatever the count."""
    objects = np.empty(1 << 17, object)
    dest = (cmcomm.Get_rank() + 1) % cmcomm.Get_size()
    for count in (16, 1 << 20):
        with pytest.raises(TypeError):
            cmcomm.Isend([objects, count, MPI.BYTE], dest, 3)
    cmcomm.Barrier()


@pytest.mark.parametrize("case", ["count past the end", "negative count"])
def test_byte_specs_mpi4py_refuses(comm, MPI, case):
    """Bad ``[buffer, count, MPI.BYTE]`` sends raise before anything is sent,
    and the communicator goes on: a count past the buffer's end (mpi4py reads
    past it; cmampi refuses), a negative count."""
    rank = comm.Get_rank()
    a = np.arange(64, dtype=np.uint8)
    spec = {"count past the end": [a, 65, MPI.BYTE], "negative count": [a, -1, MPI.BYTE]}[case]
    if rank == 0:
        if case != "count past the end" or type(comm).__module__.startswith("cmampi"):
            for call in (comm.Send, comm.Isend):
                with pytest.raises((BufferError, ValueError, MPI.Exception)):
                    call(spec, 1, 6)
        comm.Send([a, 4, MPI.BYTE], 1, 6)
    elif rank == 1:
        out = bytearray(8)
        comm.Recv(out, 0, 6)
        assert bytes(out[:4]) == bytes(range(4))


@pytest.mark.parametrize("n", [64, 4 * LIMIT])
def test_count_and_displacement(comm, MPI, n):
    rank = comm.Get_rank()
    if rank == 0:
        a = np.arange(n, dtype=np.float64)
        comm.Send([a, (n // 2, n // 4), MPI.DOUBLE], 1, 9)
    elif rank == 1:
        b = np.full(n, -1.0)
        comm.Recv([b, (n // 2, 10), MPI.DOUBLE], 0, 9)
        assert np.array_equal(b[10 : 10 + n // 2], np.arange(n // 4, n // 4 + n // 2))
        assert (b[:10] == -1).all() and (b[10 + n // 2 :] == -1).all()


# -- status, matching, ordering ---------------------------------------------------------------

@pytest.mark.parametrize("n", [10, LIMIT])
def test_any_source_status(comm, MPI, n):
    rank, size = comm.Get_rank(), comm.Get_size()
    if rank != 0:
        comm.Send(np.full(n * rank, rank, np.float64), 0, tag=100 + rank)
    else:
        seen = set()
        for _ in range(size - 1):
            st = MPI.Status()
            buf = np.zeros(n * size)
            comm.Recv(buf, MPI.ANY_SOURCE, MPI.ANY_TAG, st)
            src = st.Get_source()
            assert st.Get_tag() == 100 + src
            assert st.Get_count(MPI.DOUBLE) == n * src
            assert st.Get_count() == 8 * n * src
            assert (buf[: n * src] == src).all() and (buf[n * src :] == 0).all()
            seen.add(src)
        assert seen == set(range(1, size))


def test_non_overtaking_mixed_sizes(comm, MPI):
    """Small (inline) and large (pulled) messages with one tag arrive in send order."""
    rank = comm.Get_rank()
    sizes = [8, 3 * LIMIT, 16, 5 * LIMIT, 1, 0, 2 * LIMIT, 9] * 3
    if rank == 0:
        reqs = [comm.Isend(np.full(max(n, 1), i, np.int32)[:n], 1, 4) for i, n in enumerate(sizes)]
        MPI.Request.Waitall(reqs)
    elif rank == 1:
        for i, n in enumerate(sizes):
            buf = np.full(max(n, 1), -1, np.int32)
            st = MPI.Status()
            comm.Recv(buf, MPI.ANY_SOURCE, 4, st)
            assert st.Get_count(MPI.INT) == n
            assert (buf[:n] == i).all()


def test_tags_select(comm, MPI):
    rank = comm.Get_rank()
    if rank == 0:
        bufs = [np.full(LIMIT + tag, tag, np.uint8) for tag in (1, 2, 3)]
        MPI.Request.Waitall([comm.Isend(b, 1, tag) for tag, b in zip((1, 2, 3), bufs)])
    elif rank == 1:
        for tag in (3, 1, 2):
            buf = np.zeros(LIMIT + 3, np.uint8)
            st = MPI.Status()
            comm.Recv(buf, 0, tag, st)
            assert st.Get_tag() == tag and (buf[: LIMIT + tag] == tag).all()


def test_proc_null(comm, MPI):
    st = MPI.Status()
    buf = np.ones(4)
    comm.Send(buf, MPI.PROC_NULL)
    comm.Recv(buf, MPI.PROC_NULL, 0, st)
    assert st.Get_source() == MPI.PROC_NULL and st.Get_tag() == MPI.ANY_TAG
    assert st.Get_count() == 0 and (buf == 1).all()
    req = comm.Irecv(buf, MPI.PROC_NULL)
    req.Wait()


# -- truncation -------------------------------------------------------------------------------

@pytest.mark.parametrize("call", ["Recv", "Irecv"])
@pytest.mark.parametrize(("n", "room"), [(40, 8), (4 * LIMIT, 8), (100_000, 8),
                                         (100_000, 6000), (300_000, 200_000)])
def test_truncation(comm, MPI, n, room, call, open_mpi_reference, mpi_library):
    """A receive too small for its message fails with MPI's truncation error
    and writes nothing outside its buffer, whatever the buffer's size (staged,
    or landing in place), blocking or not; the communicator keeps working. Its
    status counts what the library counts: the whole message (Open MPI) or the
    bytes the buffer took (MPICH)."""
    if open_mpi_reference and n > 4096:
        pytest.skip("Open MPI writes a truncated large message past the receive buffer "
                    "(this process's heap)")
    rank = comm.Get_rank()
    if rank == 0:
        comm.Send(np.ones(n, np.uint8), 1, 6)
        comm.Send(np.arange(4, dtype=np.uint8), 1, 6)
    elif rank == 1:
        base = np.full(room + 4096 + 16, 7, np.uint8)
        view = base[8 : 8 + room]
        st, peeked = MPI.Status(), MPI.Status()
        # (MPICH's own Get_status of a truncated receive counts 0 bytes, and so
        # does the Wait after it)
        peek = call == "Irecv" and not (mpi_library == "MPICH" and
                                        type(comm).__module__.startswith("mpi4py"))
        with pytest.raises(MPI.Exception) as info:
            if call == "Recv":
                comm.Recv(view, 0, 6, st)
            else:
                req = comm.Irecv(view, 0, 6)
                while peek and not req.Get_status(peeked):
                    pass
                req.Wait(st)
        assert info.value.Get_error_class() == MPI.ERR_TRUNCATE
        assert st.Get_count(MPI.BYTE) == (n if mpi_library == "Open MPI" else room)
        if peek:
            assert peeked.Get_count(MPI.BYTE) == st.Get_count(MPI.BYTE)
        assert st.Get_source() == 0 and st.Get_tag() == 6
        assert (base[:8] == 7).all() and (base[8 + room :] == 7).all()  # nothing written outside
        after = np.zeros(4, np.uint8)
        comm.Recv(after, 0, 6)  # the communicator keeps working
        assert list(after) == [0, 1, 2, 3]


@pytest.mark.parametrize("call", ["Waitall", "Waitsome", "Testall", "waitall"])
@pytest.mark.parametrize("n", [100, 100_000])
def test_a_failure_among_several_requests_is_reported_in_status(comm, MPI, n, call,
                                                                open_mpi_reference, mpi_library):
    """Completing several requests at once, one of which fails, raises
    ``ERR_IN_STATUS``, as MPI's ``Waitall`` and friends do: each status holds
    its own request's error, and the one that succeeded its message."""
    if open_mpi_reference and n > 4096:
        pytest.skip("Open MPI writes a truncated large message past the receive buffer")
    if call == "Testall" and mpi_library not in ("Open MPI", "none"):
        pytest.skip("MPICH's Testall leaves requests active when one fails")
    rank = comm.Get_rank()
    if rank == 0:
        comm.Send(np.full(8, 3, np.uint8), 1, 4)
        comm.Send(np.ones(n, np.uint8), 1, 5)
    elif rank == 1:
        fine = np.zeros(8, np.uint8)
        base = np.full(n + 64, 7, np.uint8)
        small = base[8:58]
        reqs = [comm.Irecv(fine, 0, 4), comm.Irecv(small, 0, 5)]
        statuses = [MPI.Status(), MPI.Status()]
        with pytest.raises(MPI.Exception) as info:
            if call == "Waitall":
                MPI.Request.Waitall(reqs, statuses)
            elif call == "waitall":
                MPI.Request.waitall(reqs, statuses)
            elif call == "Testall":
                while not MPI.Request.Testall(reqs, statuses):
                    pass
            else:
                while any(reqs):
                    MPI.Request.Waitsome(reqs, statuses)
        assert info.value.Get_error_class() == MPI.ERR_IN_STATUS
        if call != "Waitsome":   # (its statuses follow the order of completion)
            assert MPI.Get_error_class(statuses[1].Get_error()) == MPI.ERR_TRUNCATE
            assert statuses[1].Get_count(MPI.BYTE) == (n if mpi_library == "Open MPI" else 50)
            assert statuses[0].Get_error() == MPI.SUCCESS
            assert statuses[0].Get_count(MPI.BYTE) == 8
        assert (fine == 3).all()
        assert (base[:8] == 7).all() and (base[58:] == 7).all()
        after = np.zeros(4, np.uint8)
        comm.Irecv(after, 0, 6).Wait()  # the communicator keeps working
    if rank == 0:
        comm.Send(np.arange(4, dtype=np.uint8), 1, 6)


@pytest.mark.parametrize("call", ["Send", "Ssend", "Isend"])
@pytest.mark.parametrize("n", [0, 1, LIMIT, LIMIT + 1, LIMIT + CTRL_MAX - 1])
def test_blocking_receives_shorter_than_a_control_message(comm, MPI, n, call):
    """A blocking receive into a buffer shorter than cmampi's control messages
    (it sees the message's size first) takes every kind of message that fits:
    as itself, behind a header (a length in the control band), synchronous;
    its status and the bytes after the message are right."""
    rank = comm.Get_rank()
    data = pattern(n, seed=n)
    if rank == 0:
        {"Send": comm.Send, "Ssend": comm.Ssend,
         "Isend": lambda *a: comm.Isend(*a).Wait()}[call](data, 1, 8)
    elif rank == 1:
        room = LIMIT + CTRL_MAX - 1
        buf = np.full(room, 7, np.uint8)
        st = MPI.Status()
        comm.Recv(buf, 0, 8, st)
        assert st.Get_count(MPI.BYTE) == n and st.Get_source() == 0 and st.Get_tag() == 8
        assert (buf[:n] == data).all() and (buf[n:] == 7).all()


# -- nonblocking ----------------------------------------------------------------------------

def test_nonblocking_storm(comm, MPI):
    rank, size = comm.Get_rank(), comm.Get_size()
    rng = np.random.default_rng(1234)  # same on every rank: everyone knows all sizes
    counts = rng.integers(0, 4 * LIMIT, size=(size, size, 12))
    recvs, sends, bufs = [], [], []
    for src in range(size):
        if src == rank:
            continue
        for k, n in enumerate(counts[src, rank]):
            b = np.empty(int(n), np.uint8)
            bufs.append((src, k, b))
            recvs.append(comm.Irecv(b, src, k))
    for dst in range(size):
        if dst == rank:
            continue
        for k, n in enumerate(counts[rank, dst]):
            sends.append(comm.Isend(pattern(int(n), seed=rank * 1000 + dst * 50 + k), dst, k))
    MPI.Request.Waitall(recvs + sends)
    for src, k, b in bufs:
        assert np.array_equal(b, pattern(b.size, seed=src * 1000 + rank * 50 + k))


def test_exchange_large_without_deadlock(comm, MPI):
    """Both ranks post Irecv, then a blocking large Send: must not deadlock."""
    rank = comm.Get_rank()
    if rank > 1:
        return
    peer = 1 - rank
    n = 8 * LIMIT
    b = np.zeros(n, np.uint8)
    r = comm.Irecv(b, peer, 0)
    comm.Send(np.full(n, rank + 1, np.uint8), peer, 0)
    r.Wait()
    assert (b == peer + 1).all()


@pytest.mark.parametrize("n0, n1", [(3 << 19, 3 << 19), (3 << 19, 3 << 20), (100_000, 3 << 20)])
def test_blocking_send_beside_a_pending_receive_while_the_peer_sends_first(comm, MPI, n0, n1):
    """Rank 0 posts a receive, then sends with a blocking Send, then waits;
    rank 1 sends first, then receives. Valid MPI whatever the sizes: rank 0's
    Send must not block without seeing its pending receive through, which may
    have matched a message rank 1's send waits on (a pull's descriptor)."""
    rank = comm.Get_rank()
    if rank == 0:
        got = np.zeros(n1, np.uint8)
        r = comm.Irecv(got, 1, 8)
        comm.Send(pattern(n0, seed=1), 1, 9)
        r.Wait()
        assert np.array_equal(got, pattern(n1, seed=2))
    elif rank == 1:
        comm.Send(pattern(n1, seed=2), 0, 8)
        got = np.zeros(n0, np.uint8)
        comm.Recv(got, 0, 9)
        assert np.array_equal(got, pattern(n0, seed=1))
    comm.Barrier()


def test_test_and_waitany(comm, MPI):
    rank = comm.Get_rank()
    if rank == 0:
        comm.Barrier()
        for tag in (2, 1):
            comm.Send(np.full(LIMIT * 2, tag, np.uint8), 1, tag)
    else:
        bufs = [np.zeros(LIMIT * 2, np.uint8) for _ in range(2)]
        reqs = [comm.Irecv(bufs[0], 0, 1), comm.Irecv(bufs[1], 0, 2)] if rank == 1 else []
        if rank == 1:
            assert not reqs[0].Test() and not reqs[1].Test()
        comm.Barrier()
        if rank == 1:
            st = MPI.Status()
            first = MPI.Request.Waitany(reqs, st)
            assert st.Get_tag() == first + 1
            assert MPI.Request.Waitany(reqs) == 1 - first
            assert MPI.Request.Waitany(reqs) == MPI.UNDEFINED
            assert (bufs[0] == 1).all() and (bufs[1] == 2).all()


def test_testall_testsome_waitsome(comm, MPI):
    rank = comm.Get_rank()
    if rank > 1:
        return
    peer = 1 - rank
    bufs = [np.zeros(n, np.uint8) for n in (5, LIMIT * 3)]
    reqs = [comm.Irecv(b, peer, i) for i, b in enumerate(bufs)]
    sends = [comm.Isend(np.full(b.size, 9, np.uint8), peer, i) for i, b in enumerate(bufs)]
    done = []
    while len(done) < 2:
        got = MPI.Request.Waitsome(reqs)
        done += got
    assert sorted(done) == [0, 1]
    while not MPI.Request.Testall(sends):
        pass
    assert all((b == 9).all() for b in bufs)
    assert MPI.Request.Testsome(reqs) is None or MPI.Request.Testsome(reqs) == []


def test_synchronous_send_waits_for_match(comm, MPI):
    rank = comm.Get_rank()
    for n in (8, 3 * LIMIT):
        if rank == 0:
            req = comm.Issend(np.ones(n, np.uint8), 1, 1)
            assert not req.Test()
            comm.Barrier()
            req.Wait()
        elif rank == 1:
            comm.Barrier()
            comm.Recv(np.zeros(n, np.uint8), 0, 1)
        else:
            comm.Barrier()
    if rank == 0:
        comm.Ssend(np.ones(3), 1, 2)
    elif rank == 1:
        comm.Recv(np.zeros(3), 0, 2)


def test_cancel_unmatched_receive(comm, MPI):
    req = comm.Irecv(np.zeros(4), MPI.ANY_SOURCE, 999)
    req.Cancel()
    st = MPI.Status()
    req.Wait(st)
    assert st.Is_cancelled()


def test_persistent(comm, MPI):
    rank = comm.Get_rank()
    if rank > 1:
        return
    peer = 1 - rank
    out = np.zeros(2 * LIMIT, np.int64)
    inb = np.zeros(2 * LIMIT, np.int64)
    sreq = comm.Send_init(out, peer, 3)
    rreq = comm.Recv_init(inb, peer, 3)
    for it in range(4):
        out[:] = it * 10 + rank
        MPI.Prequest.Startall([rreq, sreq])
        MPI.Prequest.Waitall([rreq, sreq])
        assert (inb == it * 10 + peer).all()
    sreq.Free()
    rreq.Free()


def test_partitioned_interoperates(cmcomm, MPI):
    """A partitioned send is matched by a plain receive, and a plain send by a
    partitioned receive."""
    rank = cmcomm.Get_rank()
    if rank > 1:
        return
    peer = 1 - rank
    n = 4 * LIMIT
    got = np.zeros(n, np.int32)
    if rank == 0:
        out = np.arange(n, dtype=np.int32)
        req = cmcomm.Psend_init(out, 4, peer, 8)
        req.Start()
        req.Pready_list([3, 1, 0])
        assert not req._op  # a partition is missing: nothing has left yet
        req.Pready_range(2, 2)
        req.Wait()
        req.Free()
        preq = cmcomm.Precv_init(got, 2, peer, 9)
        preq.Start()
        preq.Wait()
        assert preq.Parrived(0) and preq.Parrived(1) and (got == 5).all()
        preq.Free()
    else:
        cmcomm.Recv(got, peer, 8)
        assert np.array_equal(got, np.arange(n, dtype=np.int32))
        cmcomm.Send(np.full(n, 5, np.int32), peer, 9)


# -- combined send/receive --------------------------------------------------------------------

@pytest.mark.parametrize("n", [16, 4 * LIMIT])
def test_sendrecv_ring(comm, MPI, n):
    rank, size = comm.Get_rank(), comm.Get_size()
    right, left = (rank + 1) % size, (rank - 1) % size
    out = np.full(n, rank, np.int16)
    got = np.zeros(n, np.int16)
    st = MPI.Status()
    comm.Sendrecv(out, right, 7, got, left, 7, st)
    assert (got == left).all() and st.Get_source() == left


@pytest.mark.parametrize("n", [16, 4 * LIMIT])
def test_sendrecv_replace(comm, MPI, n):
    rank, size = comm.Get_rank(), comm.Get_size()
    right, left = (rank + 1) % size, (rank - 1) % size
    buf = np.full(n, rank, np.int32)
    comm.Sendrecv_replace(buf, right, 1, left, 1)
    assert (buf == left).all()


# -- probing -----------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [3, 3 * LIMIT])
def test_probe_then_receive(comm, MPI, n):
    rank = comm.Get_rank()
    if rank == 0:
        bufs = [np.arange(n, dtype=np.float32), np.arange(2, dtype=np.float32)]
        MPI.Request.Waitall([comm.Isend(bufs[0], 1, 11), comm.Isend(bufs[1], 1, 12)])
    elif rank == 1:
        st = MPI.Status()
        comm.Probe(0, 12, st)  # the later message, skipping the first
        assert st.Get_tag() == 12 and st.Get_count(MPI.FLOAT) == 2
        st2 = MPI.Status()
        assert comm.Iprobe(MPI.ANY_SOURCE, MPI.ANY_TAG, st2)
        assert st2.Get_tag() == 11 and st2.Get_count(MPI.FLOAT) == n
        a = np.zeros(n, np.float32)
        comm.Recv(a, 0, MPI.ANY_TAG)  # must be the first message (non-overtaking)
        b = np.zeros(2, np.float32)
        comm.Recv(b, 0, 12)
        assert np.array_equal(a, np.arange(n, dtype=np.float32)) and list(b) == [0, 1]
    assert not comm.Iprobe(MPI.ANY_SOURCE, 12345)


def test_mprobe(comm, MPI):
    rank = comm.Get_rank()
    if rank == 0:
        bufs = [np.arange(3 * LIMIT, dtype=np.uint8), np.arange(5, dtype=np.uint8)]
        MPI.Request.Waitall([comm.Isend(bufs[0], 1, 21), comm.Isend(bufs[1], 1, 22)])
    elif rank == 1:
        st = MPI.Status()
        m = comm.Mprobe(0, 22, st)
        assert st.Get_count() == 5
        m2 = None
        while m2 is None:
            m2 = comm.Improbe(0, 21)
        b = np.zeros(5, np.uint8)
        m.Recv(b)
        a = np.zeros(3 * LIMIT, np.uint8)
        m2.Irecv(a).Wait()
        assert list(b) == list(range(5)) and np.array_equal(a, np.arange(3 * LIMIT, dtype=np.uint8))


# -- interplay with delegated calls -------------------------------------------------------------

def test_collectives_interleaved(comm, MPI, needs_mpi):
    rank, size = comm.Get_rank(), comm.Get_size()
    right, left = (rank + 1) % size, (rank - 1) % size
    big = np.full(4 * LIMIT, rank, np.uint8)
    got = np.zeros(4 * LIMIT, np.uint8)
    r = comm.Irecv(got, left, 0)
    s = comm.Isend(big, right, 0)
    x = np.array([rank], dtype=np.int64)
    tot = np.zeros(1, np.int64)
    comm.Allreduce(x, tot, op=MPI.SUM)
    assert tot[0] == size * (size - 1) // 2
    MPI.Request.Waitall([r, s])
    assert (got == left).all()


def test_derived_communicators(comm, MPI):
    rank, size = comm.Get_rank(), comm.Get_size()
    sub = comm.Split(rank % 2, rank)
    dup = comm.Dup()
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    for c in (sub, dup, local):
        r, s = c.Get_rank(), c.Get_size()
        if s > 1:
            out = np.full(3 * LIMIT, r, np.uint8)
            inb = np.zeros_like(out)
            c.Sendrecv(out, (r + 1) % s, 0, inb, (r - 1) % s, 0)
            assert (inb == (r - 1) % s).all()
        c.Free()
    assert size == comm.Get_size()


# -- bad input ---------------------------------------------------------------------------------

def test_bad_arguments(comm, MPI):
    size = comm.Get_size()
    buf = np.zeros(4)
    with pytest.raises(MPI.Exception) as e:
        comm.Send(buf, size)
    assert e.value.Get_error_class() == MPI.ERR_RANK
    with pytest.raises(MPI.Exception) as e:
        comm.Send(buf, 0, -5)
    assert e.value.Get_error_class() == MPI.ERR_TAG
    with pytest.raises(MPI.Exception) as e:
        comm.Irecv(buf, -7, 0)
    assert e.value.Get_error_class() == MPI.ERR_RANK
    with pytest.raises(TypeError):
        comm.Send(42, 0)
    with pytest.raises(TypeError):
        comm.Send(buf, "x")
    with pytest.raises(BufferError):
        comm.Recv(b"read-only", 0)
    with pytest.raises(ValueError):
        comm.Send([np.zeros(3, np.int8), MPI.DOUBLE], 0)
    # still usable
    rank = comm.Get_rank()
    comm.Sendrecv(np.full(3, rank, np.float64), (rank + 1) % size, 0, buf[:3], (rank - 1) % size, 0)
    assert (buf[:3] == (rank - 1) % size).all()


# -- Python objects ------------------------------------------------------------------------------

def test_objects_roundtrip(comm, MPI):
    rank = comm.Get_rank()
    obj = {"a": np.arange(LIMIT, dtype=np.float64), "b": [1, "two", (3.0,)], "c": None}
    if rank == 0:
        comm.send(obj, 1, 5)
        req = comm.isend(rank, 1, 6)
        req.wait()
    elif rank == 1:
        st = MPI.Status()
        got = comm.recv(None, 0, 5, st)
        assert st.Get_source() == 0 and st.Get_tag() == 5
        assert np.array_equal(got["a"], obj["a"]) and got["b"] == obj["b"] and got["c"] is None
        assert comm.irecv(source=0, tag=6).wait() == 0


#: Message sizes either side of the first pulled one, on each channel.
_PULL_EDGES = sorted({n + d for n in PULL_THRESHOLDS for d in (-1, 0)})


@pytest.mark.parametrize("n", [6000, 100_000, 3 << 20, *_PULL_EDGES])
@pytest.mark.parametrize("spare", [0, 4096])
def test_pending_receives_sharing_a_buffer(comm, MPI, n, spare):
    """Erroneous in MPI, yet common in bandwidth tests (and tolerated by MPI
    libraries): several pending receives into one buffer (*spare* bytes longer
    than the messages). Each must complete, and the buffer ends up holding one
    of the (identical) messages, its spare bytes untouched."""
    rank = comm.Get_rank()
    window = 8
    if rank == 0:
        data = np.arange(n, dtype=np.uint8)
        MPI.Request.Waitall([comm.Isend(data, 1, 21) for _ in range(window)])
    elif rank == 1:
        buf = np.full(n + spare, 7, np.uint8)
        statuses = [MPI.Status() for _ in range(window)]
        MPI.Request.Waitall([comm.Irecv(buf, 0, 21) for _ in range(window)], statuses)
        assert (buf[:n] == np.arange(n, dtype=np.uint8)).all()
        assert (buf[n:] == 7).all()
        assert [st.Get_count(MPI.BYTE) for st in statuses] == [n] * window
    comm.Barrier()


@pytest.mark.parametrize("n", _PULL_EDGES)
def test_windows_both_directions_at_once_around_the_pull_thresholds(comm, MPI, n):
    """Ranks 0 and 1 each post receives, then send: sizes on both sides of the
    thresholds a rank with receives pending (and one without) pulls from; each
    message lands whole, in its own buffer (on cmampi one of them strided, so
    that it takes its message in a stage sized by the sender's threshold)."""
    rank = comm.Get_rank()
    if rank > 1:
        comm.Barrier()
        return
    peer, window = 1 - rank, 3
    last = np.zeros(2 * n, np.uint8)[::2] if MPI.__name__.startswith("cmampi") \
        else np.zeros(n, np.uint8)     # mpi4py takes no strided array
    bufs = [np.zeros(n, np.uint8) for _ in range(window - 1)] + [last]
    recvs = [comm.Irecv(b, peer, k) for k, b in enumerate(bufs)]
    sends = [comm.Isend(pattern(n, seed=rank * 10 + k), peer, k) for k in range(window)]
    MPI.Request.Waitall(recvs + sends)
    for k, b in enumerate(bufs):
        assert np.array_equal(b, pattern(n, seed=peer * 10 + k))
    comm.Barrier()


def test_pending_receives_sharing_a_buffer_any_kind(comm, MPI):
    """Receives sharing one buffer (as above) whose messages take each protocol:
    raw, synchronous, pulled (or, under the pull threshold, raw) and small. Each
    completes with its own count, and nothing beyond the buffer changes."""
    rank = comm.Get_rank()
    big = 2 * max(PULL_THRESHOLDS) + 1000
    sizes = [100_000, 100_000, big, 50]
    if rank == 0:
        data = [pattern(n, seed=k) for k, n in enumerate(sizes)]
        MPI.Request.Waitall([comm.Isend(data[0], 1, 31), comm.Issend(data[1], 1, 31),
                             comm.Isend(data[2], 1, 31), comm.Isend(data[3], 1, 31)])
    elif rank == 1:
        guarded = np.full(big + 64, 7, np.uint8)
        buf = guarded[:big]
        statuses = [MPI.Status() for _ in sizes]
        MPI.Request.Waitall([comm.Irecv(buf, 0, 31) for _ in sizes], statuses)
        assert [st.Get_count(MPI.BYTE) for st in statuses] == sizes
        assert (guarded[big:] == 7).all()
    comm.Barrier()


@pytest.mark.parametrize("kind", ["Isend", "Issend"])
def test_receives_into_adjacent_slices_of_one_buffer(comm, MPI, kind):
    """Pending receives into slices of one buffer that touch but do not overlap
    each take their own message whole, in any protocol (a synchronous send's
    control message lands where its receive's slice begins); then receives
    into the same buffer shifted by part of a slice (overlapping others, the
    last message written last) still complete with their counts. On cmampi
    nothing stays recorded as landing once all are in."""
    rank, n, window = comm.Get_rank(), 40_000, 6
    data = [pattern(n, seed=k) for k in range(window)]
    if rank == 0:
        send = getattr(comm, kind)
        MPI.Request.Waitall([send(data[k], 1, 33) for k in range(window)])
        MPI.Request.Waitall([send(data[k], 1, 34) for k in range(window)])
    elif rank == 1:
        buf = np.zeros(n * window + n // 2, np.uint8)
        MPI.Request.Waitall([comm.Irecv(buf[k * n:(k + 1) * n], 0, 33)
                             for k in range(window)])
        for k in range(window):
            assert np.array_equal(buf[k * n:(k + 1) * n], data[k])
        statuses = [MPI.Status() for _ in range(window)]
        shifted = [buf[k * n // 2:k * n // 2 + n] for k in range(window)]
        MPI.Request.Waitall([comm.Irecv(view, 0, 34) for view in shifted], statuses)
        assert [st.Get_count(MPI.BYTE) for st in statuses] == [n] * window
        assert np.array_equal(shifted[-1], data[-1])
        engine = getattr(comm, "_engine", None)
        if engine is not None:
            assert not (engine.landing or engine.tails or engine.staged or engine.spans)
    comm.Barrier()


@pytest.mark.parametrize("kind", ["Isend", "Issend"])
@pytest.mark.parametrize("n", [40_000, 2 * max(PULL_THRESHOLDS) + 1000])
@pytest.mark.parametrize("whole", [True, False], ids=["whole", "short"])
def test_a_receive_with_a_displacement_lands_in_its_window(comm, MPI, kind, n, whole):
    """``[buf, (count, displ), datatype]``: the message (as long as the window,
    or 10 bytes) lands from the displacement on, in every protocol, and no
    other byte of the buffer changes."""
    rank, displ = comm.Get_rank(), 5000
    data = pattern(n if whole else 10, seed=3)
    if rank == 0:
        getattr(comm, kind)(data, 1, 35).Wait()
    elif rank == 1:
        buf = pattern(n + 2 * displ, seed=9)
        expected = buf.copy()
        expected[displ:displ + len(data)] = data
        status = MPI.Status()
        comm.Irecv([buf, (n, displ), MPI.BYTE], 0, 35).Wait(status)
        assert status.Get_count(MPI.BYTE) == len(data)
        assert np.array_equal(buf, expected)
    comm.Barrier()


def test_a_small_receive_then_a_large_one_over_it(comm, MPI):
    """A pending receive into a small slice of a buffer, then one into a large
    slice overlapping it, of synchronous sends (a control message, then the
    payload): both complete with their counts, and the bytes only the second
    receive covers hold its message."""
    rank, n = comm.Get_rank(), 40_000
    small, large = pattern(100, seed=1), pattern(n, seed=2)
    if rank == 0:
        MPI.Request.Waitall([comm.Issend(small, 1, 36), comm.Issend(large, 1, 36)])
    elif rank == 1:
        buf = np.zeros(n + 50, np.uint8)
        statuses = [MPI.Status(), MPI.Status()]
        requests = [comm.Irecv(buf[:100], 0, 36), comm.Irecv(buf[50:], 0, 36)]
        time.sleep(0.2)     # both messages in before either is seen to
        MPI.Request.Waitall(requests, statuses)
        assert [st.Get_count(MPI.BYTE) for st in statuses] == [100, n]
        assert np.array_equal(buf[100:], large[50:])
    comm.Barrier()


def test_a_payload_behind_a_control_message_keeps_its_span_pending(cmcomm, MPI, monkeypatch):
    """A receive that lands in place (or split) and gets a control message has
    its payload still to come (a side payload here): until it finishes, its
    span counts as pending, so a receive posted meanwhile into memory that
    overlaps it does not land in place, where that payload could overwrite
    the control message it would get."""
    from cmampi import p2p

    engine = cmcomm._engine
    seen: list[bool] = []
    act_side = p2p.Engine._act_side

    def spied(self, op, msg, source):
        seen.append(self._overlaps(self._span(op.buf)))
        act_side(self, op, msg, source)

    monkeypatch.setattr(p2p.Engine, "_act_side", spied)
    rank, n = cmcomm.Get_rank(), 40_000
    data = pattern(n, seed=4)
    if rank == 0:
        cmcomm.Issend(data, 1, 37).Wait()
    elif rank == 1:
        buf = np.zeros(n, np.uint8)
        cmcomm.Irecv(buf, 0, 37).Wait()
        assert np.array_equal(buf, data)
        assert seen == [True]
        assert not (engine.landing or engine.tails or engine.staged or engine.spans)


@pytest.mark.parametrize("compiled", [False, True])
def test_receives_sharing_a_buffer_stage_only_their_heads(cmcomm, MPI, monkeypatch, compiled):
    """On the MPI channel, a receive into a buffer another pending receive lands
    in takes only its message's first bytes in a stage; the rest lands in place
    (on the Python path, and on the compiled one, which copies heads itself)."""
    from cmampi import p2p
    from cmampi._buffers import Buffer

    engine = cmcomm._engine
    if not engine.split:
        pytest.skip("the channel cannot split a receive")
    if not compiled:
        monkeypatch.setattr(engine, "fast", None)
    elif engine.fast is None:
        pytest.skip("no compiled path here")
    copied: list[int] = []
    scatter = Buffer.scatter

    def counted(self, data) -> None:
        copied.append(len(data))
        scatter(self, data)

    monkeypatch.setattr(Buffer, "scatter", counted)
    rank, window, n = cmcomm.Get_rank(), 8, 300_000
    data = [pattern(n, seed=k) for k in range(window)]
    if rank == 0:
        MPI.Request.Waitall([cmcomm.Isend(data[k], 1, 32) for k in range(window)])
    elif rank == 1:
        buf = np.zeros(n, np.uint8)
        MPI.Request.Waitall([cmcomm.Irecv(buf, 0, 32) for _ in range(window)])
        # Matched and seen through in order: the last message, head and tail.
        assert np.array_equal(buf, data[-1])
        assert 0 < sum(copied) <= window * engine.band or (compiled and not copied)
        assert not (engine.landing or engine.tails or engine.staged or engine.spans or p2p._PENDING)


def test_split_receives_of_more_than_2_gib_have_a_datatype(cmcomm):
    """A receive's two-block datatype takes tails longer than a C int (block
    lengths are ints; Open MPI refuses more), as whole GiBs and the rest."""
    ch = cmcomm._engine.ch
    if not hasattr(ch, "irecv_split"):
        pytest.skip("the channel does not split receives")
    tail = (5 << 30) + 12345
    dt = ch._two_blocks(4096, 1 << 20, tail, 1 << 40)
    assert dt.Get_size() == 4096 + tail
    assert dt.Get_true_extent()[0] == 1 << 20


@pytest.mark.parametrize("wait", ["Waitall", "Waitall beside a receive", "Waitany", "Testsome"])
def test_a_window_of_sends_helps_copy_while_it_waits(cmcomm, MPI, monkeypatch, wait):
    """Nonblocking sends of large messages help their receiver copy them (a
    cooperative copy) once their sender waits for them (all, or any one at a
    time) or tests them in a loop, with nothing to receive; a sender with a
    receive of its own pending is never asked. Every message arrives intact.
    The copies of a window after its first run while one before is under way:
    a pipeline, whose split is learned apart; none is under way once the
    window is done."""
    from cmampi import p2p

    helped = []

    class Counted(p2p.CoopPull):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            helped.append(self.streaming)

    monkeypatch.setattr(p2p, "CoopPull", Counted)
    rank, window = cmcomm.Get_rank(), 4
    n = 2 * max(config.coop_min, cmcomm._engine.cma_min)
    data = [pattern(n, seed=k) for k in range(window)]
    cmcomm.Barrier()
    if rank == 0:
        ack = cmcomm.Irecv(np.zeros(1, np.uint8), 1, 23) if wait.endswith("receive") else None
        sends = [cmcomm.Isend(data[k], 1, 22) for k in range(window)]
        if wait == "Waitany":
            for _ in range(window):
                MPI.Request.Waitany(sends)
        elif wait == "Testsome":
            done = 0
            while done < window:
                done += len(MPI.Request.Testsome(sends) or ())
        else:
            MPI.Request.Waitall(sends)
        if ack is not None:
            ack.Wait()
    elif rank == 1:
        import time

        time.sleep(0.5)         # the sender is waiting by now
        bufs = [np.zeros(n, np.uint8) for _ in range(window)]
        MPI.Request.Waitall([cmcomm.Irecv(b, 0, 22) for b in bufs])
        if wait.endswith("receive"):
            cmcomm.Send(np.ones(1, np.uint8), 0, 23)
        assert all(np.array_equal(b, d) for b, d in zip(bufs, data))
        if wait.endswith("receive"):
            assert not helped
        elif cmcomm._engine.all_cma:     # pulled (not where CMA is refused), so helped
            if wait == "Waitall":
                assert len(helped) == window
                assert not helped[0] and any(helped[1:]), helped
            elif wait == "Waitany":
                # a message may be pulled alone between two Waitany calls
                assert helped and not helped[0], helped
            # (a loop of Testsome offers only while a call runs: maybe never seen)
            assert cmcomm._engine.helping.get(0, 0) == 0


def _counting_coop_pulls(monkeypatch) -> list[int]:
    """Where each cooperative copy of this rank starts in its message, from now on."""
    from cmampi import p2p

    starts: list[int] = []

    class Counted(p2p.CoopPull):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            starts.append(kwargs["base"])

    monkeypatch.setattr(p2p, "CoopPull", Counted)
    return starts


def test_a_late_offer_helps_copy_the_rest(cmcomm, monkeypatch):
    """A receiver that finds its sender not offering help pulls a first piece
    alone and looks again: the sender waits by then, and writes part of what
    is left. The message lands intact, and only in the receive buffer."""
    from cmampi import _cma

    rank, engine = cmcomm.Get_rank(), cmcomm._engine
    n = 3 * max(config.coop_min, engine.cma_min) + 4321
    data = pattern(n, seed=7)
    cmcomm.Barrier()
    if rank == 0:
        cmcomm.Isend(data, 1, 31).Wait()
    elif rank == 1:
        starts = _counting_coop_pulls(monkeypatch)
        real, peeks = _cma.peek_word, []

        def not_offered_at_first(pid: int, addr: int) -> int:
            peeks.append(addr)
            return 0 if len(peeks) == 1 else real(pid, addr)

        monkeypatch.setattr(_cma, "peek_word", not_offered_at_first)
        time.sleep(0.3)     # the sender waits by now
        whole = np.full(n + 8195, 0xEE, np.uint8)
        buf = whole[4099 : 4099 + n]
        cmcomm.Recv(buf, 0, 31)
        assert np.array_equal(buf, data)
        assert (whole[:4099] == 0xEE).all() and (whole[4099 + n :] == 0xEE).all()
        if engine.all_cma:
            assert len(peeks) == 3 and starts == [config.coop_min // 2]   # a look, a claim


def _complete_one(MPI, requests: list, how: str) -> int:
    """Complete one of *requests* by ``Waitany``, a loop of ``Testany`` or a
    ``Wait`` of the first; its index."""
    if how == "Waitany":
        return MPI.Request.Waitany(requests)
    if how == "Testany":
        index, flag = MPI.Request.Testany(requests)
        while not flag:
            index, flag = MPI.Request.Testany(requests)
        return index
    requests[0].Wait()
    return 0


@pytest.mark.parametrize("wait", ["Waitany", "Testany"])
def test_an_offer_is_answered_after_its_wait(cmcomm, MPI, wait):
    """A receiver may claim a sender's offer of help just as the sender's
    ``Waitany`` (or ``Testany``) returns: the sender answers before it
    returns, or the receiver pulls alone. Here the sender then blocks in a
    receive of what the receiver sends only once both messages are in:
    nothing hangs, and every message arrives intact."""
    rank, engine = cmcomm.Get_rank(), cmcomm._engine
    n = 2 * max(config.coop_min, engine.cma_min)
    data = [pattern(n, seed=k) for k in (1, 2)]
    cmcomm.Barrier()
    if rank == 0:
        sends = [cmcomm.Isend(d, 1, 32) for d in data]
        first = _complete_one(MPI, sends, wait)
        ack = np.zeros(1, np.uint8)
        cmcomm.Recv(ack, 1, 33)     # the second message is pulled meanwhile
        MPI.Request.Waitall(sends)
        assert (first, ack[0]) == (0, 1)
    elif rank == 1:
        bufs = [np.zeros(n, np.uint8) for _ in data]
        time.sleep(0.2)     # the sender polls both sends meanwhile (Testany)
        cmcomm.Recv(bufs[0], 0, 32)
        time.sleep(0.3)     # the sender has left its Waitany (Testany) for its Recv
        cmcomm.Recv(bufs[1], 0, 32)
        cmcomm.Send(np.ones(1, np.uint8), 0, 33)
        assert all(np.array_equal(b, d) for b, d in zip(bufs, data))


@pytest.mark.parametrize("wait", ["Waitany", "Testany", "Wait"])
def test_a_receiver_never_waits_for_a_sender_outside_cmampi(cmcomm, MPI, wait, tmp_path):
    """Once its wait or test has returned, a sender may stay outside cmampi as
    long as it likes, here until the receiver has both messages (a file tells
    it): the receiver never waits for the sender's help meanwhile."""
    import os

    rank, engine = cmcomm.Get_rank(), cmcomm._engine
    if not engine.all_cma:
        pytest.skip("payloads through the channel move only while their sender is in a call")
    flag = cmcomm.bcast(str(tmp_path / "both-in") if rank == 0 else None, 0)
    n = 2 * max(config.coop_min, engine.cma_min)
    data = [pattern(n, seed=k) for k in (3, 4)]
    cmcomm.Barrier()
    if rank == 0:
        sends = [cmcomm.Isend(d, 1, 34) for d in data]
        _complete_one(MPI, sends, wait)
        while not os.path.exists(flag):     # outside cmampi
            time.sleep(0.001)
        MPI.Request.Waitall(sends)
    elif rank == 1:
        bufs = [np.zeros(n, np.uint8) for _ in data]
        for b in bufs:
            cmcomm.Recv(b, 0, 34)
        open(flag, "w").close()
        assert all(np.array_equal(b, d) for b, d in zip(bufs, data))


def _form(MPI, form: str, data: np.ndarray, writable: bool):
    """*data*'s bytes in a buffer form programs pass; and a view to read it back."""
    n = data.nbytes
    if form == "bytearray":
        b = bytearray(data.tobytes())
        return b, np.frombuffer(b, np.uint8)
    if form == "bytes":
        return data.tobytes(), data
    if form == "mmap-spec":
        m = mmap.mmap(-1, max(n, 1))
        m[:n] = data.tobytes()
        return [m, n, MPI.BYTE], np.frombuffer(m, np.uint8)[:n]
    if form == "array-spec":
        a = array.array("d", data.view(np.float64).tolist())
        return [a, n // 8, MPI.DOUBLE], np.frombuffer(a, np.uint8)
    a = data.copy()
    return [a, n, MPI.BYTE], a


SPEC_FORMS = ["bytearray", "bytes", "numpy-spec", "mmap-spec", "array-spec"]


@pytest.mark.parametrize("form", SPEC_FORMS)
@pytest.mark.parametrize("n", [0, 8, LIMIT, LIMIT + 8, 100_000, 2 << 20])
def test_buffer_forms(comm, MPI, form, n):
    """Each buffer form programs pass, sent and received as it is, any size."""
    rank = comm.Get_rank()
    data = pattern(n)
    if rank == 0:
        spec, _ = _form(MPI, form, data, False)
        comm.Send(spec, 1, 31)
    elif rank == 1:
        spec, view = _form(MPI, "bytearray" if form == "bytes" else form,
                           np.zeros(n, np.uint8), True)
        st = MPI.Status()
        comm.Recv(spec, 0, 31, st)
        assert st.Get_count(MPI.BYTE) == n and (view == data).all()
    comm.Barrier()


@pytest.mark.parametrize("form", ["bytearray", "numpy-spec", "mmap-spec"])
def test_buffer_form_bad_receives_keep_the_message(cmcomm, MPI, form):
    """A spec counting past its buffer (mpi4py lets MPI write past it), or a
    read-only one, raises before the message is taken; a receive too short
    raises ERR_TRUNCATE and writes nothing past it. The next receive gets the
    next message."""
    comm = cmcomm
    rank = comm.Get_rank()
    if rank == 0:
        comm.Send(pattern(64), 1, 32)
        comm.Send(pattern(64), 1, 32)
    elif rank == 1:
        with pytest.raises(ValueError):
            comm.Recv([bytearray(64), 65, MPI.BYTE], 0, 32)
        with pytest.raises(BufferError):
            comm.Recv([bytes(64), 64, MPI.BYTE], 0, 32)
        spec, view = _form(MPI, form, np.zeros(64, np.uint8), True)
        comm.Recv(spec, 0, 32)
        assert (view == pattern(64)).all()
        whole = np.full(64, 7, np.uint8)
        with pytest.raises(MPI.Exception) as e:
            comm.Recv([whole, 48, MPI.BYTE], 0, 32)
        assert e.value.Get_error_class() == MPI.ERR_TRUNCATE
        assert (whole[48:] == 7).all()
    comm.Barrier()


@pytest.mark.parametrize("n", [8, 2 << 20])
def test_one_wait_over_two_communicators_keeps_each_ones_ranks(comm, MPI, n):
    """Requests of two communicators whose ranks differ (one reversed) completed
    in one Waitall: each status names the sender in its own communicator, and a
    pulled message is pulled from the right process."""
    size, rank = comm.Get_size(), comm.Get_rank()
    rev = comm.Split(0, size - rank)        # rev rank = size - 1 - rank
    try:
        if rank == 0:
            a, b = np.zeros(n, np.uint8), np.zeros(n, np.uint8)
            reqs = [rev.Irecv(b, MPI.ANY_SOURCE, 5), comm.Irecv(a, 1, 6)]
            statuses = [MPI.Status(), MPI.Status()]
            MPI.Request.Waitall(reqs, statuses)
            assert statuses[0].Get_source() == size - 2      # world rank 1, in rev
            assert statuses[1].Get_source() == 1
            assert (b == pattern(n)).all() and (a == pattern(n, seed=1)).all()
        elif rank == 1:
            rev.Send(pattern(n), size - 1, 5)               # to world rank 0
            comm.Send(pattern(n, seed=1), 0, 6)
    finally:
        rev.Free()


@pytest.mark.mpi(min_size=1)
@pytest.mark.parametrize("nbytes", [8, 64 << 10, 2 << 20])
def test_send_to_self_into_a_posted_receive(comm, MPI, nbytes):
    """A rank posts a receive from itself, then sends to itself with a blocking
    Send: the pulled size used to hang on MPICH (the send, blocked, offered to
    help copy; the help request and the receiver's reply met one reply receive)."""
    rank = comm.Get_rank()
    sent = (np.arange(nbytes) % 251).astype(np.uint8)
    got = np.zeros(nbytes, np.uint8)
    req = comm.Irecv([got, MPI.BYTE], source=rank, tag=4)
    comm.Send([sent, MPI.BYTE], dest=rank, tag=4)
    req.Wait()
    assert np.array_equal(got, sent)
