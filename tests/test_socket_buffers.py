"""Buffers as the socket channel reads them, with no MPI library: DLPack and
CUDA-array-interface objects (``cmampi._buffers``), type codes, ``MPI.buffer``
and Alltoallw specs (``cmampi._names``, ``cmampi.socketcomm``).

Serial tests. Where mpi4py is importable, each case is run through mpi4py too
(its ``MPI.buffer`` and ``MPI.Get_address``), and both must agree: the same
bytes, or the same exception type.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from cmampi import _backend, _buffers, _names
from cmampi.socketcomm import _w_spec

try:
    from mpi4py import MPI as _MPI
except ImportError:     # the socket-channel run blocks mpi4py
    _MPI = None


@pytest.fixture
def socket_names(monkeypatch):
    """The socket channel's namespace in use, as under cmampi's launcher."""
    monkeypatch.setattr(_backend, "_names_in_use", _names)
    return _names


@pytest.fixture(params=["cmampi"] + (["mpi4py"] if _MPI is not None else []))
def impl(request):
    """Who reads the buffers: the socket channel's rules, or mpi4py itself."""
    if request.param == "cmampi":
        request.getfixturevalue("socket_names")
    return request.param


# -- a DLPack producer whose header a test can spoil (independent of cmampi's) -------

class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device_type", ctypes.c_int32),
                ("device_id", ctypes.c_int32), ("ndim", ctypes.c_int32),
                ("dtype", DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


class DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p),
                ("deleter", ctypes.c_void_p)]


class DLManagedTensorVersioned(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32),
                ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p),
                ("flags", ctypes.c_uint64), ("dl_tensor", DLTensor)]


_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
_VERSIONED, _LEGACY = b"dltensor_versioned", b"dltensor"   # alive as long as the capsules
_DL_CODES = {"i": 0, "u": 1, "f": 2, "c": 5, "b": 6}


