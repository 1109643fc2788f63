"""Cross Memory Attach (cmampi._cma) against real forked processes.

Each test forks a child that builds arrays of known content, reports its pid and
their addresses through a pipe, and then blocks on a pipe while the parent reads
or writes its memory with process_vm_readv/writev. Children always exit with
os._exit and are reaped (killed after a timeout if needed), so no test can hang.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import mmap
import os
import time
import traceback

import numpy as np
import pytest
from childpipe import read_exact, read_msg, reap, write_msg

from cmampi import _cma

TIMEOUT = 10.0  # seconds to wait for any answer from a child
PAGE = mmap.PAGESIZE


# -- forked children ---------------------------------------------------------------------

def _sha(data) -> str:
    return hashlib.sha256(bytes(data)).hexdigest()


def _address(obj) -> int:
    return obj.ctypes.data if isinstance(obj, np.ndarray) else int(obj)


class MemoryHolder:
    """A forked process holding what ``make()`` returns (name -> array or raw address).

    It answers ``call(op, name)`` requests ("sha": sha256 of the array's bytes,
    "bytes": the bytes themselves) until ``close()``.
    """

    def __init__(self, make):
        cmd_r, cmd_w = os.pipe()
        res_r, res_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            status = 1
            try:
                os.close(cmd_w)
                os.close(res_r)
                objs = make()
                write_msg(res_w, ("ok", os.getpid(), {k: _address(v) for k, v in objs.items()}))
                while True:
                    op, *args = read_msg(cmd_r, 60.0)
                    if op == "exit":
                        status = 0
                        break
                    data = objs[args[0]].tobytes()
                    write_msg(res_w, ("ok", _sha(data) if op == "sha" else data))
            except BaseException:  # noqa: BLE001 (a child reports any failure to its test)
                try:
                    write_msg(res_w, ("error", traceback.format_exc()))
                except BaseException:  # noqa: BLE001 (a child reports any failure to its test)
                    pass
            finally:
                os._exit(status)
        os.close(cmd_r)
        os.close(res_w)
        self.pid, self._cmd, self._res, self.exitcode = pid, cmd_w, res_r, None
        try:
            reported_pid, self.addr = self._reply()
        except BaseException:
            self.close()
            raise
        assert reported_pid == pid

    def _reply(self):
        kind, *rest = read_msg(self._res, TIMEOUT)
        if kind == "error":
            raise RuntimeError("the child failed:\n" + rest[0])
        return rest if len(rest) > 1 else rest[0]

    def call(self, op: str, name: str):
        write_msg(self._cmd, (op, name))
        return self._reply()

    def close(self) -> int:
        """Release the child and reap it; return its exit code (0: served cleanly)."""
        if self.exitcode is None:
            try:
                write_msg(self._cmd, ("exit",))
            except OSError:
                pass
            os.close(self._cmd)
            os.close(self._res)
            self.exitcode = reap(self.pid, TIMEOUT)
        return self.exitcode


@pytest.fixture
def spawn():
    """Start children with ``spawn(make)``; all are released and reaped afterwards."""
    kids = []

    def start(make) -> MemoryHolder:
        kid = MemoryHolder(make)
        kids.append(kid)
        return kid

    yield start
    for kid in kids:
        kid.close()


def run_in_child(fn):
    """Run *fn* in a forked child and return its (picklable) result."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            try:
                res = ("ok", fn())
            except BaseException:  # noqa: BLE001 (a child reports any failure to its test)
                res = ("error", traceback.format_exc())
            write_msg(w, res)
        finally:
            os._exit(0)
    os.close(w)
    try:
        kind, value = read_msg(r, TIMEOUT)
    finally:
        os.close(r)
        reap(pid, TIMEOUT)
    if kind == "error":
        raise RuntimeError("the child failed:\n" + value)
    return value


def pattern(nbytes: int, seed: int = 0) -> np.ndarray:
    """Position-dependent random bytes, so misplaced bytes are caught."""
    return np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


