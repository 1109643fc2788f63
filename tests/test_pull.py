"""Pulling a remote layout into a local one (cmampi._pull), within this process.

CMA on our own pid is allowed, so ``pull(os.getpid(), ...)`` exercises every
strategy (one contiguous read, iovec lists, row-aligned staging through cache)
without a second process. Results are checked against numpy, and guard bytes
around and between the destination elements must stay untouched. How a
cooperative copy is split between receiver and sender (``coop.CopyShare``) is
checked here too.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from cmampi import _cma, _pull
from cmampi._buffers import recv_buffer, send_buffer

CHUNKS = [4096, 1 << 20]
SENTINEL = 0xA5
MARGIN = 256
N = 6144  # elements in every full-size view below (48 KiB of float64)


# -- the model: message streams and guarded destinations -------------------------------------

def stream_of(v: np.ndarray) -> np.ndarray:
    """The array whose C order is *v*'s message order (memory order if contiguous)."""
    return v.T if v.flags.f_contiguous and not v.flags.c_contiguous else v


def write_stream(v: np.ndarray, off: int, data: bytes) -> None:
    """Overwrite stream bytes [off, off + len(data)) of the view *v* in place."""
    s = stream_of(v)
    b = np.frombuffer(s.tobytes(), np.uint8).copy()
    b[off:off + len(data)] = np.frombuffer(data, np.uint8)
    s[...] = np.frombuffer(b.tobytes(), s.dtype).reshape(s.shape)


class Guarded:
    """A float64 array of *shape* (C or F order) inside a byte array with SENTINEL margins."""

    def __init__(self, shape, order="C"):
        self.shape, self.order = shape, order
        self.nbytes = int(np.prod(shape)) * 8
        self.big = np.full(self.nbytes + 2 * MARGIN, SENTINEL, np.uint8)
        self.base = self.of(self.big)

    def of(self, big):
        return big[MARGIN:MARGIN + self.nbytes].view("f8").reshape(self.shape, order=self.order)


def source(shape, order="C") -> np.ndarray:
    """Distinct float64 values, different in every byte position."""
    n = int(np.prod(shape))
    return (np.arange(n, dtype="f8") * 1.0001 + 0.5).reshape(shape, order=order)


# Views with N elements each: (base shape, order, view function). After collapsing,
# a layout is rows of contiguous runs; the comments say what each one becomes.
VIEWS = {
    "contiguous": ((N,), "C", lambda a: a),
    "fortran": ((48, 128), "F", lambda a: a),
    "step2_cols": ((24, 512), "C", lambda a: a[:, ::2]),             # one run every 16 bytes
    "padded_step2": ((24, 514), "C", lambda a: a[:, :512:2]),        # rows of 256 fine runs
    "coarse_rows": ((48, 256), "C", lambda a: a[::2]),               # 2 KiB runs
    "gapped_rows": ((96, 140), "C", lambda a: a[::2, 6:134]),        # 1 KiB runs, 1.2 KiB gaps
    "reversed": ((N,), "C", lambda a: a[::-1]),                      # one run, stride -8
    "reversed_step2": ((24, 512), "C", lambda a: a[::-1, ::-2]),     # one run, stride -16
    "reversed_padded": ((24, 514), "C", lambda a: a[::-1, 511::-2]),  # rows, both negative
    "axes_permuted": ((16, 24, 16), "C", lambda a: a.transpose(1, 0, 2)),  # sparse rows
    "transposed_step": ((512, 24), "C", lambda a: a[::2].T),         # sparse rows
    "sparse_cols": ((24, 256 * 50), "C", lambda a: a[:, ::50]),      # one run every 400 bytes
    "sparse_rows": ((24, 12802), "C", lambda a: a[:, :12800:50]),    # sparse rows
    "far_rows": ((24, 2048), "C", lambda a: a[:, :512:2]),           # dense rows, far apart
    "very_sparse": ((N, 520), "C", lambda a: a[:, 0]),               # one run every 4160 bytes
}


def remote_view(name):
    shape, order, fn = VIEWS[name]
    v = fn(source(shape, order))
    assert v.size == N
    return v


def local_view(name):
    shape, order, fn = VIEWS[name]
    g = Guarded(shape, order)
    return g, fn


def spec_bytes(spec) -> bytes:
    """The message of a float64 spec ``v`` or ``[v, (count, displ), "d"]``, by numpy."""
    if isinstance(spec, np.ndarray):
        return stream_of(spec).tobytes()
    v, (count, displ), _ = spec
    return stream_of(v).tobytes()[displ * 8:(displ + count) * 8]


