"""Requests and matched messages, with mpi4py's method names and signatures."""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple

from . import p2p as _p2p

__all__ = ["Request", "Prequest", "PartitionedRequest", "Message"]


def _op_of(req) -> Optional[_p2p.Op]:
    """Our op for *req*; a request of the wrapped library joins our waits as-is."""
    if isinstance(req, Request):
        return req._op
    if req is None:
        return None
    engine = _foreign_engine()
    foreign = getattr(engine.names, "Request", None)
    if foreign is None or not isinstance(req, foreign):
        raise TypeError(f"Cannot convert {type(req).__name__} to Request")
    if not req:
        return None
    return _p2p.ForeignOp(engine, req)


def _invalid() -> BaseException:
    """mpi4py's error for a request that is null (freed or completed)."""
    names = _foreign_engine().names
    return names.Exception(names.ERR_REQUEST)


#: Operations of freed requests still in flight, kept (with their buffers) until done.
_DETACHED: List[_p2p.Op] = []


def _detach(ops: Sequence[_p2p.Op]) -> None:
    """Let *ops* finish on their own: freeing a request must not wait for its peer,
    which may itself be waiting for us."""
    _DETACHED[:] = [op for op in [*_DETACHED, *ops] if not _p2p.test(op)]


def _foreign_engine():
    from .comm import default_engine

    return default_engine()


def _empty_status(status) -> None:
    """Fill *status* as MPI does for a null or inactive request."""
    if status is not None:
        names = _foreign_engine().names
        _p2p.fill_status(status, names.ANY_SOURCE, names.ANY_TAG, 0, None, names)


