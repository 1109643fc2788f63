"""The socket channel's handshake and failure handling, with real processes.

Serial tests (no MPI, no launcher): every rank of a job, and every impostor,
is a process forked here that builds its ``Hub`` directly, with a private
rendezvous directory. ``Hub()`` blocks until all its connections are made, so
the parent only ever talks to its children through pipes read with deadlines,
and kills (SIGKILL, by the pids it forked) and reaps every child that is still
there when a test ends: no test can hang.

A rank listens at ``<dir>/rank-<r>.sock`` while it waits for the lower ranks
to connect. To put an impostor in front of it, a test releases the higher rank
first, lets the impostor knock and be turned away, and only then releases the
real rank 0; the job must still complete.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import stat
import struct
import tempfile
import time
import traceback

import numpy as np
import pytest
from childpipe import read_msg, write_msg

from cmampi.channel import _ring
from cmampi.channel.socket import Hub, PeerFailed, SocketChannel

HELLO = struct.Struct("<32sI")     # what a connecting rank sends: job token, its rank
STEP = 15.0                        # longest a single step may take, seen from the parent
NOBODY = 65534


class Link:
    """The child's end: messages up to the parent, and down from it."""

    def __init__(self, down: int, up: int) -> None:
        self.down, self.up = down, up

    def send(self, tag: str, value=None) -> None:
        write_msg(self.up, (tag, value))

    def expect(self, tag: str, timeout: float = STEP):
        got, value = read_msg(self.down, timeout)
        assert got == tag, (got, tag)
        return value


class Child:
    """A forked process running ``fn(link, *args, **kw)``; its result goes up as "done"."""

    def __init__(self, procs: Procs, name: str, fn, args, kw) -> None:
        down_r, down_w = os.pipe()
        up_r, up_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                for fd in procs.fds:        # other children's pipe ends: not ours
                    try:
                        os.close(fd)
                    except OSError:
                        pass
                os.close(down_w)
                os.close(up_r)
                out = fn(Link(down_r, up_w), *args, **kw)
                write_msg(up_w, ("done", out))
                code = 0
            except BaseException:  # noqa: BLE001 (a child reports any failure to its test)
                try:
                    write_msg(up_w, ("error", traceback.format_exc()))
                except BaseException:  # noqa: BLE001 (a child reports any failure to its test)
                    pass
            finally:
                os._exit(code)
        os.close(down_r)
        os.close(up_w)
        self.name, self.pid, self.down, self.up = name, pid, down_w, up_r
        self.status = None
        procs.fds += [down_w, up_r]

    def send(self, tag: str, value=None) -> None:
        write_msg(self.down, (tag, value))

    def expect(self, tag: str, timeout: float = STEP):
        try:
            got, value = read_msg(self.up, timeout)
        except TimeoutError:
            pytest.fail(f"{self.name} (pid {self.pid}): no {tag!r} within {timeout} s")
        except EOFError:
            pytest.fail(f"{self.name} (pid {self.pid}) exited before {tag!r}: "
                        f"status {self.join(5)}")
        if got == "error":
            pytest.fail(f"{self.name} (pid {self.pid}) failed:\n{value}")
        assert got == tag, f"{self.name}: got {got!r}, expected {tag!r}"
        return value

    def result(self, timeout: float = STEP):
        return self.expect("done", timeout)

    def poll(self):
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = status
        return self.status

    def join(self, timeout: float):
        """The exit code (negative: killed by that signal); kills the child after *timeout*."""
        deadline = time.monotonic() + timeout
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        if self.poll() is None:
            self.kill()
        return os.waitstatus_to_exitcode(self.status)

    def kill(self) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _, self.status = os.waitpid(self.pid, 0)