class Tensor:
    """DLPack (version 1, or 0: no ``max_version``) over a contiguous numpy array;
    the capsules stay owned by the tensor, as mpi4py's test tensors'."""

    def __init__(self, arr: np.ndarray, version: int = 1, device: int = 1) -> None:
        self.arr, self.version, self.device = arr, version, device
        self.shape = (ctypes.c_int64 * max(arr.ndim, 1))(*arr.shape)
        self.strides = (ctypes.c_int64 * max(arr.ndim, 1))(
            *(s // arr.itemsize for s in arr.strides))
        self.managed = DLManagedTensorVersioned(major=1) if version else DLManagedTensor()
        t = self.t = self.managed.dl_tensor
        t.data = arr.__array_interface__["data"][0]
        t.device_type, t.ndim = device, arr.ndim
        t.dtype = DLDataType(_DL_CODES[arr.dtype.kind], 8 * arr.itemsize, 1)
        t.shape, t.strides = self.shape, self.strides

    def __dlpack_device__(self):
        return (self.device, 0)

    def __dlpack__(self, stream=None, max_version=None, copy=None):
        if not self.version and max_version is not None:
            raise TypeError("a DLPack 0.x producer")
        assert stream == (None if self.device == 1 else -1)
        name = _VERSIONED if self.version else _LEGACY
        return _capsule_new(ctypes.addressof(self.managed), name, None)


def _address(impl: str, obj) -> int:
    return _MPI.Get_address(obj) if impl == "mpi4py" else _names.Get_address(obj)


def _bytes(impl: str, obj) -> bytes:
    return bytes(_MPI.buffer(obj)) if impl == "mpi4py" else _names.buffer(obj).tobytes()


# -- DLPack --------------------------------------------------------------------------

@pytest.mark.parametrize("version", [1, 0])
@pytest.mark.parametrize("arr", [np.arange(6, dtype="i4"), np.arange(6.0).reshape(2, 3),
                                 np.asfortranarray(np.arange(6, dtype="u2").reshape(2, 3)),
                                 np.array(7, "i8"), np.zeros(0, "f4")], ids=str)
def test_dlpack_memory(impl, version, arr):
    t = Tensor(arr, version)
    assert _bytes(impl, t) == arr.tobytes(order="A")
    if arr.size:
        assert _address(impl, t) == arr.__array_interface__["data"][0]


@pytest.mark.parametrize("code,bits,lanes,want", [
    (1, 16, 1, "u2"), (0, 64, 1, "i8"), (2, 32, 2, "c8"), (2, 64, 2, "c16"), (6, 8, 1, "?"),
    (3, 16, 1, "u1"), (1, 16, 2, "u1"), (4, 16, 1, "u1"), (5, 32, 1, "u1"),
], ids=["uint16", "int64", "float_pairs", "double_pairs", "bool", "opaque", "lanes",
        "bfloat", "complex_half"])
def test_dlpack_element_types_as_mpi4py_formats(code, bits, lanes, want):
    """mpi4py's format: the C type of the DLPack type, else bytes (the whole length)."""
    t = Tensor(np.arange(4, dtype="u4"))
    t.t.dtype = DLDataType(code, bits, lanes)
    got = _buffers._dlpack_array(t)
    assert got.dtype == np.dtype(want)
    assert got.nbytes == 4 * ((bits * lanes + 7) // 8)


def _spoil(t: Tensor, how: str) -> None:
    if how == "version":
        t.managed.major = 0
    elif how == "ndim":
        t.t.ndim = -1
    elif how == "shape":
        t.shape[0] = -1
    elif how == "null_shape":
        t.t.shape = None
    elif how == "strides":
        t.strides[0] = -1
    elif how == "gaps":
        t.strides[1] = 2
    elif how == "capsule":
        t.__dlpack__ = lambda *a, **k: object()
    elif how == "device_none":
        t.__dlpack_device__ = lambda: None
    elif how == "device_short":
        t.__dlpack_device__ = lambda: (1,)
    elif how == "device_type":
        t.__dlpack_device__ = lambda: (None, 0)


@pytest.mark.parametrize("how,error", [
    ("version", BufferError), ("ndim", BufferError), ("shape", BufferError),
    ("null_shape", BufferError), ("strides", BufferError), ("gaps", BufferError),
    ("capsule", BufferError), ("device_none", TypeError), ("device_short", ValueError),
    ("device_type", TypeError),
])
def test_dlpack_refusals_as_mpi4py(impl, how, error):
    t = Tensor(np.arange(6, dtype="i4").reshape(2, 3))
    _spoil(t, how)
    with pytest.raises(error):
        _address(impl, t)


def test_dlpack_accepts_what_mpi4py_does(impl):
    """Unit dimensions with any stride, and a 0-d tensor without shape."""
    t = Tensor(np.arange(3, dtype="i4").reshape(1, 3, 1))
    t.strides[0], t.strides[2] = 7, 0
    _address(impl, t)
    t.t.ndim, t.t.shape, t.t.strides = 0, None, None
    assert _bytes(impl, t) == np.int32(0).tobytes()


def test_dlpack_read_only_tensor_is_no_receive_buffer(socket_names):
    t = Tensor(np.arange(4, dtype="i4"))
    t.managed.flags = 1     # DLPACK_FLAG_BITMASK_READ_ONLY
    assert _buffers.send_buffer(t).readonly
    with pytest.raises(BufferError):
        _buffers.recv_buffer(t)


def test_device_memory_is_an_address_but_not_cpu_accessible(impl):
    """As mpi4py: a device tensor's pointer goes to the transfer as it is, and
    ``MPI.buffer`` refuses to read or write its bytes."""
    arr = np.arange(4, dtype="i4")
    t = Tensor(arr, device=2)       # kDLCUDA
    assert _address(impl, t) == arr.__array_interface__["data"][0]
    buf = (_MPI if impl == "mpi4py" else _names).buffer.frombuffer(t)
    for touch in (lambda: buf.cast("i"), lambda: buf.tobytes(), lambda: buf[0],
                  lambda: buf.__setitem__(0, 1)):
        with pytest.raises(BufferError):
            touch()


def test_device_tensors_are_messages(socket_names):
    arr = np.arange(4, dtype="i4")
    got = _buffers.send_buffer(Tensor(arr, version=0, device=2))
    assert got.tobytes() == arr.tobytes() and got.esize == 4


# -- the CUDA array interface ----------------------------------------------------------

class Interface:
    def __init__(self, arr: np.ndarray) -> None:
        self.arr = arr
        self.__cuda_array_interface__ = {
            "version": 3, "data": (arr.__array_interface__["data"][0], False),
            "typestr": arr.dtype.str, "shape": arr.shape, "strides": None}


def test_cuda_array_interface_is_device_memory(impl):
    arr = np.arange(4, dtype="f8")
    obj = Interface(arr)
    assert _address(impl, obj) == arr.__array_interface__["data"][0]
    with pytest.raises(BufferError):
        (_MPI if impl == "mpi4py" else _names).buffer(obj).cast("B")


# -- type codes and datatypes ----------------------------------------------------------

@pytest.mark.skipif(_MPI is None, reason="needs mpi4py")
def test_type_codes_are_mpi4pys():
    assert set(_names._typedict) == set(_MPI._typedict)
    for code, dt in _MPI._typedict.items():
        assert _names._typedict[code].Get_size() == dt.Get_size(), code
        assert _names.Datatype.fromcode(code) is _names._typedict[code]


@pytest.mark.skipif(_MPI is None, reason="needs mpi4py")
@pytest.mark.parametrize("code", ["SUCCESS", "ERR_TRUNCATE", "ERR_IN_STATUS", "ERR_OTHER"])
def test_exceptions_compare_as_mpi4pys(code):
    """The socket namespace's MPI.Exception compares, hashes, converts and
    tests true as mpi4py's does (each against its own library's codes)."""
    for names in (_MPI, _names):
        ierr = getattr(names, code)
        exc, success = names.Exception(ierr), names.Exception(names.SUCCESS)
        other = names.Exception(names.ERR_LASTCODE)
        assert exc == ierr and exc == names.Exception(ierr)
        assert (exc != ierr) is False
        assert hash(exc) == hash(ierr) and int(exc) == ierr and exc.Get_error_code() == ierr
        assert repr(exc) == f"MPI.Exception({ierr})"
        assert str(exc) == names.Get_error_string(ierr)
        assert names.Get_error_class(ierr) == ierr
        assert success <= exc <= other and exc >= success
        assert other > exc and (exc > success) == (ierr != 0)
        assert bool(exc) == (ierr != names.SUCCESS)
        assert exc != "text" and (exc == None) is False  # noqa: E711 (the __eq__ under test)
        assert names.Exception(names.SUCCESS - 1) == names.ERR_UNKNOWN


def _namespaces():
    return [_names] if _MPI is None else [_MPI, _names]


@pytest.mark.parametrize("names", _namespaces(), ids=lambda n: n.__name__)
def test_added_error_classes_codes_and_strings(names):
    """Add_error_class/code/string and their Remove_ forms: numbers above
    ERR_LASTCODE, a code's class, strings, and removal in the reverse order
    (a library without the Remove_ forms raises NotImplementedError)."""
    errclass = names.Add_error_class()
    assert errclass > names.ERR_LASTCODE
    if not (names is _MPI and "Open MPI" in names.Get_library_version()):
        assert names.Get_error_class(errclass) == errclass    # Open MPI's: ERR_UNKNOWN
    assert names.Get_error_string(errclass) == ""
    code = names.Add_error_code(errclass)
    assert code not in (errclass, names.ERR_LASTCODE)
    assert names.Get_error_class(code) == errclass
    assert names.Exception(code).Get_error_class() == errclass
    names.Add_error_string(code, "a code of ours")
    assert names.Get_error_string(code) == "a code of ours"
    assert str(names.Exception(code)) == "a code of ours"
    other = names.Add_error_code(names.ERR_OTHER)
    assert names.Get_error_class(other) == names.ERR_OTHER
    with pytest.raises(names.Exception):
        names.Add_error_code(names.ERR_LASTCODE + 12345)
    try:
        names.Remove_error_class(errclass)      # it has a code, which has a string
    except NotImplementedError:
        return
    except names.Exception:
        pass
    else:
        raise AssertionError("a class with codes was removed")
    with pytest.raises(names.Exception):
        names.Remove_error_code(code)
    names.Remove_error_string(code)
    assert names.Get_error_string(code) == ""
    names.Remove_error_code(code)
    with pytest.raises(names.Exception):
        names.Remove_error_code(code)
    names.Remove_error_code(other)
    names.Remove_error_class(errclass)
    with pytest.raises(names.Exception):
        names.Remove_error_class(errclass)
    for remove in (names.Remove_error_class, names.Remove_error_code,
                   names.Remove_error_string):
        with pytest.raises(names.Exception):
            remove(names.ERR_OTHER)


def test_an_added_error_string_is_cut_as_mpichs():
    errclass = _names.Add_error_class()
    _names.Add_error_string(errclass, "x" * 2000)
    assert len(_names.Get_error_string(errclass)) == _names.MAX_ERROR_STRING - 1
    with pytest.raises(TypeError):
        _names.Add_error_string(errclass, 5)
    _names.Remove_error_string(errclass)
    _names.Remove_error_class(errclass)


def test_codes_join_every_predefined_class_and_strings_are_read_late():
    """A code may be added to any of MPI's own classes; an exception made
    before its code's string was added prints the string (as mpi4py's);
    strings may be bytes; a number above ERR_LASTCODE never added is no code."""
    classes = [v for k, v in vars(_names).items()
               if k.startswith("ERR_") and k != "ERR_LASTCODE"]
    assert _names.ERR_TOPOLOGY in classes and _names.ERR_DIMS in classes
    for errclass in classes:
        code = _names.Add_error_code(errclass)
        assert _names.Get_error_class(code) == errclass
        _names.Remove_error_code(code)
    errclass = _names.Add_error_class()
    exc = _names.Exception(errclass)
    _names.Add_error_string(errclass, b"added later")
    assert str(exc) == exc.Get_error_string() == "added later"
    _names.Remove_error_string(errclass)
    _names.Remove_error_class(errclass)
    with pytest.raises(_names.Exception) as info:
        _names.Get_error_class(_names.ERR_LASTCODE + (1 << 20))
    assert info.value.Get_error_class() == _names.ERR_ARG
    assert _names.Get_error_string(_names.ERR_TOPOLOGY) != f"MPI error {_names.ERR_TOPOLOGY}"


@pytest.mark.parametrize("spec", [lambda b: [b, 0, "\0"], lambda b: [b, "i4<"],
                                  lambda b: [b, (0, 0), "float32"]])
def test_unknown_type_codes_raise_key_error(socket_names, spec):
    with pytest.raises(KeyError):
        _buffers.send_buffer(spec(bytearray(8)))


def test_derived_datatypes_are_refused_loudly():
    with pytest.raises(NotImplementedError):
        _names.INT.Create_resized(0, -4)
    with pytest.raises(NotImplementedError):
        _names.Datatype.Create_struct([1], [0], [_names.INT])


# -- Alltoallw specs -------------------------------------------------------------------

def _w(spec, writable=False):
    return _w_spec(spec, 1, writable)


def test_alltoallw_spec_forms():
    buf = bytearray(b"abcd")
    for spec in ([buf, [4], [0], [_names.CHAR]], [buf, ([4], [0]), [_names.CHAR]]):
        mem, counts, displs, types = _w(spec)
        assert (bytes(mem), counts, displs, types) == (b"abcd", [4], [0], [_names.CHAR])
    for spec in ([buf, None, None, [_names.INT]], [buf, [_names.INT]]):
        assert _w(spec)[1:3] == ([1], [0])     # one item of each datatype, at 0
    assert _w([None, [0], [0], [_names.BYTE]])[0].size == 0     # BOTTOM, nothing moved


@pytest.mark.parametrize("spec,error", [
    (lambda b: [b], ValueError),
    (lambda b: [b, [0], [0], [_names.BYTE], None], ValueError),
    (lambda b: [None, None, [0], [_names.BYTE]], ValueError),
    (lambda b: [None, [0], None, [_names.BYTE]], ValueError),
    (lambda b: [b, [0, 0], [0], [_names.BYTE]], ValueError),
    (lambda b: [b, [5], [0], [_names.BYTE]], ValueError),
    (lambda b: [b, [0], None, [_names.BYTE]], TypeError),
    (lambda b: [b, [1.0], [0], [_names.BYTE]], TypeError),
    (lambda b: [b, [1], [0], ["B"]], TypeError),
    (lambda b: [[1, 2], [1], [0], [_names.BYTE]], TypeError),
    (lambda b: [bytes(b), [1], [0], [_names.BYTE]], BufferError),
    (lambda b: [None, [1], [4096], [_names.BYTE]], NotImplementedError),
], ids=["one_item", "five_items", "bottom_counts", "bottom_displs", "counts", "bounds",
        "displs_none", "float_count", "type_code", "list", "read_only", "bottom_addresses"])
def test_alltoallw_bad_specs(spec, error):
    with pytest.raises(error):
        _w(spec(bytearray(4)), writable=True)