class Request:
    """A nonblocking operation; completes through ``Wait``/``Test`` and friends.

    Once it has completed, a request is null (``bool(req)`` is false), as in
    mpi4py, and waiting on it again returns at once with an empty status.
    """

    __slots__ = ("_op", "_parts", "__weakref__")

    def __init__(self, op: Optional[_p2p.Op] = None, parts: Sequence[_p2p.Op] = ()) -> None:
        self._op = op
        #: further ops completing together with ``_op`` (e.g. the send of a Sendrecv)
        self._parts = list(parts)

    def __bool__(self) -> bool:
        return self._op is not None

    def __repr__(self) -> str:
        state = "null" if self._op is None else ("done" if self._done() else "active")
        return f"<cmampi.Request {state}>"

    # -- internals -------------------------------------------------------------------------
    def _ops(self) -> List[_p2p.Op]:
        return [op for op in [self._op, *self._parts] if op is not None]

    def _done(self) -> bool:
        return all(op.done for op in self._ops())

    def _complete(self, status=None) -> None:
        op, parts = self._op, self._parts
        self._op, self._parts = None, []
        for extra in parts:
            extra.engine.complete(extra)
        op.engine.complete(op, status)

    # -- completion ------------------------------------------------------------------------
    def Wait(self, status=None) -> bool:
        """Wait for the request to complete."""
        if self._op is None:
            _empty_status(status)
            return True
        _p2p.wait_all(self._ops())
        self._complete(status)
        return True

    def Test(self, status=None) -> bool:
        """Test for the completion of the request."""
        if self._op is None:
            _empty_status(status)
            return True
        if all([_p2p.test(op) for op in self._ops()]):
            self._complete(status)
            return True
        return False

    def Get_status(self, status=None) -> bool:
        """Non-destructive test for the completion of the request."""
        if self._op is None:
            _empty_status(status)
            return True
        if all([_p2p.test(op) for op in self._ops()]):
            if status is not None:
                op = self._op
                names = op.engine.names
                _p2p.fill_status(status, op.source, op.tag, op.nbytes, op.error, names, op.cancelled)
            return True
        return False

    def Cancel(self) -> None:
        """Cancel the request (a receive that has not matched yet)."""
        if not self:
            raise _invalid()
        if self._op is not None:
            self._op.engine.cancel(self._op)

    def Free(self) -> None:
        """Free the request; an operation still in flight completes on its own."""
        if not self:
            raise _invalid()
        ops = self._ops()
        self._op, self._parts = None, []
        _detach(ops)

    # -- on many requests -------------------------------------------------------------------
    @classmethod
    def Waitall(cls, requests: Sequence[Any], statuses: Optional[List[Any]] = None) -> bool:
        """Wait for all requests to complete."""
        ops = []
        for req in requests:
            if isinstance(req, Request):
                ops.extend(req._ops())
            else:
                op = _op_of(req)
                if op is not None:
                    ops.append(op)
        _p2p.wait_all(ops)
        errors = []
        for i, req in enumerate(requests):
            st = statuses[i] if statuses is not None and i < len(statuses) else None
            try:
                _finish(req, st)
            except BaseException as exc:  # complete every request before raising
                errors.append(exc)
        if errors:
            raise errors[0]
        return True

    @classmethod
    def Testall(cls, requests: Sequence[Any], statuses: Optional[List[Any]] = None) -> bool:
        """Test for the completion of all requests."""
        _p2p.progress()
        if not all(_test_quiet(req) for req in requests):
            return False
        cls.Waitall(requests, statuses)
        return True

    @classmethod
    def Waitany(cls, requests: Sequence[Any], status=None) -> int:
        """Wait for any one request to complete; its index, or ``UNDEFINED``."""
        live = [(i, req) for i, req in enumerate(requests) if req]
        if not live:
            _empty_status(status)
            return _undefined()
        while True:
            for i, req in live:
                if _test_quiet(req):
                    _finish(req, status)
                    return i
            _wait_any_of([req for _, req in live])

    @classmethod
    def Testany(cls, requests: Sequence[Any], status=None) -> Tuple[int, bool]:
        """Test for the completion of any one request: (index, flag)."""
        live = [(i, req) for i, req in enumerate(requests) if req]
        if not live:
            _empty_status(status)
            return _undefined(), True
        _p2p.progress()
        for i, req in live:
            if _test_quiet(req):
                _finish(req, status)
                return i, True
        return _undefined(), False

    @classmethod
    def Waitsome(cls, requests: Sequence[Any], statuses: Optional[List[Any]] = None):
        """Wait for some requests to complete: their indices, or None if all are null."""
        live = [(i, req) for i, req in enumerate(requests) if req]
        if not live:
            return None
        while True:
            done = cls.Testsome(requests, statuses)
            if done:
                return done
            _wait_any_of([req for _, req in live])

    @classmethod
    def Testsome(cls, requests: Sequence[Any], statuses: Optional[List[Any]] = None):
        """Test for some completed requests: their indices (maybe empty), or None."""
        live = [(i, req) for i, req in enumerate(requests) if req]
        if not live:
            return None
        _p2p.progress()
        done = [i for i, req in live if _test_quiet(req)]
        for k, i in enumerate(done):
            st = statuses[k] if statuses is not None and k < len(statuses) else None
            _finish(requests[i], st)
        return done

    # Python-object flavour (mpi4py's lowercase names).
    def wait(self, status=None):
        """Wait for completion; the received object, if any."""
        op = self._op
        self.Wait(status)
        return getattr(op, "result", None) if op is not None else None

    def test(self, status=None):
        """Test for completion: (flag, received object or None)."""
        op = self._op
        if self.Test(status):
            return True, getattr(op, "result", None) if op is not None else None
        return False, None


def _undefined() -> int:
    return _foreign_engine().names.UNDEFINED


def _test_quiet(req) -> bool:
    if isinstance(req, Request):
        return req._op is None or all([_p2p.test(op) for op in req._ops()])
    return bool(req.Get_status()) if req else True


def _finish(req, status) -> None:
    if isinstance(req, Request):
        if req._op is None:
            _empty_status(status)
        else:
            req._complete(status)
    elif req:
        req.Wait(status)
    else:
        _empty_status(status)


def _wait_any_of(requests) -> None:
    ops = []
    for req in requests:
        if isinstance(req, Request):
            ops.extend(op for op in req._ops() if not op.done)
        else:
            op = _op_of(req)
            if op is not None:
                ops.append(op)
    if ops:
        _p2p.wait_any(ops)