class Procs:
    """Every child a test forked; all of them are killed and reaped at its end."""

    def __init__(self) -> None:
        self.children = []
        self.fds = []

    def fork(self, fn, *args, name: str = "", **kw) -> Child:
        child = Child(self, name or fn.__name__, fn, args, kw)
        self.children.append(child)
        return child

    def cleanup(self) -> None:
        for child in self.children:
            try:
                child.kill()
            except ChildProcessError:
                pass
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture
def procs():
    p = Procs()
    try:
        yield p
    finally:
        p.cleanup()


@pytest.fixture
def rdv():
    """A private (0700) rendezvous directory with a short path (sun_path is 108 bytes)."""
    d = tempfile.mkdtemp(prefix="cmt-", dir="/tmp" if os.path.isdir("/tmp") else None)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _socks(directory: str):
    return sorted(glob.glob(os.path.join(directory, "rank-*.sock")))


# -- what the children run ---------------------------------------------------------------
def _drop_privileges(uid: int) -> None:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


def _knock(path: str, hello: bytes) -> str:
    """Connect to a listening rank, present *hello*, and see how we are received."""
    deadline = time.monotonic() + STEP
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        while True:
            try:
                s.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.002)
        s.sendall(hello)
        if len(hello) < HELLO.size:
            s.shutdown(socket.SHUT_WR)   # a short hello: say it is all there is
        s.settimeout(5)
        try:
            got = s.recv(1)
        except ConnectionResetError:
            return "reset"
        except TimeoutError:
            return "no answer"
        if got == b"\x01":
            return "accepted"
        return "closed" if got == b"" else f"answered {got!r}"
    finally:
        s.close()


def _impostor(link, path: str, hello: bytes, drop_to=None):
    if drop_to is not None:
        _drop_privileges(drop_to)
    return {"outcome": _knock(path, hello), "pid": os.getpid(), "uid": os.getuid()}


def _rank(link, rank: int, size: int, directory: str, token: bytes, *, hold: bool = False,
          umask=None, drop_to=None, knock_first=None):
    """One rank of a job: wait for "go" (the expected pids), build the hub, talk.

    *knock_first*: before anything else, present this hello to rank 1 from
    this (expected) pid, as the uid we are now, and report how we were
    received. *drop_to*: then become that uid/gid. *umask*: for the listening
    socket's mode.
    """
    pids = link.expect("go")
    out = {"pid": os.getpid()}
    if knock_first is not None:
        out["knock"] = _knock(os.path.join(directory, "rank-1.sock"), knock_first)
    if drop_to is not None:
        _drop_privileges(drop_to)
    if umask is not None:
        os.umask(umask)
    hub = Hub(rank, size, directory, token, pids)
    ch = SocketChannel(hub, 0, list(range(size)))
    if hold:
        link.send("built")
        link.expect("continue")
    right, left = (rank + 1) % size, (rank - 1) % size
    # The big receive is posted before anything is sent: a receive posted while
    # its message is still arriving is never matched (see the last tests), and
    # these jobs are here to check the handshake, not that.
    got = np.zeros(1 << 20, np.uint8)            # > a 64 KiB read: arrives in pieces
    hin = ch.irecv(got, left, 8)
    ch.send(np.array([rank, 1000 + rank], np.int64), right, 7)
    small = np.zeros(2, np.int64)
    status = ch.recv(small, left, 7)
    hout = ch.isend(np.full(1 << 20, rank, np.uint8), right, 8)
    hub.wait(lambda: hin.done and hout.done)
    assert hin.info[3] is None and hout.info[3] is None, (hin.info, hout.info)
    ch.barrier()
    hub.close()
    out.update(hub_pids=list(hub.pids), ch_pids=list(ch.pids), small=small.tolist(),
               status=tuple(status), big_ok=bool((got == left).all()), uid=os.getuid())
    return out


def _check_job(kids, directory):
    pids = [k.pid for k in kids]
    size = len(kids)
    outs = [k.result() for k in kids]
    for r, out in enumerate(outs):
        left = (r - 1) % size
        assert out["pid"] == pids[r]
        assert out["hub_pids"] == pids, "hub.pids must be the peers' SO_PEERCRED pids"
        assert out["ch_pids"] == pids
        assert out["small"] == [left, 1000 + left]
        assert out["status"] == (left, 7, 16)
        assert out["big_ok"]
    for k in kids:
        assert k.join(5) == 0, k.name
    assert _socks(directory) == []
    return outs


