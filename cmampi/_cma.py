"""Cross Memory Attach: the only module that calls process_vm_readv/process_vm_writev.

It also holds the process-level calls CMA depends on: Yama's ``PR_SET_PTRACER``,
the namespaces a pid belongs to, and pidfds (`Peer`), so that a read through a
pid can never return another process's memory after the peer has exited.
"""

from __future__ import annotations

import ctypes as _ctypes
import errno as _errno
import mmap as _mmap
import os as _os
import select as _select
import threading as _threading
from collections.abc import Sequence
from typing import Any

import numpy as _np

__all__ = [
    "ALIASED_MIN",
    "IOV_MAX",
    "MAX_RW_COUNT",
    "STAGE_PIECE",
    "Peer",
    "Segments",
    "aliased",
    "as_segments",
    "hold",
    "oserror",
    "peek_word",
    "pid_namespace",
    "poke_word",
    "probe",
    "ptrace_scope",
    "ptracer_plan",
    "read_into",
    "readv",
    "release",
    "set_ptracer_any",
    "user_namespace",
    "writev",
]

#: Most iovecs the kernel takes per side in one call (UIO_MAXIOV).
IOV_MAX = 1024
#: Most bytes one call moves (MAX_RW_COUNT = INT_MAX & PAGE_MASK); larger requests return short.
MAX_RW_COUNT = 0x7FFFF000

#: A segment list: an (n, 2) uint64 array of (address, length) rows, or a sequence of pairs.
Segments = _np.ndarray | Sequence[tuple[int, int]]


class _iovec(_ctypes.Structure):
    _fields_ = [("iov_base", _ctypes.c_void_p), ("iov_len", _ctypes.c_size_t)]


_libc = _ctypes.CDLL(None, use_errno=True)
_SIG: list[type[_ctypes._SimpleCData[Any]]] = [
    _ctypes.c_int,
    _ctypes.c_void_p,
    _ctypes.c_ulong,
    _ctypes.c_void_p,
    _ctypes.c_ulong,
    _ctypes.c_ulong,
]
_readv: _ctypes._NamedFuncPointer | None
_writev: _ctypes._NamedFuncPointer | None
try:
    _readv = _libc.process_vm_readv
    _writev = _libc.process_vm_writev
    for _fn in (_readv, _writev):
        _fn.argtypes = _SIG
        _fn.restype = _ctypes.c_ssize_t
except AttributeError:  # pragma: no cover - libc without the wrappers
    _readv = _writev = None

_libc.prctl.argtypes = [_ctypes.c_int] + [_ctypes.c_ulong] * 4
_libc.prctl.restype = _ctypes.c_int

#: prctl option with which a process names who may ptrace it under Yama (b"Yama").
PR_SET_PTRACER = 0x59616D61
#: ... any process at all (subject to the usual same-user and dumpable checks).
PR_SET_PTRACER_ANY = _ctypes.c_ulong(-1).value
_YAMA_SCOPE = "/proc/sys/kernel/yama/ptrace_scope"
_CAP_SYS_PTRACE = 19
_COPY_FIX = "set CMAMPI_TRANSPORT=copy to use the copy path without trying CMA"

_HINTS = {
    _errno.ESRCH: "no process with pid {pid}: the peer has exited",
    _errno.EFAULT: "an address range is not mapped in pid {pid} or in this process",
    _errno.ENOSYS: (
        "process_vm_readv is not available (kernel older than 3.2, or blocked by "
        "seccomp); set CMAMPI_TRANSPORT=copy"
    ),
    _errno.ENOMEM: "the kernel could not allocate memory for the iovec arrays",
    _errno.EINVAL: "invalid iovec count or length",
}


def _error(err: int, hint: str | None) -> OSError:
    """``OSError(err, ...)``, which picks the subclass (``PermissionError``, ...)."""
    msg = _os.strerror(err)
    return OSError(err, f"{msg}: {hint}" if hint else msg)


