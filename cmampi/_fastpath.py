"""The compiled path of small nonblocking messages, where it is built.

``_fastpath.c`` is built once per MPI library (``scripts/build_fastpath.py``),
as ``_fastpath_mpich`` or ``_fastpath_openmpi``: it calls the MPI library
directly, through that library's own ``mpi.h``. It is used only where it calls
the very library mpi4py loaded, initialized; anywhere else (no build, another
library, ``CMAMPI_FASTPATH=0``) cmampi runs its pure-Python path, which does
everything this one does.
"""

from __future__ import annotations

import importlib
import mmap
from types import ModuleType

import numpy as np

from . import _userpickle
from ._backend import real_mpi
from ._config import config

__all__ = ["ALLGATHER", "ALLREDUCE", "ALLTOALL", "ARRIVED", "BCAST", "DONE", "EXSCAN", "GATHER",
           "POSTED", "REDUCE", "RELEASED", "SCAN", "SCATTER", "module", "register",
           "register_in_band", "register_objects", "register_slots"]

#: A compiled op's states (its ``state``), as ``_fastpath.c`` numbers them.
POSTED, DONE, ARRIVED, RELEASED = 0, 1, 2, 3

#: The collectives ``coll`` runs, as ``_fastpath.c`` numbers them (``slots`` the
#: scans too).
BCAST, GATHER, SCATTER, ALLGATHER, ALLTOALL, REDUCE, ALLREDUCE, SCAN, EXSCAN = range(9)

#: MPI vendor, as mpi4py reports it -> the name of the module built for it
_BUILDS = {"MPICH": "_fastpath_mpich", "Open MPI": "_fastpath_openmpi"}

_loaded: list[ModuleType | None] = []
#: The request class of compiled ops (`request.StagedRequest`), and the engine's
#: receives that wait for progress and ops left to finish on their own
#: (`p2p._PENDING`, `p2p._DETACHED`), once registered.
_registered: list[tuple[type, dict, list]] = []
#: The request class of objects' receives (`request.StagedObjectRequest`), once registered.
_objects: list[type] = []
#: How ``slots`` makes and reads its slots (`objcoll`), once registered.
_slots: list[tuple] = []
#: The pickling of sends: the callback's size and exception, and the slots the
#: compiled callback and pickling go in (`objects`), once registered. Both pickle
#: with ``_userpickle.DUMPS[0]``.
_in_band: list[tuple] = []


def register(request_type: type, pending: dict, detached: list) -> None:
    """Name the class whose objects are the requests of compiled ops, and the
    engine's collections the compiled path checks before it blocks."""
    _registered[:] = [(request_type, pending, detached)]


def register_objects(request_type: type) -> None:
    """Name the class of the requests of objects' receives."""
    _objects[:] = [request_type]


def register_in_band(least: int, exception: type, callback: list, pickled: list) -> None:
    """Put the compiled ``in_band`` (buffers of *least* bytes or more raise
    *exception*) in slot *callback*, and ``pickled`` (which pickles with it) in
    slot *pickled*, where the Python ones are, once the module loads."""
    _in_band[:] = [(least, exception, callback, pickled)]


def register_slots(loads, kwargs: dict, size: int, declined: object, medium: int) -> None:
    """How short lowercase collectives make their slots (``dumps(obj, 5,
    **kwargs)``) and read them, the slot's bytes, what ``slots`` returns for the
    full path, and the longest pickle a slot announces for a second collective."""
    _slots[:] = [(loads, kwargs, size, declined, medium)]


def _pickle_with(mod: ModuleType, dumps) -> None:
    """Make the compiled module pickle sends and slots with *dumps*."""
    if _slots:
        loads, kwargs, size, declined, medium = _slots[0]
        mod.slot_config(dumps, loads, kwargs, size, declined, medium)
    if _in_band:
        least, exception, _, _ = _in_band[0]
        mod.in_band_config(least, exception, dumps)


def _repickle(dumps) -> None:
    """``MPI.pickle`` changed: a loaded and configured module follows (`_userpickle`)."""
    if _loaded and _loaded[0] is not None and _registered:
        _pickle_with(_loaded[0], dumps)


_userpickle.on_change(_repickle)


def module(limit: int, band: int, cma_min: int, cma_min_busy: int,
           guarded: bool) -> ModuleType | None:
    """The compiled module, configured for an engine's eager *limit*, control
    *band* and pull thresholds; None where the pure-Python path runs."""
    if not _loaded:
        _loaded.append(_load())
    mod = _loaded[0]
    if mod is not None:
        if not _registered:
            return None
        request_type, pending, detached = _registered[0]
        try:
            mod.configure(limit, band, cma_min, cma_min_busy, guarded, request_type,
                          np.ndarray, mmap.mmap, real_mpi().BYTE, pending, detached)
        except ValueError:      # engines of other sizes take the Python path
            return None
        if _objects:
            mod.objects(_objects[0])
        _pickle_with(mod, _userpickle.DUMPS[0])
        if _in_band:
            _, _, callback, pickled = _in_band[0]
            callback[0] = mod.in_band
            pickled[0] = mod.pickled
    return mod


def _load() -> ModuleType | None:
    if not config.fastpath:
        return None
    mpi = real_mpi()
    name = _BUILDS.get(mpi.get_vendor()[0])
    if name is None:
        return None
    try:
        mod = importlib.import_module(f"{__package__}.{name}")
    except ImportError:
        return None
    initialized, version = mod.library()
    # The same library, and the same copy of it: its handles are mpi4py's.
    if not initialized or version != mpi.Get_library_version():
        return None
    return mod