def _two_rank_job_with_listener(procs, rdv, token, **rank1_kw):
    """Ranks 0 and 1 forked; rank 1 released (it listens, waiting for rank 0)."""
    r0 = procs.fork(_rank, 0, 2, rdv, token, name="rank 0")
    r1 = procs.fork(_rank, 1, 2, rdv, token, name="rank 1", **rank1_kw)
    pids = [r0.pid, r1.pid]
    r1.send("go", pids)
    return r0, r1, pids


# -- 1. the real job ---------------------------------------------------------------------
def test_three_rank_job(procs, rdv):
    token = os.urandom(32)
    kids = [procs.fork(_rank, r, 3, rdv, token, name=f"rank {r}") for r in range(3)]
    pids = [k.pid for k in kids]
    for k in kids:
        k.send("go", pids)
    _check_job(kids, rdv)


# -- 2. wrong token (and other malformed hellos) -----------------------------------------
@pytest.mark.parametrize("hello", [
    pytest.param(lambda tok: HELLO.pack(bytes(32), 0), id="zero-token"),
    pytest.param(lambda tok: HELLO.pack(tok[:31] + bytes([tok[31] ^ 1]), 0), id="one-bit-off"),
    pytest.param(lambda tok: HELLO.pack(tok, 1), id="right-token-claims-listener-rank"),
    pytest.param(lambda tok: HELLO.pack(tok, 7), id="right-token-rank-out-of-range"),
    pytest.param(lambda tok: HELLO.pack(tok, 0)[:20], id="truncated-hello"),
])
def test_wrong_hello_is_refused(procs, rdv, hello):
    """A stranger (its pid is no rank's) presents a bad hello; then the job runs."""
    token = os.urandom(32)
    r0, r1, pids = _two_rank_job_with_listener(procs, rdv, token)
    imp = procs.fork(_impostor, os.path.join(rdv, "rank-1.sock"), hello(token), name="impostor")
    out = imp.result()
    assert out["outcome"] in ("closed", "reset"), out
    assert imp.join(5) == 0
    r0.send("go", pids)
    _check_job([r0, r1], rdv)


@pytest.mark.parametrize("hello", [
    pytest.param(lambda tok: HELLO.pack(bytes(32), 0), id="zero-token"),
    pytest.param(lambda tok: HELLO.pack(tok[:31] + bytes([tok[31] ^ 1]), 0), id="one-bit-off"),
    pytest.param(lambda tok: HELLO.pack(tok, 1), id="right-token-claims-listener-rank"),
    pytest.param(lambda tok: HELLO.pack(tok, 7), id="right-token-rank-out-of-range"),
])
def test_wrong_hello_is_refused_even_from_the_right_pid(procs, rdv, hello):
    """The bad hello comes from rank 0's own process (right uid, expected pid), so
    only the token/rank check can turn it away; rank 0 then joins for real."""
    token = os.urandom(32)
    r0 = procs.fork(_rank, 0, 2, rdv, token, knock_first=hello(token), name="rank 0")
    r1 = procs.fork(_rank, 1, 2, rdv, token, name="rank 1")
    pids = [r0.pid, r1.pid]
    r1.send("go", pids)
    r0.send("go", pids)
    outs = _check_job([r0, r1], rdv)
    assert outs[0]["knock"] in ("closed", "reset"), outs[0]


# -- 3. right token, but not a process of the job ----------------------------------------
def test_right_token_from_foreign_pid_is_refused(procs, rdv):
    token = os.urandom(32)
    r0, r1, pids = _two_rank_job_with_listener(procs, rdv, token)
    path = os.path.join(rdv, "rank-1.sock")
    imp = procs.fork(_impostor, path, HELLO.pack(token, 0), name="impostor")
    out = imp.result()
    assert out["pid"] not in pids
    assert out["outcome"] in ("closed", "reset"), out
    assert imp.join(5) == 0
    r0.send("go", pids)
    _check_job([r0, r1], rdv)


