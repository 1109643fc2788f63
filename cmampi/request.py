"""Requests and matched messages, with mpi4py's classes, names and signatures.

On the MPI channel `Request`, `Prequest` and `Message` subclass mpi4py's, so
they pass wherever mpi4py's do. A cmampi request carries a protocol operation
(`p2p.Op`); its MPI handle stays null. Lists may mix cmampi's requests with
mpi4py's own (a delegated ``Ibcast``, say): the class methods complete both.
"""

from __future__ import annotations

import pickle as _pickle
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from . import _fastpath
from . import objects as _objects
from . import p2p as _p2p
from ._backend import names as _names_in_use
from ._buffers import recv_buffer
from ._serial import ENGINE as _ENGINE
from ._serial import THREADS as _THREADS
from ._serial import serialized
from ._standin import StandIn, is_ours

__all__ = ["Message", "PartitionedRequest", "Prequest", "Request", "StagedObjectRequest",
           "StagedRequest", "complete_all", "new_request"]

_NAMES = _names_in_use()
#: mpi4py's classes on the MPI channel; nothing on the socket channel.
_REAL_REQUEST: Any = getattr(_NAMES, "Request", None)
if not isinstance(_REAL_REQUEST, type):
    _REAL_REQUEST = None
_REAL_PREQUEST: Any = getattr(_NAMES, "Prequest", None) if _REAL_REQUEST else None
_REAL_MESSAGE: Any = getattr(_NAMES, "Message", None) if _REAL_REQUEST else None


def _real_active(req) -> bool:
    """Whether *req* holds a live MPI handle (an mpi4py request, or ours holding one)."""
    return _REAL_REQUEST is not None and isinstance(req, _REAL_REQUEST) and \
        _REAL_REQUEST.__bool__(req)


def _active(req) -> bool:
    """Whether *req* has an operation to complete (a persistent request at rest has
    not). A request of mpi4py's own that one of our waits completed has: the
    library made it null, but its outcome waits in `_FOREIGN`."""
    if is_ours(Request, req) and req._op is not None:
        return True
    return _real_active(req) or _completed_foreign(req)


def _invalid() -> BaseException:
    """mpi4py's error for a request that is null (freed or completed)."""
    return _NAMES.Exception(_NAMES.ERR_REQUEST)


def _empty_status(status) -> None:
    """Fill *status* as MPI does for a null or inactive request."""
    if status is not None:
        _p2p.fill_status(status, _NAMES.ANY_SOURCE, _NAMES.ANY_TAG, 0, None, _NAMES)


def _status_at(statuses, i: int):
    """The status for the *i*-th completion: a list given grows to fit, as in mpi4py."""
    if statuses is None:
        return None
    if isinstance(statuses, list):
        while len(statuses) <= i:
            statuses.append(_NAMES.Status())
    return statuses[i] if i < len(statuses) else None


