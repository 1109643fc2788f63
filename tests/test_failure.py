"""Peer failure: a rank that dies or exits early fails what needs it, and nothing hangs.

Serial tests: each starts a job (``python -m cmampi``, or ``mpiexec`` for the MPI
channel) on one rank program whose first argument picks the scenario. The rank
that dies writes the time it does so (``time.monotonic``: one clock for every
process of the machine) just before; every survivor writes a report of what
raised, how long after the death, and whether traffic among survivors still
works. Reports go to files, so the tests never depend on output interleaving.

The 2 s bound is the deadline for noticing a failure (a functional requirement,
not a speed target): noticing takes milliseconds, so it holds on a loaded machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from jobenv import job_env

LIMIT = 60           # seconds a job may take before the test gives up on it
DEADLINE = 2.0       # seconds from a death to the survivors' errors
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")

PROGRAM = r'''
import json, os, signal, sys, time
import numpy as np
from cmampi import MPI

out, where, victim = sys.argv[1], sys.argv[2], int(sys.argv[3])
comm = MPI.COMM_WORLD
rank, size = comm.rank, comm.size
BIG = 64 << 20                       # bytes: pulled with CMA
MID = 4 << 20                        # bytes: pulled too, quicker to make and check
survivors = [r for r in range(size) if r != victim]


def report(name, obj):
    tmp = os.path.join(out, name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, os.path.join(out, name))


def die(how="kill"):
    report("died", {"at": time.monotonic(), "pid": os.getpid()})
    if how == "exit":
        sys.exit(0)
    os.kill(os.getpid(), signal.SIGKILL)


def died_at():
    with open(os.path.join(out, "died")) as f:
        return json.load(f)["at"]


def error(fn):
    """What *fn* raised: type, MPI error class, errno, text, seconds since the death."""
    t0 = time.monotonic()
    try:
        fn()
    except Exception as exc:
        now = time.monotonic()
        return {"type": type(exc).__name__, "mpi": isinstance(exc, MPI.Exception),
                "class": getattr(exc, "error_class", None), "errno": getattr(exc, "errno", None),
                "text": str(exc), "after_death": now - died_at(), "took": now - t0}
    return None


def data(seed, nbytes=BIG):
    a = np.arange(nbytes // 8, dtype=np.int64)
    a *= 7
    a += seed
    return a


big = data(0)                        # made before anyone dies: the clock runs from then


def later():
    """Operations started once the death is known: each fails at once."""
    dead = victim
    out = {
        "send": error(lambda: comm.Send(np.ones(4), dest=dead, tag=9)),
        "big send": error(lambda: comm.Send(big, dest=dead, tag=9)),
        "recv": error(lambda: comm.Recv(np.zeros(4), source=dead, tag=9)),
        "irecv": error(lambda: comm.Irecv(np.zeros(4), source=dead, tag=9).Wait()),
        "probe": error(lambda: comm.Probe(source=dead, tag=9)),
        "any source": error(lambda: comm.Recv(np.zeros(4), source=MPI.ANY_SOURCE, tag=9)),
        "barrier": error(comm.Barrier),
        "allreduce": error(lambda: comm.allreduce(1)),
    }
    return out


def traffic():
    """Ranks 0 and 2 still talk: small, big (pulled), both ways; True if all arrived."""
    if rank not in (0, 2):
        return None
    peer = 2 - rank
    got = np.zeros(4)
    comm.Sendrecv(np.full(4, float(rank)), peer, 3, got, peer, 3)
    ok = bool((got == peer).all())
    buf = np.empty(MID // 8, dtype=np.int64)
    if rank == 0:
        comm.Send(data(1, MID), dest=2, tag=4)
        comm.Recv(buf, source=2, tag=5)
        ok &= bool((buf == data(2, MID)).all())
    else:
        comm.Recv(buf, source=0, tag=4)
        ok &= bool((buf == data(1, MID)).all())
        comm.Isend(data(2, MID), dest=0, tag=5).Wait()
    ok &= comm.sendrecv(rank, peer, 6, source=peer, recvtag=6) == peer
    return ok


def dead_or_zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):   # reaped meanwhile
        return True


res = {}
pending = None
comm.Barrier()                       # everything connected and collectives set up
if rank == victim:
    if where == "sends":             # die once every survivor waits for us to pull
        for r in survivors:
            comm.Probe(source=r, tag=1)
        die()
    if where == "pull":              # die with a message announced, not yet pulled
        req = comm.Isend(big, dest=0, tag=1)
        die()
    if where == "midpull":           # die while rank 0 pulls the message
        pid, addr = comm.recv(source=0, tag=2)
        req = comm.Isend(big, dest=0, tag=1)
        from cmampi import _cma
        peek = np.zeros(1, np.int64)
        give_up = time.monotonic() + 5
        while time.monotonic() < give_up:
            _cma.read_into(pid, peek.ctypes.data, addr + BIG // 2, 8)
            if peek[0]:
                break
        die()
    if where in ("exit", "finished"):
        time.sleep(0.2)
        die("exit")
    time.sleep(0.2)                  # let the survivors block in their operation
    die()

if where == "recv":                  # three ways to wait for a receive
    if rank == 0:
        res["first"] = error(lambda: comm.Recv(np.zeros(4), source=victim, tag=1))
    elif rank == 2:
        res["first"] = error(lambda: comm.Irecv(np.zeros(4), source=victim, tag=1).Wait())
    else:
        res["first"] = error(lambda: comm.Recv(np.zeros(4), source=MPI.ANY_SOURCE, tag=1))
elif where == "probe":
    if rank == 0:                    # a pending receive makes Probe poll instead of block
        pending = comm.Irecv(np.zeros(4), source=2, tag=7)
        res["first"] = error(lambda: comm.Probe(source=victim, tag=1))
    elif rank == 2:
        res["first"] = error(lambda: comm.Probe(source=victim, tag=1))
    else:
        res["first"] = error(lambda: comm.Probe(source=MPI.ANY_SOURCE, tag=1))
elif where == "sends":               # waiting for the dead receiver's reply
    if rank == 0:                    # blocking: the cooperative copy is offered
        res["first"] = error(lambda: comm.Send(big, dest=victim, tag=1))
    elif rank == 2:                  # synchronous mode, small: a side reply
        res["first"] = error(lambda: comm.Ssend(np.ones(4), dest=victim, tag=1))
    else:                            # nonblocking, pulled
        res["first"] = error(lambda: comm.Isend(big, dest=victim, tag=1).Wait())
elif where == "barrier":
    res["first"] = error(comm.Barrier)
elif where == "allreduce":
    a = np.ones(1 << 20)             # 8 MiB: reduced through CMA
    res["first"] = error(lambda: comm.Allreduce(MPI.IN_PLACE, a))
elif where == "bcast":               # from the victim: a root may finish on its own
    res["first"] = error(lambda: comm.bcast(None, root=victim))
elif where in ("pull", "midpull"):
    if rank == 0:
        buf = np.zeros(BIG // 8, dtype=np.int64)
        if where == "pull":
            while not os.path.exists(os.path.join(out, "died")):
                time.sleep(0.005)
            pid = json.load(open(os.path.join(out, "died")))["pid"]
            while not dead_or_zombie(pid):
                time.sleep(0.005)
        else:
            comm.send((os.getpid(), buf.ctypes.data), dest=victim, tag=2)
        res["first"] = error(lambda: comm.Recv(buf, source=victim, tag=1))
        res["intact"] = bool((buf == big).all())
        # Whatever the pull saw, the next receive from the dead rank fails.
        res["next"] = error(lambda: comm.Recv(buf, source=victim, tag=1))
    else:
        res["first"] = error(lambda: comm.Recv(np.zeros(4), source=victim, tag=1))
elif where == "exit":                # uncaught: the launcher shows our traceback
    try:
        comm.Recv(np.zeros(4), source=victim, tag=1)
    finally:
        report(f"rank-{rank}", {"raised at": time.monotonic()})
elif where == "finished":            # the victim ends in good order
    if rank == 0:                    # ANY_SOURCE waits on for the others
        st = MPI.Status()
        comm.Recv(np.zeros(4), source=MPI.ANY_SOURCE, tag=1, status=st)
        res["any source"] = st.Get_source()
        res["named"] = error(lambda: comm.Recv(np.zeros(4), source=victim, tag=1))
    else:
        while not os.path.exists(os.path.join(out, "died")):
            time.sleep(0.005)
        pid = json.load(open(os.path.join(out, "died")))["pid"]
        while not dead_or_zombie(pid):
            time.sleep(0.005)
        time.sleep(0.1)
        comm.Send(np.ones(4), dest=0, tag=1)
    res["barrier"] = error(comm.Barrier)

if where != "finished":
    res["later"] = later()
if pending is not None:
    if rank == 0:
        res["pending"] = error(pending.Wait)
if rank == 2 and where == "probe":
    comm.Send(np.ones(4), dest=0, tag=7)
res["traffic"] = traffic()
report(f"rank-{rank}", res)
'''


def _env() -> dict:
    return job_env(settings=False)   # a job of our own, with the default settings


def _job(tmp_path: Path, size: int, *args) -> subprocess.CompletedProcess:
    prog = tmp_path / "prog.py"
    prog.write_text(PROGRAM)
    # The survivors carry on after the failure: give them the time (they exit by themselves).
    cmd = [sys.executable, "-m", "cmampi", "-n", str(size), "--timeout", str(LIMIT),
           "--grace", str(LIMIT), str(prog), str(tmp_path), *map(str, args)]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=LIMIT + 30)


def _reports(tmp_path: Path, ranks):
    return {r: json.loads((tmp_path / f"rank-{r}").read_text()) for r in ranks}


def _check_failure(err, died: dict, what: str) -> None:
    """*err* is the prompt failure of an operation that needed the dead rank."""
    assert err is not None, f"{what}: did not raise"
    assert err["type"] == "PeerFailed" and err["mpi"], (what, err)
    assert err["class"] == 54, (what, err)     # ERR_PROC_FAILED
    assert f"(pid {died['pid']})" in err["text"], (what, err)
    assert err["after_death"] < DEADLINE, (what, err)


def _check_job(res, tmp_path: Path, size: int, victim: int):
    """The launcher's verdict, and what every survivor saw after the first error."""
    died = json.loads((tmp_path / "died").read_text())
    assert res.returncode == 128 + signal.SIGKILL, res.stderr
    line = f"cmampi: rank {victim} (pid {died['pid']}) was killed by SIGKILL"
    assert line in res.stderr, res.stderr
    survivors = [r for r in range(size) if r != victim]
    reports = _reports(tmp_path, survivors)
    for r, rep in reports.items():
        for what, err in rep["later"].items():
            _check_failure(err, died, f"rank {r}, later {what}")
        assert rep["traffic"] in (None, True), (r, rep)
    assert reports[0]["traffic"] and reports[2]["traffic"]
    return died, reports


