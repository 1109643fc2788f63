"""Process topologies on the socket channel, in pure Python: Cartesian, graph, distributed graph.

A topology is a record kept by the communicator's engine (``engine.topo``), so
every object over the same communicator sees it, as MPI keeps it with the
handle: ``Intracomm(cart).Get_topology()`` is ``CART``. Ranks are never
reordered (``reorder`` is accepted and ignored, as MPICH does), so
``Cart_map``/``Graph_map`` give the rank a process keeps, or ``UNDEFINED``.

The neighbour collectives (`cmampi.neighbor`) take MPI's neighbour order from
here, with a tag per block: between two ranks that are neighbours more than
once, messages match in order (a graph's repeated edges); a Cartesian grid's
-1 and +1 neighbours match by direction instead, as MPI specifies for periodic
dimensions of size 1 or 2 (the block from the -1 neighbour is what it sent
towards +1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as _np

from . import neighbor as _neighbor
from ._backend import names as _names_in_use
from .comm import _Freed
from .comm import as_int as _as_int
from .request import Prequest, Request
from .socketcomm import Intracomm

__all__ = [
    "Cartcomm",
    "Compute_dims",
    "Distgraphcomm",
    "Graphcomm",
    "Topocomm",
    "cart_map",
    "create_cart",
    "create_dist_graph",
    "create_dist_graph_adjacent",
    "create_graph",
    "graph_map",
    "null_comm",
]

_NAMES = _names_in_use()

#: Tags of neighbour messages on the collectives' private space, apart from the
#: blocking collectives', the Ibarriers' (from 1 << 10) and Alltoallw's (TAG_UB).
#: A Cartesian message adds 2 * dimension + (1 if sent towards +1).
_TAG_NEIGHBOR = 1 << 30


# -- topology records ---------------------------------------------------------------------

class CartTopo(NamedTuple):
    """A Cartesian grid: extent and periodicity of each dimension."""
    dims: tuple[int, ...]
    periods: tuple[bool, ...]
    kind: int = _NAMES.CART


class GraphTopo(NamedTuple):
    """A graph: MPI's ``index`` (cumulative degrees, no leading 0) and ``edges``."""
    index: tuple[int, ...]      # type: ignore[assignment]  # MPI's name; hides tuple.index
    edges: tuple[int, ...]
    kind: int = _NAMES.GRAPH


class DistGraphTopo(NamedTuple):
    """This rank's side of a distributed graph; weights None when unweighted."""
    sources: tuple[int, ...]
    destinations: tuple[int, ...]
    sourceweights: tuple[int, ...] | None
    destweights: tuple[int, ...] | None
    kind: int = _NAMES.DIST_GRAPH


class Neighbors(NamedTuple):
    """Who this rank receives block i from and sends block j to, and on which tags."""
    sources: list[int]
    destinations: list[int]
    recvtags: list[int]
    sendtags: list[int]


def _error(errclass: int) -> BaseException:
    return _NAMES.Exception(errclass)


def _ints(seq, what: str = "") -> list[int]:
    """*seq* as a list of C ints (mpi4py's ``getarray``)."""
    if isinstance(seq, int):
        raise TypeError(f"{what or 'argument'}: expecting a sequence of integers")
    return [_as_int(x) for x in seq]


def _checked(seq, n: int) -> list[int]:
    """*seq* as *n* C ints (mpi4py's ``chkarray``)."""
    values = _ints(seq)
    if len(values) != n:
        raise ValueError(f"expecting {n} items, got {len(values)}")
    return values


def _periods(periods, ndim: int) -> list[bool]:
    if periods is None:
        periods = False
    if isinstance(periods, bool):
        periods = [periods] * ndim
    return [bool(p) for p in _checked(periods, ndim)]


def _graph_arrays(index, edges) -> tuple[list[int], list[int]]:
    """mpi4py's extension: ``index`` may start with 0 (CSR offsets)."""
    index, edges = _ints(index), _ints(edges)
    if index and index[0] == 0 and index[-1] == len(edges):
        index = index[1:]
    return index, edges


def _coords(topo: CartTopo, rank: int) -> list[int]:
    coords = [0] * len(topo.dims)
    for i in reversed(range(len(topo.dims))):
        rank, coords[i] = divmod(rank, topo.dims[i])
    return coords