def test_three_ranks_survive_impostors_at_every_listener(procs, rdv):
    """Ranks 1 and 2 both listen; each is knocked at by a foreign pid with the token."""
    token = os.urandom(32)
    kids = [procs.fork(_rank, r, 3, rdv, token, name=f"rank {r}") for r in range(3)]
    pids = [k.pid for k in kids]
    kids[2].send("go", pids)
    for claim in (0, 1):
        imp = procs.fork(_impostor, os.path.join(rdv, "rank-2.sock"), HELLO.pack(token, claim))
        assert imp.result()["outcome"] in ("closed", "reset")
    kids[1].send("go", pids)       # rank 1 connects to rank 2, then listens for rank 0
    imp = procs.fork(_impostor, os.path.join(rdv, "rank-1.sock"), HELLO.pack(token, 0))
    assert imp.result()["outcome"] in ("closed", "reset")
    kids[0].send("go", pids)
    _check_job(kids, rdv)


# -- 4. another uid ----------------------------------------------------------------------
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="changing uid needs root")


@needs_root
def test_foreign_uid_is_refused(procs, rdv):
    """An impostor running as nobody, with the right token, claiming rank 0.

    To even reach the listening socket, the impostor needs search permission
    on the rendezvous directory and write permission on the socket file
    (unix(7): connect(2) needs write permission on the socket). So in this
    test only the directory is 0711 (others may traverse it to a known name,
    but neither list nor create entries) and the listening rank binds with
    umask 0 (its socket file is 0777). With the usual 0700 directory the
    kernel would refuse the connect with EACCES before the Hub ever saw it,
    and the uid check would not be exercised at all.
    """
    os.chmod(rdv, 0o711)
    token = os.urandom(32)
    r0, r1, pids = _two_rank_job_with_listener(procs, rdv, token, umask=0)
    imp = procs.fork(_impostor, os.path.join(rdv, "rank-1.sock"), HELLO.pack(token, 0),
                     drop_to=NOBODY, name="impostor")
    out = imp.result()
    assert out["uid"] == NOBODY
    assert out["outcome"] in ("closed", "reset"), out
    assert imp.join(5) == 0
    r0.send("go", pids)
    _check_job([r0, r1], rdv)


@needs_root
def test_foreign_uid_is_refused_even_with_the_right_pid(procs, rdv):
    """Only the uid is wrong: the knocker is rank 0's own (expected) pid, with the token.

    The job runs as nobody (the directory is nobody's, 0700; root reaches it
    anyway). Rank 0 first knocks as root with a hello that is right in every
    other respect, so the pid check cannot be what turns it away; then it
    becomes nobody and joins the job for real.
    """
    os.chown(rdv, NOBODY, NOBODY)
    token = os.urandom(32)
    r0 = procs.fork(_rank, 0, 2, rdv, token, knock_first=HELLO.pack(token, 0), drop_to=NOBODY,
                    name="rank 0")
    r1 = procs.fork(_rank, 1, 2, rdv, token, drop_to=NOBODY, name="rank 1")
    pids = [r0.pid, r1.pid]
    r1.send("go", pids)
    r0.send("go", pids)
    outs = _check_job([r0, r1], rdv)
    assert outs[0]["knock"] in ("closed", "reset"), outs[0]
    assert outs[0]["uid"] == outs[1]["uid"] == NOBODY