def check(rspec, g: Guarded, fn, lwin, chunk):
    """Pull *rspec* into ``[fn(g.base), *lwin]`` and compare all of g.big with numpy."""
    lspec = [fn(g.base), *lwin] if lwin else fn(g.base)
    rbuf, lbuf = send_buffer(rspec), recv_buffer(lspec)
    data = spec_bytes(rspec)
    assert rbuf.nbytes == len(data) <= lbuf.nbytes
    _pull.pull(os.getpid(), rbuf.layout, lbuf.layout, lbuf.array, chunk)
    want = np.full_like(g.big, SENTINEL)
    write_stream(fn(g.of(want)), (lwin[0][1] if lwin else 0) * 8, data)
    assert g.big.tobytes() == want.tobytes()


@pytest.fixture
def strategy(monkeypatch):
    """Records which copy paths a pull took: 'read_into', 'readv' and 'staged' counts."""
    seen = {"read_into": 0, "readv": 0, "staged": 0}
    real_fetch, real_readv, real_read_into = _pull._fetch, _cma.readv, _cma.read_into

    def fetch(*a):
        seen["staged"] += 1
        return real_fetch(*a)

    def readv(*a):
        seen["readv"] += 1
        return real_readv(*a)

    def read_into(*a):
        seen["read_into"] += 1
        return real_read_into(*a)

    monkeypatch.setattr(_pull, "_fetch", fetch)
    monkeypatch.setattr(_cma, "readv", readv)
    monkeypatch.setattr(_cma, "read_into", read_into)
    return seen


# -- every pair of views, every chunk size ----------------------------------------------------

@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("lname", list(VIEWS))
@pytest.mark.parametrize("rname", list(VIEWS))
def test_all_view_pairs(rname, lname, chunk):
    g, fn = local_view(lname)
    check(remote_view(rname), g, fn, None, chunk)


# -- each strategy, named, with the path it must take ----------------------------------------

