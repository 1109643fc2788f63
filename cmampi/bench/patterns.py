"""Call patterns of real programs: buffer specs, ``bytearray``/``mmap`` buffers, windows.

Ping-pong (one-way time = round trip / 2) with the buffer forms programs pass:
``[numpy array, n, MPI.BYTE]``, a bare ``bytearray``, ``[mmap, n, MPI.BYTE]``,
and bare numpy arrays whose receive buffer starts 16 bytes further into its page
than the send buffer, as two arrays from ``malloc`` often do ("shifted"; the
bare numpy array is ``pingpong``'s row). Windows: rank 0 posts 64
``Isend`` of one buffer, rank 1 64 ``Irecv`` into one buffer (as benchmark
programs do), ``Waitall``, then a 4-byte ack (time per message = window time /
64); and both directions at once: each rank posts 64 ``Irecv`` and 64 ``Isend``
and waits for all 128 (time per message pair = window time / 64). Exchanges,
as halo exchanges and ring shifts do them: both ranks call ``Sendrecv``, or post
one ``Irecv`` and one ``Isend`` and ``Waitall`` them (time per exchange). Each
implementation completes its requests with its own ``Request.Waitall``.
"""

from __future__ import annotations

import functools as _functools
import mmap as _mmap
import time as _time
from collections.abc import Callable
from typing import Any

import numpy as _np

from ._common import OURS, TAG, Case, Context, DataError, Result, format_size, pattern
from ._timing import Impl, measure
from .pingpong import pingpong

__all__ = ["DEFAULT_SIZES", "FORMS", "WINDOW", "describe", "plan"]

DEFAULT_SIZES = (8, 64 << 10, 1 << 20, 4 << 20)
#: Requests in flight per window, per direction.
WINDOW = 64
#: Buffer forms of the ping-pong rows: name -> (make a buffer of n bytes, its spec).
FORMS = ("spec", "bytearray", "mmap", "shifted")
#: Where the "shifted" form's buffers start in their pages: the receive buffer 16
#: bytes further in than the send buffer, as two arrays from ``malloc`` often lie
#: (the kernel's copy between them runs several times slower: `_cma.aliased`).
SHIFTED = (64, 80)


def _namespace(name: str, ctx: Context) -> Any:
    """The MPI namespace whose datatypes and requests *name*'s communicator takes."""
    if name in OURS:
        return ctx.MPI
    from mpi4py import MPI

    return MPI


class _Buffers:
    """A send and a receive buffer of one form, their specs, and the received bytes."""

    def __init__(self, form: str, nbytes: int, MPI: Any) -> None:
        self.form, self.nbytes = form, nbytes
        self.expected = pattern(nbytes)
        self.send_mem, self.recv_mem = self._make(SHIFTED[0]), self._make(SHIFTED[1])
        self._bytes(self.send_mem)[:] = self.expected
        self.send, self.recv = self._spec(self.send_mem, MPI), self._spec(self.recv_mem, MPI)

    def _make(self, offset: int) -> Any:
        if self.form == "bytearray":
            return bytearray(self.nbytes)
        if self.form == "mmap":
            return _mmap.mmap(-1, self.nbytes)
        if self.form == "shifted":     # a numpy array *offset* bytes into a fresh page
            whole = _np.frombuffer(_mmap.mmap(-1, self.nbytes + _mmap.PAGESIZE), _np.uint8)
            return whole[offset:offset + self.nbytes]
        return _np.zeros(self.nbytes, _np.uint8)

    def _spec(self, mem: Any, MPI: Any) -> Any:
        return [mem, self.nbytes, MPI.BYTE] if self.form in ("spec", "mmap") else mem

    def _bytes(self, mem: Any) -> _np.ndarray:
        return _np.frombuffer(mem, _np.uint8, self.nbytes)

    def received(self) -> _np.ndarray:
        return self._bytes(self.recv_mem)


def _check(where: str, got: _np.ndarray, expected: _np.ndarray) -> None:
    if not _np.array_equal(got, expected):
        bad = _np.flatnonzero(got != expected)
        raise DataError(f"{where}: {bad.size} of {got.size} bytes wrong, the first at "
                        f"{bad[0]}: {got[bad[0]]}, expected {expected[bad[0]]}")


