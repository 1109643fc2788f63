"""Generalized requests on the socket channel (on the MPI channel they are mpi4py's):
the program says when one is complete, and waits and tests then run its functions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import p2p as _p2p
from ._standin import is_ours
from .channel import Completion
from .request import _NAMES, Request, _invalid, _new

__all__ = ["Grequest"]


class _GreqOp(_p2p.Op):
    """A generalized request's state: done once the program calls ``Complete``;
    its query and free functions run as a wait or test completes it (``decode``)."""

    __slots__ = ("args", "cancel_fn", "free_fn", "kwargs", "obj", "query_fn")
    args: tuple[Any, ...]
    cancel_fn: Callable[..., None] | None
    free_fn: Callable[..., None] | None
    kwargs: dict[str, Any]
    obj: Any     # what ``complete`` was given, for ``wait``
    query_fn: Callable[..., None] | None

    def advance(self, info: Completion) -> None:  # pragma: no cover - it never waits on a channel
        pass


def _greq_call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Call a generalized request's function as mpi4py does: an exception is
    printed, then raised as ``MPI.Exception`` (its error class, or ``ERR_OTHER``)."""
    try:
        fn(*args, **kwargs)
    except BaseException as exc:
        import traceback

        traceback.print_exc()
        errclass = exc.Get_error_class() if isinstance(exc, _NAMES.Exception) \
            else _NAMES.ERR_OTHER
        raise _NAMES.Exception(errclass) from exc


def _greq_finish(op: _GreqOp) -> Any:
    """Complete a generalized request: its query function fills the status, then
    its free function runs (even if the query failed); the object of ``complete``."""
    status = _NAMES.Status()
    error = None
    for fn, args in ((op.query_fn, (status, *op.args)), (op.free_fn, op.args)):
        if fn is not None:
            try:
                _greq_call(fn, *args, **op.kwargs)
            except _NAMES.Exception as exc:
                if error is None:   # the first one raised is the one raised
                    error = exc
    if error is not None:
        raise error
    op.source, op.tag, op.nbytes = status.Get_source(), status.Get_tag(), status.count
    op.cancelled = status.Is_cancelled()
    return op.obj


class Grequest(Request):
    """
    A generalized request: the program says when it is complete (``Complete``),
    and waits and tests then run its query and free functions.
    """

    __module__ = "cmampi.MPI"   # where pickle and repr find it

    def __init__(self, request: Request | None = None) -> None:
        if is_ours(Request, request) and request and not isinstance(request, Grequest):
            raise TypeError(f"Cannot convert {type(request).__name__} to Grequest")
        super().__init__(request)

    @classmethod
    def Start(cls, query_fn: Callable[..., None] | None = None,
              free_fn: Callable[..., None] | None = None,
              cancel_fn: Callable[..., None] | None = None,
              args: tuple[Any] | None = None,
              kwargs: dict[str, Any] | None = None) -> Grequest:
        """Create and return a user-defined request."""
        op = _GreqOp(_p2p.default_engine())
        op.query_fn, op.free_fn, op.cancel_fn = query_fn, free_fn, cancel_fn
        op.args, op.kwargs, op.obj = tuple(args or ()), dict(kwargs or {}), None
        op.decode = _greq_finish
        req = _new(cls)
        req._op, req._parts = op, []
        return req

    def Complete(self) -> None:
        """Notify that a user-defined request is complete."""
        op = self._op
        if not isinstance(op, _GreqOp) or op.done:
            raise _invalid()
        op.finish()

    def complete(self, obj: Any = None) -> None:
        """Notify that a user-defined request is complete, with *obj* for ``wait``."""
        if isinstance(self._op, _GreqOp):
            self._op.obj = obj
        self.Complete()

    def Cancel(self) -> None:
        """Cancel the request: its cancel function runs, told whether it is complete."""
        op = self._op
        if not isinstance(op, _GreqOp):
            raise _invalid()
        if op.cancel_fn is not None:
            _greq_call(op.cancel_fn, op.done, *op.args, **op.kwargs)

    def _until_complete(self) -> None:
        # Another thread completes it: no channel handle to block on, so poll.
        import time

        op = self._op
        while isinstance(op, _GreqOp) and not op.done:
            _p2p.progress()
            time.sleep(1e-4)

    def Wait(self, status=None) -> bool:
        """Wait for the request to complete."""
        self._until_complete()
        return super().Wait(status)

    def wait(self, status=None) -> Any:
        """Wait for the request to complete; the object given to ``complete``."""
        self._until_complete()
        return super().wait(status)

    def Free(self) -> None:
        """Free the request (its free function runs now)."""
        op = self._op
        if not isinstance(op, _GreqOp):
            raise _invalid()
        self._op, self._parts = None, []
        if op.free_fn is not None:
            _greq_call(op.free_fn, *op.args, **op.kwargs)