# -- 5. a peer dies ----------------------------------------------------------------------
def _survivor(link, directory: str, token: bytes, pending_recv: bool, tries: int = 2):
    """Rank 1 of 2: optionally post a receive from rank 0, then outlive it; then
    send to it up to *tries* times (with progress between the sends if 2)."""
    pids = link.expect("go")
    hub = Hub(1, 2, directory, token, pids)
    ch = SocketChannel(hub, 0, [0, 1])
    link.send("built")
    out = {}
    if pending_recv:
        buf = np.zeros(4, np.int64)
        h = ch.irecv(buf, 0, 3)
        link.send("posted")
        hub.wait(lambda: h.done)
        out["done_at"] = time.monotonic()
        err = h.info[3]
        out["recv_err"] = (type(err).__name__, isinstance(err, PeerFailed),
                           getattr(err, "rank", None))
    else:
        link.expect("killed")
    attempts = []
    for _ in range(tries):     # the first send may only discover the death
        try:
            ch.send(np.ones(4, np.int64), 0, 4)
            attempts.append(("sent", None))
        except PeerFailed as exc:
            attempts.append(("PeerFailed", exc.rank))
            break
        except BaseException as exc:  # noqa: BLE001 (anything else is a wrong answer: report it)
            attempts.append((type(exc).__name__, str(exc)))
            break
        if tries == 2:
            hub.progress(0)
    out["send"] = attempts
    # A receive posted once the death is known fails at once.
    h2 = ch.irecv(np.zeros(1, np.int64), 0, 5)
    out["late_recv"] = (h2.done, isinstance(h2.info[3], PeerFailed) if h2.done else None)
    return out


@pytest.mark.parametrize("pending_recv", [True, False], ids=["pending-recv", "send-only"])
def test_killed_peer_fails_its_operations(procs, rdv, pending_recv):
    token = os.urandom(32)
    r0 = procs.fork(_rank, 0, 2, rdv, token, hold=True, name="rank 0")
    r1 = procs.fork(_survivor, rdv, token, pending_recv, name="rank 1")
    pids = [r0.pid, r1.pid]
    for k in (r1, r0):
        k.send("go", pids)
    r0.expect("built")
    r1.expect("built")
    if pending_recv:
        r1.expect("posted")
    killed_at = time.monotonic()
    r0.kill()                      # SIGKILL, and reaped
    assert r0.join(1) == -signal.SIGKILL
    if not pending_recv:
        r1.send("killed")
    out = r1.result(10)
    if pending_recv:
        assert out["recv_err"] == ("PeerFailed", True, 0), out
        assert out["done_at"] - killed_at < 2.0, "the receive must fail promptly"
    assert out["send"][-1] == ("PeerFailed", 0), out["send"]
    assert len(out["send"]) <= 2
    assert out["late_recv"] == (True, True)
    assert r1.join(5) == 0


def test_sends_alone_find_a_killed_peer(procs, rdv):
    """Sends to a killed peer, with nothing else in between, raise within a few:
    frames into a shared-memory ring say nothing of the reader's end, so the
    sender asks the kernel every 16th send."""
    token = os.urandom(32)
    r0 = procs.fork(_rank, 0, 2, rdv, token, hold=True, name="rank 0")
    r1 = procs.fork(_survivor, rdv, token, False, 40, name="rank 1")
    pids = [r0.pid, r1.pid]
    for k in (r1, r0):
        k.send("go", pids)
    r0.expect("built")
    r1.expect("built")
    r0.kill()
    assert r0.join(1) == -signal.SIGKILL
    r1.send("killed")
    out = r1.result(10)
    assert out["send"][-1] == ("PeerFailed", 0), out["send"]
    assert len(out["send"]) <= 17
    assert r1.join(5) == 0


# -- 6. no socket files are left once the hubs are built --------------------------------
def test_listening_sockets_removed_after_setup(procs, rdv):
    token = os.urandom(32)
    kids = [procs.fork(_rank, r, 3, rdv, token, hold=True, name=f"rank {r}") for r in range(3)]
    pids = [k.pid for k in kids]
    for k in kids:
        k.send("go", pids)
    for k in kids:
        k.expect("built")
    # Every hub is built and every process still alive: the hubs removed their files.
    assert _socks(rdv) == []
    assert os.listdir(rdv) == []
    for k in kids:
        k.send("continue")
    _check_job(kids, rdv)


