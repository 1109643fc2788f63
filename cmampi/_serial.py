"""One thread at a time in cmampi's protocol state, for programs with threads.

mpi4py asks for ``MPI_THREAD_MULTIPLE``, so a program may call MPI from several
threads at once: a receiving thread beside a sending one, a collective in one
thread while another sends. The MPI library is safe there; cmampi's engine
(posted receives, stages, progress of every request) is Python state that
must change one thread at a time.

While the process runs a single thread nothing is locked: no other thread
exists to enter, and none can start while that one is inside cmampi. Once
there are several, every entry into the engine holds `LOCK`, and no wait
blocks inside the MPI library while holding it: waits test, and `pause`
hands the lock to any thread that waits for it, so that a thread that sends
what another waits for can always enter.
"""

from __future__ import annotations

import os as _os
import threading as _threading
import time as _time
from collections import deque
from collections.abc import Callable
from functools import wraps as _wraps
from typing import Any, TypeVar

__all__ = ["ENGINE", "LOCK", "THREADS", "nap", "owned", "pause", "serialized", "shared"]

#: The interpreter's table of running threads (the one `threading.active_count`
#: counts, read without its lock: only whether it holds more than one matters).
#: Hot paths test ``len(THREADS) > 1`` themselves: a call would cost more.
THREADS: dict = _threading._active  # type: ignore[attr-defined]  # CPython's, since 2.x

#: Held by the thread inside the engine, once the process runs several threads.
LOCK = _threading.RLock()

#: Whether the calling thread holds `LOCK`.
owned: Callable[[], bool] = LOCK._is_owned  # type: ignore[attr-defined]  # RLock's, as Condition uses it

#: One entry per thread blocked taking `LOCK` (a deque: append and pop are atomic).
_WANTED: deque = deque()


def shared() -> bool:
    """Whether threads other than the calling one run (the engine must be locked)."""
    return len(THREADS) > 1


class _Engine:
    """``with ENGINE:`` holds `LOCK`, and lets a polling holder see that a
    thread waits for it (`pause` then hands it over)."""

    __slots__ = ()

    def __enter__(self) -> None:
        if not LOCK.acquire(False):
            _WANTED.append(None)
            try:
                LOCK.acquire()
            finally:
                _WANTED.pop()

    def __exit__(self, *exc) -> None:
        LOCK.release()


ENGINE = _Engine()

_sched_yield = getattr(_os, "sched_yield", lambda: None)

F = TypeVar("F", bound=Callable[..., Any])


def serialized(fn: F) -> F:
    """*fn* under `LOCK` whenever several threads run."""
    @_wraps(fn)
    def call(*args, **kwargs):
        if len(THREADS) > 1 and not owned():
            with ENGINE:
                return fn(*args, **kwargs)
        return fn(*args, **kwargs)
    return call  # type: ignore[return-value]


#: How long a polling holder of `LOCK` sleeps to hand it to a thread that
#: waits for it: released and taken back at once, the holder would mostly win.
_HANDOVER = 2e-5


def pause(spare_core: bool = True) -> None:
    """A turn of a polling wait: if a thread waits for `LOCK`, release it however
    deeply it is held, sleep while that thread takes it, and take it back (what
    the caller knew of the engine may then be stale); else, unless *spare_core*
    (more ranks than cores), yield the core. A poll with nobody waiting costs
    nothing more, as the MPI library's own waits spin."""
    if _WANTED and owned():
        nap(_HANDOVER)
    elif not spare_core:
        _sched_yield()


def nap(seconds: float) -> None:
    """Sleep *seconds* without holding `LOCK` (however deeply it is held), then
    take it back as a thread that waits for it (`pause` sees us)."""
    if not owned():
        _time.sleep(seconds)
        return
    state = LOCK._release_save()  # type: ignore[attr-defined]  # as Condition.wait does
    try:
        _time.sleep(seconds)
    finally:
        _WANTED.append(None)
        try:
            LOCK._acquire_restore(state)  # type: ignore[attr-defined]
        finally:
            _WANTED.pop()
