"""Hostile calls: arrays that look right but are not (issue 9, item 4, "Runtime checks").

Each case here was once accepted and gave a silent wrong answer or wrote where it must not:

1. row-sparse indices of unsigned dtypes, unsorted or duplicated (``np.diff`` wrapped around),
   and indices of any integer dtype out of range, negative, or beyond int64;
2. ndarray subclasses that change what elements mean (masked arrays, whose mask was
   ignored; ``np.matrix``), at every entry point;
3. arrays the kernel writes whose elements overlap (a zero stride, overlapping strides);
4. a multi-tensor plan reused after an array of it changed in place (made read-only,
   reshaped, retyped, restrided, resized).

Every bad call must raise exactly TypeError or ValueError, name the argument, and leave
every array as it was.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from numpy.lib.stride_tricks import as_strided

import cases
import generated
import reference
from cases import PARAMS, RowSparseArray
from opgen.runtime import available_backends
from opgen.runtime.arrays import CupyArrays, may_overlap_itself

SHAPE = (2, 3)
OPS = cases.OPS  # every op; MXNet's multi_* ones through their flat convention, with one group
MULTI = cases.ops(lambda o: o.has_multi_variant)
# np.matrix is one of the hostile subclasses; NumPy warns that it is not recommended
pytestmark = pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")

INTEGER_DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]
INT_IDS = [np.dtype(d).name for d in INTEGER_DTYPES]


def refused(exc: type[Exception], name: str, call) -> Exception:
    """``call()`` raises exactly ``exc``, and the message names argument ``name``."""
    with pytest.raises(exc) as info:
        call()
    error = info.value
    assert type(error) is exc, f"{type(error).__name__} instead of {exc.__name__}: {error}"
    assert re.search(rf"argument '{re.escape(name)}'", str(error)), f"the message does not name '{name}': {error}"
    return error


def base(op: str) -> cases.Case:
    """A good call: float32, shape (2, 3), the op's required parameters."""
    return cases.make_case(op, cases.seed("hostile", op), SHAPE, np.float32,
                           cases.step_params(op, PARAMS[op]["defaults"]))


def arg(op: str, name: str) -> str:
    """How errors name tensor ``name``: itself, or data[k] in MXNet's flat convention."""
    info = cases.op(op)
    return f"data[{info.tensor_names.index(name)}]" if info.multi else name


def out_arg(op: str) -> str:
    return "out[0]" if cases.op(op).multi else "out"


def set_input(case: cases.Case, name: str, value) -> None:
    if name in case.params:  # a scalar input given as a number (adamw's rescale_grad)
        case.params[name] = value
    else:
        case.arrays[name] = value


def run_all(attempts) -> None:
    """Every (label, check) is tried; the failures are reported together."""
    failures = []
    for label, check in attempts:
        try:
            check()
        except (Exception, pytest.fail.Exception) as error:
            failures.append(f"{label}: {type(error).__name__}: {error}")
    assert not failures, "\n".join(failures)


# =============================================================================================
# 1. Row-sparse indices, every integer dtype
# =============================================================================================
def _rsp(indices, rows=5, width=2):
    return RowSparseArray(np.ones((len(indices), width), np.float32), indices, (rows, width))


@pytest.mark.parametrize("dtype", INTEGER_DTYPES, ids=INT_IDS)
@pytest.mark.parametrize("values, what", [([3, 1], "out of order"), ([1, 1], "a duplicate"),
                                          ([0, 2, 4, 3], "out of order"), ([0, 4, 4], "a duplicate")])
def test_unsorted_or_duplicate_indices_are_refused_in_every_integer_dtype(dtype, values, what):
    indices = np.array(values, dtype)
    before = indices.copy()
    error = refused(ValueError, "indices", lambda: _rsp(indices))
    assert what in str(error)
    np.testing.assert_array_equal(indices, before)


@pytest.mark.parametrize("dtype", INTEGER_DTYPES, ids=INT_IDS)
def test_indices_out_of_range_are_refused_in_every_integer_dtype(dtype):
    refused(ValueError, "indices", lambda: _rsp(np.array([1, 5], dtype)))
    refused(ValueError, "indices", lambda: _rsp(np.array([np.iinfo(dtype).max], dtype)))
    if np.iinfo(dtype).min < 0:
        refused(ValueError, "indices", lambda: _rsp(np.array([-1, 2], dtype)))
        refused(ValueError, "indices", lambda: _rsp(np.array([np.iinfo(dtype).min, 0], dtype)))


