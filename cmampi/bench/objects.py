"""Python objects (lowercase ``send``/``recv``): ping-pong time and receive page faults.

Objects: numpy ``uint8`` arrays, a dict of 100 small float64 arrays, an int
and a short tuple. Rank 0 sends, rank 1 receives and sends back what it got;
one-way time = round trip / 2. Implementations: cmampi, mpi4py's pickle
(``comm.send``/``recv``) and ``mpi4py.util.pkl5`` on the MPI channel, a
multiprocessing Connection (``conn.send``/``recv``) on the socket channel.

Receive allocation cost: after the timing, each implementation sends one way,
every message acknowledged, and rank 1 counts its minor page faults
(``getrusage(RUSAGE_SELF).ru_minflt``) per receive, the received object
dropped before the next one arrives. This is the steady state of a loop that
receives objects of one size: the allocator has had every chance to reuse
memory (glibc serves blocks below its adaptive mmap threshold, up to 32 MiB,
from memory it kept), so faults show the allocations it cannot avoid.
"""

from __future__ import annotations

import functools as _functools
import resource as _resource
import time as _time
from typing import Any

import numpy as _np

from ._common import (
    CMAMPI,
    TAG,
    Case,
    Context,
    DataError,
    Result,
    check_array,
    format_size,
    pattern,
)
from ._timing import Impl, measure

__all__ = ["DEFAULT_SIZES", "describe", "obj_pingpong", "plan"]

DEFAULT_SIZES = (8, 1 << 10, 64 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20)
#: The dict case: this many float64 arrays of DICT_ITEM elements.
DICT_LEN, DICT_ITEM = 100, 128
#: Most messages of the page-fault count (the calibrated count, if lower).
FAULT_MESSAGES = 50


def obj_pingpong(comm: Any, rank: int, obj: Any, iters: int) -> tuple[float, Any]:
    """*iters* round trips of *obj*; the elapsed time and the last object received."""
    send, recv = comm.send, comm.recv
    got = None
    t0 = _time.perf_counter()
    if rank == 0:
        for _ in range(iters):
            send(obj, 1, TAG)
            got = recv(None, 1, TAG)
    else:
        for _ in range(iters):
            got = recv(None, 0, TAG)
            send(got, 0, TAG)
    return _time.perf_counter() - t0, got


def faults_per_recv(comm: Any, rank: int, obj: Any, count: int) -> float | None:
    """*count* messages 0 -> 1, each acknowledged; on rank 1, minor page faults per receive."""
    if rank == 0:
        for _ in range(count):
            comm.send(obj, 1, TAG)
            comm.recv(None, 1, TAG)
        return None
    before = _resource.getrusage(_resource.RUSAGE_SELF).ru_minflt
    for _ in range(count):
        got = comm.recv(None, 0, TAG)
        del got                      # as a loop that consumes each message would
        comm.send(None, 0, TAG)
    return (_resource.getrusage(_resource.RUSAGE_SELF).ru_minflt - before) / count


def _check(where: str, got: Any, expected: Any, full: bool) -> None:
    if isinstance(expected, _np.ndarray):
        check_array(where, got, expected, full)
    elif isinstance(expected, dict):
        if not isinstance(got, dict) or list(got) != list(expected):
            raise DataError(f"{where}: received {type(got).__name__} with other keys")
        for key, value in expected.items():
            check_array(f"{where}, [{key!r}]", got[key], value, full=True)
    elif type(got) is not type(expected) or got != expected:
        raise DataError(f"{where}: received {got!r}, expected {expected!r}")


def _comms(ctx: Context) -> dict[str, Any]:
    if ctx.raw is None:
        return {"pipe": ctx.comms["pipe"], CMAMPI: ctx.comm}
    from mpi4py.util import pkl5

    return {"mpi4py": ctx.raw, "pkl5": pkl5.Intracomm(ctx.raw), CMAMPI: ctx.comm}


def _case(ctx: Context, comms: dict[str, Any], obj: Any, case: str, nbytes: int,
          sized: bool) -> Result:
    rank = ctx.rank
    last: dict[str, Any] = {}

    def impl(name: str, c: Any) -> Impl:
        where = f"{name}, {case}, rank {rank}"

        def run(n: int) -> float:
            elapsed, last[name] = obj_pingpong(c, rank, obj, n)
            return elapsed

        def verify() -> None:
            run(1)
            _check(where, last.pop(name), obj, full=True)

        def check() -> None:
            _check(where, last.pop(name), obj, full=False)

        return Impl(name, run, verify, check=check)

    result = measure(ctx, [impl(name, c) for name, c in comms.items()], per_iter=2,
                     bench="objects", op="array" if sized else case, case=case,
                     nbytes=nbytes, sized=sized)
    for name, c in comms.items():
        ctx.barrier()
        faults_per_recv(c, rank, obj, 1)
        count = min(FAULT_MESSAGES, result.iters[name])
        value = ctx.comm.bcast(faults_per_recv(c, rank, obj, count), root=1)
        result.extra[name] = {"minflt_per_recv": value}
    return result


def plan(ctx: Context) -> list[Case]:
    comms = _comms(ctx)
    rng = _np.random.default_rng(0)
    table = {f"x{i}": rng.random(DICT_ITEM) for i in range(DICT_LEN)}

    def array_case(n: int) -> Result:   # its array made when the case runs
        return _case(ctx, comms, pattern(n), f"array {format_size(n)}", n, True)

    cases = [Case(f"objects {format_size(n)}", _functools.partial(array_case, n))
             for n in ctx.sizes(DEFAULT_SIZES)]
    others = ((table, f"dict of {DICT_LEN} arrays of {format_size(DICT_ITEM * 8)}",
               DICT_LEN * DICT_ITEM * 8), (12345, "int", 0), ((1, 2.5, "three"), "tuple", 0))
    cases += [Case(f"objects {label}", _functools.partial(_case, ctx, comms, o, label, n, False))
              for o, label, n in others]
    return cases


def describe(ctx: Context) -> str:
    alts = "mpi4py pickle, mpi4py.util.pkl5" if ctx.raw is not None \
        else "multiprocessing Connection send/recv"
    return (f"Objects, lowercase send/recv ping-pong between 2 ranks, cmampi vs {alts}; "
            f"one-way time = round trip / 2. flt = minor page faults per receive on the "
            f"receiving rank in steady state: one-way messages after the timed rounds, each "
            f"object dropped before the next (glibc's malloc reuses freed blocks below its "
            f"adaptive mmap threshold, at most 32 MiB, without new faults).")