class Request(*((_REAL_REQUEST,) if _REAL_REQUEST else ()), metaclass=StandIn):  # type: ignore[misc]
    """
    A nonblocking operation; completes through ``Wait``/``Test`` and friends.

    Once it has completed, a request is null (``bool(req)`` is false,
    ``req == REQUEST_NULL``), as in mpi4py, and waiting on it again returns at
    once with an empty status.
    """

    __module__ = "cmampi.MPI"   # where pickle and repr find it
    _stand_in = True     # isinstance(x, MPI.Request) holds for mpi4py's own too

    # Class-level defaults, not slots: however an object is made (mpi4py's
    # fromhandle, unpickling), it is a valid null request.
    _op: _p2p.Op | None = None
    _parts: Sequence[_p2p.Op] = ()
    _start: Callable[[], Request] | None = None

    if _REAL_REQUEST is not None:
        def __new__(cls, request: Any | None = None) -> Any:
            # mpi4py's Request makes the object (a subclass's __new__ comes here too)
            return _REAL_REQUEST.__new__(cls, request)

    def __init__(self, request: Request | None = None) -> None:
        self._op, self._parts = None, []
        if is_ours(Request, request):
            self._op, self._parts = request._op, list(request._parts)  # type: ignore[union-attr]  # is_ours narrows
            if _REAL_REQUEST is None and request._start is not None:  # type: ignore[union-attr]  # is_ours narrows
                self._start = request._start  # type: ignore[union-attr]  # is_ours narrows (the same handle, as in mpi4py)
        elif request is not None and _REAL_REQUEST is None:
            raise TypeError(f"expected a Request, not {type(request).__name__}")

    def __bool__(self) -> bool:
        return self._op is not None or self._start is not None or _real_active(self)

    def __eq__(self, other: Any) -> bool:     # any object: is_ours tells ours
        if not is_ours(Request, other) and not (
                _REAL_REQUEST is not None and isinstance(other, _REAL_REQUEST)) and \
                other is not None:
            return NotImplemented
        if is_ours(Request, other) and (self._op is not None or other._op is not None):
            return self._op is other._op
        if self._op is not None:
            return False
        if _REAL_REQUEST is not None and isinstance(other, _REAL_REQUEST):
            return _REAL_REQUEST.__eq__(self, other)
        if _REAL_REQUEST is None and is_ours(Request, other):   # socket channel
            return self._start is other._start
        return other is None and _REAL_REQUEST is None   # socket channel: REQUEST_NULL

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        state = "null" if not self else ("done" if self._done() else "active")
        return f"<cmampi.Request {state}>"

    def __reduce__(self) -> Any:
        if self._op is not None:
            raise ValueError(f"cannot serialize {type(self).__name__} in flight")
        if _REAL_REQUEST is None:       # socket channel: null requests, by name
            if self._start is not None:
                raise ValueError(f"cannot serialize an active {type(self).__name__}")
            from . import MPI

            return "REQUEST_NULL" if self is MPI.REQUEST_NULL else (type(self), ())
        return super().__reduce__()

    def __del__(self) -> None:
        # A request dropped while its operation is in flight: the operation goes on
        # by itself, keeping the memory the channel may still write to. Whatever
        # thread drops it, another may be inside the engine (the progress helper,
        # `_watch`, among them): the op is taken over under the engine's lock.
        # (Inline, not `serialized`: every request runs it when it goes.)
        if len(_THREADS) > 1:
            with _ENGINE:
                self._dropped()
        else:
            self._dropped()

    def _dropped(self) -> None:
        op = self._op
        if op is not None and not op.done:
            _p2p.detach(self._ops())

    # -- internals -------------------------------------------------------------------------
    def _ops(self) -> list[_p2p.Op]:
        return [op for op in [self._op, *self._parts] if op is not None]

    def _done(self) -> bool:
        return all(op.done for op in self._ops())

    def _complete(self, status=None) -> Any:
        """Take the finished operation out of the request: its status, its error
        raised, its object (lowercase receives) returned."""
        op: _p2p.Op
        op, parts = self._op, self._parts  # type: ignore[assignment]  # callers check it is set
        self._op, self._parts = None, []
        for extra in parts:
            extra.engine.complete(extra)
        op.engine.complete(op, status)
        return op.result

    # -- completion ------------------------------------------------------------------------
    def Wait(self, status=None) -> bool:
        """Wait for a send or receive to complete."""
        if getattr(self, "_op", None) is None:   # mpi4py's own too
            if _real_active(self):
                return _REAL_REQUEST.Wait(self, status)
            _empty_status(status)
            return True
        _p2p.wait_all(self._ops())
        self._complete(status)
        return True

    def Test(self, status=None) -> bool:
        """Test for the completion of a send or receive."""
        if getattr(self, "_op", None) is None:   # mpi4py's own too
            if _real_active(self):
                return _REAL_REQUEST.Test(self, status)
            _empty_status(status)
            return True
        if _all_tested(self._ops()):
            self._complete(status)
            return True
        return False

    def Get_status(self, status=None) -> bool:
        """Non-destructive test for the completion of a request."""
        op = getattr(self, "_op", None)
        if op is None:
            if _real_active(self):
                return _REAL_REQUEST.Get_status(self, status)
            _empty_status(status)
            return True
        if all([_p2p.test(o) for o in self._ops()]):  # noqa: C419 (test every one: each test makes progress)
            if status is not None:
                _p2p.fill_status(status, op.source, op.tag, op.engine.status_count(op), op.error,
                                 op.engine.names, op.cancelled)
            return True
        return False

    def Cancel(self) -> None:
        """Cancel a request (a receive that has not matched yet)."""
        if getattr(self, "_op", None) is None:   # mpi4py's own too
            if _real_active(self):
                return _REAL_REQUEST.Cancel(self)
            raise _invalid()
        self._op.engine.cancel(self._op)  # type: ignore[union-attr, arg-type]  # not None: getattr above
        return None

    def Free(self) -> None:
        """Free a communication request; an operation in flight completes on its own."""
        if getattr(self, "_op", None) is None:   # mpi4py's own too
            if _real_active(self):
                return _REAL_REQUEST.Free(self)
            raise _invalid()
        ops = self._ops()
        self._op, self._parts = None, []
        _p2p.detach(ops)
        return None

    # Python-object flavour (mpi4py's lowercase names).
    def wait(self, status=None) -> Any:
        """Wait for a send or receive to complete; the received object, if any."""
        if getattr(self, "_op", None) is None:   # mpi4py's own too
            if _real_active(self):
                return _REAL_REQUEST.wait(self, status)
            _empty_status(status)
            return None
        _p2p.wait_all(self._ops())
        return self._complete(status)

    def test(self, status=None) -> tuple[bool, Any]:
        """Test for the completion of a send or receive: (flag, object or None)."""
        if getattr(self, "_op", None) is None:   # mpi4py's own too
            if _real_active(self):
                return _REAL_REQUEST.test(self, status)
            _empty_status(status)
            return True, None
        if _all_tested(self._ops()):
            return True, self._complete(status)
        return False, None

    def get_status(self, status=None) -> bool:
        """Non-destructive test for the completion of a request."""
        return self.Get_status(status)

    def cancel(self) -> None:
        """Cancel a request."""
        self.Cancel()

    def free(self) -> None:
        """Free a communication request."""
        if self:
            self.Free()

    # -- handles ------------------------------------------------------------------------------
    @classmethod
    def fromhandle(cls, handle: int) -> Request:
        """fromhandle(handle)

        Create object from MPI handle.
        """
        return cls(_REAL_BASE(cls).fromhandle(handle))

    @classmethod
    def fromint(cls, arg: int, /) -> Request:
        """fromint(arg)

        Create object from integer handle.
        """
        return cls(_REAL_BASE(cls).fromint(arg))

    @classmethod
    def f2py(cls, arg: int) -> Request:
        """f2py(arg)

        Create object from Fortran handle.
        """
        return cls(_REAL_BASE(cls).f2py(arg))

    if _REAL_REQUEST is None:
        # The socket channel's handles: an int naming the operation (or persistent
        # request) for as long as a request object holds it; 0 is REQUEST_NULL's.
        @property
        def handle(self) -> int:
            """Handle (an int naming the request; ``REQUEST_NULL``'s is 0)."""
            key = self._op if self._op is not None else self._start
            if key is None:
                return 0
            _HANDLES[id(key)] = self
            return id(key)

        def toint(self) -> int:
            """Translate object to integer."""
            return self.handle

        py2f = toint

        @classmethod
        def fromhandle(cls, handle: int) -> Request:
            """Create object from MPI handle."""
            if handle == 0:
                return cls()
            owner = _HANDLES.get(handle)
            if owner is None or owner.handle != handle:
                raise ValueError(f"not a live request handle: {handle}")
            return cls(owner)

        fromint = f2py = fromhandle  # type: ignore[assignment]  # f2py's argument is named handle here

    # -- on many requests -------------------------------------------------------------------
    @classmethod
    def Waitall(cls, requests: Sequence[Any], statuses: list[Any] | None = None) -> bool:
        """Waitall(requests, statuses=None)

        Wait for all previously initiated requests to complete.
        """
        if _waited_fast(requests, statuses):
            return True
        _wait_all(requests)
        _finish_all(requests, statuses, range(len(requests)))
        return True

    @classmethod
    def Testall(cls, requests: Sequence[Any], statuses: list[Any] | None = None) -> bool:
        """Testall(requests, statuses=None)

        Test for completion of all previously initiated requests.
        """
        done = _tested_fast(requests, statuses)
        if done is not None:
            return done
        if len(_tested_live(list(enumerate(requests)))) < len(requests):
            return False
        _finish_all(requests, statuses, range(len(requests)))
        return True

    @classmethod
    def Waitany(cls, requests: Sequence[Any], status=None) -> int:
        """Waitany(requests, status=None)

        Wait for any previously initiated request to complete; its index or ``UNDEFINED``.
        """
        got = _some_fast(requests, _WAIT_ANY, status)
        if got is not None:
            return got if got >= 0 else _NAMES.UNDEFINED
        return _wait_any_index(requests, status)[0]

    @classmethod
    def Testany(cls, requests: Sequence[Any], status=None) -> tuple[int, bool]:
        """Testany(requests, status=None)

        Test for completion of any previously initiated request: (index, flag).
        """
        got = _some_fast(requests, _TEST_ANY, status)
        if got is not None:
            return (got, True) if got >= 0 else (_NAMES.UNDEFINED, got == _ALL_NULL)
        index, flag, _ = _test_any_index(requests, status)
        return index, flag

    @classmethod
    def Waitsome(cls, requests: Sequence[Any],
                 statuses: list[Any] | None = None) -> list[int] | None:
        """Waitsome(requests, statuses=None)

        Wait for some previously initiated requests to complete.

        Returns their indices, or None if all are null.
        """
        if statuses is None:
            got = _some_fast(requests, _WAIT_SOME, None)
            if got is not None:
                return got or None
        return _some(requests, statuses, True)[0]

    @classmethod
    def Testsome(cls, requests: Sequence[Any],
                 statuses: list[Any] | None = None) -> list[int] | None:
        """Testsome(requests, statuses=None)

        Test for completion of some previously initiated requests.

        Returns their indices (maybe empty), or None if all are null.
        """
        if statuses is None:
            got = _some_fast(requests, _TEST_SOME, None)
            if got is not None:
                return got if got is not False else None
        return _some(requests, statuses, False)[0]

    @classmethod
    def Get_status_all(cls, requests: Sequence[Any],
                       statuses: list[Any] | None = None) -> bool:
        """Get_status_all(requests, statuses=None)

        Non-destructive test for the completion of all requests.
        """
        _p2p.progress()
        if not all([_test_quiet(req) for req in requests]):  # noqa: C419 (test every one: each test advances its op)
            return False
        for i, req in enumerate(requests):
            _peek_status(req, _status_at(statuses, i))
        return True

    @classmethod
    def Get_status_any(cls, requests: Sequence[Any], status=None) -> tuple[int, bool]:
        """Get_status_any(requests, status=None)

        Non-destructive test for the completion of any requests.
        """
        live = [(i, req) for i, req in enumerate(requests) if _active(req)]
        if not live:
            _empty_status(status)
            return _NAMES.UNDEFINED, True
        _p2p.progress()
        for i, req in live:
            if _test_quiet(req):
                _peek_status(req, status)
                return i, True
        return _NAMES.UNDEFINED, False

    @classmethod
    def Get_status_some(cls, requests: Sequence[Any],
                        statuses: list[Any] | None = None) -> list[int] | None:
        """Get_status_some(requests, statuses=None)

        Non-destructive test for completion of some requests.
        """
        live = [(i, req) for i, req in enumerate(requests) if _active(req)]
        if not live:
            return None
        _p2p.progress()
        done = [i for i, req in live if _test_quiet(req)]
        for k, i in enumerate(done):
            _peek_status(requests[i], _status_at(statuses, k))
        return done

    @classmethod
    def get_status_all(cls, requests: Sequence[Any],
                       statuses: list[Any] | None = None) -> bool:
        """get_status_all(requests, statuses=None)

        Non-destructive test for the completion of all requests.
        """
        return cls.Get_status_all(requests, statuses)

    @classmethod
    def get_status_any(cls, requests: Sequence[Any], status=None) -> tuple[int, bool]:
        """get_status_any(requests, status=None)

        Non-destructive test for the completion of any requests.
        """
        return cls.Get_status_any(requests, status)

    @classmethod
    def get_status_some(cls, requests: Sequence[Any],
                        statuses: list[Any] | None = None) -> list[int] | None:
        """get_status_some(requests, statuses=None)

        Non-destructive test for completion of some requests.
        """
        return cls.Get_status_some(requests, statuses)

    @classmethod
    def waitall(cls, requests: Sequence[Any], statuses: list[Any] | None = None) -> list[Any]:
        """waitall(requests, statuses=None)

        Wait for all previously initiated requests to complete; their objects.
        """
        objs = _waited_fast(requests, statuses, _loads)
        if objs is not False:
            return objs
        _wait_all(requests)
        return _finish_all(requests, statuses, range(len(requests)))

    @classmethod
    def testall(cls, requests: Sequence[Any],
                statuses: list[Any] | None = None) -> tuple[bool, list[Any] | None]:
        """testall(requests, statuses=None)

        Test for completion of all previously initiated requests: (flag, objects).
        """
        objs = _tested_fast(requests, statuses, _loads)
        if objs is not None:
            return (True, objs) if objs is not False else (False, None)
        if len(_tested_live(list(enumerate(requests)))) < len(requests):
            return False, None
        return True, _finish_all(requests, statuses, range(len(requests)))

    @classmethod
    def waitany(cls, requests: Sequence[Any], status=None) -> tuple[int, Any]:
        """waitany(requests, status=None)

        Wait for any previously initiated request to complete: (index, object).
        """
        got = _some_fast(requests, _WAIT_ANY, status, _loads)
        if got is not None:
            return got if got[0] >= 0 else (_NAMES.UNDEFINED, None)
        return _wait_any_index(requests, status)

    @classmethod
    def testany(cls, requests: Sequence[Any], status=None) -> tuple[int, bool, Any]:
        """testany(requests, status=None)

        Test for completion of any previously initiated request: (index, flag, object).
        """
        got = _some_fast(requests, _TEST_ANY, status, _loads)
        if got is not None:
            index, obj = got
            return (index, True, obj) if index >= 0 else \
                (_NAMES.UNDEFINED, index == _ALL_NULL, None)
        return _test_any_index(requests, status)

    @classmethod
    def waitsome(cls, requests: Sequence[Any], statuses: list[Any] | None = None
                 ) -> tuple[list[int] | None, list[Any] | None]:
        """waitsome(requests, statuses=None)

        Wait for some previously initiated requests to complete: (indices, objects).
        """
        got = _some_fast(requests, _WAIT_SOME, None, _loads) if statuses is None else None
        if got is not None:
            return got if got is not False else (None, None)
        return _some(requests, statuses, True)

    @classmethod
    def testsome(cls, requests: Sequence[Any], statuses: list[Any] | None = None
                 ) -> tuple[list[int] | None, list[Any] | None]:
        """testsome(requests, statuses=None)

        Test for completion of some previously initiated requests: (indices, objects).
        """
        got = _some_fast(requests, _TEST_SOME, None, _loads) if statuses is None else None
        if got is not None:
            return got if got is not False else (None, None)
        return _some(requests, statuses, False)