# -- found on the way: a receive posted while its message is arriving --------------------
def _stream_sender(link, directory: str, token: bytes, space: str, rings: bool):
    pids = link.expect("go")
    hub = Hub(0, 2, directory, token, pids, rings=rings)
    ch = SocketChannel(hub, 0, [0, 1])
    data = np.full(3 << 20, 5, np.uint8)      # more than a socket or a ring takes at once
    h = ch.isend(data, 1, 8) if space == "user" else ch.isend_payload(data, 1, 3)
    link.send("queued")
    link.expect("drain")           # until then the rest stays queued here
    hub.wait(lambda: h.done)
    link.send("sent")
    link.expect("continue")        # stay alive: our exit would fail rank 1's receive
    hub.close()


def _stream_receiver(link, directory: str, token: bytes, space: str, rings: bool):
    pids = link.expect("go")
    hub = Hub(1, 2, directory, token, pids, rings=rings)
    ch = SocketChannel(hub, 0, [0, 1])
    link.expect("queued")
    deadline = time.monotonic() + 5
    while hub.conns[0].cur is None and time.monotonic() < deadline:
        hub.progress(0.01)         # until the header is in and the payload is not
    arriving = hub.conns[0].cur is not None
    buf = np.zeros(3 << 20, np.uint8)
    h = ch.irecv(buf, 0, 8) if space == "user" else ch.irecv_payload(buf, 0, 3)
    link.send("posted")
    deadline = time.monotonic() + 5
    while not h.done and time.monotonic() < deadline:
        hub.progress(0.05)
    kept = [(s, t, len(d)) for s, t, d in hub.matching.unexpected[0]] + \
        [(k, len(q[0])) for k, q in hub.matching.side_unexpected.items() if q]
    return {"arriving": arriving, "done": h.done, "ok": bool((buf == 5).all()),
            "kept as unexpected": kept, "ringed": len(hub.ringed)}


@pytest.mark.parametrize("rings", [False, True], ids=["socket", "rings"])
@pytest.mark.parametrize("space", ["user", "side"])
def test_recv_posted_while_its_message_is_arriving(procs, rdv, space, rings):
    """Rank 0 sends 3 MiB; rank 1 has read the frame header (nothing matched it,
    so the payload goes to a temporary buffer) but not the whole payload when it
    posts the matching receive. The receive must get the message, whether frames
    travel through the socket or through shared-memory rings."""
    if rings and not _ring.supported():
        pytest.skip("no shared-memory rings on this machine")
    token = os.urandom(32)
    r0 = procs.fork(_stream_sender, rdv, token, space, rings, name="rank 0")
    r1 = procs.fork(_stream_receiver, rdv, token, space, rings, name="rank 1")
    pids = [r0.pid, r1.pid]
    for k in (r1, r0):
        k.send("go", pids)
    r0.expect("queued")
    r1.send("queued")
    r1.expect("posted")
    r0.send("drain")
    out = r1.result()
    r0.expect("sent")
    r0.send("continue")
    r0.result()
    assert out["ringed"] == (1 if rings else 0), out
    assert out["arriving"], "set-up: the payload should still have been arriving"
    assert out["done"] and out["ok"], out


