"""Ping-pong of numpy buffers (``Send``/``Recv``): one-way latency and bandwidth.

Contiguous: numpy ``uint8`` arrays; rank 0 sends, rank 1 receives and echoes
the received buffer back; one-way time = round trip / 2.

Strided: an N x N float64 matrix ``A`` on rank 0; the message is every other
column, ``A[:, ::2]``, received into every other column ``B[:, ::2]`` on rank
1. cmampi sends and receives the views directly. The alternative is what a
careful user writes: ``np.ascontiguousarray`` on the sender and a receive into
a contiguous temporary (allocated once) copied with ``B[:, ::2] = tmp``, both
inside the timing. Each iteration is the transfer 0 -> 1 and a zero-byte reply.
"""

from __future__ import annotations

import dataclasses as _dataclasses
import functools as _functools
import time as _time
from typing import Any

import numpy as _np

from ._common import (
    OURS,
    TAG,
    Case,
    Context,
    DataError,
    Result,
    check_array,
    format_size,
    pattern,
    poison_ends,
)
from ._timing import Impl, measure

__all__ = ["DEFAULT_SIZES", "describe", "pingpong", "plan"]

DEFAULT_SIZES = (8, 1 << 10, 16 << 10, 32 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20,
                 16 << 20, 64 << 20)
#: Order of the strided case's square matrix (64 MiB message), and with --quick.
STRIDED_N, QUICK_STRIDED_N = 4096, 256
SENTINEL = -1.0


def pingpong(comm: Any, rank: int, sbuf: Any, rbuf: Any, iters: int) -> float:
    """*iters* round trips over *comm* between ranks 0 and 1; rank 1 echoes what it got."""
    send, recv = comm.Send, comm.Recv
    t0 = _time.perf_counter()
    if rank == 0:
        for _ in range(iters):
            send(sbuf, 1, TAG)
            recv(rbuf, 1, TAG)
    else:
        for _ in range(iters):
            recv(rbuf, 0, TAG)
            send(rbuf, 0, TAG)
    return _time.perf_counter() - t0


# -- contiguous ----------------------------------------------------------------------------
def _contiguous(ctx: Context, nbytes: int) -> Result:
    rank = ctx.rank
    expected = pattern(nbytes)       # rank 0 sends it; both ranks check against it
    rbuf = _np.zeros(nbytes, dtype=_np.uint8)

    def impl(name: str, c: Any) -> Impl:
        where = f"{name}, {format_size(nbytes)} ping-pong, rank {rank}"

        def verify() -> None:
            rbuf.fill(0)
            pingpong(c, rank, expected, rbuf, 1)
            check_array(where, rbuf, expected, full=True)

        return Impl(name, lambda n: pingpong(c, rank, expected, rbuf, n), verify,
                    reset=lambda: poison_ends(rbuf, expected),
                    check=lambda: check_array(where, rbuf, expected, full=False))

    return measure(ctx, [impl(name, c) for name, c in ctx.comms.items()], per_iter=2,
                   bench="pingpong", op="contiguous", case=format_size(nbytes),
                   nbytes=nbytes, sized=True)


# -- strided -------------------------------------------------------------------------------
@_dataclasses.dataclass
class _Strided:
    """Rank 0 holds ``src``; rank 1 holds ``B``, ``dst`` = B[:, ::2], ``tmp``, ``expected``."""

    n: int
    empty: _np.ndarray
    src: _np.ndarray | None = None
    B: _np.ndarray | None = None
    dst: _np.ndarray | None = None
    tmp: _np.ndarray | None = None
    expected: _np.ndarray | None = None

    @classmethod
    def make(cls, rank: int, n: int) -> _Strided:
        b = cls(n, _np.empty(0, dtype=_np.uint8))
        if rank == 0:
            b.src = _np.arange(n * n, dtype=_np.float64).reshape(n, n)[:, ::2]  # A[i,j] = i*n+j
        else:
            b.B = _np.full((n, n), SENTINEL)
            b.dst = b.B[:, ::2]
            b.tmp = _np.zeros(b.dst.shape)
            b.expected = _np.add.outer(_np.arange(n, dtype=_np.float64) * n,
                                       _np.arange(0, n, 2, dtype=_np.float64))
        return b

    def transfer(self, direct: bool, c: Any, rank: int, iters: int) -> float:
        """*iters* transfers 0 -> 1 of A[:, ::2] into B[:, ::2], each closed by a reply."""
        t0 = _time.perf_counter()
        if rank == 0:
            for _ in range(iters):
                c.Send(self.src if direct else _np.ascontiguousarray(self.src), 1, TAG)
                c.Recv(self.empty, 1, TAG)
        else:
            assert self.dst is not None     # rank 1's arrays
            for _ in range(iters):
                if direct:
                    c.Recv(self.dst, 0, TAG)
                else:
                    c.Recv(self.tmp, 0, TAG)
                    self.dst[...] = self.tmp
                c.Send(self.empty, 0, TAG)
        return _time.perf_counter() - t0

    def reset(self, rank: int) -> None:
        if rank == 1:
            assert self.dst is not None     # rank 1's arrays
            self.dst[...] = 0.0

    def check(self, impl: str, rank: int) -> None:
        """On rank 1: B[:, ::2] must equal A[:, ::2], B[:, 1::2] must keep its sentinel."""
        if rank != 1:
            return
        where = f"{impl}, strided A[:, ::2] -> B[:, ::2], rank 1"
        assert self.dst is not None and self.B is not None  # rank 1's arrays
        for view, want, what in ((self.dst, self.expected, "received"),
                                 (self.B[:, 1::2], SENTINEL, "untouched")):
            bad = _np.argwhere(view != want)
            if bad.size:
                i, j = bad[0]
                raise DataError(f"{where}: {len(bad)} {what} elements wrong, the first "
                                f"at B[{i}, {2 * j + (what == 'untouched')}]: "
                                f"{float(view[i, j])}")


def _strided(ctx: Context) -> Result:
    rank = ctx.rank
    b = _Strided.make(rank, QUICK_STRIDED_N if ctx.args.quick else STRIDED_N)

    def impl(name: str, c: Any) -> Impl:
        direct = name in OURS    # cmampi moves the views; the others pack

        def verify() -> None:
            b.reset(rank)
            b.transfer(direct, c, rank, 1)
            b.check(name, rank)

        return Impl(name, lambda n: b.transfer(direct, c, rank, n), verify,
                    reset=lambda: b.reset(rank), check=lambda: b.check(name, rank))

    n = b.n
    return measure(ctx, [impl(name, c) for name, c in ctx.comms.items()],
                   bench="pingpong", op="strided", nbytes=n * (n // 2) * 8, sized=False,
                   case=f"{n}x{n} float64, A[:, ::2] -> B[:, ::2]")


def plan(ctx: Context) -> list[Case]:
    cases = [Case(f"pingpong {format_size(n)}", _functools.partial(_contiguous, ctx, n))
             for n in ctx.sizes(DEFAULT_SIZES)]
    if not ctx.args.skip_strided:
        cases.append(Case("pingpong strided", lambda: _strided(ctx)))
    return cases


def describe(ctx: Context) -> str:
    return ("Ping-pong, numpy arrays, Send/Recv between 2 ranks; one-way time = round trip "
            "/ 2 (contiguous uint8) or transfer + zero-byte reply (strided: every other "
            "column of a float64 matrix into every other column; the alternative packs with "
            "np.ascontiguousarray and unpacks from a temporary, cmampi moves the views).")