@pytest.mark.parametrize("dtype", INTEGER_DTYPES, ids=INT_IDS)
def test_good_indices_of_every_integer_dtype_update_the_right_rows(backend, dtype):
    rows = 300 if np.iinfo(dtype).max >= 299 else 100  # beyond uint8's range where it can be
    last = min(rows - 1, int(np.iinfo(dtype).max))
    picked = [0, 7, last]
    weight = np.random.default_rng(0).normal(size=(rows, 2)).astype(np.float32)
    data = np.arange(6, dtype=np.float32).reshape(3, 2) + 1
    grad = RowSparseArray(data, np.array(picked, dtype), (rows, 2))
    assert grad.indices.dtype == np.int64 and grad.indices.tolist() == picked
    dense = np.zeros_like(weight)
    dense[picked] = data
    got = generated.sgd_update(weight, grad, lr=0.5)
    np.testing.assert_array_equal(got, reference.sgd_update(weight, dense, lr=0.5)[0])


def test_unsigned_indices_from_the_issue_no_longer_land_on_wrong_rows():
    """np.diff of uint64 [3, 1] is 18446744073709551614 > 0: this passed as sorted."""
    for dtype in (np.uint8, np.uint16, np.uint32, np.uint64):
        refused(ValueError, "indices", lambda: _rsp(np.array([3, 1], dtype)))


@pytest.mark.parametrize("indices", [
    np.array([1, 2 ** 63 + 1], np.uint64),  # beyond int64: cast to int64 it would be negative
    np.array([2 ** 64 - 1], np.uint64),
    [1, 2 ** 63],  # Python ints: a uint64 array
    [1, 2 ** 70],  # beyond every integer dtype (an object array)
    [np.uint64(2 ** 63), -1],  # uint64-sized beside a negative one (NumPy makes floats)
    [-1, 2],
], ids=["uint64>int64", "uint64 max", "list 2**63", "list 2**70", "uint64 and -1", "list -1"])
def test_huge_and_negative_indices_are_value_errors(indices):
    refused(ValueError, "indices", lambda: _rsp(indices, rows=5))


def test_in_range_integers_numpy_cannot_type_together_are_accepted():
    grad = _rsp([np.int8(1), np.uint64(3)])  # NumPy makes floats of these; both are valid rows
    assert grad.indices.tolist() == [1, 3]


@pytest.mark.parametrize("indices", [
    np.array([True, False]), [True, False], [1, True], np.array([1.0, 3.0]), [1.0, 3.0],
    np.array([1, 3], np.float16), np.array(["1", "3"]), np.array([1, 3], dtype=object),
], ids=["bool array", "bool list", "int and bool", "float array", "float list", "float16", "str", "object"])
def test_non_integer_indices_are_type_errors(indices):
    refused(TypeError, "indices", lambda: _rsp(indices))


def test_a_shape_beyond_int64_is_refused():
    refused(ValueError, "shape", lambda: RowSparseArray(np.ones((1, 2), np.float32), [0], (2 ** 63, 2)))


def test_row_sparse_accepts_what_it_accepted():
    """The contract otherwise: lists, tuples, NumPy integer arrays and empty indices."""
    assert _rsp([1, 3]).indices.tolist() == [1, 3]
    assert _rsp((0, 4)).indices.tolist() == [0, 4]
    assert _rsp(np.array([2], np.uint8)).indices.tolist() == [2]
    empty = RowSparseArray(np.ones((0, 2), np.float32), np.array([], np.uint16), (5, 2))
    assert empty.indices.dtype == np.int64 and len(empty.indices) == 0


def test_an_empty_list_of_indices_means_no_rows():
    """np.asarray([]) is float64, which used to be refused as not integers."""
    assert RowSparseArray(np.ones((0, 2), np.float32), [], (5, 2)).indices.shape == (0,)


# =============================================================================================
# 2. ndarray subclasses that change what elements mean
# =============================================================================================
def masked(a):
    mask = np.zeros(a.shape, bool)
    mask.reshape(-1)[:1] = True
    return np.ma.MaskedArray(a, mask=mask)  # a view: same memory as a


def matrix(a):
    return np.asmatrix(a)  # a view (every array here has at most two dimensions)


SUBCLASSES = {"masked": masked, "matrix": matrix}


