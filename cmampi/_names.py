"""mpi4py.MPI's names for jobs without MPI: constants, datatypes, Status, Exception, ops."""

from __future__ import annotations

import operator as _operator
import socket as _socket
import time as _time
from typing import Any, Callable, Optional

import numpy as _np

# Constants, with MPICH's values so programs printing them see familiar numbers.
ANY_SOURCE = -2
ANY_TAG = -1
PROC_NULL = -1
ROOT = -3
UNDEFINED = -32766
TAG_UB = 2**31 - 1
COMM_TYPE_SHARED = 1
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
    ERR_INTERN: "Internal MPI error", ERR_REQUEST: "Invalid MPI_Request",
    ERR_PROC_FAILED: "Process failed",
}


class Exception(RuntimeError):  # noqa: A001 - the name mpi4py uses
    """An MPI error, with its error class (``ERR_TRUNCATE``, ...)."""

    def __init__(self, ierr: int = SUCCESS, message: Optional[str] = None) -> None:
        self.ierr = ierr
        text = _ERROR_STRINGS.get(ierr, f"MPI error {ierr}")
        super().__init__(f"{text}: {message}" if message else text)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, int):
            return self.ierr == other
        return super().__eq__(other)

    __hash__ = RuntimeError.__hash__

    def __int__(self) -> int:
        return self.ierr

    def Get_error_code(self) -> int:
        return self.ierr

    def Get_error_class(self) -> int:
        return self.ierr

    def Get_error_string(self) -> str:
        return _ERROR_STRINGS.get(self.ierr, f"MPI error {self.ierr}")

    error_code = property(Get_error_code)
    error_class = property(Get_error_class)
    error_string = property(Get_error_string)


def Get_error_string(errorcode: int) -> str:
    return _ERROR_STRINGS.get(errorcode, f"MPI error {errorcode}")


class Datatype:
    """A predefined datatype: a name and a numpy type code."""

    __slots__ = ("name", "code", "_size")

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
_BY_DTYPE = {}
for _name in ("DOUBLE", "FLOAT", "LONG", "INT", "SHORT", "SIGNED_CHAR", "UNSIGNED_LONG",
              "UNSIGNED", "UNSIGNED_SHORT", "UNSIGNED_CHAR", "C_BOOL", "LONG_DOUBLE",
              "C_FLOAT_COMPLEX", "C_DOUBLE_COMPLEX", "C_LONG_DOUBLE_COMPLEX", "FLOAT16"):
    _BY_DTYPE.setdefault(_np.dtype(_DATATYPES[_name]), globals()[_name])


def datatype_of(dtype) -> Datatype:
    """The predefined datatype of numpy *dtype* (``DATATYPE_NULL`` if none)."""
    return _BY_DTYPE.get(_np.dtype(dtype), DATATYPE_NULL)


class Status:
    """The source, tag, size and error of a received message."""

    __slots__ = ("source", "tag", "error", "count", "cancelled")

    def __init__(self, status: Optional["Status"] = None) -> None:
        self.source, self.tag, self.error, self.count, self.cancelled = (
            ANY_SOURCE, ANY_TAG, SUCCESS, 0, False)
        if status is not None:
            self.source, self.tag, self.error = status.source, status.tag, status.error
            self.count, self.cancelled = status.count, status.cancelled

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

    def Get_count(self, datatype: Datatype = None) -> int:
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
        self.cancelled = bool(flag)

    def __repr__(self) -> str:
        return f"<cmampi.MPI.Status source={self.source} tag={self.tag} count={self.count}>"


class Op:
    """A reduction operation: a predefined one, or a user function via ``Op.Create``.

    Calling an op on two values combines them as mpi4py's lowercase reductions
    do (``SUM`` of lists concatenates, of arrays adds).
    """

    __slots__ = ("name", "pyfunc", "ufunc", "commute", "userfn")

    def __init__(self, name: str, pyfunc: Optional[Callable[[Any, Any], Any]],
                 ufunc=None, commute: bool = True, userfn=None) -> None:
        self.name = name
        self.pyfunc = pyfunc
        self.ufunc = ufunc
        self.commute = commute
        self.userfn = userfn

    @classmethod
    def Create(cls, function: Callable, commute: bool = False) -> "Op":
        """A user op: ``function(inbuf, inoutbuf, datatype)`` updates *inoutbuf*."""
        def py(x, y):
            out = _np.array(y, copy=True)
            function(_np.asarray(x), out, None)
            return out
        return cls("user", py, None, bool(commute), function)

    def Is_commutative(self) -> bool:
        return self.commute

    is_commutative = property(Is_commutative)

    @property
    def is_predefined(self) -> bool:
        return self.userfn is None

    def Free(self) -> None:
        pass

    def __call__(self, x, y):
        return self.pyfunc(x, y)

    def __repr__(self) -> str:
        return f"<cmampi.MPI.Op {self.name}>"


def _loc(better):
    def pick(a, b):
        (va, ia), (vb, ib) = a, b
        if va == vb:
            return (va, min(ia, ib))
        return a if better(va, vb) else b
    return pick


SUM = Op("SUM", _operator.add, _np.add)
PROD = Op("PROD", _operator.mul, _np.multiply)
MAX = Op("MAX", lambda a, b: _np.maximum(a, b) if isinstance(a, _np.ndarray) else max(a, b),
         _np.maximum)
MIN = Op("MIN", lambda a, b: _np.minimum(a, b) if isinstance(a, _np.ndarray) else min(a, b),
         _np.minimum)
LAND = Op("LAND", lambda a, b: a and b, _np.logical_and)
LOR = Op("LOR", lambda a, b: a or b, _np.logical_or)
LXOR = Op("LXOR", lambda a, b: bool(a) != bool(b), _np.logical_xor)
BAND = Op("BAND", _operator.and_, _np.bitwise_and)
BOR = Op("BOR", _operator.or_, _np.bitwise_or)
BXOR = Op("BXOR", _operator.xor, _np.bitwise_xor)
MAXLOC = Op("MAXLOC", _loc(_operator.gt))
MINLOC = Op("MINLOC", _loc(_operator.lt))
REPLACE = Op("REPLACE", lambda a, b: b, None, False)
NO_OP = Op("NO_OP", lambda a, b: a, None, False)
OP_NULL = Op("OP_NULL", None)


class _InPlace:
    def __repr__(self) -> str:
        return "IN_PLACE"


IN_PLACE = _InPlace()
BOTTOM = None
REQUEST_NULL = None
COMM_NULL = None


def Wtime() -> float:
    """Elapsed wall-clock time in seconds."""
    return _time.perf_counter()


def Wtick() -> float:
    return _time.get_clock_info("perf_counter").resolution


def Get_processor_name() -> str:
    return _socket.gethostname()


def Get_version():
    return (4, 1)


def Get_library_version() -> str:
    return "cmampi (socket channel, no MPI library)"


def Is_initialized() -> bool:
    return True


_finalized = False


def Init() -> None:
    """Nothing to do: the launcher has connected the ranks already."""


def Finalize() -> None:
    """Mark the job finalized (the connections close when the process exits)."""
    global _finalized
    _finalized = True


def Is_finalized() -> bool:
    return _finalized


def Query_thread() -> int:
    return THREAD_SERIALIZED