def _cart_rank(topo: CartTopo, coords: Sequence[int]) -> int:
    """The rank at *coords* (wrapped along periodic dimensions), PROC_NULL off the grid."""
    rank = 0
    for c, n, periodic in zip(coords, topo.dims, topo.periods):
        if periodic:
            c %= n
        elif not 0 <= c < n:
            return _NAMES.PROC_NULL
        rank = rank * n + c
    return rank


def _shift(topo: CartTopo, rank: int, direction: int, disp: int) -> tuple[int, int]:
    if not 0 <= direction < len(topo.dims):
        raise _error(_NAMES.ERR_ARG)
    here = _coords(topo, rank)

    def moved(d: int) -> int:
        coords = list(here)
        coords[direction] += d
        return _cart_rank(topo, coords)
    return moved(-disp), moved(disp)


def _graph_neighbors(topo: GraphTopo, rank: int) -> list[int]:
    if not 0 <= rank < len(topo.index):
        raise _error(_NAMES.ERR_RANK)
    lo = topo.index[rank - 1] if rank else 0
    return list(topo.edges[lo:topo.index[rank]])


def neighbors(topo, rank: int) -> Neighbors:
    """MPI's neighbour order for *rank* under *topo*, with each block's tag."""
    if topo.kind == _NAMES.CART:
        peers: list[int] = []
        recvtags: list[int] = []
        sendtags: list[int] = []
        for i in range(len(topo.dims)):
            peers.extend(_shift(topo, rank, i, 1))
            # Block 2i comes from the -1 neighbour, which sent it towards +1.
            recvtags += [_TAG_NEIGHBOR + 2 * i + 1, _TAG_NEIGHBOR + 2 * i]
            sendtags += [_TAG_NEIGHBOR + 2 * i, _TAG_NEIGHBOR + 2 * i + 1]
        return Neighbors(peers, list(peers), recvtags, sendtags)
    if topo.kind == _NAMES.GRAPH:
        peers = _graph_neighbors(topo, rank)
        tags = [_TAG_NEIGHBOR] * len(peers)
        return Neighbors(peers, list(peers), tags, list(tags))
    return Neighbors(list(topo.sources), list(topo.destinations),
                     [_TAG_NEIGHBOR] * len(topo.sources),
                     [_TAG_NEIGHBOR] * len(topo.destinations))


# -- making topology communicators --------------------------------------------------------

def null_comm(cls=None) -> Intracomm:
    """A null communicator (``COMM_NULL``'s kind): any use raises ``ERR_COMM``."""
    comm = Intracomm.__new__(cls or Intracomm)
    comm._engine = _Freed(_NAMES)
    return comm


def _with_topo(comm: Intracomm, member: bool, topo) -> Intracomm:
    """A communicator of *comm*'s ranks that are *member*s (ranks kept, in order),
    carrying *topo*; ``COMM_NULL`` for the others. Collective over *comm*."""
    e = comm._engine
    ch = e.ch.split(0 if member else _NAMES.UNDEFINED, e.rank)
    if ch is None:
        return null_comm()
    cls = {_NAMES.CART: Cartcomm, _NAMES.GRAPH: Graphcomm}.get(topo.kind, Distgraphcomm)
    new = cls._from_channel(ch)
    new._engine.topo = topo
    return new


def cart_map(comm: Intracomm, dims, periods=None) -> int:
    """The rank *comm*'s process keeps in a grid of *dims*, or ``UNDEFINED``."""
    dims = _ints(dims, "dims")
    _periods(periods, len(dims))
    if any(d < 0 for d in dims):
        raise _error(_NAMES.ERR_DIMS)
    nnodes = int(_np.prod(dims, dtype=_np.int64)) if dims else 1
    if nnodes > comm.Get_size():
        raise _error(_NAMES.ERR_DIMS)
    return comm.Get_rank() if comm.Get_rank() < nnodes else _NAMES.UNDEFINED


def create_cart(comm: Intracomm, dims, periods=None, reorder: bool = False) -> Intracomm:
    dims = _ints(dims, "dims")
    periods = _periods(periods, len(dims))
    if any(d < 0 for d in dims):
        raise _error(_NAMES.ERR_DIMS)
    nnodes = int(_np.prod(dims, dtype=_np.int64)) if dims else 1
    if nnodes > comm.Get_size():
        raise _error(_NAMES.ERR_ARG)
    return _with_topo(comm, comm.Get_rank() < nnodes, CartTopo(tuple(dims), tuple(periods)))


