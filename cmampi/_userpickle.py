"""``MPI.pickle`` as cmampi's object paths apply it.

By default cmampi pickles objects itself (protocol 5, large buffers out of
band). A program may give ``MPI.pickle`` other ``dumps``/``loads`` or another
``protocol`` (``MPI.pickle.__init__(dill.dumps, dill.loads)``, as mpi4py
documents); from then on every object cmampi sends is serialized by them, in
band, and unpickled by the receiver's ``MPI.pickle.loads``.

What travels stays a standard pickle, which the receive paths read as they do
any other (control messages and records are pickles too): the object goes out as
a `Wrapped`, whose pickle holds ``MPI.pickle.dumps(obj)`` and calls
``MPI.pickle.loads`` on those bytes where it is unpickled.
"""

from __future__ import annotations

import pickle as _pickle
from collections.abc import Callable
from typing import Any

__all__ = ["DUMPS", "Wrapped", "adopt", "configure", "forwarding", "on_change"]

#: What cmampi pickles objects with, called as ``pickle.dumps(obj, protocol,
#: **kwargs)``: pickle's own, or `_dumps_wrapped` while ``MPI.pickle`` is customized.
DUMPS: list[Callable[..., bytes]] = [_pickle.dumps]
#: The namespace's ``MPI.pickle`` (set by `adopt`), whose ``loads`` unpickles a `Wrapped`.
_PICKLE: list[Any] = [None]
#: Told the new `DUMPS` when it changes (the compiled path's configuration).
_HOOKS: list[Callable[[Callable[..., bytes]], None]] = []


class Wrapped:
    """An object pickled by ``MPI.pickle``: its pickle is a call of `_loads`
    on ``MPI.pickle.dumps(obj)``."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __reduce__(self) -> tuple:
        return (_loads, (_PICKLE[0].dumps(self.obj),))


def _loads(data: bytes) -> Any:
    """The object ``MPI.pickle.dumps`` made *data* of."""
    pickler = _PICKLE[0]
    return _pickle.loads(data) if pickler is None else pickler.loads(data)


def _dumps_wrapped(obj: Any, protocol: int | None = None, **kwargs: Any) -> bytes:
    return _pickle.dumps(Wrapped(obj), protocol, **kwargs)


def on_change(hook: Callable[[Callable[..., bytes]], None]) -> None:
    """Call *hook* with the new `DUMPS` whenever it changes."""
    _HOOKS.append(hook)


def configure(pickler: Any, dumps: Callable | None, loads: Callable | None) -> None:
    """Apply *pickler*'s settings, just made by its ``__init__(dumps, loads, ...)``,
    if it is the namespace's ``MPI.pickle``: pickle's own ``dumps`` and ``loads``
    at the highest protocol are cmampi's default; anything else is customized."""
    if pickler is not _PICKLE[0]:
        return
    default = dumps in (None, _pickle.dumps) and loads in (None, _pickle.loads) \
        and pickler.PROTOCOL == _pickle.HIGHEST_PROTOCOL
    new = _pickle.dumps if default else _dumps_wrapped
    if new is not DUMPS[0]:
        DUMPS[0] = new
        for hook in _HOOKS:
            hook(new)


def adopt(pickler: Any) -> None:
    """Make *pickler* the namespace's ``MPI.pickle`` (its settings apply from now)."""
    _PICKLE[0] = pickler
    # Its settings now: a default object at another protocol (MPI4PY_PICKLE_PROTOCOL).
    configure(pickler, None, None)


def forwarding(base: type, real: Any) -> Any:
    """The ``MPI.pickle`` of cmampi's MPI namespace: an object of mpi4py's class
    *base* whose ``__init__`` also sets mpi4py's own *real* one (which its calls
    that cmampi leaves to it use) and applies the settings (`configure`)."""

    class Pickle(base):
        """
        Pickle/unpickle Python objects.
        """

        __module__ = "cmampi.MPI"
        __qualname__ = __name__ = "Pickle"

        def __init__(self, dumps: Callable | None = None, loads: Callable | None = None,
                     protocol: int | None = None, threshold: int | None = None) -> None:
            """Serialize with *dumps* and *loads* (None: pickle's), at *protocol*."""
            super().__init__(dumps, loads, protocol, threshold)
            if real is not None and self is _PICKLE[0]:
                real.__init__(dumps, loads, protocol, threshold)
            configure(self, dumps, loads)

    pickler = Pickle()
    adopt(pickler)
    return pickler
