"""Row-sparse gradients: a few rows of a tensor, the rest zero."""

from __future__ import annotations

import numpy as np

from opgen.runtime.arrays import adapter_for, array_module, refused_subclass


class RowSparseArray:
    """A row-sparse array: ``data[k]`` is row ``indices[k]``; every other row is zero.

    ``indices`` must be integers (any signed or unsigned integer dtype, or a sequence of
    Python or NumPy integers; not bool or float), one-dimensional, sorted, unique and within
    ``[0, shape[0])``; ``data.shape`` must be ``(len(indices),) + shape[1:]``. Both are
    checked here, once, so an update never applies a row to the wrong place or twice.
    ``data`` may be a NumPy or a CuPy array (not an ndarray subclass such as a masked array:
    see opgen.runtime.arrays); ``indices`` are kept beside it (int64).
    """

    __slots__ = ("_data", "_indices", "_shape")

    def __init__(self, data, indices, shape) -> None:
        adapter = adapter_for(data)
        if adapter is None or not adapter.native or not hasattr(data, "dtype") or not hasattr(data, "shape"):
            refused = refused_subclass(data)
            raise TypeError(f"RowSparseArray: argument 'data' {refused}" if refused else
                            f"RowSparseArray: argument 'data' must be a numpy.ndarray or cupy.ndarray, "
                            f"got {type(data).__name__}")
        xp = adapter.module(data)
        shape = _as_shape(shape)
        if len(shape) == 0:
            raise ValueError("RowSparseArray: argument 'shape' must have at least one dimension")
        indices = _as_indices(indices, shape[0], xp, adapter)
        if indices.ndim != 1:
            raise ValueError(f"RowSparseArray: argument 'indices' must be one-dimensional, got shape {indices.shape}")
        expected = (len(indices),) + shape[1:]
        if data.shape != expected:
            raise ValueError(f"RowSparseArray: argument 'data' has shape {data.shape}; expected {expected} "
                             f"(one row of shape {shape[1:]} per index)")
        if len(indices):
            _check_rows(indices, shape[0], xp)
        self._data = data
        # A private copy that cannot be changed behind our back: on the host, an array over
        # an immutable bytes object, whose writeable flag cannot be turned back on. (On a
        # device no memory is immutable: the copy is private, and not handed out writeable.)
        # Every index lies in [0, shape[0]) and shape[0] < 2**63, so int64 holds it exactly.
        if xp is np:
            self._indices = np.frombuffer(np.ascontiguousarray(indices, dtype=np.int64).tobytes(), np.int64)
        else:
            self._indices = xp.array(indices, dtype=xp.int64, copy=True)
        self._shape = shape

    @property
    def data(self):
        return self._data

    @property
    def indices(self):
        return self._indices

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def row_length(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64))

    def todense(self):
        dense = array_module(self.data).zeros(self.shape, dtype=self.data.dtype)
        dense[self.indices] = self.data
        return dense

    @classmethod
    def from_dense(cls, dense: np.ndarray) -> "RowSparseArray":
        """The rows of ``dense`` that hold a non-zero."""
        rows = np.flatnonzero(dense.reshape(dense.shape[0], -1).any(axis=1)) if dense.ndim else None
        if rows is None:
            raise ValueError("RowSparseArray.from_dense: argument 'dense' must have at least one dimension")
        return cls(dense[rows], rows, dense.shape)

    def __repr__(self) -> str:
        return f"RowSparseArray(shape={self.shape}, rows={len(self.indices)}, dtype={self.dtype})"


_INT64_MAX = 2 ** 63 - 1


