"""Soak: random traffic between every pair of ranks, every message checked.

Run with any number of ranks (four is the intended case)::

    mpiexec -n 4 python -m cmampi.bench.soak [--seconds 180] [--seed 1] [--max-size 4m]
    python -m cmampi -n 4 -m cmampi.bench.soak [--seconds 180] [--seed 1] [--max-size 4m]

``--mpi4py`` runs the same traffic over plain mpi4py (contiguous buffers only,
no float16), to check the harness against the reference.

The traffic is a sequence of rounds. Every rank derives a round's message list
from ``(seed, round)``, so each knows what it must send, what it must receive,
and in which order the messages of one (source, tag) stream must arrive;
choices only the receiver cares about (wildcards, buffer layouts, how it
completes its requests) come from a generator of its own. Sizes run from 0 to
``--max-size``, mostly small and medium, with the protocol boundaries (eager
limit, control band, each channel's pull threshold, cooperative copy) drawn on
purpose. A message's bytes are a stamp (source, message id) followed by a
window of a random pool chosen by the same pair; every received message is
checked: its status (source, tag, byte count), the CRC-32 of its content, its
place in its stream (MPI's non-overtaking rule), and that no byte outside it
changed (the gaps of strided buffers, the slack of larger ones).

A round has four phases, each on its own duplicate of the communicator, so a
wildcard receive of one phase never matches a message of another; an
allreduce ends every round, so none matches a message of the next round, and
carries rank 0's decision to stop.

1. storm: each rank posts nonblocking receives for all its incoming messages,
   then sends with ``Isend``, ``Issend``, ``Send`` or ``Ssend``, then completes
   everything with ``Waitall``, a ``Waitany`` loop or a ``Testsome`` loop;
2. blocking: each rank starts its sends (``Isend``, ``Issend``), then receives
   with blocking ``Recv``, some after a ``Probe`` that sizes the buffer;
3. ring: ``Sendrecv`` with a random shift, twice;
4. objects: dicts of numpy arrays (C, Fortran or strided; in band and out of
   band) sent with ``isend``/``issend``, received with ``recv`` or ``irecv``;
5. windows, as benchmark programs post them: every rank sends to a peer a
   window of 1-64 ``Isend`` of one buffer while receiving a window from
   another with as many ``Irecv`` into one buffer (both directions at once),
   plus one fire-and-forget ``Isend`` whose request is dropped at once (the
   message is drained afterwards by a matched probe and its receive) and one
   object; everything posted is completed by one ``Waitall`` of the mixed
   list (buffer and object requests), after a small ``Allreduce`` made while
   it is all in flight.

No phase can deadlock under MPI semantics: a blocking send only ever targets a
receive posted before any send of its phase, and blocking receives only wait
for messages whose (nonblocking) sends were started first. Wildcards cannot
strand a message either: a receiver picks one kind per phase (``ANY_SOURCE``,
``ANY_TAG`` or both), receives the head of each stream with specific receives
and the rest with wildcard ones posted after them, so whatever the arrival
order every message finds a receive.

Rank 0 prints messages, bytes, throughput and errors; the exit status is 1 if
any message was lost or corrupted. ``tests/test_stress.py`` runs the same
rounds for at least 20 000 messages.
"""

from __future__ import annotations

import argparse
import collections
import faulthandler
import math
import os
import struct
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from cmampi import _wire
from cmampi._config import CMA_MIN_DEFAULTS, config
from cmampi._tuning import CMA_MIN_BUSY_DEFAULTS

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

__all__ = ["DTYPES", "Msg", "Soak", "Stats", "boundary_sizes"]

DTYPES = ("u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f2", "f4", "f8", "c8", "c16")
#: 32767 is the smallest TAG_UB MPI allows.
TAGS = (0, 1, 2, 3, 5, 8, 13, 32767)
RING_TAG = 100
WINDOW_TAG, DROPPED_TAG, WINDOW_OBJECT_TAG = 200, 201, 202
SENTINEL = 0xA5
_STAMP = struct.Struct("<IQ")
_MASK = (1 << 64) - 1
#: Which wildcard a receiver uses for the tails of its streams, per phase.
_WILDCARDS = ("none", "any_source", "any_tag", "both")


def boundary_sizes(max_size: int) -> list[int]:
    """Sizes on both sides of every protocol switch, up to *max_size*."""
    limit = config.eager_limit
    marks = {0, 1, limit, limit + _wire.CTRL_MAX, config.coop_min, max_size,
             *CMA_MIN_DEFAULTS.values(), *CMA_MIN_BUSY_DEFAULTS.values()}
    if config.cma_min is not None:
        marks.add(config.cma_min)
    return sorted({m + d for m in marks for d in (-1, 0, 1) if 0 <= m + d <= max_size})