# -- the socket channel: a rank is SIGKILLed while the others wait on it -------------------
@pytest.mark.parametrize("where, size, victim", [
    ("recv", 4, 1),        # Recv, Irecv + Wait, ANY_SOURCE Recv
    ("probe", 4, 1),       # Probe (polling and blocking), ANY_SOURCE Probe
    ("sends", 4, 1),       # Send (cooperative), Ssend, Isend + Wait: waiting for the ack
    ("barrier", 4, 3),     # the last rank: survivors also wait on each other
    ("allreduce", 4, 3),
    ("bcast", 3, 1),
])
def test_killed_rank_fails_waiting_operations(tmp_path, where, size, victim):
    res = _job(tmp_path, size, where, victim)
    died, reports = _check_job(res, tmp_path, size, victim)
    for r, rep in reports.items():
        _check_failure(rep["first"], died, f"rank {r}, {where}")
    if where == "probe":
        assert reports[0]["pending"] is None    # the receive from a survivor completed


def test_pull_from_dead_sender_raises(tmp_path):
    """The sender announced 64 MiB and died before the receiver pulled: ESRCH."""
    res = _job(tmp_path, 3, "pull", 1)
    died, reports = _check_job(res, tmp_path, 3, 1)
    first = reports[0]["first"]
    assert first is not None and first["type"] == "ProcessLookupError", first
    assert str(died["pid"]) in first["text"] and first["after_death"] < DEADLINE
    _check_failure(reports[0]["next"], died, "next receive")
    _check_failure(reports[2]["first"], died, "rank 2")


