"""Ops that only reduce (issue 12): MXNet's multi_sum_sq and multi_all_finite, written as
specs whose tensors are all inputs and whose output is a per-call value of the math.

Against independent references: the sums of squares exactly (math.fsum of each element's
square in the math type), the finiteness flag by NumPy's isfinite; the same bits on 1, 2
and 3 threads and on the C and NumPy backends; every bad call refused before `out` is
written; the spec errors of the new keys (output.across, output.reset) with their places.
MXNet itself checks both ops in tests/test_mxnet_oracle.py.
"""

from __future__ import annotations

import math
import textwrap

import ml_dtypes
import numpy as np
import pytest

import cases
import generated
from opgen.errors import SpecError
from opgen.runtime import use_backend
from opgen.spec.loader import parse_spec

DTYPES = [np.float16, ml_dtypes.bfloat16, np.float32, np.float64]
IDS = ["float16", "bfloat16", "float32", "float64"]
BACKENDS = ["c", "numpy"]


def _arrays(dtype, shapes=((7,), (3, 5), (), (0,), (1000, 33)), seed=0):
    rng = np.random.default_rng(seed)
    return [np.asarray(rng.normal(size=s) * 3).astype(dtype) for s in shapes]


def _sum_sq(x) -> np.float32:
    """The sum of squares as the op defines it: each square in the math type (float for
    16-bit inputs, exact there; the input's own type otherwise), summed exactly, rounded
    once to float32."""
    math_type = np.float64 if x.dtype == np.float64 else np.float32
    squares = x.astype(math_type) * x.astype(math_type)
    return np.float32(math.fsum(squares.astype(np.float64).ravel()))


