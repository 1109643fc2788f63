"""Neighbour collectives on the socket channel: point-to-point on the private collectives space.

A topology communicator (`cmampi.sockettopo`) gives each call its neighbours
and tags (``comm._neighbors()``); the messages are all posted at once, so the
``Ineighbor_*`` calls are truly nonblocking, the blocking forms wait on them and
the persistent ones post them again at each ``Start``. A ``PROC_NULL``
neighbour is sent nothing and its receive block is left as it is.
"""

from __future__ import annotations

import ctypes as _ctypes
from collections.abc import Sequence
from operator import index as _index
from typing import TYPE_CHECKING, Any

import numpy as _np

from ._backend import names as _names_in_use
from ._serial import serialized
from .coll import flat as _flat
from .coll import vector as _vector
from .request import Request, complete_all, new_request
from .socketcomm import Intracomm, _w_spec

if TYPE_CHECKING:   # sockettopo imports this module
    from .sockettopo import Topocomm

__all__ = ["ineighbor_allgather", "ineighbor_alltoall", "ineighbor_alltoallw",
           "neighbor_objects"]

_NAMES = _names_in_use()


def _checked(seq, n: int) -> list[int]:
    """*seq* as *n* integers (mpi4py's ``chkarray``)."""
    values = [_index(x) for x in seq]
    if len(values) != n:
        raise ValueError(f"expecting {n} items, got {len(values)}")
    return values


def _private(comm: Intracomm) -> Intracomm:
    """*comm*'s collectives' private space, as a communicator for point-to-point."""
    private = Intracomm.__new__(Intracomm)
    private._engine = comm._coll.e
    return private


def _blocks(arr: _np.ndarray, n: int) -> tuple[list[int], list[int]]:
    """Counts and displacements of *n* equal blocks of *arr* (checked as mpi4py does)."""
    if n == 0:
        return [], []
    if arr.size % n:
        raise ValueError(f"message: cannot infer count, number of entries {arr.size} is "
                         f"not a multiple of required number of blocks {n}")
    k = arr.size // n
    return [k] * n, [i * k for i in range(n)]


def _post(comm: Intracomm, recvs: Sequence[tuple[Any, int, int]],
          sends: Sequence[tuple[Any, int, int]], after=None) -> Request:
    """One request for receives and sends of (buffer, peer, tag), PROC_NULL
    peers left out; *after* (a receive buffer's write-back) waits for them now."""
    private = _private(comm)
    proc_null = _NAMES.PROC_NULL
    ops = [private._irecv_op(buf, peer, tag) for buf, peer, tag in recvs if peer != proc_null]
    ops += [private._isend_op(buf, peer, tag, False)
            for buf, peer, tag in sends if peer != proc_null]
    if not ops:
        ops = [private._null_op()]
    req = new_request(ops[0], ops[1:])
    if after is not None:
        req.Wait()
        after()
        req = new_request(private._null_op())
    return req


def _finisher(recv):
    """The write-back of a strided receive buffer's temporary, or None."""
    return recv.finish if recv.copied else None


@serialized
def ineighbor_allgather(comm: Topocomm, sendbuf, recvbuf, vector_spec: bool) -> Request:
    nb = comm._neighbors()
    if vector_spec:
        recv, counts, displs = _vector(recvbuf, len(nb.sources), True)
    else:
        recv = _flat(recvbuf, True, len(nb.sources))
        counts, displs = _blocks(recv.array, len(nb.sources))
    send = _flat(sendbuf, False).array
    out = recv.array
    recvs = [(out[d:d + c], peer, tag)
             for c, d, peer, tag in zip(counts, displs, nb.sources, nb.recvtags)]
    sends = [(send, peer, tag) for peer, tag in zip(nb.destinations, nb.sendtags)]
    return _post(comm, recvs, sends, _finisher(recv))


@serialized
def ineighbor_alltoall(comm: Topocomm, sendbuf, recvbuf, vector_spec: bool) -> Request:
    nb = comm._neighbors()
    nin, nout = len(nb.sources), len(nb.destinations)
    if vector_spec:
        send, scounts, sdispls = _vector(sendbuf, nout, False)
        recv, rcounts, rdispls = _vector(recvbuf, nin, True)
    else:
        send = _flat(sendbuf, False, nout)
        scounts, sdispls = _blocks(send.array, nout)
        recv = _flat(recvbuf, True, nin)
        rcounts, rdispls = _blocks(recv.array, nin)
    src, out = send.array, recv.array
    recvs = [(out[d:d + c], peer, tag)
             for c, d, peer, tag in zip(rcounts, rdispls, nb.sources, nb.recvtags)]
    sends = [(src[d:d + c], peer, tag)
             for c, d, peer, tag in zip(scounts, sdispls, nb.destinations, nb.sendtags)]
    return _post(comm, recvs, sends, _finisher(recv))


def _at(address: int, nbytes: int) -> _np.ndarray:
    """The *nbytes* bytes at absolute *address* (``BOTTOM`` messages), as an array."""
    if nbytes == 0:
        return _np.empty(0, _np.uint8)
    return _np.ctypeslib.as_array((_ctypes.c_ubyte * nbytes).from_address(address))


def _w_blocks(spec, n: int, writable: bool) -> list[_np.ndarray]:
    """The *n* byte blocks of an Alltoallw message (at absolute addresses when its
    buffer is ``BOTTOM``)."""
    if isinstance(spec, (list, tuple)) and len(spec) in (3, 4) \
            and spec[0] is _NAMES.BOTTOM:
        if len(spec) == 3:
            _, (counts, displs), types = spec
        else:
            _, counts, displs, types = spec
        if isinstance(types, _NAMES.Datatype):
            types = [types] * n
        # displacements are addresses (MPI_Aint), too large for a C int
        counts, displs, types = _checked(counts, n), [_index(d) for d in displs], list(types)
        if len(displs) != n or len(types) != n:
            raise ValueError(f"expecting {n} items, got {min(len(displs), len(types))}")
        return [_at(d, c * t.Get_size()) for c, d, t in zip(counts, displs, types)]
    mem, counts, displs, types = _w_spec(spec, n, writable)
    return [mem[d:d + c * t.Get_size()] for c, d, t in zip(counts, displs, types)]


@serialized
def ineighbor_alltoallw(comm: Topocomm, sendbuf, recvbuf) -> Request:
    nb = comm._neighbors()
    rblocks = _w_blocks(recvbuf, len(nb.sources), True)
    sblocks = _w_blocks(sendbuf, len(nb.destinations), False)
    return _post(comm, list(zip(rblocks, nb.sources, nb.recvtags)),
                 list(zip(sblocks, nb.destinations, nb.sendtags)))


@serialized
def neighbor_objects(comm: Topocomm, objs: Sequence[Any]) -> list[Any]:
    """Object *objs[j]* to out-neighbour j; the objects of the in-neighbours
    (None from ``PROC_NULL``)."""
    nb = comm._neighbors()
    private = _private(comm)
    proc_null = _NAMES.PROC_NULL
    recvs = [private.irecv(None, peer, tag) if peer != proc_null else None
             for peer, tag in zip(nb.sources, nb.recvtags)]
    sends = [private.isend(obj, peer, tag)
             for obj, peer, tag in zip(objs, nb.destinations, nb.sendtags) if peer != proc_null]
    got = complete_all([r for r in recvs if r is not None] + sends)
    it = iter(got)
    return [None if r is None else next(it) for r in recvs]
