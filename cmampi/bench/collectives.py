"""Buffer collectives on float64 arrays: cmampi against mpi4py (MPI channel).

Sizes are bytes of float64 per rank (the block each rank contributes or gets).
Rank r contributes ``base + r`` (``base`` the same on every rank), so every
rank can compute what it must receive; every result is checked once per size
and implementation. On the socket channel cmampi runs alone.
"""

from __future__ import annotations

import functools as _functools
from collections.abc import Callable
from typing import Any

import numpy as _np

from ._common import CMAMPI, Case, Context, DataError, Result, format_size
from ._timing import Impl, measure, repeated

__all__ = ["COLLECTIVES", "DEFAULT_SIZES", "describe", "plan"]

COLLECTIVES = ("Barrier", "Bcast", "Gather", "Scatter", "Allgather", "Alltoall", "Reduce",
               "Allreduce")
DEFAULT_SIZES = (8, 1 << 10, 64 << 10, 1 << 20, 16 << 20)


#: (the call, its result buffer, the expected result or None where this rank gets nothing)
_Setup = tuple[Callable[[], None], _np.ndarray | None, _np.ndarray | None]


def _setup(comm: Any, name: str, nbytes: int, sum_op: Any) -> _Setup:
    """One collective on *comm*, its buffers allocated and filled."""
    size, rank = comm.Get_size(), comm.Get_rank()
    n = max(1, nbytes // 8)
    base = _np.random.default_rng(nbytes).random(n)
    ranks = _np.arange(size, dtype=_np.float64)
    every = (base[None, :] + ranks[:, None]).reshape(-1)     # rank r's block: base + r
    mine = base + rank
    one, many = _np.zeros(n), _np.zeros(n * size)
    root = rank == 0
    if name == "Barrier":
        return comm.Barrier, None, None
    if name == "Bcast":
        if root:
            one[:] = base
        return lambda: comm.Bcast(one, root=0), one, base
    if name == "Gather":
        return lambda: comm.Gather(mine, many, root=0), many, every if root else None
    if name == "Scatter":
        if root:
            many[:] = every
        return lambda: comm.Scatter(many, one, root=0), one, mine
    if name == "Allgather":
        return lambda: comm.Allgather(mine, many), many, every
    if name == "Alltoall":
        # Block j of rank r's message is base + (r * size + j): rank q gets base + r*size + q.
        out = (base[None, :] + (rank * size + ranks)[:, None]).reshape(-1)
        want = (base[None, :] + (ranks * size + rank)[:, None]).reshape(-1)
        return lambda: comm.Alltoall(out, many), many, want
    total = size * base + ranks.sum()
    if name == "Reduce":
        return lambda: comm.Reduce(mine, one, op=sum_op, root=0), one, total if root else None
    if name == "Allreduce":
        return lambda: comm.Allreduce(mine, one, op=sum_op), one, total
    raise ValueError(f"unknown collective {name!r}")


def _case(ctx: Context, name: str, nbytes: int) -> Result:
    rank = ctx.rank

    def impl(impl_name: str, comm: Any) -> Impl:
        # On the MPI channel cmampi's MPI.SUM is mpi4py's.
        call, got, want = _setup(comm, name, nbytes, ctx.MPI.SUM)

        def verify() -> None:
            if got is not None and not (name == "Bcast" and rank == 0):
                got.fill(0.0)
            call()
            if want is None:        # nothing to check on this rank
                return
            assert got is not None  # only Barrier has no result, and nothing to check
            if not _np.allclose(got, want, rtol=1e-12, atol=0.0):
                bad = _np.flatnonzero(~_np.isclose(got, want, rtol=1e-12, atol=0.0))
                raise DataError(f"{impl_name}, {name} {format_size(nbytes)}, rank {rank}: "
                                f"{bad.size} of {got.size} elements wrong, the first at "
                                f"{bad[0]}: {got[bad[0]]}, expected {want[bad[0]]}")

        return Impl(impl_name, repeated(call), verify)

    comms = {"mpi4py": ctx.raw, CMAMPI: ctx.comm} if ctx.raw is not None else {CMAMPI: ctx.comm}
    sized = name != "Barrier"
    return measure(ctx, [impl(k, c) for k, c in comms.items()], bench="collectives", op=name,
                   case=format_size(nbytes) if sized else "-", nbytes=nbytes, sized=sized)


def plan(ctx: Context) -> list[Case]:
    names = ctx.args.only or COLLECTIVES
    cases = []
    for name in names:
        for n in ctx.sizes(DEFAULT_SIZES) if name != "Barrier" else [0]:
            label = f"{name} {format_size(n)}" if n else name
            cases.append(Case(label, _functools.partial(_case, ctx, name, n)))
    return cases


def describe(ctx: Context) -> str:
    vs = "cmampi vs mpi4py" if ctx.raw is not None else "cmampi alone (no MPI to compare with)"
    return (f"Collectives on {ctx.size} ranks, float64, {vs}; size = bytes per rank; "
            f"time per call on rank 0; Reduce and Allreduce with SUM, root 0.")