_new = _REAL_REQUEST.__new__ if _REAL_REQUEST is not None else object.__new__


def _REAL_BASE(cls: type) -> Any:
    """The mpi4py class *cls* stands in for."""
    for base in cls.__mro__:
        if base.__module__.startswith("mpi4py"):
            return base
    raise TypeError(f"{cls.__name__}: no MPI handles on the socket channel")


#: The compiled path's module, once an engine uses it (`p2p._FAST`).
_FAST = _p2p._FAST
# The engine's collections, as the compiled waits' fast checks read them.
_PENDING, _DETACHED, _YIELDS = _p2p._PENDING, _p2p._DETACHED, _p2p._FAST_YIELDS
_DECLINED, _loads = _objects.DECLINED, _pickle.loads


def _undetached() -> bool:
    """Whether no detached op is left once those that have finished leave."""
    _p2p.advance_detached()
    return not _DETACHED


def _fast_waits() -> bool:
    """Whether a compiled wait may complete requests now: no op of the Python
    engine waits for progress (that wait would not advance it), one thread.
    Detached ops that have finished (another wait completed them) leave first:
    one left behind would keep every later wait off the compiled path."""
    if len(_THREADS) > 1:
        return False
    if _p2p._DETACHED:
        _p2p.advance_detached()
    return not (_p2p._PENDING or _p2p._DETACHED)


