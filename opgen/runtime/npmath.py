"""NumPy versions of the spec language's functions whose semantics NumPy lacks."""

from __future__ import annotations

import numpy as np


def sign(x):
    """-1, 0 or 1, and 0 for NaN (NumPy's sign gives NaN)."""
    return np.where(x != x, 0, np.sign(x))


def clip(x, bound):
    """MXNet's clip::Map: ``x > b ? b : (x < -b ? -b : x)``; NaN passes through."""
    return np.where(x > bound, bound, np.where(x < -bound, -bound, x))


def choose(test, then, orelse):
    """A per-call choice: Python's ``then if test else orelse`` for one value (each keeps its
    type), ``where`` for a grid op's per-slice values (arrays)."""
    if np.ndim(test) == 0:
        return then if test else orelse
    return np.where(test, then, orelse)


def power(base, exponent):
    """``base ** exponent``; in float math computed in double and rounded once, as the C
    kernels' opgen_powf does, so both give the same bits (each type's own power differs by
    an ulp). Float64 math uses NumPy's power, which may differ from C's pow in the last bit."""
    result = np.result_type(base, exponent)
    if result.itemsize >= 8:
        return np.power(base, exponent)
    wide = np.power(np.asarray(base, np.float64), np.asarray(exponent, np.float64))
    return wide.astype(result) if wide.ndim else result.type(wide)


def row_mean(x):
    """The mean over each row (the last axis) of a (rows, row_length) array, kept 2-D."""
    return x.sum(axis=-1, keepdims=True) / x.shape[-1]


def col_mean(x):
    """The mean over each column (the first axis) of a (rows, cols) array, kept 2-D."""
    return x.sum(axis=0, keepdims=True) / x.shape[0]


def grid_row_mean(x):
    """A grid op's row means: over the last axis, accumulated in double, kept (..., rows, 1)."""
    x64 = np.asarray(x, np.float64)
    return x64.sum(axis=-1, keepdims=True, dtype=np.float64) / np.float64(x64.shape[-1])


def grid_row_sum(x):
    """A grid op's row sums: over the last axis, accumulated in double, kept (..., rows, 1)."""
    return np.asarray(x, np.float64).sum(axis=-1, keepdims=True, dtype=np.float64)


def grid_col_sum(x):
    """A grid op's column sums: over each slice's rows (axis -2), accumulated in double, kept
    (..., 1, cols)."""
    return np.asarray(x, np.float64).sum(axis=-2, keepdims=True, dtype=np.float64)


def grid_col_mean(x):
    """A grid op's column means: over each slice's rows (axis -2), accumulated in double, kept
    (..., 1, cols)."""
    x64 = np.asarray(x, np.float64)
    return x64.sum(axis=-2, keepdims=True, dtype=np.float64) / np.float64(x64.shape[-2])


# A grid op's reductions of per-row (or per-column) values (..., rows, 1): one per slice, kept
# (..., 1, 1) to broadcast against the slice's values, over grid_count(x) values each.
def grid_total_sum(x):
    return np.sum(np.asarray(x, np.float64), axis=(-2, -1), keepdims=True, dtype=np.float64)


def grid_total_sum_squares(x):
    x64 = np.asarray(x, np.float64)
    return np.sum(x64 * x64, axis=(-2, -1), keepdims=True, dtype=np.float64)


def grid_total_max(x):
    """Per slice, as total_max: NaN if any is NaN, of zeros +0 if any is +0."""
    x64 = np.asarray(x, np.float64)
    m = np.max(x64, axis=(-2, -1), keepdims=True, initial=-np.inf)
    positive_zero = np.any((x64 == 0) & ~np.signbit(x64), axis=(-2, -1), keepdims=True)
    return np.where(m == 0, np.where(positive_zero, 0.0, -0.0), m)


def grid_count(x):
    """The values of one slice of ``x`` (..., rows, 1) or (..., 1, cols)."""
    return x.shape[-2] * x.shape[-1]


def total_sum(x):
    """A whole-tensor sum, accumulated in double (NumPy's pairwise summation)."""
    return np.sum(np.asarray(x, np.float64), dtype=np.float64)


def total_sum_squares(x):
    """A whole-tensor sum of squares, each square taken in double, accumulated in double."""
    x64 = np.asarray(x, np.float64)
    return np.sum(x64 * x64, dtype=np.float64)


def total_max(x):
    """A whole-tensor maximum in double: -inf for no elements, NaN if any element is NaN; of
    zeros, +0 if any is +0 (as the C kernels: the result does not depend on the order)."""
    x64 = np.asarray(x, np.float64)
    m = np.max(x64, initial=-np.inf)
    if m == 0:
        m = np.float64(0.0) if np.any((x64 == 0) & ~np.signbit(x64)) else np.float64(-0.0)
    return m


# A reduction's result from its accumulated value over n elements (opgen/expr/totals.py FINISH).
def finish_none(x, n):
    return x


def finish_mean(x, n):
    with np.errstate(all="ignore"):
        return np.float64(x) / np.float64(n)


def finish_sqrt(x, n):
    return np.sqrt(np.float64(x))


def finish_sqrt_mean(x, n):
    return np.sqrt(finish_mean(x, n))