def test_a_payload_cut_off_by_its_senders_death_fails_its_receive():
    """A receive matched by a frame whose payload was still arriving when the
    sender died completes with PeerFailed (it had left the posted receives)."""
    from cmampi.channel._matching import USER
    from cmampi.channel._peer import FRAME, Peer

    hub = Hub(0, 1, None, b"")
    a, b = socket.socketpair()
    a.setblocking(False)
    conn = Peer(a, 1, os.getpid())
    conn.on_lost = hub._lost
    hub.conns, hub.pids, hub.unringed = [None, conn], [os.getpid()] * 2, 1
    hub.by_fd[a.fileno()] = conn
    try:
        h = hub.post_recv(0, 1, 5, bytearray(100_000))
        b.sendall(FRAME.pack(USER, 0, 5, 100_000) + b"x" * 1000)
        conn.pump(hub.matching)
        assert conn.cur is not None and not h.done, "set-up: the payload is arriving"
        b.close()
        conn.pump(hub.matching)                     # the end of the connection
        assert h.done and isinstance(h.info.error, PeerFailed) and h.info.error.rank == 1
    finally:
        hub.conns = [None, None]
        a.close()
        b.close()


def _ringed_hub(record=lambda ms, tx: ms):
    """A hub of rank 0 whose peer 1 writes frames into a ring (``tx``), a poller
    that records ``record(timeout, tx)`` instead of asking the kernel, and the
    list of what it recorded; then a function that takes it all down."""
    from cmampi.channel._peer import Peer

    hub = Hub(0, 1, None, b"")
    a, b = socket.socketpair()
    fd = _ring.Ring.create(1 << 16)
    tx, rx = _ring.Ring(fd), _ring.Ring(fd)
    os.close(fd)
    conn = Peer(a, 1, os.getpid())
    conn.rx = rx
    conn.on_lost = hub._lost
    hub.conns = [None, conn]
    hub.ringed = (conn,)
    hub.by_fd[a.fileno()] = conn
    calls = []

    class Poller:
        def poll(self, ms):
            calls.append(record(ms, tx))
            return []

    hub.poller = Poller()

    def done():
        hub.ringed = ()
        hub.conns = [None, None]
        a.close()
        b.close()

    return hub, tx, calls, done


@pytest.mark.skipif(not _ring.supported(), reason="no shared-memory rings on this machine")
def test_a_wait_that_took_frames_from_a_ring_does_not_sleep(procs):
    """progress(None) that finds frames in a ring hands them on and returns at
    once (polling the kernel with no timeout): the frame may be what the caller
    waits for. A wait that found nothing sleeps with the rings' readers asleep."""
    from cmampi.channel._matching import USER
    from cmampi.channel._peer import FRAME

    hub, tx, calls, close = _ringed_hub(lambda ms, tx: (ms, tx.asleep()))
    tx.write([FRAME.pack(USER, 0, 5, 3), b"abc"])
    hub.progress(None)
    assert calls == [(0, False)]
    assert [(s, t, bytes(d)) for s, t, d in hub.matching.unexpected[0]] == [(1, 5, b"abc")]
    hub.progress(None)          # nothing left: now it sleeps, bounded, asleep
    assert calls[1][0] > 0 and calls[1][1] is True
    assert not tx.asleep()
    close()


@pytest.mark.skipif(not _ring.supported(), reason="no shared-memory rings on this machine")
def test_a_spinning_wait_asks_the_kernel_only_now_and_then(monkeypatch):
    """With rings, a wait whose frames are there takes them without a system call,
    and a spinning wait polls the kernel once per _LOOK_SECONDS, not on every
    turn; a nonblocking spin_once likewise."""
    from cmampi.channel import _hub as hubmod
    from cmampi.channel._matching import USER
    from cmampi.channel._peer import FRAME

    look = 0.05     # long next to any stall between two lines, short next to the spin
    monkeypatch.setattr(hubmod, "_LOOK_SECONDS", look)
    monkeypatch.setattr(hubmod, "_SPIN_SECONDS", 10.0)      # no sleeping here
    hub, tx, calls, close = _ringed_hub()
    tx.write([FRAME.pack(USER, 0, 5, 3), b"abc"])
    hub.wait(lambda: bool(hub.matching.unexpected[0]))
    assert calls == [] and bytes(hub.matching.unexpected[0].popleft()[2]) == b"abc"
    hub.spin_once()                  # the kernel's first look: it was never asked
    looks = len(calls)
    tx.write([FRAME.pack(USER, 0, 6, 1), b"z"])
    assert hub.spin_once() and len(calls) == looks and hub.matching.unexpected[0]
    del calls[:]
    spin = 4 * look
    turns = [0]
    end = time.monotonic() + spin

    def spun():
        turns[0] += 1
        return time.monotonic() > end

    hub.wait(spun)
    assert 3 <= len(calls) <= 5 and set(calls) == {0}, calls
    assert turns[0] > 10 * len(calls)
    # A peer whose frames come through its socket (no rings on its side) is
    # read on every turn.
    hub.unringed = 1
    del calls[:]
    hub.spin_once()
    hub.spin_once()
    assert calls == [0, 0]
    hub.unringed = 0
    close()


