"""The measuring method: verify, warm up, calibrate, then interleaved rounds and medians."""

from __future__ import annotations

import dataclasses as _dataclasses
import gc as _gc
import math as _math
import time as _time
from collections.abc import Callable, Sequence

from ._common import Context, Result

__all__ = ["Impl", "measure", "repeated"]


def _nothing() -> None:
    pass


@_dataclasses.dataclass
class Impl:
    """One implementation of a case, as every rank runs it."""

    name: str
    #: Runs *n* iterations on every rank; this rank's elapsed seconds.
    run: Callable[[int], float]
    #: One iteration whose result is checked in full (raises DataError).
    verify: Callable[[], None]
    #: Before each timed block: poison the receive buffers.
    reset: Callable[[], None] = _nothing
    #: After each timed block: a cheap check of what it received.
    check: Callable[[], None] = _nothing


def repeated(call: Callable[[], object]) -> Callable[[int], float]:
    """An `Impl.run` that makes *call* *n* times: the seconds it took."""
    def run(n: int) -> float:
        t0 = _time.perf_counter()
        for _ in range(n):
            call()
        return _time.perf_counter() - t0
    return run


def _block(ctx: Context, impl: Impl, n: int) -> float:
    ctx.barrier()
    return impl.run(n)


def _calibrate(ctx: Context, impl: Impl) -> int:
    """Iterations so that a block of *impl* takes about ``timing.block_s``.

    Doubles a trial count until one block takes ``calibration_s``, then takes
    the fastest of ``calibration_trials`` blocks of that count, so one stall
    cannot shrink the blocks. Rank 0 decides, so every rank agrees.
    """
    t = ctx.timing
    if t.reps is not None:
        return t.reps
    n = 1
    while True:
        elapsed = _block(ctx, impl, n)
        if ctx.agree(elapsed >= t.calibration_s):
            break
        n *= 2
    for _ in range(t.calibration_trials - 1):
        elapsed = min(elapsed, _block(ctx, impl, n))
    return ctx.agree(max(t.min_iters, _math.ceil(n * t.block_s / max(elapsed, 1e-9))))


def measure(ctx: Context, impls: Sequence[Impl], per_iter: float = 1.0,
            **fields) -> Result:
    """Time *impls* in interleaved rounds; *fields* name the Result (bench, op, case, ...).

    Each implementation first runs one verified iteration and a few warm-up
    ones, then its iteration count is calibrated on its own (implementations
    can differ by orders of magnitude). Every round then runs each
    implementation's block once, in turn, after a barrier. A round's time is
    rank 0's block time / iterations / *per_iter* (2 for a ping-pong's one-way
    time, the window for a stream).
    """
    for impl in impls:
        ctx.barrier()
        impl.verify()
        _block(ctx, impl, ctx.timing.warmup_iters)
    iters = {impl.name: _calibrate(ctx, impl) for impl in impls}
    times: dict[str, list[float]] = {impl.name: [] for impl in impls}
    for _ in range(ctx.timing.rounds):
        for impl in impls:
            impl.reset()
            _gc.collect()
            elapsed = _block(ctx, impl, iters[impl.name])
            impl.check()
            times[impl.name].append(elapsed / iters[impl.name] / per_iter)
    return Result(times=times, iters=iters, **fields)