def graph_map(comm: Intracomm, index, edges) -> int:
    """The rank *comm*'s process keeps in a graph of *index*, or ``UNDEFINED``."""
    index, edges = _graph_arrays(index, edges)
    _check_graph(comm, index, edges)
    return comm.Get_rank() if comm.Get_rank() < len(index) else _NAMES.UNDEFINED


def _check_graph(comm: Intracomm, index: list[int], edges: list[int]) -> None:
    nnodes = len(index)
    if nnodes > comm.Get_size() or any(b < a for a, b in zip([0, *index], index)) \
            or (index and index[-1] != len(edges)) \
            or any(not 0 <= x < nnodes for x in edges):
        raise _error(_NAMES.ERR_ARG)


def create_graph(comm: Intracomm, index, edges, reorder: bool = False) -> Intracomm:
    index, edges = _graph_arrays(index, edges)
    _check_graph(comm, index, edges)
    return _with_topo(comm, comm.Get_rank() < len(index), GraphTopo(tuple(index), tuple(edges)))


def _weights(weights, n: int) -> list[int] | None:
    """mpi4py's ``asarray_weights``: None (or ``UNWEIGHTED``) for no weights."""
    if weights is None or weights is _NAMES.UNWEIGHTED:
        return None
    if weights is _NAMES.WEIGHTS_EMPTY:
        if n > 0:
            raise ValueError("empty weights but nonzero degree")
        return []
    return _checked(weights, n)


def _check_ranks(comm: Intracomm, ranks: Sequence[int]) -> None:
    if any(not 0 <= r < comm.Get_size() for r in ranks):
        raise _error(_NAMES.ERR_RANK)


def _dist_graph(comm: Intracomm, sources, destinations, sourceweights, destweights
                ) -> Intracomm:
    if (sourceweights is None) != (destweights is None):
        # MPI: weighted on both sides or on neither (MPICH reports a bad topology)
        if sourceweights or destweights:
            raise _error(_NAMES.ERR_TOPOLOGY)
        sourceweights, destweights = sourceweights or [], destweights or []
    _check_ranks(comm, sources + destinations)
    topo = DistGraphTopo(tuple(sources), tuple(destinations),
                         None if sourceweights is None else tuple(sourceweights),
                         None if destweights is None else tuple(destweights))
    return _with_topo(comm, True, topo)


def create_dist_graph_adjacent(comm: Intracomm, sources, destinations, sourceweights=None,
                               destweights=None, info=None, reorder: bool = False
                               ) -> Intracomm:
    sources = [] if sources is None else _ints(sources, "sources")
    sourceweights = _weights(sourceweights, len(sources))
    destinations = [] if destinations is None else _ints(destinations, "destinations")
    destweights = _weights(destweights, len(destinations))
    return _dist_graph(comm, sources, destinations, sourceweights, destweights)


def create_dist_graph(comm: Intracomm, sources, degrees, destinations, weights=None,
                      info=None, reorder: bool = False) -> Intracomm:
    """Every rank names some edges; each learns its own in and out edges (in the
    order of the ranks that named them, then of their lists)."""
    sources = _ints(sources, "sources")
    degrees = _checked(degrees, len(sources))
    if any(d < 0 for d in degrees):
        raise _error(_NAMES.ERR_ARG)
    destinations = _checked(destinations, sum(degrees))
    weights = _weights(weights, len(destinations))
    _check_ranks(comm, sources + destinations)
    edges, k = [], 0
    for src, degree in zip(sources, degrees):
        for _ in range(degree):
            edges.append((src, destinations[k], 1 if weights is None else weights[k]))
            k += 1
    named = comm._engine.ch.allgather((edges, weights is not None))
    if len({w for _, w in named}) != 1:
        raise _error(_NAMES.ERR_TOPOLOGY)
    me = comm.Get_rank()
    ins = [(s, w) for rank_edges, _ in named for s, d, w in rank_edges if d == me]
    outs = [(d, w) for rank_edges, _ in named for s, d, w in rank_edges if s == me]
    weighted = named[0][1]
    return _dist_graph(comm, [s for s, _ in ins], [d for d, _ in outs],
                       [w for _, w in ins] if weighted else None,
                       [w for _, w in outs] if weighted else None)


