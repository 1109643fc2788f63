"""Lowercase calls of small objects as programs make them: exchanges and collectives.

Every rank has one small object (a dict of three items). Ranks 0 and 1
exchange theirs (``irecv`` + ``isend``, each waited for; ``isend``, a blocking
``recv``, then the send waited for; ``sendrecv``; or a window of `WINDOW` of
each, completed by one ``waitall``);
the collectives run on every rank (root 0, ``SUM`` of ints for the
reductions). Time per call on rank 0. Every result is checked once per
implementation. Implementations: cmampi against mpi4py on the MPI channel;
cmampi alone on the socket channel.
"""

from __future__ import annotations

import functools as _functools
from collections.abc import Callable
from typing import Any

from ._common import CMAMPI, TAG, Case, Context, DataError, Result
from ._timing import Impl, measure, repeated

__all__ = ["CALLS", "describe", "plan"]

#: Messages each way of the exchange by a window.
WINDOW = 16
#: The exchanges between ranks 0 and 1, then the collectives.
EXCHANGES = ("isend+irecv", "isend+recv", "sendrecv", f"window of {WINDOW}")
CALLS = (*EXCHANGES, "bcast", "gather", "scatter", "allgather", "alltoall",
         "reduce", "allreduce", "scan")


def _small(key: int) -> dict:
    return {"rank": key, "x": 2.5, "tag": "small"}


def _call(comm: Any, MPI: Any, name: str, rank: int, size: int) -> Callable[[], Any]:
    """One call *name* on *comm* (of namespace *MPI*): a function returning what
    this rank gets."""
    mine = _small(rank)
    if name in EXCHANGES:
        if rank > 1:
            return lambda: None
        peer = 1 - rank
        if name == "sendrecv":
            return lambda: comm.sendrecv(mine, peer, TAG, None, peer, TAG)
        if name.startswith("window"):
            waitall = MPI.Request.waitall

            def window() -> Any:
                reqs = [comm.irecv(source=peer, tag=TAG) for _ in range(WINDOW)]
                reqs += [comm.isend(mine, peer, TAG) for _ in range(WINDOW)]
                got = waitall(reqs)     # WINDOW objects, then None for each send
                return got[0] if got == [got[0]] * WINDOW + [None] * WINDOW else got
            return window
        if name == "isend+recv":
            def send_first() -> Any:
                req = comm.isend(mine, peer, TAG)
                got = comm.recv(source=peer, tag=TAG)
                req.wait()
                return got
            return send_first

        def exchange() -> Any:
            req = comm.irecv(source=peer, tag=TAG)
            comm.isend(mine, peer, TAG).wait()
            return req.wait()
        return exchange
    items = [_small(rank * size + r) for r in range(size)]
    calls: dict[str, Callable[[], Any]] = {
        "bcast": lambda: comm.bcast(mine if rank == 0 else None, 0),
        "gather": lambda: comm.gather(mine, 0),
        "scatter": lambda: comm.scatter(items if rank == 0 else None, 0),
        "allgather": lambda: comm.allgather(mine),
        "alltoall": lambda: comm.alltoall(items),
        "reduce": lambda: comm.reduce(rank + 1, root=0),
        "allreduce": lambda: comm.allreduce(rank + 1),
        "scan": lambda: comm.scan(rank + 1),
    }
    return calls[name]


def _expected(name: str, rank: int, size: int) -> Any:
    if name in EXCHANGES:
        return None if rank > 1 else _small(1 - rank)
    total = size * (size + 1) // 2
    return {
        "bcast": _small(0),
        "gather": [_small(r) for r in range(size)] if rank == 0 else None,
        "scatter": _small(rank),
        "allgather": [_small(r) for r in range(size)],
        "alltoall": [_small(r * size + rank) for r in range(size)],
        "reduce": total if rank == 0 else None,
        "allreduce": total,
        "scan": (rank + 1) * (rank + 2) // 2,
    }[name]


def _case(ctx: Context, name: str) -> Result:
    rank, size = ctx.rank, ctx.size
    want = _expected(name, rank, size)

    def impl(impl_name: str, comm: Any) -> Impl:
        if impl_name == CMAMPI:
            MPI = ctx.MPI
        else:
            from mpi4py import MPI
        call = _call(comm, MPI, name, rank, size)

        def verify() -> None:
            got = call()
            if got != want:
                raise DataError(f"{impl_name}, {name}, rank {rank}: got {got!r}, "
                                f"expected {want!r}")

        return Impl(impl_name, repeated(call), verify)

    comms = {"mpi4py": ctx.raw, CMAMPI: ctx.comm} if ctx.raw is not None else {CMAMPI: ctx.comm}
    return measure(ctx, [impl(k, c) for k, c in comms.items()], bench="lowercase", op=name,
                   case=name, nbytes=0, sized=False)


def plan(ctx: Context) -> list[Case]:
    return [Case(f"lowercase {name}", _functools.partial(_case, ctx, name)) for name in CALLS]


def describe(ctx: Context) -> str:
    vs = "cmampi vs mpi4py" if ctx.raw is not None else "cmampi alone (no MPI to compare with)"
    return (f"Lowercase calls of one small object (a dict of 3 items) per rank on "
            f"{ctx.size} ranks, {vs}: ranks 0 and 1 exchanging (irecv + isend, each "
            f"waited for; isend, recv, wait; sendrecv; {WINDOW} irecv + {WINDOW} isend "
            f"and one waitall, per window), collectives of every rank "
            f"(root 0; reductions: SUM of ints); time per call on rank 0.")
