"""mpi4py.MPI's names for jobs without MPI: constants, datatypes, Status, Exception, ops."""

from __future__ import annotations

import array as _array
import functools as _functools
import operator as _operator
import pickle as _pickle
import socket as _socket
import threading as _threading
import time as _time
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as _np

from ._errorcodes import ErrorCodes as _ErrorCodes
from ._errorcodes import InUse as _InUse
from ._errorcodes import NotAdded as _NotAdded
from ._userpickle import configure as _configure_pickle

# Constants, with MPICH's values so programs printing them see familiar numbers.
ANY_SOURCE = -2
ANY_TAG = -1
PROC_NULL = -1
ROOT = -3
UNDEFINED = -32766
TAG_UB = 2**31 - 1
COMM_TYPE_SHARED = 1
APPNUM = 0x64400001
KEYVAL_INVALID = 0x24000000
LASTUSEDCODE = 0x6440000B
MAX_ERROR_STRING = 512
THREAD_SINGLE, THREAD_FUNNELED, THREAD_SERIALIZED, THREAD_MULTIPLE = 0, 1, 2, 3
IDENT, CONGRUENT, SIMILAR, UNEQUAL = 0, 1, 2, 3

SUCCESS = 0
ERR_BUFFER = 1
ERR_COUNT = 2
ERR_TYPE = 3
ERR_TAG = 4
ERR_COMM = 5
ERR_RANK = 6
ERR_ROOT = 7
ERR_GROUP = 8
ERR_OP = 9
ERR_TOPOLOGY = 10
ERR_DIMS = 11
ERR_ARG = 12
ERR_UNKNOWN = 13
ERR_TRUNCATE = 14
ERR_OTHER = 15
ERR_INTERN = 16
ERR_PENDING = 17
ERR_IN_STATUS = 18
ERR_REQUEST = 19
ERR_PROC_FAILED = 54
ERR_LASTCODE = 0x3FFFFFFF

_ERROR_STRINGS = {
    SUCCESS: "No MPI error", ERR_BUFFER: "Invalid buffer pointer", ERR_COUNT: "Invalid count",
    ERR_TYPE: "Invalid datatype", ERR_TAG: "Invalid tag", ERR_COMM: "Invalid communicator",
    ERR_RANK: "Invalid rank", ERR_ROOT: "Invalid root", ERR_GROUP: "Invalid group",
    ERR_OP: "Invalid MPI_Op", ERR_ARG: "Invalid argument", ERR_UNKNOWN: "Unknown error",
    ERR_TRUNCATE: "Message truncated", ERR_OTHER: "Other MPI error",
    ERR_INTERN: "Internal MPI error", ERR_PENDING: "Pending request",
    ERR_IN_STATUS: "Error code is in status", ERR_REQUEST: "Invalid MPI_Request",
    ERR_PROC_FAILED: "Process failed", ERR_TOPOLOGY: "Invalid topology",
    ERR_DIMS: "Invalid dimension argument",
}
#: MPI's own error classes (ERR_LASTCODE names a bound, not a class).
_PREDEFINED = frozenset(v for k, v in globals().items()
                        if k.startswith("ERR_") and k != "ERR_LASTCODE") | {SUCCESS}
#: The error classes, codes and strings the program adds.
_ADDED = _ErrorCodes(ERR_LASTCODE)


def _error_string(code: int) -> str:
    text = _ERROR_STRINGS.get(code)
    if text is None:
        text = _ADDED.string_of(code)
    return f"MPI error {code}" if text is None else text