@pytest.mark.parametrize("chunk", CHUNKS)
def test_contiguous_to_contiguous_is_one_read(strategy, chunk):
    g, fn = local_view("contiguous")
    check(remote_view("fortran"), g, fn, None, chunk)
    assert strategy == {"read_into": 1, "readv": 0, "staged": 0}


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("rname", ["step2_cols", "reversed", "reversed_step2", "gapped_rows"])
def test_strided_to_contiguous_is_staged(strategy, rname, chunk):
    g, fn = local_view("contiguous")
    check(remote_view(rname), g, fn, None, chunk)
    assert strategy["staged"] >= (N * 8 // chunk if chunk < N * 8 else 1)


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("lname", ["step2_cols", "reversed", "reversed_step2", "gapped_rows"])
def test_contiguous_to_strided_is_staged(strategy, lname, chunk):
    g, fn = local_view(lname)
    check(remote_view("contiguous"), g, fn, None, chunk)
    assert strategy["staged"] >= 1


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("name", ["step2_cols", "padded_step2", "reversed_padded"])
def test_strided_to_strided_same_shape(strategy, name, chunk):
    g, fn = local_view(name)
    check(remote_view(name), g, fn, None, chunk)
    assert strategy["staged"] >= 1


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("lshape,lfn", [
    ((32, 258), lambda a: a[::-1, 1:257:2]),  # 32 rows of 128, reversed
    ((13, 642), lambda a: a[:, :640:2]),      # 13 rows of 320: pieces of 5 x 4 rows + tail
], ids=["rows_of_128", "rows_of_320"])
def test_strided_to_strided_different_shapes(strategy, lshape, lfn, chunk):
    """16 rows of 256 items into rows of another length, staged in whole-row pieces."""
    src = source((16, 770))[:, :768:3]
    check(src, Guarded(lshape), lfn, None, chunk)
    assert strategy["staged"] >= 1


@pytest.mark.parametrize("chunk", CHUNKS)
def test_coarse_remote_into_fine_local(strategy, chunk):
    """Coarse remote runs are fetched as iovecs into the stage, then spread locally."""
    g, fn = local_view("step2_cols")
    check(remote_view("coarse_rows"), g, fn, None, chunk)
    assert strategy["staged"] >= 1


@pytest.mark.parametrize("chunk", CHUNKS)
def test_coarse_rows_both_sides_use_iovecs(strategy, chunk):
    g, fn = local_view("coarse_rows")
    check(remote_view("coarse_rows"), g, fn, None, chunk)
    assert strategy == {"read_into": 0, "readv": 1, "staged": 0}


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("rname,lname", [("very_sparse", "contiguous"),
                                         ("contiguous", "very_sparse"),
                                         ("very_sparse", "padded_step2")])
def test_sparse_rows_use_iovecs(strategy, rname, lname, chunk):
    """Layouts whose gaps cost more to read than iovecs, on either side, go run by run."""
    g, fn = local_view(lname)
    check(remote_view(rname), g, fn, None, chunk)
    assert strategy == {"read_into": 0, "readv": 1, "staged": 0}


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("rname,lname", [("transposed_step", "contiguous"),
                                         ("contiguous", "transposed_step"),
                                         ("sparse_rows", "padded_step2"),
                                         ("padded_step2", "axes_permuted")])
def test_short_gaps_are_read_through(strategy, rname, lname, chunk):
    """Sparse layouts whose gaps are short next to an iovec's cost are staged, gaps and all."""
    g, fn = local_view(lname)
    check(remote_view(rname), g, fn, None, chunk)
    assert strategy["staged"] >= 1 and strategy["readv"] <= 1


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("lname", ["contiguous", "padded_step2"])
@pytest.mark.parametrize("rname", list(VIEWS))
def test_remote_over_read_is_bounded(monkeypatch, rname, lname, chunk):
    """Remote bytes read (payload plus gaps in span reads) stay within MAX_SPAN_RATIO x
    payload, or GAP_PER_SEGMENT per run saved."""
    read = []
    real_readv, real_read_into = _cma.readv, _cma.read_into

    def readv(pid, local, remote):
        read.append(int(_cma.as_segments(remote)[:, 1].sum()))
        return real_readv(pid, local, remote)

    def read_into(pid, laddr, raddr, nbytes):
        read.append(nbytes)
        return real_read_into(pid, laddr, raddr, nbytes)

    monkeypatch.setattr(_cma, "readv", readv)
    monkeypatch.setattr(_cma, "read_into", read_into)
    g, fn = local_view(lname)
    check(remote_view(rname), g, fn, None, chunk)
    payload = N * 8
    segments = payload // send_buffer(remote_view(rname)).layout.run
    bound = max(_pull.MAX_SPAN_RATIO * payload, _pull.GAP_PER_SEGMENT * segments)
    assert sum(read) <= bound, (
        f"{sum(read)} remote bytes read in {len(read)} calls for a {payload}-byte payload "
        f"({sum(read) / payload:.1f}x)")


def test_incommensurate_rows_fall_back_to_iovecs(strategy):
    """Rows of 1024 and 1021 items: a piece of whole rows on both sides exceeds 4 chunks."""
    src = source((3, 2050))[:, :2048:2]      # 3 rows of 1024
    g = Guarded((4, 2044))
    def fn(a):
        return a[:, :2042:2]                 # 4 rows of 1021 >= 3072 items
    check(src, g, fn, None, 4096)
    assert strategy == {"read_into": 0, "readv": 1, "staged": 0}


# -- windows and partial fills ----------------------------------------------------------------

WINDOWS = [(N // 2, N // 3), (N - 5, 5), (1000, 0), (N - 1, 0), (7, N - 7)]


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("count,displ", WINDOWS)
@pytest.mark.parametrize("rname", ["contiguous", "step2_cols", "reversed", "gapped_rows",
                                   "coarse_rows", "sparse_cols"])
def test_windowed_remote(rname, count, displ, chunk):
    """[buf, (count, displ), 'd'] on the remote side, into a strided or contiguous view."""
    for lname in ("contiguous", "step2_cols", "gapped_rows"):
        g, fn = local_view(lname)
        check([remote_view(rname), (count, displ), "d"], g, fn, None, chunk)


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("count,displ", WINDOWS)
@pytest.mark.parametrize("lname", ["contiguous", "step2_cols", "reversed", "gapped_rows",
                                   "coarse_rows", "sparse_cols"])
def test_windowed_local(lname, count, displ, chunk):
    """A window on the receiving side: bytes outside it stay untouched."""
    for rname in ("contiguous", "step2_cols", "gapped_rows"):
        g, fn = local_view(lname)
        src = remote_view(rname)
        check([src, (count, 0), "d"], g, fn, [(count, displ), "d"], chunk)


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("count", [N // 2, 1000, 13, 1, 3 * 256 + 5])
@pytest.mark.parametrize("rname,lname", [("contiguous", "step2_cols"),
                                         ("step2_cols", "gapped_rows"),
                                         ("reversed_step2", "contiguous"),
                                         ("gapped_rows", "reversed"),
                                         ("coarse_rows", "step2_cols"),
                                         ("step2_cols", "axes_permuted")])
def test_partial_fill(rname, lname, count, chunk):
    """A remote message shorter than the local buffer fills only its stream prefix."""
    g, fn = local_view(lname)
    check([remote_view(rname), (count, 0), "d"], g, fn, None, chunk)


@pytest.mark.parametrize("chunk", CHUNKS)
def test_partial_fill_with_unaligned_tail(strategy, chunk):
    """Rows of 6 into rows of 8 items: 60 items = 2 staged pieces of 24 + a 12-item tail."""
    src = source((10, 13))[:, :12:2]        # 10 rows of 6
    g = Guarded((10, 17))
    def fn(a):
        return a[:, :16:2]                  # 10 rows of 8
    check(src, g, fn, None, chunk)
    assert strategy["staged"] >= 1 and strategy["readv"] >= 1


def test_nothing_to_pull_touches_nothing(strategy):
    g, fn = local_view("step2_cols")
    check([remote_view("step2_cols"), (0, 9), "d"], g, fn, None, 4096)
    assert strategy == {"read_into": 0, "readv": 0, "staged": 0}


def test_copy_share_follows_the_faster_side():
    """The receiver's share of a cooperative copy moves toward whichever side
    copied faster, stays within its bounds, and ignores copies it cannot time."""
    from cmampi.coop import CopyShare

    share = CopyShare(0.5)
    for _ in range(30):                    # the sender writes at half our speed
        share.learn(1 << 20, 1.0, 1 << 20, 2.0)
    assert abs(share.value - 2 / 3) < 0.01
    for _ in range(30):                    # now the sender is far faster
        share.learn(1 << 20, 100.0, 1 << 20, 1.0)
    assert share.value == CopyShare.LOW
    before = share.value
    share.learn(1 << 20, 0.0, 1 << 20, 1.0)
    share.learn(0, 1.0, 1 << 20, 1.0)
    assert share.value == before
    n = 10 << 20
    for value in (CopyShare.LOW, 0.5, CopyShare.HIGH):
        share.value = value
        mid = share.split(n)
        assert mid % 4096 == 0 and 0 < mid < n and abs(mid - n * value) <= 4096
    assert CopyShare(0.5).split(100) == 100    # a page or less: all ours


def test_a_copy_in_a_pipeline_learns_from_busy_time():
    """A receive with more receives behind it is a pipeline: its sender often
    starts a part late, still copying the one before. Its share learns from
    the time each side was busy (ours until we replied, the sender's copy), so
    a sender that started late but copied fast is given more; a receive alone
    learns from when each side ended, counted from the request."""
    from types import SimpleNamespace

    from cmampi import _wire
    from cmampi._buffers import Layout
    from cmampi.coop import CoopPull, CopyShare

    def finished(streaming: bool) -> float:
        engine = SimpleNamespace(share=CopyShare(0.5), stream_share=CopyShare(0.5),
                                 helping={1: 1})
        coop = object.__new__(CoopPull)
        coop.engine, coop.source, coop.streaming = engine, 1, streaming
        coop.share = engine.stream_share if streaming else engine.share
        coop.remote, coop.mid = Layout.contiguous(0, 1 << 20), 1 << 19
        # We asked at 0, read our half by 1 ms and replied by 1.1 ms; the sender
        # began its half at 1.5 ms (busy before) and wrote it in 0.5 ms.
        coop.asked, coop.pulled, coop.replied = 0.0, 1e-3, 1.1e-3
        coop.done = bytearray(_wire.helped(_wire.ACK_OK, 1.5e-3, 2e-3))
        assert coop.finish(None) is None
        assert engine.helping[1] == 0       # no longer under way
        return coop.share.value

    assert finished(streaming=False) > 0.5     # it ended last: it counts as slow
    assert finished(streaming=True) < 0.5      # it copied faster: it gets more


def test_shared_copies_split_where_both_parts_end_together():
    """A two-rank Bcast's split gives the reader bytes in proportion to the
    rates both ranks reported, the same on every rank that saw the same
    reports, within its bounds, in whole pages; reports that cannot be timed
    and reports of failed calls change nothing."""
    from cmampi.coop import SharedCopies

    a, b = SharedCopies(), SharedCopies()
    n = 64 << 20
    assert a.reader_part(n) == n // 2          # nothing timed: an even split
    for _ in range(40):                        # writes at 0.8 of reads
        head = a.reader_part(n)
        a.timed("write", n - head, (n - head) / 16e9)
        b.timed("read", head, head / 20e9)
        reports = [a.report(), b.report()]     # rank order, as the exchange gives them
        a.learn(reports)
        b.learn(reports)
        assert a.rates == b.rates and a.mine == b.mine == ()
    head = a.reader_part(n)
    assert head == b.reader_part(n) and head % 4096 == 0
    assert abs(head / n - 20 / 36) < 0.001
    before = dict(a.rates)
    a.learn([(("read", 0, 1.0), ("write", 1 << 20, 0.0), ("copy", 1, 1.0)), ()])
    assert a.rates == before
    for _ in range(40):                        # reads become far slower
        a.learn([(("read", 1 << 20, 1.0),), (("write", 1 << 20, 1e-6),)])
    assert a.reader_part(n) == int(n * SharedCopies.LOW) & ~4095
    assert a.reader_part(100) == 0 and a.reader_part(0) == 0
