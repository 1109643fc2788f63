"""Channel choice, and the socket channel's independence from MPI."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = os.path.join(ROOT, "tests", "no_mpi4py")


@pytest.mark.mpi(min_size=2)
def test_socket_run_has_no_mpi4py():
    """Under the launcher, with mpi4py blocked, cmampi still works (socket channel)."""
    if "CMAMPI_RANK" not in os.environ:
        pytest.skip("runs under python -m cmampi")
    with pytest.raises(ImportError):
        import mpi4py  # noqa: F401
    assert "mpi4py.MPI" not in sys.modules
    from cmampi import MPI

    assert MPI.CHANNEL == "socket"
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    out = np.full(1 << 20, rank, np.uint8)
    got = np.zeros_like(out)
    comm.Sendrecv(out, (rank + 1) % size, 0, got, (rank - 1) % size, 0)
    assert (got == (rank - 1) % size).all()


def _run(code: str, env_extra: dict) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([BLOCK, ROOT]), **env_extra)
    for key in ("CMAMPI_RANK", "CMAMPI_SIZE", "CMAMPI_DIR", "CMAMPI_TOKEN"):
        env.pop(key, None)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60)


def test_plain_python_without_mpi4py_is_a_world_of_one():
    code = ("from cmampi import MPI; import numpy as np\n"
            "c = MPI.COMM_WORLD; b = np.zeros(3)\n"
            "r = c.Irecv(b); c.Send(np.arange(3.0), 0); r.Wait()\n"
            "print(MPI.CHANNEL, c.Get_size(), c.Get_rank(), b.tolist())\n")
    out = _run(code, {})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "socket 1 0 [0.0, 1.0, 2.0]"


def test_channel_override_is_validated():
    out = _run("import cmampi._config", {"CMAMPI_CHANNEL": "carrier-pigeon"})
    assert out.returncode != 0 and "CMAMPI_CHANNEL" in out.stderr


@pytest.mark.parametrize("env,blocked,expect", [
    ({"CMAMPI_RANK": "0"}, False, "socket"),
    ({}, True, "socket"),
    ({}, False, "mpi"),
    ({"CMAMPI_CHANNEL": "socket"}, False, "socket"),
])
def test_choose(env, blocked, expect):
    code = "from cmampi import _backend; print(_backend.choose())"
    path = os.pathsep.join([BLOCK, ROOT] if blocked else [ROOT])
    full = dict(os.environ, PYTHONPATH=path, **env)
    if "CMAMPI_RANK" not in env:
        full.pop("CMAMPI_RANK", None)
    full.pop("CMAMPI_CHANNEL", None) if "CMAMPI_CHANNEL" not in env else None
    out = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expect


@pytest.mark.mpi(min_size=2)
def test_transport_per_peer(cmcomm):
    """Every pair on one node pulls with CMA, unless the copy transport is forced."""
    import os

    from cmampi import MPI

    want = "copy" if os.environ.get("CMAMPI_TRANSPORT") == "copy" else "cma"
    rank = cmcomm.Get_rank()
    for peer in range(cmcomm.Get_size()):
        assert cmcomm.transport(peer) == ("self" if peer == rank else want)
    for bad in (MPI.PROC_NULL, cmcomm.Get_size(), -5):
        with pytest.raises(MPI.Exception):
            cmcomm.transport(bad)


def test_control_messages_load_as_control():
    """A control message is a pickle of `Control`: an object receive that lets the
    channel unpickle still recognises it, and its header parses the same."""
    import pickle

    from cmampi import _wire
    from cmampi._buffers import send_buffer

    layout = send_buffer(bytearray(1000)).layout
    for limit in (0, 100, 4096):
        msg = _wire.control(_wire.pull_header(7, _wire.F_SYNC, layout), limit)
        assert _wire.is_control(len(msg), limit) and len(msg) == max(limit + 1, len(msg))
        got = pickle.loads(msg)
        assert type(got) is _wire.Control
        for head in (_wire.header(memoryview(msg)), got.head):
            assert _wire.kind(head) == _wire.PULL
            flags, xid, nbytes, remote, _ = _wire.parse_pull(head)
            assert (flags, xid, nbytes) == (_wire.F_SYNC, 7, 1000)
            assert remote.nbytes == 1000
        assert _wire.payload_size(msg, limit) == 1000
        side = pickle.loads(_wire.control(_wire.side_header(3, 0, 55), limit))
        assert _wire.parse_side(side.head) == (0, 3, 55)


@pytest.mark.mpi(min_size=1)
def test_the_channel_in_use_keeps_the_contract(cmcomm):
    """Every member of `cmampi.channel.Channel` is there, with the contract's
    parameters, on the channel this run uses (MPI under mpiexec, sockets under
    the launcher)."""
    import inspect

    from cmampi.channel import Channel

    ch = cmcomm._engine.ch
    assert isinstance(ch, Channel)
    for name, member in vars(Channel).items():
        if name.startswith("_") or not callable(member):
            continue
        want = list(inspect.signature(member).parameters)
        got = list(inspect.signature(getattr(type(ch), name)).parameters)
        assert got[:len(want)] == want, f"{type(ch).__name__}.{name}{got} != {want}"