def _as_shape(shape) -> tuple[int, ...]:
    try:
        items = tuple(shape)
    except TypeError:
        raise TypeError(f"RowSparseArray: argument 'shape' must be a tuple of ints, got {shape!r}") from None
    if not all(map(_is_integer, items)):  # 1000.7 would truncate, True would be 1
        raise TypeError(f"RowSparseArray: argument 'shape' must be a tuple of ints, got {shape!r}")
    out = tuple(int(s) for s in items)
    if any(s < 0 for s in out):
        raise ValueError(f"RowSparseArray: argument 'shape' must not be negative, got {out}")
    if any(s > _INT64_MAX for s in out):  # no array has such a dimension; indices fit in int64
        raise ValueError(f"RowSparseArray: argument 'shape' has a dimension beyond 2**63 - 1, got {out}")
    return out


def _is_integer(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _as_indices(indices, rows: int, xp, adapter):
    """``indices`` as an integer array of ``xp`` (NumPy or CuPy, as the data) in its own
    integer dtype, checked by _check_rows before it becomes int64; TypeError for anything
    that is not integers."""
    other = adapter_for(indices)
    if other is not None or isinstance(indices, np.ndarray):
        refused = refused_subclass(indices)
        if refused is not None:
            raise TypeError(f"RowSparseArray: argument 'indices' {refused}")
        if other.device and not adapter.device:  # (host indices for device data are copied over)
            raise TypeError(f"RowSparseArray: argument 'indices' is a {other.name} array but 'data' is a "
                            f"{adapter.name} array: host (NumPy) and device (CuPy) arrays cannot be mixed")
        array = xp.asarray(other.view(indices))
    else:  # a sequence of Python or NumPy integers
        try:
            array = np.asarray(indices)
        except (TypeError, ValueError, OverflowError):
            raise TypeError(f"RowSparseArray: argument 'indices' must be integers, got "
                            f"{type(indices).__name__}") from None
        if array.ndim == 1 and any(isinstance(v, (bool, np.bool_)) for v in indices):
            raise TypeError("RowSparseArray: argument 'indices' must hold integers, got a bool")
        if array.dtype.kind not in "iub" and array.ndim == 1 and len(array) and all(map(_is_integer, indices)):
            # integers that no NumPy integer dtype holds together, so NumPy made floats or
            # objects of them (beyond 64 bits, uint64-sized ones beside negative ones, or NumPy
            # uint64 and signed scalars): checked as Python ints, then int64
            values = [int(v) for v in indices]
            bad = next((v for v in values if not 0 <= v < rows), None)
            if bad is not None:
                raise ValueError(f"RowSparseArray: argument 'indices' holds {bad}, outside [0, {rows})")
            array = np.array(values, dtype=np.int64)
        elif array.shape == (0,):  # [] or (): no rows (NumPy would make float64 of it)
            array = np.zeros(0, np.int64)
        array = xp.asarray(array)
    if array.dtype.kind not in "iu":
        raise TypeError(f"RowSparseArray: argument 'indices' must hold integers, got dtype {array.dtype}")
    return array


def _check_rows(indices, rows: int, xp) -> None:
    """Every index in [0, rows), sorted and unique, for every integer dtype: compared in its
    own dtype (no difference that wraps around for unsigned ones, no cast that overflows)."""
    info = np.iinfo(indices.dtype)
    outside = None
    if info.min < 0:
        outside = indices < 0
    if rows <= info.max:  # else every value of the dtype is below rows
        above = indices >= rows
        outside = above if outside is None else outside | above
    if outside is not None and bool(outside.any()):
        bad = int(indices[int(xp.argmax(outside))])
        raise ValueError(f"RowSparseArray: argument 'indices' holds {bad}, outside [0, {rows})")
    not_increasing = indices[1:] <= indices[:-1]
    if len(not_increasing) and bool(not_increasing.any()):
        k = int(xp.argmax(not_increasing)) + 1
        what = "a duplicate" if bool(indices[k] == indices[k - 1]) else "out of order"
        raise ValueError(f"RowSparseArray: argument 'indices' must be sorted and unique; "
                         f"indices[{k}] = {int(indices[k])} is {what}")
