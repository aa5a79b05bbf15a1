"""The per-call fast path in C (kernel_common.h.j2, opgen_fast_*; opgen.runtime.fast).

A plain call in place (NumPy arrays that own their memory, C-contiguous and writable, of one
shape; Python numbers; rounding to nearest; the C backend) is checked and run by one C
function. It must give the bits of the Python path for every op and dtype variant it
covers, and hand every other call (returning NotImplemented) to the checked path, so each
error is still found and named, with nothing written.
"""

from __future__ import annotations

import importlib
import threading

import ml_dtypes
import numpy as np
import pytest

import cases
import generated
import reference
from opgen.kinds import Schedule
from opgen.runtime import available_backends, use_backend

pytestmark = pytest.mark.skipif("c" not in available_backends(), reason="needs the C backend")


def _operator(name: str):
    return importlib.import_module(f"generated.{name}")._OP


#: the ops whose generated call tries C first: the plain ops with their own call and dense kernels
FAST_OPS = [name for name in cases.SINGLE if cases.op(name).dense
            and cases.load_spec(cases.ROOT / "specs" / f"{name}.yaml").plain_call]


def _dense_variants(name: str) -> list[tuple[str, str]]:
    return sorted({(k.dtype, k.states) for k in _operator(name).kernel_abis.values() if k.schedule is Schedule.DENSE})


class Recorder:
    """Wraps an op's C fast function: what each call returned (True: it ran the kernel)."""

    def __init__(self, operator) -> None:
        self.function, self.ran = operator.fast, []

    def __call__(self, *args):
        result = self.function(*args)
        self.ran.append(result is not NotImplemented)
        return result


def _warm(name: str):
    """The op's module loaded (any call does it): afterwards its C fast function is there."""
    case = cases.make_case(name, 1, (3, 5), np.float32, cases.step_params(name, cases.PARAMS[name]["defaults"]))
    with use_backend("c"):
        case(out=case.weight)
    operator = _operator(name)
    assert operator.fast is not None, f"{name}: no C fast function after the module loaded"
    return operator


def test_the_fast_path_covers_the_plain_ops():
    """Every op whose call is plain (no fixed dtypes, scalar inputs, outputs, skip conditions,
    ranged parameters) and has dense kernels gets the C fast path; the others do not."""
    assert {"adam_update", "sgd_update", "sgd_mom_update", "lamb_update", "torch_adam_update"} <= set(FAST_OPS)
    for name in ("adamw_update", "mp_sgd_update", "lamb_update_phase1", "novograd_update", "adagrad_update"):
        assert name not in FAST_OPS, name


@pytest.mark.parametrize("name", FAST_OPS)
def test_every_variant_runs_in_c_with_the_python_paths_bits(name, monkeypatch):
    """Each dense variant (every weight dtype, and states in their own precision) runs in C,
    with the bits of the Python fast path (cffi) on a twin of the call, and within the
    reference's tolerance."""
    operator = _warm(name)
    params = cases.PARAMS[name]["mixed" if "mixed" in cases.PARAMS[name] else "defaults"]
    params = cases.step_params(name, params, 2)
    for dtype, states in _dense_variants(name):
        case = cases.make_case(name, cases.seed(name, dtype, states), (7, 33), np.dtype(dtype), params,
                               state_dtype=np.dtype(states))
        twin = case.copy()
        want = case.expected()
        recorder = Recorder(operator)
        with use_backend("c"):
            monkeypatch.setattr(operator, "fast", recorder)
            result = case(out=case.weight)
            monkeypatch.setattr(operator, "fast", None)  # the Python path, on the twin
            twin(out=twin.weight)
            monkeypatch.setattr(operator, "fast", recorder.function)
        assert recorder.ran == [True], f"{name} {dtype}/{states}: the C fast path did not run"
        assert result is case.weight
        for got, python in zip([case.weight, *case.states], [twin.weight, *twin.states]):
            np.testing.assert_array_equal(got.view(np.uint8), python.view(np.uint8), err_msg=f"{name} {dtype}/{states}")
        case.check(case.weight, want[0], "weight")
        case.check_states(want[1:])


def _adam_arrays(n: int = 40, seed: int = 0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=n).astype(dtype), rng.normal(size=n).astype(dtype),
            np.zeros(n, dtype), np.full(n, 0.25, dtype)]