class StagedRequest(Request):
    """The request of a small send or receive on the compiled path (see
    `_fastpath`). Its compiled waits complete it; anything else that looks at
    its op (``_op``) hands the op to the Python engine first (`p2p.promote`)."""

    __module__ = "cmampi.MPI"
    # Slots: setting them makes no instance __dict__ (a request is made and
    # dropped per call; `Request.__init__`'s `_parts` still goes there). `_fast` is
    # the compiled op, until a compiled wait completes it or the request is
    # completed (None then); `_held`, the op the request holds after that. The
    # compiled path gives these classes a finalizer that skips `__del__` for a
    # request whose `_fast` is None (`_fastpath.c`, `finalize_request`).
    __slots__ = ("_fast", "_held")
    _fast: Any

    def __init__(self, request: Request | None = None) -> None:
        self._fast = None
        super().__init__(request)

    # A compiled op made while one thread ran may be taken over by another
    # thread's progress (the progress helper, `_watch`) once several run: it is
    # taken over (`p2p.promote`) and let go under the engine's lock then.
    @property
    def _op(self) -> _p2p.Op | None:
        staged = self._fast
        if staged is None:
            return getattr(self, "_held", None)
        op = staged.op
        return op if op is not None else _p2p.promote(staged)

    @_op.setter
    @serialized
    def _op(self, op: _p2p.Op | None) -> None:
        staged = self._fast
        if staged is not None:
            staged.op = None    # the op's stage refers to it: no cycle left behind
        self._fast = None
        self._held = op

    def __bool__(self) -> bool:
        return self._fast is not None or super().__bool__()

    def __reduce__(self) -> Any:
        if self:
            raise ValueError(f"cannot serialize {type(self).__name__} in flight")
        return Request, ()      # a null request, as any other

    # The waits check inline what `_fast_waits` checks: a call saved on every wait
    # (2-3% of an object exchange). A request's own status goes to the compiled
    # completions as the list of statuses of that one request.
    def Wait(self, status=None) -> bool:
        """Wait for a send or receive to complete."""
        if self._fast is not None and len(_THREADS) < 2 \
                and not _PENDING and (not _DETACHED or _undetached()) \
                and _FAST[0].waitall((self,), StagedRequest, _YIELDS[0],
                                     None if status is None else [status]):
            return True
        return super().Wait(status)

    def Test(self, status=None) -> bool:
        """Test for the completion of a send or receive."""
        if self._fast is not None and len(_THREADS) < 2 \
                and not _PENDING and (not _DETACHED or _undetached()):
            done = _FAST[0].testall((self,), StagedRequest, None if status is None else [status])
            if done is not None:
                return done
        return super().Test(status)

    # Its ops are a buffer's or a short pickle's send: their lowercase calls give
    # no object, as mpi4py's give none for them.
    def wait(self, status=None) -> Any:
        """Wait for a send or receive to complete; None (no object is received)."""
        if self._fast is not None and len(_THREADS) < 2 \
                and not _PENDING and (not _DETACHED or _undetached()) \
                and _FAST[0].waitall((self,), StagedRequest, _YIELDS[0],
                                     None if status is None else [status]):
            return None
        return super().wait(status)

    def test(self, status=None) -> tuple[bool, Any]:
        """Test for the completion of a send or receive: (flag, None)."""
        if self._fast is not None:
            done = _tested_fast((self,), None if status is None else [status])
            if done is not None:
                return done, None
        return super().test(status)

    def _dropped(self) -> None:
        # Dropped in flight: the op goes on by itself (see Request.__del__). A
        # StagedRequest's op is only ever its compiled op's.
        staged = getattr(self, "_fast", None)
        if staged is not None:
            op = staged.op
            if op is None and staged.state in (_fastpath.POSTED, _fastpath.ARRIVED):
                op = _p2p.promote(staged)
            staged.op = None    # the op's stage refers to it: no cycle left behind
            if op is not None and not op.done:
                _p2p.detach([op])


