"""The protocol engine (`cmampi.p2p`) over an in-process loopback channel: each
protocol of the README's table, one rank after the other in this process (the
pulls are real CMA reads of our own memory). No mpiexec, no second process."""

from __future__ import annotations

import dataclasses
import os
import pickle

import numpy as np
import pytest
from loopback import LoopbackChannel, WouldBlock

from cmampi import _cma, _config, _names, _wire, objects, p2p
from cmampi._buffers import recv_buffer, send_buffer

TAG = 7


@pytest.fixture
def engines():
    """(rank 0's engine, rank 1's engine) over one loopback pair."""
    yield from _engine_pair()


def _engine_pair():
    try:
        _cma.probe(os.getpid())
    except OSError as exc:
        pytest.skip(f"CMA is not permitted here: {exc}")
    cfg = dataclasses.replace(_config.config, transport="cma", cma_min=None)
    a, b = LoopbackChannel.pair()
    e0, e1 = p2p.Engine(a, _names, cfg), p2p.Engine(b, _names, cfg)
    assert e0.cma == e1.cma == [True, True]     # both ranks may pull from each other
    yield e0, e1
    e0.free()
    e1.free()


@pytest.fixture
def engines_busy_apart(monkeypatch):
    """As `engines`, over a pair whose ranks pull from twice as far while they
    have receives pending."""
    monkeypatch.setattr(LoopbackChannel, "cma_min_busy", 2 * LoopbackChannel.cma_min)
    yield from _engine_pair()


def _sizes(engine):
    limit, band = engine.limit, engine.band
    return {"raw": limit - 8, "control band": limit + 100, "side": band + 100,
            "pulled": engine.cma_min + 4096}


@pytest.mark.parametrize("kind", ["raw", "control band", "side", "pulled"])
def test_each_protocol_delivers(engines, kind):
    e0, e1 = engines
    n = _sizes(e0)[kind]
    data = np.arange(n, dtype=np.uint8) * 7
    op = e0.isend(send_buffer(data), 1, TAG, False)
    out = np.zeros(n + 64, np.uint8)
    status = _names.Status()
    e1.recv(out, 0, TAG, status)
    assert (out[:n] == data).all() and not out[n:].any()
    assert (status.Get_source(), status.Get_tag(), status.Get_count(_names.BYTE)) == (0, TAG, n)
    p2p.wait_any([op])          # a pulled send completes on the receiver's reply
    e0.complete(op)


def test_a_rank_with_receives_pending_sends_as_itself_below_its_busy_threshold(
        engines_busy_apart):
    """Between the two pull thresholds a message is pulled, unless its sender
    has receives of its own pending (both directions at once): then it goes
    as itself. It arrives whole either way."""
    e0, e1 = engines_busy_apart
    n = (e0.cma_min + e0.cma_min_busy) // 2
    assert e0.cma_min < n < e0.cma_min_busy
    assert not e0.raw(n, 1, False) and e0.raw(e0.cma_min - 1, 1, False)
    pending = e0.irecv(recv_buffer(np.zeros(8, np.uint8)), 1, TAG + 1)
    assert e0.raw(n, 1, False) and not e0.raw(e0.cma_min_busy, 1, False)
    data = np.arange(n, dtype=np.uint8) * 3
    op = e0.isend(send_buffer(data), 1, TAG, False)
    assert isinstance(op, p2p.SendOp)
    out = np.zeros(n, np.uint8)
    e1.recv(out, 0, TAG)
    assert (out == data).all()
    p2p.wait_any([op])
    e0.complete(op)
    e1.send(np.ones(8, np.uint8), 0, TAG + 1)
    p2p.wait_any([pending])
    e0.complete(pending)
    assert not e0.raw(n, 1, False)


