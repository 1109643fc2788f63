"""Non-contiguous numpy views on either side travel without a packing copy (cmampi only).

mpi4py refuses such buffers; cmampi sends a view's elements in C order, the same
bytes as ``np.ascontiguousarray(view)``, and writes a received stream into a view's
elements in C order, leaving everything around them untouched.
"""

from __future__ import annotations

import numpy as np
import pytest

from cmampi._config import config

pytestmark = pytest.mark.mpi(min_size=2)

LIMIT = config.eager_limit

VIEWS = {
    "every-other-column": lambda a: a[:, ::2],
    "every-other-row": lambda a: a[::2],
    "reversed": lambda a: a[::-1, ::-3],
    "transposed-strided": lambda a: a[:, ::2].T,
    "sparse": lambda a: a[:, ::37],
    "block": lambda a: a[3:-5, 7:-2],
    "contiguous": lambda a: a,
}
SHAPES = {"small": (12, 10), "large": (300, 512)}


def base(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape)


@pytest.mark.parametrize("size", list(SHAPES))
@pytest.mark.parametrize("send_view", list(VIEWS))
@pytest.mark.parametrize("recv_view", ["every-other-column", "reversed", "contiguous", "sparse"])
def test_strided_both_sides(cmcomm, size, send_view, recv_view):
    rank = cmcomm.Get_rank()
    shape = SHAPES[size]
    src = VIEWS[send_view](base(shape, 1))
    n = src.size
    if rank == 0:
        cmcomm.Send(src, 1, 0)
    elif rank == 1:
        # A destination view with at least n elements, inside a guarded array.
        rows = -(-n // 10) * 2 + 8
        dest_base = np.full((rows, 10 * 37 + 1), np.nan)
        dest = VIEWS[recv_view](dest_base)
        assert dest.size >= n
        cmcomm.Recv(dest, 0, 0)
        expect = np.full_like(dest_base, np.nan)
        flat = np.ascontiguousarray(VIEWS[recv_view](expect)).ravel()
        flat[:n] = np.ascontiguousarray(src).ravel()
        VIEWS[recv_view](expect)[...] = flat.reshape(VIEWS[recv_view](expect).shape)
        assert np.array_equal(dest_base, expect, equal_nan=True)


def test_strided_matrix_columns(cmcomm):
    """The benchmark's case at a test size: every other column to every other column."""
    rank = cmcomm.Get_rank()
    a = np.arange(1024 * 1024, dtype=np.float64).reshape(1024, 1024)
    if rank == 0:
        cmcomm.Send(a[:, ::2], 1, 3)
    elif rank == 1:
        b = np.full_like(a, -1.0)
        cmcomm.Recv(b[:, ::2], 0, 3)
        assert np.array_equal(b[:, ::2], a[:, ::2]) and (b[:, 1::2] == -1).all()


def test_strided_receive_packs_no_copy_of_the_message(cmcomm, monkeypatch):
    """A pulled message received into a strided view is checked for an object's
    record by its first bytes: no packed copy of the whole message is made."""
    from cmampi._buffers import Buffer

    rank = cmcomm.Get_rank()
    a = np.arange(1024 * 1024, dtype=np.float64).reshape(1024, 1024)
    if rank == 0:
        cmcomm.Send(a[:, ::2], 1, 4)
    elif rank == 1:
        def no_copy(self):
            raise AssertionError("the whole received message was packed")

        monkeypatch.setattr(Buffer, "tobytes", no_copy)
        b = np.full_like(a, -1.0)
        cmcomm.Recv(b[:, ::2], 0, 4)
        assert np.array_equal(b[:, ::2], a[:, ::2]) and (b[:, 1::2] == -1).all()


def test_strided_nonblocking_and_any_source(cmcomm):
    from cmampi import MPI

    rank, size = cmcomm.Get_rank(), cmcomm.Get_size()
    a = base((256, 256), rank)
    if rank != 0:
        cmcomm.Isend(a[::-1, ::2], 0, rank).Wait()
    else:
        outs = {}
        for _ in range(size - 1):
            st = MPI.Status()
            b = np.zeros((256, 256))
            cmcomm.Recv(b[:, 1::2], MPI.ANY_SOURCE, MPI.ANY_TAG, st)
            outs[st.Get_source()] = b
            assert st.Get_count(MPI.DOUBLE) == 256 * 128
        for src, b in outs.items():
            assert np.array_equal(b[:, 1::2], base((256, 256), src)[::-1, ::2])
            assert (b[:, ::2] == 0).all()


def test_strided_truncation_writes_nothing(cmcomm):
    from cmampi import MPI

    rank = cmcomm.Get_rank()
    if rank == 0:
        cmcomm.Send(np.ones((64, 128))[:, ::2], 1, 0)
        cmcomm.Send(np.ones(3), 1, 1)
    elif rank == 1:
        b = np.zeros((64, 64))
        with pytest.raises(MPI.Exception) as e:
            cmcomm.Recv(b[:, ::2], 0, 0)
        assert e.value.Get_error_class() == MPI.ERR_TRUNCATE and (b == 0).all()
        c = np.zeros(3)
        cmcomm.Recv(c, 0, 1)
        assert (c == 1).all()
