"""MXNet 1.9.1 itself as the oracle (issue 12): every MXNet op of specs/, on a grid of cases
(dense in float16, float32 and float64; row-sparse lazy and standard where MXNet has them;
every parameter set of tests/cases.py; three steps; non-finite gradients), run through MXNet in
its own environment (tests/mxnet_oracle/record.py) and through opgen, compared with each
documented deviation (../shared/reference/mxnet-optimizers.md section 7, each op's page)
applied explicitly:

- clip_gradient (clip_weights, clip_grad) of 0 turns clipping off in opgen, and clips to zero
  in MXNet: those parameter sets are not sent to MXNet;
- float64: MXNet rounds the parameters to float32 first: opgen gets them so rounded;
- float16: MXNet rounds every intermediate to half (and eps=1e-8 becomes 0): a tolerance of
  5% (FTML's and LAMB's longer chains of half roundings reach 1.2%), and cases whose MXNet
  result is not finite where opgen's is are counted apart (listed, not failures);
- nag_mom_update (and its mp twin) with wd != 0: MXNet's new momentum reads the weight after
  `out` is written when out is the weight (opgen always uses the old weight): such sets, and
  non-finite gradients (a new weight of inf makes MXNet's `0 * w` a NaN even with wd = 0),
  are not sent to MXNet;
- multi_mp_* and preloaded_multi_mp_*: MXNet leaves weight32 unchanged beside float32
  weights: only float16 weights;
- lamb_update (one call in opgen) is MXNet's LAMB step: lamb_update_phase1, the norms of the
  weight and of g (NDArray.norm), lamb_update_phase2; lars_update is MXNet's LARS step: the
  norms (in float32: its float64 cases get float32's tolerance), the layer's rate,
  sgd_mom_update (record.py's COMPOSITES); multi_lamb_update's norms are float32 too;
- mp_lamb_update_phase1: MXNet takes float16 weights only: only those; multi_adamw_update
  leaves float16 and float64 weights unchanged in MXNet (it writes the moments alone): only
  float32; the preloaded ops' float32 lrs and wds give float64 cases float32's tolerance;
- mp_lamb_update_phase2: MXNet never writes weight32 (opgen advances it): one step, and the
  weight alone, are compared;
- float32: opgen computes the per-call values (1 - beta2, beta1 ** t) in double, MXNet in
  float32: a tolerance of 2e-5 relative.

MXNet's environment: OPGEN_MXNET_PYTHON, else .venv-mxnet/bin/python at the repository's top
(``python3 -m venv .venv-mxnet && .venv-mxnet/bin/pip install "numpy<2" mxnet==1.9.1``, as
.ci/run does); without either the suite skips, saying so.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import cases
import generated
from generated import RowSparseArray

ROOT = Path(__file__).resolve().parent.parent
RECORDER = Path(__file__).resolve().parent / "mxnet_oracle" / "record.py"
STEPS = 3
SHAPE = (6, 5)
DTYPES = [np.float16, np.float32, np.float64]

#: where MXNet has each op (mx.nd.<path>); the torch.optim-semantics specs have no MXNet twin
MXNET_NAMES = {
    "adamw_update": "contrib.adamw_update", "mp_adamw_update": "contrib.mp_adamw_update",
    "group_adagrad_update": "contrib.group_adagrad_update", "adagrad_update": "sparse.adagrad_update",
    # the flat-list ops behind mx.nd.contrib.multi_lamb_update and multi_mp_lamb_update
    "multi_lamb_update": "_internal._multi_lamb_update", "multi_mp_lamb_update": "_internal._multi_mp_lamb_update",
    "multi_adamw_update": "_internal._multi_adamw_update",
    "multi_mp_adamw_update": "_internal._multi_mp_adamw_update",
}
#: opgen's own ops with no MXNet op or optimizer to compose them from
OPGEN_ONLY = {"novograd_update"}
MXNET_OPS = [op for op in cases.OPS if not op.startswith("torch_") and op not in OPGEN_ONLY] + cases.REDUCTION_OPS
#: the row-sparse modes MXNet runs natively for a row-sparse gradient beside dense states
#: (ftrl's sparse kernel needs every input row-sparse: its dense-state call falls back to dense)
MXNET_SPARSE = {"sgd_update", "sgd_mom_update", "adam_update", "adagrad_update", "group_adagrad_update"}
#: parameter sets that hit a documented deviation (a clip bound of exactly 0)
DEVIATING_SETS = {"clip0_off", "clip_weights0_off"}
#: ops whose result depends on out aliasing the weight when wd != 0, or when the new weight is
#: not finite (MXNet's 0 * inf): their deviation
ALIASING_WD = {"nag_mom_update"}
#: ops whose one-element inputs MXNet takes as float32 whatever the weight's dtype
FLOAT32_SCALARS = {"adamw_update", "mp_adamw_update", "mp_lamb_update_phase2"}
#: ops whose MXNet kernel never writes the master weight it declares mutable (deviation): one
#: step each (MXNet's next step would start from the stale master copy), weight32 not compared
STALE_MASTER = {"mp_lamb_update_phase2"}
#: ops whose trailing arrays MXNet takes in the weight's dtype (multi_adamw's rescale_grad;
#: the others' are float32)
TRAILING_IN_WEIGHT_DTYPE = {"multi_adamw_update"}
#: ops whose MXNet kernel updates float32 weights only: multi_adamw_update leaves float16
#: and float64 weights unchanged (it writes the moments alone) [emp]
FLOAT32_WEIGHTS = {"multi_adamw_update"}
#: ops whose MXNet kernel takes float16 weights only (MPLambPhaseOneType)
HALF_WEIGHTS = {"mp_lamb_update_phase1"}
#: ops whose MXNet twin takes its norms in float32 whatever the dtype (LARS._l2norm, the
#: multi_sum_sq of multi_lamb_update), or its rates from float32 arrays (the preloaded ops):
#: their float64 cases get float32's tolerance
FLOAT32_NORMS = {"lars_update", "multi_lamb_update", "preloaded_multi_sgd_update", "preloaded_multi_sgd_mom_update",
                 *cases.REDUCTION_OPS}  # (the reduction ops' outputs are float32 whatever the inputs)
TOLERANCE = {np.dtype(np.float16): (5e-2, 2e-3), np.dtype(np.float32): (2e-5, 1e-6),
             np.dtype(np.float64): (1e-9, 1e-12)}


def _mxnet_python() -> str | None:
    configured = os.environ.get("OPGEN_MXNET_PYTHON")
    if configured:
        return configured
    local = ROOT / ".venv-mxnet" / "bin" / "python"
    return str(local) if local.exists() else None


def _mxnet_params(op: str, params: dict, dtype) -> dict:
    """The parameters as MXNet takes them; for float64, every float parameter (the defaults
    too) rounded to float32, as MXNet does (deviation 3)."""
    out = {}
    if np.dtype(dtype) == np.float64:
        info = cases.op(op)
        signature = inspect.signature(info.fn)
        for name, meta in info.param.items():
            default = signature.parameters[name].default if name in signature.parameters else None
            if meta.type == "float" and name not in params and isinstance(default, float):
                params = {**params, name: default}
    for k, v in params.items():
        if isinstance(v, float) and np.dtype(dtype) == np.float64:
            v = float(np.float32(v))
        out[k] = v
    return out


class Grid:
    """Every case: the arrays (for MXNet's npz), the manifest of calls, and opgen's results."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}
        self.manifest: list[dict] = []
        self.opgen: dict[str, np.ndarray] = {}
        self.meta: dict[str, tuple] = {}  # key -> (op, dtype)

    def add(self, op: str, dtype, pset: str, mode: str, nonfinite: bool = False) -> None:
        info = cases.op(op)
        key = f"{op}|{np.dtype(dtype).name}|{pset}|{mode}" + ("|nonfinite" if nonfinite else "")
        params = cases.PARAMS[op][pset]
        rng = np.random.default_rng(cases.seed(key, "mxnet"))
        case = cases.make_case(op, cases.seed(key), SHAPE, dtype, cases.step_params(op, params, 0),
                               grad_rows=np.array([0, 2, 5]) if mode != "dense" else None)
        names = {name: f"{key}/{name}" for name in info.tensor_names}
        for name in info.tensor_names:
            if name != info.grad and name not in info.scalars:
                self.arrays[names[name]] = np.array(case.arrays[name], copy=True)
        out_name = f"{key}/out" if info.output else names[info.weight]
        if info.output:
            self.arrays[out_name] = np.zeros(SHAPE, info.out_dtype(dtype))
        compared_states = [s for s in info.states if not (op in STALE_MASTER and s == "weight32")]
        results = [out_name] + [names[s] for s in compared_states]
        steps = []
        opgen_case = case.copy()
        out_array = np.zeros(SHAPE, info.out_dtype(dtype)) if info.output else None
        for step in range(1 if op in STALE_MASTER else STEPS):
            step_params = cases.step_params(op, params, step)
            if step:
                case.new_grad(rng, rows=np.array([0, 2, 5]) if mode != "dense" else None)
            if nonfinite:
                g = case.grad.data if isinstance(case.grad, RowSparseArray) else case.grad
                g.flat[0], g.flat[1] = np.nan, np.inf
            grad_key = f"{key}/grad{step}"
            if isinstance(case.grad, RowSparseArray):
                self.arrays[grad_key] = np.array(case.grad.data)
                self.arrays[grad_key + "_rows"] = np.array(case.grad.indices, np.int64)
                grad_item = [grad_key, grad_key + "_rows", list(SHAPE)]
            else:
                self.arrays[grad_key] = np.array(case.grad)
                grad_item = grad_key
            inputs, kwargs = [], {}
            for name in info.tensor_names:
                if name == info.grad:
                    inputs.append(grad_item)
                elif name in info.scalars:
                    value = step_params[name] if name in step_params else case.arrays[name]
                    scalar_key = f"{key}/{name}{step}"
                    # MXNet's adamw takes its rescale_grad as float32 whatever the weight's dtype
                    scalar_dtype = np.float32 if op in FLOAT32_SCALARS else dtype
                    self.arrays[scalar_key] = np.asarray(value, scalar_dtype).reshape(1)
                    inputs.append(scalar_key)
                else:
                    inputs.append(names[name])
            mx_params = _mxnet_params(op, {k: v for k, v in step_params.items() if k not in info.scalars}, dtype)
            if mode in ("lazy", "standard") and info.lazy_param:
                mx_params[info.lazy_param] = mode == "lazy"
            if info.multi:
                per_tensor = info.multi["per_tensor"]
                mx_params = {per_tensor.get(k, k): ([v] if k in per_tensor else v) for k, v in mx_params.items()}
                mx_params[info.multi["count"]] = 1
                # the trailing parameters: float32 arrays after the groups (MXNet's preloaded
                # lrs and wds, multi adamw's rescale_grad)
                for public in info.multi.get("trailing", []):
                    param = next((k for k, v in per_tensor.items() if v == public), public)
                    value = mx_params.pop(public, None)
                    value = float(info.defaults[param]) if value is None else value
                    trailing_key = f"{key}/{public}{step}"
                    trailing_dtype = dtype if op in TRAILING_IN_WEIGHT_DTYPE else np.float32
                    self.arrays[trailing_key] = np.asarray(value, trailing_dtype).reshape(1)
                    inputs.append(trailing_key)
            steps.append({"inputs": inputs, "kwargs": mx_params, "out": [out_name]})
            # opgen, on the same inputs, with the same (rounded) parameters
            opgen_case.grad = case.grad
            for name in info.scalars:
                opgen_case.arrays[name] = case.arrays.get(name)
            opgen_params = {k: v for k, v in mx_params.items()}
            if info.multi:
                opgen_params = _mxnet_params(op, {k: v for k, v in step_params.items()}, dtype)
            else:
                opgen_params = {**_mxnet_params(op, step_params, dtype), **({info.lazy_param: mode == "lazy"}
                                                                            if mode != "dense" and info.lazy_param
                                                                            else {})}
            opgen_case.params = opgen_params
            result = opgen_case(out=out_array if info.output else opgen_case.weight)
            if not info.output:
                opgen_case.weight = result
            self.opgen[f"{key}/{step}/{out_name}"] = np.array(result)
            for s in compared_states:
                self.opgen[f"{key}/{step}/{names[s]}"] = np.array(opgen_case.arrays[s])
        self.manifest.append({"key": key, "fn": MXNET_NAMES.get(op, op), "steps": steps, "results": results})
        self.meta[key] = (op, np.dtype(dtype))


    def add_reduction(self, op: str, dtype, label: str, arrays: list, kwargs: dict, out_before: np.ndarray) -> None:
        """One call of an op that only reduces: its arrays, its parameters, and the value ``out``
        holds before the call (multi_all_finite with init_output=False reads it)."""
        key = f"{op}|{np.dtype(dtype).name}|{label}"
        names = [f"{key}/data{k}" for k in range(len(arrays))]
        for name, array in zip(names, arrays):
            self.arrays[name] = array
        out_name = f"{key}/out"
        self.arrays[out_name] = out_before
        self.manifest.append({"key": key, "fn": op, "steps": [{"inputs": names, "kwargs": kwargs, "out": [out_name]}],
                              "results": [out_name]})
        ours = getattr(generated, op)(*arrays, **kwargs, out=out_before.copy())
        self.opgen[f"{key}/0/{out_name}"] = np.array(ours)
        self.meta[key] = (op, np.dtype(dtype))


def _reduction_grid(grid: Grid) -> None:
    """multi_sum_sq and multi_all_finite in three dtypes: several arrays of other shapes per
    call, non-finite values in one array, and all_finite's init_output=False beside an out
    holding 0 or 1."""
    shapes = [SHAPE, (7,), (1,), (40, 25)]
    for dtype in DTYPES:
        rng = np.random.default_rng(cases.seed("mxnet reductions", np.dtype(dtype).name))
        arrays = [(rng.normal(size=s) * 2).astype(dtype) for s in shapes]
        broken = [a.copy() for a in arrays]
        broken[1].flat[3], broken[3].flat[-1] = np.nan, np.inf
        n = len(arrays)
        grid.add_reduction("multi_sum_sq", dtype, "four", arrays, {"num_arrays": n}, np.zeros(n, np.float32))
        grid.add_reduction("multi_sum_sq", dtype, "one", arrays[3:], {"num_arrays": 1}, np.zeros(1, np.float32))
        grid.add_reduction("multi_sum_sq", dtype, "nonfinite", broken, {"num_arrays": n}, np.zeros(n, np.float32))
        for label, data in (("finite", arrays), ("nonfinite", broken), ("nan last", arrays[:3] + broken[1:2])):
            grid.add_reduction("multi_all_finite", dtype, label, data, {"num_arrays": len(data)},
                               np.zeros(1, np.float32))
            for before in (0.0, 1.0):
                grid.add_reduction("multi_all_finite", dtype, f"{label}|keep{before:g}", data,
                                   {"num_arrays": len(data), "init_output": False}, np.full(1, before, np.float32))


def _grid() -> Grid:
    grid = Grid()
    _reduction_grid(grid)
    for op in MXNET_OPS:
        if op in cases.REDUCTION_OPS:
            continue
        info = cases.op(op)
        modes = (["dense"] if info.dense else []) + (list(info.sparse_modes) if op in MXNET_SPARSE else [])
        for dtype in DTYPES:
            if info.mixed_precision and np.dtype(dtype) == np.float64:
                continue  # MXNet's mp ops take float16 or float32 weights
            for pset in cases.PARAMS[op]:
                if pset in DEVIATING_SETS or (op in ALIASING_WD and cases.PARAMS[op][pset].get("wd")):
                    continue
                if op in FLOAT32_WEIGHTS and np.dtype(dtype) != np.float32:
                    continue
                if (op.startswith(("multi_mp_", "preloaded_multi_mp_")) or op in HALF_WEIGHTS) \
                        and np.dtype(dtype) != np.float16:
                    continue  # MXNet's multi_mp kernels leave weight32 unchanged beside float32 weights
                for mode in modes:
                    grid.add(op, dtype, pset, mode)
        if op not in ALIASING_WD:  # (a non-finite new weight is where their aliasing shows)
            nonfinite_dtype = np.float16 if op.startswith(("multi_mp_", "preloaded_multi_mp_")) or op in HALF_WEIGHTS \
                else np.float32
            grid.add(op, nonfinite_dtype, next(iter(cases.PARAMS[op])), modes[0], nonfinite=True)
    return grid


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    python = _mxnet_python()
    if python is None:
        pytest.skip("MXNet 1.9.1 is not installed: python3 -m venv .venv-mxnet && .venv-mxnet/bin/pip install "
                    "'numpy<2' mxnet==1.9.1 (or set OPGEN_MXNET_PYTHON)")
    grid = _grid()
    folder = tmp_path_factory.mktemp("mxnet")
    np.savez(folder / "cases.npz", **grid.arrays)
    (folder / "manifest.json").write_text(json.dumps(grid.manifest))
    run = subprocess.run([python, str(RECORDER), str(folder / "cases.npz"), str(folder / "manifest.json"),
                          str(folder / "mxnet.npz")], capture_output=True, text=True, timeout=900)
    if run.returncode != 0:
        raise AssertionError(f"the MXNet recorder failed:\n{run.stderr[-3000:]}")
    return grid, dict(np.load(folder / "mxnet.npz"))


@pytest.mark.parametrize("op", MXNET_OPS)
def test_opgen_matches_mxnet(oracle, op):
    grid, mxnet = oracle
    failures, nonfinite_apart, compared = [], [], 0
    for key, (name, dtype) in grid.meta.items():
        if name != op:
            continue
        if f"{key}/error" in mxnet:
            failures.append(f"{key}: MXNet refused the call: {mxnet[f'{key}/error']}")
            continue
        rtol, atol = TOLERANCE[np.dtype(np.float32) if op in FLOAT32_NORMS and dtype == np.float64 else dtype]
        for result_key, ours in grid.opgen.items():
            if not result_key.startswith(key + "/"):
                continue
            theirs = mxnet[result_key]
            compared += 1
            a, e = ours.astype(np.float64), theirs.astype(np.float64)
            with np.errstate(invalid="ignore"):
                ok = (np.abs(a - e) <= atol + rtol * np.abs(e)) | (a == e) | (np.isnan(a) & np.isnan(e))
            if ok.all():
                continue
            if dtype == np.float16 and not np.isfinite(e[~ok]).all() and np.isfinite(a[~ok]).all():
                nonfinite_apart.append(result_key)  # MXNet's half intermediates overflowed or eps became 0
                continue
            k = int(np.argmax(~ok.reshape(-1)))
            failures.append(f"{result_key}: opgen {a.reshape(-1)[k]!r} MXNet {e.reshape(-1)[k]!r} "
                            f"({int((~ok).sum())} of {ok.size} elements differ)")
    assert compared, f"no case of {op} was compared"
    assert not failures, f"{len(failures)} of {compared} results differ:\n" + "\n".join(failures[:20])