def test_pulled_message_is_read_from_the_senders_memory(engines):
    """The receiver pulls only once it has matched: what the sender's buffer
    holds then is what arrives (the descriptor names the memory, not a copy)."""
    e0, e1 = engines
    n = e0.cma_min
    data = np.zeros(n, np.uint8)
    op = e0.isend(send_buffer(data), 1, TAG, False)
    data[:] = 9                  # erroneous in MPI; here it shows where the bytes come from
    out = np.empty(n, np.uint8)
    e1.recv(out, 0, TAG)
    assert (out == 9).all()
    p2p.wait_any([op])


@pytest.mark.parametrize("flags", [0, _wire.F_OFFER, _wire.F_OFFER | _wire.F_SYNC,
                                   _wire.F_HELP | _wire.F_RECORD,
                                   _wire.F_OFFER | _wire.F_RECORD])
def test_a_pull_descriptor_built_in_place_is_the_general_one(flags):
    """`pull_control` (one-dimensional layouts, built in place) gives the bytes
    `control(pull_header(...))` gives, and `parse_pull` reads them back."""
    from cmampi._buffers import Layout

    for layout in (Layout.contiguous(0x7F0000001000, 1 << 20),
                   Layout(0x7F00000010, (100,), (1,), 4, 90),
                   Layout(0x1000, (4, 8), (16, 1), 0, 32)):
        for limit in (4096, 100, 0):
            msg = _wire.pull_control(7, flags, layout, 0xDEADBEEF, limit)
            assert msg == _wire.control(_wire.pull_header(7, flags, layout, 0xDEADBEEF), limit)
            got, xid, n, back, offer = _wire.parse_pull(_wire.header(memoryview(msg)))
            assert (got, xid, n, back.encode()) == (flags, 7, layout.nbytes, layout.encode())
            assert offer == (0xDEADBEEF if flags & _wire.F_OFFER else 0)


def test_a_nonblocking_pulled_send_offers_help_while_it_is_waited_for(engines, monkeypatch):
    """The descriptor of a send that was not blocked names its offer word: 1
    while a wait or test of the send runs. A receiver claims the offer in the
    word after it, then reads the offer again (a claim of a withdrawn offer
    is dropped); a wait that withdraws an offer someone claimed answers the
    request for help before it returns. The message arrives intact."""
    e0, e1 = engines
    pid = os.getpid()
    n = max(e0.coop_min, e0.cma_min) + 4096
    data = np.arange(n, dtype=np.uint8)
    op = e0.isend(send_buffer(data), 1, TAG, False)
    assert isinstance(op, p2p.PullSendOp) and op.offer is not None
    flags, _, nbytes, layout, offer = _wire.parse_pull(_wire.header(memoryview(op.notice[1])))
    assert flags & _wire.F_OFFER and not flags & _wire.F_HELP
    assert (nbytes, layout.addr, offer) == (n, data.ctypes.data, op.offer.ctypes.data)
    assert not p2p._claim_offer(pid, offer) and list(op.offer) == [0, 0]
    offering = p2p.Offering([op])   # a wait's or a test's
    with offering:
        assert offering.offered == [op] and list(op.offer) == [1, 0]
        real, looks = _cma.peek_word, []

        def withdrawn_meanwhile(pid: int, addr: int) -> int:
            looks.append(addr)
            return 1 if len(looks) == 1 else 0

        monkeypatch.setattr(_cma, "peek_word", withdrawn_meanwhile)
        assert not p2p._claim_offer(pid, offer) and list(op.offer) == [1, 0]    # dropped
        monkeypatch.setattr(_cma, "peek_word", real)
        out = np.zeros(n, np.uint8)
        recv = e1.irecv(recv_buffer(out), 0, TAG)
        p2p.progress()      # the receive acts: it claims the offer, asks, reads its part
        assert list(op.offer) == [1, 1] and op.helped is None
    # the block's end withdrew the offer and answered the request
    assert op.offer[0] == 0 and op.helped == _wire.ACK_OK
    p2p.wait_all([recv, op])
    assert (out == data).all() and op.done
    e1.complete(recv)
    e0.complete(op)