def test_the_reduction_ops_are_specs_alone():
    assert cases.REDUCTION_OPS == ["multi_all_finite", "multi_sum_sq"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_multi_sum_sq_against_exact_sums(dtype, backend):
    arrays = _arrays(dtype)
    with use_backend(backend):
        result = generated.multi_sum_sq(*arrays, num_arrays=len(arrays))
        single = [generated.multi_sum_sq(a) for a in arrays]
    assert result.dtype == np.float32 and result.shape == (len(arrays),)
    expected = np.array([_sum_sq(a) for a in arrays])
    if np.dtype(dtype).itemsize == 2:  # exact squares: the sums in double are exact too
        np.testing.assert_array_equal(result, expected)
    else:
        np.testing.assert_allclose(result, expected, rtol=2e-7, atol=0)
    np.testing.assert_array_equal(np.concatenate(single), result)  # one C call for all = one per array


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_multi_sum_sq_is_the_same_on_c_and_numpy(dtype):
    arrays = _arrays(dtype, shapes=((100_003,), (17,)), seed=3)
    with use_backend("c"):
        c = generated.multi_sum_sq(*arrays, num_arrays=2)
    with use_backend("numpy"):
        reference = generated.multi_sum_sq(*arrays, num_arrays=2)
    np.testing.assert_allclose(c, reference, rtol=2e-7, atol=0)


def test_multi_sum_sq_by_hand_and_edge_values():
    # 1 + 4 + 9 = 14; an empty array sums to 0; a 0-d array is one element
    result = generated.multi_sum_sq(np.array([1.0, -2.0, 3.0], np.float32), np.zeros(0, np.float32),
                                    np.array(-4.0, np.float32), num_arrays=3)
    np.testing.assert_array_equal(result, np.array([14.0, 0.0, 16.0], np.float32))
    big = np.full(4, 1e19, np.float32)  # each square 1e38 is a float32; their sum is not: inf, as a float32 sum
    assert np.isinf(generated.multi_sum_sq(big)[0])
    assert np.isnan(generated.multi_sum_sq(np.array([1.0, np.nan], np.float64))[0])
    assert generated.multi_sum_sq(np.array([np.inf, 1.0], np.float16))[0] == np.inf
    # float64 inputs square in double: 1e200 squared is 1e400 (inf), 1e-30 squared is 1e-60 (not 0 in double)
    tiny = np.full(10, 1e-20, np.float64)
    np.testing.assert_allclose(generated.multi_sum_sq(tiny)[0], np.float32(1e-39), rtol=1e-6)


def test_strided_inputs_give_the_contiguous_result():
    base = _arrays(np.float32, shapes=((40, 30),))[0]
    view = base[::3, 1::2]
    np.testing.assert_array_equal(generated.multi_sum_sq(view, view.T, num_arrays=2),
                                  generated.multi_sum_sq(np.ascontiguousarray(view), np.ascontiguousarray(view.T),
                                                         num_arrays=2))


def test_out_receives_the_result_even_when_it_is_an_input():
    """Each value is computed into a new array first: `out` may even be an input's memory."""
    data = np.array([3.0, 4.0], np.float32)
    out = np.zeros(2, np.float32)
    assert generated.multi_sum_sq(data, data, num_arrays=2, out=out) is out
    np.testing.assert_array_equal(out, [25.0, 25.0])
    assert generated.multi_sum_sq(data, out=data[:1]) is not None
    np.testing.assert_array_equal(data, [25.0, 4.0])


THREADS_SCRIPT = textwrap.dedent("""\
    import sys, numpy as np, generated
    rng = np.random.default_rng(11)
    # big tensors (every thread on each) among many small ones (a thread each, in any order)
    sizes = [2_000_003, 5, 0, 300_001] + [int(n) for n in rng.integers(0, 20_000, 60)]
    arrays = [rng.normal(size=n).astype(np.float32) for n in sizes]
    out = [generated.multi_sum_sq(*arrays, num_arrays=len(arrays)).view(np.uint32),
           generated.multi_sum_sq(arrays[0]).view(np.uint32)]
    ws = [a.copy() for a in arrays]
    gs = [rng.normal(size=a.size).astype(np.float32) for a in arrays]
    ms, vs = [np.zeros_like(a) for a in arrays], [np.zeros_like(a) for a in arrays]
    generated.lamb_update_multi(ws, gs, ms, vs, lr=0.01, t=1, wd=0.01, out=ws)
    out += [w.view(np.uint32) for w in ws] + [m.view(np.uint32) for m in ms]
    np.savez(sys.argv[1], *out)
    """)


def test_the_bits_do_not_depend_on_the_thread_count(tmp_path):
    """1, 2 and 3 threads, in fresh processes; and the multi-tensor call equals each tensor's
    own call (the small tensors run a thread each, the big ones on every thread)."""
    results = cases.saved_arrays_by_thread_count(THREADS_SCRIPT, [], (1, 2, 3), tmp_path)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            np.testing.assert_array_equal(a, b)


def test_a_multi_tensor_call_equals_each_tensors_own_call():
    rng = np.random.default_rng(4)
    sizes = [0, 3, 40_000, 17, 16_383, 16_384, 9_000] * 3
    arrays = [rng.normal(size=n).astype(np.float32) for n in sizes]
    together = generated.multi_sum_sq(*arrays, num_arrays=len(arrays))
    np.testing.assert_array_equal(together, np.concatenate([generated.multi_sum_sq(a) for a in arrays]))
    ws = [a.copy() for a in arrays]
    gs = [rng.normal(size=a.size).astype(np.float32) for a in arrays]
    ms, vs = [np.zeros_like(a) for a in arrays], [np.zeros_like(a) for a in arrays]
    one = [generated.lamb_update(w.copy(), g, m.copy(), v.copy(), lr=0.01, t=1, wd=0.01)
           for w, g, m, v in zip(ws, gs, ms, vs)]
    generated.lamb_update_multi(ws, gs, ms, vs, lr=0.01, t=1, wd=0.01, out=ws)
    for w, expected in zip(ws, one, strict=True):
        np.testing.assert_array_equal(w, expected)


# ---- multi_all_finite ------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("special", [np.nan, np.inf, -np.inf])
def test_multi_all_finite_finds_every_non_finite_value(dtype, special, backend):
    arrays = _arrays(dtype, shapes=((7,), (3, 5), (10_001,)))
    with use_backend(backend):
        assert generated.multi_all_finite(*arrays, num_arrays=3).tolist() == [1.0]
        for k, where in ((0, 0), (1, 14), (2, 5_000), (2, 10_000)):  # first, last, middle, the very end
            damaged = [a.copy() for a in arrays]
            damaged[k].flat[where] = special
            result = generated.multi_all_finite(*damaged, num_arrays=3)
            assert result.dtype == np.float32 and result.tolist() == [0.0], (k, where)
            assert result.tolist() == [float(all(np.isfinite(a.astype(np.float64)).all() for a in damaged))]


def test_the_largest_finite_values_are_finite():
    for dtype in DTYPES:
        largest = np.array([ml_dtypes.finfo(dtype).max, -ml_dtypes.finfo(dtype).max], dtype)
        assert generated.multi_all_finite(largest).tolist() == [1.0], dtype


def test_init_output_false_combines_the_value_out_holds():
    finite, broken = np.ones(3, np.float32), np.array([1.0, np.nan], np.float32)
    for before, arrays, after in (([0.0], [finite], 0.0), ([1.0], [finite, finite], 1.0), ([1.0], [broken], 0.0),
                                  ([0.0], [broken], 0.0)):
        out = np.array(before, np.float32)
        assert generated.multi_all_finite(*arrays, num_arrays=len(arrays), init_output=False, out=out) is out
        assert out.tolist() == [after]
    out = np.array([0.0], np.float32)
    assert generated.multi_all_finite(finite, out=out).tolist() == [1.0]  # init_output true: out is reset
    out = np.array([1.0], np.float32)  # no arrays: the value out held stays
    assert generated.multi_all_finite(num_arrays=0, init_output=False, out=out).tolist() == [1.0]


def test_a_nan_in_out_stays_when_all_is_finite():
    """init_output=False: out's NaN takes part in the minimum and propagates (as MXNet, which
    leaves out alone when every value is finite)."""
    out = np.array([np.nan], np.float32)
    generated.multi_all_finite(np.ones(3, np.float32), np.ones(2, np.float32), num_arrays=2, init_output=False,
                               out=out)
    assert np.isnan(out[0])


def test_a_zero_dimensional_out_is_taken():
    out = np.array(5.0, np.float32)
    generated.multi_all_finite(np.ones(2, np.float32), out=out)
    assert out == 1.0


def test_torch_tensors_in_and_out():
    torch = pytest.importorskip("torch")
    result = generated.multi_sum_sq(torch.ones(3), torch.full((2, 2), 2.0, dtype=torch.float32), num_arrays=2)
    assert isinstance(result, torch.Tensor) and result.tolist() == [3.0, 16.0]
    flag = torch.zeros(1)
    generated.multi_all_finite(torch.ones(4, dtype=torch.bfloat16), out=flag)
    assert flag.tolist() == [1.0]


# ---- bad calls: a clear error naming the argument, nothing written --------------------------------
def _bad_calls():
    f32, f64 = np.ones(3, np.float32), np.ones(3, np.float64)
    out1 = np.full(1, 7.0, np.float32)
    return [
        ("count", lambda o: generated.multi_sum_sq(f32, f32, num_arrays=1, out=o), ValueError,
         "argument 'data' holds 2 arrays but num_arrays=1 needs 1", np.full(1, 7.0, np.float32)),
        ("int dtype", lambda o: generated.multi_sum_sq(np.ones(3, np.int32), out=o), TypeError,
         "argument 'data[0]' has dtype int32", out1.copy()),
        ("mixed dtypes", lambda o: generated.multi_sum_sq(f32, f64, num_arrays=2, out=o), TypeError,
         "argument 'data[1]' has dtype float64 but data[0] has float32", np.full(2, 7.0, np.float32)),
        ("not an array", lambda o: generated.multi_sum_sq(3.0, out=o), TypeError,
         "argument 'data[0]' must be a numpy.ndarray, got float", out1.copy()),
        ("bool count", lambda o: generated.multi_sum_sq(f32, num_arrays=True, out=o), TypeError,
         "argument 'num_arrays' must be a non-negative integer", out1.copy()),
        ("negative count", lambda o: generated.multi_sum_sq(num_arrays=-1, out=o), ValueError,
         "argument 'num_arrays' must be a non-negative integer, got -1", out1.copy()),
        ("out dtype", lambda o: generated.multi_sum_sq(f32, out=o), TypeError,
         "argument 'out' has dtype float64; it must be float32", np.full(1, 7.0, np.float64)),
        ("out shape", lambda o: generated.multi_sum_sq(f32, f32, num_arrays=2, out=o), ValueError,
         "argument 'out' has shape (1,); it must have shape (2,)", out1.copy()),
        ("out list", lambda o: generated.multi_sum_sq(f32, out=[o]), TypeError,
         "argument 'out' must be None or a numpy.ndarray", out1.copy()),
        ("no out to combine", lambda o: generated.multi_all_finite(f32, init_output=False), ValueError,
         "argument 'out' is required with init_output=False", out1.copy()),
        ("no arrays", lambda o: generated.multi_all_finite(num_arrays=0, out=o), ValueError,
         "argument 'num_arrays' is 0", out1.copy()),
        ("bad init_output", lambda o: generated.multi_all_finite(f32, init_output="yes", out=o), TypeError,
         "init_output", out1.copy()),
        ("out of all_finite shape", lambda o: generated.multi_all_finite(f32, out=o), ValueError,
         "argument 'out' has shape (2,)", np.full(2, 7.0, np.float32)),
    ]


@pytest.mark.parametrize("case", _bad_calls(), ids=lambda c: c[0])
def test_bad_calls_are_refused_before_out_is_written(case):
    _, call, exc, message, out = case
    before = out.copy()
    with pytest.raises(exc) as info:
        call(out)
    assert message in str(info.value) and str(info.value).startswith(("multi_sum_sq(): ", "multi_all_finite(): "))
    np.testing.assert_array_equal(out, before)


def test_a_read_only_out_is_refused():
    out = np.zeros(1, np.float32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="argument 'out' is read-only"):
        generated.multi_sum_sq(np.ones(2, np.float32), out=out)


# ---- the spec language: ops whose tensors are all inputs ----------------------------------------------
SPEC = """\
name: toy_norms
summary: Toy reductions.
tensors:
  - {name: x, role: input, doc: An array}
  - {name: y, role: input, doc: Another}
params:
  - {name: p, type: float, default: 2, doc: A power}
  - {name: fresh, type: bool, default: true, doc: Start anew}
  - {name: count, type: int, default: 1, doc: Arrays}
multi: {count: count}
math:
  - d = sum(abs(x - y) ** p)
output: {name: d, dtype: float32, across: max, reset: fresh}
"""
P = "specs/toy_norms.yaml"


@pytest.mark.parametrize("edit, message", [
    (("output: {name: d, dtype: float32, across: max, reset: fresh}\n", ""),
     f"{P}:4:3: an op whose tensors are all inputs needs an output"),
    (("  - d = sum(abs(x - y) ** p)\n", "  - d = abs(x - y) ** p\n"),
     f"{P}:13:1: output 'd' reads the inputs element by element; an op that only reduces returns one value per call"),
    (("across: max", "across: mean"), f"{P}:13:43: output.across must be one of min, max, sum, got 'mean'"),
    (("reset: fresh", "reset: p"), f"{P}:13:55: output.reset must name a bool parameter, got 'p'"),
    ((", across: max, reset: fresh", ", reset: fresh"), f"{P}:13:42: output.reset needs output.across"),
    (("multi: {count: count}\n", ""), f"{P}:12:1: output.across combines the tensors of a multi-tensor call"),
    (("{name: y, role: input, doc: Another}", "{name: y, role: input, dtype: float32, doc: Another}"),
     f"{P}:5:5: the input 'y' of an op that only reduces takes the call's dtype"),
    (("{name: fresh, type: bool, default: true, doc: Start anew}",
      "{name: fresh, type: bool, default: true, ignored: true, doc: Start anew}"),
     f"{P}:13:55: output.reset must name a bool parameter, got 'fresh'"),
    (("multi: {count: count}", "multi: {count: count, trailing: [p]}"),
     f"{P}:10:1: an op that only reduces takes each parameter as one value for every tensor"),
])
def test_reduction_spec_errors(edit, message):
    with pytest.raises(SpecError) as info:
        parse_spec(SPEC.replace(*edit), P)
    assert str(info.value).startswith(message), str(info.value)


def test_across_belongs_to_reduction_ops():
    text = """\
name: toy_update
summary: A toy update.
tensors:
  - {name: weight, role: weight, doc: Weight}
  - {name: grad, role: grad, doc: Gradient}
params:
  - {name: lr, type: float, required: true, doc: Learning rate}
math:
  - g = weight - lr * grad
output: {name: g, across: min}
"""
    with pytest.raises(SpecError, match="output.across and output.reset belong to ops that only reduce"):
        parse_spec(text, "specs/toy_update.yaml")


def test_a_user_reduction_spec_builds_and_runs(tmp_path):
    """The toy spec above, built outside the repository: a max over tensors of the p-norm of
    x - y, powered; with fresh false the value out holds joins the max."""
    import subprocess
    import sys

    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "toy_norms.yaml").write_text(SPEC)
    # an output without a dtype: the inputs'; one call, no multi
    (tmp_path / "specs" / "toy_sums.yaml").write_text(textwrap.dedent("""\
        name: toy_sums
        summary: A sum.
        tensors:
          - {name: x, role: input, doc: An array}
        math:
          - s = sum(x)
        output: s
        """))
    run = subprocess.run([sys.executable, "-m", "opgen", "build", "--specs", "specs", "--out", "toy_pkg"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    check = textwrap.dedent("""\
        import numpy as np, toy_pkg
        x, y = np.array([1.0, 2.0], np.float32), np.array([0.0, 0.0], np.float32)
        big = np.array([3.0], np.float32)
        r = toy_pkg.toy_norms(x, y, big, np.zeros(1, np.float32), count=2)
        assert r.tolist() == [9.0], r  # max(1 + 4, 9)
        out = np.array([100.0], np.float32)
        toy_pkg.toy_norms(x, y, p=1.0, fresh=False, out=out)
        assert out.tolist() == [100.0], out
        toy_pkg.toy_norms(x, y, p=1.0, out=out)
        assert out.tolist() == [3.0], out
        from opgen.runtime import use_backend
        for backend in ("c", "numpy"):
            with use_backend(backend):
                for dtype in (np.float16, np.float64):
                    r = toy_pkg.toy_sums(np.array([1.0, 2.5, 0.25], dtype))
                    assert r.dtype == dtype and r.tolist() == [3.75], (backend, r)
        try:
            toy_pkg.toy_sums(np.ones(2, np.float16), out=np.zeros(1, np.float32))
        except TypeError as exc:
            assert "argument 'out' has dtype float32; it must be float16" in str(exc), exc
        else:
            raise AssertionError("out of another dtype taken")
        print("ok")
        """)
    run = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr
