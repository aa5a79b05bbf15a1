"""Stochastic rounding, the NumPy side (opgen/runtime/rounding.py): the counter-based random
bits and the float32 -> float16 / bfloat16 rounding, against independent scalar references
written from the definition with Python ints, struct and Fraction; exact probabilities where
the random bits can be enumerated, and unbiasedness over many counter-based draws."""

from __future__ import annotations

import math
import struct
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest

from opgen.runtime.rounding import (
    GOLDEN,
    call_key,
    mix64,
    random_bits,
    round_stochastic,
    slot_key,
)

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
DTYPES = [pytest.param(F16, id="float16"), pytest.param(BF16, id="bfloat16")]
M64 = (1 << 64) - 1
F16_MAX_BITS, BF16_MAX_BITS = 0x7BFF, 0x7F7F  # 65504, 3.3895e38
INF_BITS = {F16: 0x7C00, BF16: 0x7F80}


# ---------------------------------------------------------------- scalar references


def ref_mix64(z: int) -> int:
    z &= M64
    z ^= z >> 30
    z = (z * 0xBF58476D1CE4E5B9) & M64
    z ^= z >> 27
    z = (z * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def ref_key(key: int, n: int) -> int:
    return ref_mix64((key + 0x9E3779B97F4A7C15 * (n + 1)) & M64)


def ref_bits(skey: int, i: int) -> int:
    return ref_key(skey, i) >> 32


def f32_bits(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


def f32_value(u: int) -> float:
    return struct.unpack("<f", struct.pack("<I", u))[0]


def ref_bf16(u: int, r: int) -> int:
    if (u & 0x7FFFFFFF) > 0x7F800000:
        return ((u >> 16) & 0x8000) | 0x7FC0
    return (u + (r >> 16)) >> 16


def ref_f16(u: int, r: int) -> int:
    sign, ax = (u >> 16) & 0x8000, u & 0x7FFFFFFF
    if ax >= 0x7F800000:  # inf, or the one quiet NaN of each sign (as the C kernels store it)
        return sign | (0x7E00 if ax > 0x7F800000 else 0x7C00)
    if ax < 0x38800000:  # exact rational arithmetic instead of float32
        scaled = Fraction(f32_value(ax)) * 2**24
        m = math.floor(scaled)
        return sign | (m + (Fraction(r >> 8, 2**24) < scaled - m))
    t = (ax + (r & 0x1FFF)) & ~0x1FFF
    if t >= 0x47800000:
        return sign | 0x7C00
    return sign | (((t >> 23) - 112) << 10) | ((t >> 13) & 0x3FF)


REF = {F16: ref_f16, BF16: ref_bf16}


def sr_bits(u, r, dtype) -> np.ndarray:
    """round_stochastic on bit patterns, giving bit patterns (uint16)."""
    x = np.asarray(u, np.uint32).view(np.float32)
    r = np.broadcast_to(np.asarray(r, np.uint32), x.shape).copy()
    out = round_stochastic(x, dtype, r)
    assert out.dtype == dtype and out.shape == x.shape
    return out.view(np.uint16)


def check_against_reference(u, r, dtype):
    u, r = np.asarray(u, np.uint32), np.asarray(r, np.uint32)
    got = sr_bits(u, r, dtype)
    want = [REF[dtype](int(a), int(b)) for a, b in zip(u, r)]
    bad = [(hex(a), hex(b), hex(g), hex(w)) for a, b, g, w in zip(u, r, got, want) if g != w]
    assert not bad, f"{len(bad)} mismatches (x bits, r, got, want): {bad[:10]}"


def rtn_bits(u, dtype) -> np.ndarray:
    """Round to nearest even (NumPy / ml_dtypes)."""
    with np.errstate(invalid="ignore", over="ignore"):
        return np.asarray(u, np.uint32).view(np.float32).astype(dtype).view(np.uint16)


def target_values(dtype, include_inf=True) -> np.ndarray:
    """Every non-NaN bit pattern of the 16-bit format, as float32 bits."""
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    v = h.view(dtype).astype(np.float32)
    keep = ~np.isnan(v) if include_inf else np.isfinite(v)
    return v[keep].view(np.uint32), h[keep]


# ---------------------------------------------------------------- 1: the random bits


def test_mix64_known_answers():
    """splitmix64 seeded with 0 outputs mix64(k * GOLDEN): its published first two outputs."""
    assert GOLDEN == 0x9E3779B97F4A7C15
    assert mix64(0) == 0
    assert mix64(GOLDEN) == 0xE220A8397B1DCDAF
    assert mix64(2 * GOLDEN) == 0x6E789E6AA1B965F4
    assert mix64(GOLDEN) == ref_mix64(GOLDEN)


def test_mix64_array_matches_python_ints():
    rng = np.random.default_rng(1)
    zs = [0, 1, 2, M64, M64 - 1, 1 << 63, (1 << 63) - 1, GOLDEN]
    zs += [int(z) for z in rng.integers(0, 2**64, 300, dtype=np.uint64)]
    got = mix64(np.array(zs, np.uint64))
    assert got.dtype == np.uint64
    assert [int(g) for g in got] == [ref_mix64(z) for z in zs]
    assert [mix64(z) for z in zs] == [ref_mix64(z) for z in zs]
    assert isinstance(mix64(5), int)
    assert mix64(-1) == ref_mix64(M64)  # ints are taken modulo 2**64


SEEDS = [0, 1, 2, 12345, 2**32 - 1, 2**32, 2**63, M64 - 1, M64]


@pytest.mark.parametrize("seed", SEEDS)
def test_keys_and_bits_match_python_ints(seed):
    rng = np.random.default_rng(seed % 2**32)
    indices = [0, 1, 2, 3, 1000, 2**31 - 1, 2**31, 2**32, 2**40 + 7, 2**62, 2**62 + 1, 2**63 - 1]
    indices += [int(i) for i in rng.integers(0, 2**63 - 1, 20, dtype=np.int64)]
    idx = np.array(indices, np.int64)
    for tensor in (0, 1, 2, 7, 1000):
        key = call_key(seed, tensor)
        assert key == ref_key(seed, tensor)
        for slot in (0, 1, 2, 5):
            skey = slot_key(key, slot)
            assert skey == ref_key(key, slot)
            got = random_bits(skey, idx)
            assert got.dtype == np.uint32 and got.shape == idx.shape
            assert [int(g) for g in got] == [ref_bits(skey, i) for i in indices]


def test_random_bits_are_counter_based():
    """An element's bits depend only on (key, index): any subset, order, shape or chunking of
    the indices gives the same bits, which is what makes every backend and thread count agree."""
    skey = slot_key(call_key(42, 0), 1)
    full = random_bits(skey, np.arange(10_000, dtype=np.int64))
    assert np.array_equal(random_bits(skey, np.arange(5000, 10_000)), full[5000:])
    perm = np.random.default_rng(0).permutation(10_000)
    assert np.array_equal(random_bits(skey, perm), full[perm])
    assert np.array_equal(random_bits(skey, np.arange(10_000).reshape(100, 100)), full.reshape(100, 100))
    assert np.array_equal(random_bits(skey, np.arange(10_000, dtype=np.uint64)), full)
    assert int(random_bits(skey, 17)) == int(full[17]) and random_bits(skey, 17).shape == ()
    assert random_bits(skey, np.zeros(0, np.int64)).shape == (0,)


def test_streams_differ_and_look_uniform():
    """Different seeds, tensors and slots give different streams; the bits are balanced."""
    keys = {slot_key(call_key(s, t), k) for s in (0, 1, M64) for t in range(4) for k in range(4)}
    assert len(keys) == 3 * 4 * 4
    n = 1 << 16
    streams = {k: random_bits(k, np.arange(n)) for k in keys}
    firsts = {tuple(v[:4]) for v in streams.values()}
    assert len(firsts) == len(keys)
    bits = streams[slot_key(call_key(0, 0), 0)]
    ones = np.unpackbits(bits.view(np.uint8)).reshape(n, 32).mean(axis=0)
    assert np.all(np.abs(ones - 0.5) < 5 * 0.5 / math.sqrt(n))  # each bit is a fair coin


def test_random_bits_validation():
    with pytest.raises(ValueError):
        random_bits(0, np.array([0, -1]))
    with pytest.raises(TypeError):
        random_bits(0, np.array([0.5]))
    with pytest.raises(ValueError):
        call_key(-1, 0)
    with pytest.raises(ValueError):
        call_key(2**64, 0)
    with pytest.raises(ValueError):
        slot_key(0, -1)


# ---------------------------------------------------------------- 2: against the scalar reference


@pytest.mark.parametrize("dtype", DTYPES)
def test_random_values_match_reference(dtype):
    rng = np.random.default_rng(7)
    n = 4000
    # all float32 bit patterns (NaN, inf, huge, tiny, subnormal)
    any_bits = rng.integers(0, 2**32, n, dtype=np.uint32)
    # values near the format's range, log-uniform magnitudes, both signs
    top = 17 if dtype == F16 else 128
    mag = np.exp2(rng.uniform(-27 if dtype == F16 else -135, top, n)).astype(np.float32)
    near = (mag * rng.choice([-1, 1], n)).astype(np.float32).view(np.uint32)
    u = np.concatenate([any_bits, near])
    r = rng.integers(0, 2**32, u.size, dtype=np.uint32)
    check_against_reference(u, r, dtype)


def edge_bits(dtype) -> list[int]:
    """Edge classes as float32 bit patterns (each also with the sign bit set)."""
    e = [
        0x00000000, 0x00000001, 0x00000002, 0x007FFFFF, 0x00400000,  # 0, float32 subnormals
        0x00800000, 0x3F800000, 0x3F800001, 0x3F7FFFFF, 0x3F808000, 0x3F801000,  # 1 and near
        0x7F800000, 0x7F800001, 0x7FC00000, 0x7FFFFFFF, 0x7FA00000, 0x7F802000, 0x7FC12345,
        0x7F7FFFFF, 0x7F7F0000, 0x7F7F8000, 0x7F7F8001, 0x7F7EFFFF, 0x7F7FFFFE,  # bf16 max region
        0x477FE000, 0x477FE001, 0x477FF000, 0x477FEFFF, 0x477FFFFF, 0x47800000, 0x477FDFFF,
        0x38800000, 0x387FFFFF, 0x38800001, 0x38000000, 0x33800000, 0x33000000, 0x33000001,
        0x337FFFFF, 0x32FFFFFF, 0x387FC000, 0x387FE000, 0x387FA000, 0x34000000, 0x34400000,
        0x3C001000, 0x3C000FFF, 0x3C001001, 0x3C003000,  # float16 ties around 1
    ]
    return e + [b | 0x80000000 for b in e]


@pytest.mark.parametrize("dtype", DTYPES)
def test_edge_values_match_reference(dtype):
    rs = [0, 1, 0xFF, 0x100, 0xFFF, 0x1000, 0x1FFF, 0x2000, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
          0x7FFFFFFF, 0x80000000, 0xFFFF0000, 0xFFFFFF00, 0xFFFFFFFF]
    rs += [int(v) for v in np.random.default_rng(3).integers(0, 2**32, 20, dtype=np.uint32)]
    es = edge_bits(dtype)
    u = np.repeat(np.array(es, np.uint32), len(rs))
    r = np.tile(np.array(rs, np.uint32), len(es))
    check_against_reference(u, r, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_exactly_representable_values_are_unchanged(dtype):
    """Every non-NaN value of the format (±0, subnormals, smallest normal, max finite, ±inf)
    comes back with the same bits, for the extreme and for random r."""
    u, h = target_values(dtype)
    rng = np.random.default_rng(11)
    for r in (0, 0xFFFFFFFF, 0x7FFFFFFF, 0x80000000, rng.integers(0, 2**32, u.size, dtype=np.uint32)):
        assert np.array_equal(sr_bits(u, r, dtype), h)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nans(dtype):
    """A NaN stays a NaN with its sign: the quiet 0x7fc0 in bfloat16, 0x7e00 in float16
    (the C kernels' bits, whatever the payload)."""
    payloads = [0x400000, 0x400001, 0x7FFFFF, 0x412345, 0x600000, 0x000001, 0x002000, 0x200000]
    u = np.array([s | 0x7F800000 | p for s in (0, 0x80000000) for p in payloads], np.uint32)
    rs = np.array([0, 0xFFFFFFFF, 0x12345678], np.uint32)
    for r in rs:
        got = sr_bits(u, r, dtype)
        assert np.all(np.isnan(got.view(dtype).astype(np.float32)))
        assert np.array_equal(got >> 15, u >> 31)  # sign kept
        if dtype == BF16:
            assert np.array_equal(got, ((u >> 16) & 0x8000) | 0x7FC0)
        else:
            assert np.array_equal(got, ((u >> 16) & 0x8000) | 0x7E00)


@pytest.mark.parametrize("dtype", DTYPES)
def test_infinities(dtype):
    u = np.array([0x7F800000, 0xFF800000], np.uint32)
    for r in (0, 0xFFFFFFFF, 0x8000_8000):
        got = sr_bits(u, r, dtype)
        assert list(got) == [INF_BITS[dtype], INF_BITS[dtype] | 0x8000]


# Exact probabilities: the random bits that matter are enumerated, each exactly once.


def all_low_bits(dtype) -> np.ndarray:
    """r covering every value of the bits that decide the rounding, once each."""
    if dtype == BF16:
        return np.arange(1 << 16, dtype=np.uint32) << 16  # r >> 16
    return np.arange(1 << 13, dtype=np.uint32)  # r & 0x1fff (normal halves)


@pytest.mark.parametrize("dtype", DTYPES)
def test_exact_round_up_counts(dtype):
    """Over every value of the deciding bits, x goes up exactly (x - lo) / (hi - lo) of the time:
    ties half of the time, a quarter ulp a quarter of the time, and so on."""
    r = all_low_bits(dtype)
    drop = 16 if dtype == BF16 else 13
    rng = np.random.default_rng(5)
    lo_vals = [0x3F80, 0x4049, 0x0080, 0x0000] if dtype == BF16 else [0x3C00, 0x4248, 0x0400, 0x7800]
    for lo_h in lo_vals:
        lo_u = f32_bits(float(np.array([lo_h], np.uint16).view(dtype)[0]))
        for low in [0, 1, 1 << (drop - 1), 1 << (drop - 2), 3 << (drop - 2), (1 << drop) - 1,
                    int(rng.integers(1, 1 << drop))]:
            for sign in (0, 0x80000000):
                got = sr_bits(np.full(r.size, sign | (lo_u + low), np.uint32), r, dtype)
                assert set(np.unique(got & 0x7FFF)) <= {lo_h, lo_h + 1}
                assert np.count_nonzero((got & 0x7FFF) == lo_h + 1) == low
                assert np.all((got >> 15) == (sign >> 31))


@pytest.mark.parametrize("dtype", DTYPES)
def test_overflow_to_inf_with_the_right_probability(dtype):
    """Above the max finite the value goes to inf exactly (x - max) / ulp of the time; 2**16
    and above (float16) is always inf."""
    r = all_low_bits(dtype)
    drop = 16 if dtype == BF16 else 13
    max_h = BF16_MAX_BITS if dtype == BF16 else F16_MAX_BITS
    max_u = f32_bits(float(np.array([max_h], np.uint16).view(dtype)[0]))
    assert max_u == (0x7F7F0000 if dtype == BF16 else 0x477FE000)
    for low in [0, 1, 1 << (drop - 1), (1 << (drop - 1)) + 1, (1 << drop) - 1]:
        for sign in (0, 0x80000000):
            got = sr_bits(np.full(r.size, sign | (max_u + low), np.uint32), r, dtype) & 0x7FFF
            assert set(np.unique(got)) <= {max_h, INF_BITS[dtype]}
            assert np.count_nonzero(got == INF_BITS[dtype]) == low
    if dtype == F16:
        for x in (65536.0, 65536.0 * 1.5, 1e9, 3e38):
            for sign in (1, -1):
                got = sr_bits(np.full(r.size, f32_bits(sign * x), np.uint32), r, dtype)
                assert np.all(got == (INF_BITS[dtype] | (0x8000 if sign < 0 else 0)))


@pytest.mark.parametrize("m", [0, 1, 2, 100, 255])
@pytest.mark.parametrize("j", [0, 1, 0x4000, 0x8000, 0xC000, 0xFFFF])
def test_half_subnormal_exact_round_up_counts(m, j):
    """x = (m + j / 2**16) * 2**-24, a half subnormal (or zero) plus a fraction of its ulp: over
    r >> 8 = s * 2**8 for every s < 2**16, x goes up for exactly j of them."""
    x = (m * 65536 + j) * 2.0**-40
    assert float(np.float32(x)) == x
    s = np.arange(1 << 16, dtype=np.uint32)
    for sign in (1.0, -1.0):
        got = sr_bits(np.full(s.size, f32_bits(sign * x), np.uint32), s << 16, F16)
        assert set(np.unique(got & 0x7FFF)) <= {m, m + 1}
        assert np.count_nonzero((got & 0x7FFF) == m + 1) == j
        assert np.all((got >> 15) == (sign < 0))


def test_largest_half_subnormal_rounds_up_to_the_smallest_normal():
    x = np.float32(1023.5 * 2.0**-24)
    got = sr_bits(np.full(2, x.view(np.uint32)), np.array([0, 0xFFFFFFFF], np.uint32), F16)
    assert list(got) == [0x0400, 0x03FF]  # up when (r >> 8) * 2**-24 < frac: small r goes up
    assert float(np.array([0x0400], np.uint16).view(F16)[0]) == 2.0**-14


# ---------------------------------------------------------------- 3: unbiasedness


VALUES = [1e-7, 3e-5, 6.1e-5, 0.1, 1 / 3, 1.0 + 2**-9, 1.0 + 2**-12, 2.5e-3, 1000.3, 60000.5,
          65519.0, 65530.0, 1e30, 3.4e38]
N_DRAWS = 200_000
# inf stands, in the mean, for the power of two it would be with an unbounded exponent
BEYOND_MAX = {F16: 2.0**16, BF16: 2.0**128}


def neighbours(x32: np.float32, dtype):
    """The two values of the format around |x| (lo <= |x| <= hi), from bit arithmetic around
    round-to-nearest: magnitudes grow with the bits; inf (as BEYOND_MAX) after the max finite."""
    b = int(rtn_bits(np.array([abs(x32)], np.float32).view(np.uint32), dtype)[0])
    cands = [float(np.array([c], np.uint16).view(dtype)[0]) for c in (b - 1, b, b + 1) if c >= 0]
    cands = [BEYOND_MAX[dtype] if c == math.inf else c for c in cands if not math.isnan(c)]
    a = abs(float(x32))
    return max(c for c in cands if c <= a), min(c for c in cands if c >= a)


@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize(
    "dtype,value",
    [(F16, v) for v in VALUES if v < 65536] + [(BF16, v) for v in VALUES],  # 2**16+: always inf
    ids=lambda p: p.name if isinstance(p, np.dtype) else repr(p),
)
def test_unbiased(dtype, sign, value):
    """With the counter-based bits of 200,000 indices, every result is one of the two neighbours
    and the mean is the float32 value within 5 standard errors of the two-point distribution
    (above the max finite the upper neighbour is inf, counted as the next power of two)."""
    x32 = np.float32(sign * value)
    lo, hi = neighbours(x32, dtype)
    assert lo < hi or lo == abs(float(x32))
    skey = slot_key(call_key(int(x32.view(np.uint32)), 3), 1)
    bits = random_bits(skey, np.arange(N_DRAWS, dtype=np.int64))
    got = round_stochastic(np.full(N_DRAWS, x32), dtype, bits).astype(np.float64)
    assert np.all(np.signbit(got) == (sign < 0))
    mags = np.abs(got)
    mags[mags == math.inf] = BEYOND_MAX[dtype]
    assert np.all((mags == lo) | (mags == hi)), np.unique(mags)
    x = abs(float(x32))
    if hi == lo:
        assert np.all(mags == x)
        return
    p = (x - lo) / (hi - lo)
    se = (hi - lo) * math.sqrt(p * (1 - p) / N_DRAWS)
    assert abs(mags.mean() - x) <= 5 * se, (mags.mean(), x, se)
    assert 0 < np.count_nonzero(mags == hi) < N_DRAWS  # both neighbours occur


# ---------------------------------------------------------------- 4: against round-to-nearest


@pytest.mark.parametrize("dtype", DTYPES)
def test_within_one_ulp_of_round_to_nearest(dtype):
    """SR and round-to-nearest land on the same or adjacent values (bit patterns one apart,
    same sign), for random float32 values over the whole range and random bits; the SR result
    is the floor or the ceiling in magnitude."""
    rng = np.random.default_rng(13)
    n = 200_000
    u = rng.integers(0, 2**32, n, dtype=np.uint32)
    top = 17 if dtype == F16 else 128
    mag = np.exp2(rng.uniform(-27 if dtype == F16 else -135, top, n)).astype(np.float32)
    u = np.concatenate([u, mag.view(np.uint32), mag.view(np.uint32) | 0x80000000])
    u = u[~np.isnan(u.view(np.float32))]
    r = rng.integers(0, 2**32, u.size, dtype=np.uint32)
    sr, rn = sr_bits(u, r, dtype).astype(np.int64), rtn_bits(u, dtype).astype(np.int64)
    assert np.array_equal(sr >> 15, rn >> 15)
    assert np.all(np.abs((sr & 0x7FFF) - (rn & 0x7FFF)) <= 1)
    # floor or ceiling in magnitude: the pattern before a result >= |x| is <= |x|, the one
    # after a result <= |x| is >= |x| (or NaN, after inf)
    def mag(bits):
        with np.errstate(invalid="ignore"):
            return np.clip(bits, 0, 0x7FFF).astype(np.uint16).view(dtype).astype(np.float64)

    x, s = np.abs(u.view(np.float32).astype(np.float64)), sr & 0x7FFF
    v, before, after = mag(s), np.where(s > 0, mag(s - 1), -1.0), mag(s + 1)
    assert np.all((v >= x) | (v <= x))
    assert np.all(np.where(v >= x, before <= x, True))
    assert np.all(np.where(v <= x, (after >= x) | np.isnan(after), True))


@pytest.mark.parametrize("dtype", DTYPES)
def test_representable_values_equal_round_to_nearest(dtype):
    u, h = target_values(dtype)
    r = np.random.default_rng(17).integers(0, 2**32, u.size, dtype=np.uint32)
    assert np.array_equal(sr_bits(u, r, dtype), rtn_bits(u, dtype))
    assert np.array_equal(rtn_bits(u, dtype), h)


# ---------------------------------------------------------------- the API's checks


def test_round_stochastic_keeps_shape_and_rejects_bad_arguments():
    x = np.linspace(-3, 3, 24, dtype=np.float32).reshape(2, 3, 4)
    r = random_bits(1, np.arange(24)).reshape(2, 3, 4)
    for dtype in (F16, BF16):
        out = round_stochastic(x, dtype, r)
        assert out.shape == (2, 3, 4) and out.dtype == dtype
        flat = round_stochastic(x.reshape(-1), dtype, r.reshape(-1))
        assert np.array_equal(out.reshape(-1).view(np.uint16), flat.view(np.uint16))
        strided = round_stochastic(x[:, ::2], dtype, r[:, ::2])
        assert np.array_equal(strided.view(np.uint16), out[:, ::2].view(np.uint16))
    with pytest.raises(TypeError):
        round_stochastic(x.astype(np.float64), F16, r)
    with pytest.raises(TypeError):
        round_stochastic(x, F16, r.astype(np.int64))
    with pytest.raises(ValueError):
        round_stochastic(x, F16, r[0])
    with pytest.raises(ValueError):
        round_stochastic(x, np.float32, r)
