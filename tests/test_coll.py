"""Buffer collectives: the same tests against plain mpi4py and cmampi (differential).

Every expectation is computed with numpy from data that every rank can
regenerate (``np.random.default_rng`` seeded with the test's tag, the rank and
the block), so a rank never needs another rank's answer to know what to check,
and the same test on the plain mpi4py communicator checks that the expectations
are MPI's. Sizes straddle cmampi's paths: payloads up to ``coll.INLINE_MAX``
(16 KiB) per rank travel inside the exchange, larger ones are copied with CMA.

Behaviour mpi4py does not offer (strided numpy views, structured MAXLOC/MINLOC)
and erroneous programs (buffers whose sizes differ across ranks, undefined
behaviour in MPI) run on cmampi only (the ``cmcomm`` fixture).
"""

from __future__ import annotations

import array

import numpy as np
import pytest

pytestmark = pytest.mark.mpi(min_size=2)

#: Elements per rank (per block): empty, tiny, inline, and past 16 KiB (CMA).
SIZES = [0, 1, 7, 1000, 1 << 15, 1 << 18]
#: The vector variants: uneven counts, so fewer of the big sizes.
VSIZES = [0, 7, 1000, 1 << 15]
#: More than 16 MiB of float64.
HUGE = (17 << 20) // 8 + 3
ROOTS = ["first", "last"]
INPLACE = [False, True]
FORMS = ["counts-displs-tuple", "counts-displs-items"]

INTS = ["i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8"]
DTYPES = ["b1", *INTS, "f4", "f8", "c8", "c16"]
OPS = ["SUM", "PROD", "MAX", "MIN", "LAND", "LOR", "LXOR", "BAND", "BOR", "BXOR"]
# Where MPI defines each predefined op (MPI 4.0, 6.9.2): arithmetic on integers,
# floats and complex; MAX/MIN not on complex; logical ops on integers and
# bool; bitwise ops on integers only.
KINDS = {"SUM": "iufc", "PROD": "iufc", "MAX": "iuf", "MIN": "iuf",
         "LAND": "biu", "LOR": "biu", "LXOR": "biu", "BAND": "iu", "BOR": "iu", "BXOR": "iu"}
DEFINED = [(op, dt) for op in OPS for dt in DTYPES if np.dtype(dt).kind in KINDS[op]]
UNDEFINED = [(op, dt) for op in OPS for dt in DTYPES if np.dtype(dt).kind not in KINDS[op]]


#: Seconds before the watchdog (conftest.py) calls a test hung.
WATCHDOG = 30


# -- data every rank can regenerate ---------------------------------------------------------

def rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([abs(int(k)) for k in key])


def block(n: int, *key: int, dtype="f8") -> np.ndarray:
    """Arbitrary content for data-movement tests (every value distinct in practice)."""
    return rng(*key).standard_normal(n).astype(dtype)


def root_of(which: str, size: int) -> int:
    return 0 if which == "first" else size - 1


def layout(counts, gap: int):
    """Displacements placing the blocks in reverse rank order with *gap* unused
    elements before each: (displs, total length)."""
    displs, pos = [0] * len(counts), gap
    for r in reversed(range(len(counts))):
        displs[r] = pos
        pos += counts[r] + gap
    return displs, pos


def vspec(MPI, buf, counts, displs, form: str):
    if form == "counts-displs-tuple":
        return [buf, (counts, displs), MPI.DOUBLE]
    return [buf, counts, displs, MPI.DOUBLE]


SENTINEL = -7.25


# -- operand values for each op and dtype: exact whatever the reduction order ---------------

def operand(op: str, dtype: str, n: int, *key: int) -> np.ndarray:
    g = rng(*key)
    dt = np.dtype(dtype)
    if op in ("BAND", "BOR", "BXOR", "MAX", "MIN") and dt.kind in "iu":
        return g.integers(0, 256, size=n * dt.itemsize, dtype=np.uint8).view(dt)
    if dt.kind == "b":
        return g.integers(0, 2, size=n).astype(bool)
    if op in ("LAND", "LOR", "LXOR"):
        return g.integers(-1 if dt.kind == "i" else 0, 2, size=n).astype(dt)
    if op in ("MAX", "MIN"):
        return g.standard_normal(n).astype(dt)
    if op == "PROD":
        if dt.kind == "i":
            return g.integers(-2, 3, size=n).astype(dt)
        if dt.kind == "u":
            return g.integers(0, 4, size=n).astype(dt)
        if dt.kind == "f":
            return g.choice([-2.0, -1.0, -0.5, 0.5, 1.0, 2.0], size=n).astype(dt)
        return g.choice([1, -1, 1j, -1j, 1 + 1j, 1 - 1j], size=n).astype(dt)
    # SUM: small integers, so that no order of additions rounds or overflows.
    if dt.kind == "i":
        return g.integers(-25, 26, size=n).astype(dt)
    if dt.kind == "u":
        return g.integers(0, 51, size=n).astype(dt)
    if dt.kind == "f":
        return g.integers(-1000, 1001, size=n).astype(dt)
    return (g.integers(-1000, 1001, size=n) + 1j * g.integers(-1000, 1001, size=n)).astype(dt)


UFUNCS = {"SUM": np.add, "PROD": np.multiply, "MAX": np.maximum, "MIN": np.minimum,
          "LAND": np.logical_and, "LOR": np.logical_or, "LXOR": np.logical_xor,
          "BAND": np.bitwise_and, "BOR": np.bitwise_or, "BXOR": np.bitwise_xor}


def reduced(op: str, parts) -> np.ndarray:
    """parts[0] op parts[1] op ..., in the parts' dtype (logical ops give 0/1)."""
    acc = parts[0].copy()
    for p in parts[1:]:
        acc = UFUNCS[op](acc, p).astype(acc.dtype)
    return acc


# -- a non-commutative user op: composition of affine maps x -> a*x + b ---------------------
#
# An element a + bj (complex128) stands for the map x -> a*x + b; ``u op v`` is
# "u, then v". Composition is associative (as MPI requires) but not commutative,
# so any result computed out of rank order differs. Values stay small integers:
# exact in float64.