def _run(monkeypatch, tensors, out=..., **kwargs):
    """One adam_update call; what the C fast function returned, if it was called, and the result."""
    operator = _warm("adam_update")
    recorder = Recorder(operator)
    monkeypatch.setattr(operator, "fast", recorder)
    with use_backend("c"):
        result = generated.adam_update(*tensors, **{"lr": 0.1, **kwargs}, out=tensors[0] if out is ... else out)
    return recorder.ran, result


class Sub(np.ndarray):
    pass


# Each call the C function must hand on (NotImplemented), with its right result from the checked path.
HANDED_ON = {
    "a view of another array": lambda t: [t[0], np.concatenate([t[1], t[1]])[:40], t[2], t[3]],
    "a Fortran-order 2-D weight": lambda t: [np.asfortranarray(a.reshape(5, 8)) if k == 0 else a.reshape(5, 8)
                                             for k, a in enumerate(t)],
    "a NumPy float for lr": "lr",
    "states of another dtype than the kernels'": lambda t: [t[0], t[1], t[2].astype(np.float64), t[3].astype(np.float64)],
}


@pytest.mark.parametrize("what", HANDED_ON)
def test_calls_it_does_not_cover_are_handed_on_and_still_right(what, monkeypatch):
    tensors = _adam_arrays(seed=1)
    kwargs = {}
    how = HANDED_ON[what]
    if how == "lr":
        kwargs = {"lr": np.float64(0.1)}
    else:
        tensors = how(tensors)
    inputs = [np.array(t) for t in tensors]
    if what.startswith("states of another"):
        with pytest.raises(TypeError, match="'mean'"):  # float64 states beside a float32 weight: no kernel
            _run(monkeypatch, tensors, **kwargs)
        return
    want = reference.adam_update(*inputs, lr=0.1)
    ran, result = _run(monkeypatch, tensors, **kwargs)
    assert ran == [False], what
    reference.assert_close(np.asarray(tensors[0]), want[0].reshape(np.shape(tensors[0])))


BAD = {
    "the weight as the gradient": (lambda t: [t[0], t[0], t[2], t[3]], {}, ValueError, "'grad'"),
    "one state twice": (lambda t: [t[0], t[1], t[2], t[2]], {}, ValueError, "'var'"),
    "a read-only state": (lambda t: [t[0], t[1], t[2], _read_only(t[3])], {}, ValueError, "'var'"),
    "a gradient of another shape, same size": (lambda t: [t[0], t[1].reshape(4, 10), t[2], t[3]], {}, ValueError,
                                               "'grad'"),
    "a bool lr": (None, {"lr": True}, TypeError, "'lr'"),
    "an int lr beyond double": (None, {"lr": 10 ** 400}, (TypeError, ValueError, OverflowError), "'lr'"),
    "a bool beta1 among floats": (None, {"beta1": False}, TypeError, "'beta1'"),
    "an int lazy_update": (None, {"lazy_update": 2}, TypeError, "'lazy_update'"),
    "an ndarray subclass": (lambda t: [t[0], t[1].view(Sub), t[2], t[3]], {}, TypeError, "'grad'"),
    "a string epsilon": (None, {"epsilon": "1e-8"}, TypeError, "'epsilon'"),
    "an int64 weight": (lambda t: [t[0].astype(np.int64), t[1], t[2], t[3]], {}, TypeError, "'weight'"),
}


def _read_only(a):
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("what", BAD)
def test_bad_calls_get_the_checked_paths_error_with_nothing_written(what, monkeypatch):
    change, kwargs, exc, match = BAD[what]
    tensors = _adam_arrays(seed=2)
    if change is not None:
        tensors = change(tensors)
    before = [t.copy() for t in tensors]
    with pytest.raises(exc, match=match):
        _run(monkeypatch, tensors, **kwargs)
    for t, b in zip(tensors, before):
        np.testing.assert_array_equal(t, b)


