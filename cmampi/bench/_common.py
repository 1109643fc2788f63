"""What every benchmark shares: sizes, test data and its checks, results, the run context."""

from __future__ import annotations

import argparse as _argparse
import dataclasses as _dataclasses
import statistics as _statistics
import zlib as _zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as _np

__all__ = [
    "CMAMPI",
    "OURS",
    "SOCKET",
    "TAG",
    "Case",
    "Context",
    "DataError",
    "Result",
    "Timing",
    "check_array",
    "format_size",
    "parse_size",
    "parse_sizes",
    "pattern",
    "poison_ends",
    "positive_int",
]

#: Tag of the benchmark messages.
TAG = 17
#: The implementation every other one is compared with.
CMAMPI = "cmampi"
#: cmampi over its socket channel, beside the MPI one (``--socket``).
SOCKET = "socket"
#: The columns that are cmampi, on either channel: they move views as they are.
OURS = (CMAMPI, SOCKET)

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20,
          "g": 1 << 30, "gib": 1 << 30}


class DataError(RuntimeError):
    """An implementation delivered wrong data."""


# -- sizes and command-line values ---------------------------------------------------------
def format_size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"


def parse_size(text: str) -> int:
    """'8', '1k', '16KiB', '1m', '64MiB' -> bytes (binary units)."""
    t = text.strip().lower()
    digits = t.rstrip("abcdefghijklmnopqrstuvwxyz ")
    unit = t[len(digits):].strip()
    if not digits.isdigit() or unit not in _UNITS:
        raise _argparse.ArgumentTypeError(f"bad size {text!r}: expected e.g. 8, 1k, 16KiB, 4m")
    value = int(digits) * _UNITS[unit]
    if value < 1:
        raise _argparse.ArgumentTypeError(f"bad size {text!r}: must be at least 1 byte")
    return value


def parse_sizes(text: str) -> list[int]:
    """A comma-separated list of sizes, deduplicated and sorted."""
    items = [s for s in text.split(",") if s.strip()]
    if not items:
        raise _argparse.ArgumentTypeError("expected a comma-separated list of sizes")
    return sorted({parse_size(s) for s in items})


def positive_int(text: str) -> int:
    value = int(text) if text.strip().isdigit() else 0
    if value < 1:
        raise _argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


# -- test data -----------------------------------------------------------------------------
def pattern(nbytes: int) -> _np.ndarray:
    """Deterministic pseudo-random bytes, identical on every rank."""
    return _np.random.default_rng(nbytes).integers(0, 256, nbytes, dtype=_np.uint8)


def poison_ends(rbuf: _np.ndarray, expected: _np.ndarray) -> None:
    """Make the first and last received byte wrong, so a stale buffer cannot pass."""
    rbuf[0] = expected[0] ^ 0xFF
    rbuf[-1] = expected[-1] ^ 0xFF


def check_array(where: str, got: Any, expected: _np.ndarray, full: bool) -> None:
    """*got* must be *expected*: type, dtype and shape, then both ends or (*full*) a CRC-32."""
    if not isinstance(got, _np.ndarray) or got.dtype != expected.dtype \
            or got.shape != expected.shape:
        raise DataError(f"{where}: received {type(got).__name__} {getattr(got, 'dtype', '')} "
                        f"{getattr(got, 'shape', '')}, expected {expected.dtype} "
                        f"{expected.shape}")
    flat, want = got.reshape(-1).view(_np.uint8), expected.reshape(-1).view(_np.uint8)
    for i in (0, flat.size - 1):
        if flat[i] != want[i]:
            raise DataError(f"{where}: byte {i} is {flat[i]}, expected {want[i]}")
    # numpy's stubs make an ndarray a Buffer (for crc32) only on Python 3.12 and later.
    if full and _zlib.crc32(flat) != _zlib.crc32(want):  # type: ignore[arg-type]  # numpy's stubs
        bad = _np.flatnonzero(flat != want)
        raise DataError(f"{where}: CRC-32 differs; {bad.size} of {flat.size} bytes wrong, "
                        f"the first at {bad[0]}: {flat[bad[0]]}, expected {want[bad[0]]}")