def _mix(*words: int) -> int:
    """A 64-bit hash of some integers (splitmix64 steps)."""
    h = 0x9E3779B97F4A7C15
    for w in words:
        h = ((h ^ (w & _MASK)) * 0xBF58476D1CE4E5B9) & _MASK
        h ^= h >> 31
    return h


def _crc(data) -> int:
    return zlib.crc32(data)


def _pick(rng, choices: Sequence[str], weights: Sequence[int]) -> str:
    return choices[int(np.searchsorted(np.cumsum(weights), rng.random() * sum(weights),
                                       side="right"))]


def _protocol(nbytes: int, cma_min: int | None) -> str:
    """How cmampi moves a message of *nbytes* (pulled from *cma_min* on, if set;
    a sender with receives pending sends as itself up to its busy threshold,
    which this tally counts as pulled)."""
    limit = config.eager_limit
    if nbytes == 0:
        return "empty"
    if nbytes <= limit:
        return "eager"
    if nbytes <= limit + _wire.CTRL_MAX:
        return "band"
    if cma_min is None or nbytes < max(cma_min, limit + _wire.CTRL_MAX + 1):
        return "inline"
    return "pulled"


def _logical(view: np.ndarray) -> np.ndarray:
    """The bytes of *view*'s elements in C order, as a flat uint8 array."""
    return np.ascontiguousarray(view).reshape(-1).view(np.uint8)


def _order(view: np.ndarray) -> Literal["C", "F"]:
    """The order of a buffer's message, as in MPI: memory order if contiguous (C or
    Fortran), else C order."""
    return "F" if view.flags.f_contiguous and not view.flags.c_contiguous else "C"


def _message(view: np.ndarray) -> np.ndarray:
    """The bytes of the message *view* holds, as a flat uint8 array."""
    return np.ravel(view, order=_order(view)).view(np.uint8)


# -- content and buffers -------------------------------------------------------------------

class Content:
    """The bytes of message (source, id): a stamp, then a window of a random pool."""

    def __init__(self, seed: int, max_size: int) -> None:
        self.seed = seed
        rng = np.random.default_rng([seed, 0x5EED])
        self.pool = rng.integers(0, 256, max_size + (1 << 16), dtype=np.uint8)

    def _parts(self, src: int, mid: int, n: int):
        head = _STAMP.pack(src, mid)[:n]
        off = _mix(self.seed, src, mid) % (len(self.pool) - n + 1)
        return head, self.pool[off:off + n - len(head)]

    def array(self, src: int, mid: int, n: int, dtype: str) -> np.ndarray:
        head, body = self._parts(src, mid, n)
        out = np.empty(n, np.uint8)
        out[:len(head)] = np.frombuffer(head, np.uint8)
        out[len(head):] = body
        return out.view(dtype)

    def crc(self, src: int, mid: int, n: int) -> int:
        head, body = self._parts(src, mid, n)
        return zlib.crc32(body, zlib.crc32(head))


def _layout(rng, count: int, strided: bool) -> str:
    """How a buffer of *count* elements is laid out: contiguous or one of four views."""
    if not strided or count == 0 or rng.random() < 0.8:
        return "c"
    options = ["s2", "s3"]
    if count % 4 == 0:
        options.append("cols")
        # A transposed view is one iovec per element: keep it small.
        if count <= 4096:
            options.append("T")
    return options[rng.integers(len(options))]


def _allocate(count: int, dtype: str, layout: str) -> np.ndarray:
    factor = {"c": 1, "s2": 2, "s3": 3, "cols": 2, "T": 2}[layout]
    return np.empty(factor * count, dtype)