# -- ping-pong of buffer forms ---------------------------------------------------------------
def _pingpong(ctx: Context, form: str, nbytes: int) -> Result:
    rank = ctx.rank

    def impl(name: str, c: Any) -> Impl:
        b = _Buffers(form, nbytes, _namespace(name, ctx))
        where = f"{name}, {format_size(nbytes)} ping-pong of {form}, rank {rank}"

        def run(iters: int) -> float:    # rank 1 echoes what it received
            return pingpong(c, rank, b.send, b.recv, iters)

        def verify() -> None:
            b.received()[:] = 0
            run(1)
            _check(where, b.received(), b.expected)

        return Impl(name, run, verify)

    return measure(ctx, [impl(n, c) for n, c in _comms(ctx).items()], per_iter=2,
                   bench="patterns", op=f"pingpong {form}", case=format_size(nbytes),
                   nbytes=nbytes, sized=True)


# -- windows -----------------------------------------------------------------------------------
#: How a stream's windows complete, besides ``Waitall`` (`_completion`).
COMPLETIONS = ("Wait each", "Waitall statuses", "Waitany", "Testsome")


def _completion(MPI: Any, comm: Any, how: str) -> Callable[[list], None]:
    """A function completing a window's requests of *comm* as *how* names it:
    ``Waitall``; ``Wait`` of each in turn; ``Waitall`` with a list of statuses;
    ``Waitany`` until all are done; ``Testsome`` until all are done."""
    Request = MPI.Request
    if how == "Waitall":
        return Request.Waitall
    if how == "Wait each":
        def wait_each(requests: list) -> None:
            for req in requests:
                req.Wait()
        return wait_each
    if how == "Waitall statuses":
        # the statuses of the communicator's own names (a socket channel's, beside
        # the MPI channel in one process, are not the MPI library's)
        engine = getattr(comm, "_engine", None)
        Status = engine.names.Status if engine is not None else MPI.Status
        statuses = [Status() for _ in range(WINDOW)]
        return lambda requests: Request.Waitall(requests, statuses)
    if how == "Waitany":
        def wait_any(requests: list) -> None:
            for _ in requests:
                Request.Waitany(requests)
        return wait_any

    def test_some(requests: list) -> None:
        done = 0
        while done < len(requests):
            done += len(Request.Testsome(requests) or ())
    return test_some


def _stream(ctx: Context, nbytes: int, form: str = "numpy", how: str = "Waitall") -> Result:
    """The stream of `WINDOW` messages into one buffer, each window completed on
    both ranks as *how* names it (`_completion`)."""
    rank = ctx.rank

    def impl(name: str, c: Any) -> Impl:
        MPI = _namespace(name, ctx)
        b = _Buffers(form, nbytes, MPI)
        ack = bytearray(4)
        waitall = _completion(MPI, c, how)
        where = f"{name}, {format_size(nbytes)} stream of {WINDOW} into one buffer, rank {rank}"

        def run(iters: int) -> float:
            isend, irecv, sbuf, rbuf = c.Isend, c.Irecv, b.send, b.recv
            t0 = _time.perf_counter()
            if rank == 0:
                for _ in range(iters):
                    waitall([isend(sbuf, 1, TAG) for _ in range(WINDOW)])
                    c.Recv(ack, 1, TAG + 1)
            else:
                for _ in range(iters):
                    waitall([irecv(rbuf, 0, TAG) for _ in range(WINDOW)])
                    c.Send(ack, 0, TAG + 1)
            return _time.perf_counter() - t0

        def verify() -> None:
            b.received()[:] = 0
            run(1)
            if rank == 1:
                _check(where, b.received(), b.expected)

        return Impl(name, run, verify)

    label = "stream" if form == "numpy" else f"stream {form}"
    label += f" {how}" if how != "Waitall" else ""
    return measure(ctx, [impl(n, c) for n, c in _comms(ctx).items()], per_iter=WINDOW,
                   bench="patterns", op=f"{label} {WINDOW} x one buffer",
                   case=format_size(nbytes), nbytes=nbytes, sized=True)


