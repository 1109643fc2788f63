"""Message buffers (cmampi._buffers): mpi4py-style specs parsed into byte layouts.

The message of a buffer is a byte stream: memory order for a contiguous (C or
Fortran) array, C order of the elements for any other view, cut to the
``(count, displ)`` window of the spec.
"""

from __future__ import annotations

import array
import ctypes

import numpy as np
import pytest

from cmampi._buffers import Layout, _collapse, recv_buffer, send_buffer

DTYPES = ["u1", "i2", "i4", "f8", "c16"]
SENTINEL = 0xA5


# -- a model of the message stream, built with numpy -----------------------------------------

def stream_of(v: np.ndarray) -> np.ndarray:
    """The array whose C order is *v*'s message order."""
    return v.T if v.flags.f_contiguous and not v.flags.c_contiguous else v


def stream_bytes(v: np.ndarray) -> bytes:
    return stream_of(v).tobytes()


def write_stream(v: np.ndarray, off: int, data: bytes) -> None:
    """Overwrite stream bytes [off, off + len(data)) of the view *v* in place."""
    s = stream_of(v)
    b = np.frombuffer(s.tobytes(), np.uint8).copy()
    b[off:off + len(data)] = np.frombuffer(data, np.uint8)
    s[...] = np.frombuffer(b.tobytes(), s.dtype).reshape(s.shape)


def segment_bytes(layout: Layout) -> bytes:
    return b"".join(ctypes.string_at(int(a), int(n)) for a, n in layout.segments())


def pattern(nbytes: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8).tobytes()


MARGIN = 128  # guard bytes on each side of a guarded array


def base_in(big, shape, dtype, order):
    """The contiguous array of *shape* that starts MARGIN bytes into *big*."""
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return big[MARGIN:MARGIN + n].view(dtype).reshape(shape, order=order)


def guarded(shape, dtype, order="C"):
    """(big, base): *base* is a contiguous array inside *big*, whose margins hold SENTINEL."""
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    big = np.full(n + 2 * MARGIN, SENTINEL, np.uint8)
    return big, base_in(big, shape, dtype, order)


def filled(shape, dtype) -> np.ndarray:
    """Distinct bytes everywhere, so any misplaced byte is caught."""
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer(pattern(n, seed=n), dtype).reshape(shape).copy()


# Views of a (4, 6, 10) array: contiguous ones and strided ones of all sorts.
CONTIGUOUS_VIEWS = {
    "whole": lambda a: a,
    "transposed": lambda a: a.T,                          # F-contiguous
    "leading_rows": lambda a: a[1:3],
    "single_element": lambda a: a[2, 3, 4:5],
    "unit_dims": lambda a: a[1:2, :, None],
}
STRIDED_VIEWS = {
    "step2_inner": lambda a: a[:, :, ::2],
    "reversed": lambda a: a[::-1],
    "reversed_all": lambda a: a[::-1, ::-1, ::-1],
    "step2_inner_T": lambda a: a[:, :, ::2].T,
    "inner_block": lambda a: a[1:3, 1:3, 2:7],
    "coarse_rows": lambda a: a[::2],
    "column": lambda a: a[:, 3, 4],
    "unit_dim_step3": lambda a: a[:, None, 2, ::3],
    "negative_step3": lambda a: a[:, ::-1, ::-3],
    "axes_permuted": lambda a: a.transpose(1, 0, 2),
    "broadcast": lambda a: np.broadcast_to(a[0, 0], (3, 10)),
}
SHAPE = (4, 6, 10)


# -- plain buffers ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["b1", "i1", "u2", "i4", "u8", "f2", "f4", "f8", "c8", "c16"])
@pytest.mark.parametrize("shape", [(), (0,), (3, 0), (1,), (7,), (3, 4), (2, 3, 5)])
@pytest.mark.parametrize("order", ["C", "F"])
def test_plain_numpy_arrays(dtype, shape, order):
    a = np.asfortranarray(filled(shape, dtype)) if order == "F" else filled(shape, dtype)
    for parse in (send_buffer, recv_buffer):
        buf = parse(a)
        assert buf.obj is a and buf.whole and buf.contiguous and not buf.readonly
        assert buf.nbytes == a.nbytes and buf.esize == a.itemsize
        assert buf.tobytes() == a.tobytes(order="A")
        assert segment_bytes(buf.layout) == a.tobytes(order="A")


