"""Cross Memory Attach: the only module that calls process_vm_readv/process_vm_writev."""

from __future__ import annotations

import ctypes as _ctypes
import errno as _errno
import os as _os
from typing import Sequence, Tuple, Union

import numpy as _np

__all__ = [
    "IOV_MAX",
    "MAX_RW_COUNT",
    "Segments",
    "as_segments",
    "readv",
    "writev",
    "read_into",
    "probe",
    "pid_namespace",
    "oserror",
]

#: Most iovecs the kernel takes per side in one call (UIO_MAXIOV).
IOV_MAX = 1024
#: Most bytes one call moves (MAX_RW_COUNT = INT_MAX & PAGE_MASK); larger requests return short.
MAX_RW_COUNT = 0x7FFFF000

#: A segment list: an (n, 2) uint64 array of (address, length) rows, or a sequence of pairs.
Segments = Union[_np.ndarray, Sequence[Tuple[int, int]]]


class _iovec(_ctypes.Structure):
    _fields_ = [("iov_base", _ctypes.c_void_p), ("iov_len", _ctypes.c_size_t)]


_libc = _ctypes.CDLL(None, use_errno=True)
_SIG = [
    _ctypes.c_int,
    _ctypes.c_void_p,
    _ctypes.c_ulong,
    _ctypes.c_void_p,
    _ctypes.c_ulong,
    _ctypes.c_ulong,
]
try:
    _readv = _libc.process_vm_readv
    _writev = _libc.process_vm_writev
    for _fn in (_readv, _writev):
        _fn.argtypes = _SIG
        _fn.restype = _ctypes.c_ssize_t
except AttributeError:  # pragma: no cover - libc without the wrappers
    _readv = _writev = None

_HINTS = {
    _errno.EPERM: (
        "the kernel refused cross-memory access to pid {pid}: ranks must run as the "
        "same user, and Yama's /proc/sys/kernel/yama/ptrace_scope must be 0 (or the "
        "peer must allow us with prctl(PR_SET_PTRACER)); set CMAMPI_TRANSPORT=copy "
        "to use the copy path instead"
    ),
    _errno.ESRCH: "no process with pid {pid}: the peer has exited",
    _errno.EFAULT: "an address range is not mapped in pid {pid} or in this process",
    _errno.ENOSYS: (
        "process_vm_readv is not available (kernel older than 3.2, or blocked by "
        "seccomp); set CMAMPI_TRANSPORT=copy"
    ),
    _errno.ENOMEM: "the kernel could not allocate memory for the iovec arrays",
    _errno.EINVAL: "invalid iovec count or length",
}


def oserror(err: int, pid: int) -> OSError:
    """The ``OSError`` subclass for *err*, with a hint about what it means for CMA."""
    hint = _HINTS.get(err)
    msg = _os.strerror(err)
    if hint:
        msg = f"{msg}: {hint.format(pid=pid)}"
    return OSError(err, msg)