def _subclass_attempts(op: str, make) -> list:
    info = cases.op(op)
    attempts = []

    def tensor(name):
        def check():
            case = base(op)
            plain = case.all_arrays()
            before = cases.snapshot(plain)
            if name in case.params:  # a scalar input given as a number: as a one-element array
                set_input(case, name, make(np.array([case.params[name]], np.float32)))
            else:
                set_input(case, name, make(case.arrays[name]))
            refused(TypeError, arg(op, name), lambda: case(out=None))
            cases.assert_unchanged(plain, before)
            if name == info.weight:  # the weight as its own out
                refused(TypeError, arg(op, name), lambda: case(out=case.weight))
                cases.assert_unchanged(plain, before)
        return check

    def out():
        case = base(op)
        target = np.zeros(SHAPE, np.float32)
        plain = case.all_arrays() + [target]
        before = cases.snapshot(plain)
        refused(TypeError, out_arg(op), lambda: case(out=make(target)))
        cases.assert_unchanged(plain, before)

    names = [info.weight] + ([info.grad] if info.dense else []) + list(info.states) + list(info.scalars)
    attempts += [(f"{op} {name}", tensor(name)) for name in names]
    attempts.append((f"{op} out", out))
    return attempts


@pytest.mark.parametrize("kind", SUBCLASSES)
@pytest.mark.parametrize("op", OPS)
def test_subclasses_are_refused_for_every_tensor_and_out(backend, op, kind):
    """A masked array or np.matrix as any tensor, scalar input or out: TypeError naming it."""
    run_all(_subclass_attempts(op, SUBCLASSES[kind]))


@pytest.mark.parametrize("kind", SUBCLASSES)
def test_subclasses_are_refused_in_row_sparse_arrays(kind):
    make = SUBCLASSES[kind]
    data = np.ones((2, 3), np.float32)
    refused(TypeError, "data", lambda: RowSparseArray(make(data), [0, 2], (4, 3)))
    indices = np.array([[0, 2]])  # 2-D, so that np.matrix keeps it a view
    if kind == "masked":
        refused(TypeError, "indices", lambda: RowSparseArray(data, np.ma.MaskedArray([0, 2], mask=[0, 1]), (4, 3)))
    else:
        refused(TypeError, "indices", lambda: RowSparseArray(data, np.asmatrix(indices), (4, 3)))


def test_the_masked_constant_is_refused_as_a_scalar_input(backend):
    w, g = np.ones(3, np.float32), np.ones(3, np.float32)
    m, v = np.zeros(3, np.float32), np.zeros(3, np.float32)
    refused(TypeError, "rescale_grad", lambda: generated.adamw_update(w, g, m, v, np.ma.masked, lr=0.1, eta=1.0))
    np.testing.assert_array_equal(w, 1.0)


@pytest.mark.parametrize("kind", SUBCLASSES)
@pytest.mark.parametrize("op", MULTI)
def test_subclasses_are_refused_by_the_multi_variants(backend, op, kind):
    make = SUBCLASSES[kind]
    info = cases.op(op)
    function = getattr(generated, f"{op}_multi")
    groups = generated_groups(op)
    params = cases.step_params(op, PARAMS[op]["defaults"])
    attempts = []

    def tensor(j, i):
        def check():
            lists = _lists(op)
            flat = [a for lst in lists for a in lst]
            before = cases.snapshot(flat)
            lists[j][i] = make(lists[j][i])
            refused(TypeError, f"{groups[j]}[{i}]", lambda: function(*lists, **params, out=lists[0]))
            cases.assert_unchanged(flat, before)
        return check

    def out():
        lists = _lists(op)
        targets = [np.zeros_like(w) for w in lists[0]]
        flat = [a for lst in lists for a in lst] + targets
        before = cases.snapshot(flat)
        refused(TypeError, "out[1]", lambda: function(*lists, **params, out=[targets[0], make(targets[1]),
                                                                              targets[2]]))
        cases.assert_unchanged(flat, before)

    def per_tensor_parameter():
        lists = _lists(op)
        flat = [a for lst in lists for a in lst]
        before = cases.snapshot(flat)
        per = dict(params, lr=make(np.array([[0.1, 0.2, 0.3]]) if kind == "matrix" else np.array([0.1, 0.2, 0.3])))
        refused(TypeError, "lr", lambda: function(*lists, **per, out=lists[0]))
        cases.assert_unchanged(flat, before)

    for j in range(len(info.tensor_names)):
        attempts += [(f"{groups[j]}[{i}]", tensor(j, i)) for i in (0, 2)]
    attempts += [("out", out)]
    if "lr" in info.params:
        attempts.append(("lr", per_tensor_parameter))
    run_all(attempts)