@pytest.mark.parametrize("obj", [
    b"", b"hello world", bytearray(b"\x00\x01\x02\xff"), memoryview(b"abcdef"),
    memoryview(bytearray(range(12))).cast("i"), array.array("d", [1.5, -2.0, 3.25]),
    array.array("h", range(-5, 5)), memoryview(bytearray(range(20)))[::3],
    memoryview(bytearray(range(24))).cast("B", (4, 6))[::2],
])
def test_plain_python_buffers(obj):
    buf = send_buffer(obj)
    mv = memoryview(obj)
    assert buf.obj is obj
    assert buf.nbytes == mv.nbytes and buf.esize == mv.itemsize
    assert buf.tobytes() == mv.tobytes()
    assert segment_bytes(buf.layout) == mv.tobytes()
    assert buf.readonly == mv.readonly


def test_python_buffers_are_writable_receive_buffers():
    for obj in (bytearray(8), array.array("i", [0, 0]), memoryview(bytearray(8))):
        buf = recv_buffer(obj)
        buf.scatter(b"\x01\x02\x03\x04\x05")
        assert bytes(memoryview(obj).cast("B")) == b"\x01\x02\x03\x04\x05\x00\x00\x00"


# -- spec forms: [buf, datatype], [buf, count], [buf, (count, displ)], ... -------------------

def test_datatype_spec_sets_element_size():
    a = np.arange(6, dtype="f8")
    buf = send_buffer([a, "i"])
    assert (buf.esize, buf.nbytes, buf.whole) == (4, 48, True)
    assert buf.tobytes() == a.tobytes()
    buf = send_buffer([bytearray(16), "d"])
    assert (buf.esize, buf.nbytes) == (8, 16)
    assert send_buffer((a, "d")).tobytes() == a.tobytes()
    with pytest.raises(ValueError, match="expecting 2 to 4 items"):    # as mpi4py
        send_buffer([a])


def test_no_buffer_is_an_empty_message_of_an_explicit_datatype():
    """mpi4py's ``[None, datatype]`` (or BOTTOM): nothing to send; a count above
    zero, or no datatype, is refused as mpi4py refuses it."""
    assert send_buffer([None, "B"]).nbytes == 0
    assert send_buffer([None, 0, "i"]).nbytes == 0
    with pytest.raises(ValueError, match="buffer is None but count is 3"):
        send_buffer([None, 3, "B"])
    with pytest.raises(TypeError):
        send_buffer(None)


class FakeDatatype:
    """Duck-typed stand-in for an mpi4py Datatype (mpi4py is not imported here)."""

    def __init__(self, size, lb=0, extent=None):
        self.size, self.lb, self.extent = size, lb, size if extent is None else extent

    def Get_size(self):
        return self.size

    def Get_extent(self):
        return self.lb, self.extent


def test_datatype_objects_are_accepted():
    a = np.arange(10, dtype="i4")
    buf = send_buffer([a, (3, 2), FakeDatatype(8)])
    assert buf.esize == 8 and buf.tobytes() == a[4:10].tobytes()
    with pytest.raises(TypeError):
        send_buffer([a, FakeDatatype(4, lb=4)])
    with pytest.raises(TypeError):
        send_buffer([a, FakeDatatype(4, extent=8)])


def _spec_forms(v, count, displ):
    """Every spec form that selects the window (count, displ) of *v*."""
    code = v.dtype.char
    forms = [[v, (count, displ)], [v, [count, displ]], [v, (count, displ), code],
             [v, count, displ, code], [v, (np.int64(count), np.int32(displ))]]
    if displ == 0:
        forms += [[v, count], [v, count, code]]
    return forms


