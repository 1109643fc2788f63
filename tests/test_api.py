"""The API mirrors mpi4py's: same method names, parameter names and defaults."""

from __future__ import annotations

import inspect

import pytest

MPI = pytest.importorskip("mpi4py.MPI")

from cmampi.comm import Intracomm  # noqa: E402
from cmampi.request import Message, Prequest, Request  # noqa: E402

COMM_METHODS = [
    "Send", "Ssend", "Bsend", "Rsend", "Recv", "Sendrecv", "Sendrecv_replace",
    "Isend", "Issend", "Ibsend", "Irsend", "Irecv", "Isendrecv", "Isendrecv_replace",
    "Send_init", "Ssend_init", "Bsend_init", "Rsend_init", "Recv_init",
    "Probe", "Iprobe", "Mprobe", "Improbe", "Get_rank", "Get_size", "Free",
    "Dup", "Split", "Barrier", "Abort",
    "send", "ssend", "bsend", "isend", "issend", "ibsend", "recv", "irecv", "sendrecv",
    "probe", "iprobe", "barrier",
    "Bcast", "Gather", "Gatherv", "Scatter", "Scatterv", "Allgather", "Allgatherv",
    "Alltoall", "Alltoallv", "Reduce", "Allreduce", "Reduce_scatter_block",
    "Reduce_scatter", "Scan", "Exscan", "Psend_init", "Precv_init",
    "bcast", "gather", "scatter", "allgather", "alltoall", "reduce", "allreduce",
    "scan", "exscan",
]
REQUEST_METHODS = ["Wait", "Test", "Get_status", "Cancel", "Free", "Waitall", "Testall",
                   "Waitany", "Testany", "Waitsome", "Testsome", "wait", "test"]


def _params(fn):
    sig = inspect.signature(fn)
    return [(p.name, p.kind, p.default is inspect.Parameter.empty) for p in
            sig.parameters.values()]


def _defaults(fn):
    return {p.name: p.default for p in inspect.signature(fn).parameters.values()
            if p.default is not inspect.Parameter.empty}


@pytest.mark.parametrize("name", COMM_METHODS)
def test_comm_signatures(name):
    ours, theirs = getattr(Intracomm, name), getattr(MPI.Intracomm, name)
    assert _params(ours) == _params(theirs), name
    for key, value in _defaults(theirs).items():
        if isinstance(value, int):
            assert _defaults(ours)[key] == value, (name, key)


@pytest.mark.parametrize("name", REQUEST_METHODS)
def test_request_signatures(name):
    assert _params(getattr(Request, name)) == _params(getattr(MPI.Request, name))


def test_prequest_and_message():
    assert _params(Prequest.Start) == _params(MPI.Prequest.Start)
    assert _params(Prequest.Startall) == _params(MPI.Prequest.Startall)
    assert _params(Message.Recv) == _params(MPI.Message.Recv)
    assert _params(Message.Irecv) == _params(MPI.Message.Irecv)
