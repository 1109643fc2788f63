"""Message buffers: Python buffers and mpi4py buffer specs as byte layouts."""

from __future__ import annotations

import array as _array
import ctypes as _ctypes
import mmap as _mmap
import operator as _operator
import sys as _sys
import warnings as _warnings
from typing import Any

import numpy as _np

from . import _derived
from ._backend import names as _names_in_use

__all__ = [
    "HOST_KINDS",
    "Buffer",
    "Layout",
    "address",
    "bytes_at",
    "check_recv_buffer",
    "has_derived_datatype",
    "memory_kind",
    "plain_sizes",
    "quick_spec",
    "raw_view",
    "recv_buffer",
    "send_buffer",
]


class Layout:
    """Where a message's bytes live: ``addr`` plus a byte-level strided shape.

    The message is the C-order stream of the bytes of this (possibly strided)
    array, cut to the window ``[lo, hi)``. After collapsing, the last dimension
    is the contiguous run; a layout of one dimension is a single contiguous range.
    """

    __slots__ = ("addr", "hi", "lo", "shape", "strides")

    def __init__(self, addr: int, shape: tuple[int, ...], strides: tuple[int, ...],
                 lo: int = 0, hi: int | None = None) -> None:
        self.addr = addr
        self.shape = shape
        self.strides = strides
        self.lo = lo
        self.hi = _prod(shape) if hi is None else hi

    @classmethod
    def contiguous(cls, addr: int, nbytes: int) -> Layout:
        return cls(addr, (nbytes,), (1,), 0, nbytes)

    @classmethod
    def of_array(cls, arr: _np.ndarray) -> Layout:
        """The layout of *arr*'s elements in C order (memory order if contiguous)."""
        addr = address(arr)
        if arr.flags.c_contiguous or arr.flags.f_contiguous:
            return cls.contiguous(addr, arr.nbytes)
        return cls(addr, *_collapse((*arr.shape, arr.itemsize), (*arr.strides, 1)))

    @property
    def nbytes(self) -> int:
        return self.hi - self.lo

    @property
    def contiguous_run(self) -> bool:
        """True when the window is one contiguous byte range."""
        return len(self.shape) == 1

    @property
    def run(self) -> int:
        """Bytes in each contiguous run."""
        return self.shape[-1]

    def window(self, lo: int, hi: int) -> Layout:
        """The sub-stream ``[lo, hi)`` of this layout's window."""
        if self.contiguous_run:
            return Layout.contiguous(self.addr + self.lo + lo, hi - lo)
        return Layout(self.addr, self.shape, self.strides, self.lo + lo, self.lo + hi)

    def segments(self) -> _np.ndarray:
        """(address, length) rows of the window's contiguous runs, in stream order."""
        if self.contiguous_run:
            return _np.array([[self.addr + self.lo, self.nbytes]], dtype=_np.uint64)
        run = self.shape[-1]
        first, last = self.lo // run, -(-self.hi // run)
        outer = list(zip(self.shape[:-1], self.strides[:-1]))
        if 2 * (last - first) < _prod(self.shape[:-1]):
            # A small window: the offsets of its own runs only, from their indices.
            idx = _np.arange(first, last, dtype=_np.int64)
            offs = _np.zeros(len(idx), dtype=_np.int64)
            for n, s in reversed(outer):
                idx, at = _np.divmod(idx, n)
                offs += at * s
        else:
            offs = _np.zeros(1, dtype=_np.int64)
            for n, s in outer:
                offs = (offs[:, None] + _np.arange(n, dtype=_np.int64) * s).ravel()
            offs = offs[first:last]
        offs = offs + self.addr
        segs = _np.empty((len(offs), 2), dtype=_np.uint64)
        segs[:, 0] = offs.astype(_np.uint64)
        segs[:, 1] = run
        if len(segs):
            cut = self.lo - first * run
            segs[0, 0] += _np.uint64(cut)
            segs[0, 1] -= _np.uint64(cut)
            segs[-1, 1] -= _np.uint64(last * run - self.hi)
        return segs

    def encode(self) -> tuple[int, ...]:
        """Flat integers for the wire: addr, lo, hi, ndim, shape..., strides..."""
        return (self.addr, self.lo, self.hi, len(self.shape), *self.shape, *self.strides)

    @classmethod
    def decode(cls, ints) -> Layout:
        addr, lo, hi, ndim = ints[:4]
        shape = tuple(ints[4 : 4 + ndim])
        strides = tuple(ints[4 + ndim : 4 + 2 * ndim])
        return cls(addr, shape, strides, lo, hi)

    def __repr__(self) -> str:
        return (f"Layout(addr={self.addr:#x}, shape={self.shape}, strides={self.strides}, "
                f"window=[{self.lo}, {self.hi}))")