def test_sender_killed_mid_pull(tmp_path):
    """The sender dies while the receiver pulls its 64 MiB: the receive either
    fails or (the kernel finishes a read begun on a live process) holds the whole
    message; either way the next receive from it fails, and nothing hangs."""
    res = _job(tmp_path, 3, "midpull", 1)
    died, reports = _check_job(res, tmp_path, 3, 1)
    first = reports[0]["first"]
    if first is None:
        assert reports[0]["intact"], "a receive that succeeded must hold the whole message"
    else:
        assert first["after_death"] < DEADLINE, first
    _check_failure(reports[0]["next"], died, "next receive")


def test_rank_exiting_early_fails_its_peer(tmp_path):
    """Rank 1 exits with code 0 while rank 0 waits for its message: rank 0's Recv
    raises (uncaught), and the launcher reports rank 0's failure."""
    res = _job(tmp_path, 2, "exit", 1)
    died = json.loads((tmp_path / "died").read_text())
    raised = json.loads((tmp_path / "rank-0").read_text())["raised at"]
    assert raised - died["at"] < DEADLINE
    assert res.returncode == 1, res.stderr
    assert "cmampi: rank 0 (pid " in res.stderr and "exited with code 1" in res.stderr
    # Rank 0 had the time to print its own error before the job ended.
    assert "PeerFailed" in res.stderr and f"rank 1 (pid {died['pid']}) is gone" in res.stderr


