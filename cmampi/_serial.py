"""One thread at a time in cmampi's protocol state, for programs with threads.

mpi4py asks for ``MPI_THREAD_MULTIPLE``, so a program may call MPI from several
threads at once: a receiving thread beside a sending one, a collective in one
thread while another sends. The MPI library is safe there; cmampi's engine
(posted receives, stages, progress of every request) is Python state that
must change one thread at a time.

While the process runs a single thread nothing is locked: no other thread
exists to enter, and none can start while that one is inside cmampi. Once
there are several, every entry into the engine holds `LOCK`, and no wait
blocks inside the MPI library while holding it: waits test and `pause`
(release the lock, let other threads run, take it back), so that a thread
that sends what another waits for can always enter.
"""

from __future__ import annotations

import os as _os
import threading as _threading
import time as _time
from collections.abc import Callable
from functools import wraps as _wraps
from typing import Any, TypeVar

__all__ = ["LOCK", "THREADS", "owned", "pause", "serialized", "shared"]

#: The interpreter's table of running threads (the one `threading.active_count`
#: counts, read without its lock: only whether it holds more than one matters).
#: Hot paths test ``len(THREADS) > 1`` themselves: a call would cost more.
THREADS: dict = _threading._active  # type: ignore[attr-defined]  # CPython's, since 2.x

#: Held by the thread inside the engine, once the process runs several threads.
LOCK = _threading.RLock()

#: Whether the calling thread holds `LOCK`.
owned: Callable[[], bool] = LOCK._is_owned  # type: ignore[attr-defined]  # RLock's, as Condition uses it


def shared() -> bool:
    """Whether threads other than the calling one run (the engine must be locked)."""
    return len(THREADS) > 1


_sched_yield = getattr(_os, "sched_yield", lambda: None)

F = TypeVar("F", bound=Callable[..., Any])


def serialized(fn: F) -> F:
    """*fn* under `LOCK` whenever several threads run."""
    @_wraps(fn)
    def call(*args, **kwargs):
        if len(THREADS) > 1:
            with LOCK:
                return fn(*args, **kwargs)
        return fn(*args, **kwargs)
    return call  # type: ignore[return-value]


#: Empty polls since a thread last slept in `pause`.
_SPINS = [0]
#: Every this many empty polls a waiting thread sleeps, not only yields: a
#: thread waiting to take `LOCK` gets it even if the releasing one would be first.
_SLEEP_EVERY = 16
_NAP = 5e-5


def pause() -> None:
    """Let other threads run and enter the engine, for a thread that polls: release
    `LOCK` however deeply it is held, yield the core (now and then sleep briefly),
    take the lock back. What the caller knew of the engine may be stale after it."""
    _SPINS[0] += 1
    nap = _SPINS[0] % _SLEEP_EVERY == 0
    state = LOCK._release_save() if owned() else None  # type: ignore[attr-defined]  # as Condition.wait does
    try:
        if nap:
            _time.sleep(_NAP)
        else:
            _sched_yield()
    finally:
        if state is not None:
            LOCK._acquire_restore(state)  # type: ignore[attr-defined]
