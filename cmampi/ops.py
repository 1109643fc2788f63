"""Reduction operations: how an op combines two numpy arrays, checked per dtype."""

from __future__ import annotations

import sys as _sys
from collections.abc import Callable

import numpy as _np

__all__ = ["combiner", "combiner_out", "predefined_name"]

# The numpy function of each predefined op, and the dtype kinds MPI defines it for
# (b: bool, i: signed, u: unsigned, f: float, c: complex).
_PREDEFINED = {
    "SUM": (_np.add, "iufc"),
    "PROD": (_np.multiply, "iufc"),
    "MAX": (_np.maximum, "iuf"),
    "MIN": (_np.minimum, "iuf"),
    "LAND": (_np.logical_and, "biu"),
    "LOR": (_np.logical_or, "biu"),
    "LXOR": (_np.logical_xor, "biu"),
    "BAND": (_np.bitwise_and, "iu"),
    "BOR": (_np.bitwise_or, "iu"),
    "BXOR": (_np.bitwise_xor, "iu"),
}

#: ``f(x, inout)``; what it returns (``inout``, for a ufunc) is not used.
Combine = Callable[[_np.ndarray, _np.ndarray], object]


_NAMES = [*list(_PREDEFINED), "MAXLOC", "MINLOC", "REPLACE", "NO_OP"]
#: Combiners already built, by (id(op), dtype); the op is kept so its id stays its own.
_CACHE: dict = {}


def predefined_name(op) -> str:
    """The predefined name of *op* ('SUM', ...), or '' for a user op."""
    if hasattr(op, "userfn"):        # cmampi's own ops
        return op.name if op.userfn is None else ""
    MPI = _sys.modules.get("mpi4py.MPI")   # an op of mpi4py's: it is imported already
    if MPI is None or not isinstance(op, MPI.Op):
        return ""
    handle = op.py2f()
    name = _MPI_NAMES.get(handle)
    if name is None:
        name = next((c for c in _NAMES if op == getattr(MPI, c)), "")
        if name:        # predefined handles are constants; user ops' may be reused
            _MPI_NAMES[handle] = name
    return name


#: mpi4py's predefined ops by Fortran handle.
_MPI_NAMES: dict = {}


def _logical(ufunc):
    def combine(x, inout):
        inout[...] = ufunc(x, inout)
    return combine


def _loc(better):
    """MAXLOC/MINLOC on a structured pair (value, index): ties keep the lower index."""
    def combine(x, inout):
        vx, vy = x[x.dtype.names[0]], inout[inout.dtype.names[0]]
        ix, iy = x[x.dtype.names[1]], inout[inout.dtype.names[1]]
        take = better(vx, vy) | ((vx == vy) & (ix < iy))
        inout[take] = x[take]
    return combine


def combiner_out(op, dtype: _np.dtype):
    """``f(a, b, out)`` writing ``a op b`` to *out* in one pass, for the
    predefined arithmetic and bitwise ops; None for the others."""
    name = predefined_name(op)
    if name in _PREDEFINED and name not in ("LAND", "LOR", "LXOR"):
        ufunc, kinds = _PREDEFINED[name]
        if _np.dtype(dtype).kind in kinds:
            return lambda a, b, out: ufunc(a, b, out=out)
    return None


def combiner(op, dtype: _np.dtype) -> Combine:
    """``f(x, inout)``: ``inout = x op inout``, elementwise, for arrays of *dtype*.

    Raises ``TypeError`` when MPI leaves *op* undefined for *dtype* (bitwise
    operations on floats, say).
    """
    key = (id(op), dtype)
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is op:
        return hit[1]
    fn = _combiner(op, _np.dtype(dtype))
    _CACHE[key] = (op, fn)
    return fn


def _combiner(op, dtype: _np.dtype) -> Combine:
    name = predefined_name(op)
    if name in _PREDEFINED:
        ufunc, kinds = _PREDEFINED[name]
        if dtype.kind not in kinds:
            raise TypeError(f"MPI.{name} is not defined for {dtype}")
        if name in ("LAND", "LOR", "LXOR"):
            return _logical(ufunc)
        return lambda x, inout: ufunc(x, inout, out=inout)
    if name in ("MAXLOC", "MINLOC"):
        if dtype.names is None or len(dtype.names) != 2:
            raise TypeError(f"MPI.{name} needs (value, index) pairs, got {dtype}")
        return _loc(_np.greater if name == "MAXLOC" else _np.less)
    if name == "REPLACE":
        return lambda x, inout: _np.copyto(inout, x)
    if name == "NO_OP":
        return lambda x, inout: None
    userfn = getattr(op, "userfn", None)
    if userfn is not None:           # cmampi's own Op.Create
        from ._names import datatype_of

        datatype = datatype_of(dtype)
        return lambda x, inout: userfn(x, inout, datatype)
    local = getattr(op, "Reduce_local", None)
    if local is not None:            # an mpi4py op: let MPI apply it
        return lambda x, inout: local(x, inout)
    raise TypeError(f"not a reduction operation: {op!r}")
