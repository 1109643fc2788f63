"""Progress while the main thread is blocked outside cmampi's engine (MPI channel).

MPI's progress rule: a posted receive whose message has come completes while
its rank is inside any MPI call. cmampi's large messages are pulled: the
receiver copies, then tells the sender, which waits for that in a blocking
``send``. A rank blocked in a collective the MPI library runs (or in one of
mpi4py's own calls, or computing in C) does not act, so that a correct program
hung: rank 1 ``Send``s rank 0 a large buffer, then enters ``Barrier``; rank 0,
its ``Irecv`` posted, entered ``Barrier`` first.

Where the MPI library allows threads (``MPI_THREAD_MULTIPLE``, which mpi4py
asks for), a helper thread looks every `TICK_PENDING` seconds while receives
are pending (every `TICK_IDLE` otherwise). If the main thread is blocked where
it holds no state of the engine (every cmampi function on its stack is one
`site` names: collectives the library runs, communicators being made) the
helper enters as a second thread would: it shows in `_serial.THREADS` (every
entry into the engine now locks), takes the engine's lock and progresses every
posted receive, as a wait does; then it leaves. The main thread's calls cost
nothing more: the helper is invisible until it acts.
"""

from __future__ import annotations

import _thread
import atexit as _atexit
import os as _os
import sys as _sys
import threading as _threading
import warnings as _warnings
from collections.abc import Callable
from typing import Any, TypeVar

from ._serial import ENGINE, THREADS

__all__ = ["TICK_IDLE", "TICK_PENDING", "acted", "site", "sites", "start", "stop"]

#: Seconds between looks while receives are pending: a blocked rank acts on a
#: pulled message this late at most. A look costs the main thread a hand-over
#: of the interpreter's lock when it runs Python (tens of us).
TICK_PENDING = 0.01
#: ... and while none is.
TICK_IDLE = 0.1

F = TypeVar("F")

#: The code of the functions where the main thread may block in the MPI library
#: holding no engine state.
_SITES: set = set()
#: Modules all of whose functions are such sites.
_SITE_MODULES: set[str] = set()
#: Modules of cmampi that are not the engine's (benchmarks call it as users do).
_USER_MODULES = ("cmampi.bench",)


def site(fn: F) -> F:
    """Mark *fn* as a place where the main thread may block in the MPI library
    while holding no engine state (decorator; *fn* itself is returned)."""
    function: Any = fn.fget if isinstance(fn, property) else fn
    _SITES.add(function.__code__)
    return fn


def sites(module: str) -> None:
    """Mark every function of *module* as a `site`."""
    _SITE_MODULES.add(module)


class _State:
    thread: int | None = None
    main = 0
    finalized: Any = None   # whether MPI is finalized (mpi4py's Is_finalized)
    stopping = False
    acted = 0       # rounds of progress the helper made
    warned = False
    wake: Any = None
    done: Any = None


_STATE = _State()


def acted() -> int:
    """How many times the helper has progressed receives (for tests)."""
    return _STATE.acted


def start(thread_multiple: bool, finalized: Callable[[], bool]) -> None:
    """Start the helper (once; only with *thread_multiple*: it calls MPI, and never
    once *finalized* says MPI is)."""
    s = _STATE
    if s.thread is not None or not thread_multiple:
        return
    s.main = _threading.main_thread().ident or 0
    s.finalized = finalized
    s.wake, s.done = _thread.allocate_lock(), _thread.allocate_lock()
    s.wake.acquire()
    s.done.acquire()
    s.thread = _thread.start_new_thread(_run, ())
    _atexit.register(stop)


def stop() -> None:
    """Stop the helper and wait for it (before ``MPI_Finalize``)."""
    s = _STATE
    if s.thread is None or s.stopping:
        return
    s.stopping = True
    s.wake.release()
    s.done.acquire()


def _forked() -> None:
    """In a forked child: no helper runs there (nor does the child use its
    parent's MPI)."""
    _STATE.thread, _STATE.stopping = None, True


_os.register_at_fork(after_in_child=_forked)


def _pending() -> bool:
    from . import p2p as _p2p  # late: p2p marks its sites here

    fast = _p2p._FAST
    return bool(_p2p._PENDING or _p2p._DETACHED or (fast and fast[0].receiving()))


def _holds_nothing(frame) -> bool:
    """Whether no function on the stack from *frame* out is one of the engine's,
    but `site`s."""
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module.startswith("cmampi") and frame.f_code not in _SITES \
                and module not in _SITE_MODULES and not module.startswith(_USER_MODULES):
            return False
        frame = frame.f_back
    return True


def _may_act() -> bool:
    """Whether the helper, shown in `THREADS` already, may enter the engine."""
    if len(THREADS) > 2:    # the program's threads lock the engine: act as one would
        return True
    return _holds_nothing(_sys._current_frames().get(_STATE.main))


def _run() -> None:
    s = _STATE
    ident = _thread.get_ident()
    me = _threading._DummyThread()      # what threading.current_thread() makes
    THREADS.pop(ident, None)            # invisible until it acts
    try:
        while True:
            s.wake.acquire(timeout=TICK_PENDING if _pending() else TICK_IDLE)
            if s.stopping:
                return
            if not _pending() or s.finalized():
                continue
            # Shown first, then the main thread looked at: what it checked before
            # shows on its stack (a function of the engine's: no act), and what it
            # checks from now on finds the engine locked.
            THREADS[ident] = me
            try:
                if _may_act():
                    _act()
            finally:
                THREADS.pop(ident, None)
    finally:
        s.done.release()


def _act() -> None:
    """Progress every posted receive under the engine's lock; an error is told
    once and the helper goes on (stopping would bring the hang back)."""
    from . import p2p as _p2p

    try:
        with ENGINE:
            _p2p.progress()
        _STATE.acted += 1
    except Exception as exc:   # noqa: BLE001 - told: the caller's ops keep their errors
        if not _STATE.warned:
            _STATE.warned = True
            _warnings.warn(f"cmampi: the progress helper met an error: {exc!r}",
                           RuntimeWarning, stacklevel=1)