@_functools.total_ordering
class Exception(RuntimeError):
    """An MPI error, with its error class (``ERR_TRUNCATE``, ...). As mpi4py's,
    it compares, hashes and converts as its error code (a negative code is
    ``ERR_UNKNOWN``), and is false for ``SUCCESS``."""

    def __init__(self, ierr: int = SUCCESS, message: str | None = None) -> None:
        self.ierr = ierr if ierr >= SUCCESS else ERR_UNKNOWN
        self._message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        # Read when asked: a program may add the code's string later.
        text = _error_string(self.ierr)
        return f"{text}: {self._message}" if self._message else text

    @staticmethod
    def _code(other: object) -> int | None:
        if isinstance(other, Exception):
            return other.ierr
        if isinstance(other, int):
            return other
        return None

    def __eq__(self, other: object) -> bool:
        code = self._code(other)
        return NotImplemented if code is None else self.ierr == code

    def __lt__(self, other: object) -> bool:
        code = self._code(other)
        return NotImplemented if code is None else self.ierr < code

    def __hash__(self) -> int:
        return hash(self.ierr)

    def __bool__(self) -> bool:
        return self.ierr != SUCCESS

    def __repr__(self) -> str:
        return f"MPI.Exception({self.ierr})"

    def __int__(self) -> int:
        return self.ierr

    def Get_error_code(self) -> int:
        return self.ierr

    def Get_error_class(self) -> int:
        return Get_error_class(self.ierr)

    def Get_error_string(self) -> str:
        return _error_string(self.ierr)

    error_code = property(Get_error_code)
    error_class = property(Get_error_class)
    error_string = property(Get_error_string)


def Get_error_string(errorcode: int) -> str:
    """Return the error string for an error class or error code."""
    return _error_string(errorcode)


def Get_error_class(errorcode: int) -> int:
    """Convert an error code into an error class (a predefined code is its own class)."""
    errorclass = _ADDED.class_of(errorcode)
    if errorclass is not None:
        return errorclass
    if errorcode > ERR_LASTCODE:
        raise Exception(ERR_ARG, f"{errorcode} is no error code")
    return errorcode


def Add_error_class() -> int:
    """Add an error class to the known error classes."""
    return _ADDED.add_class()


def Add_error_code(errorclass: int) -> int:
    """Add an error code to an error class."""
    try:
        return _ADDED.add_code(errorclass, errorclass in _PREDEFINED)
    except _NotAdded:
        raise Exception(ERR_ARG, f"{errorclass} is not an error class") from None


def Add_error_string(errorcode: int, string: str) -> None:
    """Associate an error string with an error class or error code the program
    added (as MPICH, longer strings are cut to ``MAX_ERROR_STRING - 1``)."""
    if isinstance(string, (bytes, bytearray)):
        string = bytes(string).decode()
    if not isinstance(string, str):
        raise TypeError(f"expected str, {type(string).__name__} found")
    _change_added(_ADDED.set_string, errorcode, string[: MAX_ERROR_STRING - 1])


def Remove_error_class(errorclass: int) -> None:
    """Remove an error class the program added, once it has no codes or string."""
    _change_added(_ADDED.remove_class, errorclass)


def Remove_error_code(errorcode: int) -> None:
    """Remove an error code the program added, once it has no string."""
    _change_added(_ADDED.remove_code, errorcode)


def Remove_error_string(errorcode: int) -> None:
    """Remove the string of an error class or code the program added."""
    _change_added(_ADDED.remove_string, errorcode)


def _change_added(change: Callable[..., None], errorcode: int, *args: Any) -> None:
    try:
        change(errorcode, *args)
    except _NotAdded:
        raise Exception(ERR_ARG, f"{errorcode} was not added by the program") from None
    except _InUse:
        raise Exception(ERR_OTHER, f"{errorcode} still has a string or error codes") from None


