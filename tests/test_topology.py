"""Process topologies and neighbour collectives: the same tests on plain mpi4py and cmampi.

On the MPI channel cmampi's topologies are mpi4py's own; on the socket channel
they are cmampi's (``cmampi.sockettopo``), checked here against expectations
that the mpi4py run shows to be MPI's. Every rank sends, in out-block j, values
naming itself and j, so a receiver knows which block of which neighbour each of
its receive blocks must hold (and that a ``PROC_NULL`` neighbour's is untouched).
Generalized requests (``Grequest``) are here too: mpi4py's on the MPI channel,
cmampi's on the socket channel.
"""

from __future__ import annotations

import numpy as np
import pytest

#: Seconds before the watchdog (conftest.py) calls a test hung.
WATCHDOG = 60

N = 3   # elements per block


def cart_matching(i: int) -> int:
    """The out-block of a Cartesian neighbour that lands in in-block *i*: the -1
    neighbour's block sent towards +1, and the other way round."""
    return i ^ 1


def graph_matching(comm, MPI, me: int, inedges, outedges_of):
    """The function giving, for in-block i, the out-block of its source that lands
    there: repeated edges between two ranks match in order."""
    def matching(i: int) -> int:
        s = inedges[i]
        k = list(inedges[:i]).count(s)
        return [j for j, d in enumerate(outedges_of(s)) if d == me][k]
    return matching


def topologies(comm, MPI):
    """(name, topology communicator, matching) for a periodic and an open grid,
    a ring graph and a distributed graph (or COMM_NULL's ranks: None)."""
    size, rank = comm.Get_size(), comm.Get_rank()
    out = []
    for periods in (True, False):
        cart = comm.Create_cart([size], periods=[periods])
        out.append((f"cart-{periods}", cart, cart_matching))
    dims = MPI.Compute_dims(size, 2)
    cart = comm.Create_cart(dims, periods=[True, False])
    out.append(("cart-2d", cart, cart_matching))
    index, edges = [0], []
    for i in range(size):
        index.append(index[-1] + 2)
        edges.extend(((i - 1) % size, (i + 1) % size))
    graph = comm.Create_graph(index, edges)
    out.append(("graph", graph, graph_matching(comm, MPI, rank, graph.inedges,
                                               graph.Get_neighbors)))

    def dests(r):
        return [(r + 1) % size, (r + 2) % size, r]
    sources = [(rank - 2) % size, (rank - 1) % size, rank]
    dist = comm.Create_dist_graph_adjacent(sources, dests(rank))
    out.append(("distgraph", dist, graph_matching(comm, MPI, rank, sources, dests)))
    return out


def free_all(topos) -> None:
    for _, topo, _ in topos:
        topo.Free()


def expected(topo, MPI, matching, dtype, fill=-1) -> np.ndarray:
    """What in-block i must hold: the matching out-block of its source."""
    inedges = topo.inedges
    want = np.full((len(inedges), N), fill, dtype)
    for i, s in enumerate(inedges):
        if s != MPI.PROC_NULL:
            want[i] = 100 * s + matching(i)
    return want


def outblocks(topo, dtype) -> np.ndarray:
    return np.array([[100 * topo.Get_rank() + j] * N for j in range(topo.outdegree)], dtype)


# -- construction and queries -------------------------------------------------------------

@pytest.mark.mpi
def test_cartesian_queries(comm, MPI):
    size = comm.Get_size()
    for ndim in (1, 2, 3):
        dims = MPI.Compute_dims(size, [0] * ndim)
        assert int(np.prod(dims)) == size
        for periods in ([True] * ndim, [False] * ndim):
            cart = comm.Create_cart(dims, periods=periods)
            assert cart.Get_topology() == MPI.CART and cart.is_topo
            assert type(cart) is MPI.Cartcomm
            assert MPI.Intracomm(cart).Get_topology() == MPI.CART
            coords = cart.coords
            assert cart.topo == (dims, [int(p) for p in periods], coords)
            assert cart.Get_cart_rank(coords) == cart.Get_rank()
            edges = []
            for d in range(ndim):
                src, dst = cart.Shift(d, 1)
                for step, peer in ((-1, src), (1, dst)):
                    c = list(coords)
                    c[d] += step
                    if periods[d]:
                        c[d] %= dims[d]
                    if 0 <= c[d] < dims[d]:
                        assert cart.Get_coords(peer) == c
                    else:
                        assert peer == MPI.PROC_NULL
                edges += [src, dst]
            assert cart.inoutedges == (edges, edges)
            assert cart.degrees == (2 * ndim, 2 * ndim)
            dup = cart.Dup()
            assert type(dup) is MPI.Cartcomm and dup.topo == cart.topo
            dup.Free()
            for d in range(ndim):
                remain = [True] * ndim
                remain[d] = False
                sub = cart.Sub(remain)
                assert sub.dims == dims[:d] + dims[d + 1:]
                assert sub.Get_size() == size // dims[d]
                sub.Free()
            cart.Free()
    with pytest.raises(ValueError):
        comm.Create_cart([size], [True, True])


