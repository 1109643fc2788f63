"""Length-prefixed pickles over pipes, with deadlines: how forked test children
talk to the test that forked them."""

from __future__ import annotations

import os
import pickle
import select
import signal
import struct
import time

__all__ = ["read_exact", "read_msg", "reap", "write_msg"]

_LENGTH = struct.Struct("<Q")


def write_msg(fd: int, obj) -> None:
    """Write *obj*, pickled and length-prefixed, to *fd*."""
    data = pickle.dumps(obj)
    data = _LENGTH.pack(len(data)) + data
    while data:
        data = data[os.write(fd, data):]


def read_exact(fd: int, n: int, timeout: float) -> bytes:
    """*n* bytes from *fd*: TimeoutError if they take over *timeout* seconds,
    EOFError if the other end closes first."""
    buf = b""
    deadline = time.monotonic() + timeout
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError(f"no answer through the pipe within {timeout} s")
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            raise EOFError("the other end closed the pipe")
        buf += chunk
    return buf


def read_msg(fd: int, timeout: float):
    """The next object `write_msg` wrote to *fd*, within *timeout* seconds in all."""
    deadline = time.monotonic() + timeout
    (n,) = _LENGTH.unpack(read_exact(fd, _LENGTH.size, timeout))
    return pickle.loads(read_exact(fd, n, max(deadline - time.monotonic(), 0.0)))


def reap(pid: int, timeout: float) -> int:
    """Wait for child *pid*, killing it if it outlives *timeout*; its exit code."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        time.sleep(0.002)