def _complete_window(e0, e1, recvs, sends) -> None:
    """Wait for a window of receives on *e1* and sends on *e0*, and complete each."""
    p2p.wait_all(recvs + sends)
    for op in recvs:
        e1.complete(op)
    for op in sends:
        e0.complete(op)


@pytest.mark.parametrize("last_offered", [True, False])
def test_replies_to_senders_that_offer_are_held_while_the_messages_in_are_taken(
        engines, monkeypatch, last_offered):
    """A wait or a test taking in the messages that are in (`p2p.Holding`)
    holds back the replies that end pulls whose senders offered help: a
    sender completing its window one request at a time stays in its wait, and
    the next message's claim finds its offer up. A pull whose sender does not
    offer sends the held replies first; the block's end sends the rest. Every
    message arrives intact."""
    e0, e1 = engines
    n = max(e0.coop_min, e0.cma_min) + 4096     # no late look
    data = [np.full(n, k + 1, np.uint8) for k in range(3)]
    sends = [e0.isend(send_buffer(d), 1, TAG, False) for d in data]
    sent = []
    real = e1.ch.send_reply

    def logged(data, dest, xid):
        sent.append((xid, "asks" if len(data) > 1 else "ends"))
        real(data, dest, xid)

    monkeypatch.setattr(e1.ch, "send_reply", logged)
    monkeypatch.setattr(p2p, "OFFER_AHEAD", 0)
    outs = [np.zeros(n, np.uint8) for _ in data]
    offering = p2p.Offering(sends if last_offered else sends[:2])   # the sender's wait
    with offering:
        recvs = [e1.irecv(recv_buffer(out), 0, TAG) for out in outs]
        p2p.progress()      # takes in the three messages: a Holding block
    xids = [op.xid for op in sends]
    if last_offered:
        order = [(x, "asks") for x in xids] + [(x, "ends") for x in xids]
    else:
        order = [(xids[0], "asks"), (xids[1], "asks"), (xids[0], "ends"), (xids[1], "ends"),
                 (xids[2], "ends")]
    assert sent == order
    _complete_window(e0, e1, recvs, sends)
    assert all((out == d).all() for out, d in zip(outs, data, strict=True))


def test_a_wait_answers_the_claims_made_before_it_withdraws_its_offers(engines, monkeypatch):
    """At a wait's end the claims already made are answered first, the offers
    still up: a receiver that finishes its part as we finish ours finds the
    next message's offer up. Claims made meanwhile are answered after the
    offers are withdrawn."""
    e0, e1 = engines
    n = max(e0.coop_min, e0.cma_min) + 4096
    data = [np.full(n, k + 1, np.uint8) for k in range(2)]
    sends = [e0.isend(send_buffer(d), 1, TAG, False) for d in data]
    seen = []
    real = _cma.writev

    def helping(pid, local, remote):    # the sender writes its part
        seen.append([int(op.offer[0]) for op in sends])
        return real(pid, local, remote)

    monkeypatch.setattr(_cma, "writev", helping)
    outs = [np.zeros(n, np.uint8) for _ in data]
    with p2p.Offering(sends):
        recvs = [e1.irecv(recv_buffer(out), 0, TAG) for out in outs]
        p2p.progress()      # claims and asks for both
        assert [op.helped for op in sends] == [None, None]
    assert seen == [[1, 1], [1, 1]]
    _complete_window(e0, e1, recvs, sends)
    assert all((out == d).all() for out, d in zip(outs, data, strict=True))


@pytest.mark.parametrize("fails", [OSError, KeyboardInterrupt])
def test_held_replies_all_go_when_one_cannot(fails):
    """A held reply that cannot go (its sender is gone) must not fail the
    unrelated message or wait that releases it, nor keep the others back; an
    interrupt is raised once they have gone."""
    went = []

    class Channel:
        def send_reply(self, data, dest, xid):
            if xid == 2:
                raise fails("no")
            went.append(xid)

    ch = Channel()
    with p2p.Holding():
        p2p._HELD[0] += [(ch, b"\0", 1, xid) for xid in (1, 2, 3)]
        if fails is OSError:
            p2p.release_held()
        else:
            with pytest.raises(KeyboardInterrupt):
                p2p.release_held()
        assert went == [1, 3] and p2p._HELD[0] == []
    assert p2p._HELD[0] is None