def _both_ways(ctx: Context, nbytes: int, op: str, per_iter: int,
               body: Callable[[Any, Any, Any, Any, int, int], None]) -> Result:
    """A pattern both ranks run at once, each sending to the other and receiving
    from it: *body*(comm, MPI, send spec, receive spec, peer, iterations)."""
    rank = ctx.rank
    peer = 1 - rank

    def impl(name: str, c: Any) -> Impl:
        MPI = _namespace(name, ctx)
        b = _Buffers("numpy", nbytes, MPI)
        where = f"{name}, {format_size(nbytes)} {op}, rank {rank}"

        def run(iters: int) -> float:
            t0 = _time.perf_counter()
            body(c, MPI, b.send, b.recv, peer, iters)
            return _time.perf_counter() - t0

        def verify() -> None:
            b.received()[:] = 0
            run(1)
            _check(where, b.received(), b.expected)

        return Impl(name, run, verify)

    return measure(ctx, [impl(n, c) for n, c in _comms(ctx).items()], per_iter=per_iter,
                   bench="patterns", op=op, case=format_size(nbytes), nbytes=nbytes, sized=True)


def _windows_both_ways(c: Any, MPI: Any, sbuf: Any, rbuf: Any, peer: int, iters: int) -> None:
    isend, irecv, waitall = c.Isend, c.Irecv, MPI.Request.Waitall
    for _ in range(iters):
        reqs = [irecv(rbuf, peer, TAG) for _ in range(WINDOW)]
        reqs += [isend(sbuf, peer, TAG) for _ in range(WINDOW)]
        waitall(reqs)


def _sendrecv(c: Any, MPI: Any, sbuf: Any, rbuf: Any, peer: int, iters: int) -> None:
    sendrecv = c.Sendrecv
    for _ in range(iters):
        sendrecv(sbuf, peer, TAG, rbuf, peer, TAG)


def _irecv_isend(c: Any, MPI: Any, sbuf: Any, rbuf: Any, peer: int, iters: int) -> None:
    isend, irecv, waitall = c.Isend, c.Irecv, MPI.Request.Waitall
    for _ in range(iters):
        waitall([irecv(rbuf, peer, TAG), isend(sbuf, peer, TAG)])


def _comms(ctx: Context) -> dict:
    """The implementations with nonblocking calls and MPI buffer specs (not a Connection)."""
    return {name: c for name, c in ctx.comms.items() if c is not None and name != "pipe"}


def plan(ctx: Context) -> list[Case]:
    sizes = ctx.sizes(DEFAULT_SIZES)
    cases: list[Case] = []
    run: Callable[[Context, int], Result]
    for form in FORMS:
        cases += [Case(f"patterns pingpong {form} {format_size(n)}",
                       _functools.partial(_pingpong, ctx, form, n)) for n in sizes]
    both = _functools.partial
    streams: tuple[tuple[str, Callable[[Context, int], Result]], ...] = (
               ("stream", _stream),
               ("stream spec", _functools.partial(_stream, form="spec")),
               *((f"stream {how}", _functools.partial(_stream, how=how)) for how in COMPLETIONS),
               ("bidirectional", both(_both_ways, op=f"bidirectional {WINDOW}+{WINDOW}",
                                      per_iter=WINDOW, body=_windows_both_ways)),
               ("exchange Sendrecv", both(_both_ways, op="exchange Sendrecv", per_iter=1,
                                          body=_sendrecv)),
               ("exchange Irecv+Isend", both(_both_ways, op="exchange Irecv+Isend",
                                             per_iter=1, body=_irecv_isend)))
    for label, run in streams:
        cases += [Case(f"patterns {label} {format_size(n)}", _functools.partial(run, ctx, n))
                  for n in sizes]
    return cases


def describe(ctx: Context) -> str:
    return ("Users' call patterns between 2 ranks: ping-pong of [numpy, n, MPI.BYTE] specs, "
            "bytearrays, [mmap, n, MPI.BYTE] specs and numpy arrays whose receive buffer "
            f"starts {SHIFTED[1] - SHIFTED[0]} bytes further into its page than the send "
            f"buffer (shifted); a stream of {WINDOW} Isend of one "
            f"buffer into {WINDOW} Irecv of one buffer, then a 4-byte ack (per message), of "
            "numpy arrays and of [numpy, n, MPI.BYTE] specs, and of numpy arrays whose "
            "windows complete otherwise than by Waitall (Wait of each request in turn, "
            "Waitall with statuses, Waitany or Testsome until all are done); "
            f"both directions at once, {WINDOW} Irecv + {WINDOW} Isend per rank (per message "
            "pair); exchanges by Sendrecv and by Irecv + Isend + Waitall (per exchange). "
            "The alternative: plain mpi4py (on the socket channel cmampi runs alone).")