class Datatype:
    """A predefined datatype: a name and a numpy type code."""

    __slots__ = ("_size", "code", "name")

    #: Set below the class (mpi4py's ``Datatype.fromcode``).
    fromcode: ClassVar[Callable[[str], Datatype]]

    def __init__(self, name: str, code: str) -> None:
        self.name = name
        self.code = code
        self._size = _np.dtype(code).itemsize if code else 0

    def Get_size(self) -> int:
        return self._size

    def Get_extent(self):
        return 0, self._size

    def tocode(self) -> str:
        return self.code

    @property
    def size(self) -> int:
        return self._size

    @property
    def extent(self) -> int:
        return self._size

    @property
    def is_predefined(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"<cmampi.MPI.Datatype {self.name}>"


_DATATYPES = {
    "BYTE": "B", "PACKED": "B", "CHAR": "c", "WCHAR": "U1", "SIGNED_CHAR": "b",
    "UNSIGNED_CHAR": "B", "SHORT": "h", "UNSIGNED_SHORT": "H", "INT": "i", "UNSIGNED": "I",
    "UNSIGNED_INT": "I", "LONG": "l", "UNSIGNED_LONG": "L", "LONG_LONG": "q",
    "UNSIGNED_LONG_LONG": "Q", "FLOAT": "f", "DOUBLE": "d", "LONG_DOUBLE": "g",
    "C_BOOL": "?", "BOOL": "?", "INT8_T": "i1", "INT16_T": "i2", "INT32_T": "i4",
    "INT64_T": "i8", "UINT8_T": "u1", "UINT16_T": "u2", "UINT32_T": "u4", "UINT64_T": "u8",
    "C_COMPLEX": "F", "C_FLOAT_COMPLEX": "F", "C_DOUBLE_COMPLEX": "D",
    "C_LONG_DOUBLE_COMPLEX": "G", "COMPLEX": "F", "DOUBLE_COMPLEX": "D", "AINT": "q",
    "OFFSET": "q", "COUNT": "q", "FLOAT16": "f2",
}
for _name, _code in _DATATYPES.items():
    globals()[_name] = Datatype(_name, _code)
DATATYPE_NULL = Datatype("DATATYPE_NULL", "")
_BYTE: Datatype = globals()["BYTE"]
# The datatype mpi4py would pick for a numpy dtype (its type map), for user ops.
_BY_DTYPE: dict[_np.dtype, Datatype] = {}
for _name in ("DOUBLE", "FLOAT", "LONG", "INT", "SHORT", "SIGNED_CHAR", "UNSIGNED_LONG",
              "UNSIGNED", "UNSIGNED_SHORT", "UNSIGNED_CHAR", "C_BOOL", "LONG_DOUBLE",
              "C_FLOAT_COMPLEX", "C_DOUBLE_COMPLEX", "C_LONG_DOUBLE_COMPLEX", "FLOAT16"):
    _BY_DTYPE.setdefault(_np.dtype(_DATATYPES[_name]), globals()[_name])


# mpi4py's type codes (``Datatype.fromcode``), to the datatype each names.
_BY_CODE = {
    "c": "CHAR", "b": "SIGNED_CHAR", "h": "SHORT", "i": "INT", "l": "LONG", "q": "LONG_LONG",
    "B": "UNSIGNED_CHAR", "H": "UNSIGNED_SHORT", "I": "UNSIGNED", "L": "UNSIGNED_LONG",
    "Q": "UNSIGNED_LONG_LONG", "f": "FLOAT", "d": "DOUBLE", "g": "LONG_DOUBLE",
    "?": "C_BOOL", "F": "C_FLOAT_COMPLEX", "D": "C_DOUBLE_COMPLEX",
    "G": "C_LONG_DOUBLE_COMPLEX", "e": "FLOAT16", "i1": "INT8_T", "i2": "INT16_T",
    "i4": "INT32_T", "i8": "INT64_T", "u1": "UINT8_T", "u2": "UINT16_T", "u4": "UINT32_T",
    "u8": "UINT64_T", "f2": "FLOAT16", "f4": "FLOAT", "f8": "DOUBLE", "b1": "C_BOOL",
    "c8": "C_FLOAT_COMPLEX", "c16": "C_DOUBLE_COMPLEX",
    "f16": "LONG_DOUBLE", "c32": "C_LONG_DOUBLE_COMPLEX", "Zf": "C_FLOAT_COMPLEX",
    "Zd": "C_DOUBLE_COMPLEX", "Zg": "C_LONG_DOUBLE_COMPLEX", "p": "AINT", "n": "COUNT",
    "N": "UNSIGNED_LONG", "P": "UNSIGNED_LONG", "M": "INT64_T", "M8": "INT64_T",
    "m": "INT64_T", "m8": "INT64_T", "a": "CHAR", "s": "CHAR", "S": "CHAR", "S1": "CHAR",
    "1s": "CHAR", "u": "UINT16_T", "1u": "UINT16_T", "w": "WCHAR", "U": "WCHAR",
    "U1": "WCHAR", "1w": "WCHAR",
}


def _fromcode(code: str) -> Datatype:
    """The predefined datatype of a type code (``'i'``, ``'f8'``, ...)."""
    name = _BY_CODE.get(code) if isinstance(code, str) else None
    if name is None:
        raise ValueError(f"cannot map code {code!r} to MPI datatype")
    return globals()[name]


Datatype.fromcode = staticmethod(_fromcode)


def _derived_refused(name: str):
    def refuse(*args, **kwargs):
        raise NotImplementedError(f"Datatype.{name}: derived datatypes need an MPI library "
                                  "(the socket channel has the predefined ones)")

    refuse.__name__ = name
    return staticmethod(refuse)


# Refused loudly, as mpi4py refuses what its MPI library lacks: programs (and
# mpi4py's tests) that can do without them catch NotImplementedError.
for _name in ("Create_contiguous", "Create_vector", "Create_hvector", "Create_indexed",
              "Create_hindexed", "Create_indexed_block", "Create_hindexed_block",
              "Create_subarray", "Create_darray", "Create_resized", "Create_struct"):
    setattr(Datatype, _name, _derived_refused(_name))
#: mpi4py's table of the type codes a message spec may name (``[buf, "i"]``):
#: a code not in it is a ``KeyError``, as in mpi4py.
_typedict = {_code: globals()[_name] for _code, _name in _BY_CODE.items()}

def datatype_of(dtype) -> Datatype:
    """The predefined datatype of numpy *dtype* (``DATATYPE_NULL`` if none)."""
    return _BY_DTYPE.get(_np.dtype(dtype), DATATYPE_NULL)


class Status:
    """The source, tag, size and error of a received message.

    The fields live in an array laid out as MPICH's ``MPI_Status`` (count low
    word, count high bits and the cancelled flag, source, tag, error), which
    ``tomemory`` exposes, as mpi4py's does.
    """

    __slots__ = ("_mem",)

    def __init__(self, status: Status | None = None) -> None:
        if status is not None and not isinstance(status, Status):
            raise TypeError(f"expected a Status, not {type(status).__name__}")
        self._mem: _array.array[int] = _array.array("i", [0, 0, ANY_SOURCE, ANY_TAG, SUCCESS]
                                                    if status is None else status._mem)

    source = property(lambda self: self._mem[2], lambda self, v: self._set(2, v))
    tag = property(lambda self: self._mem[3], lambda self, v: self._set(3, v))
    error = property(lambda self: self._mem[4], lambda self, v: self._set(4, v))

    def _set(self, field: int, value: int) -> None:
        self._mem[field] = _operator.index(value)

    @property
    def count(self) -> int:
        """The message's size in bytes."""
        return (self._mem[0] & 0xFFFFFFFF) | ((self._mem[1] >> 1) << 32)

    @count.setter
    def count(self, n: int) -> None:
        n = _operator.index(n)
        low = n & 0xFFFFFFFF
        self._mem[0] = low - (1 << 32) if low >= 1 << 31 else low
        self._mem[1] = ((n >> 32) << 1) | (self._mem[1] & 1)

    @property
    def cancelled(self) -> bool:
        return bool(self._mem[1] & 1)

    @cancelled.setter
    def cancelled(self, flag: bool) -> None:
        self._mem[1] = (self._mem[1] & ~1) | bool(flag)

    def Get_source(self) -> int:
        return self.source

    def Set_source(self, source: int) -> None:
        self.source = source

    def Get_tag(self) -> int:
        return self.tag

    def Set_tag(self, tag: int) -> None:
        self.tag = tag

    def Get_error(self) -> int:
        return self.error

    def Set_error(self, error: int) -> None:
        self.error = error

    def Get_count(self, datatype: Datatype | None = None) -> int:
        size = (datatype or _BYTE).Get_size()
        if size == 0:
            return 0 if self.count == 0 else UNDEFINED
        q, r = divmod(self.count, size)
        return UNDEFINED if r else q

    Get_elements = Get_count

    def Set_elements(self, datatype: Datatype, count: int) -> None:
        self.count = count * (datatype or _BYTE).Get_size()

    def Is_cancelled(self) -> bool:
        return self.cancelled

    def Set_cancelled(self, flag: bool) -> None:
        self.cancelled = flag

    def tomemory(self) -> memoryview:
        """The status's fields as writable memory (``MPI_Status``'s layout)."""
        return memoryview(self._mem)

    def __reduce__(self):
        return (_status_from, (list(self._mem),))

    def __repr__(self) -> str:
        return f"<cmampi.MPI.Status source={self.source} tag={self.tag} count={self.count}>"


def _status_from(fields) -> Status:
    status = Status()
    status._mem[:] = _array.array("i", fields)
    return status


#: How many user ops may exist at once: mpi4py's limit (its C trampolines), kept so
#: programs see the same ``RuntimeError`` on either channel.
_MAX_USER_OPS = 32
#: The functions of live user ops, by handle.
_USER_OPS: dict[int, Callable[[Any, Any, Any], Any]] = {}
_OP_NULL_HANDLE, _USER_OP_BASE = 0x18000000, -0x68000000   # MPICH's (0x98000000 signed)


class Op:
    """A reduction operation: a predefined one, or a user function via ``Op.Create``.

    Calling an op on two values combines them as mpi4py's lowercase reductions
    do (``SUM`` of lists concatenates, of arrays adds); a user op is called as
    ``function(x, y, None)``. Ops compare equal when they name the same
    operation (``Op(SUM) == SUM``), as handles do in mpi4py.
    """

    __slots__ = ("_owned", "commute", "handle", "name", "pyfunc", "userfn")

    name: str
    #: A predefined op's combiner of two values (None for OP_NULL and user ops).
    pyfunc: Callable[[Any, Any], Any] | None
    commute: bool
    #: A user op's ``function(inbuf, inoutbuf, datatype)`` (None for a predefined op).
    userfn: Callable[[Any, Any, Any], Any] | None
    handle: int
    #: Made by ``Create`` (so it pickles), not looked up by ``fromint``.
    _owned: bool

    def __init__(self, op: Op | None = None) -> None:
        if op is None:
            op = OP_NULL
        elif not isinstance(op, Op):
            raise TypeError(f"expected an Op, not {type(op).__name__}")
        self._copy(op)

    def _copy(self, op: Op) -> None:
        self.name, self.pyfunc, self.commute = op.name, op.pyfunc, op.commute
        self.userfn, self.handle, self._owned = op.userfn, op.handle, op._owned

    @classmethod
    def _predefined(cls, name: str, handle: int, pyfunc, commute: bool = True) -> Op:
        self = cls.__new__(cls)
        self.name, self.pyfunc, self.commute = name, pyfunc, commute
        self.userfn, self.handle, self._owned = None, handle, False
        return self

    @classmethod
    def Create(cls, function: Callable, commute: bool = False) -> Op:
        """Create a user-defined operation: ``function(inbuf, inoutbuf, datatype)``
        updates *inoutbuf* (datatype None for Python objects)."""
        if not callable(function):
            raise TypeError("expecting a callable")
        if len(_USER_OPS) >= _MAX_USER_OPS:
            raise RuntimeError("cannot create too many user-defined reduction operations")
        handle = next(_USER_OP_BASE + i for i in range(_MAX_USER_OPS)
                      if _USER_OP_BASE + i not in _USER_OPS)
        _USER_OPS[handle] = function
        self = cls.__new__(cls)
        self.name, self.pyfunc, self.commute = "user", None, bool(commute)
        self.userfn, self.handle, self._owned = function, handle, True
        return self

    def Free(self) -> None:
        """Free a user-defined operation (a predefined one cannot be freed)."""
        if self.userfn is None:
            raise Exception(ERR_OP, "Cannot free permanent MPI_Op")
        _USER_OPS.pop(self.handle, None)
        self._copy(OP_NULL)

    def Is_commutative(self) -> bool:
        """Query reduction operations for their commutativity."""
        return self.commute

    is_commutative = property(Is_commutative)

    @property
    def is_predefined(self) -> bool:
        """Is a predefined operation."""
        return self.userfn is None

    def Reduce_local(self, inbuf, inoutbuf) -> None:
        """Apply a reduction operation to local data: ``inoutbuf = inbuf op inoutbuf``."""
        from . import coll as _coll
        from . import ops as _ops
        from ._buffers import recv_buffer, send_buffer

        nin, nout = send_buffer(inbuf).layout.nbytes, recv_buffer(inoutbuf).layout.nbytes
        if nin != nout:
            raise ValueError(f"mismatch in inbuf size {nin} and inoutbuf size {nout}")
        x, inout = _coll.flat(inbuf, False), _coll.flat(inoutbuf, True)
        if self.userfn is not None:
            datatype = inoutbuf[-1] if isinstance(inoutbuf, (list, tuple)) and \
                isinstance(inoutbuf[-1], Datatype) else datatype_of(inout.array.dtype)
            self.userfn(x.array, inout.array, datatype)
        elif not self:
            raise Exception(ERR_OP)
        else:
            _ops.combiner(self, inout.array.dtype)(x.array, inout.array)
        inout.finish()

    def toint(self) -> int:
        """Translate object to integer."""
        return self.handle

    py2f = toint

    @classmethod
    def fromint(cls, arg: int, /) -> Op:
        """Translate integer to object."""
        arg = _operator.index(arg)
        for op in _PREDEFINED_OPS:
            if op.handle == arg:
                return cls(op)
        function = _USER_OPS.get(arg)
        if function is None:
            raise Exception(ERR_OP)
        self = cls.__new__(cls)
        self.name, self.pyfunc, self.commute = "user", None, True
        self.userfn, self.handle, self._owned = function, arg, False
        return self

    f2py = fromint

    def __call__(self, x, y):
        if self.pyfunc is not None:
            return self.pyfunc(x, y)
        if self.userfn is not None:
            return self.userfn(x, y, None)
        raise ValueError("cannot call user-defined operation")

    def __bool__(self) -> bool:
        return self.handle != _OP_NULL_HANDLE

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Op):
            return NotImplemented
        return self.handle == other.handle

    def __ne__(self, other: object) -> bool:
        if not isinstance(other, Op):
            return NotImplemented
        return self.handle != other.handle

    __hash__ = object.__hash__

    def __reduce__(self):
        if self.userfn is None:
            if globals().get(self.name) is self:
                return self.name
            return (Op, (globals()[self.name],))
        if not self._owned:     # a handle from fromint: its function is not its own
            raise ValueError("cannot pickle user-defined reduction operation")
        return (Op.Create, (self.userfn, self.commute))

    def __repr__(self) -> str:
        return f"<cmampi.MPI.Op {self.name}>"