def test_a_wait_on_one_send_offers_help_for_the_next_ones_too(engines):
    """A wait on one pulled send also offers help for the oldest others in
    flight (`p2p.OFFER_AHEAD` of them): a sender waiting for each request in
    turn helps copy the messages after it. Its receiver claims all of them."""
    e0, e1 = engines
    n = max(e0.coop_min, e0.cma_min) + 4096
    count = p2p.OFFER_AHEAD + 2
    data = [np.full(n, k + 1, np.uint8) for k in range(count)]
    sends = [e0.isend(send_buffer(d), 1, TAG, False) for d in data]
    assert list(e0.offering) == sends
    outs = [np.zeros(n, np.uint8) for _ in data]
    with p2p.Offering([sends[1]]) as offering:     # Wait on the second
        assert offering.ahead == [sends[0], *sends[2:-1]]
        assert [op.offer[0] for op in sends] == [1] * (count - 1) + [0]
        recvs = [e1.irecv(recv_buffer(out), 0, TAG) for out in outs]
        p2p.progress()      # claims, asks and reads its part of all but the last
        assert [op.offer[1] for op in sends] == [1] * (count - 1) + [0]
    assert [op.helped for op in sends] == [_wire.ACK_OK] * (count - 1) + [None]
    _complete_window(e0, e1, recvs, sends)
    assert all((out == d).all() for out, d in zip(outs, data, strict=True))
    assert not e0.offering


