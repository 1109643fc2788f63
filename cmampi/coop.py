"""Cooperative copies: a sender blocked in its send copies part of the payload.

A large message is pulled by its receiver; if its sender is blocked waiting for
the receiver's reply, a second core is idle. The receiver then asks the sender
to write the tail into the receive buffer (``process_vm_writev``) while it
reads the head itself, and `CopyShare` moves the split so that both finish
together. Buffers (`p2p.Engine`) and objects (`objects`) both use `CoopPull`.
"""

from __future__ import annotations

import time as _time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from . import _cma, _wire

if TYPE_CHECKING:
    from .p2p import Engine

__all__ = ["SHARES", "CoopPull", "CopyShare", "SharedCopies", "now"]


def now() -> float:
    """CLOCK_MONOTONIC seconds: the same clock in every process of a host."""
    return _time.clock_gettime(_time.CLOCK_MONOTONIC)


class CopyShare:
    """The receiver's share of a cooperative copy, learned from the copies so far.

    The receiver times each side from the moment it asks for help: its own
    part until its pull ends, the sender's until the moment the sender reports
    its copy ended (CLOCK_MONOTONIC, shared by every process on a host), so a
    sender that wakes late counts as slow. The next split gives each side bytes
    in proportion to the rate it had, so that both finish together. Which side
    is faster differs: process_vm_writev (the sender's part) often runs slower
    than process_vm_readv here, and a sleeping sender starts late.
    """

    LOW, HIGH = 0.25, 0.85   # bounds, so that each side keeps a part to time
    KEEP = 0.7               # weight of the past against the last copy

    def __init__(self, value: float = 0.5) -> None:
        self.value = value

    def split(self, n: int) -> int:
        """Bytes of an *n*-byte copy the receiver takes: a whole number of pages."""
        return min(n, (int(n * self.value) + 4095) & ~4095)

    def learn(self, mine: int, my_seconds: float, theirs: int, their_seconds: float) -> None:
        """Account for a copy: *mine* bytes took us *my_seconds*, *theirs* the sender."""
        if min(mine, theirs) <= 0 or min(my_seconds, their_seconds) <= 0:
            return
        rate, their_rate = mine / my_seconds, theirs / their_seconds
        value = self.KEEP * self.value + (1 - self.KEEP) * rate / (rate + their_rate)
        self.value = min(self.HIGH, max(self.LOW, value))


class SharedCopies:
    """How the two ranks of a ``Bcast`` share its copy, so that both finish together.

    Between two ranks the root writes the tail (``process_vm_writev``) while
    the other reads the head (``process_vm_readv``). Each rank times its part
    and reports it in the next call's exchange; both learn from the same
    reports in the same order, so both compute the same split with no message
    of its own. Which direction is faster depends on the host (alone, a 16 MiB
    write ran at 0.84 of a read here; an even split left the reader idle for a
    fifth of the call).
    """

    KEEP = 0.7                  # weight of the past against the last report
    LOW, HIGH = 0.125, 0.875    # bounds of the reader's part: each side keeps a part to time

    def __init__(self) -> None:
        #: bytes per second of each direction; 0.0 until one is timed
        self.rates = {"read": 0.0, "write": 0.0}
        #: this rank's timings of its part in the last call: (direction, bytes, seconds)
        self.mine: tuple[tuple[str, int, float], ...] = ()

    def report(self) -> tuple[tuple[str, int, float], ...]:
        """This rank's timings to send, forgotten here (a call that fails has none)."""
        mine, self.mine = self.mine, ()
        return mine

    def timed(self, kind: str, n: int, seconds: float) -> None:
        """Note our part of this call: *n* bytes read or written in *seconds*."""
        self.mine += ((kind, n, seconds),)

    def learn(self, reports: Sequence[Sequence[tuple[str, int, float]]]) -> None:
        """Account for every rank's report (the same list, in rank order, on every rank)."""
        for report in reports:
            for kind, n, seconds in report:
                if n > 0 and seconds > 0 and kind in self.rates:
                    old, rate = self.rates[kind], n / seconds
                    self.rates[kind] = rate if not old else self.KEEP * old + (1 - self.KEEP) * rate

    def reader_part(self, n: int) -> int:
        """Bytes of an *n*-byte copy the reading rank takes: a multiple of the page
        size (the buffers of the two ranks start at different offsets in a page)."""
        read, write = self.rates["read"], self.rates["write"]
        share = read / (read + write) if read and write else 0.5
        share = min(self.HIGH, max(self.LOW, share))
        return min(n, int(n * share) & ~4095)


#: How this process splits the cooperative copies it receives, per kind of
#: channel: the sender's reaction time, which the split absorbs, depends on it.
SHARES: dict[str, CopyShare] = {}