@pytest.mark.skipif(not _ring.supported(), reason="no shared-memory rings on this machine")
def test_quick_waits_do_not_keep_the_kernel_from_being_asked(monkeypatch):
    """A loop of nonblocking tests and waits that each end at once, frames
    arriving all the while, still asks the kernel (a peer's end, the sockets)
    once per _LOOK_SECONDS: a wait does not put the next look off."""
    from cmampi.channel import _hub as hubmod
    from cmampi.channel._matching import USER
    from cmampi.channel._peer import FRAME

    look = 0.005
    monkeypatch.setattr(hubmod, "_LOOK_SECONDS", look)
    hub, tx, calls, close = _ringed_hub()
    end = time.monotonic() + 20 * look
    while time.monotonic() < end:
        hub.spin_once()                                   # as Test() does
        asked = [0]

        def arrived(asked=asked):                    # the frame lands as the wait spins
            asked[0] += 1
            if asked[0] == 3:
                tx.write([FRAME.pack(USER, 0, 7, 1), b"q"])
            return bool(hub.matching.unexpected[0])

        hub.wait(arrived)                            # as a receive does
        hub.matching.unexpected[0].popleft()
        time.sleep(look / 20)
    assert len(calls) >= 10, calls
    close()


@pytest.mark.skipif(not _ring.supported(), reason="no shared-memory rings on this machine")
def test_a_writer_waiting_for_room_is_rung_when_room_is_freed(procs):
    """A writer whose ring is full sleeps saying so; the reader that takes frames
    from that ring rings the writer's doorbell."""
    from cmampi.channel._matching import USER
    from cmampi.channel._peer import Peer

    writer, reader = Hub(0, 1, None, b""), Hub(0, 1, None, b"")
    a, b = socket.socketpair()
    b.setblocking(False)
    fd = _ring.Ring.create(1 << 16)
    w_conn, r_conn = Peer(a, 1, os.getpid()), Peer(b, 0, os.getpid())
    w_conn.tx, r_conn.rx = _ring.Ring(fd), _ring.Ring(fd)
    os.close(fd)
    seen = []

    class Poller:
        def poll(self, ms):
            seen.append((ms, w_conn.tx.words[_ring.WAITING]))
            return []

    writer.poller = Poller()
    writer.conns, writer.by_fd = [None, w_conn], {a.fileno(): w_conn}
    h = writer.post_send(1, USER, 0, 5, np.zeros(100_000, np.uint8))   # more than fits
    assert not h.done and w_conn in writer.waiting_room
    writer.progress(None)
    assert seen and seen[-1][0] > 0 and seen[-1][1] == 1, seen   # asleep, waiting
    assert not w_conn.tx.words[_ring.WAITING]
    w_conn.tx.wait_for_room(True)         # as while it sleeps
    reader.conns, reader.ringed = [r_conn, None], (r_conn,)
    r_conn.pump_ring(reader.matching)             # takes the frame's first part: frees room
    a.settimeout(2.0)
    assert a.recv(16) == b"\0", "the writer's doorbell"
    assert not w_conn.tx.words[_ring.WAITING]
    for hub in (writer, reader):
        hub.ringed, hub.waiting_room, hub.conns = (), set(), [None, None]
    a.close()
    b.close()
