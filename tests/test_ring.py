"""The socket channel's shared-memory rings (``cmampi.channel._ring``): a byte
stream in order and whole, across the wrap and across processes; the sleep flag."""

from __future__ import annotations

import hashlib
import os
import random

import pytest

from cmampi.channel import _ring
from cmampi.channel._ring import Ring

pytestmark = pytest.mark.skipif(not _ring.supported(), reason="no rings on this machine")


def _pair(capacity: int):
    fd = Ring.create(capacity)
    try:
        return Ring(fd), Ring(fd)
    finally:
        os.close(fd)


def test_random_writes_and_reads_keep_the_stream():
    """Parts of every size, written while they fit and read in pieces of every
    size, wrapping around a 4 KiB ring thousands of times."""
    writer, reader = _pair(4096)
    rng = random.Random(7)
    sent, got = bytearray(), bytearray()
    out = memoryview(bytearray(6000))
    for _ in range(20000):
        if rng.random() < 0.5:
            parts = [rng.randbytes(rng.randrange(0, 40)),
                     memoryview(bytearray(rng.randbytes(rng.randrange(0, 3000))))]
            k = writer.write(parts)
            assert k == min(sum(map(len, parts)), 4096 - len(sent) + len(got))
            sent += b"".join(bytes(p) for p in parts)[:k]
        else:
            k = reader.read_into(out[: rng.randrange(1, 6000)])
            got += out[:k]
        assert reader.available() == len(sent) - len(got)
    while reader.available():
        got += out[: reader.read_into(out)]
    assert got == sent and len(sent) > 10 * 4096
    assert reader.read_into(out) == 0
    writer.close()
    reader.close()


def test_a_stream_between_two_processes():
    """A child writes 8 MiB of pseudo-random bytes through a 64 KiB ring while
    the parent reads: the digests agree (what the writer stored before its head
    is what the reader sees)."""
    fd = Ring.create(1 << 16)
    size = 8 << 20
    pid = os.fork()
    if pid == 0:                                  # the writer
        try:
            ring = Ring(fd)
            rng = random.Random(3)
            data = memoryview(rng.randbytes(size))
            at = 0
            while at < size:
                at += ring.write([data[at : at + rng.randrange(1, 20000)]])
            os._exit(0)
        except BaseException:  # noqa: BLE001 (a child reports any failure to its test)
            os._exit(1)
    ring = Ring(fd)
    os.close(fd)
    digest, got = hashlib.sha256(), 0
    out = memoryview(bytearray(1 << 15))
    while got < size:
        k = ring.read_into(out)
        digest.update(out[:k])
        got += k
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert digest.digest() == hashlib.sha256(random.Random(3).randbytes(size)).digest()
    ring.close()


def test_sleep_flag_and_capacity():
    writer, reader = _pair(1 << 12)
    assert not writer.asleep()
    reader.sleep(True)
    assert writer.asleep()
    reader.sleep(False)
    assert not writer.asleep()
    assert writer.write([b"x" * 5000]) == 4096 and writer.write([b"y"]) == 0
    with pytest.raises(ValueError, match="power of two"):
        Ring.create(3000)


def test_large_jobs_get_smaller_rings():
    assert _ring.capacity_for(2) == _ring.capacity_for(33) == _ring.CAPACITY
    for ranks in (34, 200, 5000):
        cap = _ring.capacity_for(ranks)
        assert cap & (cap - 1) == 0 and cap >= 64 << 10
        assert cap * (ranks - 1) <= _ring.BUDGET or cap == 64 << 10


def test_put_writes_a_frame_whole_or_not_at_all():
    """`put` (a header and a payload) is all or nothing, across the wrap too;
    the reader sees exactly the frames that were put."""
    writer, reader = _pair(4096)
    rng = random.Random(11)
    sent, got = bytearray(), bytearray()
    out = memoryview(bytearray(4096))
    for _ in range(5000):
        head = rng.randbytes(24)
        payload = rng.choice([b"", rng.randbytes(rng.randrange(1, 5000)),
                              bytearray(rng.randbytes(rng.randrange(1, 300))),
                              # as the channel passes numpy data: a flat byte view
                              memoryview(bytearray(rng.randbytes(8 * rng.randrange(1, 200))))
                              .cast("d").cast("B")])
        before = reader.available()
        fits = 4096 - before >= len(head) + len(payload)
        assert writer.put(head, payload) is fits
        assert reader.available() == before + (len(head) + len(payload) if fits else 0)
        if fits:
            sent += head + bytes(payload)
        got += out[: reader.read_into(out[: rng.randrange(1, 4096)])]
    while reader.available():
        got += out[: reader.read_into(out)]
    assert got == sent and len(sent) > 10 * 4096
    writer.close()
    reader.close()