def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _collapse(shape, strides):
    """Drop unit dimensions and merge dimensions that are contiguous in each other."""
    dims = [(n, s) for n, s in zip(shape, strides) if n != 1]
    if not dims or any(n == 0 for n, _ in dims):
        return (0,) if any(n == 0 for n in shape) else (1,), (1,)
    out = [dims[-1]]
    for n, s in reversed(dims[:-1]):
        m, t = out[0]
        if s == m * t:
            out[0] = (n * m, t)
        else:
            out.insert(0, (n, s))
    if out[-1][1] != 1:  # last axis must be the contiguous run
        out.append((1, 1))
    return tuple(n for n, _ in out), tuple(s for _, s in out)


class _RawArray:
    """Exposes raw memory to numpy through the array interface, keeping *owner* alive."""

    __slots__ = ("__array_interface__", "owner")

    def __init__(self, addr, shape, strides, readonly, owner):
        self.owner = owner
        self.__array_interface__ = {
            "version": 3, "typestr": "|u1", "data": (addr, readonly),
            "shape": shape, "strides": strides,
        }


def raw_view(layout: Layout, owner: Any, readonly: bool = False) -> _np.ndarray:
    """A uint8 numpy view of *layout*'s full byte array (not cut to the window)."""
    return _np.asarray(_RawArray(layout.addr, layout.shape, layout.strides, readonly, owner))


class Buffer:
    """A parsed message buffer: its array, its byte layout and its element type."""

    __slots__ = ("_layout", "array", "derived", "esize", "nbytes", "obj", "whole")

    def __init__(self, obj, array: _np.ndarray, layout: Layout | None, esize: int,
                 whole: bool = True, nbytes: int | None = None, derived=None) -> None:
        self.obj = obj            # what the user passed, kept alive with the request
        self.array = array
        self._layout = layout     # None: a whole C-contiguous array, laid out on demand
        self.nbytes: int = (layout.nbytes if layout is not None
                            else nbytes)  # type: ignore[assignment]  # given when layout is None
        self.esize = esize
        self.whole = whole        # the message is all of *array*
        #: The spec of a message of a derived datatype (`_derived`): *array* holds its
        #: bytes, packed at parse (a send) or to be unpacked into it (a receive: `unpack`).
        self.derived = derived

    def unpack(self, nbytes: int | None) -> None:
        """A derived datatype's receive, done: lay the first *nbytes* received out
        in the user's buffer, as its type map says (None: nothing came, or an
        error), and let its datatype go (`_derived.kept`). Once."""
        spec, self.derived = self.derived, None
        if spec is None:
            return
        try:
            if nbytes is not None:
                _derived.unpack(self.array, nbytes, spec)
        finally:
            _derived.release(spec)

    @classmethod
    def new(cls, data: int | bytes | memoryview) -> Buffer:
        """A buffer in new memory: of *data* bytes (an int, not zero-filled), or
        holding a copy of *data* (what `recv_buffer` of a fresh bytearray would
        give, without its parse)."""
        arr = _np.empty(data, _np.uint8) if type(data) is int else \
            _np.frombuffer(bytearray(data), _np.uint8)
        return cls(arr, arr, None, 1, True, arr.nbytes)

    @property
    def layout(self) -> Layout:
        if self._layout is None:
            self._layout = Layout.contiguous(address(self.array), self.nbytes)
        return self._layout

    @property
    def readonly(self) -> bool:
        return not self.array.flags.writeable

    @property
    def contiguous(self) -> bool:
        return self._layout is None or self._layout.contiguous_run

    def flat(self) -> _np.ndarray:
        """The message bytes as a 1-D uint8 view (contiguous buffers only)."""
        lay = self.layout
        return raw_view(Layout.contiguous(lay.addr + lay.lo, lay.nbytes), self.array,
                        self.readonly)

    def wire(self):
        """A contiguous object holding exactly the message bytes, for the channel.

        The user's own memory when the message is contiguous (a receive can
        land there directly); a packed copy for a strided send.
        """
        if self.contiguous:
            return self.array if self.whole else self.flat()
        return self.tobytes()

    def head(self, n: int) -> bytes:
        """A copy of the message's first *n* bytes (all of it if shorter), in stream order."""
        n = min(n, self.nbytes)
        lay = self.layout
        if lay.contiguous_run:
            return _ctypes.string_at(lay.addr + lay.lo, n)
        return b"".join(_ctypes.string_at(int(addr), int(k))
                        for addr, k in lay.window(0, n).segments())

    def tobytes(self) -> bytes:
        """A packed copy of the message bytes, in stream order."""
        lay = self.layout
        if lay.contiguous_run:
            if self.whole:
                return self.array.tobytes(order="A")
            return self.flat().tobytes()
        full = raw_view(lay, self.array, True)
        if lay.lo == 0 and lay.hi == full.size:
            return full.tobytes()
        return full.reshape(-1)[lay.lo : lay.hi].tobytes()

    def scatter(self, data) -> None:
        """Write *data* (at most ``nbytes`` bytes) to the start of the message stream."""
        n = len(data)
        if n == 0:
            return
        # A whole C-contiguous array needs no layout (its address would cost a call).
        if self._layout is None or (self.whole and self.array.flags.c_contiguous):
            try:
                memoryview(self.array  # type: ignore[arg-type]  # numpy stubs < 3.12
                           ).cast("B")[:n] = data
                return
            except (TypeError, ValueError):  # formats memoryview cannot cast
                pass
        lay = self.layout
        if lay.contiguous_run:
            src = _np.frombuffer(data, dtype=_np.uint8)
            raw_view(Layout.contiguous(lay.addr + lay.lo, n), self.array)[...] = src
            return
        src = _np.frombuffer(data, dtype=_np.uint8)
        full = raw_view(lay, self.array)
        if lay.lo == 0 and n == full.size:
            full[...] = src.reshape(full.shape)
            return
        # A partial or windowed fill of a strided buffer: write run by run.
        import os

        from . import _cma
        _cma.readv(os.getpid(), lay.window(0, n).segments(),
                   [(src.__array_interface__["data"][0], n)])