class CoopPull:
    """The receiver's side of a cooperative copy of one contiguous run.

    A sender blocked in its send has a core with nothing to do: we ask it to
    write the tail ``[mid, n)`` into our memory (`CopyShare` picks *mid*) and
    read the head ourselves, at once. Both ends reply twice: we when our reads
    are over (`own_part`), the sender with a notice when its writes are
    (`notice`, then `finish`), and we again if it could not write, once we have
    read its part ourselves. Buffers and objects (their largest buffer) use it.
    """

    __slots__ = (
        "array",
        "asked",
        "done",
        "engine",
        "local",
        "mid",
        "notice",
        "offered",
        "pulled",
        "remote",
        "replied",
        "share",
        "source",
        "streaming",
        "xid",
    )

    def __init__(self, engine: Engine, source: int, xid: int, remote, local, array,
                 base: int, offered: bool = False) -> None:
        """Ask the sender for help. *remote* and *local* are the run's layouts;
        the sender counts the bytes it is asked for from *base* (0: offsets in
        its message; objects name addresses). While an earlier copy from the
        same sender is still under way, this one is part of a pipeline, whose
        split is learned apart (see `finish`). *offered*: the sender offered
        help from a wait (the reply that ends our reads may be held, see
        `Engine.reply`)."""
        self.engine, self.source, self.xid = engine, source, xid
        self.offered = offered
        self.remote, self.local = remote, local      # one-dimensional layouts
        self.array = array      # the memory the sender writes into: alive until its notice
        n = remote.nbytes
        under_way = engine.helping.get(source, 0)
        engine.helping[source] = under_way + 1
        self.streaming = under_way > 0
        self.share = engine.stream_share if self.streaming else engine.share
        self.mid = mid = self.share.split(n)
        self.done = bytearray(_wire.HELPED_SIZE)
        self.asked, self.pulled, self.replied = now(), 0.0, 0.0
        # Ask first: the sender's part starts sooner. Its notice may come before
        # we post the receive for it; the channel keeps it.
        engine.ch.send_reply(_wire.help_request(base + mid, base + n,
                                                local.addr + local.lo + mid), source, xid)
        #: completes when the sender's notice has come
        self.notice = engine.ch.irecv_payload(self.done, source, xid)

    def own_part(self, also: Sequence[Callable[[], None]] = ()) -> BaseException | None:
        """Read the head (then run *also*, more reads of ours), and tell the
        sender our reads are over (a reply that a `p2p.Holding` block may
        hold back, when we claimed the sender's offer); the error of a read,
        if any."""
        err = None
        try:
            self._read(0, self.mid)
            self.pulled = now()
            for read in also:
                read()
        except OSError as exc:
            err = exc
        except BaseException as exc:    # interrupted: the sender must not wait for us
            self._reply(exc)
            raise
        if err is None:
            self.engine.reply(_wire.ACK_OK, self.source, self.xid, self.offered)
        else:
            self._reply(err)
        self.replied = now()
        return err

    def finish(self, err: BaseException | None) -> BaseException | None:
        """Once the notice has come: learn from the timings, or read the sender's
        part ourselves if it could not write it (it waits for a second reply).

        A receive alone learns when each side ended, from the request: both
        should end together. In a pipeline the sender often starts late, still
        writing the part before, and each side's other work per message (ours
        is most of it) delays the next: there the split learns from the time
        each side was busy: ours from the request until we replied, the
        sender's from the request's arrival until its copy ended."""
        self.engine.helping[self.source] -= 1
        code, began, ended = _wire.parse_helped(self.done)
        n, mid = self.remote.nbytes, self.mid
        if code == _wire.ACK_OK and err is None:
            if self.streaming:
                # A pipeline: each side's busy time counts, not when it ended.
                self.share.learn(mid, self.replied - self.asked, n - mid, ended - began)
            else:
                self.share.learn(mid, self.pulled - self.asked, n - mid, ended - self.asked)
        if code != _wire.ACK_OK:
            if err is None:
                try:
                    self._read(mid, n)
                except OSError as exc:
                    err = exc
            self._reply(err)
        return err

    def _read(self, lo: int, hi: int) -> None:
        """Read bytes [lo, hi) of the run ourselves."""
        if hi > lo:
            remote, local = self.remote, self.local
            _cma.read_into(self.engine.ch.pids[self.source], local.addr + local.lo + lo,
                           remote.addr + remote.lo + lo, hi - lo)

    def _reply(self, err: BaseException | None) -> None:
        self.engine.ch.send_reply(bytes((_wire.ACK_OK if err is None else _wire.ACK_FAILED,)),
                                  self.source, self.xid)