def _windows(n):
    """(count, displ) pairs: whole, empty, middle, first/last element dropped, at the end."""
    wins = {(n, 0), (0, 0), (n // 2, n // 3), (0, n)}
    if n:
        wins |= {(1, n - 1), (n - 1, 1)}
    return sorted(wins)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("view", list(CONTIGUOUS_VIEWS) + list(STRIDED_VIEWS))
def test_windows_tobytes_and_segments(view, dtype):
    """tobytes() and the layout's segments give the model stream, cut to the window."""
    a = filled(SHAPE, dtype)
    v = {**CONTIGUOUS_VIEWS, **STRIDED_VIEWS}[view](a)
    stream = stream_bytes(v)
    isz = v.itemsize
    whole = send_buffer(v)
    assert whole.contiguous == (view in CONTIGUOUS_VIEWS)
    assert whole.tobytes() == stream and segment_bytes(whole.layout) == stream
    for count, displ in _windows(v.size):
        want = stream[displ * isz:(displ + count) * isz]
        for spec in _spec_forms(v, count, displ):
            buf = send_buffer(spec)
            assert buf.esize == isz and buf.nbytes == len(want)
            assert buf.whole == (count == v.size and displ == 0)
            assert buf.tobytes() == want, (spec[1:], count, displ)
            assert segment_bytes(buf.layout) == want


def test_windows_with_a_smaller_datatype_of_a_contiguous_array():
    a = np.arange(6, dtype="f8")
    raw = a.tobytes()
    buf = send_buffer([a, (3, 5), "i"])
    assert buf.esize == 4 and buf.tobytes() == raw[20:32]
    assert send_buffer([a, 7, "h"]).tobytes() == raw[:14]
    f = np.asfortranarray(np.arange(12, dtype="i4").reshape(3, 4))
    assert send_buffer([f, (5, 2), "h"]).tobytes() == f.tobytes(order="F")[4:14]


# -- Buffer.scatter -------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("view", [v for v in {**CONTIGUOUS_VIEWS, **STRIDED_VIEWS}
                                  if v != "broadcast"])  # broadcast views are read-only