# --------------------------------------------------------------------------------------
# Parsing mpi4py-style buffer specs

_c_char = _ctypes.c_char
_addressof = _ctypes.addressof


def address(arr: _np.ndarray) -> int:
    """Address of *arr*'s first byte (cheaper through ctypes for writable arrays)."""
    if arr.flags.writeable and arr.flags.c_contiguous and arr.nbytes:
        return _addressof(_c_char.from_buffer(arr))  # type: ignore[arg-type]  # numpy stubs < 3.12
    return arr.__array_interface__["data"][0]


def bytes_at(addr: int, n: int) -> bytes:
    """A copy of the *n* bytes at address *addr* (memory of a parsed buffer)."""
    return _ctypes.string_at(addr, n)


def quick_buffer(spec, writable: bool) -> Buffer | None:
    """The common case, parsed fast: a whole C-contiguous numpy array; else None."""
    if type(spec) is not _np.ndarray:
        return None
    dtype = spec.dtype
    if dtype.kind in "OMm" or not dtype.isnative:
        return None
    flags = spec.flags
    if not flags.c_contiguous or (writable and not flags.writeable):
        return None
    return Buffer(spec, spec, None, spec.itemsize, True, spec.nbytes)


def _as_array(obj) -> _np.ndarray:
    if isinstance(obj, _np.ndarray):
        return obj
    try:
        mv = memoryview(obj)
    except TypeError:
        return _foreign_array(obj)
    try:
        return _np.asarray(mv)
    except (ValueError, TypeError, NotImplementedError):
        if not mv.contiguous:
            raise BufferError("buffer is neither contiguous nor a numpy-readable view") from None
        return _np.frombuffer(mv.cast("B"), dtype=_np.uint8)


def _foreign_array(obj) -> _np.ndarray:
    """The memory of a DLPack or CUDA-array-interface object, as mpi4py reads it
    (its ``buffer``): through mpi4py itself on the MPI channel, else by the same
    rules in Python. Any device's memory is taken as an address, as mpi4py hands
    it to MPI: a device pointer is only usable where the memory is host-visible."""
    mpi_buffer: Any = getattr(_names_in_use(), "buffer", None)     # whatever the module holds
    if getattr(mpi_buffer, "__module__", "").startswith("mpi4py") and (hasattr(obj, "__dlpack__") or
                                   hasattr(obj, "__cuda_array_interface__")):
        mem = mpi_buffer(obj)
        cai: Any = getattr(obj, "__cuda_array_interface__", None)   # whatever obj holds
        try:
            dtype = _np.dtype(cai["typestr"]) if cai is not None else _dlpack_dtype(obj)
        except TypeError:
            raise BufferError(f"format string {cai['typestr']!r} not understood") from None
        if not dtype.isnative:
            raise BufferError(f"format string {dtype.str!r} with non-native byte order")
        return _np.frombuffer(mem, dtype) if len(mem) else _np.empty(0, dtype)
    if _is_dlpack(obj):
        return _dlpack_array(obj)
    cai = getattr(obj, "__cuda_array_interface__", None)
    if cai is not None:
        return _interface_array(cai, obj)
    raise TypeError("message: expecting buffer or list/tuple")


def _is_dlpack(obj) -> bool:
    """mpi4py takes an object as DLPack when it has both DLPack methods."""
    return hasattr(obj, "__dlpack__") and hasattr(obj, "__dlpack_device__")


#: DLPack device types (``__dlpack_device__()[0]``) mpi4py names.
_kDLCPU, _kDLCUDA = 1, 2
#: Kinds of memory the CPU can read (mpi4py's ``check_cpu_accessible``): 0 for the
#: buffer protocol, then DLPack's CPU, CUDA host, ROCm host and CUDA managed memory.
HOST_KINDS = frozenset((0, _kDLCPU, 3, 11, 13))


