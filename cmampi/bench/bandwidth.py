"""Streaming bandwidth: a window of nonblocking sends in flight, then a tiny ack.

Rank 0 posts ``--window`` ``Isend``s of the same numpy ``uint8`` buffer and
waits for all of them; rank 1 posts as many ``Irecv``s, each into a buffer of
its own (pending receives must not share a buffer), waits, and answers with a
one-byte ack. Time per message = iteration time / window. Large messages get a
smaller window, so that the receive buffers stay within WINDOW_BYTES.
"""

from __future__ import annotations

import functools as _functools
import time as _time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as _np

from ._common import (
    OURS,
    TAG,
    Case,
    Context,
    Result,
    check_array,
    format_size,
    pattern,
    poison_ends,
)
from ._timing import Impl, measure

__all__ = ["DEFAULT_SIZES", "WINDOW", "describe", "plan", "stream", "window_for"]

DEFAULT_SIZES = (8, 1 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20,
                 64 << 20)
#: Messages in flight per iteration, unless --window says otherwise.
WINDOW = 16
#: Most bytes of receive buffers a window may use (at least 2 messages stay in flight).
WINDOW_BYTES = 256 << 20


def window_for(nbytes: int, window: int) -> int:
    """The window for *nbytes* messages: at most *window*, within WINDOW_BYTES."""
    return max(1, min(window, max(2, WINDOW_BYTES // nbytes)))


def stream(comm: Any, waitall: Callable[[Any], Any], rank: int, sbuf: Any,
           rbufs: Sequence[Any], ack: Any, window: int, iters: int) -> float:
    """*iters* windows of *window* messages 0 -> 1 (into *rbufs* on rank 1), each acked."""
    isend, irecv = comm.Isend, comm.Irecv
    t0 = _time.perf_counter()
    if rank == 0:
        for _ in range(iters):
            waitall([isend(sbuf, 1, TAG) for _ in range(window)])
            comm.Recv(ack, 1, TAG)
    else:
        for _ in range(iters):
            waitall([irecv(rbuf, 0, TAG) for rbuf in rbufs])
            comm.Send(ack, 0, TAG)
    return _time.perf_counter() - t0


def _waitall(ctx: Context, name: str, c: Any) -> Callable[[Any], Any]:
    """Each implementation completes its requests with its own ``Waitall``."""
    if name in OURS:      # cmampi's requests, on either channel
        return ctx.MPI.Request.Waitall
    if name == "mpi4py":
        from mpi4py import MPI

        return MPI.Request.Waitall
    return c.Waitall


def _case(ctx: Context, nbytes: int) -> Result:
    rank, window = ctx.rank, window_for(nbytes, ctx.args.window)
    expected = pattern(nbytes)
    rbufs = [_np.zeros(nbytes, dtype=_np.uint8) for _ in range(window if rank == 1 else 0)]
    ack = _np.zeros(1, dtype=_np.uint8)

    def impl(name: str, c: Any) -> Impl:
        where = f"{name}, {format_size(nbytes)} stream, rank {rank}"
        waitall = _waitall(ctx, name, c)

        def run(n: int) -> float:
            return stream(c, waitall, rank, expected, rbufs, ack, window, n)

        def verify() -> None:
            for rbuf in rbufs:
                rbuf.fill(0)
            run(1)
            for rbuf in rbufs:
                check_array(where, rbuf, expected, full=True)

        def reset() -> None:
            for rbuf in rbufs:
                poison_ends(rbuf, expected)

        def check() -> None:
            for rbuf in rbufs:
                check_array(where, rbuf, expected, full=False)

        return Impl(name, run, verify, reset=reset, check=check)

    label = format_size(nbytes) + ("" if window == ctx.args.window else f" (window {window})")
    return measure(ctx, [impl(name, c) for name, c in ctx.comms.items()], per_iter=window,
                   bench="bandwidth", op="stream", case=label, nbytes=nbytes, sized=True)


def plan(ctx: Context) -> list[Case]:
    return [Case(f"bandwidth {format_size(n)}", _functools.partial(_case, ctx, n))
            for n in ctx.sizes(DEFAULT_SIZES)]


def describe(ctx: Context) -> str:
    w = ctx.args.window
    pipe = (f" A multiprocessing Connection has no nonblocking calls: its window is {w} "
            f"back-to-back send_bytes/recv_bytes_into.") if ctx.raw is None else ""
    return (f"Streaming, numpy uint8 arrays, rank 0 -> rank 1: windows of {w} Isend/Irecv in "
            f"flight (each receive into its own buffer; fewer above "
            f"{format_size(WINDOW_BYTES // w)}), Waitall, then a 1-byte ack; time per "
            f"message = window time / window.{pipe}")