def _balanced(n: int, k: int) -> list[int]:
    """*k* non-increasing factors of *n* as close to one another as can be (the
    smallest spread, then the smallest first factor), as MPI implementations give."""
    best: list[Any] = [None]
    divisors = [d for d in range(n, 0, -1) if n % d == 0] if n < 1 << 16 else \
        sorted({x for i in range(1, int(n ** 0.5) + 1) if n % i == 0 for x in (i, n // i)},
               reverse=True)

    def search(left: int, k: int, cap: int, chosen: list[int]) -> None:
        if k == 1:
            if left <= cap:
                cand = [*chosen, left]
                key = (cand[0] - cand[-1], cand)
                if best[0] is None or key < best[0][0]:
                    best[0] = (key, cand)
            return
        for d in divisors:
            if d <= cap and left % d == 0 and d ** k >= left:   # the first is the largest
                search(left // d, k - 1, d, [*chosen, d])

    if k == 0:
        return []
    search(n, k, n, [])
    return best[0][1]


def Compute_dims(nnodes: int, dims) -> list[int]:
    """Return a balanced distribution of processes per coordinate direction."""
    nnodes = _as_int(nnodes)
    dims = [0] * _as_int(dims) if isinstance(dims, int) else _ints(dims, "dims")
    if nnodes < 0:
        raise _error(_NAMES.ERR_ARG)
    if any(d < 0 for d in dims):
        raise _error(_NAMES.ERR_DIMS)
    fixed = int(_np.prod([d for d in dims if d], dtype=_np.int64))
    free = [i for i, d in enumerate(dims) if d == 0]
    if nnodes == 0:     # nothing to distribute (MPICH loops forever)
        return dims
    if nnodes % fixed:
        raise _error(_NAMES.ERR_DIMS)
    if not free:        # nothing to choose: MPICH gives dims back, even if short of nnodes
        return dims
    sizes = _balanced(nnodes // fixed, len(free))
    for i, n in zip(free, sizes):
        dims[i] = n
    return dims


# -- the communicator classes -------------------------------------------------------------

class Topocomm(Intracomm):
    """
    Topology intracommunicator (socket channel).
    """

    __module__ = "cmampi.MPI"   # where pickle and repr find it
    _kind: int | None = None     # a subclass's topology

    def __init__(self, comm: Intracomm | None = None) -> None:
        self._engine, self._predefined = _Freed(_NAMES), False
        if comm is None or not comm:
            return
        if not isinstance(comm, Intracomm):
            raise TypeError(f"expected a cmampi Intracomm, got {comm!r}")
        kind = comm.Get_topology()
        if kind == _NAMES.UNDEFINED or self._kind not in (None, kind):
            raise TypeError(f"expecting a {type(self).__name__}")
        self._engine = comm._engine
        self._predefined = comm._predefined

    def __repr__(self) -> str:
        if isinstance(self._engine, _Freed):
            return f"<cmampi.{type(self).__name__} (null)>"
        return f"<cmampi.{type(self).__name__} rank {self.rank} of {self.size}, socket channel>"

    @property
    def _topo(self):
        return self._engine.topo

    def _neighbors(self) -> Neighbors:
        return neighbors(self._engine.topo, self._engine.rank)

    def Dup(self, info=None) -> Topocomm:
        """Duplicate the communicator, with its topology."""
        new = type(self)._from_channel(self._engine.ch.dup())
        new._engine.topo = self._engine.topo
        return new

    def toint(self) -> int:
        """No integer handle on the socket channel (-1)."""
        return -1

    def py2f(self) -> int:
        """No Fortran handle on the socket channel (-1)."""
        return -1

    @property
    def degrees(self) -> tuple[int, int]:
        """Number of incoming and outgoing neighbors."""
        nb = self._neighbors()
        return len(nb.sources), len(nb.destinations)

    @property
    def indegree(self) -> int:
        """Number of incoming neighbors."""
        return self.degrees[0]

    @property
    def outdegree(self) -> int:
        """Number of outgoing neighbors."""
        return self.degrees[1]

    @property
    def inoutedges(self) -> tuple[list[int], list[int]]:
        """Incoming and outgoing neighbors."""
        nb = self._neighbors()
        return nb.sources, nb.destinations

    @property
    def inedges(self) -> list[int]:
        """Incoming neighbors."""
        return self.inoutedges[0]

    @property
    def outedges(self) -> list[int]:
        """Outgoing neighbors."""
        return self.inoutedges[1]

    # -- neighbourhood collectives ----------------------------------------------------------
    def Ineighbor_allgather(self, sendbuf, recvbuf) -> Request:
        """Nonblocking Neighbor Gather to All."""
        return _neighbor.ineighbor_allgather(self, sendbuf, recvbuf, False)

    def Ineighbor_allgatherv(self, sendbuf, recvbuf) -> Request:
        """Nonblocking Neighbor Gather to All Vector."""
        return _neighbor.ineighbor_allgather(self, sendbuf, recvbuf, True)

    def Ineighbor_alltoall(self, sendbuf, recvbuf) -> Request:
        """Nonblocking Neighbor All to All."""
        return _neighbor.ineighbor_alltoall(self, sendbuf, recvbuf, False)

    def Ineighbor_alltoallv(self, sendbuf, recvbuf) -> Request:
        """Nonblocking Neighbor All to All Vector."""
        return _neighbor.ineighbor_alltoall(self, sendbuf, recvbuf, True)

    def Ineighbor_alltoallw(self, sendbuf, recvbuf) -> Request:
        """Nonblocking Neighbor All to All General."""
        return _neighbor.ineighbor_alltoallw(self, sendbuf, recvbuf)

    def Neighbor_allgather(self, sendbuf, recvbuf) -> None:
        """Neighbor Gather to All."""
        self.Ineighbor_allgather(sendbuf, recvbuf).Wait()

    def Neighbor_allgatherv(self, sendbuf, recvbuf) -> None:
        """Neighbor Gather to All Vector."""
        self.Ineighbor_allgatherv(sendbuf, recvbuf).Wait()

    def Neighbor_alltoall(self, sendbuf, recvbuf) -> None:
        """Neighbor All to All."""
        self.Ineighbor_alltoall(sendbuf, recvbuf).Wait()

    def Neighbor_alltoallv(self, sendbuf, recvbuf) -> None:
        """Neighbor All to All Vector."""
        self.Ineighbor_alltoallv(sendbuf, recvbuf).Wait()

    def Neighbor_alltoallw(self, sendbuf, recvbuf) -> None:
        """Neighbor All to All General."""
        self.Ineighbor_alltoallw(sendbuf, recvbuf).Wait()

    def Neighbor_allgather_init(self, sendbuf, recvbuf, info=None) -> Prequest:
        """Persistent Neighbor Gather to All."""
        return Prequest._starting(lambda: self.Ineighbor_allgather(sendbuf, recvbuf))

    def Neighbor_allgatherv_init(self, sendbuf, recvbuf, info=None) -> Prequest:
        """Persistent Neighbor Gather to All Vector."""
        return Prequest._starting(lambda: self.Ineighbor_allgatherv(sendbuf, recvbuf))

    def Neighbor_alltoall_init(self, sendbuf, recvbuf, info=None) -> Prequest:
        """Persistent Neighbor All to All."""
        return Prequest._starting(lambda: self.Ineighbor_alltoall(sendbuf, recvbuf))

    def Neighbor_alltoallv_init(self, sendbuf, recvbuf, info=None) -> Prequest:
        """Persistent Neighbor All to All Vector."""
        return Prequest._starting(lambda: self.Ineighbor_alltoallv(sendbuf, recvbuf))

    def Neighbor_alltoallw_init(self, sendbuf, recvbuf, info=None) -> Prequest:
        """Persistent Neighbor All to All General."""
        return Prequest._starting(lambda: self.Ineighbor_alltoallw(sendbuf, recvbuf))

    def neighbor_allgather(self, sendobj: Any) -> list[Any]:
        """Neighbor Gather to All."""
        return _neighbor.neighbor_objects(self, [sendobj] * self.outdegree)

    def neighbor_alltoall(self, sendobj: Sequence[Any]) -> list[Any]:
        """Neighbor All to All."""
        objs = list(sendobj)
        if len(objs) != self.outdegree:
            raise ValueError(f"expecting {self.outdegree} items, got {len(objs)}")
        return _neighbor.neighbor_objects(self, objs)


class Cartcomm(Topocomm):
    """
    Cartesian topology intracommunicator (socket channel).
    """

    __module__ = "cmampi.MPI"   # where pickle and repr find it

    _kind = _NAMES.CART

    def Get_dim(self) -> int:
        """Return number of dimensions."""
        return len(self._topo.dims)

    def Get_topo(self) -> tuple[list[int], list[int], list[int]]:
        """Return information on the cartesian topology."""
        topo = self._topo
        return list(topo.dims), [int(p) for p in topo.periods], _coords(topo, self.rank)

    def Get_cart_rank(self, coords: Sequence[int]) -> int:
        """Translate logical coordinates to ranks."""
        topo = self._topo
        coords = _checked(coords, len(topo.dims))
        rank = _cart_rank(topo, coords)
        if rank == _NAMES.PROC_NULL:
            raise _error(_NAMES.ERR_ARG)
        return rank

    def Get_coords(self, rank: int) -> list[int]:
        """Translate ranks to logical coordinates."""
        rank = _as_int(rank)
        if not 0 <= rank < self.size:
            raise _error(_NAMES.ERR_RANK)
        return _coords(self._topo, rank)

    def Shift(self, direction: int, disp: int) -> tuple[int, int]:
        """Return a process ranks for data shifting with Sendrecv."""
        return _shift(self._topo, self.rank, _as_int(direction), _as_int(disp))

    def Sub(self, remain_dims: Sequence[bool]) -> Cartcomm:
        """Return a lower-dimensional Cartesian topology."""
        topo = self._topo
        keep = [bool(x) for x in _checked(remain_dims, len(topo.dims))]
        coords = _coords(topo, self.rank)
        color = key = 0
        for c, n, k in zip(coords, topo.dims, keep):
            if k:
                key = key * n + c
            else:
                color = color * n + c
        ch = self._engine.ch.split(color, key)
        sub = Cartcomm._from_channel(ch)
        sub._engine.topo = CartTopo(tuple(n for n, k in zip(topo.dims, keep) if k),
                                    tuple(p for p, k in zip(topo.periods, keep) if k))
        return sub

    dim = property(Get_dim, doc="Number of dimensions.")
    ndim = property(Get_dim, doc="Number of dimensions.")
    topo = property(Get_topo, doc="Topology information.")
    dims = property(lambda self: self.Get_topo()[0], doc="Dimensions.")
    periods = property(lambda self: self.Get_topo()[1], doc="Periodicity.")
    coords = property(lambda self: self.Get_topo()[2], doc="Coordinates.")


class Graphcomm(Topocomm):
    """
    General graph topology intracommunicator (socket channel).
    """

    __module__ = "cmampi.MPI"   # where pickle and repr find it

    _kind = _NAMES.GRAPH

    def Get_dims(self) -> tuple[int, int]:
        """Return the number of nodes and edges."""
        return len(self._topo.index), len(self._topo.edges)

    def Get_topo(self) -> tuple[list[int], list[int]]:
        """Return index and edges."""
        return list(self._topo.index), list(self._topo.edges)

    def Get_neighbors_count(self, rank: int) -> int:
        """Return number of neighbors of a process."""
        return len(_graph_neighbors(self._topo, _as_int(rank)))

    def Get_neighbors(self, rank: int) -> list[int]:
        """Return list of neighbors of a process."""
        return _graph_neighbors(self._topo, _as_int(rank))

    dims = property(Get_dims, doc="Number of nodes and edges.")
    nnodes = property(lambda self: self.Get_dims()[0], doc="Number of nodes.")
    nedges = property(lambda self: self.Get_dims()[1], doc="Number of edges.")
    topo = property(Get_topo, doc="Topology information.")
    index = property(lambda self: self.Get_topo()[0], doc="Index.")
    edges = property(lambda self: self.Get_topo()[1], doc="Edges.")
    nneighbors = property(lambda self: self.Get_neighbors_count(self.rank),
                          doc="Number of neighbors.")
    neighbors = property(lambda self: self.Get_neighbors(self.rank), doc="Neighbors.")


class Distgraphcomm(Topocomm):
    """
    Distributed graph topology intracommunicator (socket channel).
    """

    __module__ = "cmampi.MPI"   # where pickle and repr find it

    _kind = _NAMES.DIST_GRAPH

    def Get_dist_neighbors_count(self) -> tuple[int, int, bool]:
        """Return adjacency information for a distributed graph topology."""
        topo = self._topo
        return len(topo.sources), len(topo.destinations), topo.sourceweights is not None

    def Get_dist_neighbors(self) -> tuple[list[int], list[int],
                                          tuple[list[int], list[int]] | None]:
        """Return adjacency information for a distributed graph topology."""
        topo = self._topo
        weights = None
        if topo.sourceweights is not None:
            weights = (list(topo.sourceweights), list(topo.destweights))
        return list(topo.sources), list(topo.destinations), weights