@pytest.mark.parametrize("op", cases.ops(lambda o: bool(o.multi)))
def test_a_masked_per_tensor_list_is_refused_by_mxnet_ops(backend, op):
    case = base(op)
    plain = case.all_arrays()
    before = cases.snapshot(plain)
    per_tensor = case.op.multi["per_tensor"]
    data, kwargs = cases.multi_call_args(op, case.inputs(), case.kwargs())
    masked = np.ma.MaskedArray([0.1], mask=[True])
    if per_tensor["lr"] in case.op.multi.get("trailing", []):  # an array of data (MXNet's preloaded ops)
        index = len(case.inputs()) + case.op.multi["trailing"].index(per_tensor["lr"])
        data[index] = masked
        label = f"data[{index}] ({per_tensor['lr']})"
    else:
        kwargs[per_tensor["lr"]] = masked
        label = per_tensor["lr"]
    refused(TypeError, label, lambda: case.op.fn(*data, **kwargs, out=[case.weight]))
    cases.assert_unchanged(plain, before)


def test_memmap_arrays_are_accepted(tmp_path, backend):
    """numpy.memmap is an ndarray over a file, element for element: accepted everywhere."""
    rng = np.random.default_rng(4)
    w, g = rng.normal(size=6).astype(np.float32), rng.normal(size=6).astype(np.float32)
    mom = np.memmap(tmp_path / "mom.bin", dtype=np.float32, mode="w+", shape=(6,))
    mom[:] = 0.25
    expected_w, expected_m = reference.sgd_mom_update(w, g, np.full(6, 0.25, np.float32), lr=0.1, momentum=0.9)
    weight = np.memmap(tmp_path / "w.bin", dtype=np.float32, mode="w+", shape=(6,))
    weight[:] = w
    generated.sgd_mom_update(weight, g, mom, lr=0.1, momentum=0.9, out=weight)
    reference.assert_close(np.asarray(weight), expected_w, "weight")
    reference.assert_close(np.asarray(mom), expected_m, "mom")
    data = np.memmap(tmp_path / "rows.bin", dtype=np.float32, mode="w+", shape=(1, 2))
    assert RowSparseArray(data, [1], (3, 2)).data is data


# =============================================================================================
# 3. Arrays the kernel writes must not overlap themselves
# =============================================================================================
def zero_strides(a):
    """A writeable array of a's shape whose elements are all one (np.broadcast_to, writeable)."""
    cell = np.full(1, a.reshape(-1)[0] if a.size else 0, a.dtype)
    return as_strided(cell, shape=a.shape, strides=(0,) * a.ndim)


