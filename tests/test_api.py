"""The API mirrors mpi4py's: same classes, method names, parameter names and defaults."""

from __future__ import annotations

import inspect

import pytest

MPI = pytest.importorskip("mpi4py.MPI")

from cmampi import MPI as CM  # noqa: E402

if CM.CHANNEL != "mpi":
    pytest.skip("mpi4py's classes are subclassed on the MPI channel", allow_module_level=True)

COMM_METHODS = [
    "Send", "Ssend", "Bsend", "Rsend", "Recv", "Sendrecv", "Sendrecv_replace",
    "Isend", "Issend", "Ibsend", "Irsend", "Irecv", "Isendrecv", "Isendrecv_replace",
    "Send_init", "Ssend_init", "Bsend_init", "Rsend_init", "Recv_init",
    "Probe", "Iprobe", "Mprobe", "Improbe", "Get_rank", "Get_size", "Free",
    "Dup", "Split", "Split_type", "Create_cart", "Create_group", "Barrier", "Abort",
    "send", "ssend", "bsend", "isend", "issend", "ibsend", "recv", "irecv", "sendrecv",
    "probe", "iprobe", "mprobe", "improbe", "barrier",
    "Bcast", "Gather", "Gatherv", "Scatter", "Scatterv", "Allgather", "Allgatherv",
    "Alltoall", "Alltoallv", "Reduce", "Allreduce", "Reduce_scatter_block",
    "Reduce_scatter", "Scan", "Exscan", "Psend_init", "Precv_init",
    "bcast", "gather", "scatter", "allgather", "alltoall", "reduce", "allreduce",
    "scan", "exscan",
]
REQUEST_METHODS = ["Wait", "Test", "Get_status", "Cancel", "Free", "Waitall", "Testall",
                   "Waitany", "Testany", "Waitsome", "Testsome", "wait", "test",
                   "waitall", "testall", "waitany", "testany", "waitsome", "testsome",
                   "cancel", "get_status", "Get_status_all", "Get_status_any",
                   "Get_status_some", "fromhandle", "fromint", "f2py"]


def _params(fn):
    sig = inspect.signature(fn)
    return [(p.name, p.kind, p.default is inspect.Parameter.empty) for p in
            sig.parameters.values()]


def _defaults(fn):
    return {p.name: p.default for p in inspect.signature(fn).parameters.values()
            if p.default is not inspect.Parameter.empty}


@pytest.mark.parametrize("name", COMM_METHODS)
def test_comm_signatures(name):
    ours, theirs = getattr(CM.Intracomm, name), getattr(MPI.Intracomm, name)
    assert _params(ours) == _params(theirs), name
    for key, value in _defaults(theirs).items():
        if isinstance(value, int):
            assert _defaults(ours)[key] == value, (name, key)


def test_defaults_are_the_libraries_constants():
    """ANY_SOURCE and ANY_TAG as the MPI library in use defines them (MPICH and Open
    MPI differ), not as literals."""
    recv = _defaults(CM.Intracomm.Recv)
    assert recv["source"] == MPI.ANY_SOURCE and recv["tag"] == MPI.ANY_TAG
    assert _defaults(CM.Intracomm.Allreduce)["op"] is MPI.SUM


@pytest.mark.parametrize("name", REQUEST_METHODS)
def test_request_signatures(name):
    assert _params(getattr(CM.Request, name)) == _params(getattr(MPI.Request, name))


def test_prequest_and_message():
    assert _params(CM.Prequest.Start) == _params(MPI.Prequest.Start)
    assert _params(CM.Prequest.Startall) == _params(MPI.Prequest.Startall)
    for name in ("Recv", "Irecv", "recv", "irecv", "Probe", "Iprobe", "probe", "iprobe"):
        assert _params(getattr(CM.Message, name)) == _params(getattr(MPI.Message, name))


def test_classes_are_mpi4py_subclasses():
    """A cmampi communicator is an mpi4py communicator: type checks and C-level
    consumers take it, and mpi4py's own objects pass cmampi's type checks."""
    world = CM.COMM_WORLD
    assert isinstance(world, MPI.Intracomm) and world == MPI.COMM_WORLD
    for name in ("Comm", "Intracomm", "Cartcomm", "Graphcomm", "Distgraphcomm",
                 "Request", "Prequest", "Message"):
        assert issubclass(getattr(CM, name), getattr(MPI, name)), name
        assert issubclass(getattr(MPI, name), getattr(CM, name)), name
    assert isinstance(MPI.REQUEST_NULL, CM.Request)
    assert isinstance(MPI.COMM_WORLD, CM.Intracomm)


def test_derived_communicators_are_cmampi_of_their_kind():
    world = CM.COMM_WORLD
    dup = world.Dup()
    cart = world.Create_cart([world.Get_size()], periods=[True])
    sub = cart.Sub([True])
    try:
        assert type(dup) is CM.Intracomm and dup._engine is not None
        assert type(cart) is CM.Cartcomm and cart._engine is not None
        assert cart.Get_topo() == ([world.Get_size()], [True], [world.Get_rank()])
        assert type(sub) is CM.Cartcomm
        assert type(CM.Comm.fromhandle(cart.handle)) is CM.Cartcomm
    finally:
        for c in (sub, cart, dup):
            c.Free()


def test_subclass_shares_the_handle():
    """mpi4py's subclassing idiom: ``__new__(cls, comm)`` shares the handle, and
    the engine with it."""
    class Mine(CM.Intracomm):
        def __new__(cls, comm=None):
            return super().__new__(cls, comm)

    mine = Mine(CM.COMM_WORLD)
    assert mine == CM.COMM_WORLD and mine._engine is CM.COMM_WORLD._engine


def test_pkl5_takes_a_cmampi_communicator():
    from mpi4py.util import pkl5

    comm = pkl5.Intracomm(CM.COMM_WORLD)
    assert comm.allreduce(1) == comm.Get_size()


def test_freeing_a_copy_of_a_predefined_communicator_keeps_it_working():
    """mpi4py's ``free()`` nulls a copy of COMM_SELF, and COMM_SELF (with cmampi's
    engine for its handle) goes on working; the namespace's own object is a constant."""
    import numpy as np

    copy = type(CM.COMM_SELF)(CM.COMM_SELF)
    copy.free()
    assert not copy
    CM.COMM_SELF.free()
    assert CM.COMM_SELF and CM.COMM_SELF._engine is not None
    got = np.zeros(3)
    req = CM.COMM_SELF.Isend(np.arange(3.0), 0, 5)
    CM.COMM_SELF.Recv(got, 0, 5)
    req.Wait()
    assert (got == np.arange(3.0)).all()