def test_rank_ending_in_good_order(tmp_path):
    """Rank 1 ends normally: what names it fails, ANY_SOURCE receives go on."""
    res = _job(tmp_path, 3, "finished", 1)
    assert res.returncode == 0, res.stderr
    died = json.loads((tmp_path / "died").read_text())
    reports = _reports(tmp_path, [0, 2])
    assert reports[0]["any source"] == 2
    named = reports[0]["named"]
    _check_failure(named, died, "named receive")
    assert "ended in good order" in named["text"]
    for r, rep in reports.items():
        _check_failure(rep["barrier"], died, f"rank {r}, barrier")
        assert rep["traffic"], (r, rep)


# -- a pull that cannot read the sender's buffer, on both channels --------------------------
EFAULT_PROGRAM = r'''
import ctypes, errno, json, mmap, os, sys
import numpy as np
from cmampi import MPI

out = sys.argv[1]
comm = MPI.COMM_WORLD
N = 4 << 20                        # above the pull threshold of both channels
res = {}


def error(fn):
    try:
        fn()
    except Exception as exc:
        return {"type": type(exc).__name__, "mpi": isinstance(exc, MPI.Exception),
                "class": getattr(exc, "error_class", None), "errno": getattr(exc, "errno", None),
                "text": str(exc)}
    return None


if comm.rank == 0:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    addr = libc.mmap(None, N, mmap.PROT_READ | mmap.PROT_WRITE,
                     mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    a = np.frombuffer((ctypes.c_char * N).from_address(addr), np.uint8)
    a[:] = 7
    req = comm.Isend(a, dest=1, tag=1)
    assert libc.munmap(addr, N) == 0    # the announced buffer is gone: EFAULT for the reader
    comm.send("pull now", dest=1, tag=2)
    res["sender"] = error(req.Wait)
    comm.Send(np.full(N, 9, np.uint8), dest=1, tag=3)
else:
    comm.recv(source=0, tag=2)
    buf = np.zeros(N, np.uint8)
    res["receiver"] = error(lambda: comm.Recv(buf, source=0, tag=1))
    comm.Recv(buf, source=0, tag=3)
    res["after"] = bool((buf == 9).all())
with open(os.path.join(out, f"rank-{comm.rank}"), "w") as f:
    json.dump(res, f)
'''


@pytest.mark.parametrize("channel", ["mpi", "socket"], ids=["mpiexec", "launcher"])
def test_unreadable_sender_buffer(tmp_path, channel):
    """The sender's buffer is unmapped after the descriptor went out: the receiver's
    pull fails with EFAULT, the sender gets the failure reply and raises, and
    both carry on."""
    prog = tmp_path / "efault.py"
    prog.write_text(textwrap.dedent(EFAULT_PROGRAM))
    env = _env()
    if channel == "mpi":
        if MPIEXEC is None:
            pytest.skip("no mpiexec")
        env["MPIEXEC_TIMEOUT"] = str(LIMIT)
        cmd = [MPIEXEC, "-n", "2", sys.executable, str(prog), str(tmp_path)]
    else:
        cmd = [sys.executable, "-m", "cmampi", "-n", "2", "--timeout", str(LIMIT), str(prog),
               str(tmp_path)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=LIMIT + 30)
    assert res.returncode == 0, res.stdout + res.stderr
    reports = _reports(tmp_path, [0, 1])
    recv, send = reports[1]["receiver"], reports[0]["sender"]
    assert recv is not None and recv["errno"] == 14, recv      # EFAULT, from _cma
    assert send is not None and send["mpi"] and send["class"] == 15, send  # ERR_OTHER
    assert reports[1]["after"]