def overlapping_strides(a):
    """A writeable array of a's shape whose rows overlap (every stride one element)."""
    room = np.full(a.size + 8, 0.5, a.dtype)
    if a.ndim == 1:  # half an element apart: neighbours share bytes
        return as_strided(room, shape=a.shape, strides=(a.itemsize // 2,))
    return as_strided(room, shape=a.shape, strides=(a.itemsize,) * a.ndim)


OVERLAPS = {"zero": zero_strides, "overlapping": overlapping_strides}


def _overlap_attempts(op: str, make) -> list:
    info = cases.op(op)
    attempts = []

    def state(name):
        def check():
            case = base(op)
            hostile = make(case.arrays[name])
            case.arrays[name] = hostile
            plain = case.all_arrays() + [hostile.base]
            before = cases.snapshot(plain)
            refused(ValueError, arg(op, name), lambda: case(out=None))
            cases.assert_unchanged(plain, before)
            refused(ValueError, arg(op, name), lambda: case(out=case.weight))
            cases.assert_unchanged(plain, before)
        return check

    def out():
        case = base(op)
        hostile = make(np.zeros(SHAPE, np.float32))
        plain = case.all_arrays() + [hostile.base]
        before = cases.snapshot(plain)
        refused(ValueError, out_arg(op), lambda: case(out=hostile))
        cases.assert_unchanged(plain, before)

    def weight_as_out():
        case = base(op)
        hostile = make(case.weight)
        case.weight = hostile
        plain = case.all_arrays() + [hostile.base]
        before = cases.snapshot(plain)
        refused(ValueError, arg(op, info.weight), lambda: case(out=hostile))
        cases.assert_unchanged(plain, before)

    # (a per-tensor state has one element: nothing in it can overlap)
    attempts += [(f"{op} {name}", state(name)) for name in info.states if name not in info.per_tensor]
    attempts += [(f"{op} out", out), (f"{op} weight as out", weight_as_out)]
    return attempts


@pytest.mark.parametrize("kind", OVERLAPS)
@pytest.mark.parametrize("op", OPS)
def test_self_overlapping_written_arrays_are_refused(backend, op, kind):
    """A state, an out, or the weight as its own out, with elements sharing memory: ValueError
    naming it, before anything is written (the broadcast cell included)."""
    run_all(_overlap_attempts(op, OVERLAPS[kind]))


@pytest.mark.parametrize("op", cases.ops(lambda o: o.dense))
def test_overlapping_arrays_that_are_only_read_are_fine(backend, op):
    """A broadcast gradient, and a broadcast weight with out=None, are read, never written:
    they give what their contiguous copies give."""
    case = base(op)
    case.grad = np.broadcast_to(case.grad[:1], SHAPE)  # read-only, zero stride
    case.weight = zero_strides(case.weight)
    plain = case.copy()
    plain.grad, plain.weight = np.ascontiguousarray(case.grad), np.ascontiguousarray(case.weight)
    got = case(out=None)
    want = plain(out=None)
    np.testing.assert_array_equal(got, want)
    for name in case.op.states:
        np.testing.assert_array_equal(case.arrays[name], plain.arrays[name])


@pytest.mark.parametrize("layout", ["reversed", "every other", "transposed", "backwards columns", "rows apart"])
def test_strided_states_that_do_not_overlap_are_accepted(backend, layout):
    rng = np.random.default_rng(6)
    w, g = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(4, 3)).astype(np.float32)
    room = rng.normal(size=(8, 6)).astype(np.float32)
    mom = {"reversed": lambda: room[:4, :3][::-1, ::-1], "every other": lambda: room[::2, ::2],
           "transposed": lambda: np.asfortranarray(room[:4, :3]), "backwards columns": lambda: room[:4, 5:2:-1],
           "rows apart": lambda: as_strided(room, shape=(4, 3), strides=(48, 4))}[layout]()
    assert not may_overlap_itself(mom)
    expected = reference.sgd_mom_update(w, g, mom.copy(), lr=0.1, momentum=0.9)
    generated.sgd_mom_update(w, g, mom, lr=0.1, momentum=0.9, out=w)
    reference.assert_close(w, expected[0], "weight")
    reference.assert_close(mom, expected[1], "mom")


def _overlaps_by_brute_force(shape, strides, itemsize) -> bool:
    starts = [0]
    for n, s in zip(shape, strides):
        starts = [b + k * s for b in starts for k in range(n)]
    if any(n == 0 for n in shape):
        return False
    starts.sort()
    return any(b - a < itemsize for a, b in zip(starts, starts[1:]))


def test_the_overlap_test_is_sound():
    """Never False for an array whose elements overlap (brute force over many layouts),
    False for contiguous, single-element and empty arrays."""
    rng = np.random.default_rng(7)
    room = bytearray(4096)
    overlapping = 0
    for _ in range(4000):
        itemsize = int(rng.choice([1, 2, 4, 8]))
        ndim = int(rng.integers(1, 4))
        shape = tuple(int(n) for n in rng.integers(0, 5, ndim))
        strides = tuple(int(s) for s in rng.integers(-3, 13, ndim) * int(rng.choice([1, itemsize])))
        offset = sum(-s * (n - 1) for n, s in zip(shape, strides) if s < 0 and n > 0)
        view = np.ndarray(shape, dtype=f"u{itemsize}", buffer=room, offset=offset, strides=strides)
        if _overlaps_by_brute_force(shape, strides, itemsize):
            overlapping += 1
            assert may_overlap_itself(view), (shape, strides, itemsize)
    assert overlapping > 500  # the draw does reach overlapping layouts
    for a in (np.zeros((3, 4)), np.zeros((3, 4), order="F"), np.zeros(0), np.zeros((0, 3)),
              as_strided(np.zeros(1), shape=(1, 1), strides=(0, 0)), as_strided(np.zeros(1), shape=(0, 5), strides=(0, 0)),
              as_strided(np.zeros(3), shape=(3, 1), strides=(8, 0)), np.zeros((5, 6))[::2, ::-3]):
        assert not may_overlap_itself(a), (a.shape, a.strides)


class _FakeDeviceArray:
    """What CupyArrays.byte_bounds reads of a CuPy array, over NumPy memory."""

    def __init__(self, a: np.ndarray) -> None:
        self.data = type("Memory", (), {"ptr": a.__array_interface__["data"][0]})()
        self.size, self.shape, self.strides, self.itemsize, self.nbytes = a.size, a.shape, a.strides, a.itemsize, a.nbytes


@pytest.mark.parametrize("view", ["whole", "every other", "reversed", "reversed rows", "column", "empty"])
def test_device_byte_bounds_follow_the_strides(view):
    """CuPy arrays' byte range (the multi path's cross-tensor overlap check): a strided view
    spans more than its nbytes, a reversed one starts below its pointer."""
    room = np.zeros((6, 8), np.float32)
    a = {"whole": room, "every other": room[:, ::2], "reversed": room.reshape(-1)[::-1], "reversed rows": room[::-1],
         "column": room[:, 3], "empty": room[:0]}[view]
    assert CupyArrays().byte_bounds(_FakeDeviceArray(a)) == tuple(np.lib.array_utils.byte_bounds(a)) or a.size == 0


@pytest.mark.parametrize("op", MULTI)
def test_multi_variants_refuse_self_overlapping_states_and_outs(backend, op):
    info = cases.op(op)
    function = getattr(generated, f"{op}_multi")
    groups = generated_groups(op)
    params = cases.step_params(op, PARAMS[op]["defaults"])
    attempts = []

    def state(j):
        def check():
            lists = _lists(op)
            lists[j][1] = hostile = zero_strides(lists[j][1])
            flat = [a for lst in lists for a in lst] + [hostile.base]
            before = cases.snapshot(flat)
            refused(ValueError, f"{groups[j]}[1]", lambda: function(*lists, **params, out=lists[0]))
            cases.assert_unchanged(flat, before)
        return check

    def out():
        lists = _lists(op)
        targets = [np.zeros_like(w) for w in lists[0]]
        targets[2] = zero_strides(targets[2])
        flat = [a for lst in lists for a in lst] + targets[:2] + [targets[2].base]
        before = cases.snapshot(flat)
        refused(ValueError, "out[2]", lambda: function(*lists, **params, out=targets))
        cases.assert_unchanged(flat, before)

    # (a per-tensor state has one element: nothing in it can overlap)
    attempts += [(groups[j], state(j)) for j, name in enumerate(info.tensor_names)
                 if name in info.states and name not in info.per_tensor]
    attempts += [("weights as out", state(0)), ("out", out)]
    run_all(attempts)


# =============================================================================================
# 4. The multi-tensor plan, reused only while its arrays are as they were checked
# =============================================================================================
SIZES = (5, 8, 3)


def generated_groups(op: str) -> tuple[str, ...]:
    return getattr(generated, op).__globals__["_MULTI"].group_names


def _lists(op: str, seed: int = 0) -> list[list[np.ndarray]]:
    """One list per tensor of the op (weights, grads, states...), three tensors, float32."""
    made = [cases.make_case(op, cases.seed("plan", op, seed, k), (n,), np.float32) for k, n in enumerate(SIZES)]
    info = cases.op(op)
    return [[c.arrays[name] if name != info.grad else c.grad for c in made] for name in info.tensor_names]


def _first_call(op: str, lists):
    function = getattr(generated, f"{op}_multi")
    params = cases.step_params(op, PARAMS[op]["defaults"])
    function(*lists, **params, out=lists[0])  # checks everything, plans and caches (C backend)
    return lambda: function(*lists, **params, out=lists[0])


def _set_strides(a, strides):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            a.strides = strides
        except AttributeError:  # a NumPy without the (deprecated) setter: nothing to test
            pytest.skip("ndarray.strides cannot be set in this NumPy")


def _change_attempts(op: str) -> list:
    info = cases.op(op)
    groups = generated_groups(op)
    written = [j for j, name in enumerate(info.tensor_names) if name == info.weight or name in info.states]
    attempts = []

    def change(j, i, mutate, exc, name):
        def check():
            lists = _lists(op)
            call = _first_call(op, lists)
            mutate(lists[j][i])
            flat = [a for lst in lists for a in lst]
            before = cases.snapshot(flat)
            refused(exc, name, call)
            cases.assert_unchanged(flat, before, f"{op}: a changed array")
            refused(exc, name, call)  # and again: the plan is not trusted again either
            cases.assert_unchanged(flat, before, f"{op}: a changed array, called twice")
        return check

    def read_only(a):
        a.flags.writeable = False

    def column(a):
        a.shape = (a.size, 1)

    def retyped(a):
        a.dtype = np.int32  # float32 -> int32: same bytes, other meaning

    def zero(a):
        _set_strides(a, (0,))

    for j in written:
        attempts.append((f"{groups[j]}[1] read-only", change(j, 1, read_only, ValueError, f"{groups[j]}[1]")))
        if info.tensor_names[j] not in info.per_tensor:  # (one element: a zero stride changes nothing)
            attempts.append((f"{groups[j]}[2] zero stride", change(j, 2, zero, ValueError, f"{groups[j]}[2]")))
    for j in range(len(groups)):  # a reshaped weight: the next tensor differs from it, as on a first call
        attempts.append((f"{groups[j]}[0] reshaped", change(j, 0, column, ValueError, f"{groups[max(j, 1)]}[0]")))
        attempts.append((f"{groups[j]}[2] retyped", change(j, 2, retyped, TypeError, f"{groups[j]}[2]")))
    return attempts


@pytest.mark.parametrize("op", MULTI)
def test_a_cached_plan_sees_arrays_changed_in_place(backend, op):
    """After a first call (checked, planned, cached), an array of it made read-only, given
    a zero stride, reshaped or retyped in place: the next call refuses it as a first call
    would, naming it, and writes nothing."""
    run_all(_change_attempts(op))


def test_the_issue_read_only_state_after_the_first_call(backend):
    ws = [np.ones(5, np.float32) for _ in range(3)]
    gs = [np.ones(5, np.float32) for _ in range(3)]
    ms = [np.zeros(5, np.float32) for _ in range(3)]
    generated.sgd_mom_update_multi(ws, gs, ms, lr=0.1, momentum=0.9, out=ws)
    ms[1].flags.writeable = False
    before = cases.snapshot(ws + ms)
    refused(ValueError, "moms[1]", lambda: generated.sgd_mom_update_multi(ws, gs, ms, lr=0.1, momentum=0.9, out=ws))
    cases.assert_unchanged(ws + ms, before)
    ms[1] = ms[1].copy()  # writeable again: the call runs, on a new plan
    expected = [reference.sgd_mom_update(w, g, m, lr=0.1, momentum=0.9) for w, g, m in zip(ws, gs, ms)]
    generated.sgd_mom_update_multi(ws, gs, ms, lr=0.1, momentum=0.9, out=ws)
    for k, (w, m) in enumerate(expected):
        reference.assert_close(ws[k], w, f"weights[{k}]")
        reference.assert_close(ms[k], m, f"moms[{k}]")


def test_a_read_only_grad_is_still_fine_on_a_cached_plan(backend):
    """Grads are only read: one made read-only between calls changes nothing."""
    ws, gs = [np.ones(4, np.float32), np.ones(6, np.float32)], [np.full(4, 2, np.float32), np.full(6, 2, np.float32)]
    generated.sgd_update_multi(ws, gs, lr=0.25, out=ws)
    gs[1].flags.writeable = False
    generated.sgd_update_multi(ws, gs, lr=0.25, out=ws)
    np.testing.assert_array_equal(ws[1], 0.0)


def test_memory_of_a_cached_plan_cannot_be_resized():
    """The plan's weak references make NumPy refuse resize (even refcheck=False) of the
    arrays it writes through pointers, or of the buffer they are views of, while cached."""
    ws, gs = [np.ones(4, np.float32), np.ones(4, np.float32)], [np.ones(4, np.float32), np.ones(4, np.float32)]
    flat = np.zeros(8, np.float32)
    moms = [flat[:4], flat[4:]]
    if "c" not in available_backends():
        pytest.skip("no C backend here: nothing is cached")
    with generated.use_backend("c"):
        generated.sgd_mom_update_multi(ws, gs, moms, lr=0.1, momentum=0.5, out=ws)
    assert generated.sgd_mom_update_multi.__globals__["_MULTI"]._plans
    before = cases.snapshot(ws + moms + [flat])
    with pytest.raises(ValueError, match="cannot resize"):
        ws[0].resize(1000, refcheck=False)
    with pytest.raises(ValueError, match="cannot resize"):
        flat.resize(1000, refcheck=False)
    cases.assert_unchanged(ws + moms + [flat], before)
    with generated.use_backend("c"):
        generated.sgd_mom_update_multi(ws, gs, moms, lr=0.1, momentum=0.5, out=ws)  # still usable
        from opgen.runtime.multi import MAX_PLANS

        others = [[np.ones(2, np.float32)] for _ in range(MAX_PLANS)]
        for other in others:  # as many other lists' plans: the first one is let go
            generated.sgd_mom_update_multi(other, [np.ones(2, np.float32)], [np.zeros(2, np.float32)], lr=0.1,
                                           out=other)
    ws[0].resize(6, refcheck=False)  # no longer cached: NumPy's own rules again
    assert ws[0].shape == (6,)


@pytest.mark.parametrize("op", cases.ops(lambda o: bool(o.multi) and bool(o.states)))
def test_mxnet_ops_see_a_state_made_read_only_after_the_first_call(backend, op):
    info = cases.op(op)
    made = [cases.make_case(op, cases.seed("mx", op, k), (n,), np.float32) for k, n in enumerate(SIZES)]
    flat = [a for c in made for a in c.inputs()]
    weights = [c.weight for c in made]
    params = cases.step_params(op, cases.PARAMS[op]["defaults"])
    flat, kwargs = cases.multi_call_args(op, flat, params, count=3)
    info.fn(*flat, **kwargs, out=weights)
    size = len(info.tensor_names)
    k = size + info.tensor_names.index(info.states[-1])  # the second tensor's last state
    flat[k].flags.writeable = False
    before = cases.snapshot(flat)
    refused(ValueError, f"data[{k}]", lambda: info.fn(*flat, **kwargs, out=weights))
    cases.assert_unchanged(flat, before)


# =============================================================================================
# CuPy (skipped without a GPU): the same rules on device arrays
# =============================================================================================
def _gpu_missing():
    try:
        import cupy

        return None if cupy.cuda.runtime.getDeviceCount() > 0 else "no CUDA GPU"
    except Exception as exc:  # ImportError, or no driver
        return f"CuPy or a GPU unavailable ({type(exc).__name__})"


GPU_MISSING = _gpu_missing()
needs_gpu = pytest.mark.skipif(GPU_MISSING is not None, reason=GPU_MISSING or "")


@needs_gpu
def test_gpu_self_overlapping_state_and_unsigned_indices_are_refused():
    import cupy

    w, g = cupy.ones(6, cupy.float32), cupy.ones(6, cupy.float32)
    cell = cupy.zeros(1, cupy.float32)
    mom = cupy.broadcast_to(cell, (6,))  # CuPy has no read-only flag: this one is writeable
    refused(ValueError, "mom", lambda: generated.sgd_mom_update(w, g, mom, lr=0.1, momentum=0.9, out=w))
    assert float(cell[0]) == 0.0 and bool((w == 1).all())
    refused(ValueError, "indices", lambda: RowSparseArray(cupy.ones((2, 2), cupy.float32),
                                                          cupy.array([3, 1], cupy.uint64), (5, 2)))
    refused(TypeError, "indices", lambda: RowSparseArray(np.ones((2, 2), np.float32),
                                                         cupy.array([1, 3]), (5, 2)))


# -- found in review ------------------------------------------------------------------------------

def test_checked_indices_cannot_be_made_writeable_again():
    """The private copy of the indices once could be made writeable and pointed past the
    weight: the C kernel then wrote out of bounds (a segmentation fault)."""
    rsp = RowSparseArray(np.ones((2, 4), np.float32), [3, 17], (1000, 4))
    with pytest.raises(ValueError, match="WRITEABLE"):
        rsp.indices.flags.writeable = True
    with pytest.raises(ValueError):
        rsp.indices[1] = 10 ** 12
    assert rsp.indices.tolist() == [3, 17]


@pytest.mark.parametrize("shape", [(1000.7, 4), (True, 4), (5, 4.0), ("5", 4)])
def test_a_row_sparse_shape_must_hold_ints(shape):
    with pytest.raises(TypeError, match=r"RowSparseArray: argument 'shape' must be a tuple of ints"):
        RowSparseArray(np.ones((2, 4), np.float32), [0, 1], shape)


def test_multi_errors_name_the_multi_function(backend):
    ws, gs = [np.ones(3, np.float32)], [np.ones(3, np.float32)]
    ms, vs = [np.zeros(3, np.float32)], [np.zeros(3, np.float32)]
    ms[0].flags.writeable = False
    with pytest.raises(ValueError) as info:
        generated.adam_update_multi(ws, gs, ms, vs, lr=0.1, out=ws)
    assert str(info.value) == "adam_update_multi(): argument 'means[0]' is read-only; states are updated in place"
    ms[0] = np.zeros(3, np.float32)
    with pytest.raises(TypeError) as info:
        generated.adam_update_multi(ws, gs, ms, vs, lr=(x for x in [0.1]), out=ws)
    assert str(info.value).startswith("adam_update_multi(): argument 'lr' ")
    assert ws[0].tolist() == [1.0, 1.0, 1.0] and vs[0].tolist() == [0.0, 0.0, 0.0]