@pytest.mark.mpi(min_size=2)
def test_cartesian_outside_the_grid(comm, MPI, mpi_library):
    size, rank = comm.Get_size(), comm.Get_rank()
    cart = comm.Create_cart([size - 1])
    if rank == size - 1:
        assert cart == MPI.COMM_NULL
        assert not cart
    else:
        assert cart.Get_size() == size - 1 and cart.Get_rank() == rank
        cart.Free()
    if rank < size - 1:
        assert comm.Cart_map([size - 1]) == rank
    elif mpi_library != "Open MPI":   # Open MPI maps a rank outside the grid to itself
        assert comm.Cart_map([size - 1]) == MPI.UNDEFINED
    else:
        comm.Cart_map([size - 1])
    with pytest.raises(MPI.Exception):
        comm.Create_cart([size + 1])


@pytest.mark.mpi
def test_graph_queries(comm, MPI):
    size, rank = comm.Get_size(), comm.Get_rank()
    index, edges = [0], []
    for i in range(size):
        index.append(index[-1] + 2)
        edges.extend(((i - 1) % size, (i + 1) % size))
    for given in (index, index[1:]):    # with and without the leading 0
        graph = comm.Create_graph(given, edges)
        assert type(graph) is MPI.Graphcomm and graph.topology == MPI.GRAPH
        assert graph.topo == (index[1:], edges)
        assert graph.dims == (size, 2 * size)
        assert graph.neighbors == [(rank - 1) % size, (rank + 1) % size]
        assert graph.Get_neighbors_count((rank + 1) % size) == 2
        assert graph.inoutedges == (graph.neighbors, graph.neighbors)
        assert comm.Graph_map(given, edges) == rank
        with pytest.raises(TypeError):
            MPI.Cartcomm(graph)
        graph.Free()


@pytest.mark.mpi
def test_dist_graph_queries(comm, MPI):
    size, rank = comm.Get_size(), comm.Get_rank()
    sources, dests = [(rank - 1) % size], [(rank + 1) % size]
    topo = comm.Create_dist_graph_adjacent(sources, dests, [7], [8])
    assert type(topo) is MPI.Distgraphcomm and topo.topology == MPI.DIST_GRAPH
    assert topo.Get_dist_neighbors_count() == (1, 1, True)
    assert topo.Get_dist_neighbors() == (sources, dests, ([7], [8]))
    topo.Free()
    topo = comm.Create_dist_graph_adjacent(None, dests, None, MPI.UNWEIGHTED)
    assert topo.Get_dist_neighbors() == ([], dests, None)
    topo.Free()
    topo = comm.Create_dist_graph_adjacent([], [], MPI.WEIGHTS_EMPTY, MPI.WEIGHTS_EMPTY)
    assert topo.Get_dist_neighbors() == ([], [], ([], []))
    topo.Free()
    with pytest.raises(ValueError):
        comm.Create_dist_graph_adjacent([0], [0], MPI.WEIGHTS_EMPTY, MPI.WEIGHTS_EMPTY)
    # Every rank names the edge rank -> rank + 1: each learns one in, one out.
    topo = comm.Create_dist_graph([rank], [1], [(rank + 1) % size], [rank + 10])
    got = topo.Get_dist_neighbors()
    assert got == ([(rank - 1) % size], [(rank + 1) % size],
                   ([(rank - 1) % size + 10], [rank + 10]))
    topo.Free()