def test_empty_and_zero_dimensional_arrays(monkeypatch):
    empty = [np.zeros(0, np.float32) for _ in range(4)]
    ran, result = _run(monkeypatch, empty)
    assert result is empty[0] and result.shape == (0,)
    scalar = [np.array(v, np.float32) for v in (1.0, 0.5, 0.0, 0.25)]
    want = reference.adam_update(*[t.copy() for t in scalar], lr=0.1)
    ran, result = _run(monkeypatch, scalar)
    assert ran == [True] and result is scalar[0]
    reference.assert_close(scalar[0], want[0])


def test_out_none_the_numpy_backend_and_stochastic_rounding_never_reach_it(monkeypatch):
    operator = _warm("adam_update")
    tensors = _adam_arrays(seed=3)
    recorder = Recorder(operator)
    monkeypatch.setattr(operator, "fast", recorder)
    generated.adam_update(*tensors, lr=0.1)  # a new weight: not in place
    with use_backend("numpy"):
        generated.adam_update(*tensors, lr=0.1, out=tensors[0])
    bf16 = [t.astype(ml_dtypes.bfloat16) for t in _adam_arrays(seed=4)]
    generated.adam_update(*bf16, lr=0.1, out=bf16[0], rounding="stochastic", seed=5)
    assert recorder.ran == []


def test_the_numpy_backend_gives_the_reference_bits(monkeypatch):
    """Inside use_backend("numpy") a plain call is the NumPy reference's, not the C kernel's."""
    _warm("adam_update")
    a, b = _adam_arrays(seed=6), _adam_arrays(seed=6)
    with use_backend("numpy"):
        generated.adam_update(*a, lr=0.1, out=a[0])
        want = generated.adam_update(*b, lr=0.1)
    np.testing.assert_array_equal(a[0], want)


