"""Row-sparse gradients: a few rows of a tensor, the rest zero."""

from __future__ import annotations

import numpy as np

from opgen.runtime.arrays import array_module


class RowSparseArray:
    """A row-sparse array: ``data[k]`` is row ``indices[k]``; every other row is zero.

    ``indices`` must be integers, one-dimensional, sorted, unique and within
    ``[0, shape[0])``; ``data.shape`` must be ``(len(indices),) + shape[1:]``. Both are
    checked here, once, so an update never applies a row to the wrong place or twice.
    ``data`` may be a NumPy or a CuPy array; ``indices`` are kept beside it (int64).
    """

    __slots__ = ("_data", "_indices", "_shape")

    def __init__(self, data, indices, shape) -> None:
        xp = array_module(data)
        if not hasattr(data, "dtype") or not hasattr(data, "shape"):
            raise TypeError(f"RowSparseArray: argument 'data' must be a numpy.ndarray or cupy.ndarray, "
                            f"got {type(data).__name__}")
        shape = _as_shape(shape)
        indices = xp.asarray(indices)
        if indices.dtype.kind not in "iu":
            raise TypeError(f"RowSparseArray: argument 'indices' must hold integers, got dtype {indices.dtype}")
        if indices.ndim != 1:
            raise ValueError(f"RowSparseArray: argument 'indices' must be one-dimensional, got shape {indices.shape}")
        if len(shape) == 0:
            raise ValueError("RowSparseArray: argument 'shape' must have at least one dimension")
        expected = (len(indices),) + shape[1:]
        if data.shape != expected:
            raise ValueError(f"RowSparseArray: argument 'data' has shape {data.shape}; expected {expected} "
                             f"(one row of shape {shape[1:]} per index)")
        if len(indices):
            if int(indices.min()) < 0 or int(indices.max()) >= shape[0]:
                bad = int(indices[(indices < 0) | (indices >= shape[0])][0])
                raise ValueError(f"RowSparseArray: argument 'indices' holds {bad}, outside [0, {shape[0]})")
            steps = xp.diff(indices)
            if len(steps) and int(steps.min()) <= 0:
                k = int(xp.argmax(steps <= 0))
                what = "a duplicate" if int(steps[k]) == 0 else "out of order"
                raise ValueError(f"RowSparseArray: argument 'indices' must be sorted and unique; "
                                 f"indices[{k + 1}] = {int(indices[k + 1])} is {what}")
        self._data = data
        # A private, read-only copy: indices checked here cannot be changed behind our back.
        self._indices = xp.array(indices, dtype=xp.int64, copy=True)
        if xp is np:
            self._indices.flags.writeable = False
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


def _as_shape(shape) -> tuple[int, ...]:
    try:
        out = tuple(int(s) for s in shape)
    except TypeError:
        raise TypeError(f"RowSparseArray: argument 'shape' must be a tuple of ints, got {shape!r}") from None
    if any(s < 0 for s in out):
        raise ValueError(f"RowSparseArray: argument 'shape' must not be negative, got {out}")
    return out
