"""Helpers shared by the benchmark scripts: sizes, test patterns, tables."""

from __future__ import annotations

import argparse
import time
from typing import Any, List

import numpy as np

__all__ = ["UNITS", "TAG", "DataError", "format_size", "markdown_table", "parse_size",
           "parse_sizes", "pattern", "pingpong", "poison_ends", "positive_int"]

#: Tag of the ping-pong messages.
TAG = 17


UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20,
         "g": 1 << 30, "gib": 1 << 30}


class DataError(RuntimeError):
    """An implementation delivered wrong data."""


def format_size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"


def markdown_table(header: List[str], rows: List[List[str]]) -> List[str]:
    """A pipe table, aligned for the terminal and valid Markdown (first column left)."""
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]

    def line(cells: List[str]) -> str:
        out = [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "| " + " | ".join(out) + " |"

    dashes = ["-" * (widths[0] + 2)] + ["-" * (w + 1) + ":" for w in widths[1:]]
    rule = "|" + "|".join(dashes) + "|"
    return [line(header), rule] + [line(r) for r in rows]


def parse_size(text: str) -> int:
    """'8', '1k', '16KiB', '1m', '64MiB' -> bytes (binary units)."""
    t = text.strip().lower()
    digits = t.rstrip("abcdefghijklmnopqrstuvwxyz ")
    unit = t[len(digits):].strip()
    if not digits.isdigit() or unit not in UNITS:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: expected e.g. 8, 1k, 16KiB, 4m")
    value = int(digits) * UNITS[unit]
    if value < 1:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: must be at least 1 byte")
    return value


def parse_sizes(text: str) -> List[int]:
    """A comma-separated list of sizes, deduplicated and sorted."""
    items = [s for s in text.split(",") if s.strip()]
    if not items:
        raise argparse.ArgumentTypeError("--sizes: expected a comma-separated list")
    return sorted({parse_size(s) for s in items})


def pattern(nbytes: int) -> np.ndarray:
    """Deterministic pseudo-random bytes, identical on both ranks."""
    return np.random.default_rng(nbytes).integers(0, 256, nbytes, dtype=np.uint8)


def poison_ends(rbuf: np.ndarray, expected: np.ndarray) -> None:
    """Make the first and last received byte wrong, so a stale buffer cannot pass."""
    rbuf[0] = expected[0] ^ 0xFF
    rbuf[-1] = expected[-1] ^ 0xFF


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def pingpong(comm: Any, rank: int, sbuf: np.ndarray, rbuf: np.ndarray, iters: int) -> float:
    """*iters* round trips over *comm* between ranks 0 and 1; rank 1 echoes what it got."""
    send, recv = comm.Send, comm.Recv
    t0 = time.perf_counter()
    if rank == 0:
        for _ in range(iters):
            send(sbuf, 1, TAG)
            recv(rbuf, 1, TAG)
    else:
        for _ in range(iters):
            recv(rbuf, 0, TAG)
            send(rbuf, 0, TAG)
    return time.perf_counter() - t0
