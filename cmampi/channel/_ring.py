"""A one-way byte stream between two processes of a host, in shared memory.

The socket channel's frames between two ranks travel through a pair of these
rings instead of the Unix socket: a frame is a copy into shared memory and an
index store, where the socket costs two system calls and a wake-up. The
socket stays for what only the kernel can tell: a doorbell byte when the
reader sleeps in ``poll()``, and the connection's end.

Layout (one ``memfd`` mapping): the writer's *head* on the first cache line,
the reader's *tail* on the second, the reader's *asleep* flag on the third,
the writer's *waiting* flag (for room) on the fourth, then *capacity* bytes of
data. Head and tail count bytes since the start and
only grow; each is an aligned 8-byte word stored and loaded whole. The writer
copies data and then stores its head; the reader loads the head and then
reads data, and stores its tail once it has. This relies on the processor
keeping stores in order and loads in order (x86-64 does), so rings are only
used where `supported` says so.

A reader about to sleep sets *asleep* and looks once more; a writer that
stored a head looks at *asleep* and rings the doorbell. A writer that sleeps
while its ring is full sets *waiting* likewise, and a reader that frees room
rings the writer's doorbell. Without a fence between the two steps both sides
can miss each other, so a sleeper also wakes on its own within `RECHECK`
seconds.
"""

from __future__ import annotations

import mmap as _mmap
import os as _os
import platform as _platform
from collections.abc import Sequence

__all__ = [
    "ASLEEP",
    "BUDGET",
    "CAPACITY",
    "HEAD",
    "RECHECK",
    "TAIL",
    "WAITING",
    "Ring",
    "capacity_for",
    "supported",
]

#: Data bytes per ring (per direction and pair of ranks), at most. Measured on
#: 2 ranks, rings of 256 KiB, 512 KiB, 1 MiB and 2 MiB interleaved in one job:
#: 1 MiB moved 256 KiB frames in 39 us (ping-pong) and 28 us (streamed), 256 KiB
#: rings in 54 and 60 us; 2 MiB gained nothing more.
CAPACITY = 1 << 20
#: Bytes of the rings one process reads, at most (large jobs get smaller rings).
BUDGET = 32 << 20
_SMALLEST = 64 << 10
#: Longest a sleeping reader can miss a doorbell, in seconds (the race in the
#: module's text is a matter of nanoseconds: this bound is seldom paid).
RECHECK = 0.02
_LINE = 64
_DATA = 4 * _LINE
#: Indexes of the head, tail, asleep and waiting words among the ring's 8-byte words.
HEAD, TAIL, ASLEEP, WAITING = 0, _LINE // 8, 2 * _LINE // 8, 3 * _LINE // 8


def supported() -> bool:
    """Whether rings can be used here: Linux memfds, and a processor that keeps
    stores and loads in order (x86-64)."""
    return hasattr(_os, "memfd_create") and _platform.machine() in ("x86_64", "AMD64")


def capacity_for(ranks: int) -> int:
    """Ring capacity in a job of *ranks*: `CAPACITY`, or less so that the rings a
    process reads stay within `BUDGET` (never below 64 KiB; frames longer than
    a ring still pass, in pieces)."""
    cap = CAPACITY
    while cap > _SMALLEST and cap * max(1, ranks - 1) > BUDGET:
        cap //= 2
    return cap


class Ring:
    """One direction of a pair: this process either writes it or reads it."""

    __slots__ = ("capacity", "data", "map", "mask", "words")

    def __init__(self, fd: int) -> None:
        size = _os.fstat(fd).st_size
        # Populated: the first pass through the ring takes no page faults.
        self.map = _mmap.mmap(fd, size, _mmap.MAP_SHARED | getattr(_mmap, "MAP_POPULATE", 0))
        self.capacity = size - _DATA
        self.mask = self.capacity - 1
        #: the 8-byte words before the data (see HEAD, TAIL, ASLEEP)
        self.words = memoryview(self.map)[:_DATA].cast("Q")
        self.data = memoryview(self.map)[_DATA:]

    @staticmethod
    def create(capacity: int = CAPACITY) -> int:
        """A new, zeroed ring's file descriptor (*capacity*: a power of two)."""
        if capacity & (capacity - 1):
            raise ValueError(f"ring capacity {capacity} is not a power of two")
        fd = _os.memfd_create("cmampi-ring", getattr(_os, "MFD_CLOEXEC", 0))
        try:
            _os.ftruncate(fd, _DATA + capacity)
        except OSError:
            _os.close(fd)
            raise
        return fd

    def close(self) -> None:
        self.words.release()
        self.data.release()
        try:
            self.map.close()
        except BufferError:     # a view of the data is still alive: the GC unmaps it
            pass

    # -- the writer ------------------------------------------------------------------------
    def write(self, parts: Sequence) -> int:
        """Copy as much of *parts* (bytes-like) as fits; the bytes written."""
        words = self.words
        start = head = words[HEAD]
        room = self.capacity - (head - words[TAIL])
        data, cap = self.data, self.capacity
        for part in parts:
            n = len(part)
            if not n:
                continue
            k = n if n <= room else room
            if not k:
                break
            at = head & self.mask
            if k == n and at + n <= cap:
                data[at : at + n] = part
            else:
                part = memoryview(part)
                first = min(k, cap - at)
                data[at : at + first] = part[:first]
                data[: k - first] = part[first:k]
            head += k
            room -= k
            if k < n:
                break
        if head != start:
            words[HEAD] = head
        return head - start

    def put(self, head: bytes, payload) -> bool:
        """Write *head* then *payload* (bytes-like, flat) whole if they fit; whether
        they did. Nothing is written otherwise."""
        words = self.words
        start = words[HEAD]
        k = len(head)
        end = k + len(payload)
        if self.capacity - (start - words[TAIL]) < end:
            return False
        at = start & self.mask
        if at + end > self.capacity:       # around the end: the general way
            self.write((head, payload))
            return True
        data = self.data
        data[at : at + k] = head
        if end > k:
            data[at + k : at + end] = payload
        words[HEAD] = start + end
        return True

    def room(self) -> int:
        """Bytes that can be written now."""
        words = self.words
        return self.capacity - (words[HEAD] - words[TAIL])

    def asleep(self) -> bool:
        """Whether the reader has said it sleeps (then ring the doorbell)."""
        return self.words[ASLEEP] != 0

    def wait_for_room(self, waiting: bool) -> None:
        """Say whether this writer sleeps until the reader frees room."""
        self.words[WAITING] = 1 if waiting else 0

    # -- the reader ------------------------------------------------------------------------
    def available(self) -> int:
        """Bytes written and not yet read."""
        words = self.words
        return words[HEAD] - words[TAIL]

    def read_into(self, view: memoryview) -> int:
        """Copy up to ``len(view)`` bytes into *view*; the bytes read (0: none now)."""
        words = self.words
        tail = words[TAIL]
        k = words[HEAD] - tail
        if k <= 0:
            return 0
        if k > len(view):
            k = len(view)
        at = tail & self.mask
        first = self.capacity - at
        if k <= first:
            view[:k] = self.data[at : at + k]
        else:
            view[:first] = self.data[at:]
            view[first:k] = self.data[: k - first]
        words[TAIL] = tail + k
        return k

    def sleep(self, asleep: bool) -> None:
        """Say whether this reader sleeps (and wants a doorbell for new bytes)."""
        self.words[ASLEEP] = 1 if asleep else 0

