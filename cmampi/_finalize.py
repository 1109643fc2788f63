"""The end of the job: sends that completed before their receiver took them are
delivered before the process leaves, as MPI's ``Finalize`` delivers them.

A buffered-mode send (``Bsend``, ``bsend``) completes once cmampi has copied the
message, and a send whose request was freed goes on by itself (`p2p.detach`).
A pulled payload stays in the sender's memory until the receiver has copied
it, and the sender waits for the receiver's reply: neither may leave before.
``Finalize`` and the interpreter's exit keep such sends, and receives whose
message has come, progressing until they are done. A receiver that never
takes its message would keep the sender forever; after ``CMAMPI_EXIT_WAIT``
seconds without progress the sender leaves, with a warning naming what is lost.
"""

from __future__ import annotations

import atexit as _atexit
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
    deadline = _time.monotonic() + wait
    while left:
        _p2p.progress()
        now = _p2p.undelivered()
        if now < left:
            left, deadline = now, _time.monotonic() + wait
        elif _time.monotonic() > deadline:
            _warnings.warn(
                f"cmampi: {left} message(s) sent in buffered mode or from freed requests "
                f"were not received within {wait:g} s (CMAMPI_EXIT_WAIT): their receivers "
                "cannot take them once this process has left", RuntimeWarning, stacklevel=2)
            return left
        else:
            nap(50e-6)  # the receiver may need this core to take its message
    return 0


def at_exit(alive: Callable[[], bool]) -> None:
    """Deliver at the interpreter's exit, while *alive* says the channel still is
    (mpi4py finalizes MPI later, at the C level: Python's handlers run first)."""
    def handler() -> None:
        if alive():
            deliver()
    _atexit.register(handler)
