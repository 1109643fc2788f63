"""The baseline without MPI: a ``multiprocessing`` Connection between ranks 0 and 1.

``multiprocessing.Pipe()`` returns two Connections over a Unix socket pair; the
ranks of a job are separate processes started by the launcher, so they get the
same kind of Connection from a ``Listener``/``Client`` pair on a Unix socket
whose address rank 0 broadcasts. Buffers travel with ``send_bytes`` and
``recv_bytes_into``, objects with ``send``/``recv`` (pickled), which is what a
Python user without MPI reaches for.
"""

from __future__ import annotations

import os as _os
import shutil as _shutil
import tempfile as _tempfile
from typing import Any

__all__ = ["PipeComm", "connect"]


def connect(comm: Any) -> Any | None:
    """A Connection between ranks 0 and 1 of *comm* (collective); None on other ranks."""
    from multiprocessing.connection import Client, Listener

    rank = comm.Get_rank()
    if rank != 0:
        address, key = comm.bcast(None, root=0)
        return Client(address, "AF_UNIX", authkey=key) if rank == 1 else None
    directory = _tempfile.mkdtemp(prefix="cmampi-bench-")
    try:
        key = _os.urandom(16)
        with Listener(_os.path.join(directory, "pipe"), "AF_UNIX", authkey=key) as listener:
            comm.bcast((listener.address, key), root=0)
            return listener.accept()
    finally:
        _shutil.rmtree(directory, ignore_errors=True)


class PipeComm:
    """The slice of a communicator the benchmarks use, over a Connection to the one peer.

    A Connection has no nonblocking calls: ``Isend``/``Irecv`` complete before
    they return (None stands for the request), so a window of them is a stream
    of back-to-back messages. *dest*, *source* and *tag* are ignored: there is
    one peer and messages arrive in order.
    """

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def Send(self, buf: Any, dest: int, tag: int = 0) -> None:
        self.conn.send_bytes(buf)

    def Recv(self, buf: Any, source: int, tag: int = 0) -> None:
        # recv_bytes_into sizes its target as itemsize * len(), the first axis only.
        self.conn.recv_bytes_into(memoryview(buf).cast("B"))

    def Isend(self, buf: Any, dest: int, tag: int = 0) -> None:
        self.conn.send_bytes(buf)

    def Irecv(self, buf: Any, source: int, tag: int = 0) -> None:
        self.Recv(buf, source, tag)

    @staticmethod
    def Waitall(requests: Any) -> None:
        pass

    def send(self, obj: Any, dest: int, tag: int = 0) -> None:
        self.conn.send(obj)

    def recv(self, buf: Any = None, source: int = 0, tag: int = 0) -> Any:
        return self.conn.recv()