@pytest.mark.mpi
def test_compute_dims(MPI):
    assert MPI.Compute_dims(12, [0, 3, 0]) == [2, 3, 2]
    assert MPI.Compute_dims(6, 2) == [3, 2]
    assert MPI.Compute_dims(1, 0) == []
    with pytest.raises(MPI.Exception):
        MPI.Compute_dims(5, [2, 0])


def test_compute_dims_as_mpich():
    """The socket channel's Compute_dims gives what MPICH's does (serial)."""
    real = pytest.importorskip("mpi4py.MPI")
    from cmampi.sockettopo import Compute_dims

    for n in range(1, 200):
        for ndim in range(1, 5):
            for dims in ([0] * ndim, [2] + [0] * (ndim - 1), [0] * (ndim - 1) + [3]):
                try:
                    want = real.Compute_dims(n, dims)
                except real.Exception:
                    with pytest.raises(real.Exception):
                        Compute_dims(n, dims)
                    continue
                assert Compute_dims(n, dims) == want, (n, dims)


# -- neighbour collectives ----------------------------------------------------------------

@pytest.mark.mpi
@pytest.mark.parametrize("mode", ["blocking", "nonblocking", "persistent"])
def test_neighbor_alltoall(comm, MPI, mode, mpi_library):
    if mode != "blocking" and mpi_library == "Open MPI":
        pytest.skip("Open MPI's nonblocking neighbour alltoall swaps the blocks of a "
                    "neighbour that is both the -1 and the +1 one (plain mpi4py too)")
    for _, topo, matching in topologies(comm, MPI):
        send = outblocks(topo, "i8")
        recv = np.full((topo.indegree, N), -1, "i8")
        if mode == "blocking":
            topo.Neighbor_alltoall(send, recv)
        elif mode == "nonblocking":
            topo.Ineighbor_alltoall(send, recv).Wait()
        else:
            req = topo.Neighbor_alltoall_init(send, recv)
            for _ in range(2):
                recv[...] = -1
                req.Start()
                req.Wait()
            req.Free()
        assert (recv == expected(topo, MPI, matching, "i8")).all()
        topo.Free()


@pytest.mark.mpi
@pytest.mark.parametrize("mode", ["blocking", "nonblocking", "persistent"])
def test_neighbor_allgather(comm, MPI, mode):
    for _, topo, _ in topologies(comm, MPI):
        send = np.full(N, topo.Get_rank(), "f8")
        recv = np.full((topo.indegree, N), -1.0)
        if mode == "blocking":
            topo.Neighbor_allgather(send, recv)
        elif mode == "nonblocking":
            topo.Ineighbor_allgather(send, recv).Wait()
        else:
            req = topo.Neighbor_allgather_init(send, recv)
            req.Start()
            req.Wait()
            req.Free()
        for i, s in enumerate(topo.inedges):
            assert (recv[i] == (s if s != MPI.PROC_NULL else -1)).all()
        topo.Free()


@pytest.mark.mpi
def test_neighbor_vector_forms(comm, MPI):
    for _, topo, matching in topologies(comm, MPI):
        nin, nout = topo.degrees
        # One item per block, at a stride of N + 1 in the receive buffer.
        displs = [i * (N + 1) for i in range(nin)]
        recv = np.full(max(1, nin * (N + 1)), -1, "i4")
        send = np.array([100 * topo.Get_rank() + j for j in range(nout)], "i4")
        topo.Neighbor_allgatherv(send[:1], [recv, ([1] * nin, displs), MPI.INT])
        for i, s in enumerate(topo.inedges):
            assert recv[displs[i]] == (100 * s if s != MPI.PROC_NULL else -1)
        # Alltoallv: out-block j is one item; Alltoallw: the same, by bytes.
        recv[...] = -1
        topo.Neighbor_alltoallv([send, ([1] * nout, list(range(nout))), MPI.INT],
                                [recv, ([1] * nin, displs), MPI.INT])
        want = expected(topo, MPI, matching, "i4")[:, 0]
        assert [recv[d] for d in displs] == list(want)
        recv[...] = -1
        topo.Neighbor_alltoallw([send, ([1] * nout, [4 * j for j in range(nout)]),
                                 [MPI.INT] * nout],
                                [recv, ([1] * nin, [4 * d for d in displs]), [MPI.INT] * nin])
        assert [recv[d] for d in displs] == list(want)
        topo.Free()