_fastpath.register(StagedRequest, _p2p._PENDING, _p2p._DETACHED)


class StagedObjectRequest(StagedRequest):
    """The request of an object's receive on the compiled path (lowercase
    ``irecv``): its message lands whole in a buffer of its op's own, and ``wait``
    and ``test`` unpickle it there."""

    __module__ = "cmampi.MPI"
    __slots__ = ()

    def wait(self, status=None) -> Any:
        """Wait for the receive to complete; the object received."""
        if status is None and self._fast is not None and len(_THREADS) < 2 \
                and not _PENDING and (not _DETACHED or _undetached()):
            got = _FAST[0].wait_object(self, StagedObjectRequest, _YIELDS[0], _loads, _DECLINED)
            if got is not _DECLINED:
                return got
        return Request.wait(self, status)

    def test(self, status=None) -> tuple[bool, Any]:
        """Test for the completion of the receive: (flag, the object or None)."""
        if self._fast is not None:
            objs = _tested_fast((self,), None if status is None else [status], _loads)
            if objs is not None:
                return (True, objs[0]) if objs is not False else (False, None)
        return Request.test(self, status)


_fastpath.register_objects(StagedObjectRequest)


def _waited_fast(requests: Sequence[Any], statuses: Any = None, loads: Any = None) -> Any:
    """True (with *loads*: the objects) if the compiled path waited for *requests*
    and made them null (each one null or a compiled op's), their *statuses*
    filled; False leaves them to the Python path."""
    if not (_FAST and _fast_waits()):
        return False
    return _FAST[0].waitall(requests, StagedRequest, _p2p._FAST_YIELDS[0], statuses, loads)


#: The kinds of `_fastpath.some`, and what its any kinds give when every request is null.
_TEST_ANY, _WAIT_ANY, _TEST_SOME, _WAIT_SOME = range(4)
_ALL_NULL = -2


def _some_fast(requests: Sequence[Any], how: int, status: Any, loads: Any = None) -> Any:
    """The compiled path's Testany, Waitany, Testsome or Waitsome (*how*) of
    *requests* (see `_fastpath.some`; with *loads*, the objects too), or None:
    the Python path's."""
    if not (_FAST and _fast_waits()):
        return None
    return _FAST[0].some(requests, StagedRequest, how, _p2p._FAST_YIELDS[0], status, loads)


def _tested_fast(requests: Sequence[Any], statuses: Any = None, loads: Any = None) -> Any:
    """The compiled path's Testall of *requests* (filling *statuses*; with *loads*
    the objects, when all are done, instead of True), or None: the Python path's."""
    return _FAST[0].testall(requests, StagedRequest, statuses, loads) \
        if _FAST and _fast_waits() else None


def new_request(op: _p2p.Op | None, parts: Sequence[_p2p.Op] = ()) -> Request:
    """A request carrying *op* (and *parts*, completing with it: a Sendrecv's send)."""
    req = _new(Request)      # mpi4py's allocator itself: no Python-level __new__ call
    req._op = op
    if parts:
        req._parts = list(parts)
    return req


# -- the class methods' work, for lists mixing cmampi's requests and mpi4py's -----------------

#: Socket channel: the request objects that last showed each handle (weakly).
_HANDLES: Any = __import__("weakref").WeakValueDictionary()

#: The ops through which cmampi's waits completed requests of mpi4py's own, by the
#: request's id, until `_finish` takes their status (the MPI handle is null by then).
_FOREIGN: dict[int, _p2p.ForeignOp] = {}


def _op_of(req) -> _p2p.Op | None:
    """The op to wait on for a request of mpi4py's own (None when it is null)."""
    if is_ours(Request, req) and req._op is None:     # a null (or inactive) one of ours
        return None
    if req is None or not _real_active(req):
        if req is None or (_REAL_REQUEST is not None and isinstance(req, _REAL_REQUEST)):
            return None
        raise TypeError(f"Cannot convert {type(req).__name__} to Request")
    op = _FOREIGN.get(id(req))
    if op is None or op.request is not req:
        op = _FOREIGN[id(req)] = _p2p.ForeignOp(_p2p.default_engine(), req)
    return op


def _completed_foreign(req) -> bool:
    """Whether *req*, a request of mpi4py's own, was completed by one of our
    waits (the library made it null then; its op holds the outcome)."""
    op = _FOREIGN.get(id(req))
    return op is not None and op.request is req and op.done


def _live_ops(req) -> list[_p2p.Op]:
    if is_ours(Request, req) and req._op is not None:
        return [op for op in req._ops() if not op.done]
    op = _op_of(req)
    return [] if op is None else [op]


def _ops_to_wait_on(live: Sequence[tuple[int, Any]]) -> list[_p2p.Op]:
    """The ops of *live* requests still running; none if one of ours has finished
    meanwhile (testing a later request progresses an earlier one): the caller
    tests again rather than wait on the others alone."""
    ops: list[_p2p.Op] = []
    for _, req in live:
        mine = _live_ops(req)
        if not mine and is_ours(Request, req) and req._op is not None:
            return []
        ops.extend(mine)
    return ops


def _wait_all(requests: Sequence[Any]) -> None:
    ops: list[_p2p.Op] = []
    for req in requests:
        if type(req) is Request and not req._parts:     # the common case, at once
            op = req._op
            if op is not None:
                if not op.done:
                    ops.append(op)
                continue
        ops.extend(_live_ops(req))
    _p2p.wait_all(ops)


def _all_tested(ops: list[_p2p.Op]) -> bool:
    """Test each of *ops* (each test makes progress); whether all are done.
    Pulled sends among them offer help meanwhile (`_p2p.Offering`)."""
    with _p2p.Offering(ops):
        return all([_p2p.test(op) for op in ops])  # noqa: C419 (test every one: each test makes progress)