def test_scatter_writes_exactly_the_stream_prefix(view, dtype):
    """scatter(data) writes stream bytes [0, len(data)) of the window and nothing else."""
    fn = {**CONTIGUOUS_VIEWS, **STRIDED_VIEWS}[view]
    isz = np.dtype(dtype).itemsize
    for order in ("C", "F"):
        big, base = guarded(SHAPE, dtype, order)
        nelem = fn(base).size
        for count, displ in [(nelem, 0), (nelem // 2, nelem // 3), (max(nelem - 2, 0), 1)]:
            full = count * isz
            for n in sorted({full, full // 2 + 3, 1, 0}):
                if n > full:
                    continue
                big[...] = SENTINEL
                data = pattern(n, seed=n + displ)
                want = big.copy()
                write_stream(fn(base_in(want, SHAPE, dtype, order)), displ * isz, data)
                spec = fn(base) if (count, displ) == (nelem, 0) else [fn(base), (count, displ)]
                recv_buffer(spec).scatter(data)
                assert big.tobytes() == want.tobytes(), (order, count, displ, n)


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_scatter_accepts_bytes_like_data(kind):
    a = np.zeros((4, 6), "i4")
    v = a[:, ::2]
    data = pattern(30, seed=1)
    recv_buffer(v).scatter(kind(data))
    want = np.zeros((4, 6), "i4")
    write_stream(want[:, ::2], 0, data)
    assert a.tobytes() == want.tobytes()


def test_scatter_with_a_smaller_datatype_window():
    a = np.zeros(4, "f8")
    recv_buffer([a, (3, 2), "i"]).scatter(b"\xff" * 10)
    assert a.view(np.uint8).tolist() == [0] * 8 + [0xFF] * 10 + [0] * 14


# -- Layout ----------------------------------------------------------------------------------

@pytest.mark.parametrize("arr", [
    np.zeros((5, 7)), np.zeros((5, 7), order="F"), np.zeros((3, 1, 4), "u1"),
    np.zeros(()), np.zeros((0, 3)), np.zeros((6, 8))[2:4], np.zeros((6, 8))[2:3, ::1][:, None],
], ids=["C", "F", "u1_unit_dim", "0-d", "empty", "row_block", "single_row"])
def test_contiguous_arrays_are_one_run(arr):
    lay = Layout.of_array(arr)
    assert lay.contiguous_run and lay.shape == (arr.nbytes,) and lay.strides == (1,)
    assert lay.addr == arr.ctypes.data and lay.nbytes == arr.nbytes


@pytest.mark.parametrize("view", list(STRIDED_VIEWS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_arrays_are_not_one_run(view, dtype):
    v = STRIDED_VIEWS[view](filled(SHAPE, dtype))
    lay = Layout.of_array(v)
    assert not lay.contiguous_run
    assert lay.nbytes == v.nbytes
    assert lay.strides[-1] == 1 and lay.run % v.itemsize == 0
    assert lay.hi == lay.nbytes == v.nbytes


@pytest.mark.parametrize("shape,strides,want", [
    # a[:, ::2] of a (4, 6) float64 array: rows of 3 items at stride 16 merge into 12
    ((4, 3, 8), (48, 16, 1), ((12, 8), (16, 1))),
    # a[::-1, ::-1]: one reversed run of 12 items
    ((3, 4, 8), (-32, -8, 1), ((12, 8), (-8, 1))),
    # a[::2] with rows of 32 bytes: rows are the runs
    ((3, 4, 8), (64, 8, 1), ((3, 32), (64, 1))),
    # unit dimensions vanish
    ((3, 1, 4, 1, 8), (64, 7, 16, 5, 1), ((12, 8), (16, 1))),
    # a[:, ::2].T: nothing merges
    ((3, 4, 8), (16, 48, 1), ((3, 4, 8), (16, 48, 1))),
    # single-byte items at stride 2: runs of one byte
    ((5, 1), (2, 1), ((5, 1), (2, 1))),
    ((4, 3, 1), (6, 2, 1), ((12, 1), (2, 1))),
    # empty arrays collapse to nothing
    ((3, 0, 8), (64, 16, 1), ((0,), (1,))),
])
def test_collapse(shape, strides, want):
    assert _collapse(shape, strides) == want


def test_layout_window_and_encode_roundtrip():
    a = np.arange(48, dtype="i4").reshape(6, 8)[:, ::2]
    lay = Layout.of_array(a)
    win = lay.window(12, 40)
    assert segment_bytes(win) == a.tobytes()[12:40]
    assert segment_bytes(win.window(4, 20)) == a.tobytes()[16:32]
    back = Layout.decode(win.encode())
    assert (back.addr, back.shape, back.strides, back.lo, back.hi) == \
           (win.addr, win.shape, win.strides, win.lo, win.hi)
    c = Layout.contiguous(1000, 64).window(8, 24)
    assert (c.addr, c.nbytes, c.contiguous_run) == (1008, 16, True)


# -- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("obj", [
    b"abc", memoryview(b"abc"), np.frombuffer(b"abcdefgh", "u1"),
    np.broadcast_to(np.arange(3.0), (2, 3)), [b"abcd", "i"], [b"abcd", (1, 1)],
])
def test_read_only_receive_buffers_raise_buffer_error(obj):
    with pytest.raises(BufferError):
        recv_buffer(obj)
    assert send_buffer(obj).readonly


def test_non_writeable_numpy_array_is_not_a_receive_buffer():
    a = np.zeros(4)
    a.flags.writeable = False
    with pytest.raises(BufferError):
        recv_buffer(a)
    with pytest.raises(BufferError):
        recv_buffer([a, 2, "d"])


@pytest.mark.parametrize("spec", [
    42, None, object(), "text", 3.5, [42, "d"], [None, 2], [object(), (1, 0)], [1, 2, 3],
])
@pytest.mark.parametrize("parse", [send_buffer, recv_buffer])
def test_non_buffers_raise_type_error(parse, spec):
    with pytest.raises(TypeError):
        parse(spec)


@pytest.mark.parametrize("spec", [
    lambda a: [],
    lambda a: [a, 1, 0, "d", 5],
    lambda a: [a, (1, 2, 3)],
    lambda a: [a, [1]],
    lambda a: [a, 11],
    lambda a: [a, (5, 6)],
    lambda a: [a, (0, 11)],
    lambda a: [a, (1, 10), "d"],
    lambda a: [a, 21, "i"],
    lambda a: [a, -1],
    lambda a: [a, (-1, 0)],
    lambda a: [a, (1, -1)],
    lambda a: [a, 2, -3, "d"],
    lambda a: [bytearray(10), "d"],
    lambda a: [np.zeros(3, "i2"), "i"],
], ids=["empty", "five_items", "triple", "single", "count", "count_displ", "displ",
        "typed_displ", "typed_count", "neg_count", "neg_count_tuple", "neg_displ",
        "neg_displ_4", "bytes_not_doubles",
        "shorts_not_ints"])
@pytest.mark.parametrize("parse", [send_buffer, recv_buffer])
def test_bad_specs_raise_value_error(parse, spec):
    with pytest.raises(ValueError):
        parse(spec(np.zeros(10)))


@pytest.mark.parametrize("parse", [send_buffer, recv_buffer])
def test_type_codes_mpi_cannot_map(parse):
    """A type code outside mpi4py's table is a KeyError, with mpi4py or without it
    (the socket channel's table is mpi4py's: see test_socket_buffers.py)."""
    for spec in ([np.zeros(10), "V3"], [np.zeros(5), "V3"]):
        with pytest.raises(KeyError):
            parse(spec)


def test_bad_counts_raise_type_error():
    """What mpi4py refuses with TypeError; what it takes (a bool count, a None
    displacement) is taken."""
    a = np.zeros(10)
    for spec in ([a, 1.0], [a, (1.0, 0)], [a, 2, "d", "d"]):
        with pytest.raises(TypeError):
            send_buffer(spec)
    assert send_buffer([a, True]).nbytes == 8
    assert send_buffer([a, (1, None)]).nbytes == 8
    with pytest.raises(KeyError, match="cannot map"):     # a count where the datatype goes
        send_buffer([a, 3, np.int32(1)])


def test_strided_buffer_needs_its_own_item_size():
    v = np.zeros((4, 6))[:, ::2]
    with pytest.raises(BufferError):
        send_buffer([v, "i"])
    assert send_buffer([v, "d"]).nbytes == v.nbytes


# -- the fast parse of the simplest forms (quick_spec) against the full parse ---------------

def _mmap16():
    import mmap

    m = mmap.mmap(-1, 16)
    m.write(bytes(range(16)))
    return m


_OBJECTS = {
    "uint8": lambda: np.arange(16, dtype="u1"),
    "float64": lambda: np.arange(2, dtype="f8"),
    "read-only": lambda: np.frombuffer(bytes(range(16)), "u1"),
    "strided": lambda: np.arange(32, dtype="u1")[::2],
    "datetimes": lambda: np.array([0, 1], dtype="M8[s]"),
    "bytearray": lambda: bytearray(range(16)),
    "bytes": lambda: bytes(range(16)),
    "mmap": _mmap16,
    "array.array": lambda: array.array("d", [1.0, 2.0]),
}
_FORMS = {
    "[obj, BYTE]": lambda o, N: [o, N.BYTE],
    "(obj, DOUBLE)": lambda o, N: (o, N.DOUBLE),
    "[obj, INT]": lambda o, N: [o, N.INT],
    "[obj, 16, BYTE]": lambda o, N: [o, 16, N.BYTE],
    "[obj, 5, BYTE]": lambda o, N: [o, 5, N.BYTE],
    "[obj, 0, BYTE]": lambda o, N: [o, 0, N.BYTE],
    "[obj, 1, DOUBLE]": lambda o, N: [o, 1, N.DOUBLE],
    "[obj, 17, BYTE]": lambda o, N: [o, 17, N.BYTE],
    "[obj, -1, BYTE]": lambda o, N: [o, -1, N.BYTE],
}


@pytest.mark.parametrize("writable", [False, True], ids=["send", "recv"])
@pytest.mark.parametrize("form", list(_FORMS))
@pytest.mark.parametrize("kind", list(_OBJECTS))
def test_quick_spec_parses_as_the_full_parse(kind, form, writable):
    """The fast parse of the simplest spec forms gives what the full parse gives
    (the message's bytes, where it starts, its size, element size and
    writability), and declines whatever the full parse refuses."""
    from cmampi._backend import names
    from cmampi._buffers import _buffer, quick_spec

    spec = _FORMS[form](_OBJECTS[kind](), names())
    try:
        full = _buffer(spec, writable)
    except Exception:   # noqa: BLE001 - whatever it raises, the fast parse declines
        assert quick_spec(spec, writable) is None
        return
    quick = quick_spec(spec, writable)
    if quick is None:
        assert kind in ("strided", "datetimes")     # left to the full parse
        return
    assert (quick.nbytes, quick.esize, quick.readonly, quick.contiguous) == \
        (full.nbytes, full.esize, full.readonly, full.contiguous)
    assert quick.tobytes() == full.tobytes()
    assert quick.layout.addr + quick.layout.lo == full.layout.addr + full.layout.lo


# -- the simplest spec forms, sized without parsing (p2p.Counted) -----------------------------
def _counted_cases():
    from cmampi import _names

    byte, dbl = _names.BYTE, _names.DOUBLE
    a = np.arange(16, dtype=np.uint8)
    ro = a.copy()
    ro.flags.writeable = False
    f2 = np.zeros((4, 4), order="F")
    return [
        # (spec, writable, expected nbytes or None: not this form, the full parse decides)
        ([a, 16, byte], True, 16),
        ([a, 5, byte], True, 5),
        ((a, 2, dbl), False, 16),
        ([a, 17, byte], False, None),                       # more than the buffer holds
        ([a, -1, byte], False, None),
        ([a, 4.0, byte], False, None),
        ([a[::2], 4, byte], False, None),                   # strided
        ([f2, 16, dbl], False, None),                       # Fortran order: parsed in full
        ([ro, 8, byte], False, 8),
        ([ro, 8, byte], True, None),                        # read-only receive buffer
        ([np.empty(2, object), 2, byte], False, 2),         # mpi4py sends its bytes too
        ([np.empty(2, object), 2, byte], True, None),       # but none may land on its pointers
        ([np.zeros(2, "M8[s]"), 16, byte], False, None),    # no buffer view: parsed in full
        ([bytearray(9), 9, byte], True, 9),
        ([b"abc", 3, byte], True, None),
        ([b"abc", 3, byte], False, 3),
        ([array.array("d", [1.0, 2.0]), 2, dbl], True, 16),
        ([a, 16], False, None),                             # other spec shapes
        (bytearray(7), True, 7),
        (b"xy", True, None),
        (b"xy", False, 2),
    ]


@pytest.mark.parametrize("case", range(len(_counted_cases())))
def test_counted_sizes_only_what_mpi4py_takes_as_is(case):
    from cmampi import _names, p2p

    spec, writable, expected = _counted_cases()[case]
    hit = p2p.Counted(_names)(spec, writable)
    assert (None if hit is None else hit[1]) == expected
    if hit is not None:     # the buffer itself, handed to the MPI library with its byte count
        assert hit[0] is (spec[0] if isinstance(spec, (list, tuple)) else spec)
