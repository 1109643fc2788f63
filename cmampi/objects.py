"""Python objects: pickle protocol 5, with large buffers pulled out of band, single-copy.

A sent object is pickled with protocol 5. Buffers of at least ``OOB_MIN`` bytes
(numpy arrays, bytes, ...) stay in the sender's memory: the message carries
the pickle stream and their addresses, the receiver pulls each one with CMA
straight into a fresh array, unpickles around them, and replies; the send
completes on that reply. Small objects, and peers without CMA, travel in band.
"""

from __future__ import annotations

import pickle as _pickle
from typing import Any, List, Tuple

import numpy as _np

from . import _cma, _wire
from . import p2p as _p2p
from ._buffers import address, send_buffer

__all__ = ["OOB_MIN", "isend", "loads"]

#: Buffers from this size on travel out of band.
OOB_MIN = 64 << 10


class _OutOfBand:
    """What actually travels when an object has out-of-band buffers."""

    __slots__ = ("stream", "buffers", "xid")

    def __init__(self, stream: bytes, buffers: List[Tuple[int, int]], xid: int) -> None:
        self.stream = stream
        self.buffers = buffers      # (address, nbytes) in the sender
        self.xid = xid

    def __reduce__(self):
        return (_OutOfBand, (self.stream, self.buffers, self.xid))


def isend(engine: _p2p.Engine, obj: Any, dest: int, tag: int, sync: bool,
          blocked: bool) -> _p2p.Op:
    """Start sending *obj*; the op completes once the receiver has its buffers."""
    held: List[_pickle.PickleBuffer] = []
    use_cma = engine.cma[dest]

    def out_of_band(pb: _pickle.PickleBuffer) -> bool:
        try:
            big = pb.raw().nbytes >= OOB_MIN
        except BufferError:       # not contiguous: keep it in the stream
            return True
        if big and use_cma:
            held.append(pb)
            return False
        return True

    stream = _pickle.dumps(obj, 5, buffer_callback=out_of_band)
    if not held:
        return engine.isend(send_buffer(_np.frombuffer(stream, _np.uint8)), dest, tag, sync,
                            blocked, announce=True)
    xid = engine.next_xid()
    views = [pb.raw() for pb in held]
    spots = [(address(_np.frombuffer(v, _np.uint8)), v.nbytes) for v in views]
    op = _p2p.PullSendOp(engine, (held, views), dest, xid)   # posts the reply receive
    head = _pickle.dumps(_OutOfBand(stream, spots, xid), _pickle.HIGHEST_PROTOCOL)
    engine.send(_np.frombuffer(head, _np.uint8), dest, tag, announce=True)
    return op


def loads(op: _p2p.Op) -> Any:
    """The object a finished receive holds, pulling its out-of-band buffers."""
    if op.buf is None or not op.nbytes:
        return None
    obj = _pickle.loads(op.buf.array)
    if not isinstance(obj, _OutOfBand):
        return obj
    engine = op.engine
    pid = engine.ch.pids[op.source]
    code = _wire.ACK_OK
    try:
        buffers = []
        for addr, n in obj.buffers:
            arr = _np.empty(n, dtype=_np.uint8)   # large: numpy asks for huge pages
            if n:
                _cma.read_into(pid, address(arr), addr, n)
            buffers.append(arr)
    except OSError:
        code = _wire.ACK_FAILED
        raise
    finally:
        # The sender holds its buffers until this reply, whatever happened here.
        engine.ch.send_reply(bytes((code,)), op.source, obj.xid)
    return _pickle.loads(obj.stream, buffers=buffers)


# -- object collectives (over the collectives' exchange) ------------------------------------

def _fold(op, items: List[Any]) -> Any:
    """items[0] op items[1] op ... in rank order, as mpi4py's reductions do."""
    result = items[0]
    for item in items[1:]:
        result = op(result, item)
    return result


def collective(coll, kind: str, obj: Any, root: int = 0, op=None) -> Any:
    """mpi4py's lowercase collectives on pickled objects, via one exchange.

    Every rank gets every rank's contribution, so each rank computes its own
    result; a failure to pickle on any rank is raised on every rank.
    """
    me, size = coll.rank, coll.size
    if kind in ("bcast", "scatter", "gather", "reduce") and not (
            isinstance(root, int) and 0 <= root < size):
        raise coll.names.Exception(coll.names.ERR_ROOT)
    mine = obj
    err = None
    if kind == "bcast" or kind == "scatter":
        mine = obj if me == root else None
    if kind in ("scatter", "alltoall") and mine is not None:
        try:
            mine = list(mine)
            if len(mine) != size:
                raise ValueError(f"expecting {size} items, got {len(mine)}")
        except (TypeError, ValueError) as exc:
            err, mine = exc, None
    try:
        data = _pickle.dumps(mine, _pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # noqa: BLE001 - raised on every rank by agree()
        err, data = exc, None
    records = coll.agree(err, None, data, inline=True)
    items = [_pickle.loads(r[2]) for r in records]
    if kind == "bcast":
        return items[root]
    if kind == "scatter":
        return items[root][me]
    if kind == "gather":
        return items if me == root else None
    if kind == "allgather":
        return items
    if kind == "alltoall":
        return [items[r][me] for r in range(size)]
    if kind == "allreduce":
        return _fold(op, items)
    if kind == "reduce":
        return _fold(op, items) if me == root else None
    if kind == "scan":
        return _fold(op, items[: me + 1])
    if kind == "exscan":
        return _fold(op, items[:me]) if me else None
    raise ValueError(kind)
