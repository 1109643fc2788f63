"""When the kernel refuses CMA: per-pair decisions, warnings, and a genuine refusal.

The jobs at the end run this very file as their program, under the launcher
(socket channel) and under mpiexec (MPI channel). Their ranks start as root,
connect, then drop to uid 65534 (which leaves a process non-dumpable) before
the communicator is made, so the per-peer probe meets a real EPERM from the
kernel, not a mock. Every payload must then arrive through the copy path, or,
where only one direction is refused, through whichever path each direction
allows.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings

import numpy as np
import pytest

from cmampi import _access, _cma, _config, _names, p2p

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable
NOBODY = 65534
PR_SET_DUMPABLE = 4


# -- Yama at start-up ------------------------------------------------------------------------

@pytest.fixture
def fresh_ptracer(monkeypatch):
    """Forget that this process already asked, and record what it asks now."""
    asked = []
    monkeypatch.setattr(_access, "_ptracer_pid", 0)
    monkeypatch.setattr(_cma, "set_ptracer_any", lambda: asked.append(True))
    return asked


@pytest.mark.parametrize("scope,enabled,asks", [
    (None, True, False), (0, True, False), (1, True, True), (1, False, False),
    (2, True, False), (3, True, False),
])
def test_ptracer_is_set_only_where_it_helps(monkeypatch, fresh_ptracer, scope, enabled, asks):
    monkeypatch.setattr(_cma, "ptrace_scope", lambda: scope)
    cfg = dataclasses.replace(_config.config, set_ptracer=enabled)
    _access.allow_peers(cfg)
    _access.allow_peers(cfg)          # once per process
    assert fresh_ptracer == ([True] if asks else [])


def test_ptracer_is_asked_again_after_fork(monkeypatch, fresh_ptracer):
    """Yama's exception does not cross fork: a child asks for itself."""
    monkeypatch.setattr(_cma, "ptrace_scope", lambda: 1)
    _access.allow_peers(_config.config)
    monkeypatch.setattr(_access, "_ptracer_pid", -1)     # as seen from another process
    _access.allow_peers(_config.config)
    assert fresh_ptracer == [True, True]


def test_failed_prctl_is_left_to_the_peers_probes(monkeypatch):
    """Scope 1 claimed on a kernel without Yama: the real prctl fails (EINVAL),
    and start-up goes on."""
    if _cma.ptrace_scope() is not None:
        pytest.skip("Yama is enabled here: the call would succeed")
    monkeypatch.setattr(_access, "_ptracer_pid", 0)
    monkeypatch.setattr(_cma, "ptrace_scope", lambda: 1)
    with pytest.raises(OSError):
        _cma.set_ptracer_any()
    _access.allow_peers(_config.config)


@pytest.mark.parametrize("raw,want", [("", True), ("1", True), ("0", False), ("off", False),
                                      ("yes", True)])
def test_set_ptracer_switch(monkeypatch, raw, want):
    monkeypatch.setenv("CMAMPI_SET_PTRACER", raw)
    assert _config.Config.from_environ().set_ptracer is want


def test_set_ptracer_switch_is_validated(monkeypatch):
    monkeypatch.setenv("CMAMPI_SET_PTRACER", "maybe")
    with pytest.raises(ValueError, match="CMAMPI_SET_PTRACER"):
        _config.Config.from_environ()


# -- the per-pair decision, over a channel of our making ------------------------------------

class FakeChannel:
    """Rank 0 of two; rank 1 is a forked child. ``allgather`` answers for rank 1."""

    cma_min = 1 << 15
    cma_min_busy = 1 << 15
    tag_ub = 32767
    xid_limit = 16383

    def __init__(self, peer_pid: int, peer_row, userns=None, pidns=None) -> None:
        self.rank, self.size = 0, 2
        self.pids = [os.getpid(), peer_pid]
        self.nodes = ["here", "here"]
        self.pidns = pidns or [None, None]
        self.userns = userns or [_cma.user_namespace()] * 2
        self.peer_row = peer_row
        self.sent = None
        self.freed = False

    def allgather(self, obj):
        """The start-up allgather: (who may read whom, the pull threshold) per rank."""
        row, cma_min = obj
        self.sent = row
        return [obj, (self.peer_row, cma_min)]

    def free(self) -> None:
        self.freed = True


@pytest.fixture
def child():
    """A child that sleeps until released: a live peer to probe and hold."""
    pid = os.fork()
    if pid == 0:
        try:
            os.read(os.pipe()[0], 1)   # blocks until killed
        finally:
            os._exit(0)
    yield pid
    os.kill(pid, 9)
    os.waitpid(pid, 0)


def _engine(ch, **cfg):
    cfg = {"transport": "cma", **cfg}
    return p2p.Engine(ch, _names, dataclasses.replace(_config.config, **cfg))