def _tested_live(live: Sequence[tuple[int, Any]], first: bool = False) -> list[int]:
    """The indices of the requests of *live* (index, request) found complete
    by one progress and a test of each (only the first, with *first*). Pulled
    sends among them offer help meanwhile (`_p2p.Offering`): a loop of
    tests spends most of its time here."""
    done = []
    with _p2p.Offering(_ops_of(live)):
        _p2p.progress()
        for i, req in live:
            if _test_quiet(req):
                done.append(i)
                if first:
                    break
    return done


def _ops_of(live: Sequence[tuple[int, Any]]) -> list[_p2p.Op]:
    """The ops of the requests of ours among *live* (index, request) pairs."""
    ops: list[_p2p.Op] = []
    for _, req in live:
        if type(req) is Request and not req._parts:     # the common case, at once
            if req._op is not None:
                ops.append(req._op)
        elif is_ours(Request, req) and req._op is not None:
            ops += req._ops()
    return ops


def _test_quiet(req) -> bool:
    """Whether *req* is complete (or null), without completing it. Callers run
    `_p2p.progress` first: once for a whole list, not once for each request."""
    if type(req) is Request and not req._parts:     # the common case, at once
        op = req._op
        if op is not None:
            return op.done or _p2p.tested(op)
    if is_ours(Request, req) and req._op is not None:
        return all([_p2p.tested(op) for op in req._ops()])  # noqa: C419 (test every one: each test advances its op)
    if _real_active(req):
        return bool(_REAL_REQUEST.Get_status(req))
    return True


def _peek_status(req, status) -> None:
    """Fill *status* from a request known to be done, leaving it as it is."""
    if status is not None:
        if is_ours(Request, req):
            Request.Get_status(req, status)
        elif _real_active(req):
            _REAL_REQUEST.Get_status(req, status)
        elif _completed_foreign(req):
            op = _FOREIGN[id(req)]
            _p2p.fill_status(status, op.source, op.tag, op.nbytes, op.error, _NAMES)
        else:
            _empty_status(status)


def _finish(req, status) -> Any:
    """Complete a request known to be done (or null); its object, if any."""
    if is_ours(Request, req) and req._op is not None:
        return req._complete(status)
    if _real_active(req):
        _FOREIGN.pop(id(req), None)
        return _REAL_REQUEST.wait(req, status)
    op = _FOREIGN.pop(id(req), None)
    if op is not None and op.request is req:     # completed by one of our waits
        op.engine.complete(op, status)
        return None
    _empty_status(status)
    return None


def complete_all(requests: Sequence[Any]) -> list[Any]:
    """Wait for every request; their objects. A failure raises its own error,
    not ``ERR_IN_STATUS``: for the collectives built on point to point."""
    _wait_all(requests)
    return _finish_all(requests, None, range(len(requests)), in_status=False)


def _finish_all(requests: Sequence[Any], statuses, indices, in_status: bool = True) -> list[Any]:
    """Complete every request of *indices*, even when one raises; their objects.
    The first error raised is reported as `_in_status` makes it (*in_status*)."""
    results, errors = [], []
    for k, i in enumerate(indices):
        req = requests[i]
        if statuses is None and type(req) is Request and not req._parts:
            # The common case at once: a finished op with nothing to report.
            op = req._op
            if op is not None and op.decode is None and op.error is None:
                req._op = None
                results.append(op.result)
                continue
        try:
            results.append(_finish(req, _status_at(statuses, k)))
        except BaseException as exc:  # noqa: BLE001 (complete every request before raising)
            results.append(None)
            errors.append(exc)
    if errors:
        raise _in_status(errors[0]) if in_status else errors[0]
    return results


def _in_status(exc: BaseException) -> BaseException:
    """What a completion of several requests raises for *exc*, one request's
    error: an MPI error becomes ``ERR_IN_STATUS``, as MPI's ``Waitall`` and
    friends return it (each status given holds its own request's error; *exc*
    is the cause). Any other exception (an object's unpickling) stays itself."""
    if not isinstance(exc, _NAMES.Exception) or exc.Get_error_class() == _NAMES.ERR_IN_STATUS:
        return exc
    err = _NAMES.Exception(_NAMES.ERR_IN_STATUS)
    err.__cause__ = exc
    return err


def _wait_any_index(requests: Sequence[Any], status) -> tuple[int, Any]:
    """(index, object) of the first request of *requests* found complete,
    waiting for one. One pass a round finds a request done and gathers the ops
    to wait on: a window completed one request at a time costs a pass in
    Python per completion, not a test of each request (`_p2p.wait_any`
    advances whatever has completed in one call of the library)."""
    while True:
        ops: list[_p2p.Op] = []
        live = False
        for i, req in enumerate(requests):
            if type(req) is Request and not req._parts:     # the common case, at once
                op = req._op
                if op is not None:
                    live = True
                    if op.done:
                        return i, _finish(req, status)
                    ops.append(op)
                    continue
            if is_ours(Request, req) and req._op is not None:
                live = True
                mine = [op for op in req._ops() if not op.done]
                if not mine:
                    return i, _finish(req, status)
                ops += mine
            elif _real_active(req):
                live = True
                if _REAL_REQUEST.Get_status(req):
                    return i, _finish(req, status)
                op = _op_of(req)
                if op is not None:
                    ops.append(op)
            elif _completed_foreign(req):   # by the wait of the round before: null now
                return i, _finish(req, status)
        if not live:
            _empty_status(status)
            return _NAMES.UNDEFINED, None
        if ops:
            _p2p.wait_any(ops)


def _test_any_index(requests: Sequence[Any], status) -> tuple[int, bool, Any]:
    live = [(i, req) for i, req in enumerate(requests) if _active(req)]
    if not live:
        _empty_status(status)
        return _NAMES.UNDEFINED, True, None
    done = _tested_live(live, first=True)
    if done:
        return done[0], True, _finish(requests[done[0]], status)
    return _NAMES.UNDEFINED, False, None


