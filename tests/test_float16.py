"""float16 storage in the C kernels: branch-free conversions that vectorize, and stores
narrowed a block at a time with the CPU's conversion (F16C / AVX-512) where it has one.
Every half pattern must load to its exact float value, and every float32 value must store
as NumPy's round-to-nearest-even float16 (NaN stays NaN), whichever path a store takes:
vector loop, block narrowing, scalar tail, one tensor or many."""

from __future__ import annotations

import numpy as np
import pytest

import cases
import generated
from generated import set_flush_denormal, use_backend
from opgen.runtime import available_backends

F16 = np.dtype(np.float16)

# float32 patterns around float16's edges: ties to even both ways at 1 (0x3C001000: a tie
# rounding down, 0x3C003000: up), just off a tie, the largest half (65504) and the values
# rounding to it or to inf (65519.99 stays, 65520 is a tie to inf), half subnormals and
# their ties (2**-25 rounds to 0, 3 * 2**-25 up), the smallest half subnormal, float
# subnormals (all round to signed zero), infinities, NaNs with payloads, signed zeros.
SPECIAL_BITS = [0x3C001000, 0x3C003000, 0x3C000FFF, 0x3C001001, 0x477FE000, 0x477FEFFF, 0x477FF000, 0xC77FF000,
                0x47800000, 0x33000000, 0x33400000, 0x33800000, 0xB3400000, 0x387FC000, 0x387FE000, 0x00000001,
                0x807FFFFF, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF812345, 0x7FBFFFFF,
                0x80000000, 0x00000000]


def _same_halves(got: np.ndarray, expected: np.ndarray) -> None:
    """Bit equality, except that a NaN need only be a NaN of the same sign (NumPy keeps a
    signalling payload that the CPU's conversion quiets)."""
    got_bits, want_bits = got.view(np.uint16), expected.view(np.uint16)
    nan = np.isnan(expected)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got_bits[~nan], want_bits[~nan])
    np.testing.assert_array_equal(got_bits[nan] & 0x8000, want_bits[nan] & 0x8000)


def test_every_half_pattern_loads_exactly(backend):
    """mp_sgd with lr = 1 and a zero float32 master weight computes weight32 = 0 - grad in
    float32: each of the 65,536 float16 gradients, negated exactly (NaN as NaN; both zeros
    give +0), and the float16 weight stores it back unchanged."""
    grad = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(F16)
    weight32 = np.zeros(grad.size, np.float32)
    weight = generated.mp_sgd_update(np.zeros(grad.size, F16), grad, weight32, lr=1.0)
    expected32 = np.float32(0) - grad.astype(np.float32)
    nan = np.isnan(grad)
    np.testing.assert_array_equal(np.isnan(weight32), nan)
    np.testing.assert_array_equal(weight32.view(np.uint32)[~nan], expected32.view(np.uint32)[~nan])
    _same_halves(weight, expected32.astype(F16))


@pytest.mark.parametrize("layout", ["normal values only", "specials scattered", "specials in runs"])
@pytest.mark.parametrize("size", [1, 7, 8, 9, 15, 16, 17, 511, 512, 513, 4099, 40_000])
def test_long_stores_are_numpys_rounding_in_every_block_and_lane(backend, size, layout):
    """float32 values of every magnitude stored into float16 (mp_sgd, lr = 0): every size
    around a vector (8, 16) and a block (512), specials anywhere in a vector or alone, in one
    call and in a multi-tensor call (two threads share the elements from 16K up)."""
    values = cases.float32_values_with_specials(size, layout, SPECIAL_BITS, 2.0, (-30, 18))
    with np.errstate(all="ignore"):
        expected = values.astype(F16)
    out = generated.mp_sgd_update(np.zeros(size, F16), np.zeros(size, F16), values.copy(), lr=0.0)
    _same_halves(out, expected)
    halves = [values[: size // 2].copy(), values[size // 2:].copy()]
    weights = [np.zeros(len(h), F16) for h in halves]
    generated.mp_sgd_update_multi(weights, [np.zeros_like(w) for w in weights], halves, lr=0.0, out=weights)
    _same_halves(np.concatenate(weights), expected)


@pytest.mark.skipif("c" not in available_backends(), reason="no C compiler")
def test_every_float32_exponent_with_random_mantissas_stores_as_numpy_does():
    """All 256 float32 exponents x 512 random mantissas x both signs, C against NumPy's
    conversion, with the flush-to-zero mode on and off (no result may change: a float32
    subnormal is below half the smallest half subnormal either way)."""
    rng = np.random.default_rng(16)
    exponents = np.repeat(np.arange(256, dtype=np.uint32), 512)
    bits = (exponents << 23) | rng.integers(0, 1 << 23, exponents.size, dtype=np.uint32)
    bits = np.concatenate([bits, bits | 0x80000000])
    values = bits.view(np.float32)
    with np.errstate(all="ignore"):
        expected = values.astype(F16)
    try:
        for flush in (False, True):
            set_flush_denormal(flush)
            with use_backend("c"):
                out = generated.mp_sgd_update(np.zeros(values.size, F16), np.zeros(values.size, F16), values.copy(),
                                              lr=0.0)
            _same_halves(out, expected)
    finally:
        set_flush_denormal(False)