@pytest.fixture(autouse=True)
def unwarned(monkeypatch):
    """Each engine here is the first of its process to warn."""
    monkeypatch.setattr(_access, "_warned", False)


def _start(ch, **cfg):
    """(engine, warnings) of an engine made over *ch*."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine = _engine(ch, **cfg)
    return engine, [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


def test_both_ways_allowed(child):
    ch = FakeChannel(child, [None, None])
    engine, warned = _start(ch)
    try:
        assert ch.sent == [None, None]
        assert engine.can_read == [True, True] and engine.cma == [True, True]
        assert engine.all_cma and not warned
        held = engine.peers[1]
        assert held.pid == child and held.alive() and _cma._held[child] is held
    finally:
        engine.free()
    assert held.fd == -1 and child not in _cma._held and ch.freed


def test_only_the_peer_is_refused(child):
    """Rank 1 may not read us: we may still pull from it, but our sends to it are
    copied, collectives copy, and we say so once."""
    ch = FakeChannel(child, [True, None])
    engine, warned = _start(ch)
    try:
        assert engine.can_read == [True, True]
        assert engine.cma == [True, False] and not engine.all_cma
        assert len(warned) == 1 and "rank 1 was refused access to this process" in warned[0]
        assert "CMAMPI_TRANSPORT=copy" in warned[0]
    finally:
        engine.free()


def test_peer_not_meant_to_use_cma_is_no_warning(child):
    """Rank 1 chose the copy path itself (False): nothing to warn about here."""
    ch = FakeChannel(child, [False, False])
    engine, warned = _start(ch)
    try:
        assert engine.cma == [True, False] and not engine.all_cma and not warned
    finally:
        engine.free()


def test_other_user_namespace_falls_back(child):
    ns = _cma.user_namespace()
    ch = FakeChannel(child, [True, None], userns=[ns, (ns[0], ns[1] + 1)])
    engine, warned = _start(ch)
    try:
        assert ch.sent == [None, True] and engine.can_read == [True, False]
        assert 1 not in engine.peers
        assert len(warned) == 1 and "rank 1 runs in another user namespace" in warned[0]
    finally:
        engine.free()


def test_unknown_user_namespace_leaves_it_to_the_probe(child):
    ch = FakeChannel(child, [None, None], userns=[_cma.user_namespace(), None])
    engine, warned = _start(ch)
    try:
        assert engine.can_read == [True, True] and not warned
    finally:
        engine.free()


def test_other_pid_namespace_falls_back(child):
    ch = FakeChannel(child, [True, None], pidns=[(1, 2), (1, 3)])
    engine, warned = _start(ch)
    try:
        assert engine.can_read == [True, False]
        assert "rank 1 runs in another pid namespace" in warned[0]
    finally:
        engine.free()


def test_gone_peer_falls_back():
    """A peer that has already exited: no pidfd, no CMA, and a warning saying why."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    ch = FakeChannel(pid, [True, None])
    engine, warned = _start(ch)
    try:
        assert engine.can_read == [True, False] and 1 not in engine.peers
        assert "no pidfd for rank 1" in warned[0] and "reuses its pid" in warned[0]
    finally:
        engine.free()


def test_copy_transport_asks_nothing(child):
    ch = FakeChannel(child, [False, False])
    engine, warned = _start(ch, transport="copy")
    try:
        assert ch.sent == [False, False] and engine.cma == [False, False]
        assert not engine.peers and not warned
    finally:
        engine.free()


# -- genuine refusals: jobs that drop privileges before the probe ---------------------------

#: mode -> who drops to uid 65534 and stays non-dumpable:
#: "both": both ranks, so neither may read the other (not dumpable);
#: "root-reads": rank 1 only; rank 0 stays root and may read it, rank 1 may not
#:   read root (another user);
#: "dumpable-reads": both, but rank 0 makes itself dumpable again: rank 1 may
#:   read rank 0, rank 0 may not read rank 1.
MODES = ("both", "root-reads", "dumpable-reads")
#: mode -> for each rank, (may read the peer, the warning names)
EXPECT = {
    "both": [(False, "it is not dumpable"), (False, "it is not dumpable")],
    "root-reads": [(True, "rank 1 was refused access to this process's memory"),
                   (False, "it runs as uid 0/0/0 and we as uid 65534")],
    "dumpable-reads": [(False, "it is not dumpable"),
                       (True, "rank 0 was refused access to this process's memory")],
}
SIZES = (0, 1, 4096, 4200, 40000, 1 << 20, (8 << 20) + 3, 64 << 20)


def _pattern(n: int, seed: int) -> np.ndarray:
    return ((np.arange(n, dtype=np.uint32) * 2654435761 + seed) >> 13).astype(np.uint8)