def test_threads_calling_at_once(monkeypatch):
    """The kernel runs without the GIL: threads updating their own arrays at once each get
    the single-threaded result."""
    operator = _warm("adam_update")
    jobs = [_adam_arrays(4096, seed=k) for k in range(8)]
    want = [[t.copy() for t in job] for job in jobs]
    for job in want:
        for _ in range(20):
            generated.adam_update(*job, lr=0.01, out=job[0])
    recorder = Recorder(operator)
    monkeypatch.setattr(operator, "fast", recorder)

    def work(job):
        for _ in range(20):
            generated.adam_update(*job, lr=0.01, out=job[0])

    threads = [threading.Thread(target=work, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert recorder.ran and all(recorder.ran)
    for job, expected in zip(jobs, want):
        for got, exp in zip(job, expected):
            np.testing.assert_array_equal(got, exp)


def test_the_function_hands_on_what_it_cannot_read():
    operator = _warm("adam_update")
    assert operator.fast() is NotImplemented  # no arguments: nothing to run
    assert operator.fast(*_adam_arrays(), 0.1) is NotImplemented  # too few parameters


def _changes():
    """(what, change): each in-place change a cached multi-tensor plan must notice."""
    def writeable(a):
        a.flags.writeable = False

    def shape(a):
        a.shape = (2, a.size // 2)

    def dtype(a):
        a.dtype = np.int32

    return [("made read-only", writeable), ("reshaped in place", shape), ("dtype changed in place", dtype)]


def test_the_fingerprint_sees_identity_and_every_in_place_change():
    """The multi-tensor plans' re-check (opgen.runtime.fast.fingerprint): equal for the same
    arrays unchanged, different for an equal copy in their place and for each in-place change,
    None for anything that is not a list or tuple of NumPy arrays."""
    from opgen.runtime import fast

    _warm("adam_update")
    fingerprint = fast.fingerprint
    arrays = _adam_arrays(seed=7)
    seen = fingerprint(arrays)
    assert isinstance(seen, bytes) and fingerprint(tuple(arrays)) == seen
    assert fingerprint(arrays[:2], arrays[2:]) == seen
    assert fingerprint([arrays[0].copy(), *arrays[1:]]) != seen
    for what, change in _changes():
        fresh = _adam_arrays(seed=7)
        before = fingerprint(fresh)
        change(fresh[3])
        assert fingerprint(fresh) != before, what
    assert fingerprint([arrays[0], [1.0]]) is None
    assert fingerprint("not a list") is None
    assert fingerprint([np.float32(1.0)]) is None


def test_a_cached_multi_plan_takes_each_calls_values():
    """A cached plan reuses a value table while the value stays the same: every call still
    runs with its own values (a schedule's new lr, a changed beta), with the bits of the
    one-tensor op on each tensor; -0.0 is not taken for 0.0."""
    rng = np.random.default_rng(8)
    groups = [[rng.normal(size=n).astype(np.float32) for n in (5, 64, 1)] for _ in range(2)]
    groups += [[np.zeros_like(w) for w in groups[0]], [np.full_like(w, 0.25) for w in groups[0]]]
    twins = [[a.copy() for a in group] for group in groups]
    steps = [dict(lr=0.1), dict(lr=0.1), dict(lr=0.05), dict(lr=0.05, beta1=0.5), dict(lr=0.05, wd=-0.0),
             dict(lr=0.05, wd=0.0), dict(lr=0.05, wd=0.01)]
    with use_backend("c"):
        for params in steps:
            generated.adam_update_multi(*groups, **params, out=groups[0])
            for k in range(3):
                generated.adam_update(*(group[k] for group in twins), **params, out=twins[0][k])
            for group, twin in zip(groups, twins):
                for a, b in zip(group, twin):
                    np.testing.assert_array_equal(a, b, err_msg=str(params))
    from opgen.runtime.multi import _plan_key

    multi_op = generated.adam_update_multi.__globals__["_MULTI"]
    plan = multi_op._plans[_plan_key(multi_op._fixed_lists(groups, groups[0]), 3)]
    generated.adam_update_multi(*groups, lr=0.05, wd=-0.0, out=groups[0])
    tables = [np.frombuffer(plan.ffi.buffer(cdata), np.float64) for _, cdata in plan.last_values.values()]
    assert any(np.signbit(t).all() and (t == 0).all() for t in tables)  # wd's table holds -0.0


def _counting_plans(monkeypatch):
    """Counts the multi-tensor plans adam_update_multi makes (each is a full check)."""
    multi_op = generated.adam_update_multi.__globals__["_MULTI"]
    made = []
    real = multi_op._plan_for

    def plan_for(*args, **kwargs):
        made.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(multi_op, "_plan_for", plan_for)
    return made


class Group(list):
    pass


def test_plans_of_lists_sharing_their_first_weight_do_not_evict_each_other(monkeypatch):
    """The same weights with two sets of states (or lists that differ past their first
    array), called in turn: each keeps its cached plan, with the one-tensor op's bits."""
    rng = np.random.default_rng(9)
    ws = [rng.normal(size=8).astype(np.float32) for _ in range(3)]
    gs = [rng.normal(size=8).astype(np.float32) for _ in range(3)]
    sets = [([np.zeros(8, np.float32) for _ in range(3)], [np.full(8, 0.5, np.float32) for _ in range(3)])
            for _ in range(2)]
    other = [ws[0], ws[1], rng.normal(size=8).astype(np.float32)]  # shares ws[0] and ws[1]
    made = _counting_plans(monkeypatch)
    with use_backend("c"):
        for step in range(4):
            for means, vars_ in sets:
                twin = [a.copy() for a in ws], [a.copy() for a in means], [a.copy() for a in vars_]
                generated.adam_update_multi(ws, gs, means, vars_, lr=0.1, out=ws)
                for k in range(3):
                    generated.adam_update(twin[0][k], gs[k], twin[1][k], twin[2][k], lr=0.1, out=twin[0][k])
                    np.testing.assert_array_equal(ws[k], twin[0][k])
                    ws[k][:] = twin[0][k]
            generated.adam_update_multi(other, gs, *sets[0], lr=0.0, out=other)
    assert len(made) <= 3, f"{len(made)} plans made for three lists called in turn"


def test_list_subclasses_keep_their_plan(monkeypatch):
    rng = np.random.default_rng(10)
    ws = Group(rng.normal(size=8).astype(np.float32) for _ in range(3))
    gs = Group(rng.normal(size=8).astype(np.float32) for _ in range(3))
    ms, vs = Group(np.zeros(8, np.float32) for _ in range(3)), Group(np.zeros(8, np.float32) for _ in range(3))
    made = _counting_plans(monkeypatch)
    with use_backend("c"):
        for _ in range(4):
            generated.adam_update_multi(ws, gs, ms, vs, lr=0.1, out=ws)
    assert len(made) == 1