def _max(x, y):
    if isinstance(x, _np.ndarray):
        return _np.maximum(x, y)
    return y if y > x else x


def _min(x, y):
    if isinstance(x, _np.ndarray):
        return _np.minimum(x, y)
    return y if y < x else x


def _maxloc(x, y):
    (u, i), (v, j) = x, y
    if u > v:
        return u, i
    if v > u or j < i:
        return v, j
    return u, i


def _minloc(x, y):
    (u, i), (v, j) = x, y
    if u < v:
        return u, i
    if v < u or j < i:
        return v, j
    return u, i


OP_NULL = Op._predefined("OP_NULL", _OP_NULL_HANDLE, None)
MAX = Op._predefined("MAX", 0x58000001, _max)
MIN = Op._predefined("MIN", 0x58000002, _min)
SUM = Op._predefined("SUM", 0x58000003, _operator.add)
PROD = Op._predefined("PROD", 0x58000004, _operator.mul)
LAND = Op._predefined("LAND", 0x58000005, lambda x, y: x and y)
BAND = Op._predefined("BAND", 0x58000006, _operator.and_)
LOR = Op._predefined("LOR", 0x58000007, lambda x, y: x or y)
BOR = Op._predefined("BOR", 0x58000008, _operator.or_)
LXOR = Op._predefined("LXOR", 0x58000009, lambda x, y: (x and not y) or (y and not x))
BXOR = Op._predefined("BXOR", 0x5800000a, _operator.xor)
MINLOC = Op._predefined("MINLOC", 0x5800000b, _minloc)
MAXLOC = Op._predefined("MAXLOC", 0x5800000c, _maxloc)
REPLACE = Op._predefined("REPLACE", 0x5800000d, lambda x, y: y, False)
NO_OP = Op._predefined("NO_OP", 0x5800000e, lambda x, y: x, False)
_PREDEFINED_OPS = (OP_NULL, MAX, MIN, SUM, PROD, LAND, BAND, LOR, BOR, LXOR, BXOR,
                   MINLOC, MAXLOC, REPLACE, NO_OP)