def _drop(dumpable: bool) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)
    if libc.prctl(PR_SET_DUMPABLE, int(dumpable), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE)")


def _workload(comm, SUM) -> list:
    """Every kind of transfer, both ways; the names of those that came out wrong."""
    me = comm.Get_rank()
    peer = 1 - me
    bad = []

    def check(name, ok):
        if not ok:
            bad.append(name)

    for n in SIZES:                                   # blocking, each way in turn
        for src in (0, 1):
            if me == src:
                comm.Send(_pattern(n, src), dest=peer, tag=7)
            else:
                got = np.empty(n, np.uint8)
                comm.Recv(got, source=peer, tag=7)
                check(f"Send {n} from {src}", np.array_equal(got, _pattern(n, src)))
    n = 4 << 20                                       # both at once
    got = np.empty(n, np.uint8)
    comm.Sendrecv(_pattern(n, me), peer, 1, got, peer, 1)
    check("Sendrecv", np.array_equal(got, _pattern(n, peer)))
    got = np.empty(n, np.uint8)
    out = _pattern(n, me + 10)
    reqs = [comm.Irecv(got, source=peer, tag=2), comm.Isend(out, dest=peer, tag=2)]
    for r in reqs:
        r.Wait()
    check("Isend/Irecv", np.array_equal(got, _pattern(n, peer + 10)))
    got = np.empty(2 << 20, np.uint8)
    if me == 0:
        comm.Ssend(_pattern(2 << 20, 3), dest=1, tag=3)
        comm.Recv(got, source=1, tag=3)
    else:
        comm.Recv(got, source=0, tag=3)
        comm.Ssend(_pattern(2 << 20, 3), dest=0, tag=3)
    check("Ssend", np.array_equal(got, _pattern(2 << 20, 3)))
    # strided on both sides
    a = np.arange(1024 * 1024, dtype=np.float64).reshape(1024, 1024) * (me + 1)
    recv = np.zeros((512, 684))
    comm.Sendrecv(a[::2, ::3], peer, 4, recv[:, ::2], peer, 4)
    want = np.arange(1024 * 1024, dtype=np.float64).reshape(1024, 1024)[::2, ::3] * (peer + 1)
    check("strided", np.array_equal(recv[:, ::2], want) and not recv[:, 1::2].any())
    # collectives and objects, 8 MiB
    n = 1 << 20
    x = np.arange(n, dtype=np.float64) * (me + 1)
    total = np.empty_like(x)
    comm.Allreduce(x, total, op=SUM)
    check("Allreduce", np.array_equal(total, np.arange(n, dtype=np.float64) * 3))
    for root in (0, 1):
        b = np.arange(n, dtype=np.float64) + root if me == root else np.zeros(n)
        comm.Bcast(b, root=root)
        check(f"Bcast from {root}", np.array_equal(b, np.arange(n, dtype=np.float64) + root))
    # Python objects holding large arrays
    big = {"a": np.arange(n, dtype=np.float64) * (me + 2), "b": _pattern(1 << 20, me),
           "s": f"rank {me}"}
    if me == 0:
        comm.send(big, dest=1, tag=5)
        obj = comm.recv(source=1, tag=5)
    else:
        obj = comm.recv(source=0, tag=5)
        comm.send(big, dest=0, tag=5)
    check("send/recv object", obj["s"] == f"rank {peer}"
          and np.array_equal(obj["a"], np.arange(n, dtype=np.float64) * (peer + 2))
          and np.array_equal(obj["b"], _pattern(1 << 20, peer)))
    for root in (0, 1):
        obj = comm.bcast(big if me == root else None, root=root)
        check(f"bcast object from {root}", obj["s"] == f"rank {root}"
              and np.array_equal(obj["a"], np.arange(n, dtype=np.float64) * (root + 2)))
    obj = comm.allreduce(np.full(1 << 20, me + 1.0))
    check("allreduce object", np.array_equal(obj, np.full(1 << 20, 3.0)))
    return bad