def mapped_page_then_hole():
    """Map two pages and unmap the second: (address of the mapped page, of the hole)."""
    addr = _libc.mmap(None, 2 * PAGE, mmap.PROT_READ | mmap.PROT_WRITE,
                      mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    assert addr not in (None, ctypes.c_void_p(-1).value)
    assert _libc.munmap(addr + PAGE, PAGE) == 0
    ctypes.memset(addr, 0x5A, PAGE)
    return addr, addr + PAGE


# -- whole-buffer reads and writes ----------------------------------------------------------

def test_reads_the_childs_memory_not_ours(spawn):
    """The same virtual address holds different bytes in the child; we get the child's."""
    shared = np.zeros(4096, np.uint8)
    want = pattern(4096, seed=1)

    def make():
        shared[:] = want
        return {"shared": shared}

    kid = spawn(make)
    assert kid.addr["shared"] == shared.ctypes.data
    out = np.zeros(4096, np.uint8)
    _cma.read_into(kid.pid, out.ctypes.data, kid.addr["shared"], out.nbytes)
    assert np.array_equal(out, want)
    assert not shared.any()


def test_readv_contiguous(spawn):
    """One segment on each side, as (n, 2) uint64 arrays or lists of pairs."""
    want = np.arange(1 << 17, dtype=np.int64) * 3 + 1
    kid = spawn(lambda: {"a": want.copy()})
    out = np.zeros_like(want)
    local = np.array([[out.ctypes.data, out.nbytes]], dtype=np.uint64)
    remote = np.array([[kid.addr["a"], want.nbytes]], dtype=np.uint64)
    assert _cma.readv(kid.pid, local, remote) == want.nbytes
    assert np.array_equal(out, want)
    out[:] = 0
    assert _cma.readv(kid.pid, [(out.ctypes.data, out.nbytes)],
                      [(kid.addr["a"], want.nbytes)]) == want.nbytes
    assert np.array_equal(out, want)


def test_read_into_unaligned_subrange(spawn):
    """read_into copies exactly nbytes from an odd remote offset to an odd local offset."""
    src = pattern(10000, seed=2)
    kid = spawn(lambda: {"a": src.copy()})
    out = np.full(100, 0xEE, np.uint8)
    _cma.read_into(kid.pid, out.ctypes.data + 3, kid.addr["a"] + 4321, 13)
    assert np.array_equal(out[3:16], src[4321:4334])
    assert (out[:3] == 0xEE).all() and (out[16:] == 0xEE).all()


def test_writev_contiguous_child_sees_data(spawn):
    """Bytes written into the child are what the child itself then reads."""
    kid = spawn(lambda: {"a": np.zeros(1 << 16, np.int32)})
    src = np.arange(1 << 16, dtype=np.int32) ** 2
    assert _cma.writev(kid.pid, [(src.ctypes.data, src.nbytes)],
                       [(kid.addr["a"], src.nbytes)]) == src.nbytes
    assert kid.call("sha", "a") == _sha(src.tobytes())
    assert kid.close() == 0


# -- ranges whose copy the kernel would run slow ("4K aliasing") ----------------------------

@pytest.mark.parametrize(("dst", "src", "slow"), [
    (16, 0, True), (1, 0, True), (31, 0, True), (4096 + 8, 0, True), (48, 32, True),
    (0, 0, False), (32, 0, False), (0, 16, False), (4095, 0, False), (2048, 0, False)])
def test_aliased_is_a_destination_1_to_31_bytes_past_the_source_in_the_page(dst, src, slow):
    base = 1 << 30
    assert _cma.aliased(base + dst, base + src) is slow


@pytest.mark.parametrize("direction", ["read", "write"])
@pytest.mark.parametrize("shift", [1, 16, 31])
@pytest.mark.parametrize("roff", [0, 4000])
@pytest.mark.parametrize("nbytes", [_cma.ALIASED_MIN, 2 * _cma.STAGE_PIECE + 12345])
def test_aliased_ranges_go_through_the_stage_and_land_exactly(spawn, monkeypatch, direction,
                                                              shift, roff, nbytes):
    """A range whose destination lies 1-31 bytes past its source (modulo the page)
    is copied through the stage, piece by piece, byte for byte, and nothing around
    it changes, reading from the child and writing into it. The remote range
    starts *roff* bytes into a page."""
    staged = []
    real = _cma._transfer_staged
    monkeypatch.setattr(_cma, "_transfer_staged", lambda *a: staged.append(a) or real(*a))
    big = pattern(nbytes + 2 * PAGE, seed=23)
    kid = spawn(lambda: {"a": big.copy(), "w": np.full(nbytes + 2 * PAGE, 7, np.uint8)})
    name = "a" if direction == "read" else "w"
    at = (roff - kid.addr[name]) % PAGE
    raddr = kid.addr[name] + at
    local = np.full(nbytes + 2 * PAGE, 9, np.uint8)
    # reading, ours is the destination: *shift* bytes past the remote range; writing, before it
    lo = (raddr + (shift if direction == "read" else -shift) - local.ctypes.data) % PAGE
    laddr = local.ctypes.data + lo
    if direction == "read":
        _cma.read_into(kid.pid, laddr, raddr, nbytes)
        assert np.array_equal(local[lo:lo + nbytes], big[at:at + nbytes])
        assert (local[:lo] == 9).all() and (local[lo + nbytes:] == 9).all()
    else:
        want = big[:nbytes]
        local[lo:lo + nbytes] = want
        assert _cma.writev(kid.pid, [(laddr, nbytes)], [(raddr, nbytes)]) == nbytes
        got = np.frombuffer(kid.call("bytes", "w"), np.uint8)
        assert np.array_equal(got[at:at + nbytes], want)
        assert (got[:at] == 7).all() and (got[at + nbytes:] == 7).all()
    assert len(staged) == 1


@pytest.mark.parametrize("direction", ["read", "write"])
def test_a_staged_copy_into_or_from_a_hole_raises_efault(spawn, direction):
    """Our side of a staged copy is copied by the kernel too: a range running into
    unmapped memory raises EFAULT, as a straight copy does, where a copy in user
    space would crash the process."""
    n = 2 * _cma.STAGE_PIECE
    kid = spawn(lambda: {"a": pattern(n + PAGE, seed=25)})
    pages = (n + 2 * PAGE) // PAGE
    addr = _libc.mmap(None, pages * PAGE, mmap.PROT_READ | mmap.PROT_WRITE,
                      mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    assert addr not in (None, ctypes.c_void_p(-1).value)
    try:
        hole = addr + (pages // 2) * PAGE            # past the first piece
        assert _libc.munmap(hole, pages * PAGE - (hole - addr)) == 0
        raddr = kid.addr["a"]
        laddr = addr + (raddr + (16 if direction == "read" else -16) - addr) % PAGE
        assert _cma.aliased(laddr, raddr) if direction == "read" else _cma.aliased(raddr, laddr)
        with pytest.raises(OSError) as err:
            if direction == "read":
                _cma.read_into(kid.pid, laddr, raddr, n)
            else:
                _cma.writev(kid.pid, [(laddr, n)], [(raddr, n)])
        assert err.value.errno == errno.EFAULT
    finally:
        _libc.munmap(addr, (pages // 2) * PAGE)


def test_a_forked_child_never_shares_the_stage():
    """The stage is private memory: a child's staged copies cannot change the
    parent's stage under a copy in flight (an anonymous mmap is shared by default)."""
    stage = _cma._stage()
    ctypes.memset(stage, 0x11, _cma.STAGE_PIECE)
    pid = os.fork()
    if pid == 0:
        ctypes.memset(_cma._stage(), 0x22, _cma.STAGE_PIECE)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert ctypes.string_at(stage, _cma.STAGE_PIECE) == b"\x11" * _cma.STAGE_PIECE


def test_short_returns_are_resumed_through_the_stage(spawn, monkeypatch):
    """Short returns of the kernel inside a staged copy resume where they stopped."""
    monkeypatch.setattr(_cma, "_readv", _short_kernel(_cma._readv, 100_003))
    monkeypatch.setattr(_cma, "_writev", _short_kernel(_cma._writev, 100_003))
    n = _cma.STAGE_PIECE + 54321
    src = pattern(n, seed=24)
    kid = spawn(lambda: {"a": src.copy(), "w": np.zeros(n + PAGE, np.uint8)})
    out = np.zeros(n + PAGE, np.uint8)
    lo = (kid.addr["a"] + 16 - out.ctypes.data) % PAGE
    assert _cma.aliased(out.ctypes.data + lo, kid.addr["a"])
    _cma.read_into(kid.pid, out.ctypes.data + lo, kid.addr["a"], n)
    assert np.array_equal(out[lo:lo + n], src)
    at = (out.ctypes.data + lo + 16 - kid.addr["w"]) % PAGE
    assert _cma.aliased(kid.addr["w"] + at, out.ctypes.data + lo)
    assert _cma.writev(kid.pid, [(out.ctypes.data + lo, n)], [(kid.addr["w"] + at, n)]) == n
    got = np.frombuffer(kid.call("bytes", "w"), np.uint8)
    assert np.array_equal(got[at:at + n], src) and not got[:at].any() and not got[at + n:].any()


def test_writev_scattered_leaves_gaps_untouched(spawn):
    """Strided remote segments: only the segment bytes of the child change."""
    kid = spawn(lambda: {"a": np.full(4096, 0x11, np.uint8)})
    src = pattern(64 * 32, seed=3)
    remote = [(kid.addr["a"] + 64 * i, 32) for i in range(64)]
    assert _cma.writev(kid.pid, [(src.ctypes.data, src.nbytes)], remote) == src.nbytes
    got = np.frombuffer(kid.call("bytes", "a"), np.uint8).reshape(64, 64)
    assert np.array_equal(got[:, :32].ravel(), src)
    assert (got[:, 32:] == 0x11).all()


# -- segment lists: many segments, mismatched boundaries, batching --------------------------

def _scattered(base: int, seglen: int, nseg: int, gap: int, seed: int) -> np.ndarray:
    """nseg segments of seglen bytes, gap bytes apart from *base*, in a shuffled order."""
    order = np.random.default_rng(seed).permutation(nseg)
    segs = np.empty((nseg, 2), np.uint64)
    segs[:, 0] = base + order * (seglen + gap)
    segs[:, 1] = seglen
    return segs


def _gather(buf: np.ndarray, base: int, segs: np.ndarray) -> np.ndarray:
    return np.concatenate([buf[int(a) - base: int(a) - base + int(n)] for a, n in segs])


# (local segment length, local count, remote segment length, remote count)
MANY = [(8, 5000, 40, 1000), (8, 5000, 20, 2000), (12, 2500, 3, 10000), (7, 3000, 7, 3000)]


@pytest.mark.parametrize("lseg,nloc,rseg,nrem", MANY)
def test_readv_many_permuted_segments(spawn, lseg, nloc, rseg, nrem):
    """More than IOV_MAX segments per side with unaligned boundaries, shuffled order."""
    assert lseg * nloc == rseg * nrem
    rbuf_len = nrem * (rseg + 5)
    src = pattern(rbuf_len, seed=4)
    kid = spawn(lambda: {"a": src.copy()})
    rsegs = _scattered(kid.addr["a"], rseg, nrem, 5, seed=5)
    out = np.full(nloc * (lseg + 3), 0xEE, np.uint8)
    lsegs = _scattered(out.ctypes.data, lseg, nloc, 3, seed=6)
    total = lseg * nloc
    assert _cma.readv(kid.pid, lsegs, rsegs) == total
    stream = _gather(src, kid.addr["a"], rsegs)
    assert np.array_equal(_gather(out, out.ctypes.data, lsegs), stream)
    assert (out.reshape(nloc, lseg + 3)[:, lseg:] == 0xEE).all()


@pytest.mark.parametrize("lseg,nloc,rseg,nrem", MANY)
def test_writev_many_permuted_segments(spawn, lseg, nloc, rseg, nrem):
    """writev with the same segment shapes; the child's gaps keep their fill."""
    kid = spawn(lambda: {"a": np.full(nrem * (rseg + 5), 0x33, np.uint8)})
    rsegs = _scattered(kid.addr["a"], rseg, nrem, 5, seed=7)
    src = pattern(nloc * (lseg + 3), seed=8)
    lsegs = _scattered(src.ctypes.data, lseg, nloc, 3, seed=9)
    assert _cma.writev(kid.pid, lsegs, rsegs) == lseg * nloc
    got = np.frombuffer(kid.call("bytes", "a"), np.uint8)
    want = np.full_like(got, 0x33)
    stream = _gather(src, src.ctypes.data, lsegs)
    pos = 0
    for a, n in rsegs:
        off = int(a) - kid.addr["a"]
        want[off:off + int(n)] = stream[pos:pos + int(n)]
        pos += int(n)
    assert np.array_equal(got, want)


def test_calls_respect_iov_max_and_max_rw_count(spawn, monkeypatch):
    """Every syscall gets at most IOV_MAX iovecs per side and MAX_RW_COUNT bytes."""
    monkeypatch.setattr(_cma, "MAX_RW_COUNT", 16384)
    calls = []
    real_call = _cma._call

    def spy(fn, pid, lp, ln, rp, rn):
        lv = (_cma._iovec * ln).from_address(lp)
        rv = (_cma._iovec * rn).from_address(rp)
        calls.append((ln, rn, sum(v.iov_len for v in lv), sum(v.iov_len for v in rv)))
        return real_call(fn, pid, lp, ln, rp, rn)

    monkeypatch.setattr(_cma, "_call", spy)
    src = pattern(3000 * 11, seed=10)
    kid = spawn(lambda: {"a": src.copy()})
    rsegs = _scattered(kid.addr["a"], 11, 3000, 0, seed=11)
    out = np.zeros(1650 * 23, np.uint8)
    lsegs = _scattered(out.ctypes.data, 20, 1650, 3, seed=12)
    assert _cma.readv(kid.pid, lsegs, rsegs) == 33000
    assert np.array_equal(_gather(out, out.ctypes.data, lsegs),
                          _gather(src, kid.addr["a"], rsegs))
    assert len(calls) >= 3
    for ln, rn, lbytes, rbytes in calls:
        assert 1 <= ln <= _cma.IOV_MAX and 1 <= rn <= _cma.IOV_MAX
        assert lbytes == rbytes <= 16384


def test_zero_length_segments_are_ignored(spawn):
    """Empty rows (even at address 0) are dropped on both sides."""
    src = pattern(300, seed=13)
    kid = spawn(lambda: {"a": src.copy()})
    base = kid.addr["a"]
    out = np.zeros(300, np.uint8)
    o = out.ctypes.data
    local = [(0, 0), (o, 100), (o + 7, 0), (o + 100, 200), (0, 0)]
    remote = [(base + 200, 100), (0, 0), (base, 0), (base, 200)]
    assert _cma.readv(kid.pid, local, remote) == 300
    assert np.array_equal(out, np.concatenate([src[200:], src[:200]]))
    assert _cma.readv(kid.pid, [(0, 0)], []) == 0
    assert _cma.readv(kid.pid, [], []) == 0
    assert _cma.writev(kid.pid, [(o, 0)], [(0, 0)]) == 0
    assert _cma.as_segments([(0, 0), (5, 3), (9, 0)]).tolist() == [[5, 3]]


def test_mismatched_totals_raise_value_error(spawn):
    """Different local and remote totals are refused before anything is copied."""
    kid = spawn(lambda: {"a": pattern(64, seed=14)})
    out = np.zeros(64, np.uint8)
    with pytest.raises(ValueError):
        _cma.readv(kid.pid, [(out.ctypes.data, 8)], [(kid.addr["a"], 16)])
    with pytest.raises(ValueError):
        _cma.readv(kid.pid, [(out.ctypes.data, 8), (out.ctypes.data + 8, 8)],
                   [(kid.addr["a"], 15)])
    with pytest.raises(ValueError):
        _cma.writev(kid.pid, [(out.ctypes.data, 16)], [])
    assert not out.any()


def test_malformed_segments_raise_value_error():
    with pytest.raises(ValueError):
        _cma.as_segments([(1, 2, 3)])
    with pytest.raises(ValueError):
        _cma.readv(os.getpid(), [1, 2], [1, 2])


# -- large transfers and resumed partial transfers -------------------------------------------

def test_small_max_rw_count_contiguous(spawn, monkeypatch):
    """A 3 MiB read completes in MAX_RW_COUNT pieces (read_into and readv)."""
    monkeypatch.setattr(_cma, "MAX_RW_COUNT", 4096)
    sizes = []
    real_call = _cma._call

    def spy(fn, pid, lp, ln, rp, rn):
        sizes.append(sum(v.iov_len for v in (_cma._iovec * ln).from_address(lp)))
        return real_call(fn, pid, lp, ln, rp, rn)

    monkeypatch.setattr(_cma, "_call", spy)
    src = pattern(3 << 20, seed=15)
    kid = spawn(lambda: {"a": src.copy()})
    out = np.zeros_like(src)
    _cma.read_into(kid.pid, out.ctypes.data, kid.addr["a"], src.nbytes)
    assert np.array_equal(out, src)
    out[:] = 0
    assert _cma.readv(kid.pid, [(out.ctypes.data, src.nbytes)],
                      [(kid.addr["a"], src.nbytes)]) == src.nbytes
    assert np.array_equal(out, src)
    assert len(sizes) == 2 * (3 << 20) // 4096 and max(sizes) == 4096


@pytest.mark.parametrize("cap", [4096, 1000])
def test_small_max_rw_count_segments(spawn, monkeypatch, cap):
    """MAX_RW_COUNT cuts windows in the middle of segments; the stream stays intact."""
    monkeypatch.setattr(_cma, "MAX_RW_COUNT", cap)
    src = pattern(40 * 50000, seed=16)
    kid = spawn(lambda: {"a": src.copy()})
    rsegs = _scattered(kid.addr["a"], 50000, 40, 0, seed=17)
    out = np.zeros(src.nbytes, np.uint8)
    lsegs = _scattered(out.ctypes.data, 62500, 32, 0, seed=18)
    assert _cma.readv(kid.pid, lsegs, rsegs) == src.nbytes
    assert np.array_equal(_gather(out, out.ctypes.data, lsegs),
                          _gather(src, kid.addr["a"], rsegs))


def _short_kernel(real, limit: int):
    """A process_vm_readv/writev that moves at most *limit* bytes per call (a short return)."""
    def trim(p, n):
        out = []
        left = limit
        for v in (_cma._iovec * n).from_address(p):
            if left == 0:
                break
            take = min(v.iov_len, left)
            out.append((v.iov_base, take))
            left -= take
        return (_cma._iovec * len(out))(*out)

    def fn(pid, lp, ln, rp, rn, flags):
        lv, rv = trim(lp, ln), trim(rp, rn)
        return real(pid, ctypes.addressof(lv), len(lv), ctypes.addressof(rv), len(rv), flags)

    return fn


@pytest.mark.parametrize("limit", [777, 1])
def test_short_returns_are_resumed(spawn, monkeypatch, limit):
    """Short returns mid-segment are resumed where they stopped, for reads and writes."""
    monkeypatch.setattr(_cma, "_readv", _short_kernel(_cma._readv, limit))
    monkeypatch.setattr(_cma, "_writev", _short_kernel(_cma._writev, limit))
    n = 20000 if limit > 1 else 400
    src = pattern(n, seed=19)
    kid = spawn(lambda: {"a": src.copy(), "w": np.zeros(n, np.uint8)})
    out = np.zeros(n, np.uint8)
    _cma.read_into(kid.pid, out.ctypes.data, kid.addr["a"], n)
    assert np.array_equal(out, src)
    rsegs = _scattered(kid.addr["a"], n // 100, 100, 0, seed=20)
    lsegs = _scattered(out.ctypes.data, n // 40, 40, 0, seed=21)
    out[:] = 0
    assert _cma.readv(kid.pid, lsegs, rsegs) == n
    assert np.array_equal(_gather(out, out.ctypes.data, lsegs),
                          _gather(src, kid.addr["a"], rsegs))
    wsegs = _scattered(kid.addr["w"], n // 50, 50, 0, seed=22)
    assert _cma.writev(kid.pid, lsegs, wsegs) == n
    got = np.frombuffer(kid.call("bytes", "w"), np.uint8)
    assert np.array_equal(_gather(got, kid.addr["w"], wsegs), _gather(out, out.ctypes.data, lsegs))


def test_zero_return_is_efault_not_a_spin(monkeypatch):
    """A kernel that copies nothing without an error is reported, not retried forever."""
    calls = []

    def nothing(*args):
        calls.append(args)
        if len(calls) > 100:
            raise AssertionError("retried a zero return")
        return 0

    monkeypatch.setattr(_cma, "_readv", nothing)
    out = np.zeros(16, np.uint8)
    for call in (lambda: _cma.read_into(os.getpid(), out.ctypes.data, out.ctypes.data, 16),
                 lambda: _cma.readv(os.getpid(), [(out.ctypes.data, 16)],
                                    [(out.ctypes.data, 8), (out.ctypes.data + 8, 8)])):
        with pytest.raises(OSError) as exc:
            call()
        assert exc.value.errno == errno.EFAULT
    assert len(calls) == 2


# -- errors ----------------------------------------------------------------------------------

def test_unmapped_remote_address_raises_efault(spawn):
    """A hole in the child, alone or after mapped bytes, is EFAULT, never a short read."""
    def make():
        page, hole = mapped_page_then_hole()
        return {"page": page, "hole": hole}

    kid = spawn(make)
    out = np.zeros(64, np.uint8)
    with pytest.raises(OSError) as exc:
        _cma.read_into(kid.pid, out.ctypes.data, kid.addr["hole"], 16)
    assert exc.value.errno == errno.EFAULT
    assert "not mapped" in str(exc.value)
    # straddling the end of the mapped page: part is copied, then the fault is reported
    with pytest.raises(OSError) as exc:
        _cma.readv(kid.pid, [(out.ctypes.data, 64)], [(kid.addr["hole"] - 32, 64)])
    assert exc.value.errno == errno.EFAULT
    with pytest.raises(OSError) as exc:
        _cma.readv(kid.pid, [(out.ctypes.data, 32), (out.ctypes.data + 32, 32)],
                   [(kid.addr["page"], 32), (kid.addr["hole"], 32)])
    assert exc.value.errno == errno.EFAULT
    with pytest.raises(OSError) as exc:
        _cma.writev(kid.pid, [(out.ctypes.data, 8)], [(kid.addr["hole"], 8)])
    assert exc.value.errno == errno.EFAULT
    assert kid.close() == 0


def test_unmapped_local_address_raises_efault(spawn):
    """A hole on our side is EFAULT too."""
    kid = spawn(lambda: {"a": pattern(64, seed=23)})
    page, hole = mapped_page_then_hole()
    try:
        with pytest.raises(OSError) as exc:
            _cma.read_into(kid.pid, hole, kid.addr["a"], 16)
        assert exc.value.errno == errno.EFAULT
    finally:
        _libc.munmap(page, PAGE)


def test_dead_pid_raises_process_lookup_error(spawn):
    """A reaped child's pid: reads, writes and probe all raise ProcessLookupError."""
    kid = spawn(lambda: {"a": pattern(64, seed=24)})
    addr = kid.addr["a"]
    assert kid.close() == 0
    out = np.zeros(64, np.uint8)
    with pytest.raises(ProcessLookupError) as exc:
        _cma.read_into(kid.pid, out.ctypes.data, addr, 64)
    assert exc.value.errno == errno.ESRCH and "has exited" in str(exc.value)
    with pytest.raises(ProcessLookupError):
        _cma.readv(kid.pid, [(out.ctypes.data, 64)], [(addr, 32), (addr + 32, 32)])
    with pytest.raises(ProcessLookupError):
        _cma.writev(kid.pid, [(out.ctypes.data, 64)], [(addr, 64)])
    with pytest.raises(ProcessLookupError):
        _cma.probe(kid.pid)


def test_probe_allows_our_child_and_ourselves(spawn):
    kid = spawn(dict)
    assert _cma.probe(kid.pid) is None
    assert _cma.probe(os.getpid()) is None


@pytest.mark.parametrize("err,cls", [
    (errno.EPERM, PermissionError),
    (errno.ESRCH, ProcessLookupError),
    (errno.ENOSYS, OSError),
    (errno.EFAULT, OSError),
])
def test_oserror_maps_errno_to_subclass(err, cls):
    e = _cma.oserror(err, 1)
    assert type(e) is cls and e.errno == err
    assert str(e).count(os.strerror(err)) == 1


def test_oserror_hints():
    eperm = _cma.oserror(errno.EPERM, 4242)
    assert isinstance(eperm, PermissionError)
    assert "4242" in str(eperm) and "CMAMPI_TRANSPORT=copy" in str(eperm)
    enosys = _cma.oserror(errno.ENOSYS, 1)
    assert enosys.errno == errno.ENOSYS and "CMAMPI_TRANSPORT=copy" in str(enosys)
    eio = _cma.oserror(errno.EIO, 1)  # no hint: just the system's message
    assert eio.errno == errno.EIO and eio.strerror == os.strerror(errno.EIO)


def test_missing_libc_wrappers_raise_enosys(monkeypatch):
    """Without process_vm_readv/writev in libc every entry point raises ENOSYS."""
    monkeypatch.setattr(_cma, "_readv", None)
    monkeypatch.setattr(_cma, "_writev", None)
    calls = [
        lambda: _cma.readv(os.getpid(), [], []),
        lambda: _cma.writev(os.getpid(), [], []),
        lambda: _cma.read_into(os.getpid(), 0, 0, 1),
        lambda: _cma.probe(os.getpid()),
    ]
    for call in calls:
        with pytest.raises(OSError) as exc:
            call()
        assert exc.value.errno == errno.ENOSYS


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_other_user_gets_permission_error():
    """A child that drops to uid/gid 65534 may not touch its root parent's memory."""
    parent = os.getpid()
    target = np.arange(16, dtype=np.uint8)
    scratch = np.zeros(16, np.uint8)
    t, s = target.ctypes.data, scratch.ctypes.data

    def attempt():
        _become_nobody(False)
        tries = {
            "probe": lambda: _cma.probe(parent),
            "read_into": lambda: _cma.read_into(parent, s, t, 16),
            "readv": lambda: _cma.readv(parent, [(s, 16)], [(t, 8), (t + 8, 8)]),
            "writev": lambda: _cma.writev(parent, [(s, 16)], [(t, 16)]),
        }
        out = {}
        for name, fn in tries.items():
            try:
                fn()
                out[name] = None
            except OSError as e:
                out[name] = (type(e).__name__, e.errno,
                             "runs as uid 0/0/0 and we as uid 65534" in str(e)
                             and "CMAMPI_TRANSPORT=copy" in str(e))
        return out

    got = run_in_child(attempt)
    refused = ("PermissionError", errno.EPERM, True)
    assert got == dict.fromkeys(("probe", "read_into", "readv", "writev"), refused)
    assert np.array_equal(target, np.arange(16, dtype=np.uint8))


def _become_nobody(dumpable: bool) -> None:
    """Drop to uid/gid 65534 (which leaves the process non-dumpable) and set dumpable."""
    os.setgroups([])
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)
    assert _libc.prctl(PR_SET_DUMPABLE, int(dumpable), 0, 0, 0) == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
@pytest.mark.parametrize("dumpable", [False, True])
def test_same_user_non_dumpable_peer_is_refused(dumpable):
    """Two processes of one user: the kernel refuses access to the non-dumpable one
    (as after setuid), and the message says so; a dumpable one can be read."""
    def attempt():
        r, w = os.pipe()
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:                       # the peer: nobody, dumpable or not
            try:
                _become_nobody(dumpable)
                os.close(w)
                os.write(ready_w, b"x")
                os.read(r, 1)              # until our parent is done
            finally:
                os._exit(0)
        os.close(r)
        try:
            _become_nobody(True)
            read_exact(ready_r, 1, TIMEOUT)   # the peer has its final identity
            try:
                _cma.probe(pid)
                return None
            except OSError as e:
                return type(e).__name__, e.errno, str(e)
        finally:
            os.close(w)
            os.waitpid(pid, 0)

    got = run_in_child(attempt)
    if dumpable:
        assert got is None
    else:
        kind, err, text = got
        assert (kind, err) == ("PermissionError", errno.EPERM)
        assert "not dumpable" in text and "CMAMPI_TRANSPORT=copy" in text


@pytest.mark.parametrize("scope,expect", [
    (1, "prctl(PR_SET_PTRACER)"), (2, "admin-only"), (3, "until the next reboot"),
    (None, "security module"), (0, "security module"),
])
def test_refusal_explained_by_yama_scope(monkeypatch, scope, expect):
    """Same user, dumpable peer: what is left to blame is Yama, or a security module."""
    me = str(os.getuid())
    gid = str(os.getgid())
    status = {"Uid": f"{me}\t{me}\t{me}\t{me}", "Gid": f"{gid}\t{gid}\t{gid}\t{gid}",
              "CapEff": "0"}
    monkeypatch.setattr(_cma, "_status", lambda pid: status)
    monkeypatch.setattr(_cma, "_dump_owner", lambda pid: int(me))
    monkeypatch.setattr(_cma, "ptrace_scope", lambda: scope)
    text = str(_cma.oserror(errno.EPERM, 77))
    assert expect in text and "pid 77" in text and "CMAMPI_TRANSPORT=copy" in text
    if scope:
        assert "ptrace_scope" in text


def test_refusal_explained_by_group(monkeypatch):
    me, gid = os.getuid(), os.getgid()
    status = {"Uid": f"{me}\t{me}\t{me}\t{me}", "Gid": f"{gid}\t{gid + 1}\t{gid}\t{gid}",
              "CapEff": "0"}
    monkeypatch.setattr(_cma, "_status", lambda pid: status)
    text = str(_cma.oserror(errno.EPERM, 77))
    assert f"it runs as gid {gid}/{gid + 1}/{gid} and we as gid {gid}" in text


# -- Yama: PR_SET_PTRACER --------------------------------------------------------------------

PR_SET_DUMPABLE = 4
_libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4


@pytest.mark.parametrize("scope,enabled,plan", [
    (None, True, "none"), (0, True, "none"), (0, False, "none"),
    (1, True, "set"), (1, False, "off"),
    (2, True, "blocked"), (3, True, "blocked"), (2, False, "blocked"),
])
def test_ptracer_plan(scope, enabled, plan):
    assert _cma.ptracer_plan(scope, enabled) == plan


def test_ptrace_scope_reads_yama():
    path = "/proc/sys/kernel/yama/ptrace_scope"
    want = None
    if os.path.exists(path):
        with open(path) as f:
            want = int(f.read())
    assert _cma.ptrace_scope() == want


def test_set_ptracer_any_maps_errno():
    """Without Yama the kernel answers EINVAL, raised as OSError naming the cause;
    with Yama the call succeeds (in a child, so that this process is left as it was)."""
    def attempt():
        try:
            _cma.set_ptracer_any()
            return None
        except OSError as e:
            return type(e).__name__, e.errno, e.strerror

    got = run_in_child(attempt)
    if _cma.ptrace_scope() is None:
        assert got == ("OSError", errno.EINVAL,
                       f"{os.strerror(errno.EINVAL)}: Yama is not enabled in this kernel")
    else:
        assert got is None


# -- namespaces ------------------------------------------------------------------------------

def test_user_namespace_of_self_and_child(spawn):
    kid = spawn(dict)
    ours = _cma.user_namespace()
    assert ours is not None and ours == _cma.user_namespace(os.getpid())
    assert _cma.user_namespace(kid.pid) == ours
    assert _cma.user_namespace(999999999) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_user_namespace_hidden_from_who_may_not_read():
    """The kernel shows a process's namespaces only to those who may ptrace-read it."""
    parent = os.getpid()

    def attempt():
        _become_nobody(True)
        return _cma.user_namespace(parent), _cma.user_namespace()

    theirs, ours = run_in_child(attempt)
    assert theirs is None and ours == _cma.user_namespace()


# -- pidfds: an exited peer is never read through its pid ------------------------------------

def _exited_child() -> int:
    """The pid of a child that has exited and been reaped (its pid is free again)."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def test_peer_reports_exit_and_pulls_raise(spawn):
    src = pattern(4096, seed=31)
    kid = spawn(lambda: {"a": src.copy()})
    peer = _cma.hold(kid.pid, rank=3)
    try:
        assert peer.alive() and "running" in repr(peer)
        out = np.zeros(4096, np.uint8)
        _cma.read_into(kid.pid, out.ctypes.data, kid.addr["a"], 4096)   # checked, fine
        assert np.array_equal(out, src)
        assert kid.close() == 0
        assert not peer.alive() and "exited" in repr(peer)
        calls = {
            "check": peer.check,
            "read_into": lambda: _cma.read_into(kid.pid, out.ctypes.data, kid.addr["a"], 16),
            "readv": lambda: _cma.readv(kid.pid, [(out.ctypes.data, 16)],
                                        [(kid.addr["a"], 16)]),
            "writev": lambda: _cma.writev(kid.pid, [(out.ctypes.data, 16)],
                                          [(kid.addr["a"], 16)]),
            "probe": lambda: _cma.probe(kid.pid),
            "poke_word": lambda: _cma.poke_word(kid.pid, kid.addr["a"], 1),
        }
        for name, call in calls.items():
            with pytest.raises(ProcessLookupError) as exc:
                call()
            assert exc.value.errno == errno.ESRCH, name
            assert f"rank 3 (pid {kid.pid}) has exited" in str(exc.value), name
            assert "reused its pid" in str(exc.value), name
    finally:
        _cma.release(peer)
    assert peer.fd == -1 and kid.pid not in _cma._held


def test_a_word_is_poked_and_peeked_in_another_process(spawn):
    """The handshake's words: one 8-byte write and read each, nothing beside them."""
    kid = spawn(lambda: {"a": np.zeros(4, np.uint64)})
    word = kid.addr["a"] + 8
    assert _cma.poke_word(kid.pid, word, 0x0123456789ABCDEF)
    assert _cma.peek_word(kid.pid, word) == 0x0123456789ABCDEF
    out = np.zeros(4, np.uint64)
    _cma.read_into(kid.pid, out.ctypes.data, kid.addr["a"], 32)
    assert out.tolist() == [0, 0x0123456789ABCDEF, 0, 0]
    assert not _cma.poke_word(kid.pid, 8, 1)    # unmapped: not written, no error
    assert _cma.peek_word(kid.pid, 8) == 0


def test_peer_exit_is_seen_before_it_is_reaped(spawn):
    """A pidfd signals exit at once; the zombie still holds its pid, but we stop anyway."""
    kid = spawn(dict)
    with _cma.Peer(kid.pid) as peer:
        write_msg(kid._cmd, ("exit",))
        deadline = time.monotonic() + TIMEOUT
        while peer.alive() and time.monotonic() < deadline:
            time.sleep(0.001)
        assert not peer.alive()
        assert os.waitpid(kid.pid, os.WNOHANG)[0] == kid.pid   # it was still a zombie
        kid.exitcode = 0
        os.close(kid._cmd)
        os.close(kid._res)
    assert peer.fd == -1 and not peer.alive() and "closed" in repr(peer)


def test_holds_are_shared_and_counted(spawn):
    kid = spawn(dict)
    a = _cma.hold(kid.pid, 1)
    b = _cma.hold(kid.pid, 2)
    assert a is b and a.refs == 2 and _cma._held[kid.pid] is a
    _cma.release(a)
    assert a.fd >= 0 and _cma._held[kid.pid] is a
    _cma.release(b)
    assert a.fd == -1 and kid.pid not in _cma._held


def test_hold_of_a_gone_pid_raises():
    with pytest.raises(ProcessLookupError):
        _cma.hold(_exited_child())


def test_proc_descriptor_stands_in_for_pidfd(spawn, monkeypatch):
    """Kernels before 5.3 have no pidfd_open: /proc/<pid> then tells once it is reaped."""
    def enosys(pid):
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    monkeypatch.setattr(os, "pidfd_open", enosys)
    kid = spawn(dict)
    peer = _cma.hold(kid.pid, 0)
    try:
        assert peer._poll is None and peer.alive()
        assert kid.close() == 0
        with pytest.raises(ProcessLookupError):
            peer.check()
    finally:
        _cma.release(peer)


def _filled(buf: np.ndarray, fill: int):
    """A child's make(): *buf* (allocated before the fork, so at the same address
    in every child) filled with *fill*."""
    def make():
        buf[:] = fill
        return {"a": buf}
    return make


def _child_at_pid(want: int, make, tries: int = 20):
    """A MemoryHolder running at pid *want* (free again), made by setting the kernel's
    last pid just below it."""
    for _ in range(tries):
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(want - 1))
        kid = MemoryHolder(make)
        if kid.pid == want:
            return kid
        kid.close()                    # another process took it first: again
    pytest.skip(f"could not get pid {want} back within {tries} tries")


@pytest.mark.skipif(os.geteuid() != 0 or not os.access("/proc/sys/kernel/ns_last_pid", os.W_OK),
                    reason="needs to set /proc/sys/kernel/ns_last_pid")
def test_reused_pid_is_caught():
    """A genuine pid reuse: the peer exits, a stranger gets its pid. A raw read
    copies the stranger's memory; through the held peer it is refused, and a
    write never reaches the stranger."""
    buf = np.zeros(4096, np.uint8)
    first = MemoryHolder(_filled(buf, 0xAA))
    pid, addr = first.pid, buf.ctypes.data
    peer = _cma.hold(pid, 1)
    stranger = None
    try:
        assert first.close() == 0
        stranger = _child_at_pid(pid, _filled(buf, 0xBB))
        out = np.zeros(4096, np.uint8)
        _cma._transfer_one(_cma._readv, pid, out.ctypes.data, addr, 4096)   # unguarded
        assert (out == 0xBB).all()
        out[:] = 0
        with pytest.raises(ProcessLookupError, match=f"rank 1 \\(pid {pid}\\) has exited"):
            _cma.read_into(pid, out.ctypes.data, addr, 4096)
        with pytest.raises(ProcessLookupError):
            _cma.readv(pid, [(out.ctypes.data, 4096)], [(addr, 2048), (addr + 2048, 2048)])
        with pytest.raises(ProcessLookupError):
            _cma.probe(pid)
        src = np.full(4096, 0xCC, np.uint8)
        with pytest.raises(ProcessLookupError):
            _cma.writev(pid, [(src.ctypes.data, 4096)], [(addr, 4096)])
        assert stranger.call("sha", "a") == _sha(np.full(4096, 0xBB, np.uint8))
    finally:
        _cma.release(peer)
        if stranger is not None:
            assert stranger.close() == 0