class Prequest(Request):
    """A persistent request: ``Start`` launches the operation again each time."""

    __slots__ = ("_start",)

    def __init__(self, start: Callable[[], Request]) -> None:
        super().__init__(None)
        self._start = start

    def __bool__(self) -> bool:
        return self._start is not None

    def Start(self) -> None:
        """Start the persistent operation."""
        if self._start is None or self._op is not None:
            raise _invalid()        # freed, or started again before it completed
        inner = self._start()
        self._op, self._parts = inner._op, inner._parts

    @classmethod
    def Startall(cls, requests: Sequence["Prequest"]) -> None:
        """Start a collection of persistent requests."""
        for req in requests:
            req.Start()

    def Wait(self, status=None) -> bool:
        if self._op is None:        # inactive: returns at once
            _empty_status(status)
            return True
        return super().Wait(status)

    def Free(self) -> None:
        super().Free()
        self._start = None


class PartitionedRequest(Prequest):
    """A partitioned send or receive (``Psend_init``/``Precv_init``).

    The message travels whole: a send starts once every partition is ready, and
    a receive's partitions all arrive together when the message does, which
    MPI allows. Either side may be matched by any cmampi send or receive.
    """

    __slots__ = ("_partitions", "_ready", "_sending", "_pending_start")

    def __init__(self, start: Callable[[], Request], partitions: int, sending: bool) -> None:
        super().__init__(start)
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}")
        self._partitions = partitions
        self._ready = set()
        self._sending = sending
        self._pending_start = False

    def Start(self) -> None:
        """Start the operation (a send leaves once all partitions are ready)."""
        if self._op is not None or self._pending_start:
            raise RuntimeError("cmampi: partitioned request started while active")
        self._ready.clear()
        if self._sending:
            self._pending_start = True
        else:
            super().Start()

    def _check(self, partition: int) -> None:
        if not 0 <= partition < self._partitions:
            raise ValueError(f"partition {partition} not in [0, {self._partitions})")

    def Pready(self, partition: int) -> None:
        """Mark a send partition ready."""
        self.Pready_list([partition])

    def Pready_range(self, partition_low: int, partition_high: int) -> None:
        """Mark send partitions ``partition_low..partition_high`` ready."""
        self.Pready_list(range(partition_low, partition_high + 1))

    def Pready_list(self, partitions: Sequence[int]) -> None:
        """Mark a list of send partitions ready."""
        if not self._sending or not self._pending_start:
            raise RuntimeError("cmampi: Pready on a request that is not an active send")
        for p in partitions:
            self._check(p)
            self._ready.add(p)
        if len(self._ready) == self._partitions:
            self._pending_start = False
            super().Start()

    def Parrived(self, partition: int) -> bool:
        """Whether a receive partition has arrived."""
        self._check(partition)
        if self._sending:
            raise RuntimeError("cmampi: Parrived on a send request")
        return self._op is None or all([_p2p.test(op) for op in self._ops()])

    def Wait(self, status=None) -> bool:
        if self._pending_start:
            raise RuntimeError("cmampi: waiting on a partitioned send before all "
                               "partitions are ready")
        return super().Wait(status)


class Message:
    """A message matched by ``Mprobe``/``Improbe``, received with ``Recv``/``Irecv``."""

    __slots__ = ("_engine", "_hit")

    def __init__(self, engine, hit) -> None:
        self._engine = engine
        self._hit = hit          # (source, tag, data) taken from the engine's stash

    def __bool__(self) -> bool:
        return self._hit is not None

    def Recv(self, buf, status=None) -> None:
        """Blocking receive of this matched message."""
        self.Irecv(buf).Wait(status)

    def Irecv(self, buf) -> Request:
        """Nonblocking receive of this matched message."""
        from ._buffers import recv_buffer

        self._check()
        rbuf = recv_buffer(buf) if buf is not None else None
        return Request(self._take(rbuf))

    def recv(self, status=None) -> Any:
        """Blocking receive of this matched message, as a Python object."""
        return self.irecv().wait(status)

    def irecv(self) -> Request:
        """Nonblocking receive of this matched message, as a Python object."""
        from .objects import loads

        self._check()
        op = self._take(None)
        op.decode = loads
        return Request(op)

    def _check(self) -> None:
        if self._hit is None:       # received already: a null message, as in mpi4py
            names = self._engine.names
            raise names.Exception(names.ERR_REQUEST)

    def _take(self, rbuf) -> _p2p.RecvOp:
        hit, self._hit = self._hit, None
        return self._engine.irecv_matched(rbuf, hit)