@pytest.mark.parametrize("kind", ["raw", "side", "pulled"])
def test_truncation_raises_on_the_receiver_and_writes_nothing_beyond(engines, kind):
    e0, e1 = engines
    n = _sizes(e0)[kind]
    op = e0.isend(send_buffer(np.ones(n, np.uint8)), 1, TAG, False)
    out = np.zeros(n // 2 + 16, np.uint8)
    guarded = out[:-16]
    with pytest.raises(_names.Exception) as info:
        e1.recv(guarded, 0, TAG)
    assert info.value.Get_error_class() == _names.ERR_TRUNCATE
    assert not out[-16:].any()
    try:
        p2p.wait_any([op])
        e0.complete(op)
    except _names.Exception:
        pass                     # a pulled send learns of the truncation


def test_strided_receive_keeps_the_gaps(engines):
    e0, e1 = engines
    n = 3 * e0.cma_min // 8
    data = np.arange(n, dtype=np.float64)
    op = e0.isend(send_buffer(data), 1, TAG, False)
    out = np.full(2 * n, -1.0)
    e1.recv(out[::2], 0, TAG)
    assert (out[::2] == data).all() and (out[1::2] == -1.0).all()
    p2p.wait_any([op])


def test_a_receiver_stops_looking_for_offers_that_never_come(engines, monkeypatch):
    """A receiver looks for a late offer of help once in a pull, after its
    first piece. From a sender whose offers were not there `LATE_MISSES`
    times in a row, it looks once in `LATE_RETRY` messages only."""
    e0, e1 = engines
    n = 2 * max(e0.coop_min, e0.cma_min)
    data = np.arange(n, dtype=np.uint8)
    looks = []
    real = _cma.peek_word
    monkeypatch.setattr(_cma, "peek_word", lambda pid, addr: looks.append(addr) or real(pid, addr))
    count = p2p.LATE_MISSES + 2 * p2p.LATE_RETRY
    for _ in range(count):
        op = e0.isend(send_buffer(data), 1, TAG, False)    # not waited for: no offer
        out = np.zeros(n, np.uint8)
        e1.recv(out, 0, TAG)
        assert (out == data).all()
        p2p.wait_all([op])
        e0.complete(op)
    late = [i for i in range(count) if i < p2p.LATE_MISSES or i % p2p.LATE_RETRY == 0]
    assert len(looks) == count + len(late)     # one at the descriptor, one late


def test_a_receiver_looks_for_no_offer_of_an_object_s_record(engines, monkeypatch):
    """An object's record long enough to be pulled is waited for inside its
    object's op, which offers no help: its receiver pulls it without looking
    for offers (a look that always misses would make it stop looking at the
    sender's buffers too, `LATE_MISSES`)."""
    e0, e1 = engines
    n = 2 * max(e0.coop_min, e0.cma_min)
    obj = {"in band": bytes(range(256)) * (n // 256), "out": np.arange(n, dtype=np.uint8)}
    looks = []
    real = _cma.peek_word
    monkeypatch.setattr(_cma, "peek_word", lambda pid, addr: looks.append(addr) or real(pid, addr))
    op = objects.isend(e0, obj, 1, TAG, False, False)
    got = objects.recv(e1, 0, TAG)
    p2p.wait_all([op])
    e0.complete(op)
    assert got["in band"] == obj["in band"] and (got["out"] == obj["out"]).all()
    assert looks == [] and e1.late_misses[0] == 0


@pytest.mark.parametrize("now", [None, KeyboardInterrupt])
def test_acting_on_a_message_raises_its_own_error_first(engines, monkeypatch, now):
    """An error another receive into the same buffer raised while its head was
    read first is raised once the message at hand has been acted on; if acting
    on it raised too (an interrupted pull), that error is raised, the other's
    as its context."""
    e0, e1 = engines
    earlier = RuntimeError("the other receive's")

    def act(op, head):
        if now is not None:
            raise now("this message's")

    monkeypatch.setattr(e1, "_act", act)
    monkeypatch.setattr(e1, "_read_heads_first", lambda op, span: earlier)
    out = np.zeros(e0.cma_min + 4096, np.uint8)
    op = e1.irecv(recv_buffer(out), 0, TAG)
    other = e1.irecv(recv_buffer(out), 0, TAG)
    with pytest.raises(now or RuntimeError) as info:
        e1.act(op, b"")
    if now is None:
        assert info.value is earlier
    else:
        assert isinstance(info.value, now) and info.value.__context__ is earlier
    monkeypatch.undo()
    # Both receives take a message, and nothing is left pending.
    sends = [e0.isend(send_buffer(np.full(8, k, np.uint8)), 1, TAG, False) for k in (1, 2)]
    p2p.wait_all([op, other, *sends])
    assert not p2p._PENDING


def test_nonblocking_receive_posted_first(engines):
    e0, e1 = engines
    sizes = _sizes(e0)
    recvs = [(n, np.zeros(n, np.uint8)) for n in sizes.values()]
    ops = [e1.irecv(recv_buffer(buf), 0, TAG + i) for i, (n, buf) in enumerate(recvs)]
    sends = [e0.isend(send_buffer(np.full(n, i + 1, np.uint8)), 1, TAG + i, False)
             for i, (n, _) in enumerate(recvs)]
    p2p.wait_all(ops)
    p2p.wait_all(sends)
    for i, (_, buf) in enumerate(recvs):
        assert (buf == i + 1).all()


def test_receives_into_one_buffer_read_their_control_messages_in_order(engines):
    """Two receives into one buffer: the first lands in place, where its
    control message (a pull's descriptor) sits until it is read. When the
    channel has both messages and the second is advanced first (a channel that
    takes several messages in one call, a test of a later request), the first
    is read before the second's payload covers its head."""
    e0, e1 = engines
    n = e0.cma_min + 4096
    out = np.zeros(n, np.uint8)
    first, second = (e1.irecv(recv_buffer(out), 0, TAG) for _ in range(2))
    assert e1.landing and first in e1.landing
    data = [np.full(n, k, np.uint8) for k in (1, 2)]
    sends = [e0.isend(send_buffer(d), 1, TAG, False) for d in data]
    second.advance(e1.ch.test(second.handle))
    p2p.wait_all([first, second])
    assert first.error is None and second.error is None
    assert (out == 2).all()             # the later message lands last
    p2p.wait_all(sends)
    for op in (first, second, *sends):
        op.engine.complete(op)


def test_object_record_received_by_a_buffer_receive_is_its_pickle(engines):
    """An object whose buffers stay with the sender travels as a RECORD control
    message; a buffer receive gets the object's in-band pickle instead."""
    e0, e1 = engines
    obj = {"a": np.arange(objects.P2P_OOB_MIN // 8, dtype=np.float64), "b": [1, 2]}
    op = objects.isend(e0, obj, 1, TAG, False, False)
    out = bytearray(2 * objects.P2P_OOB_MIN)
    status = _names.Status()
    e1.recv(out, 0, TAG, status)
    got = pickle.loads(out[: status.Get_count(_names.BYTE)])
    assert (got["a"] == obj["a"]).all() and got["b"] == [1, 2]
    p2p.wait_any([op])
    e0.complete(op)


@pytest.mark.parametrize("kind", ["side", "pulled"])
def test_a_buffer_that_looks_like_a_record_arrives_as_it_is(engines, kind):
    """Only a payload its descriptor names a record (F_RECORD) is read as one: a
    buffer whose bytes happen to hold a record's mark arrives unchanged."""
    e0, e1 = engines
    n = _sizes(e0)[kind]
    data = np.arange(n, dtype=np.uint8)
    reader = p2p.RECORDS[0]
    data[reader.at : reader.end] = np.frombuffer(reader.mark, np.uint8)
    op = e0.isend(send_buffer(data), 1, TAG, False)
    out = np.zeros(n + 64, np.uint8)
    status = _names.Status()
    e1.recv(out, 0, TAG, status)
    assert status.Get_count(_names.BYTE) == n and (out[:n] == data).all()
    p2p.wait_any([op])
    e0.complete(op)


def test_object_record_travels_in_a_control_message(engines):
    e0, e1 = engines
    obj = {"a": np.ones(objects.P2P_OOB_MIN // 8)}
    op = objects.isend(e0, obj, 1, TAG, False, False)
    handle, (src, tag, count) = e1.ch.mprobe(0, TAG)
    assert _wire.is_control(count, e1.limit)
    msg = bytearray(count)
    e1.ch.mrecv(handle, msg)
    assert _wire.kind(_wire.header(msg)) == _wire.RECORD
    # Hand it back as received: the object receive pulls and frees the sender.
    got = objects._completed(e1, e1.control(_wire.header(msg), None, src, tag), None)
    assert (got["a"] == 1.0).all()
    p2p.wait_any([op])


def test_a_receive_nothing_was_sent_for_would_block(engines):
    _, e1 = engines
    with pytest.raises(WouldBlock):
        e1.recv(np.zeros(8, np.uint8), 0, TAG)


@pytest.mark.parametrize("n", [8, 1 << 16])
def test_a_receive_the_channel_refuses_leaves_no_trace(engines, monkeypatch, n):
    """A receive whose posting fails is forgotten: it does not count as landing
    in its buffer, so the next receive into that buffer goes in place (or in its
    own small stage) and delivers."""
    e0, e1 = engines
    buf = np.zeros(n, np.uint8)

    def refuse(*args):
        raise RuntimeError("refused")

    with monkeypatch.context() as m:
        m.setattr(e1.ch, "irecv", refuse)
        with pytest.raises(RuntimeError, match="refused"):
            e1.irecv(recv_buffer(buf), 0, TAG)
    assert not (e1.landing or e1.tails or e1.staged or e1.spans or e1.small_recvs)
    op = e1.irecv(recv_buffer(buf), 0, TAG)
    assert op.inplace == (n >= e1.stage_size)
    send = e0.isend(send_buffer(np.full(n, 5, np.uint8)), 1, TAG, False)
    p2p.wait_all([op, send])
    assert (buf == 5).all()
