"""Wire formats of cmampi's control messages (headers, descriptors, acks)."""

from __future__ import annotations

import struct as _struct
from typing import Tuple

from ._buffers import Layout

__all__ = [
    "EAGER", "EAGER_SYNC", "PULL", "SIDE",
    "ACK_OK", "ACK_TRUNCATED", "ACK_FAILED",
    "CTRL_MAX", "eager", "pull", "side", "kind_of", "parse_pull", "parse_side",
    "parse_sync",
]

# Every message in the user's matching space starts with a one-byte kind.
EAGER = 1       # payload follows inline
EAGER_SYNC = 2  # payload follows inline; the receiver acks (synchronous mode)
PULL = 3        # a descriptor follows; the receiver pulls with CMA, then acks
SIDE = 4        # the payload follows as a separate message in the side space

# One-byte acks, sent receiver -> sender in the side space.
ACK_OK = 0
ACK_TRUNCATED = 1
ACK_FAILED = 2

_SYNC = _struct.Struct("<BxxxI")         # kind, xid
_PULL = _struct.Struct("<BxxxIQqqqq")   # kind, xid, nbytes, addr, lo, hi, ndim
_SIDE = _struct.Struct("<BxxxIQ")        # kind, xid, nbytes
_INT = _struct.Struct("<q")

SYNC_SIZE = _SYNC.size
#: Bytes a control message can need beyond an eager payload (32 dimensions of layout).
CTRL_MAX = _PULL.size + 64 * _INT.size


def eager(payload) -> bytes:
    return b"\x01" + payload


def sync(xid: int) -> bytes:
    """Header of a synchronous eager message; the payload follows it."""
    return _SYNC.pack(EAGER_SYNC, xid)


def pull(xid: int, layout: Layout) -> bytes:
    enc = layout.encode()
    dims = enc[4:]
    return _PULL.pack(PULL, xid, layout.nbytes, *enc[:4]) + _struct.pack(
        f"<{len(dims)}q", *dims)


def side(xid: int, nbytes: int) -> bytes:
    return _SIDE.pack(SIDE, xid, nbytes)


def kind_of(buf) -> int:
    return buf[0]


def parse_sync(buf) -> int:
    return _SYNC.unpack_from(buf)[1]


def parse_pull(buf) -> Tuple[int, int, Layout]:
    """(xid, nbytes, remote layout) of a PULL descriptor."""
    _, xid, nbytes, addr, lo, hi, ndim = _PULL.unpack_from(buf)
    dims = _struct.unpack_from(f"<{2 * ndim}q", buf, _PULL.size)
    return xid, nbytes, Layout.decode((addr, lo, hi, ndim) + dims)


def parse_side(buf) -> Tuple[int, int]:
    """(xid, nbytes) of a SIDE header."""
    _, xid, nbytes = _SIDE.unpack_from(buf)
    return xid, nbytes
