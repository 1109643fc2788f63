"""The end of the job: sends that completed before their receiver took them are
delivered before the process leaves, as MPI's ``Finalize`` delivers them.

A buffered-mode send (``Bsend``, ``bsend``) completes once cmampi has copied the
message, and a send whose request was freed goes on by itself (`p2p.detach`).
A pulled payload stays in the sender's memory until the receiver has copied
it, and the sender waits for the receiver's reply: neither may leave before.
``Finalize`` and the interpreter's exit keep such sends, and receives whose
message has come, progressing until they are done, however long the receiver
takes, as MPI's ``Finalize`` does. ``CMAMPI_EXIT_WAIT`` bounds the wait (seconds
without progress): a sender then leaves with a warning naming what is lost.
"""

from __future__ import annotations

import atexit as _atexit
import os as _os
import sys as _sys
import time as _time
import warnings as _warnings
from collections.abc import Callable

from . import p2p as _p2p
from ._config import config
from ._serial import nap

__all__ = ["at_exit", "deliver"]


def deliver(wait: float | None = None) -> int:
    """Progress every detached send until it is done, or until *wait* seconds
    (``CMAMPI_EXIT_WAIT``) pass with none finishing; how many are left undelivered
    (with a warning)."""
    wait = config.exit_wait if wait is None else wait
    _p2p.progress()     # dropped receives whose message is in take it: its sender waits
    left = _p2p.undelivered()
    moved = _time.monotonic()   # when the last one finished
    while left:
        _p2p.progress()
        now = _p2p.undelivered()
        idle = _time.monotonic() - moved
        if now < left:
            left, moved = now, _time.monotonic()
        elif idle > wait:
            _warnings.warn(
                f"cmampi: {left} message(s) sent in buffered mode or from freed requests "
                f"were not received within {wait:g} s (CMAMPI_EXIT_WAIT): their receivers "
                "cannot take them once this process has left", RuntimeWarning, stacklevel=3)
            return left
        else:   # the receiver may need this core: yield it, the longer the later
            nap(50e-6 if idle < 0.1 else 1e-3)
    return 0


def at_exit(alive: Callable[[], bool]) -> None:
    """Deliver at the interpreter's exit, while *alive* says the channel still is
    (mpi4py finalizes MPI later, at the C level: Python's handlers run first).
    Not in a forked child (its parent's connections are not its own), nor after
    an uncaught exception (the job is failing: its peers are told at once)."""
    pid = _os.getpid()

    def handler() -> None:
        if _os.getpid() == pid and getattr(_sys, "last_value", None) is None and alive():
            deliver()
    _atexit.register(handler)