@pytest.mark.mpi
def test_neighbor_objects(comm, MPI):
    for _, topo, matching in topologies(comm, MPI):
        me = topo.Get_rank()
        got = topo.neighbor_allgather({"from": me})
        assert got == [None if s == MPI.PROC_NULL else {"from": s} for s in topo.inedges]
        got = topo.neighbor_alltoall([(me, j) for j in range(topo.outdegree)])
        assert got == [None if s == MPI.PROC_NULL else (s, matching(i))
                       for i, s in enumerate(topo.inedges)]
        with pytest.raises(ValueError):
            topo.neighbor_alltoall([0] * (topo.outdegree + 1))
        topo.Free()


# -- generalized requests -------------------------------------------------------------------

@pytest.mark.mpi
def test_grequest(comm, MPI):
    calls = []

    def query(status, tag):
        calls.append("query")
        status.Set_source(comm.Get_rank())
        status.Set_tag(tag)

    greq = MPI.Grequest.Start(query, lambda tag: calls.append("free"),
                              lambda done, tag: calls.append(("cancel", done)), args=(5,))
    assert not greq.Test()
    greq.Cancel()
    greq.Complete()
    status = MPI.Status()
    MPI.Request.Waitall([greq], [status])
    assert calls == [("cancel", False), "query", "free"]
    assert (status.Get_source(), status.Get_tag()) == (comm.Get_rank(), 5)
    assert not greq
    with pytest.raises(TypeError):
        MPI.Prequest(MPI.Grequest.Start())
    greq = MPI.Grequest.Start()
    greq.complete("done")
    assert greq.wait() == "done"


@pytest.mark.mpi
@pytest.mark.parametrize("receive", ["in the list", "beside it"])
def test_waitall_on_a_grequest_another_thread_completes(cmcomm, MPI, receive):
    """cmampi's own generalized requests (socket channel): ``Waitall`` on one
    that another thread completes, with a receive that completes first in the
    same list or pending beside it, returns once the requests of its list are
    done (as ``Wait`` does, and as in MPI)."""
    import threading

    from cmampi import grequest

    greq = MPI.Grequest.Start()
    if not isinstance(greq, grequest.Grequest):
        greq.Complete()
        greq.Wait()
        pytest.skip("the MPI library's own generalized requests")
    me = cmcomm.Get_rank()
    got = np.zeros(8, np.uint8)
    recv = cmcomm.Irecv(got, me, 41)
    send = cmcomm.Isend(np.ones(8, np.uint8), me, 41)
    later = threading.Timer(0.2, greq.Complete)
    later.start()
    MPI.Request.Waitall([greq, recv] if receive == "in the list" else [greq])
    later.join()
    assert not greq
    MPI.Request.Waitall([recv, send])
    assert (got == 1).all()


def test_socket_signatures_as_mpi4py():
    """The socket channel's classes take mpi4py's parameters, by name and kind (serial)."""
    import inspect

    real = pytest.importorskip("mpi4py.MPI")
    from cmampi import grequest, socketcomm, sockettopo

    def params(fn):
        return [(p.name, p.kind, p.default is inspect.Parameter.empty)
                for p in inspect.signature(fn).parameters.values()]

    pairs = [(socketcomm.Intracomm, real.Intracomm,
              ["Create_cart", "Create_graph", "Create_dist_graph_adjacent",
               "Create_dist_graph", "Cart_map", "Graph_map", "Get_topology"]),
             (grequest.Grequest, real.Grequest, ["Start", "Complete", "complete"])]
    for name in ("Topocomm", "Cartcomm", "Graphcomm", "Distgraphcomm"):
        theirs = getattr(real, name)
        methods = [m for m in vars(theirs) if callable(getattr(theirs, m)) and m[0] != "_"]
        pairs.append((getattr(sockettopo, name), theirs, methods))
    for ours, theirs, methods in pairs:
        for m in methods:
            assert params(getattr(ours, m)) == params(getattr(theirs, m)), (ours, m)
    assert params(sockettopo.Compute_dims) == params(real.Compute_dims)
