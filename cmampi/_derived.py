"""Messages of derived datatypes, packed and unpacked by the MPI library itself.

A datatype with holes, a lower bound or an order of its own (``Create_indexed``,
``Create_vector``, a transpose by ``Create_hvector``, ...) describes its message
as MPI does: the bytes of its type map, in order. The MPI library lays them out:
a message to ourselves over a private duplicate of ``COMM_SELF`` packs a send's
bytes into new memory, and unpacks a receive's from there once it is in. Both
read the user's spec as mpi4py reads it, and raise mpi4py's errors.
"""

from __future__ import annotations

import sys as _sys
import threading as _threading
from typing import Any

import numpy as _np

from ._backend import real_mpi

__all__ = ["available", "check_receivable", "in_order", "kept", "pack", "release", "unpack"]

_SELF: list[Any] = []
#: Self-messages of two threads must not match each other's.
_LOCK = _threading.Lock()
#: id -> (datatype, its handle, in order): `in_order` asks the library once per datatype.
_ORDER: dict[int, tuple[Any, int, bool]] = {}


def available(datatype) -> bool:
    """Whether *datatype* is the MPI library's, and the library is there to lay it out."""
    if "mpi4py.MPI" not in _sys.modules:   # the socket channel: no derived datatypes
        return False
    mpi = real_mpi()
    return isinstance(datatype, mpi.Datatype) and mpi.Is_initialized() and not mpi.Is_finalized()


def _comm():
    if not _SELF:
        _SELF.append(real_mpi().COMM_SELF.Dup())
    return _SELF[0]


def in_order(datatype) -> bool:
    """Whether *datatype*'s type map is its bytes in memory order, one after the
    other (a predefined type, or a contiguous, duplicated or trivially resized one
    of such): then its message is the buffer's bytes as they lie."""
    if not available(datatype) or datatype.is_predefined:
        return True     # (not the library's: sized by its size and extent alone)
    key = id(datatype)
    handle = datatype.handle
    hit = _ORDER.get(key)
    if hit is not None and hit[0] is datatype and hit[1] == handle:
        return hit[2]
    base, combiner, _ = datatype.decode()
    size = datatype.Get_size()
    ordered = combiner in ("DUP", "CONTIGUOUS", "RESIZED") and datatype.Get_extent() == (0, size) \
        and base.Get_extent() == (0, base.Get_size()) and in_order(base)
    if len(_ORDER) > 1024:
        _ORDER.clear()
    _ORDER[key] = (datatype, handle, ordered)
    return ordered


def pack(spec, nbytes: int) -> _np.ndarray:
    """The *nbytes* of the message of send spec *spec*, in new memory."""
    mpi = real_mpi()
    out = _np.empty(nbytes, _np.uint8)
    status = mpi.Status()
    with _LOCK:
        _comm().Sendrecv(spec, 0, 0, [out, nbytes, mpi.BYTE], 0, 0, status)
    got = status.Get_count(mpi.BYTE)
    if got != nbytes:
        raise ValueError(f"message: its datatype's type map holds {got} bytes, not {nbytes}")
    return out


def check_receivable(spec) -> None:
    """Raise mpi4py's error if receive spec *spec* cannot take a message (an
    empty self-message into it: its bytes do not change)."""
    mpi = real_mpi()
    with _LOCK:
        _comm().Sendrecv([_EMPTY, 0, mpi.BYTE], 0, 0, spec, 0, 0)


def kept(spec) -> list:
    """*spec* (a list or tuple ending in a derived datatype) with its own duplicate
    of the datatype, which stays valid if the program frees its own; `release` it."""
    return [*spec[:-1], spec[-1].Dup().Commit()]


def release(spec) -> None:
    """Free the datatype `kept` duplicated (unless MPI has been finalized)."""
    mpi = real_mpi()
    if not mpi.Is_finalized():
        spec[-1].Free()


def unpack(stream, nbytes: int, spec) -> None:
    """Write the first *nbytes* of *stream* into the type map of receive spec *spec*."""
    mpi = real_mpi()
    with _LOCK:
        _comm().Sendrecv([stream, nbytes, mpi.BYTE], 0, 0, spec, 0, 0)


_EMPTY = _np.empty(0, _np.uint8)