def _some(requests: Sequence[Any], statuses, block: bool):
    """(indices, objects) of the requests done now, waiting for one if *block*;
    (None, None) when every request is null."""
    live = [(i, req) for i, req in enumerate(requests)
            if (type(req) is Request and req._op is not None) or _active(req)]
    if not live:
        return None, None
    while True:
        done = _tested_live(live)
        if done or not block:
            return done, _finish_all(requests, statuses, done)
        ops = _ops_to_wait_on(live)
        if ops:
            _p2p.wait_any(ops)


class Prequest(Request, *((_REAL_PREQUEST,) if _REAL_PREQUEST else ())):  # type: ignore[misc]
    """
    A persistent request: ``Start`` launches the operation again each time.
    """

    __module__ = "cmampi.MPI"   # where pickle and repr find it
    _stand_in = True     # isinstance(x, MPI.Prequest) holds for mpi4py's own too

    _start: Callable[[], Request] | None = None

    def __init__(self, request: Request | None = None) -> None:
        if _real_active(request) and not isinstance(request, _REAL_PREQUEST):
            raise TypeError(f"Cannot convert {type(request).__name__} to Prequest")
        if _REAL_REQUEST is None and is_ours(Request, request) and request \
                and not isinstance(request, Prequest):   # socket channel: as mpi4py's
            raise TypeError(f"Cannot convert {type(request).__name__} to Prequest")
        super().__init__(request)
        self._start = request._start if is_ours(Request, request) else None  # type: ignore[union-attr]  # is_ours narrows

    @classmethod
    def _starting(cls, start: Callable[[], Request]) -> Prequest:
        """A persistent request whose ``Start`` calls *start* (a nonblocking call)."""
        req = Request.__new__(cls)
        req._op, req._parts, req._start = None, [], start
        return req

    def __bool__(self) -> bool:
        return self._start is not None or _real_active(self)

    def __eq__(self, other: Any) -> bool:     # any object: is_ours tells ours
        if _REAL_REQUEST is None:   # socket channel: the same handle
            return Request.__eq__(self, other)
        if is_ours(Prequest, other) and (self._start is not None or
                                            other._start is not None):
            return self._start is other._start
        if self._start is not None:
            return False
        return Request.__eq__(self, other)

    __hash__ = object.__hash__

    def Start(self) -> None:
        """Initiate a communication with a persistent request."""
        if self._start is None:
            if _real_active(self):
                return _REAL_PREQUEST.Start(self)
            raise _invalid()
        if self._op is not None:
            raise _invalid()        # started again before it completed
        inner = self._start()
        self._op, self._parts = inner._op, inner._parts
        inner._op, inner._parts = None, []
        return None

    @classmethod
    def Startall(cls, requests: list[Prequest]) -> None:
        """Startall(requests)

        Start a collection of persistent requests.
        """
        for req in requests:
            if is_ours(Prequest, req):
                req.Start()
            else:
                _REAL_PREQUEST.Start(req)

    def Wait(self, status=None) -> bool:
        """Wait for a send or receive to complete (an inactive one returns at once)."""
        if self._op is None and self._start is not None:
            _empty_status(status)
            return True
        return super().Wait(status)

    def Free(self) -> None:
        """Free a persistent request."""
        if self._start is None:
            return super().Free()
        if self._op is not None:
            super().Free()
        self._start = None
        return None


class PartitionedRequest(Prequest):
    """A partitioned send or receive (``Psend_init``/``Precv_init``).

    The message travels whole: a send starts once every partition is ready, and
    a receive's partitions all arrive together when the message does, which
    MPI allows. Either side may be matched by any cmampi send or receive.
    """

    _partitions = 1
    _sending = False
    _pending_start = False

    @classmethod
    def _partitioned(cls, start: Callable[[], Request], partitions: int,
                     sending: bool) -> PartitionedRequest:
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}")
        req = cls._starting(start)
        req._partitions = partitions
        req._ready = set()
        req._sending = sending
        req._pending_start = False
        return req

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
        """Mark a given partition as ready."""
        self.Pready_list([partition])

    def Pready_range(self, partition_low: int, partition_high: int) -> None:
        """Mark a range of partitions as ready."""
        self.Pready_list(range(partition_low, partition_high + 1))

    def Pready_list(self, partitions: Sequence[int]) -> None:
        """Mark a sequence of partitions as ready."""
        if not self._sending or not self._pending_start:
            raise RuntimeError("cmampi: Pready on a request that is not an active send")
        with _ENGINE:   # threads may mark partitions at once: one of them starts it
            for p in partitions:
                self._check(p)
                self._ready.add(p)
            if len(self._ready) == self._partitions and self._pending_start:
                self._pending_start = False
                super().Start()

    def Parrived(self, partition: int) -> bool:
        """Test partial completion of a partitioned receive operation."""
        self._check(partition)
        if self._sending:
            raise RuntimeError("cmampi: Parrived on a send request")
        return self._op is None or all([_p2p.test(op) for op in self._ops()])  # noqa: C419 (test every one: each test makes progress)

    def Wait(self, status=None) -> bool:
        """Wait for the operation to complete."""
        if self._pending_start:
            raise RuntimeError("cmampi: waiting on a partitioned send before all "
                               "partitions are ready")
        return super().Wait(status)


_MESSAGE_BASES = (_REAL_MESSAGE,) if _REAL_MESSAGE else ()
#: What a matched probe of ``PROC_NULL`` matches (socket channel): ``MESSAGE_NO_PROC``.
NO_PROC_HIT = (_NAMES.PROC_NULL, _NAMES.ANY_TAG, b"")