def as_segments(segs: Segments) -> _np.ndarray:
    """Normalise *segs* to an (n, 2) uint64 array with zero-length rows removed."""
    arr = _np.asarray(segs, dtype=_np.uint64)
    if arr.size == 0:
        return _np.empty((0, 2), dtype=_np.uint64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError("segments must be (address, length) pairs")
    if not arr[:, 1].all():
        arr = arr[arr[:, 1] != 0]
    return _np.ascontiguousarray(arr)


_iovec_pair = _iovec * 2


def _call(fn, pid: int, lp: int, ln: int, rp: int, rn: int) -> int:
    n = fn(pid, lp, ln, rp, rn, 0)
    if n < 0:
        raise oserror(_ctypes.get_errno(), pid)
    if n == 0:
        # The kernel returns 0 only when nothing could be copied at the first
        # byte without reporting an error; retrying would spin forever.
        raise oserror(_errno.EFAULT, pid)
    return n


def _transfer_one(fn, pid: int, laddr: int, raddr: int, nbytes: int) -> None:
    # A fresh pair per call: ctypes drops the GIL around the syscall, so a
    # shared iovec could be rewritten by another thread before the kernel reads it.
    iov = _iovec_pair()
    lp = _ctypes.addressof(iov)
    rp = lp + _ctypes.sizeof(_iovec)
    done = 0
    while done < nbytes:
        step = min(nbytes - done, MAX_RW_COUNT)
        iov[0].iov_base = laddr + done
        iov[0].iov_len = step
        iov[1].iov_base = raddr + done
        iov[1].iov_len = step
        done += _call(fn, pid, lp, 1, rp, 1)


def _window(segs: _np.ndarray, ends: _np.ndarray, lo: int, hi: int) -> _np.ndarray:
    """The rows of *segs* covering stream bytes [lo, hi), trimmed at both ends."""
    i = int(_np.searchsorted(ends, lo, side="right"))
    j = int(_np.searchsorted(ends, hi, side="left"))
    win = segs[i : j + 1].copy()
    start_i = int(ends[i] - segs[i, 1])
    cut = lo - start_i
    win[0, 0] += _np.uint64(cut)
    win[0, 1] -= _np.uint64(cut)
    win[-1, 1] -= _np.uint64(int(ends[j]) - hi)
    return win


def _reach(ends: _np.ndarray, lo: int) -> int:
    """Stream offset reached by at most IOV_MAX segments starting at offset *lo*."""
    i = int(_np.searchsorted(ends, lo, side="right"))
    return int(ends[min(i + IOV_MAX - 1, len(ends) - 1)])


def _transfer(fn, pid: int, local: Segments, remote: Segments) -> int:
    if type(local) is list and type(remote) is list and len(local) == 1 and len(remote) == 1:
        (laddr, ln), (raddr, rn) = local[0], remote[0]
        if ln == rn:  # one range each side: no arrays to build
            _transfer_one(fn, pid, laddr, raddr, ln)
            return ln
    loc = as_segments(local)
    rem = as_segments(remote)
    lend = _np.cumsum(loc[:, 1], dtype=_np.uint64)
    rend = _np.cumsum(rem[:, 1], dtype=_np.uint64)
    total = int(lend[-1]) if len(lend) else 0
    if total != (int(rend[-1]) if len(rend) else 0):
        raise ValueError(
            f"local and remote segments differ in length "
            f"({total} != {int(rend[-1]) if len(rend) else 0} bytes)"
        )
    if total == 0:
        return 0
    if len(loc) == 1 and len(rem) == 1:
        _transfer_one(fn, pid, int(loc[0, 0]), int(rem[0, 0]), total)
        return total
    done = 0
    while done < total:
        hi = min(_reach(lend, done), _reach(rend, done), done + MAX_RW_COUNT)
        lw = _window(loc, lend, done, hi)
        rw = _window(rem, rend, done, hi)
        # A short return (a fault part-way, or the kernel's per-call cap) is
        # resumed from where it stopped; only a zero or an error ends the loop.
        done += _call(fn, pid, lw.ctypes.data, len(lw), rw.ctypes.data, len(rw))
    return total


def _require(fn):
    if fn is None:
        raise oserror(_errno.ENOSYS, 0)
    return fn


def readv(pid: int, local: Segments, remote: Segments) -> int:
    """Copy the bytes of *remote* segments in process *pid* into our *local* segments.

    Both lists describe one byte stream each and must have the same total length.
    Any number of segments and any total size are accepted: calls are batched by
    ``IOV_MAX`` and ``MAX_RW_COUNT`` and partial transfers are resumed. Returns the
    number of bytes copied; raises ``OSError`` (``PermissionError``,
    ``ProcessLookupError``, ...) on failure, never a silent short read.
    """
    return _transfer(_require(_readv), pid, local, remote)


def writev(pid: int, local: Segments, remote: Segments) -> int:
    """Copy our *local* segments into *remote* segments of process *pid* (see `readv`)."""
    return _transfer(_require(_writev), pid, local, remote)


def read_into(pid: int, laddr: int, raddr: int, nbytes: int) -> None:
    """Copy *nbytes* contiguous bytes from *raddr* in *pid* to our *laddr*."""
    _transfer_one(_require(_readv), pid, laddr, raddr, nbytes)


def pid_namespace():
    """An identity of this process's pid namespace (pids only mean something inside it)."""
    try:
        st = _os.stat("/proc/self/ns/pid")
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def probe(pid: int) -> None:
    """Check that the kernel lets us read *pid*'s memory; raise the refusal if not.

    The permission check comes before any address check, so a one-byte read at
    address 0 fails with EFAULT exactly when access is allowed.
    """
    fn = _require(_readv)
    buf = _ctypes.create_string_buffer(1)
    iov = _iovec_pair((_ctypes.addressof(buf), 1), (0, 1))
    lp = _ctypes.addressof(iov)
    n = fn(pid, lp, 1, lp + _ctypes.sizeof(_iovec), 1, 0)
    err = _ctypes.get_errno() if n < 0 else 0
    if err != _errno.EFAULT:
        raise oserror(err or _errno.EIO, pid)
