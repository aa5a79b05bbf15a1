"""Run every recorded call through MXNet 1.9.1 and save what it returns (tests/test_mxnet_oracle.py).

    PYTHON_WITH_MXNET record.py CASES.npz MANIFEST.json OUT.npz

Runs in MXNet's own environment (numpy<2, mxnet==1.9.1), without opgen. The manifest lists
the calls: {key, fn ("adam_update", "contrib.adamw_update", ...), steps: [{inputs: [array
names or row-sparse triples], kwargs}], results: [which inputs hold the results]}; each
call's arrays are MXNet NDArrays made from CASES, updated in place step after step (MXNet's
optimizers call every update with out=weight), and the results after each step are saved as
KEY/STEP/NAME. A call MXNet refuses is recorded as KEY/error with its message.
"""

from __future__ import annotations

import json
import sys

import numpy as np

np.bool = bool  # removed from NumPy 1.24; MXNet 1.9 still reads it
import mxnet as mx  # noqa: E402


def lamb_update(weight, grad, mean, var, out, lr, lower_bound=-1.0, upper_bound=-1.0, **phase1):
    """opgen's one-call LAMB as MXNet's own LAMB optimizer makes the step (python/mxnet/
    optimizer/optimizer.py:1289-1315): phase 1, the norms of the weight and of its output g,
    then phase 2 into out."""
    g = mx.nd.lamb_update_phase1(weight, grad, mean, var, **phase1)
    r1, r2 = weight.norm(), g.norm()
    mx.nd.lamb_update_phase2(weight, g, r1, r2, lr=lr, lower_bound=lower_bound, upper_bound=upper_bound, out=out)


def lars_update(weight, grad, mom, out, lr, momentum=0.0, lars_eta=0.001, epsilon=0.0, wd=0.0, rescale_grad=1.0,
                clip_gradient=-1.0):
    """opgen's one-call LARS as MXNet's LARS optimizer makes a layer's step (LARS._get_lars,
    LARS._l2norm: float32 norms, the gradient's rescaled, not clipped), then sgd_mom_update."""
    w_norm = mx.nd.norm(weight.astype("float32")).asnumpy()[0]
    g_norm = mx.nd.norm(grad.astype("float32") * rescale_grad).asnumpy()[0]
    if w_norm > 0.0 and g_norm > 0.0:
        lr = lr * lars_eta * w_norm / (g_norm + wd * w_norm + epsilon)
    mx.nd.sgd_mom_update(weight, grad, mom, lr=float(lr), momentum=momentum, wd=wd, rescale_grad=rescale_grad,
                         clip_gradient=clip_gradient, out=out)


# opgen ops that fuse several MXNet calls: their MXNet twin is the sequence of calls
COMPOSITES = {"lamb_update": lamb_update, "lars_update": lars_update}


def function(path: str):
    if path in COMPOSITES:
        return COMPOSITES[path]
    fn = mx.nd
    for part in path.split("."):
        fn = getattr(fn, part)
    return fn


def main(cases_path: str, manifest_path: str, out_path: str) -> None:
    arrays = np.load(cases_path)
    manifest = json.loads(open(manifest_path).read())
    results = {}
    for call in manifest:
        key = call["key"]
        fn = function(call["fn"])
        live = {}  # name -> NDArray, kept across the steps
        try:
            for step, spec in enumerate(call["steps"]):
                inputs = []
                for item in spec["inputs"]:
                    if isinstance(item, list):  # a row-sparse gradient: [data, indices, shape]
                        data, indices, shape = item
                        inputs.append(mx.nd.sparse.row_sparse_array((arrays[data], arrays[indices]),
                                                                    shape=tuple(shape), dtype=arrays[data].dtype))
                    else:
                        if item not in live:
                            live[item] = mx.nd.array(arrays[item], dtype=arrays[item].dtype)
                        inputs.append(live[item])
                for name in spec["out"]:
                    if name not in live:
                        live[name] = mx.nd.array(arrays[name], dtype=arrays[name].dtype)
                out = [live[name] for name in spec["out"]]
                fn(*inputs, out=out if len(out) > 1 else out[0], **spec["kwargs"])
                for name in call["results"]:
                    results[f"{key}/{step}/{name}"] = live[name].asnumpy()
        except (mx.base.MXNetError, TypeError, ValueError) as exc:
            results[f"{key}/error"] = np.array(str(exc).splitlines()[0][:300])
    np.savez(out_path, **results)


if __name__ == "__main__":
    main(*sys.argv[1:4])