def then(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return v.real * u.real + 1j * (v.real * u.imag + v.imag)


def affine_fn(inbuf, inoutbuf, datatype):
    """MPI user function: inoutbuf = inbuf op inoutbuf (mpi4py passes buffer objects)."""
    x = np.frombuffer(inbuf, dtype=np.complex128)
    y = np.frombuffer(inoutbuf, dtype=np.complex128)
    y[...] = then(x, y)


def affine_values(n: int, *key: int) -> np.ndarray:
    g = rng(*key)
    a = g.choice([-2.0, -1.0, 1.0, 2.0], size=n)
    b = g.integers(-5, 6, size=n).astype(np.float64)
    return a + 1j * b


def absmax_fn(inbuf, inoutbuf, datatype):
    """A commutative user op on int32: the value of larger magnitude (ties: the larger)."""
    x = np.frombuffer(inbuf, dtype=np.int32)
    y = np.frombuffer(inoutbuf, dtype=np.int32)
    take = (np.abs(x) > np.abs(y)) | ((np.abs(x) == np.abs(y)) & (x > y))
    y[take] = x[take]


REDOPS = ["SUM", "affine"]


class RedOp:
    """An op for the reduction tests: its MPI handle, operands and expected results."""

    def __init__(self, MPI, kind: str) -> None:
        self.kind = kind
        self.op = MPI.SUM if kind == "SUM" else MPI.Op.Create(affine_fn, commute=False)
        self.dtype = np.float64 if kind == "SUM" else np.complex128

    def values(self, n: int, *key: int) -> np.ndarray:
        if self.kind == "SUM":
            return operand("SUM", "f8", n, *key)
        return affine_values(n, *key)

    def fold(self, parts) -> np.ndarray:
        acc = parts[0].copy()
        for p in parts[1:]:
            acc = acc + p if self.kind == "SUM" else then(acc, p)
        return acc

    def free(self) -> None:
        if self.kind != "SUM":
            self.op.Free()


@pytest.fixture(params=REDOPS)
def redop(request, MPI):
    op = RedOp(MPI, request.param)
    yield op
    op.free()


# == barrier and broadcast ===================================================================

def test_barrier(comm):
    for _ in range(3):
        comm.Barrier()


@pytest.mark.parametrize("root", ROOTS)
@pytest.mark.parametrize("n", SIZES)
def test_bcast(comm, n, root):
    rank, size = comm.Get_rank(), comm.Get_size()
    root = root_of(root, size)
    expect = block(n, 1, n)
    buf = expect.copy() if rank == root else np.full(n, np.nan)
    comm.Bcast(buf, root=root)
    assert np.array_equal(buf, expect)


@pytest.mark.parametrize("dtype", ["b1", "i1", "u2", "c8", "c16"])
@pytest.mark.parametrize("n", [5, 4099])
def test_bcast_dtypes(comm, dtype, n):
    rank, size = comm.Get_rank(), comm.Get_size()
    expect = operand("BXOR" if dtype[0] in "iu" else "SUM", dtype, n, 2, n)
    buf = expect.copy() if rank == size - 1 else np.zeros(n, dtype)
    comm.Bcast(buf, size - 1)
    assert buf.tobytes() == expect.tobytes()


def test_bcast_huge(comm):
    rank, size = comm.Get_rank(), comm.Get_size()
    root = size - 1
    expect = np.arange(HUGE, dtype=np.float64) * 0.5 - 3.0
    buf = expect.copy() if rank == root else np.zeros(HUGE)
    comm.Bcast(buf, root)
    assert np.array_equal(buf, expect)


def test_bcasts_between_two_ranks_agree_on_their_split(cmcomm):
    """Large Bcasts between two ranks split the copy as both ranks' timings
    say (`coop.SharedCopies`): every rank computes the same split, and every
    byte arrives, whoever is root and however the split moves."""
    rank, size = cmcomm.Get_rank(), cmcomm.Get_size()
    for k, n in enumerate([(1 << 20) + 3, 5 << 20, 4099, (3 << 20) + 8191] * 3):
        root = k % size
        expect = block(n, 3, k)
        buf = expect.copy() if rank == root else np.full(n, np.nan)
        cmcomm.Bcast(buf, root)
        assert np.array_equal(buf, expect), (k, n)
    coll = cmcomm._engine.coll
    seen = cmcomm.allgather((coll.copies.rates, coll.copies.reader_part(10 << 20)))
    assert all(s == seen[0] for s in seen)
    if size == 2 and coll.all_cma:      # (the copy transport moves them through the channel)
        assert coll.copies.rates["read"] > 0 and coll.copies.rates["write"] > 0


# == gather and scatter ======================================================================

@pytest.mark.parametrize("in_place", INPLACE)
@pytest.mark.parametrize("root", ROOTS)
@pytest.mark.parametrize("n", SIZES)
def test_gather(comm, MPI, n, root, in_place):
    rank, size = comm.Get_rank(), comm.Get_size()
    root = root_of(root, size)
    mine = block(n, 3, n, rank)
    if rank == root:
        recv = np.full(size * n, np.nan)
        if in_place:
            recv[rank * n : (rank + 1) * n] = mine
        comm.Gather(MPI.IN_PLACE if in_place else mine, recv, root)
        expect = np.concatenate([block(n, 3, n, r) for r in range(size)])
        assert np.array_equal(recv, expect)
    else:
        comm.Gather(mine, None, root)          # non-root: no receive buffer


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("in_place", INPLACE)
@pytest.mark.parametrize("root", ROOTS)
@pytest.mark.parametrize("n", VSIZES)
def test_gatherv(comm, MPI, n, root, in_place, form):
    rank, size = comm.Get_rank(), comm.Get_size()
    root = root_of(root, size)
    counts = [n + 2 * r for r in range(size)]
    displs, total = layout(counts, gap=3)
    mine = block(counts[rank], 4, n, rank)
    if rank == root:
        recv = np.full(total, SENTINEL)
        if in_place:
            recv[displs[rank] : displs[rank] + counts[rank]] = mine
        comm.Gatherv(MPI.IN_PLACE if in_place else mine,
                     vspec(MPI, recv, counts, displs, form), root)
        expect = np.full(total, SENTINEL)
        for r in range(size):
            expect[displs[r] : displs[r] + counts[r]] = block(counts[r], 4, n, r)
        assert np.array_equal(recv, expect)
    else:
        comm.Gatherv(mine, None, root)


@pytest.mark.parametrize("in_place", INPLACE)
@pytest.mark.parametrize("root", ROOTS)
@pytest.mark.parametrize("n", SIZES)
def test_scatter(comm, MPI, n, root, in_place):
    rank, size = comm.Get_rank(), comm.Get_size()
    root = root_of(root, size)
    full = block(size * n, 5, n)
    if rank == root:
        send = full.copy()
        if in_place:
            comm.Scatter(send, MPI.IN_PLACE, root)
            assert np.array_equal(send, full)
            return
        recv = np.full(n, np.nan)
        comm.Scatter(send, recv, root)
        assert np.array_equal(send, full)
    else:
        recv = np.full(n, np.nan)
        comm.Scatter(None, recv, root)         # non-root: no send buffer
    assert np.array_equal(recv, full[rank * n : (rank + 1) * n])


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("in_place", INPLACE)
@pytest.mark.parametrize("root", ROOTS)
@pytest.mark.parametrize("n", VSIZES)
def test_scatterv(comm, MPI, n, root, in_place, form):
    rank, size = comm.Get_rank(), comm.Get_size()
    root = root_of(root, size)
    counts = [n + (3 * r) % 5 for r in range(size)]
    displs, total = layout(counts, gap=2)
    full = block(total, 6, n)
    guard = np.full(counts[rank] + 2, SENTINEL)   # past the block: must stay untouched
    recv = guard[: counts[rank]]                   # exactly the count (MPI: same signature)
    if rank == root:
        send = full.copy()
        spec = vspec(MPI, send, counts, displs, form)
        if in_place:
            comm.Scatterv(spec, MPI.IN_PLACE, root)
            assert np.array_equal(send, full)
            return
        comm.Scatterv(spec, recv, root)
    else:
        comm.Scatterv(None, recv, root)
    expect = np.full(counts[rank] + 2, SENTINEL)
    expect[: counts[rank]] = full[displs[rank] : displs[rank] + counts[rank]]
    assert np.array_equal(guard, expect)


# == allgather and alltoall ==================================================================

@pytest.mark.parametrize("in_place", INPLACE)
@pytest.mark.parametrize("n", SIZES)
def test_allgather(comm, MPI, n, in_place):
    rank, size = comm.Get_rank(), comm.Get_size()
    mine = block(n, 7, n, rank)
    recv = np.full(size * n, np.nan)
    if in_place:
        recv[rank * n : (rank + 1) * n] = mine
    comm.Allgather(MPI.IN_PLACE if in_place else mine, recv)
    assert np.array_equal(recv, np.concatenate([block(n, 7, n, r) for r in range(size)]))


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("in_place", INPLACE)
@pytest.mark.parametrize("n", VSIZES)
def test_allgatherv(comm, MPI, n, in_place, form):
    rank, size = comm.Get_rank(), comm.Get_size()
    counts = [n + (2 * r + 1) % 3 for r in range(size)]
    displs, total = layout(counts, gap=1)
    mine = block(counts[rank], 8, n, rank)
    recv = np.full(total, SENTINEL)
    if in_place:
        recv[displs[rank] : displs[rank] + counts[rank]] = mine
    comm.Allgatherv(MPI.IN_PLACE if in_place else mine, vspec(MPI, recv, counts, displs, form))
    expect = np.full(total, SENTINEL)
    for r in range(size):
        expect[displs[r] : displs[r] + counts[r]] = block(counts[r], 8, n, r)
    assert np.array_equal(recv, expect)


@pytest.mark.parametrize("in_place", INPLACE)
@pytest.mark.parametrize("n", SIZES)
def test_alltoall(comm, MPI, n, in_place):
    rank, size = comm.Get_rank(), comm.Get_size()
    send = np.concatenate([block(n, 9, n, rank, d) for d in range(size)])
    if in_place:
        recv = send.copy()
        comm.Alltoall(MPI.IN_PLACE, recv)
    else:
        recv = np.full(size * n, np.nan)
        comm.Alltoall(send, recv)
    assert np.array_equal(recv, np.concatenate([block(n, 9, n, s, rank) for s in range(size)]))


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("in_place", INPLACE)
@pytest.mark.parametrize("n", VSIZES)
def test_alltoallv(comm, MPI, n, in_place, form):
    rank, size = comm.Get_rank(), comm.Get_size()
    if in_place:   # IN_PLACE: what I send to d is what d sends me, so counts are symmetric
        def count(s, d):
            return n + (s + d) % 3
    else:
        def count(s, d):
            return n + (2 * s + d) % 5
    scounts = [count(rank, d) for d in range(size)]
    rcounts = [count(s, rank) for s in range(size)]
    sdispls, stotal = layout(scounts, gap=1)
    rdispls, rtotal = layout(rcounts, gap=2)
    recv = np.full(rtotal, SENTINEL)
    if in_place:
        for d in range(size):
            recv[rdispls[d] : rdispls[d] + rcounts[d]] = block(count(rank, d), 10, n, rank, d)
        comm.Alltoallv(MPI.IN_PLACE, vspec(MPI, recv, rcounts, rdispls, form))
    else:
        send = np.full(stotal, SENTINEL)
        for d in range(size):
            send[sdispls[d] : sdispls[d] + scounts[d]] = block(scounts[d], 10, n, rank, d)
        comm.Alltoallv(vspec(MPI, send, scounts, sdispls, form),
                       vspec(MPI, recv, rcounts, rdispls, form))
    expect = np.full(rtotal, SENTINEL)
    for s in range(size):
        expect[rdispls[s] : rdispls[s] + rcounts[s]] = block(count(s, rank), 10, n, s, rank)
    assert np.array_equal(recv, expect)


# == reductions ==============================================================================

@pytest.mark.parametrize("in_place", INPLACE)
@pytest.mark.parametrize("n", SIZES)
def test_allreduce(comm, MPI, redop, n, in_place):
    rank, size = comm.Get_rank(), comm.Get_size()
    mine = redop.values(n, 11, n, rank)
    if in_place:
        recv = mine.copy()
        comm.Allreduce(MPI.IN_PLACE, recv, redop.op)
    else:
        recv = np.full(n, np.nan, redop.dtype)
        comm.Allreduce(mine, recv, redop.op)
    assert np.array_equal(recv, redop.fold([redop.values(n, 11, n, r) for r in range(size)]))


def test_allreduce_huge(comm, MPI):
    rank, size = comm.Get_rank(), comm.Get_size()
    base = (np.arange(HUGE) % 1000).astype(np.float64)
    recv = np.zeros(HUGE)
    comm.Allreduce(base * (rank + 1), recv, MPI.SUM)
    assert np.array_equal(recv, base * (size * (size + 1) // 2))
    comm.Allreduce(MPI.IN_PLACE, recv, MPI.MAX)
    assert np.array_equal(recv, base * (size * (size + 1) // 2))


@pytest.mark.parametrize("in_place", INPLACE)
@pytest.mark.parametrize("root", ROOTS)
@pytest.mark.parametrize("n", SIZES)
def test_reduce(comm, MPI, redop, n, root, in_place):
    rank, size = comm.Get_rank(), comm.Get_size()
    root = root_of(root, size)
    mine = redop.values(n, 12, n, rank)
    if rank != root:
        comm.Reduce(mine, None, redop.op, root)   # non-root: no receive buffer
        return
    if in_place:
        recv = mine.copy()
        comm.Reduce(MPI.IN_PLACE, recv, redop.op, root)
    else:
        recv = np.full(n, np.nan, redop.dtype)
        comm.Reduce(mine, recv, redop.op, root)
    assert np.array_equal(recv, redop.fold([redop.values(n, 12, n, r) for r in range(size)]))


@pytest.mark.parametrize("in_place", INPLACE)
@pytest.mark.parametrize("n", SIZES)
def test_reduce_scatter_block(comm, MPI, redop, n, in_place):
    rank, size = comm.Get_rank(), comm.Get_size()
    mine = redop.values(size * n, 13, n, rank)
    if in_place:
        buf = mine.copy()
        comm.Reduce_scatter_block(MPI.IN_PLACE, buf, redop.op)
        recv = buf[:n]
    else:
        recv = np.full(n, np.nan, redop.dtype)
        comm.Reduce_scatter_block(mine, recv, redop.op)
    total = redop.fold([redop.values(size * n, 13, n, r) for r in range(size)])
    assert np.array_equal(recv, total[rank * n : (rank + 1) * n])


@pytest.mark.parametrize("counts_arg", ["given", "None"])
@pytest.mark.parametrize("n", SIZES)
def test_reduce_scatter(comm, MPI, redop, n, counts_arg):
    rank, size = comm.Get_rank(), comm.Get_size()
    counts = [n + (5 * r) % 7 for r in range(size)]
    offs = np.concatenate([[0], np.cumsum(counts)]).astype(int)
    mine = redop.values(offs[-1], 14, n, rank)
    recv = np.full(counts[rank], np.nan, redop.dtype)
    comm.Reduce_scatter(mine, recv, counts if counts_arg == "given" else None, redop.op)
    total = redop.fold([redop.values(offs[-1], 14, n, r) for r in range(size)])
    assert np.array_equal(recv, total[offs[rank] : offs[rank + 1]])


@pytest.mark.parametrize("in_place", INPLACE)
@pytest.mark.parametrize("n", SIZES)
def test_scan(comm, MPI, redop, n, in_place):
    rank = comm.Get_rank()
    mine = redop.values(n, 15, n, rank)
    if in_place:
        recv = mine.copy()
        comm.Scan(MPI.IN_PLACE, recv, redop.op)
    else:
        recv = np.full(n, np.nan, redop.dtype)
        comm.Scan(mine, recv, redop.op)
    assert np.array_equal(recv, redop.fold([redop.values(n, 15, n, r) for r in range(rank + 1)]))


@pytest.mark.parametrize("in_place", INPLACE)
@pytest.mark.parametrize("n", SIZES)
def test_exscan(comm, MPI, redop, n, in_place):
    rank = comm.Get_rank()
    mine = redop.values(n, 16, n, rank)
    if in_place:
        recv = mine.copy()
        comm.Exscan(MPI.IN_PLACE, recv, redop.op)
    else:
        recv = np.full(n, np.nan, redop.dtype)
        comm.Exscan(mine, recv, redop.op)
    if rank > 0:   # rank 0's receive buffer is undefined
        assert np.array_equal(recv, redop.fold([redop.values(n, 16, n, r) for r in range(rank)]))


# -- every predefined op on every dtype it is defined for -----------------------------------

@pytest.mark.parametrize("op,dtype", DEFINED, ids=[f"{o}-{d}" for o, d in DEFINED])
def test_predefined_op(comm, MPI, op, dtype):
    """Allreduce inline (7 elements) and through CMA (20001 elements, > 16 KiB
    even for bytes), and Scan; ``reduced`` casts logical results to the dtype
    (0/1), as MPI does."""
    rank, size = comm.Get_rank(), comm.Get_size()
    mpi_op = getattr(MPI, op)
    for n in (7, 20001):
        mine = operand(op, dtype, n, 17, n, rank)
        recv = np.zeros(n, dtype)
        comm.Allreduce(mine, recv, mpi_op)
        parts = [operand(op, dtype, n, 17, n, r) for r in range(size)]
        assert np.array_equal(recv, reduced(op, parts)), n     # (-0.0 == 0.0: order)
        recv = np.zeros(n, dtype)
        comm.Scan(mine, recv, mpi_op)
        assert np.array_equal(recv, reduced(op, parts[: rank + 1])), n


@pytest.mark.parametrize("n", [3, 20001])
def test_commutative_user_op(comm, MPI, n):
    rank, size = comm.Get_rank(), comm.Get_size()
    op = MPI.Op.Create(absmax_fn, commute=True)
    try:
        mine = rng(18, n, rank).integers(-1000, 1001, size=n).astype(np.int32)
        recv = np.zeros(n, np.int32)
        comm.Allreduce(mine, recv, op)
        parts = [rng(18, n, r).integers(-1000, 1001, size=n).astype(np.int32)
                 for r in range(size)]
        expect = parts[0].copy()
        for p in parts[1:]:
            absmax_fn(p, expect, None)
        assert np.array_equal(recv, expect)
        root = size - 1
        out = np.zeros(n, np.int32) if rank == root else None
        comm.Reduce(mine, out, op, root)
        if rank == root:
            assert np.array_equal(out, expect)
    finally:
        op.Free()


@pytest.mark.parametrize("dtype", [np.float64, np.int32, np.complex128])
def test_user_op_gets_the_datatype(comm, MPI, dtype):
    """A user function is called with a datatype of the buffer's type, as mpi4py does."""
    seen = []

    def add(inbuf, inoutbuf, datatype):
        seen.append(datatype.Get_size())
        a = np.frombuffer(inbuf, dtype) if not isinstance(inbuf, np.ndarray) else inbuf
        b = np.frombuffer(inoutbuf, dtype) if not isinstance(inoutbuf, np.ndarray) else inoutbuf
        b += a

    op = MPI.Op.Create(add, commute=True)
    try:
        out = np.zeros(5, dtype)
        comm.Allreduce(np.ones(5, dtype), out, op)
        assert (out == comm.Get_size()).all()
        assert all(n == np.dtype(dtype).itemsize for n in seen)
    finally:
        op.Free()


def test_noncommutative_rank_order(comm, MPI):
    """The affine op really is order-sensitive: one map per rank, rank order only."""
    rank, size = comm.Get_rank(), comm.Get_size()
    op = MPI.Op.Create(affine_fn, commute=False)
    try:
        # rank r: x -> 2x + r; composed in rank order: sum of r * 2**(size-1-r)
        mine = np.full(5, 2.0 + 1j * rank)
        recv = np.zeros(5, np.complex128)
        comm.Allreduce(mine, recv, op)
        b = sum(r * 2 ** (size - 1 - r) for r in range(size))
        assert np.array_equal(recv, np.full(5, 2.0 ** size + 1j * b))
        comm.Scan(mine, recv, op)
        b = sum(r * 2 ** (rank - r) for r in range(rank + 1))
        assert np.array_equal(recv, np.full(5, 2.0 ** (rank + 1) + 1j * b))
    finally:
        op.Free()


# == errors every rank sees ==================================================================

@pytest.mark.parametrize("op,dtype", UNDEFINED, ids=[f"{o}-{d}" for o, d in UNDEFINED])
def test_undefined_op_raises_everywhere(comm, MPI, op, dtype):
    rank, size = comm.Get_rank(), comm.Get_size()
    with pytest.raises((MPI.Exception, TypeError)):
        comm.Allreduce(np.ones(7, dtype), np.zeros(7, dtype), getattr(MPI, op))
    recv = np.zeros(7)
    comm.Allreduce(np.full(7, rank + 1.0), recv, MPI.SUM)
    assert (recv == size * (size + 1) // 2).all()


@pytest.mark.parametrize("coll", ["Allreduce", "Reduce", "Reduce_scatter_block", "Scan",
                                  "Exscan"])
@pytest.mark.parametrize("n", [8, 1 << 15])
def test_band_on_float_raises_everywhere(comm, MPI, coll, n):
    rank, size = comm.Get_rank(), comm.Get_size()
    send, recv = np.ones(size * n), np.zeros(size * n)
    with pytest.raises((MPI.Exception, TypeError)):
        if coll == "Reduce":
            comm.Reduce(send, recv, MPI.BAND, 0)
        elif coll == "Reduce_scatter_block":
            comm.Reduce_scatter_block(send, recv[:n], MPI.BAND)
        else:
            getattr(comm, coll)(send, recv, MPI.BAND)
    comm.Allreduce(np.full(n, rank + 1.0), recv[:n], MPI.SUM)
    assert (recv[:n] == size * (size + 1) // 2).all()


def test_invalid_root_raises_everywhere(comm, MPI):
    size = comm.Get_size()
    buf = np.zeros(4)
    for call in (lambda: comm.Bcast(buf, size), lambda: comm.Reduce(buf, np.zeros(4), MPI.SUM, -5)):
        with pytest.raises(MPI.Exception) as e:
            call()
        assert e.value.Get_error_class() == MPI.ERR_ROOT
    comm.Bcast(buf, size - 1)


# == cmampi only: strided numpy views (mpi4py refuses them) =================================

def strided(n: int, key: int, step: int = 3, fill=None):
    """A view of n elements, every *step*-th of a larger guarded array: (base, view)."""
    base = block(n * step + 2, key) if fill is None else np.full(n * step + 2, fill)
    return base, base[1 : 1 + n * step : step]


def untouched(base: np.ndarray, step: int, n: int, fill: float) -> bool:
    mask = np.ones(base.size, bool)
    mask[1 : 1 + n * step : step] = False
    return bool((base[mask] == fill).all())


@pytest.mark.parametrize("n", [7, 1 << 15])
def test_strided_allreduce(cmcomm, n):
    from cmampi import MPI

    rank, size = cmcomm.Get_rank(), cmcomm.Get_size()
    src = operand("SUM", "f8", 2 * n, 20, n, rank)
    base, view = strided(n, 0, fill=SENTINEL)
    cmcomm.Allreduce(src[::2], view, MPI.SUM)
    expect = reduced("SUM", [operand("SUM", "f8", 2 * n, 20, n, r)[::2] for r in range(size)])
    assert np.array_equal(view, expect) and untouched(base, 3, n, SENTINEL)


STRIDED_IN_PLACE = ["Allreduce", "Reduce", "Scan", "Exscan", "Reduce_scatter_block", "Gather",
                    "Allgather", "Alltoall"]


@pytest.mark.parametrize("coll", STRIDED_IN_PLACE)
@pytest.mark.parametrize("n", [7, 1 << 15])
def test_strided_in_place(cmcomm, coll, n):
    """IN_PLACE on a strided receive view: the view's current contents are the input."""
    from cmampi import MPI

    rank, size = cmcomm.Get_rank(), cmcomm.Get_size()
    root = size - 1
    k = size * n if coll in ("Reduce_scatter_block", "Gather", "Allgather", "Alltoall") else n
    base, view = strided(k, 0, fill=SENTINEL)
    if coll in ("Allreduce", "Reduce", "Scan", "Exscan", "Reduce_scatter_block"):
        parts = [operand("SUM", "f8", k, 28, n, r) for r in range(size)]
        view[...] = parts[rank]
        if coll == "Reduce" and rank != root:
            cmcomm.Reduce(parts[rank], None, MPI.SUM, root)
            return
        if coll == "Reduce":
            cmcomm.Reduce(MPI.IN_PLACE, view, MPI.SUM, root)
        else:
            getattr(cmcomm, coll)(MPI.IN_PLACE, view, MPI.SUM)
        if coll == "Scan":
            assert np.array_equal(view, reduced("SUM", parts[: rank + 1]))
        elif coll == "Exscan":
            if rank > 0:
                assert np.array_equal(view, reduced("SUM", parts[:rank]))
        elif coll == "Reduce_scatter_block":
            assert np.array_equal(view[:n], reduced("SUM", parts)[rank * n : (rank + 1) * n])
        else:
            assert np.array_equal(view, reduced("SUM", parts))
    elif coll == "Gather":
        if rank != root:
            cmcomm.Gather(block(n, 29, n, rank), None, root)
            return
        view[rank * n : (rank + 1) * n] = block(n, 29, n, rank)
        cmcomm.Gather(MPI.IN_PLACE, view, root)
        assert np.array_equal(view, np.concatenate([block(n, 29, n, r) for r in range(size)]))
    elif coll == "Allgather":
        view[rank * n : (rank + 1) * n] = block(n, 30, n, rank)
        cmcomm.Allgather(MPI.IN_PLACE, view)
        assert np.array_equal(view, np.concatenate([block(n, 30, n, r) for r in range(size)]))
    else:
        view[...] = np.concatenate([block(n, 31, n, rank, d) for d in range(size)])
        cmcomm.Alltoall(MPI.IN_PLACE, view)
        expect = np.concatenate([block(n, 31, n, s, rank) for s in range(size)])
        assert np.array_equal(view, expect)
    assert untouched(base, 3, k, SENTINEL)


@pytest.mark.parametrize("n", [7, 1 << 15])
def test_strided_bcast_2d(cmcomm, n):
    rank = cmcomm.Get_rank()
    full = block(4 * n, 21, n).reshape(n, 4)
    buf = full.copy() if rank == 0 else np.full((n, 4), SENTINEL)
    cmcomm.Bcast(buf[:, 1::2], 0)
    if rank != 0:
        assert np.array_equal(buf[:, 1::2], full[:, 1::2]) and (buf[:, ::2] == SENTINEL).all()


@pytest.mark.parametrize("n", [7, 1 << 15])
def test_strided_gather_scatter(cmcomm, n):
    rank, size = cmcomm.Get_rank(), cmcomm.Get_size()
    root = size - 1
    src = block(2 * n, 22, n, rank)
    recv = np.full((size, 2 * n), SENTINEL) if rank == root else None
    cmcomm.Gather(src[::2], None if recv is None else recv[:, ::2], root)
    if rank == root:
        expect = np.stack([block(2 * n, 22, n, r)[::2] for r in range(size)])
        assert np.array_equal(recv[:, ::2], expect) and (recv[:, 1::2] == SENTINEL).all()
    # and back: scatter strided blocks into strided receive views
    full = block(3 * size * n, 23, n).reshape(size, 3 * n)
    out = np.full(2 * n, SENTINEL)
    cmcomm.Scatter(full[:, ::3] if rank == root else None, out[1::2], root)
    assert np.array_equal(out[1::2], full[rank, ::3]) and (out[::2] == SENTINEL).all()


@pytest.mark.parametrize("n", [7, 1 << 15])
def test_strided_allgather_alltoall(cmcomm, n):
    rank, size = cmcomm.Get_rank(), cmcomm.Get_size()
    src = block(2 * n, 24, n, rank)
    recv = np.full((size, 2 * n), SENTINEL)
    cmcomm.Allgather(src[::-2], recv[:, ::2])
    expect = np.stack([block(2 * n, 24, n, r)[::-2] for r in range(size)])
    assert np.array_equal(recv[:, ::2], expect) and (recv[:, 1::2] == SENTINEL).all()
    sbase = np.full((size, 2 * n), SENTINEL)
    for d in range(size):
        sbase[d, ::2] = block(n, 25, n, rank, d)
    rbase = np.full((n, 2 * size), SENTINEL)
    cmcomm.Alltoall(sbase[:, ::2], rbase[:, ::2].T)        # a transposed strided receive
    expect = np.stack([block(n, 25, n, s, rank) for s in range(size)])
    assert np.array_equal(rbase[:, ::2].T, expect) and (rbase[:, 1::2] == SENTINEL).all()


@pytest.mark.parametrize("n", [7, 1 << 15])
def test_strided_scan_reduce_scatter(cmcomm, n):
    from cmampi import MPI

    rank, size = cmcomm.Get_rank(), cmcomm.Get_size()
    parts = [operand("SUM", "f8", 2 * size * n, 26, n, r)[::2] for r in range(size)]
    recv = np.full(2 * n, SENTINEL)
    cmcomm.Reduce_scatter_block(parts[rank], recv[::2], MPI.SUM)
    total = reduced("SUM", parts)
    assert np.array_equal(recv[::2], total[rank * n : (rank + 1) * n])
    assert (recv[1::2] == SENTINEL).all()
    recv = np.full(2 * size * n, SENTINEL)
    cmcomm.Scan(parts[rank], recv[1::2], MPI.SUM)
    assert np.array_equal(recv[1::2], reduced("SUM", parts[: rank + 1]))
    assert (recv[::2] == SENTINEL).all()


# == cmampi only: MAXLOC / MINLOC on structured (value, index) pairs ========================
# (mpi4py cannot map a structured numpy dtype to an MPI datatype.)

PAIR = np.dtype([("v", "f8"), ("i", "i4")])


def pairs(n: int, rank: int) -> np.ndarray:
    a = np.zeros(n, PAIR)
    a["v"] = rng(27, n, rank).integers(0, 4, size=n)     # many ties: lower index wins
    a["i"] = rank
    return a


@pytest.mark.parametrize("op", ["MAXLOC", "MINLOC"])
@pytest.mark.parametrize("n", [0, 7, 20001])
def test_maxloc_minloc(cmcomm, op, n):
    from cmampi import MPI

    rank, size = cmcomm.Get_rank(), cmcomm.Get_size()
    vals = np.stack([pairs(n, r)["v"] for r in range(size)])       # (size, n)
    best = vals.max(axis=0) if op == "MAXLOC" else vals.min(axis=0)
    expect = np.zeros(n, PAIR)
    expect["v"] = best
    expect["i"] = (vals == best).argmax(axis=0)                     # first (lowest) rank
    recv = np.zeros(n, PAIR)
    cmcomm.Allreduce(pairs(n, rank), recv, getattr(MPI, op))
    assert recv.tobytes() == expect.tobytes()
    root = size - 1
    out = np.zeros(n, PAIR) if rank == root else None
    cmcomm.Reduce(pairs(n, rank), out, getattr(MPI, op), root)
    if rank == root:
        assert out.tobytes() == expect.tobytes()


# == cmampi only, collectives checked across ranks: erroneous programs raise on every rank, ===
# and the communicator survives (unchecked, small ones are the MPI library's, as with mpi4py)

def works_after(checked, MPI) -> None:
    rank, size = checked.Get_rank(), checked.Get_size()
    for n in (5, 1 << 15):
        recv = np.zeros(n)
        checked.Allreduce(np.full(n, rank + 1.0), recv, MPI.SUM)
        assert (recv == size * (size + 1) // 2).all()


MISMATCH = {
    "small": lambda rank, size: 7 + rank,
    "large": lambda rank, size: (1 << 15) + rank,
    "mixed-paths": lambda rank, size: 10 if rank == 0 else 1 << 15,
    "one-empty": lambda rank, size: 0 if rank == size - 1 else 5,
    "last-differs-large": lambda rank, size: (1 << 15) + (rank == size - 1),
}


@pytest.mark.parametrize("case", list(MISMATCH))
def test_allreduce_size_mismatch(checked, case):
    from cmampi import MPI

    rank, size = checked.Get_rank(), checked.Get_size()
    n = MISMATCH[case](rank, size)
    with pytest.raises(MPI.Exception):
        checked.Allreduce(np.ones(n), np.zeros(n), MPI.SUM)
    works_after(checked, MPI)


@pytest.mark.parametrize("case", ["small", "large", "mixed-paths"])
def test_other_size_mismatches(checked, case):
    from cmampi import MPI

    rank, size = checked.Get_rank(), checked.Get_size()
    n = MISMATCH[case](rank, size)
    with pytest.raises(MPI.Exception):
        checked.Bcast(np.ones(n), 0)
    with pytest.raises(MPI.Exception):
        checked.Allgather(np.ones(n), np.zeros(size * n))
    with pytest.raises(MPI.Exception):
        checked.Scan(np.ones(n), np.zeros(n), MPI.SUM)
    with pytest.raises(MPI.Exception):   # dtypes differ: the last rank reduces float32
        dt = np.float32 if rank == size - 1 else np.float64
        checked.Allreduce(np.ones(n, dt), np.zeros(n, dt), MPI.SUM)
    works_after(checked, MPI)


LOCAL_ERRORS = ["Bcast", "Allreduce", "Reduce", "Gather", "Scatter", "Allgather", "Alltoall",
                "Reduce_scatter_block", "Scan"]


@pytest.mark.parametrize("coll", LOCAL_ERRORS)
@pytest.mark.parametrize("n", [7, 1 << 15])
def test_error_on_one_rank_raises_everywhere(checked, coll, n):
    """The last rank's receive buffer is read-only: it raises its own error, every
    other rank learns of it and raises MPI.Exception, nobody hangs."""
    from cmampi import MPI

    rank, size = checked.Get_rank(), checked.Get_size()
    last = rank == size - 1

    def rbuf(k):
        a = np.zeros(k)
        if last:
            a.flags.writeable = False
        return a

    send = np.ones(size * n)
    calls = {
        "Bcast": lambda: checked.Bcast(send if rank == 0 else rbuf(size * n), 0),
        "Allreduce": lambda: checked.Allreduce(send, rbuf(size * n), MPI.SUM),
        "Reduce": lambda: checked.Reduce(send, rbuf(size * n) if last else None, MPI.SUM,
                                        size - 1),
        "Gather": lambda: checked.Gather(send[:n], rbuf(size * n) if last else None, size - 1),
        "Scatter": lambda: checked.Scatter(send if rank == 0 else None, rbuf(n), 0),
        "Allgather": lambda: checked.Allgather(send[:n], rbuf(size * n)),
        "Alltoall": lambda: checked.Alltoall(send, rbuf(size * n)),
        "Reduce_scatter_block": lambda: checked.Reduce_scatter_block(send, rbuf(n), MPI.SUM),
        "Scan": lambda: checked.Scan(send, rbuf(size * n), MPI.SUM),
    }
    with pytest.raises((MPI.Exception, BufferError, ValueError, TypeError)) as e:
        calls[coll]()
    if not last:
        assert isinstance(e.value, MPI.Exception)
    works_after(checked, MPI)


@pytest.mark.parametrize("short", ["first", "last"])
@pytest.mark.parametrize("n", [7, 1 << 15])
def test_short_receive_buffer_on_one_rank(checked, n, short):
    """Allreduce where one rank's receive buffer is one element short: every rank
    raises (not just the short one: there mpi4py's local ValueError, elsewhere
    MPI.Exception), and nothing is written past the short buffer."""
    from cmampi import MPI

    rank, size = checked.Get_rank(), checked.Get_size()
    me_short = rank == root_of(short, size)
    guard = np.full(n + 64, SENTINEL)
    recv = guard[: n - 1] if me_short else np.zeros(n)
    with pytest.raises(ValueError if me_short else MPI.Exception):
        checked.Allreduce(np.ones(n), recv, MPI.SUM)
    works_after(checked, MPI)
    if me_short:
        assert (guard[n - 1 :] == SENTINEL).all(), "written past the receive buffer"


@pytest.fixture
def native_runs(monkeypatch):
    """Whether the MPI library ran each collective (``Communicator._ran_by_library``)."""
    from cmampi.comm import Communicator

    taken = []
    real = Communicator._ran_by_library
    monkeypatch.setattr(Communicator, "_ran_by_library",
                        lambda *a, **k: taken.append(real(*a, **k)) or taken[-1])
    return taken


def test_small_collectives_use_the_mpi_library(checked, MPI, native_runs):
    """On the MPI channel, small well-formed collectives are the MPI library's own
    (after one agreement); large, strided or mismatched ones are cmampi's, on every
    rank alike, so a mismatch still raises everywhere."""
    if MPI.CHANNEL != "mpi":
        pytest.skip("the MPI channel only")
    from cmampi import native

    taken = native_runs
    rank, size = checked.Get_rank(), checked.Get_size()
    out = np.zeros(16)
    checked.Allreduce(np.full(16, 1.0), out, op=MPI.SUM)
    assert (out == size).all() and taken[-1] is True
    n = native.NATIVE_MAX["Allreduce"] // 8 + 8
    big = np.zeros(n)
    checked.Allreduce(np.ones(n), big, op=MPI.SUM)
    assert (big == size).all() and taken[-1] is False
    strided = np.zeros(32)
    checked.Allreduce(np.ones(32)[::2], strided[::2], op=MPI.SUM)
    assert (strided[::2] == size).all() and taken[-1] is False
    with pytest.raises(MPI.Exception):
        n = 10 if rank == 0 else 12
        checked.Allreduce(np.ones(n), np.zeros(n), op=MPI.SUM)
    assert taken[-1] is False
    with pytest.raises(MPI.Exception):
        checked.Allreduce(np.ones(4), np.zeros(4), op=MPI.BAND)   # undefined for float64
    buf = np.arange(8.0) if rank == 0 else np.zeros(8)
    checked.Bcast(buf, root=0)
    assert (buf == np.arange(8.0)).all() and taken[-1] is True


def test_unchecked_small_collectives_skip_the_agreement(cmcomm, MPI, monkeypatch):
    """Unchecked (the default), small collectives of numbers go straight to the MPI
    library, whatever the buffer form (arrays, specs, strided views through a
    copy); large ones, structured dtypes and user ops agree first."""
    if MPI.CHANNEL != "mpi":
        pytest.skip("the MPI channel only")
    from cmampi import native

    agreed = []
    real = native.run
    monkeypatch.setattr(native, "run", lambda *a, **k: agreed.append(a[1]) or real(*a, **k))
    rank, size = cmcomm.Get_rank(), cmcomm.Get_size()
    out = np.zeros(16)
    cmcomm.Allreduce(np.full(16, 1.0), out, op=MPI.SUM)
    buf = bytearray(8) if rank else bytearray(b"abcdefgh")
    cmcomm.Bcast([buf, 8, MPI.BYTE], root=0)
    col = np.zeros((4, 3))
    cmcomm.Allreduce(np.ones((4, 3))[:, 1], col[:, 1], op=MPI.SUM)
    whole = np.zeros(2 * size)
    cmcomm.Gather(np.full(2, rank + 1.0), whole if rank == 0 else None, 0)
    assert agreed == [] and (out == size).all() and bytes(buf) == b"abcdefgh"
    assert (col[:, 1] == size).all() and (col[:, [0, 2]] == 0).all()
    assert rank or (whole == np.repeat(np.arange(1.0, size + 1), 2)).all()
    n = native.NATIVE_MAX["Allreduce"] // 8 + 8
    big = np.zeros(n)
    cmcomm.Allreduce(np.ones(n), big, op=MPI.SUM)
    assert (big == size).all() and agreed == ["Allreduce"]
    pairs_ = np.zeros(3, [("v", "f8"), ("i", "i4")])
    cmcomm.Allreduce(pairs_.copy(), pairs_, op=MPI.MAXLOC)
    assert agreed == ["Allreduce", "Allreduce"]


@pytest.mark.parametrize("dtype", ["i4", "f8", "c16", "?"])
def test_small_reductions_ride_in_the_agreement(checked, MPI, native_runs, dtype):
    """Small reductions are reduced from the payloads gathered in the agreement,
    in rank order, by every rank alike: the results are those of numpy."""
    if MPI.CHANNEL != "mpi":
        pytest.skip("the MPI channel only")
    taken = native_runs
    rank, size = checked.Get_rank(), checked.Get_size()
    op, fold = (MPI.LXOR, np.logical_xor) if dtype == "?" else (MPI.SUM, np.add)
    n = 3 * size
    parts = [(np.arange(n) % (r + 2) == 0).astype(dtype) if dtype == "?"
             else (np.arange(n) * (r + 1) - r).astype(dtype) for r in range(size)]

    def folded(ps):
        acc = ps[0].copy()
        for p in ps[1:]:
            acc = fold(acc, p).astype(acc.dtype)
        return acc

    mine = parts[rank].reshape(size, 3)       # 2-d buffers work too
    out = np.zeros((size, 3), dtype)
    checked.Allreduce(mine, out, op)
    assert np.array_equal(out.ravel(), folded(parts))
    out[...] = parts[rank].reshape(size, 3)
    checked.Allreduce(MPI.IN_PLACE, out, op)
    assert np.array_equal(out.ravel(), folded(parts))
    root = size - 1
    out = np.zeros(n, dtype)
    checked.Reduce(parts[rank], out if rank == root else None, op, root)
    if rank == root:
        assert np.array_equal(out, folded(parts))
    checked.Scan(parts[rank], out, op)
    assert np.array_equal(out, folded(parts[: rank + 1]))
    out[...] = 7
    checked.Exscan(parts[rank], out, op)
    if rank:
        assert np.array_equal(out, folded(parts[:rank]))
    block = np.zeros(3, dtype)
    checked.Reduce_scatter_block(parts[rank], block, op)
    assert np.array_equal(block, folded(parts)[rank * 3 : (rank + 1) * 3])
    assert taken == [True] * 6


def test_a_small_collective_rerun_follows_its_arguments(checked, MPI, native_runs):
    """A call made like the last one of its kind reuses its plan; an array whose
    shape, dtype, contiguity or writability changed in place, or another root or
    op, is signed again, so results stay right and mismatches still raise
    everywhere."""
    if MPI.CHANNEL != "mpi":
        pytest.skip("the MPI channel only")
    taken = native_runs
    rank, size = checked.Get_rank(), checked.Get_size()
    for root in (0, size - 1, 0):
        buf = np.arange(8.0) + root if rank == root else np.zeros(8)
        for _ in range(2):
            checked.Bcast(buf, root)
            assert np.array_equal(buf, np.arange(8.0) + root)
    buf.shape = (2, 4)                      # same memory, another shape
    checked.Bcast(buf, 0)
    assert np.array_equal(buf.ravel(), np.arange(8.0))
    buf.dtype = np.int64                    # same bytes, another dtype
    buf[...] = np.arange(8).reshape(2, 4) * (rank == 0)
    checked.Bcast(buf, 0)
    assert np.array_equal(buf.ravel(), np.arange(8))
    assert taken == [True] * 8

    mine, out = np.full(4, rank + 1.0), np.zeros(4)
    for op, want in ((MPI.SUM, size * (size + 1) / 2), (MPI.MAX, size), (MPI.SUM, None)):
        checked.Allreduce(mine, out, op)
        assert (out == (want or size * (size + 1) / 2)).all()
    whole = np.zeros(4 * size)
    gathered = whole[::2][: 2 * size]       # not contiguous, but of the same shape
    checked.Allgather(mine[:2], whole[: 2 * size])
    checked.Allgather(mine[:2], gathered)
    assert np.array_equal(gathered, np.repeat(np.arange(1.0, size + 1), 2))
    assert taken[-2:] == [True, False]

    out = np.zeros(4)
    if rank == size - 1:
        out.flags.writeable = False         # only here: an error on every rank
    with pytest.raises((MPI.Exception, BufferError, ValueError)):
        checked.Allreduce(mine, out, MPI.SUM)
    odd = np.full(4, 1.0)
    if rank == 0:
        odd.dtype = np.int64                # one rank's dtype changed in place
    # There send and receive types differ: mpi4py's local ValueError; elsewhere the
    # mismatch across ranks.
    with pytest.raises(ValueError if rank == 0 else MPI.Exception):
        checked.Allreduce(odd, np.zeros(4), MPI.SUM)
    works_after(checked, MPI)


def test_arguments_a_rank_ignores_never_keep_it_out_of_the_agreement(checked, MPI):
    """A non-root's receive buffer is ignored by Gather and Reduce (as in mpi4py),
    whatever it is: read-only or strided, small or large, it must not keep that
    rank from a collective the others run."""
    rank, size = checked.Get_rank(), checked.Get_size()
    for n in (4, 1024):        # payloads in the agreement, and beside it
        ignored = np.zeros(2 * n * size)[::2]
        frozen = np.zeros(n)
        frozen.flags.writeable = False
        for _ in range(2):
            out = np.zeros(n * size) if rank == 0 else ignored
            checked.Gather(np.full(n, float(rank)), out, root=0)
            if rank == 0:
                assert np.array_equal(out, np.repeat(np.arange(size, dtype=float), n))
            total = np.zeros(n) if rank == 0 else frozen
            checked.Reduce(np.full(n, rank + 1.0), total, MPI.SUM, root=0)
            if rank == 0:
                assert (total == size * (size + 1) / 2).all()
    works_after(checked, MPI)


@pytest.mark.parametrize("n", [4, (4 << 20) // 8 + 8], ids=["small", "large"])
def test_bcast_reads_a_read_only_root_buffer(comm, MPI, n):
    """The root's Bcast buffer is only read, so it may be read-only (as in mpi4py);
    a second call, made like the first, takes the same way."""
    rank, root = comm.Get_rank(), comm.Get_size() - 1
    for _ in range(2):
        buf = np.arange(n, dtype=np.float64) if rank == root else np.zeros(n)
        if rank == root:
            buf.flags.writeable = False
        comm.Bcast(buf, root=root)
        assert np.array_equal(buf, np.arange(n, dtype=np.float64))


def test_a_plan_made_by_an_aliased_call_loads_the_send_buffer(checked, MPI):
    """A first Allreduce whose send and receive buffers are one array (erroneous
    in MPI, harmless here) must not leave a plan that reduces the receive buffer
    of later, correct calls."""
    rank, size = checked.Get_rank(), checked.Get_size()
    x = np.full(4, rank + 1.0)
    checked.Allreduce(x, x, MPI.SUM)
    send, recv = np.full(4, 7.0), np.zeros(4)
    checked.Allreduce(send, recv, MPI.SUM)
    assert (recv == 7.0 * size).all()


@pytest.mark.parametrize("form", ["numpy", "array"])
def test_root_none_is_in_place(comm, MPI, form):
    """A root's Gather(None, recv) and Scatter(send, None) are in place, as in
    mpi4py, whatever buffer form the other ranks pass."""
    rank, size = comm.Get_rank(), comm.Get_size()

    def buf(values):
        return np.array(values, "d") if form == "numpy" else array.array("d", values)

    full = buf([r + 1.0 for r in range(size)] * 2)
    if rank == 0:
        full[0:2] = buf([1.0, 1.0])
        comm.Gather(None, [full, 2, MPI.DOUBLE], 0)
        assert list(full) == [float(1 + r) for r in range(size) for _ in range(2)]
        comm.Scatter([full, 2, MPI.DOUBLE], None, 0)
    else:
        comm.Gather(buf([rank + 1.0] * 2), None, 0)
        got = buf([0.0, 0.0])
        comm.Scatter(None, got, 0)
        assert list(got) == [rank + 1.0] * 2


def test_ranks_passing_different_forms_take_one_path(cmcomm, MPI):
    """Every rank of a correct program takes the same path (the MPI library's, or
    cmampi's after an agreement) whatever forms its buffers take: a user op with
    IN_PLACE at the root only, counted specs against bare arrays around the size
    where the path changes, a strided view inside a spec, a derived datatype."""
    from cmampi import native

    comm, rank, size = cmcomm, cmcomm.Get_rank(), cmcomm.Get_size()
    mysum = MPI.Op.Create(lambda a, b, dt: np.add(np.frombuffer(a), np.frombuffer(b),
                                                  out=np.frombuffer(b)), True)
    try:
        r = np.full(4, 1.0)
        if rank == 0:
            comm.Reduce(MPI.IN_PLACE, r, op=mysum, root=0)
            assert (r == size).all()
        else:
            comm.Reduce(r, None, op=mysum, root=0)
    finally:
        mysum.Free()
    # Alltoall: a block under the limit, the whole buffer over it.
    n = native.NATIVE_MAX["Alltoall"] // 8 // size + 8
    send = np.repeat(np.arange(size, dtype="d") + 10 * rank, n)
    out = np.zeros(n * size)
    comm.Alltoall([send, n, MPI.DOUBLE] if rank % 2 else send, out)
    assert (out == np.repeat(np.arange(size) * 10.0 + rank, n)).all()
    # Gather in place at the root, with a [buf, count] spec (no datatype).
    n = native.NATIVE_MAX["Gather"] // 8 + 8
    whole = np.zeros(n * size)
    if rank == 0:
        whole[:n] = 1.0
        comm.Gather(MPI.IN_PLACE, [whole, n], 0)
        assert (whole == np.repeat(np.arange(1.0, size + 1), n)).all()
    else:
        comm.Gather(np.full(n, rank + 1.0), None, 0)
    # Bcast: a strided view inside a spec on one rank, a plain array elsewhere.
    base = np.zeros(16)
    buf = [base[::2], MPI.DOUBLE] if rank == size - 1 else np.zeros(8)
    if rank == 0:
        buf = np.arange(8.0)
    comm.Bcast(buf, 0)
    got = base[::2] if rank == size - 1 else buf
    assert (got == np.arange(8.0)).all() and (base[1::2] == 0).all()
    if MPI.CHANNEL == "mpi":    # derived datatypes are the MPI library's
        four = MPI.DOUBLE.Create_contiguous(4).Commit()
        try:
            data = np.arange(8.0) if rank == 0 else np.zeros(8)
            comm.Bcast([data, 2, four] if rank == 0 else data, 0)
            assert (data == np.arange(8.0)).all()
        finally:
            four.Free()


def test_large_collectives_of_derived_datatypes(comm, MPI):
    """A derived datatype (no holes) in a collective above the size the MPI
    library runs by default: the MPI library runs it, as mpi4py does (cmampi's
    own path has no numpy type for it)."""
    if not hasattr(MPI.DOUBLE, "Create_contiguous") or MPI.get_vendor()[0] == "cmampi":
        pytest.skip("derived datatypes are the MPI library's")
    rank = comm.Get_rank()
    four = MPI.DOUBLE.Create_contiguous(4).Commit()
    try:
        n = 1 << 20                                         # 8 MiB of doubles
        data = np.arange(n * 1.0) if rank == 0 else np.zeros(n)
        comm.Bcast([data, n // 4, four] if rank == 0 else data, 0)
        assert (data == np.arange(n * 1.0)).all()
        size = comm.Get_size()
        out = np.zeros(n * size)
        comm.Allgather([np.full(n, rank * 1.0), n // 4, four], [out, n // 4, four])
        assert (out == np.repeat(np.arange(size * 1.0), n)).all()
    finally:
        four.Free()