def job(mode: str, out: str) -> None:
    """A rank of a refusal job: connect, drop privileges, run the workload, and
    write what it saw to *out*/rank-N.json."""
    import cmampi

    if "CMAMPI_RANK" in os.environ:           # socket channel: the hub connects as root
        from cmampi.channel.socket import SocketChannel, hub_from_environ

        hub = hub_from_environ()
        ch = SocketChannel(hub, 0, list(range(hub.size)))
        rank, barrier, SUM = hub.rank, ch.barrier, _names.SUM

        def make():
            from cmampi.socketcomm import Intracomm

            return Intracomm._from_channel(ch)
    else:
        from mpi4py import MPI

        world = MPI.COMM_WORLD.Dup()
        rank, barrier, SUM = world.Get_rank(), world.Barrier, MPI.SUM

        accelerate = cmampi.accelerate    # imported before privileges drop

        def make():
            return accelerate(world)

    if mode == "both" or rank == 1:
        _drop(dumpable=False)
    elif mode == "dumpable-reads":
        _drop(dumpable=True)
    barrier()          # every rank has its final identity before anyone probes
    calls = {"read": 0, "write": 0}
    me = os.getpid()

    def counted(fn, kind):
        def call(pid, *args):
            if pid != me:
                calls[kind] += 1
            return fn(pid, *args)
        return call

    _cma.read_into = counted(_cma.read_into, "read")
    _cma.readv = counted(_cma.readv, "read")
    _cma.writev = counted(_cma.writev, "write")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        comm = make()
        bad = _workload(comm, SUM)
        engine = comm._engine
        coll = engine.coll.e
        held = sorted(engine.peers)
        comm.Free()
    result = json.dumps({
        "rank": rank, "uid": os.geteuid(), "bad": bad, "calls": calls,
        "cma": engine.cma, "can_read": engine.can_read, "all_cma": engine.all_cma,
        "coll": [coll.cma, coll.can_read, coll.all_cma],
        "held": held, "held_after_free": [sorted(engine.peers), sorted(_cma._held)],
        "warnings": [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)],
    })
    with open(os.path.join(out, f"rank-{rank}.json"), "w") as f:
        f.write(result)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges")


def _run(launch, mode: str, env_extra) -> dict:
    """Run the job for *mode* under *launch* (argv before this file); each
    rank's result, from the files the ranks wrote (in a directory uid 65534 can
    reach: pytest's own is private to root)."""
    env = dict(os.environ, PYTHONPATH=ROOT, **env_extra)
    for key in ("CMAMPI_RANK", "CMAMPI_SIZE", "CMAMPI_DIR", "CMAMPI_TOKEN", "CMAMPI_TRANSPORT"):
        env.pop(key, None)
    with tempfile.TemporaryDirectory(prefix="cmampi-refusal-") as out:
        os.chmod(out, 0o777)
        argv = [*launch, os.path.abspath(__file__), mode, out]
        res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        results = {}
        for r in (0, 1):
            with open(os.path.join(out, f"rank-{r}.json")) as f:
                results[r] = json.load(f)
    return results


def _check(results: dict, mode: str) -> None:
    may_read = [EXPECT[mode][r][0] for r in (0, 1)]
    for rank, res in results.items():
        peer = 1 - rank
        reads, cause = EXPECT[mode][rank]
        assert res["bad"] == [], (rank, res["bad"])
        assert res["uid"] == (0 if mode == "root-reads" and rank == 0 else NOBODY)
        # the kernel's answer, recorded per pair and per direction
        assert res["can_read"][peer] is reads and res["can_read"][rank] is True
        assert res["cma"][peer] is may_read[peer]      # the receiver pulls
        assert res["all_cma"] is False
        assert res["coll"] == [res["cma"], res["can_read"], False]
        # exactly one warning, naming the cause and the fix
        assert len(res["warnings"]) == 1, res["warnings"]
        text = res["warnings"][0]
        assert cause in text and "CMAMPI_TRANSPORT=copy" in text, text
        if not reads:
            assert "Operation not permitted" in text and "ptrace" in text.lower(), text
        # pidfds held for the peers we may read, closed by Free
        assert res["held"] == ([peer] if reads else []), res["held"]
        assert res["held_after_free"] == [[], []], res["held_after_free"]
        # only allowed pulls happened, and nobody pushed into a peer
        assert (res["calls"]["read"] > 0) is reads, res["calls"]
        assert res["calls"]["write"] == 0, res["calls"]


@needs_root
@pytest.mark.parametrize("mode", MODES)
def test_refused_under_the_launcher(mode):
    _check(_run([PYTHON, "-m", "cmampi", "-n", "2", "--timeout", "240"], mode, {}), mode)


@needs_root
@pytest.mark.skipif(shutil.which("mpiexec", path=os.path.dirname(PYTHON)) is None,
                    reason="no mpiexec next to this Python")
@pytest.mark.parametrize("mode", MODES)
def test_refused_under_mpiexec(mode):
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(PYTHON))
    # MPICH's own CMA is refused just the same: it must be told, as it would be
    # wherever the kernel refuses (MPICH then copies through shared memory).
    env = {"MPIEXEC_TIMEOUT": "240", "MPIR_CVAR_CH4_CMA_ENABLE": "0"}
    _check(_run([mpiexec, "-n", "2", PYTHON], mode, env), mode)


if __name__ == "__main__":
    job(sys.argv[1], sys.argv[2])