def memory_kind(obj) -> int:
    """Where buffer-like *obj*'s memory lives, as mpi4py's ``buffer`` records it:
    0 for the buffer protocol, else a DLPack device type (``kDLCUDA`` for the
    CUDA array interface)."""
    try:
        memoryview(obj).release()
        return 0
    except TypeError:
        pass
    if _is_dlpack(obj):
        return _operator.index(obj.__dlpack_device__()[0])
    return _kDLCUDA if hasattr(obj, "__cuda_array_interface__") else 0


class _Owner:
    """Keeps what lends an array's memory alive for as long as the array is."""

    __slots__ = ("__array_interface__", "lender")

    def __init__(self, lender, interface: dict) -> None:
        self.lender = lender
        self.__array_interface__ = interface


def _view(lender, address: int, shape, dtype: _np.dtype, strides, readonly: bool
          ) -> _np.ndarray:
    """An array over *address* (no copy), keeping *lender* alive while it lives."""
    if not all(shape):
        return _np.empty(shape, dtype)
    return _np.asarray(_Owner(lender, {"version": 3, "shape": tuple(shape),
                                       "typestr": dtype.str, "data": (address, readonly),
                                       "strides": tuple(strides) if strides else None}))


def _dlpack_array(obj) -> _np.ndarray:
    """The memory of a DLPack tensor as a flat array, read and checked as mpi4py's
    ``buffer`` does (its ``Py_GetDLPackBuffer``), with the same exceptions. The
    capsule stays unconsumed and alive with the array: its own destructor
    releases the tensor."""
    device_type, device_id = obj.__dlpack_device__()
    device_type, _ = _operator.index(device_type), _operator.index(device_id)
    if device_type < 0:
        raise OverflowError("can't convert negative value to unsigned int")
    try:    # DLPack 1.0 and later
        if device_type == _kDLCPU:
            capsule = obj.__dlpack__(max_version=(1, 0), copy=False)
        else:
            capsule = obj.__dlpack__(stream=-1, max_version=(1, 0), copy=False)
        name = b"dltensor_versioned"
    except TypeError:   # DLPack 0.x
        capsule = obj.__dlpack__() if device_type == _kDLCPU else obj.__dlpack__(stream=-1)
        name = b"dltensor"
    if not _capsule_valid(capsule, name):
        raise BufferError("dlpack: invalid capsule object")
    pointer = _capsule_pointer(capsule, name)
    readonly = False
    if name == b"dltensor_versioned":
        managed = _DLManagedTensorVersioned.from_address(pointer)
        if managed.version.major < 1:
            raise BufferError("dlpack: unexpected version")
        readonly = bool(managed.flags & _DLPACK_FLAG_BITMASK_READ_ONLY)
        t = managed.dl_tensor
    else:
        t = _DLTensor.from_address(pointer)    # a DLManagedTensor starts with it
    ndim = t.ndim
    if ndim < 0:
        raise BufferError("dlpack: number of dimensions is negative")
    if ndim > 0 and not t.shape:
        raise BufferError("dlpack: shape is NULL")
    shape = t.shape[:ndim] if ndim else []
    if any(n < 0 for n in shape):
        raise BufferError("dlpack: shape item is negative")
    strides = t.strides[:ndim] if t.strides and ndim else None
    if strides is not None and any(s < 0 for s in strides):
        raise BufferError("dlpack: strides item is negative")
    if strides is not None and not _contiguous(shape, strides, 1, "C") and \
            not _contiguous(shape, strides, 1, "F"):
        raise BufferError("dlpack: buffer is not contiguous")
    code, bits, lanes = t.dtype.code, t.dtype.bits, t.dtype.lanes
    nbytes = _prod(shape) * ((bits * lanes + 7) // 8)
    dtype = _dl_dtype(code, bits, lanes)
    return _view(capsule, (t.data or 0) + t.byte_offset, (nbytes // dtype.itemsize,), dtype,
                 None, readonly)


def _dl_dtype(code: int, bits: int, lanes: int) -> _np.dtype:
    """The element type mpi4py gives a DLPack type (its ``dlpack_get_format``):
    bytes for anything without a C type of that size."""
    kind = _DL_KINDS.get(code)
    if lanes != 1:
        kind, bits = ("c", 2 * bits) if kind == "f" and lanes == 2 and bits in (32, 64, 128) \
            else (None, 8)
    sizes = _DL_SIZES.get(kind, ())
    if bits in sizes:
        try:
            return _np.dtype(f"{kind}{bits // 8}")
        except TypeError:   # no numpy type of that size on this platform
            pass
    return _np.dtype(_np.uint8)


#: The sizes in bits of the C types of each kind (none for None, an unknown kind).
_DL_SIZES: dict[str | None, tuple[int, ...]] = {
    "b": (8,), "i": (8, 16, 32, 64), "u": (8, 16, 32, 64), "f": (16, 32, 64, 128),
    "c": (64, 128, 256)}


def _contiguous(shape, strides, itemsize: int, order: str) -> bool:
    """Whether *strides* lay *shape* out contiguously in C or Fortran *order*."""
    dims = range(len(shape)) if order == "F" else range(len(shape) - 1, -1, -1)
    size = itemsize
    for i in dims:
        if shape[i] > 1 and size != strides[i]:
            return False
        size *= shape[i]
    return True


def _interface_array(cai: dict, obj) -> _np.ndarray:
    """The memory a ``__cuda_array_interface__`` describes, taken as host memory,
    checked and read as mpi4py does (its ``asbuffer``): a contiguous run of
    ``size * itemsize`` bytes, typed when the type string maps to a C type."""
    data, typestr, shape = cai["data"], cai["typestr"], cai["shape"]
    strides, descr, mask = cai.get("strides"), cai.get("descr"), cai.get("mask")
    if not isinstance(typestr, str):
        raise TypeError(f"typestr: expected str, got {type(typestr).__name__}")
    if not isinstance(shape, tuple) or (strides is not None and not isinstance(strides, tuple)):
        raise TypeError("shape and strides: expected tuples")
    if descr is not None and not isinstance(descr, list):
        raise TypeError(f"descr: expected list, got {type(descr).__name__}")
    address, readonly = data
    size = 1
    for n in shape:
        size *= _operator.index(n)
    itemsize = int(typestr[2:])
    order = typestr[:1]
    if order in "<>" and order != ("<" if _sys.byteorder == "little" else ">"):
        raise BufferError(f"__cuda_array_interface__: typestr {typestr!r} "
                          "with non-native byte order")
    if order not in "<>|":
        raise BufferError(f"__cuda_array_interface__: typestr {typestr!r} "
                          "with unrecognized byte order")
    if mask is not None:
        raise BufferError("__cuda_array_interface__: cannot handle masked arrays")
    if size < 0:
        raise BufferError(f"__cuda_array_interface__: buffer with negative size "
                          f"(shape:{shape}, size:{size})")
    if strides is not None and not _contiguous(shape, strides, itemsize, "C") and \
            not _contiguous(shape, strides, itemsize, "F"):
        raise BufferError(f"__cuda_array_interface__: buffer is not contiguous "
                          f"(shape:{shape}, strides:{strides}, itemsize:{itemsize})")
    if descr is not None and (len(descr) != 1 or descr[0] != ("", typestr)):
        _warnings.warn("__cuda_array_interface__: ignoring 'descr' key", RuntimeWarning,
                       stacklevel=2)
    kind = typestr[1:2]
    dtype = _np.dtype(_np.uint8)
    if kind in "biufc" and itemsize > 0:
        try:
            dtype = _np.dtype(f"{kind}{itemsize}")
        except TypeError:
            pass
    if dtype.itemsize != itemsize:
        return _view(obj, address or 0, (size * itemsize,), _np.dtype(_np.uint8), None,
                     bool(readonly))
    return _view(obj, address or 0, (size,), dtype, None, bool(readonly))


class _DLDataType(_ctypes.Structure):
    _fields_ = [("code", _ctypes.c_uint8), ("bits", _ctypes.c_uint8),
                ("lanes", _ctypes.c_uint16)]


class _DLTensor(_ctypes.Structure):
    _fields_ = [("data", _ctypes.c_void_p), ("device_type", _ctypes.c_int32),
                ("device_id", _ctypes.c_int32), ("ndim", _ctypes.c_int32),
                ("dtype", _DLDataType), ("shape", _ctypes.POINTER(_ctypes.c_int64)),
                ("strides", _ctypes.POINTER(_ctypes.c_int64)),
                ("byte_offset", _ctypes.c_uint64)]


class _DLPackVersion(_ctypes.Structure):
    _fields_ = [("major", _ctypes.c_uint32), ("minor", _ctypes.c_uint32)]


class _DLManagedTensorVersioned(_ctypes.Structure):
    _fields_ = [("version", _DLPackVersion), ("manager_ctx", _ctypes.c_void_p),
                ("deleter", _ctypes.c_void_p), ("flags", _ctypes.c_uint64),
                ("dl_tensor", _DLTensor)]


_DLPACK_FLAG_BITMASK_READ_ONLY = 1
_capsule_pointer = _ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = _ctypes.c_void_p
_capsule_pointer.argtypes = [_ctypes.py_object, _ctypes.c_char_p]
_capsule_valid = _ctypes.pythonapi.PyCapsule_IsValid
_capsule_valid.restype = _ctypes.c_int
_capsule_valid.argtypes = [_ctypes.py_object, _ctypes.c_char_p]
#: DLPack's type codes (int, uint, float, complex, bool) as numpy's kinds.
_DL_KINDS = {0: "i", 1: "u", 2: "f", 5: "c", 6: "b"}


def _dlpack_dtype(obj) -> _np.dtype:
    """The element type mpi4py gives a DLPack tensor whose memory it has read;
    bytes if it cannot be told."""
    try:
        return _dlpack_array(obj).dtype
    except (TypeError, ValueError, BufferError, OverflowError):
        return _np.dtype(_np.uint8)


#: Per namespace (by id): the namespace, and what `predefined` read from it.
_PREDEFINED: dict[int, tuple[Any, dict[int, tuple[Any, tuple[int, int, int]]]]] = {}


def predefined(names) -> dict[int, tuple[Any, tuple[int, int, int]]]:
    """id -> (datatype, (size, lower bound, extent)) of every predefined datatype
    that namespace *names* holds, read once per process: asking the library costs
    a microsecond a call. The datatypes are kept, so that their ids stay their own."""
    made = _PREDEFINED.get(id(names))
    if made is not None and made[0] is names:
        return made[1]
    table = {}
    datatype, null = getattr(names, "Datatype", None), getattr(names, "DATATYPE_NULL", None)
    for name in dir(names):
        dt = getattr(names, name)
        if type(dt) is datatype and dt != null:
            try:
                if dt.is_predefined:
                    lb, extent = dt.Get_extent()
                    table[id(dt)] = (dt, (dt.Get_size(), lb, extent))
            except Exception:   # noqa: BLE001 - a datatype the library lacks
                pass
    _PREDEFINED[id(names)] = (names, table)
    return table


def _datatype_size(dt) -> tuple[int, int, int]:
    """(size, lower bound, extent) of an mpi4py Datatype or a type code."""
    names = _names_in_use()
    hit = predefined(names).get(id(dt))
    if hit is not None and hit[0] is dt:
        return hit[1]
    if isinstance(dt, str):
        table = getattr(names, "_typedict", None)     # mpi4py's type codes
        if table is not None:
            if dt not in table:
                raise KeyError(f"cannot map {dt!r} to MPI datatype")
            return _datatype_size(table[dt])
        try:
            size = _np.dtype(dt).itemsize
        except TypeError:   # mpi4py's error for a type code it cannot map
            raise KeyError(f"cannot map {dt!r} to MPI datatype") from None
        return size, 0, size
    get_size = getattr(dt, "Get_size", None)
    if get_size is None:    # mpi4py looks anything else up in its type table
        raise KeyError(f"cannot map {dt!r} to MPI datatype")
    if dt == getattr(names, "DATATYPE_NULL", None):
        return 0, 0, 0      # nothing can be counted in it: see the callers' errors
    lb, extent = dt.Get_extent()
    return get_size(), lb, extent


def _is_datatype(x) -> bool:
    """A datatype where mpi4py expects one: an MPI datatype or a type code string."""
    return isinstance(x, str) or hasattr(x, "Get_extent")


def _parse(spec) -> tuple[Any, Any, Any, Any]:
    """Split a spec into (buffer, count, displacement, datatype), each None if not
    given, by mpi4py's rules: ``buf``, ``[buf, datatype]``, ``[buf, count]``,
    ``[buf, (count, displ)]``, ``[buf, count, datatype]``,
    ``[buf, (count, displ), datatype]``, ``[buf, count, displ, datatype]``."""
    if not isinstance(spec, (list, tuple)):
        return spec, None, None, None
    count = displ = datatype = None
    n = len(spec)
    if n == 2:
        buf, count = spec
        if _is_datatype(count):
            count, datatype = None, count
        elif isinstance(count, (tuple, list)):
            count, displ = count
    elif n == 3:
        buf, count, datatype = spec
        if isinstance(count, (tuple, list)):
            count, displ = count
    elif n == 4:
        buf, count, displ, datatype = spec
    else:
        raise ValueError("message: expecting 2 to 4 items")
    return buf, count, displ, datatype


def _index(x) -> int:
    """*x* as mpi4py reads a count or displacement (``__index__``, as ``operator.index``)."""
    if type(x) is int:
        return x
    try:
        return _operator.index(x)
    except TypeError:
        raise TypeError(f"'{type(x).__name__}' object cannot be interpreted as an "
                        "integer") from None


_EMPTY = _np.empty(0, _np.uint8)


def _buffer(spec, writable: bool) -> Buffer:
    obj, count, displ, datatype = _parse(spec)
    if obj is None or (obj is not spec and _is_bottom(obj)):
        # No buffer (BOTTOM): an empty message, which needs an explicit datatype;
        # or the absolute addresses of a derived one.
        if isinstance(spec, (list, tuple)):
            if datatype is None:
                raise TypeError("message: buffer is None, an explicit datatype is required")
            size, lb, extent = _datatype_size(datatype)
            n = 0 if count is None else _index(count)
            if n > 0 and _is_derived(datatype, size, lb, extent):
                return _derived_buffer(spec, n, size, writable)
            if n > 0:
                raise ValueError(f"message: buffer is None but count is {n}")
            return Buffer(None, _EMPTY, None, 1, True, 0)
        raise TypeError("message: expecting buffer or list/tuple")
    arr = _as_array(obj)
    if arr.dtype.kind == "O":
        raise TypeError("message: arrays of Python objects have no raw bytes to send or receive")
    if arr.dtype.kind in "Mm":  # no buffer export for datetimes: move their int64s
        arr = arr.view(_np.int64)
    if writable and not arr.flags.writeable:
        raise BufferError("Object is not writable.")
    contig = arr.flags.c_contiguous or arr.flags.f_contiguous
    if datatype is None:
        if not arr.dtype.isnative:
            raise BufferError(f"format string {arr.dtype.str!r} with non-native byte order")
        esize, lb, extent = arr.itemsize, 0, arr.itemsize
    else:
        esize, lb, extent = _datatype_size(datatype)
        if _is_derived(datatype, esize, lb, extent):
            return _derived_buffer(spec, _derived_count(arr, count, displ, datatype, lb, extent),
                                   esize, writable)
        if extent <= 0:     # nothing can be counted in it: mpi4py's ValueErrors below
            esize = lb = extent = 0
        if lb != 0 or extent != esize:
            raise TypeError("message: datatypes with holes or a lower bound need an MPI "
                            "library; pass a contiguous view instead")
        if not contig and esize != arr.itemsize:
            raise BufferError("message: a strided buffer needs a datatype of its own item size")
    layout = Layout.of_array(arr)
    total = layout.nbytes
    count, offset = _window(total, count, displ, esize)
    if offset + count * esize > total:
        raise ValueError(f"message: count {count} at displacement {offset // max(esize, 1)} "
                         f"exceeds the buffer's {total // max(esize, 1)} entries")
    whole = not offset and count * esize == total
    if not whole:
        layout = layout.window(offset, offset + count * esize)
    return Buffer(obj, arr, layout, esize, whole)


def _is_derived(datatype, size: int, lb: int, extent: int) -> bool:
    """Whether *datatype*'s message is not the buffer's bytes as they lie (holes,
    a lower bound, an order of its own), and an MPI library is there to lay it out."""
    if isinstance(datatype, str):
        return False
    if lb == 0 and extent == size:
        hit = predefined(_names_in_use()).get(id(datatype))
        if (hit is not None and hit[0] is datatype) or _derived.in_order(datatype):
            return False    # (a predefined one without holes: no call into the library)
    return _derived.available(datatype)


def has_derived_datatype(spec) -> bool:
    """Whether *spec* names a datatype whose message the MPI library lays out."""
    if not isinstance(spec, (list, tuple)) or len(spec) < 2:
        return False
    datatype = _parse(spec)[3]
    if datatype is None or isinstance(datatype, str):
        return False
    try:
        size, lb, extent = _datatype_size(datatype)
    except Exception:   # noqa: BLE001 - not a datatype: the full parse raises mpi4py's error
        return False
    return _is_derived(datatype, size, lb, extent)


def _window(total: int, count, displ, extent: int, lb: int = 0) -> tuple[int, int]:
    """(count, byte offset) of a spec's *count* and *displ* (either None) over
    *total* bytes, counted in elements of *extent* bytes: mpi4py's rules and errors."""
    offset = 0
    if displ is not None:
        displ = _index(displ)
        if displ < 0:
            raise ValueError(f"message: negative displacement {displ}")
        if displ > 0:
            if extent <= 0:
                raise ValueError("message: cannot handle displacement, datatype extent "
                                 f"{extent} (lb:{lb}, ub:{lb + extent})")
            if displ * extent > total:
                raise ValueError(f"message: displacement {displ} out of bounds, number of "
                                 f"datatype entries {total // extent}")
            offset = displ * extent
    if count is not None:
        count = _index(count)
        if count < 0:
            raise ValueError(f"message: negative count {count}")
    elif total - offset > 0:
        if extent <= 0:
            raise ValueError(f"message: cannot infer count, datatype extent {extent} "
                             f"(lb:{lb}, ub:{lb + extent})")
        if (total - offset) % extent:
            raise ValueError(f"message: cannot infer count, buffer length {total - offset} "
                             f"is not a multiple of datatype extent {extent} "
                             f"(lb:{lb}, ub:{lb + extent})")
        count = (total - offset) // extent
    else:
        count = 0
    return count, offset


def _derived_count(arr: _np.ndarray, count, displ, datatype, lb: int, extent: int) -> int:
    """The count of a derived datatype's spec over *arr*, by mpi4py's rules, and
    checked to stay inside *arr* (its elements' true extent, from the displacement)."""
    total = arr.nbytes
    count, offset = _window(total, count, displ, extent, lb)
    if count:
        true_lb, true_extent = datatype.Get_true_extent()
        last = (count - 1) * extent     # the last element's shift (negative extents: down)
        lo = offset + true_lb + min(0, last)
        hi = offset + true_lb + true_extent + max(0, last)
        if lo < 0 or hi > total:
            raise ValueError(f"message: {count} elements of a datatype of extent {extent} at "
                             f"displacement {offset // max(extent, 1)} span bytes [{lo}, {hi}) "
                             f"of a buffer of {total}")
    return count


def _derived_buffer(spec, count: int, size: int, writable: bool) -> Buffer:
    """The message of a derived datatype's spec in memory of its own: packed now
    (a send), or to be unpacked once received (a receive, checked now)."""
    nbytes = count * size
    if not writable:
        stream = _derived.pack(spec, nbytes)
        return Buffer(stream, stream, None, size, True, nbytes)
    _derived.check_receivable(spec)
    stream = _np.empty(nbytes, _np.uint8)
    # The receive owns a copy of the datatype: the program may free its own meanwhile.
    return Buffer(stream, stream, None, size, True, nbytes, derived=_derived.kept(spec))


def _is_bottom(obj) -> bool:
    """mpi4py's ``BOTTOM`` (no buffer: the datatype's absolute addresses)."""
    return obj is getattr(_names_in_use(), "BOTTOM", None)


#: Buffers whose memory `quick_spec` takes as bytes.
_BYTE_BUFFERS = frozenset((bytearray, bytes, _mmap.mmap, _array.array))
_PLAIN_SIZES: dict[int, tuple[Any, dict[int, tuple[Any, int]]]] = {}


def plain_sizes(names) -> dict[int, tuple[Any, int]]:
    """id -> (datatype, size) of the predefined datatypes of namespace *names*
    without holes (lower bound 0, extent its size): the ones the simplest spec
    forms may name. Made once per namespace (see `predefined`)."""
    made = _PLAIN_SIZES.get(id(names))
    if made is None or made[0] is not names:
        sizes = {key: (dt, size) for key, (dt, (size, lb, extent)) in predefined(names).items()
                 if lb == 0 and extent == size > 0}
        made = _PLAIN_SIZES[id(names)] = (names, sizes)
    return made[1]


#: (namespace, its `plain_sizes`) of the last spec parsed: the namespace in use.
_LAST_SIZES: list[Any] = [None, {}]


def _sizes_now(names) -> dict[int, tuple[Any, int]]:
    sizes = plain_sizes(names)
    _LAST_SIZES[:] = [names, sizes]
    return sizes


def quick_spec(spec, writable: bool) -> Buffer | None:
    """The simplest forms other than a bare array, parsed fast: a ``bytearray``,
    and ``[obj, datatype]`` or ``[obj, count, datatype]`` of a predefined
    datatype without holes over a C-contiguous numpy array, a ``bytearray``,
    ``bytes``, an ``mmap`` or an ``array.array``. Else, or for anything the
    full parse would refuse, None (`_buffer` decides, with mpi4py's errors)."""
    t = type(spec)
    if t is bytearray:
        return Buffer(spec, _np.frombuffer(spec, _np.uint8), None, 1, True, len(spec))
    if t is not list and t is not tuple:
        return None
    k = len(spec)
    if k == 2:
        obj, datatype = spec
        count = None
    elif k == 3:
        obj, count, datatype = spec
        if type(count) is not int or count < 0:
            return None
    else:
        return None
    names = _names_in_use()
    last = _LAST_SIZES
    hit = (last[1] if last[0] is names else _sizes_now(names)).get(id(datatype))
    if hit is None or hit[0] is not datatype:
        return None
    ot = type(obj)
    if ot is _np.ndarray:
        arr = obj
        flags = arr.flags
        if not flags.c_contiguous or (writable and not flags.writeable) \
                or arr.dtype.kind in "OMm":
            return None
    elif ot in _BYTE_BUFFERS:
        try:
            arr = _np.frombuffer(obj, _np.uint8)
        except (ValueError, TypeError, BufferError):    # a closed mmap, ...
            return None
        if writable and not arr.flags.writeable:
            return None
    else:
        return None
    esize, total = hit[1], arr.nbytes
    if count is None:
        if total % esize:
            return None
        count = total // esize
    nbytes = count * esize
    if nbytes < total:      # the message is the array's first bytes: a view of them
        arr = arr.reshape(-1).view(_np.uint8)[:nbytes]
    elif nbytes > total:
        return None
    return Buffer(obj, arr, None, esize, True, nbytes)


def send_buffer(spec) -> Buffer:
    """Parse a send-side buffer spec (read-only buffers such as bytes are fine)."""
    return quick_buffer(spec, False) or quick_spec(spec, False) or _buffer(spec, writable=False)


def check_recv_buffer(spec) -> None:
    """Raise mpi4py's error now if *spec* cannot be a receive buffer (a persistent
    request's, checked at init)."""
    buf = recv_buffer(spec)
    if buf.derived is not None:
        buf.unpack(None)


def recv_buffer(spec) -> Buffer:
    """Parse a receive-side buffer spec; refuses read-only buffers with ``BufferError``."""
    return quick_buffer(spec, True) or quick_spec(spec, True) or _buffer(spec, writable=True)