class _InPlace:
    def __repr__(self) -> str:
        return "IN_PLACE"


IN_PLACE = _InPlace()
BOTTOM = None
COMM_NULL = None


BSEND_OVERHEAD = 96     # MPICH's: the room Attach_buffer's users add per message
GRAPH, CART, DIST_GRAPH = 1, 2, 3


class _Weights:
    """``UNWEIGHTED`` and ``WEIGHTS_EMPTY``: markers, told apart by identity (as mpi4py's)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<cmampi.MPI.{self.name}>"


UNWEIGHTED = _Weights("UNWEIGHTED")
WEIGHTS_EMPTY = _Weights("WEIGHTS_EMPTY")


def _bytes_of(obj) -> _np.ndarray:
    """The memory of buffer-like *obj* as a flat array of bytes (a view)."""
    from ._buffers import _as_array

    arr = _as_array(obj)
    if not (arr.flags.c_contiguous or arr.flags.f_contiguous):
        raise BufferError("buffer is not contiguous")
    return arr.reshape(-1, order="A").view(_np.uint8)


class buffer(_np.ndarray):
    """Memory as a flat array of bytes, as mpi4py's ``MPI.buffer``: what
    ``Alloc_mem`` returns, or a view of any buffer-like object (DLPack and
    CUDA-array-interface objects included; as in mpi4py, the bytes of memory on
    a device that is not CPU-accessible cannot be read or written through it)."""

    def __new__(cls, buf=None) -> buffer:
        from ._buffers import memory_kind

        mem = _np.empty(0, _np.uint8) if buf is None else _bytes_of(buf)
        self = mem.view(cls)
        self._obj = buf
        self._kind = 0 if buf is None else memory_kind(buf)
        return self

    def __array_finalize__(self, obj) -> None:
        self._obj = getattr(obj, "_obj", None)
        self._kind = getattr(obj, "_kind", 0)   # where the memory is: see memory_kind

    def _check_cpu_accessible(self) -> None:
        from ._buffers import HOST_KINDS

        if self._kind not in HOST_KINDS:
            raise BufferError("buffer is not CPU-accessible")

    @staticmethod
    def allocate(nbytes: int, clear: bool = False) -> buffer:
        """Buffer allocation."""
        nbytes = _operator.index(nbytes)
        if nbytes < 0:
            raise ValueError("expecting non-negative size")
        mem = (_np.zeros if clear else _np.empty)(nbytes, _np.uint8).view(buffer)
        mem._obj = None
        return mem

    @staticmethod
    def frombuffer(obj, readonly: bool = False) -> buffer:
        """Buffer from buffer-like object."""
        mem = buffer(obj)
        if readonly:
            mem.flags.writeable = False
        return mem

    @staticmethod
    def fromaddress(address: int, nbytes: int, readonly: bool = False) -> buffer:
        """Buffer from address and size in bytes."""
        import ctypes

        address, nbytes = _operator.index(address), _operator.index(nbytes)
        if nbytes < 0:
            raise ValueError("expecting non-negative buffer length")
        if address == 0 and nbytes > 0:
            raise ValueError("expecting non-NULL address")
        raw = (ctypes.c_char * nbytes).from_address(address) if nbytes else bytearray()
        mem = _np.frombuffer(raw,  # type: ignore[arg-type]  # numpy's stubs omit ctypes arrays
                             _np.uint8).view(buffer)
        mem.flags.writeable = not readonly
        mem._obj = None
        return mem

    @property
    def address(self) -> int:
        """Buffer address."""
        return self.__array_interface__["data"][0] if self.size else 0

    @property
    def obj(self):
        """The underlying object."""
        return self._obj

    @property
    def readonly(self) -> bool:
        """Buffer is read-only."""
        return not self.flags.writeable

    @property
    def format(self) -> str:
        """Format of each element: bytes."""
        return "B"

    def cast(self, format: str, shape=None) -> memoryview:
        """Cast to a memoryview with new format or shape."""
        self._check_cpu_accessible()
        mv = memoryview(self)  # type: ignore[arg-type]  # numpy's stubs: a Buffer only on 3.12+
        # typeshed's cast takes only literal formats; mpi4py's, any (ValueError if unknown).
        if shape is None:
            return mv.cast(format)  # type: ignore[call-overload]  # any format, as mpi4py's
        return mv.cast(format, shape)  # type: ignore[call-overload]  # any format, as mpi4py's

    def tobytes(self, order=None) -> bytes:
        """Return the data in the buffer as a byte string."""
        self._check_cpu_accessible()
        return _np.ndarray.tobytes(self)

    def __getitem__(self, item):
        self._check_cpu_accessible()
        return _np.ndarray.__getitem__(self, item)

    def __setitem__(self, item, value) -> None:
        self._check_cpu_accessible()
        _np.ndarray.__setitem__(self, item, value)

    def toreadonly(self) -> buffer:
        """Return a readonly version of the buffer object."""
        mem = self.view(buffer)
        mem.flags.writeable = False
        return mem

    def release(self) -> None:
        """Release the underlying buffer exposed by the buffer object."""
        self._obj = None


memory = buffer


def Alloc_mem(size: int, info=None) -> buffer:
    """Allocate memory for message passing and remote memory access."""
    return buffer.allocate(size)


def Free_mem(mem: buffer) -> None:
    """Free memory allocated with `Alloc_mem`."""
    mem.release()


_attached: list = []


def Attach_buffer(buf) -> None:
    """Attach a user-provided buffer for sending in buffered mode. cmampi's
    buffered sends copy the message into memory of their own, so the buffer only
    has to be there, as MPI requires."""
    if _attached:
        raise Exception(ERR_BUFFER, "a buffer is attached already")
    _attached.append(buffer(buf))


def Detach_buffer() -> buffer:
    """Remove an existing attached buffer (the one attached, as mpi4py returns it)."""
    return _attached.pop() if _attached else buffer()


def Get_address(location) -> int:
    """Get the address of a location in memory."""
    if location is BOTTOM:
        return 0
    from ._buffers import _as_array, address

    arr = _as_array(location)
    return address(arr) if arr.nbytes else arr.__array_interface__["data"][0]


def Wtime() -> float:
    """Elapsed wall-clock time in seconds."""
    return _time.perf_counter()


def Wtick() -> float:
    return _time.get_clock_info("perf_counter").resolution


def Get_processor_name() -> str:
    return _socket.gethostname()


def Get_version():
    return (4, 1)


def get_vendor():
    """The MPI implementation's name and version: cmampi's own, with no MPI library."""
    from . import __version__

    return "cmampi", tuple(int(x) for x in __version__.split(".")[:3] if x.isdigit())


def Get_library_version() -> str:
    return "cmampi (socket channel, no MPI library)"


def Is_initialized() -> bool:
    return True


_finalized = False


def Init() -> None:
    """Nothing to do: the launcher has connected the ranks already."""


def Init_thread(required: int = THREAD_MULTIPLE) -> int:
    """Nothing to do but say the thread level: any thread may call at any time."""
    return THREAD_MULTIPLE


def Finalize() -> None:
    """Mark the job finalized (the connections close when the process exits)."""
    global _finalized
    _finalized = True


def Is_finalized() -> bool:
    return _finalized


def Query_thread() -> int:
    """The thread level: any thread may call at any time (see `_serial`)."""
    return THREAD_MULTIPLE


def Is_thread_main() -> bool:
    """Whether the calling thread is the one that initialized the job (the main one)."""
    return _threading.current_thread() is _threading.main_thread()


class Pickle:
    """How the lowercase calls turn objects into bytes: ``dumps``/``loads``
    (``pickle``'s by default, with ``protocol``), as mpi4py's ``MPI.Pickle``."""

    def __init__(self, dumps: Callable | None = None, loads: Callable | None = None,
                 protocol: int | None = None, threshold: int | None = None) -> None:
        self._dumps = dumps if dumps is not None else _pickle.dumps
        self._loads = loads if loads is not None else _pickle.loads
        if protocol is None:
            protocol = _pickle.HIGHEST_PROTOCOL if dumps is None else None
        self.PROTOCOL = protocol
        self.THRESHOLD = 256 << 10 if threshold is None else threshold
        _configure_pickle(self, dumps, loads)

    def dumps(self, obj: Any) -> bytes:
        """*obj* as bytes."""
        if self.PROTOCOL is None:
            return self._dumps(obj)
        return self._dumps(obj, self.PROTOCOL)

    def loads(self, data) -> Any:
        """The object *data* holds."""
        return self._loads(data)

    def dumps_oob(self, obj: Any):
        """*obj* as bytes and a list of out-of-band buffers (protocol 5)."""
        buffers: list = []
        data = _pickle.dumps(obj, 5, buffer_callback=buffers.append)
        return data, [b.raw() for b in buffers]

    def loads_oob(self, data, buffers) -> Any:
        """The object *data* and its out-of-band *buffers* hold."""
        return _pickle.loads(data, buffers=buffers)


pickle = Pickle()