def oserror(err: int, pid: int) -> OSError:
    """The ``OSError`` subclass for *err*, with a hint about what it means for CMA."""
    if err == _errno.EPERM:
        return _error(err, f"the kernel refused cross-memory access to pid {pid}: "
                           f"{_why_refused(pid)}; {_COPY_FIX}")
    hint = _HINTS.get(err)
    return _error(err, hint.format(pid=pid) if hint else None)


def _status(pid: int | str) -> dict[str, str]:
    """The fields of ``/proc/<pid>/status`` (readable by anyone), or {} if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    except OSError:
        return {}


def _dump_owner(pid: int) -> int | None:
    """Who owns the files of ``/proc/<pid>``: its effective uid if it is dumpable,
    root (of its user namespace) if not."""
    try:
        return _os.stat(f"/proc/{pid}/status").st_uid
    except OSError:
        return None


def _why_refused(pid: int) -> str:
    """Which of the kernel's ptrace rules (PTRACE_MODE_ATTACH_REALCREDS) refuses us *pid*.

    Without CAP_SYS_PTRACE we need the peer's real, effective and saved uids
    (and gids) to be our real uid (and gid), and the peer to be dumpable; then
    Yama may still say no.
    """
    peer = _status(pid)
    capable = int(_status("self").get("CapEff", "0"), 16) >> _CAP_SYS_PTRACE & 1
    uids = peer.get("Uid", "").split()[:3]
    gids = peer.get("Gid", "").split()[:3]
    if len(uids) == 3 and len(gids) == 3 and not capable:
        for kind, ids, ours in (("uid", uids, _os.getuid()), ("gid", gids, _os.getgid())):
            if any(int(i) != ours for i in ids):
                return (f"it runs as {kind} {'/'.join(ids)} and we as {kind} {ours}, and only "
                        "the same user and group (or a process with CAP_SYS_PTRACE) may read "
                        "another's memory")
        if _dump_owner(pid) not in (None, int(uids[1])):
            return ("it is not dumpable (it changed its user or group ids, e.g. with setuid, "
                    "or called prctl(PR_SET_DUMPABLE, 0)), and only CAP_SYS_PTRACE may read "
                    "a process that is not; it may call prctl(PR_SET_DUMPABLE, 1)")
    scope = ptrace_scope()
    if scope == 1:
        return ("Yama's ptrace_scope is 1 and the peer did not name us with "
                "prctl(PR_SET_PTRACER) (cmampi does so at start-up unless "
                "CMAMPI_SET_PTRACER=0); or set /proc/sys/kernel/yama/ptrace_scope to 0")
    if scope == 2:
        return ("Yama's ptrace_scope is 2 (admin-only attach): only CAP_SYS_PTRACE may read "
                "a peer; an administrator can set /proc/sys/kernel/yama/ptrace_scope to 1 or 0")
    if scope is not None and scope >= 3:
        return (f"Yama's ptrace_scope is {scope} (no attach): nobody may read another "
                "process until the next reboot")
    return ("same user, dumpable peer and Yama's ptrace_scope allow it, so a security "
            "module, seccomp or the container's policy refuses ptrace access")


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


#: Copies from this size on whose destination lies 1-31 bytes past their source,
#: modulo the page (`aliased`), go through a stage.
ALIASED_MIN = 32 << 10
#: Bytes a staged copy moves per piece. An aliased read of 1 MiB took 240-255 us
#: staged (pieces of 256 KiB to 1 MiB ran alike), 750-770 us straight; of 4 MiB,
#: 955-1050 us against about 3 ms (unaliased: 100-125 and 400-540 us).
STAGE_PIECE = 256 << 10
_PAGE_MASK = _mmap.PAGESIZE - 1
_stages = _threading.local()


def aliased(dst: int, src: int) -> bool:
    """Whether the kernel's copy of a range from *src* to *dst* runs slow: it copies
    user memory with ``rep movsb``, whose loads stall behind its own stores where
    the destination lies 1-31 bytes past the source in the address bits below the
    page ("4K aliasing"). Measured on AMD EPYC: 1 MiB in 750-770 us at those
    distances, 105-135 us at any other."""
    return 0 < (dst - src) & _PAGE_MASK < 32


def _stage() -> int:
    """The address of this thread's page-aligned stage of `STAGE_PIECE` bytes and a
    page more (kept for the thread's life: a new mapping per copy costs page faults).
    Private: a forked child gets a copy of its own, never the parent's pages."""
    mem = getattr(_stages, "mem", None)
    if mem is None:
        mem = _stages.mem = _mmap.mmap(-1, STAGE_PIECE + _mmap.PAGESIZE,
                                       flags=_mmap.MAP_PRIVATE)
        _stages.addr = _ctypes.addressof(_ctypes.c_char.from_buffer(mem))
    return _stages.addr


class _Pair:
    """One local and one remote iovec, as four words, for calls that move one
    range each side. Taken for one transfer (`_take_pair`): ctypes drops the
    GIL around the syscall, so a pair in use by another thread (or by a
    finalizer run in the middle of a transfer) could be rewritten before the
    kernel reads it."""

    __slots__ = ("lp", "rp", "words")

    def __init__(self) -> None:
        self.words = (_ctypes.c_size_t * 4)()     # an iovec is two words
        self.lp = _ctypes.addressof(self.words)
        self.rp = self.lp + _ctypes.sizeof(_iovec)

    def move(self, fn, pid: int, laddr: int, raddr: int, nbytes: int) -> int:
        """One call of *fn* for *nbytes* at *laddr* here and *raddr* in *pid*: the
        bytes it moved (a short return is the caller's to resume)."""
        words = self.words
        words[0] = laddr
        words[1] = nbytes
        words[2] = raddr
        words[3] = nbytes
        return _call(fn, pid, self.lp, 1, self.rp, 1)


#: Per thread, the pair no transfer holds now (None while one does).
_spare = _threading.local()


def _take_pair() -> _Pair:
    """A pair for one transfer: this thread's spare (give it back to
    ``_spare.pair``), or a new one if a transfer holds it."""
    pair = getattr(_spare, "pair", None)
    if pair is None:
        return _Pair()
    _spare.pair = None
    return pair


def _copy_here(me: int, dst: int, src: int, nbytes: int, pid: int) -> None:
    """Copy *nbytes* between two ranges of this process (*me*) through the kernel,
    which reports a range that is not mapped (EFAULT, told as for *pid*) where a
    copy in user space would crash."""
    pair = _take_pair()
    done = 0
    try:
        while done < nbytes:
            done += pair.move(_readv, me, dst + done, src + done, nbytes - done)
    except OSError as exc:
        raise oserror(exc.errno or _errno.EFAULT, pid) from None
    finally:
        _spare.pair = pair


def _transfer_staged(fn, pid: int, laddr: int, raddr: int, nbytes: int) -> None:
    """`_transfer_one` of an `aliased` range, through this thread's stage, piece
    by piece: one kernel copy between the remote range and the stage, another
    between the stage and ours (`_copy_here`). The stage lies 64 bytes past the
    remote bytes (modulo the page) when reading, 64 before when writing, so that
    neither copy's destination lies 1-31 bytes past its source."""
    reading = fn is _readv
    base = _stage()
    me = _os.getpid()
    shift = 64 if reading else -64
    pair = _take_pair()
    done = 0
    try:
        while done < nbytes:
            step = min(nbytes - done, STAGE_PIECE)
            stage = base + ((raddr + done + shift) & _PAGE_MASK)
            if not reading:
                _copy_here(me, stage, laddr + done, step, pid)
            got = pair.move(fn, pid, stage, raddr + done, step)
            if reading:
                _copy_here(me, laddr + done, stage, got, pid)
            done += got
    finally:
        _spare.pair = pair


def _transfer_one(fn, pid: int, laddr: int, raddr: int, nbytes: int) -> None:
    if nbytes >= ALIASED_MIN and (aliased(laddr, raddr) if fn is _readv
                                  else aliased(raddr, laddr)):
        _transfer_staged(fn, pid, laddr, raddr, nbytes)
        return
    pair = _take_pair()
    done = 0
    try:
        while done < nbytes:
            done += pair.move(fn, pid, laddr + done, raddr + done,
                              min(nbytes - done, MAX_RW_COUNT))
    finally:
        _spare.pair = pair


def _window(segs: _np.ndarray, ends: _np.ndarray, lo: int, hi: int) -> _np.ndarray:
    """The rows of *segs* covering stream bytes [lo, hi), trimmed at both ends."""
    # uint64 keys: a Python int would make numpy convert all of *ends* on every
    # call, and a transfer of n segments quadratic in n.
    i = int(_np.searchsorted(ends, _np.uint64(lo), side="right"))
    j = int(_np.searchsorted(ends, _np.uint64(hi), side="left"))
    win = segs[i : j + 1].copy()
    start_i = int(ends[i] - segs[i, 1])
    cut = lo - start_i
    win[0, 0] += _np.uint64(cut)
    win[0, 1] -= _np.uint64(cut)
    win[-1, 1] -= _np.uint64(int(ends[j]) - hi)
    return win


def _reach(ends: _np.ndarray, lo: int) -> int:
    """Stream offset reached by at most IOV_MAX segments starting at offset *lo*."""
    i = int(_np.searchsorted(ends, _np.uint64(lo), side="right"))
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


def _checked(pid: int, before: bool, fn, *args):
    """``fn(*args)``, guarded by the pidfd of *pid* if one is held (see `Peer`).

    After a read, the peer still running means it ran throughout, so the bytes
    are its own; a write is checked before too, as it cannot be undone. (A write
    can still race an exit between that check and the call: the pid would have
    to be reaped and handed out again within microseconds, which the kernel's
    cyclic allocator does only after every other free pid, unless a privileged
    process asks for that pid (``ns_last_pid``, ``clone3``). Only a pidfd-taking
    process_vm_writev, not in Linux yet, would close that window.)
    """
    peer = _held.get(pid)
    if peer is None:
        return fn(*args)
    if before:
        peer.check()
    try:
        out = fn(*args)
    except OSError:
        peer.check()    # an exited peer explains the failure better (ESRCH, EFAULT)
        raise
    peer.check()
    return out


def readv(pid: int, local: Segments, remote: Segments) -> int:
    """Copy the bytes of *remote* segments in process *pid* into our *local* segments.

    Both lists describe one byte stream each and must have the same total length.
    Any number of segments and any total size are accepted: calls are batched by
    ``IOV_MAX`` and ``MAX_RW_COUNT`` and partial transfers are resumed. Returns the
    number of bytes copied; raises ``OSError`` (``PermissionError``,
    ``ProcessLookupError``, ...) on failure, never a silent short read. While a
    `Peer` for *pid* is held, a peer that has exited raises ``ProcessLookupError``.
    """
    return _checked(pid, False, _transfer, _require(_readv), pid, local, remote)


def writev(pid: int, local: Segments, remote: Segments) -> int:
    """Copy our *local* segments into *remote* segments of process *pid* (see `readv`)."""
    return _checked(pid, True, _transfer, _require(_writev), pid, local, remote)


def read_into(pid: int, laddr: int, raddr: int, nbytes: int) -> None:
    """Copy *nbytes* contiguous bytes from *raddr* in *pid* to our *laddr*."""
    _checked(pid, False, _transfer_one, _require(_readv), pid, laddr, raddr, nbytes)


class _WordRead:
    """One 8-byte read's (or write's) iovec pair, as four words, and its local
    word. Taken for one call, as `_Pair` is (``_spare.word``)."""

    __slots__ = ("iov", "lp", "rp", "word")

    def __init__(self) -> None:
        self.word = _ctypes.c_uint64()
        self.iov = (_ctypes.c_size_t * 4)(_ctypes.addressof(self.word), 8, 0, 8)
        self.lp = _ctypes.addressof(self.iov)
        self.rp = self.lp + _ctypes.sizeof(_iovec)


def peek_word(pid: int, raddr: int) -> int:
    """The 8-byte word at *raddr* in process *pid*; 0 if it cannot be read.

    Unguarded by the peer's pidfd: for a sender's offer to help, which only a
    live sender sets (and only while it waits to answer), and which reads 0
    when it cannot be read.
    """
    if _readv is None:
        return 0
    rd = getattr(_spare, "word", None)
    if rd is None:
        rd = _WordRead()
    else:
        _spare.word = None
    rd.iov[2] = raddr
    try:
        return rd.word.value if _readv(pid, rd.lp, 1, rd.rp, 1, 0) == 8 else 0
    finally:
        _spare.word = rd


def poke_word(pid: int, raddr: int, value: int) -> bool:
    """Write the 8-byte *value* at *raddr* in process *pid*; whether it was written.

    The words of a handshake (`p2p`'s claims of offers) at the cost of one
    system call: `writev` in one, with no lists to parse, costs 2-3 times as
    much. Guarded by the peer's pidfd, if held, before the call (as `writev`
    is: raises ``ProcessLookupError`` once the peer has exited); a failed
    call returns False, unchecked.
    """
    if _writev is None:
        return False
    peer = _held.get(pid)
    if peer is not None:
        peer.check()
    wr = getattr(_spare, "word", None)
    if wr is None:
        wr = _WordRead()
    else:
        _spare.word = None
    wr.word.value = value
    wr.iov[2] = raddr
    try:
        return _writev(pid, wr.lp, 1, wr.rp, 1, 0) == 8
    finally:
        _spare.word = wr


def _namespace(kind: str, pid: int | str):
    try:
        st = _os.stat(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def pid_namespace():
    """An identity of this process's pid namespace (pids only mean something inside it)."""
    return _namespace("pid", "self")


def user_namespace(pid: int | str = "self"):
    """An identity of the user namespace of *pid* (default: ours), or None if the
    kernel does not show it to us (only to processes that may ptrace-read *pid*)."""
    return _namespace("user", pid)


def _probe(pid: int) -> None:
    fn = _require(_readv)
    buf = _ctypes.create_string_buffer(1)
    iov = _iovec_pair(
        (_ctypes.addressof(buf), 1), (0, 1))  # type: ignore[misc]  # ctypes makes _iovecs of tuples
    lp = _ctypes.addressof(iov)
    n = fn(pid, lp, 1, lp + _ctypes.sizeof(_iovec), 1, 0)
    err = _ctypes.get_errno() if n < 0 else 0
    if err != _errno.EFAULT:
        raise oserror(err or _errno.EIO, pid)


def probe(pid: int) -> None:
    """Check that the kernel lets us read *pid*'s memory; raise the refusal if not.

    The permission check comes before any address check, so a one-byte read at
    address 0 fails with EFAULT exactly when access is allowed.
    """
    _checked(pid, False, _probe, pid)


# -- pidfds: a pid that cannot come to name another process ------------------------------

class Peer:
    """A peer process held by a pidfd, so that reading it through its pid is safe.

    A pid is only a number: once its process has exited and been reaped, the
    kernel may give it to a new process, and ``process_vm_readv`` would copy
    that process's memory. A pidfd refers to one process for good and polls
    readable once it has exited. While a ``Peer`` is held (`hold`), every
    `readv`, `read_into`, `writev` and `probe` of its pid checks it after the
    copy (writes also before): a peer still running after the read ran
    throughout it, so the bytes are its own; otherwise they are not delivered
    and ``ProcessLookupError`` is raised. One ``poll`` per call.

    Kernels older than 5.3 have no pidfds: a descriptor of ``/proc/<pid>``
    serves instead, which sees the process once it has been reaped (only then
    can its pid be reused). *rank* names the peer in error messages.
    """

    pid = 0
    rank: int | None = None
    fd = -1
    refs = 0
    _poll = None

    def __init__(self, pid: int, rank: int | None = None) -> None:
        self.pid = pid
        self.rank = rank
        try:
            self.fd = _os.pidfd_open(pid)
        except AttributeError:      # Python built without it: as an old kernel
            self.fd = _open_proc(pid)
        except OSError as exc:
            if exc.errno != _errno.ENOSYS:
                raise oserror(exc.errno, pid) from None  # type: ignore[arg-type]  # os sets errno
            self.fd = _open_proc(pid)
        else:
            self._poll = _select.poll()
            self._poll.register(self.fd, _select.POLLIN)
        #: A poll object refuses a second thread's poll() meanwhile; peers are
        #: shared by every communicator, which threads may create at once.
        self._polling = _threading.Lock()

    def alive(self) -> bool:
        """Whether the process is still running (pidfd) or not yet reaped (/proc)."""
        if self.fd < 0:
            return False
        poll = self._poll
        if poll is not None:
            with self._polling:
                return not poll.poll(0)
        try:
            _os.stat("stat", dir_fd=self.fd)
        except OSError:
            return False
        return True

    def check(self) -> None:
        """Raise ``ProcessLookupError`` unless the process is still there."""
        if not self.alive():
            who = f"rank {self.rank} (pid {self.pid})" if self.rank is not None \
                else f"pid {self.pid}"
            raise _error(_errno.ESRCH, f"{who} has exited: what was copied may belong to "
                         "another process that reused its pid, and was not delivered")

    def close(self) -> None:
        """Close the pidfd (idempotent); the peer then counts as gone."""
        fd, self.fd, self._poll = self.fd, -1, None
        if fd >= 0:
            _os.close(fd)

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except (OSError, AttributeError):   # AttributeError: at exit, modules are gone
            pass

    def __repr__(self) -> str:
        state = "closed" if self.fd < 0 else ("running" if self.alive() else "exited")
        return f"<cmampi._cma.Peer pid {self.pid}, {state}>"


def _open_proc(pid: int) -> int:
    try:
        return _os.open(f"/proc/{pid}", _os.O_RDONLY | _os.O_DIRECTORY | _os.O_CLOEXEC)
    except FileNotFoundError:
        raise oserror(_errno.ESRCH, pid) from None


#: The held peers by pid: every copy to or from one of them is checked.
_held: dict[int, Peer] = {}


def hold(pid: int, rank: int | None = None) -> Peer:
    """Hold a pidfd for *pid* (shared by every holder) until `release`."""
    peer = _held.get(pid)
    if peer is None:
        peer = _held[pid] = Peer(pid, rank)
    peer.refs += 1
    return peer


def release(peer: Peer) -> None:
    """Drop one hold of *peer*; the last one closes its pidfd."""
    peer.refs -= 1
    if peer.refs <= 0:
        if _held.get(peer.pid) is peer:
            del _held[peer.pid]
        peer.close()


# -- Yama -----------------------------------------------------------------------------------

def ptrace_scope() -> int | None:
    """Yama's ``ptrace_scope`` (0 classic, 1 restricted, 2 admin-only, 3 none), or
    None where Yama is not enabled."""
    try:
        with open(_YAMA_SCOPE) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def ptracer_plan(scope: int | None, enabled: bool) -> str:
    """What to do at start-up so that peers may read us, given Yama's *scope*.

    ``"none"``: nothing restricts peers beyond the classic rules (no Yama, or 0);
    ``"set"``: scope 1 only lets ancestors attach, so call `set_ptracer_any`;
    ``"off"``: that call was switched off (``CMAMPI_SET_PTRACER=0``);
    ``"blocked"``: scope 2 or 3, which no call of ours can lift (the probes fail
    and the warning says so).
    """
    if not scope:
        return "none"
    if scope == 1:
        return "set" if enabled else "off"
    return "blocked"


def set_ptracer_any() -> None:
    """``prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY)``: under Yama scope 1, let any
    process (of the same user, the classic rules still apply) read our memory.

    Yama names at most one ptracer pid per process, and a rank has several
    peers, so ANY is the only choice (Open MPI and UCX do the same). Without
    Yama the kernel answers ``EINVAL``.
    """
    if _libc.prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY, 0, 0, 0) != 0:
        err = _ctypes.get_errno()
        raise _error(err, "Yama is not enabled in this kernel" if err == _errno.EINVAL
                     else "prctl(PR_SET_PTRACER) failed")
