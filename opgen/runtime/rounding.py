"""Stochastic rounding of float32 into float16 and bfloat16: the NumPy side of the definition.

Stochastic rounding (SR) rounds a float32 value to one of its two neighbours in the 16-bit
format, going up with probability equal to the distance from the lower neighbour in units of
the gap, so the result is unbiased: E[round(x)] = x. The random bits are *counter-based*:
each element's 32 bits are a pure function of (seed, tensor, slot, flat index), never of a
generator's state. So the result does not depend on the backend (C, CUDA, NumPy), on the
number of threads, on the schedule or on how a tensor is split into chunks, and every backend
gives the same bits. The C and CUDA kernels implement the same definition, word for word:

All integer arithmetic is unsigned, modulo 2**64 (or 2**32)::

    GOLDEN = 0x9E3779B97F4A7C15
    mix64(z)             = splitmix64's finalizer:
                           z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
                           z = (z ^ (z >> 27)) * 0x94D049BB133111EB
                           return z ^ (z >> 31)
    call_key(seed, t)    = mix64(seed + GOLDEN * (t + 1))     # t: 0 in a one-tensor call,
                                                              #    the tensor's position in a multi-tensor call
    slot_key(key, s)     = mix64(key + GOLDEN * (s + 1))      # s: which stored tensor (0, 1, 2...)
    random_bits(skey, i) = uint32(mix64(skey + GOLDEN * (i + 1)) >> 32)   # i: flat index, >= 0

    round_bfloat16(x, r):  u = bits of x
        NaN ((u & 0x7fffffff) > 0x7f800000): ((u >> 16) & 0x8000) | 0x7fc0   (quiet, sign kept)
        else: (u + (r >> 16)) >> 16          (inf stays inf; above the max finite may go to inf)

    round_float16(x, r):  u = bits of x, sign = u & 0x80000000, ax = u & 0x7fffffff
        ax >= 0x7f800000: inf as (sign >> 16) | 0x7c00, NaN as (sign >> 16) | 0x7e00 (one quiet NaN)
        ax <  0x38800000 (|x| < 2**-14, the half grid is multiples of 2**-24), in float32:
            scaled = |x| * 2**24; m = trunc(scaled); frac = scaled - m          (all exact)
            m += (float32(r >> 8) * 2**-24 < frac);  return (sign >> 16) | m
        else: t = (ax + (r & 0x1fff)) & ~0x1fff       (random bits below the half ulp, truncate)
            t >= 0x47800000 (2**16 or more): (sign >> 16) | 0x7c00   (inf)
            else: (sign >> 16) | (((t >> 23) - 112) << 10) | ((t >> 13) & 0x3ff)

An exactly representable value is returned unchanged for every r, and the result is always one
of the two neighbours of x, so it is never more than one ulp from round-to-nearest.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import ml_dtypes
import numpy as np

__all__ = ["GOLDEN", "NEAREST", "Rounding", "call_key", "mix64", "random_bits", "round_stochastic", "slot_key"]

GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
_MASK64 = (1 << 64) - 1

_F16 = np.dtype(np.float16)
_BF16 = np.dtype(ml_dtypes.bfloat16)


def _mix64_int(z: int) -> int:
    z &= _MASK64
    z = ((z ^ (z >> 30)) * _M1) & _MASK64
    z = ((z ^ (z >> 27)) * _M2) & _MASK64
    return z ^ (z >> 31)


def _mix64_array(z: np.ndarray) -> np.ndarray:
    """mix64 of a uint64 array (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(_M1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(_M2)
        return z ^ (z >> np.uint64(31))


def mix64(z):
    """splitmix64's finalizer, modulo 2**64. A Python int gives an int (reduced mod 2**64
    first); an array (or NumPy integer) gives uint64 (signed inputs are taken mod 2**64)."""
    if isinstance(z, (int, np.integer)) and not isinstance(z, (bool, np.bool_)):
        if isinstance(z, np.integer):
            return np.uint64(_mix64_int(int(z)))
        return _mix64_int(z)
    z = np.asarray(z)
    if z.dtype.kind not in "iu":
        raise TypeError(f"mix64 takes integers, not {z.dtype}")
    return _mix64_array(z.astype(np.uint64))


def _u64(name: str, value: int) -> int:
    value = operator.index(value)
    if not 0 <= value <= _MASK64:
        raise ValueError(f"{name} must be in [0, 2**64), got {value}")
    return value


def call_key(seed: int, tensor: int) -> int:
    """The key of one tensor of a call: tensor is 0 in a one-tensor call, t in a multi-tensor one."""
    seed, tensor = _u64("seed", seed), _u64("tensor", tensor)
    return _mix64_int(seed + GOLDEN * (tensor + 1))


def slot_key(key: int, slot: int) -> int:
    """The key of one stored tensor (slot 0, 1, 2...) under a call key."""
    key, slot = _u64("key", key), _u64("slot", slot)
    return _mix64_int(key + GOLDEN * (slot + 1))


def random_bits(skey: int, index) -> np.ndarray:
    """The 32 random bits (uint32, shaped like index) of the elements at the flat indices index
    (integers >= 0) of the stored tensor whose key is skey."""
    skey = _u64("skey", skey)
    idx = np.asarray(index)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"index must be integers, not {idx.dtype}")
    if idx.dtype.kind == "i" and idx.size and idx.min() < 0:
        raise ValueError("index must be >= 0")
    with np.errstate(over="ignore"):
        z = np.uint64(skey) + np.uint64(GOLDEN) * (idx.astype(np.uint64) + np.uint64(1))
        hi = _mix64_array(np.asarray(z, np.uint64)) >> np.uint64(32)
    return np.asarray(hi, np.uint64).astype(np.uint32)


def _round_bfloat16_bits(u: np.ndarray, r: np.ndarray) -> np.ndarray:
    nan = ((u >> 16) & 0x8000) | 0x7FC0
    with np.errstate(over="ignore"):
        rounded = (u + (r >> 16)) >> 16  # a NaN's sum may wrap; it is not selected
    return np.where((u & 0x7FFFFFFF) > 0x7F800000, nan, rounded).astype(np.uint16)


def _round_float16_bits(u: np.ndarray, r: np.ndarray) -> np.ndarray:
    sign = (u & 0x80000000) >> 16
    ax = u & 0x7FFFFFFF
    out = np.empty(u.shape, np.uint32)

    special = ax >= 0x7F800000  # inf, and NaN as one quiet NaN of its sign (the C kernels' bits)
    if special.any():
        out[special] = sign[special] | np.where(ax[special] > 0x7F800000, 0x7E00, 0x7C00).astype(np.uint32)

    sub = ax < 0x38800000  # |x| < 2**-14: half subnormals (and the smallest normal on the way up)
    if sub.any():
        a = ax[sub].view(np.float32)
        scaled = a * np.float32(2.0**24)  # exact
        m = scaled.astype(np.uint32)  # trunc
        frac = scaled - m.astype(np.float32)  # exact
        up = (r[sub] >> 8).astype(np.float32) * np.float32(2.0**-24) < frac
        out[sub] = sign[sub] | (m + up)

    normal = ~(special | sub)
    if normal.any():
        t = (ax[normal] + (r[normal] & 0x1FFF)) & np.uint32(~0x1FFF & 0xFFFFFFFF)
        s = sign[normal]
        # t >= 0x38800000 here, so the exponent field below is >= 1 and the shift never wraps.
        finite = s | (((t >> 23) - 112) << 10) | ((t >> 13) & 0x3FF)
        out[normal] = np.where(t >= 0x47800000, s | 0x7C00, finite)
    return out.astype(np.uint16)


def round_stochastic(values: np.ndarray, dtype, bits: np.ndarray) -> np.ndarray:
    """Round float32 values to dtype (float16 or bfloat16) stochastically with the per-element
    random bits (uint32, the same shape as values); returns a new array of dtype."""
    values = np.asarray(values)
    bits = np.asarray(bits)
    dtype = np.dtype(dtype)
    if values.dtype != np.float32:
        raise TypeError(f"values must be float32, not {values.dtype}")
    if bits.dtype != np.uint32:
        raise TypeError(f"bits must be uint32, not {bits.dtype}")
    if bits.shape != values.shape:
        raise ValueError(f"bits has shape {bits.shape}, values {values.shape}")
    x = np.ascontiguousarray(values).reshape(-1)
    u = x.view(np.uint32)
    r = np.ascontiguousarray(bits).reshape(-1)
    if dtype == _BF16:
        out = _round_bfloat16_bits(u, r)
    elif dtype == _F16:
        out = _round_float16_bits(u, r)
    else:
        raise ValueError(f"stochastic rounding goes to float16 or bfloat16, not {dtype}")
    return out.view(dtype).reshape(values.shape)


@dataclass(frozen=True)
class Rounding:
    """How a call stores into 16-bit types: to nearest even, or stochastically with the
    random bits of ``seed``."""

    stochastic: bool = False
    seed: int = 0

    @property
    def kernel_args(self) -> tuple[int, int]:
        """The kernels' (rounding, seed) arguments."""
        return (1, self.seed) if self.stochastic else (0, 0)

    def for_tensor(self, tensor: int) -> "Rounding":
        """Tensor ``tensor`` of a multi-tensor call run as a call of its own: the seed whose
        key, call_key(seed', 0), is the multi kernel's call_key(seed, tensor)."""
        return Rounding(True, (self.seed + GOLDEN * tensor) & _MASK64) if self.stochastic else self


NEAREST = Rounding()