class Message(*_MESSAGE_BASES, metaclass=StandIn):  # type: ignore[misc]
    """
    A message matched by ``Mprobe``/``Improbe``, received with ``Recv``/``Irecv``.
    """

    __module__ = "cmampi.MPI"   # where pickle and repr find it
    _stand_in = True     # isinstance(x, MPI.Message) holds for mpi4py's own too

    _engine: Any = None
    _hit: Any = None    # (source, tag, data) taken out of the engine's stash

    _permanent = False  # MESSAGE_NO_PROC itself: receiving leaves it as it is

    def __init__(self, message: Message | None = None) -> None:
        self._engine = self._hit = None
        if is_ours(Message, message):
            self._engine, self._hit = message._engine, message._hit  # type: ignore[union-attr]  # is_ours narrows
        elif message is not None and _REAL_MESSAGE is None:
            raise TypeError(f"expected a Message, not {type(message).__name__}")

    if TYPE_CHECKING:
        @classmethod
        def fromhandle(cls, handle: int) -> Message: ...
        @classmethod
        def fromint(cls, arg: int, /) -> Message: ...
        @classmethod
        def f2py(cls, arg: int) -> Message: ...
    else:   # Request's, making a Message
        fromhandle = classmethod(Request.fromhandle.__func__)
        fromint = classmethod(Request.fromint.__func__)
        f2py = classmethod(Request.f2py.__func__)

    @classmethod
    def _matched(cls, engine, hit) -> Message:
        msg = cls.__new__(cls)
        msg._engine, msg._hit = engine, hit   # (source, tag, data) out of the engine's stash
        return msg

    def __reduce__(self) -> Any:
        if _REAL_MESSAGE is None:       # socket channel: the null and no-proc messages
            from . import MPI

            for name in ("MESSAGE_NULL", "MESSAGE_NO_PROC"):
                if self is getattr(MPI, name):
                    return name
            if self._hit is None:
                return (type(self), ())
            if self._hit is NO_PROC_HIT:
                return (type(self), (MPI.MESSAGE_NO_PROC,))
        if self._hit is not None:
            raise ValueError(f"cannot serialize a matched {type(self).__name__}")
        return super().__reduce__()

    def __bool__(self) -> bool:
        return self._hit is not None or (_REAL_MESSAGE is not None and
                                         _REAL_MESSAGE.__bool__(self))

    def __eq__(self, other: Any) -> bool:     # any object: is_ours tells ours
        if not is_ours(Message, other) and not (
                _REAL_MESSAGE is not None and isinstance(other, _REAL_MESSAGE)) and \
                other is not None:
            return NotImplemented
        if is_ours(Message, other) and (self._hit is not None or other._hit is not None):
            return self._hit is other._hit
        if self._hit is not None:
            return False
        if _REAL_MESSAGE is not None and isinstance(other, _REAL_MESSAGE):
            return _REAL_MESSAGE.__eq__(self, other)
        if _REAL_MESSAGE is None and is_ours(Message, other):  # socket channel: both null
            return True
        return other is None and _REAL_MESSAGE is None

    __hash__ = object.__hash__

    # -- matching (class methods, as in mpi4py) --------------------------------------------
    @classmethod
    def Probe(cls, comm, source: int = _NAMES.ANY_SOURCE, tag: int = _NAMES.ANY_TAG,
              status=None) -> Message:
        """Probe(comm, source=ANY_SOURCE, tag=ANY_TAG, status=None)

        Blocking test for a matched message.
        """
        return comm.Mprobe(source, tag, status)

    @classmethod
    def Iprobe(cls, comm, source: int = _NAMES.ANY_SOURCE, tag: int = _NAMES.ANY_TAG,
               status=None) -> Message | None:
        """Iprobe(comm, source=ANY_SOURCE, tag=ANY_TAG, status=None)

        Nonblocking test for a matched message.
        """
        return comm.Improbe(source, tag, status)

    @classmethod
    def probe(cls, comm, source: int = _NAMES.ANY_SOURCE, tag: int = _NAMES.ANY_TAG,
              status=None) -> Message:
        """probe(comm, source=ANY_SOURCE, tag=ANY_TAG, status=None)

        Blocking test for a matched message.
        """
        return comm.mprobe(source, tag, status)

    @classmethod
    def iprobe(cls, comm, source: int = _NAMES.ANY_SOURCE, tag: int = _NAMES.ANY_TAG,
               status=None) -> Message | None:
        """iprobe(comm, source=ANY_SOURCE, tag=ANY_TAG, status=None)

        Nonblocking test for a matched message.
        """
        return comm.improbe(source, tag, status)

    # -- receiving -------------------------------------------------------------------------
    def Recv(self, buf, status=None) -> None:
        """Blocking receive of matched message."""
        if _library_owns(self):
            return _REAL_MESSAGE.Recv(self, buf, status)
        self.Irecv(buf).Wait(status)
        return None

    def Irecv(self, buf) -> Request:
        """Nonblocking receive of matched message."""
        if _library_owns(self):
            return _REAL_MESSAGE.Irecv(self, buf)
        self._check()
        rbuf = recv_buffer(buf) if buf is not None else None
        return new_request(self._take(rbuf))

    def recv(self, status=None) -> Any:
        """Blocking receive of matched message, as a Python object."""
        if _library_owns(self):
            return _REAL_MESSAGE.recv(self, status)
        return self.irecv().wait(status)

    def irecv(self) -> Request:
        """Nonblocking receive of matched message, as a Python object."""
        if _library_owns(self):
            return _REAL_MESSAGE.irecv(self)
        self._check()
        op = self._take(None, _objects.landed)
        op.decode = _objects.loads
        return new_request(op)

    def _check(self) -> None:
        if self._hit is None:       # received already: a null message, as in mpi4py
            raise _NAMES.Exception(_NAMES.ERR_REQUEST)

    def _take(self, rbuf, landed=None) -> _p2p.RecvOp:
        hit = self._hit
        if not self._permanent:
            self._hit = None
        return self._engine.irecv_matched(rbuf, hit, landed)


def _library_owns(msg) -> bool:
    """Whether mpi4py's own message serves a call on *msg* (one cmampi did not
    match; mpi4py's own ``Message`` objects, as ``mpi4py.util.pkl5`` passes to
    ``MPI.Message.Recv``, included). A null message raises ``ERR_REQUEST`` here,
    as MPICH reports it: Open MPI would abort the job."""
    if getattr(msg, "_hit", None) is not None or _REAL_MESSAGE is None:
        return False
    if not _REAL_MESSAGE.__bool__(msg):
        raise _NAMES.Exception(_NAMES.ERR_REQUEST)
    return True