def _select(base: np.ndarray, count: int, layout: str) -> np.ndarray:
    """The view of *count* elements that *layout* names inside *base*."""
    if layout == "c":
        return base
    if layout == "s2":
        return base[::2]
    if layout == "s3":
        return base[1::3]
    if layout == "cols":
        return base.reshape(count // 4, 8)[:, 1::2]
    return base.reshape(8, count // 4)[::2].T    # transposed and strided


@dataclass
class RecvBuf:
    """A receive buffer: its memory, the view passed to MPI, and what was pre-filled."""

    base: np.ndarray
    view: np.ndarray
    layout: str
    filled: int          # logical bytes set to SENTINEL before the receive

    @classmethod
    def typed(cls, rng, count: int, dtype: str, strided: bool) -> RecvBuf:
        count += (0, 0, 0, 1, 3)[rng.integers(5)]     # sometimes larger than the message
        layout = _layout(rng, count, strided)
        base = _allocate(count, dtype, layout)
        base.view(np.uint8)[:] = SENTINEL
        view = _select(base, count, layout)
        return cls(base, view, layout, view.nbytes)

    @classmethod
    def plain(cls, capacity: int) -> RecvBuf:
        base = np.empty(capacity, np.uint8)
        filled = min(capacity, 256 << 10)   # enough to catch overruns, cheap to set
        base[:filled] = SENTINEL
        return cls(base, base, "c", filled)

    def check(self, n: int) -> tuple[np.ndarray, str | None]:
        """(the first *n* logical bytes, what is wrong around them or None)."""
        got = _message(self.view)
        if not (got[n:self.filled] == SENTINEL).all():
            return got[:n], "bytes past the message were overwritten"
        if self.layout != "c":
            outside = np.ones(len(self.base), bool)
            _select(outside, self.view.size, self.layout)[...] = False
            raw = self.base.view(np.uint8).reshape(len(self.base), -1)
            if not (raw[outside] == SENTINEL).all():
                return got[:n], "the gaps of the strided buffer were overwritten"
        return got[:n], None


# -- the plan ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Msg:
    """One planned message; with the seed, (src, mid) fixes its bytes."""

    src: int
    dst: int
    tag: int
    nbytes: int
    dtype: str
    mid: int
    how: str            # the call that sends it
    #: objects only: (id, nbytes, dtype, form) of each array in the dict
    arrays: tuple[tuple[int, int, str, str], ...] = ()

    @property
    def count(self) -> int:
        return self.nbytes // np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class RecvSpec:
    """One receive: its selector and, for a specific one, the message it must get."""

    source: int
    tag: int
    msg: Msg | None
    capacity: int


@dataclass
class Stats:
    """What one rank sent, received and found wrong."""

    messages: int = 0
    bytes: int = 0
    received: int = 0
    errors: int = 0
    first_errors: list[str] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=collections.Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"messages": self.messages, "bytes": self.bytes, "received": self.received,
                "errors": self.errors, "first_errors": list(self.first_errors),
                "kinds": dict(self.kinds)}


def _interleave(rng, lists: Sequence[list]) -> list:
    """A random merge of *lists* that keeps each list's own order."""
    parts: list[ArrayLike] = [np.full(len(x), i) for i, x in enumerate(lists)]
    labels = np.concatenate(parts or [[]])
    its = [iter(x) for x in lists]
    return [next(its[int(i)]) for i in rng.permutation(labels)]


class Soak:
    """The traffic of one job: run rounds, check everything, count it.

    Creating one is collective over *comm* (it duplicates it once per phase).
    *MPI* is the namespace that goes with *comm* (``cmampi.MPI`` or ``mpi4py.MPI``).
    """

    def __init__(self, comm, MPI, seed: int = 1, max_size: int = 4 << 20,
                 strided: bool = True, dtypes: Sequence[str] = DTYPES) -> None:
        self.comm, self.MPI = comm, MPI
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.seed, self.max_size = seed, max_size
        self.strided, self.dtypes = strided, tuple(dtypes)
        self.content = Content(seed, max_size)
        self.marks = boundary_sizes(max_size)
        self.phases = [comm.Dup() for _ in range(5)]
        self.stats = Stats()
        self.rounds = 0
        self.elapsed = 0.0
        self.channel = getattr(MPI, "CHANNEL", None)     # None: plain mpi4py
        self.cma_min = None
        if self.channel is not None and config.transport == "cma":
            self.cma_min = CMA_MIN_DEFAULTS[self.channel] if config.cma_min is None \
                else config.cma_min

    def close(self) -> None:
        for c in self.phases:
            c.Free()
        self.phases = []

    # -- drawing -------------------------------------------------------------------------
    def _nbytes(self, rng, cap: int) -> int:
        """Mostly small and medium: 6% boundary sizes, 1.5% over 1 MiB, 15% over 16 KiB."""
        r = rng.random()
        if r < 0.06:
            marks = [m for m in self.marks if m <= cap]
            return marks[rng.integers(len(marks))]
        if r < 0.075:
            lo, hi = 1 << 20, cap
        elif r < 0.225:
            lo, hi = 16 << 10, 1 << 20
        else:
            lo, hi = 1, 16 << 10
        hi = min(hi, cap)
        lo = min(lo, hi)
        return int(math.exp(rng.uniform(math.log(lo), math.log(hi + 1))))

    def _dtype(self, rng, nbytes: int) -> str:
        fits = [d for d in self.dtypes if nbytes % np.dtype(d).itemsize == 0]
        return fits[rng.integers(len(fits))]

    def _dest(self, rng, src: int) -> int:
        if self.size == 1 or rng.random() < 0.05:
            return src
        return (src + 1 + int(rng.integers(self.size - 1))) % self.size

    def plan(self, r: int) -> dict[str, Any]:
        """The messages of round *r*, the same on every rank."""
        rng = np.random.default_rng([self.seed, r])
        nxt = [r << 20] * self.size

        def mid(src: int) -> int:
            nxt[src] += 1
            return nxt[src]

        def draw(src: int, dst: int, tag: int, how: str, cap: int) -> Msg:
            n = self._nbytes(rng, cap)
            return Msg(src, dst, tag, n, self._dtype(rng, n), mid(src), how)

        storm, blocking, objects = [], [], []
        for src in range(self.size):
            for _ in range(rng.integers(16, 41)):
                storm.append(draw(src, self._dest(rng, src), TAGS[rng.integers(len(TAGS))],
                                  _pick(rng, ("Isend", "Issend", "Send", "Ssend"), (7, 3, 7, 3)),
                                  self.max_size))
            for _ in range(rng.integers(4, 13)):
                blocking.append(draw(src, self._dest(rng, src), TAGS[rng.integers(len(TAGS))],
                                     _pick(rng, ("Isend", "Issend"), (7, 3)), self.max_size))
            for _ in range(rng.integers(0, 4)):
                arrays = []
                for _ in range(1 + (rng.random() < 0.3)):
                    n = self._nbytes(rng, self.max_size)
                    forms = ("flat", "2d", "fortran", "strided")
                    arrays.append((mid(src), n, self._dtype(rng, n), forms[rng.integers(4)]))
                objects.append(Msg(src, self._dest(rng, src), TAGS[rng.integers(len(TAGS))],
                                   sum(a[1] for a in arrays), "u1", mid(src),
                                   _pick(rng, ("isend", "issend"), (3, 1)), tuple(arrays)))
        ring = []
        for step in range(2):
            shift = 1 + int(rng.integers(self.size - 1)) if self.size > 1 else 0
            ring.append([draw(src, (src + shift) % self.size, RING_TAG + step, "Sendrecv",
                              self.max_size) for src in range(self.size)])
        windows = []     # (window of Isend of one buffer, its repeat count, dropped Isend)
        shift = 1 + int(rng.integers(self.size - 1)) if self.size > 1 else 0
        for src in range(self.size):
            dst = (src + shift) % self.size
            window = draw(src, dst, WINDOW_TAG, "Isend", self.max_size)
            dropped = draw(src, dst, DROPPED_TAG, "Isend", self.max_size)
            windows.append((window, int(rng.integers(1, 65)), dropped))
        total = len(storm) + len(blocking) + len(objects) + sum(len(s) for s in ring) + \
            sum(k + 2 for _, k, _ in windows)
        return {"storm": storm, "blocking": blocking, "ring": ring, "objects": objects,
                "windows": windows, "total": total}

    def receives(self, rng, incoming: list[Msg]) -> tuple[list[RecvSpec], dict]:
        """Receives for *incoming* in posting order, and its streams.

        The head of each (source, tag) stream gets specific receives; the rest
        gets wildcard receives of this phase's kind, posted after every
        specific one, each as large as the largest message it could match.
        """
        anys, anyt = self.MPI.ANY_SOURCE, self.MPI.ANY_TAG
        streams: dict[tuple[int, int], list[Msg]] = {}
        for m in incoming:
            streams.setdefault((m.src, m.tag), []).append(m)
        kind = _WILDCARDS[rng.integers(len(_WILDCARDS))]
        heads: list[list[RecvSpec]] = []
        classes: dict[tuple[int, int], list[Msg]] = {}
        for ms in streams.values():
            k = len(ms) if kind == "none" else int(rng.integers(len(ms) + 1))
            heads.append([RecvSpec(m.src, m.tag, m, m.nbytes) for m in ms[:k]])
            for m in ms[k:]:
                sel = {"any_source": (anys, m.tag), "any_tag": (m.src, anyt),
                       "both": (anys, anyt)}[kind]
                classes.setdefault(sel, []).append(m)
        rest = [[RecvSpec(sel[0], sel[1], None, max(m.nbytes for m in ms))] * len(ms)
                for sel, ms in classes.items()]
        return _interleave(rng, heads) + _interleave(rng, rest), streams

    # -- checking ------------------------------------------------------------------------
    def error(self, text: str) -> None:
        self.stats.errors += 1
        if len(self.stats.first_errors) < 20:
            self.stats.first_errors.append(f"rank {self.rank}: {text}")

    def _expected(self, where: str, spec: RecvSpec, source: int, tag: int, streams,
                  taken: dict) -> Msg | None:
        """The message a completed receive must hold (None: an error was recorded)."""
        if spec.msg is not None:
            if (source, tag) != (spec.msg.src, spec.msg.tag):
                self.error(f"{where}: specific receive for source {spec.msg.src} tag "
                           f"{spec.msg.tag} completed with source {source} tag {tag}")
                return None
            msg = spec.msg
        else:
            ok_src = spec.source in (self.MPI.ANY_SOURCE, source)
            ok_tag = spec.tag in (self.MPI.ANY_TAG, tag)
            stream = streams.get((source, tag), [])
            k = taken.get((source, tag), 0)
            if not (ok_src and ok_tag) or k >= len(stream):
                self.error(f"{where}: receive ({spec.source}, {spec.tag}) got a message "
                           f"from source {source} tag {tag} that it cannot match or that "
                           f"was not sent")
                return None
            msg = stream[k]
        taken[(source, tag)] = taken.get((source, tag), 0) + 1
        return msg

    def check_bytes(self, where: str, msg: Msg, got: np.ndarray, count: int, streams,
                    extra: str | None = None) -> None:
        """*got*: the received bytes of *msg*; *count*: the status's byte count."""
        self.stats.received += 1
        what = (f"{where}: message {msg.mid:#x} {msg.src}->{msg.dst} tag {msg.tag} "
                f"({msg.nbytes} B {msg.dtype}, {msg.how})")
        if count != msg.nbytes:
            self.error(f"{what}: status count {count}")
            return
        if _crc(got) != self.content.crc(msg.src, msg.mid, msg.nbytes):
            self.error(f"{what}: content differs{self._which(msg, got, streams)}")
        if extra:
            self.error(f"{what}: {extra}")

    def _which(self, msg: Msg, got: np.ndarray, streams) -> str:
        """Which message of the stream arrived instead, if any (order broken)."""
        for m in streams.get((msg.src, msg.tag), []):
            if m.nbytes == len(got) and _crc(got) == self.content.crc(m.src, m.mid, m.nbytes):
                return f" (it is message {m.mid:#x} of the same stream: order broken)"
        if len(got) >= _STAMP.size:
            src, mid = _STAMP.unpack(got[:_STAMP.size].tobytes())
            bad = np.flatnonzero(got != self.content.array(msg.src, msg.mid, msg.nbytes, "u1"))
            return (f" (its stamp says source {src} message {mid:#x}; {len(bad)} bytes "
                    f"differ, first at {bad[0] if len(bad) else None})")
        return ""

    def check_recv(self, where: str, spec: RecvSpec, buf: RecvBuf, status, streams,
                   taken) -> None:
        source, tag = status.Get_source(), status.Get_tag()
        count = status.Get_count(self.MPI.BYTE)
        msg = self._expected(where, spec, source, tag, streams, taken)
        if msg is None:
            return
        got, extra = buf.check(min(count, buf.view.nbytes))
        sel = "specific" if spec.msg is not None else f"({spec.source}, {spec.tag})"
        where = (f"{where} into {sel} {buf.layout} {buf.view.dtype} buffer of "
                 f"{buf.view.nbytes} B")
        self.check_bytes(where, msg, got, count, streams, extra)

    # -- sending helpers -----------------------------------------------------------------
    def _send_view(self, rng, msg: Msg) -> np.ndarray:
        data = self.content.array(msg.src, msg.mid, msg.nbytes, msg.dtype)
        layout = _layout(rng, msg.count, self.strided)
        if layout == "c":
            return data
        view = _select(_allocate(msg.count, msg.dtype, layout), msg.count, layout)
        view[...] = data.reshape(view.shape, order=_order(view))
        return view

    def _recv_buf(self, rng, spec: RecvSpec) -> RecvBuf:
        if spec.msg is None:
            return RecvBuf.plain(spec.capacity)
        return RecvBuf.typed(rng, spec.msg.count, spec.msg.dtype, self.strided)

    def _sent(self, msg: Msg) -> None:
        self.stats.messages += 1
        self.stats.bytes += msg.nbytes
        self.stats.kinds["object" if msg.arrays else _protocol(msg.nbytes, self.cma_min)] += 1

    # -- the phases ----------------------------------------------------------------------
    def storm(self, rng, msgs: list[Msg]) -> None:
        comm = self.phases[0]
        specs, streams = self.receives(rng, [m for m in msgs if m.dst == self.rank])
        bufs = [self._recv_buf(rng, s) for s in specs]
        reqs = [comm.Irecv(b.view, s.source, s.tag) for s, b in zip(specs, bufs)]
        keep = []       # send buffers, alive until their requests complete
        for m in msgs:
            if m.src != self.rank:
                continue
            view = self._send_view(rng, m)
            if m.how in ("Send", "Ssend"):
                getattr(comm, m.how)(view, m.dst, m.tag)
            else:
                reqs.append(getattr(comm, m.how)(view, m.dst, m.tag))
                keep.append(view)
            self._sent(m)
        statuses = self.complete(rng, reqs)
        taken: dict = {}
        for i, (spec, buf) in enumerate(zip(specs, bufs)):
            self.check_recv("storm", spec, buf, statuses[i], streams, taken)

    def complete(self, rng, reqs: list) -> list:
        """Complete every request with Waitall, a Waitany loop or a Testsome loop."""
        MPI = self.MPI
        statuses = [MPI.Status() for _ in reqs]
        how = int(rng.integers(3))
        if how == 0:
            MPI.Request.Waitall(reqs, statuses)
        elif how == 1:
            for _ in reqs:
                st = MPI.Status()
                statuses[MPI.Request.Waitany(reqs, st)] = st
        else:
            left = len(reqs)
            while left:
                sts = [MPI.Status() for _ in range(left)]
                done = MPI.Request.Testsome(reqs, sts)
                if done is None:
                    break
                for k, i in enumerate(done):
                    statuses[i] = sts[k]
                left -= len(done)
                if not done:
                    os.sched_yield()
        return statuses

    def blocking(self, rng, msgs: list[Msg]) -> None:
        comm, MPI = self.phases[1], self.MPI
        reqs, keep = [], []
        for m in msgs:
            if m.src == self.rank:
                view = self._send_view(rng, m)
                reqs.append(getattr(comm, m.how)(view, m.dst, m.tag))
                keep.append(view)
                self._sent(m)
        specs, streams = self.receives(rng, [m for m in msgs if m.dst == self.rank])
        taken: dict = {}
        for spec in specs:
            st = MPI.Status()
            if spec.msg is None and rng.random() < 0.3:
                comm.Probe(spec.source, spec.tag, st)
                buf = RecvBuf.plain(st.Get_count(MPI.BYTE))
                comm.Recv(buf.view, st.Get_source(), st.Get_tag(), st)
            else:
                buf = self._recv_buf(rng, spec)
                comm.Recv(buf.view, spec.source, spec.tag, st)
            self.check_recv("blocking", spec, buf, st, streams, taken)
        MPI.Request.Waitall(reqs)

    def ring(self, rng, steps: list[list[Msg]]) -> None:
        comm, MPI = self.phases[2], self.MPI
        for msgs in steps:
            out = msgs[self.rank]
            inc = next(m for m in msgs if m.dst == self.rank)
            source, tag = [(inc.src, inc.tag), (MPI.ANY_SOURCE, inc.tag),
                           (inc.src, MPI.ANY_TAG)][rng.integers(3)]
            spec = RecvSpec(source, tag, inc, inc.nbytes)
            buf = self._recv_buf(rng, spec)
            st = MPI.Status()
            comm.Sendrecv(self._send_view(rng, out), out.dst, out.tag, buf.view, source, tag, st)
            self._sent(out)
            self.check_recv("ring", spec, buf, st, {(inc.src, inc.tag): [inc]}, {})

    def _object(self, rng, msg: Msg) -> dict[str, Any]:
        arrays = []
        for mid, n, dtype, form in msg.arrays:
            a = self.content.array(msg.src, mid, n, dtype)
            if form in ("2d", "fortran") and a.size % 4 == 0 and a.size:
                a = a.reshape(-1, 4)
                if form == "fortran":
                    a = np.asfortranarray(a)
            elif form == "strided":
                s = np.empty(2 * a.size, dtype)[::2]
                s[...] = a
                a = s
            arrays.append(a)
        return {"src": msg.src, "mid": msg.mid, "tag": msg.tag, "arrays": arrays,
                "note": "x" * int(rng.integers(100))}

    def objects(self, rng, msgs: list[Msg]) -> None:
        comm, MPI = self.phases[3], self.MPI
        reqs = []
        for m in msgs:
            if m.src == self.rank:
                reqs.append(getattr(comm, m.how)(self._object(rng, m), m.dst, m.tag))
                self._sent(m)
        specs, streams = self.receives(rng, [m for m in msgs if m.dst == self.rank])
        taken: dict = {}
        for spec in specs:
            st = MPI.Status()
            # mpi4py's irecv needs a buffer as large as the pickle: only cmampi's here.
            if rng.random() < 0.5 or self.channel is None:
                obj = comm.recv(None, spec.source, spec.tag, st)
            else:
                obj = comm.irecv(None, spec.source, spec.tag).wait(st)
            msg = self._expected("objects", spec, st.Get_source(), st.Get_tag(), streams, taken)
            if msg is not None:
                self.check_object(msg, obj, streams)
        MPI.Request.Waitall(reqs)

    def windows(self, rng, windows: list[tuple[Msg, int, Msg]]) -> None:
        comm, MPI = self.phases[4], self.MPI
        out = next(w for w in windows if w[0].src == self.rank)
        inc = next(w for w in windows if w[0].dst == self.rank)
        (msg, k, dropped), (imsg, ik, idropped) = out, inc
        # One receive buffer for the whole window, one send buffer sent k times.
        buf = RecvBuf.plain(imsg.nbytes)
        reqs = [comm.Irecv(buf.view, imsg.src, imsg.tag) for _ in range(ik)]
        obj_req = comm.irecv(None, imsg.src, WINDOW_OBJECT_TAG) if self.channel else None
        view = self._send_view(rng, msg)
        reqs += [comm.Isend(view, msg.dst, msg.tag) for _ in range(k)]
        keep = self._send_view(rng, dropped)
        comm.Isend(keep, dropped.dst, dropped.tag)     # its request dropped at once
        small = {"src": self.rank, "mid": msg.mid}
        reqs.append(comm.isend(small, msg.dst, WINDOW_OBJECT_TAG))
        if obj_req is not None:
            reqs.append(obj_req)
        total = np.zeros(1, np.int64)
        comm.Allreduce(np.array([k], np.int64), total, op=MPI.SUM)   # all in flight
        if total[0] != sum(w[1] for w in windows):
            self.error(f"windows: Allreduce in flight gave {total[0]}")
        statuses = [MPI.Status() for _ in reqs]
        results = MPI.Request.waitall(reqs, statuses)    # lowercase: the object comes back
        for _ in range(k + 1):
            self._sent(msg)
        self._sent(dropped)
        for i in range(ik):
            spec = RecvSpec(imsg.src, imsg.tag, imsg, imsg.nbytes)
            self.check_recv("windows", spec, buf, statuses[i], {(imsg.src, imsg.tag): [imsg]},
                            {})
        # plain mpi4py: its irecv needs a buffer as large as the pickle
        got = comm.recv(None, imsg.src, WINDOW_OBJECT_TAG) if obj_req is None else results[-1]
        self.stats.received += 1
        if got != {"src": imsg.src, "mid": imsg.mid}:
            self.error(f"windows: object from {imsg.src} came back as {got!r:.80}")
        # The dropped send's message, drained by a matched probe.
        st = MPI.Status()
        message = comm.Mprobe(idropped.src, idropped.tag, st)
        rbuf = RecvBuf.plain(st.Get_count(MPI.BYTE))
        message.Recv(rbuf.view, st)
        self.check_recv("windows (dropped request)", RecvSpec(idropped.src, idropped.tag,
                        idropped, idropped.nbytes), rbuf, st,
                        {(idropped.src, idropped.tag): [idropped]}, {})
        comm.Barrier()      # the dropped send's buffer may go once it has been received
        del keep

    def check_object(self, msg: Msg, obj: Any, streams) -> None:
        self.stats.received += 1
        what = f"objects: object {msg.mid:#x} {msg.src}->{msg.dst} tag {msg.tag}"
        if not isinstance(obj, dict) or set(obj) != {"src", "mid", "tag", "arrays", "note"}:
            self.error(f"{what}: got {type(obj).__name__} {str(obj)[:80]}")
            return
        if (obj["src"], obj["mid"], obj["tag"]) != (msg.src, msg.mid, msg.tag):
            order = " (order broken)" if any(m.mid == obj["mid"] for m in
                                             streams.get((msg.src, msg.tag), [])) else ""
            self.error(f"{what}: got object {obj['mid']:#x} from {obj['src']}{order}")
            return
        if len(obj["arrays"]) != len(msg.arrays):
            self.error(f"{what}: {len(obj['arrays'])} arrays")
            return
        for a, (mid, n, dtype, _form) in zip(obj["arrays"], msg.arrays):
            if not isinstance(a, np.ndarray) or a.dtype != np.dtype(dtype) or a.nbytes != n:
                self.error(f"{what}: array {mid:#x} came back as {a!r:.80}")
            elif _crc(_logical(a)) != self.content.crc(msg.src, mid, n):
                self.error(f"{what}: array {mid:#x} ({n} B {dtype}) content differs")

    # -- running -------------------------------------------------------------------------
    def round(self, r: int) -> int:
        """Run round *r*; the number of messages it planned over all ranks."""
        plan = self.plan(r)
        rng = np.random.default_rng([self.seed, r, 1 + self.rank])
        for name in ("storm", "blocking", "ring", "objects", "windows"):
            try:
                getattr(self, name)(rng, plan[name])
            except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
                self.error(f"round {r} {name}: {type(exc).__name__}: {exc}")
        return plan["total"]

    def _agree(self, stop: bool) -> bool:
        """End a round on every rank together: True if any rank asks to stop."""
        out = np.zeros(1, np.int64)
        self.comm.Allreduce(np.array([int(stop)], np.int64), out, op=self.MPI.MAX)
        return bool(out[0])

    def run(self, seconds: float | None = None, min_messages: int = 0,
            watchdog: float = 300.0) -> None:
        """Run rounds for *seconds* (rank 0's clock), or until *min_messages* are planned.

        A round that takes longer than *watchdog* seconds is a deadlock: every
        thread's stack is dumped and the process exits.
        """
        t0 = time.perf_counter()
        planned = 0
        while True:
            faulthandler.dump_traceback_later(watchdog, exit=True)
            planned += self.round(self.rounds)
            self.rounds += 1
            if seconds is not None:
                stop = self.rank == 0 and time.perf_counter() - t0 >= seconds
            else:
                stop = planned >= min_messages
            if self._agree(stop):
                break
        faulthandler.cancel_dump_traceback_later()
        self.elapsed = time.perf_counter() - t0

    def totals(self) -> dict[str, Any]:
        """Every rank's stats summed (collective); first errors of all ranks joined."""
        all_stats = self.comm.allgather(self.stats.as_dict())
        out: dict[str, Any] = {"kinds": collections.Counter(), "first_errors": []}
        for s in all_stats:
            for key in ("messages", "bytes", "received", "errors"):
                out[key] = out.get(key, 0) + s[key]
            out["kinds"].update(s["kinds"])
            out["first_errors"] += s["first_errors"]
        return out


# -- command line --------------------------------------------------------------------------

def _report(soak: Soak, totals: dict[str, Any], label: str) -> list[str]:
    secs = soak.elapsed
    n, nbytes = totals["messages"], totals["bytes"]
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(totals["kinds"].items()))
    lost = n - totals["received"]
    return [
        f"soak: {soak.size} ranks, {label}, seed {soak.seed}, max size {soak.max_size} B",
        f"rounds      {soak.rounds}",
        f"messages    {n} ({kinds})",
        f"bytes       {nbytes / 1e9:.3f} GB",
        f"time        {secs:.1f} s",
        f"throughput  {n / secs:.0f} msg/s, {nbytes / secs / 1e9:.3f} GB/s",
        f"lost        {lost}",
        f"errors      {totals['errors'] + max(lost, 0)}",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    from cmampi.bench._common import parse_size

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=180.0, help="run time (default 180)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-size", type=parse_size, default=4 << 20,
                    help="largest message, e.g. 4m (default)")
    ap.add_argument("--watchdog", type=float, default=300.0,
                    help="seconds after which a round counts as deadlocked: stacks are "
                         "dumped and the job ends (default 300)")
    ap.add_argument("--mpi4py", action="store_true",
                    help="run over plain mpi4py (no strided buffers, no float16)")
    args = ap.parse_args(argv)
    if args.mpi4py:
        from mpi4py import MPI as mpi4py_MPI

        label = "plain mpi4py"
        soak = Soak(mpi4py_MPI.COMM_WORLD, mpi4py_MPI, args.seed, args.max_size, strided=False,
                    dtypes=[d for d in DTYPES if d != "f2"])
    else:
        from cmampi import MPI

        label = f"cmampi {MPI.CHANNEL} channel, {config.transport} transport"
        soak = Soak(MPI.COMM_WORLD, MPI, args.seed, args.max_size)
    soak.run(seconds=args.seconds, watchdog=args.watchdog)
    totals = soak.totals()
    soak.close()
    bad = totals["errors"] or totals["messages"] != totals["received"]
    if soak.rank == 0:
        for line in totals["first_errors"]:
            print(line, file=sys.stderr, flush=True)
        print("\n".join(_report(soak, totals, label)), flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