# -- results ---------------------------------------------------------------------------------
@_dataclasses.dataclass
class Result:
    """Per-round times (seconds per operation) of every implementation for one case."""

    bench: str                      # subcommand: pingpong, bandwidth, collectives, objects
    op: str                         # what runs: contiguous, strided, Allreduce, array, ...
    case: str                       # the row's label: "1 KiB", "dict of 100 arrays", ...
    nbytes: int                     # payload bytes per operation (per rank for collectives)
    sized: bool                     # a point of a size sweep (plotted), not a one-off case
    times: dict[str, list[float]]
    iters: dict[str, int]
    extra: dict[str, dict[str, float]] = _dataclasses.field(default_factory=dict)

    @property
    def impls(self) -> list[str]:
        return list(self.times)

    def median(self, impl: str) -> float:
        return _statistics.median(self.times[impl])

    def gbps(self, impl: str) -> float:
        return self.nbytes / self.median(impl) / 1e9

    def ratio(self, impl: str) -> float:
        """*impl*'s time / cmampi's time: above 1 when cmampi is faster."""
        return self.median(impl) / self.median(CMAMPI)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"bench": self.bench, "op": self.op, "case": self.case,
                               "size_bytes": self.nbytes, "sized": self.sized}
        for impl in self.impls:
            us = [t * 1e6 for t in self.times[impl]]
            entry = {"median_us": self.median(impl) * 1e6, "min_us": min(us), "max_us": max(us),
                     "gbps": self.gbps(impl), "iters_per_round": self.iters[impl],
                     "rounds_us": us, **self.extra.get(impl, {})}
            if impl != CMAMPI:
                entry["ratio"] = self.ratio(impl)
            out[impl] = entry
        return out


# -- the run ---------------------------------------------------------------------------------
@_dataclasses.dataclass(frozen=True)
class Timing:
    """How long the timed blocks are and how many there are."""

    rounds: int = 7                 # interleaved rounds; the median is reported
    block_s: float = 0.05           # calibrated length of one implementation's block
    calibration_s: float = 0.01     # calibration doubles its count until a block is this long
    calibration_trials: int = 3     # blocks at the final count; the fastest sets the length
    min_iters: int = 5
    warmup_iters: int = 3
    reps: int | None = None      # a fixed count per block instead of calibrating


@_dataclasses.dataclass
class Context:
    """The communicators of one run and how to time on them."""

    MPI: Any                        # cmampi.MPI
    comm: Any                       # cmampi's COMM_WORLD
    raw: Any                        # the mpi4py communicator it wraps (MPI channel), or None
    pipe: Any                       # a multiprocessing Connection 0 <-> 1 (socket channel)
    #: Buffer implementations by name, the alternative first and cmampi last:
    #: mpi4py on the MPI channel, the Connection (``_pipe.PipeComm``) on the socket one.
    comms: dict[str, Any]
    args: _argparse.Namespace
    timing: Timing

    @property
    def rank(self) -> int:
        return self.comm.Get_rank()

    @property
    def size(self) -> int:
        return self.comm.Get_size()

    @property
    def channel(self) -> str:
        return self.MPI.CHANNEL

    def barrier(self) -> None:
        """Line the ranks up before a timed block (through MPI itself when there is MPI)."""
        (self.raw if self.raw is not None else self.comm).Barrier()

    def agree(self, value: Any) -> Any:
        """Rank 0's *value*, on every rank."""
        return self.comm.bcast(value, root=0)

    def sizes(self, default: Sequence[int]) -> list[int]:
        return list(self.args.sizes) if self.args.sizes else list(default)


@_dataclasses.dataclass
class Case:
    """One row of a benchmark, not yet run: *label* for the progress bar, *run* makes it."""

    label: str
    run: Callable[[], Result]
