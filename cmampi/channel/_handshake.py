"""Meeting the job's other ranks (socket channel): listen on a Unix socket,
connect to every higher rank, accept every lower one, verify each, and swap
shared-memory rings.

A peer proves itself three ways: the kernel's SO_PEERCRED uid must be ours,
its pid must be the launcher's rank pid (when known), and it must present the
job's token. A stranger that fails is refused, and the ranks are still awaited.
"""

from __future__ import annotations

import os as _os
import socket as _socket
import struct as _struct
import time as _time
from collections.abc import Callable

from . import _ring

__all__ = ["CONNECT_TIMEOUT", "connect_all"]

_HELLO = _struct.Struct("<32sI")          # job token, rank of the connecting side
#: Seconds the ranks of a job have to meet (and a rank to find the launcher's pids).
CONNECT_TIMEOUT = 60.0
#: Seconds a connecting process has to say who it is.
_HELLO_TIMEOUT = 2.0

#: Takes a verified connection: (socket, peer rank, its pid, rx ring, tx ring).
Add = Callable[[_socket.socket, int, int, _ring.Ring | None, _ring.Ring | None], None]


def connect_all(rank: int, size: int, directory: str, token: bytes,
                expected: list[int] | None, use_rings: bool,
                connected: Callable[[int], bool], add: Add) -> None:
    """Meet every other rank of the job, handing each connection to *add*;
    *connected* says whether a rank already has one (a second is refused)."""
    path = _os.path.join(directory, f"rank-{rank}.sock")
    lsock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    lsock.bind(path)
    try:
        _handshakes(lsock, rank, size, directory, token, expected, use_rings, connected, add)
    finally:
        lsock.close()
        _os.unlink(path)


def _handshakes(lsock, rank: int, size: int, directory: str, token: bytes, expected,
                use_rings: bool, connected: Callable[[int], bool], add: Add) -> None:
    lsock.listen(size)
    deadline = _time.monotonic() + CONNECT_TIMEOUT
    for peer in range(rank + 1, size):
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        ppath = _os.path.join(directory, f"rank-{peer}.sock")
        while True:
            try:
                sock.connect(ppath)
                break
            except (FileNotFoundError, ConnectionRefusedError) as err:
                if _time.monotonic() > deadline:
                    raise TimeoutError(f"cmampi: rank {peer} never listened at {ppath}") from err
                _time.sleep(0.002)
        sock.sendall(_HELLO.pack(token, rank))
        pid = _check_peer(sock, peer, expected)
        if _recv_exact(sock, 1) != b"\x01":
            raise PermissionError(f"cmampi: rank {peer} refused our connection")
        add(sock, peer, pid, *_swap_rings(sock, size, use_rings))
    pending = rank
    lsock.settimeout(max(0.1, deadline - _time.monotonic()))
    while pending:
        sock, _ = lsock.accept()
        sock.settimeout(_HELLO_TIMEOUT)   # a silent stranger cannot hold us up
        try:
            tok, peer = _HELLO.unpack(_recv_exact(sock, _HELLO.size))
            if tok != token or not 0 <= peer < rank or connected(peer):
                raise PermissionError("bad token or rank in handshake")
            pid = _check_peer(sock, peer, expected)
        except (PermissionError, OSError, _struct.error):
            sock.close()        # a stranger: refuse it, keep waiting for the ranks
            continue
        sock.sendall(b"\x01")
        sock.settimeout(max(0.1, deadline - _time.monotonic()))   # a rank: it may be slow
        add(sock, peer, pid, *_swap_rings(sock, size, use_rings))
        pending -= 1


def _check_peer(sock: _socket.socket, peer: int, expected) -> int:
    """The pid of the process on *sock*, which must be ours (uid) and, when the
    launcher told us, rank *peer*'s."""
    cred = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, _struct.calcsize("3i"))
    pid, uid, _gid = _struct.unpack("3i", cred)
    if uid != _os.getuid():
        raise PermissionError(f"cmampi: peer claiming rank {peer} runs as uid {uid}")
    if expected is not None and expected[peer] != pid:
        raise PermissionError(f"cmampi: pid {pid} is not rank {peer} of this job")
    return pid


def _swap_rings(sock: _socket.socket, size: int, use_rings: bool) -> tuple:
    """(rx, tx) rings with the peer just verified on *sock*, or (None, None):
    each side makes the ring it reads and passes its memfd over the socket."""
    fd = _ring.Ring.create(_ring.capacity_for(size)) if use_rings else -1
    theirs: list[int] = []
    try:
        _socket.send_fds(sock, [b"R" if fd >= 0 else b"-"], [fd] if fd >= 0 else [])
        msg, theirs, flags, _addr = _socket.recv_fds(sock, 1, 1)
        if msg not in (b"R", b"-"):
            raise ConnectionError("cmampi: a peer left during the handshake")
        if msg == b"R" and (len(theirs) != 1 or flags & _socket.MSG_CTRUNC):
            # The peer uses rings now, and we cannot read its: no way on.
            raise OSError("cmampi: a peer's shared-memory ring did not arrive "
                          "(out of file descriptors?)")
        if msg == b"R" and fd >= 0:
            return _ring.Ring(fd), _ring.Ring(theirs[0])
        return None, None
    finally:
        for f in [fd, *theirs]:
            if f >= 0:
                _os.close(f)


def _recv_exact(sock: _socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        got = sock.recv(n - len(buf))
        if not got:
            raise ConnectionError("peer closed during the handshake")
        buf += got
    return bytes(buf)
