"""The spec language's optimizer section (issue 11): every mistake is a SpecError at its
place, the cross-spec checks run once all specs are loaded, hostile text reaches the
generated module only as escaped data, and a user's own spec builds into a working
torch.optim class."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from opgen.errors import SpecError
from opgen.spec import load_specs
from opgen.spec.loader import parse_spec

ROOT = Path(__file__).resolve().parent.parent
P = "specs/toy_update.yaml"
BASE = """\
name: toy_update
summary: A toy update.
tensors:
  - {name: weight, role: weight, doc: Weight}
  - {name: grad, role: grad, doc: Gradient}
  - {name: mom, role: state, doc: Momentum}
params:
  - {name: lr, type: float, required: true, doc: Learning rate}
  - {name: momentum, type: float, default: 0.9, doc: Momentum}
math:
  - mom = momentum * mom - lr * grad
  - weight = weight + mom
optimizer:
  - class: Toy
    doc: A toy optimizer.
    args:
      - {name: lr, default: 0.1, min: 0, doc: Learning rate.}
      - {name: betas, default: [0.9, 0.5], names: [b1, b2], below: 1, doc: Two rates.}
    host_state:
      - {name: prod, init: 1, update: prod * b1}
    step:
      lr: lr * (1 - prod) / t
      momentum: b2
    init: {mom: 0}
"""

CASES = [
    ("lowercase class", ("class: Toy", "class: toy"),
     f"{P}:14:12: the class name 'toy' must start with a capital letter (Python's convention for classes, which "
     "torch.optim follows)"),
    ("keyword class", ("class: Toy", "class: None"), f"{P}:14:12: the class name 'None' is a keyword of Python"),
    ("unknown key", ("    init: {mom: 0}", "    init: {mom: 0}\n    inti: 1"),
     f"{P}:25:5: unknown key 'inti' in an optimizer class; did you mean 'init'?"),
    ("the step count is reserved", ("{name: lr, default: 0.1,", "{name: t, default: 0.1,"),
     f"{P}:17:16: argument name 't' is reserved (the step count 't', the parameter's 'ndim' and 'machine_eps', and "
     "the keyword arguments params, state_dtype, rounding, seed, max_grad_norm, foreach, fused, capturable, "
     "differentiable of every class)"),
    ("the parameter's shape is reserved", ("names: [b1, b2]", "names: [b1, ndim]"),
     f"{P}:18:51: element name 'ndim' is reserved (the step count 't', the parameter's 'ndim' and 'machine_eps', "
     "and the keyword arguments params, state_dtype, rounding, seed, max_grad_norm, foreach, fused, capturable, "
     "differentiable of every class)"),
    # a null default: None, which reads as its none_is value, in step expressions only
    ("null without none_is", ("default: [0.9, 0.5]", "default: [null, 0.5]"),
     f"{P}:18:23: argument 'betas' defaults to null: 'none_is' must say what None reads as (an expression of the "
     "other arguments and machine_eps)"),
    ("none_is without null", ("names: [b1, b2],", "names: [b1, b2], none_is: machine_eps,"),
     f"{P}:18:61: argument 'betas' has 'none_is' but no null default"),
    ("a null bool", ("{name: lr, default: 0.1, min: 0,", "{name: lr, default: null, type: int,"),
     f"{P}:17:29: only a float argument may default to null, not 'lr'"),
    ("a null read by the host state", ("default: [0.9, 0.5], names: [b1, b2],",
                                       "default: [null, 0.5], names: [b1, b2], none_is: machine_eps,"),
     f"{P}:20:39: 'b1' may be None, which reads as its none_is value: only 'step' expressions read it"),
    ("none_is reads a null", ("default: [0.9, 0.5], names: [b1, b2],",
                              "default: [null, 0.5], names: [b1, b2], none_is: b1 + 1,"),
     f"{P}:18:71: 'b1' may be None, which reads as its none_is value: only 'step' expressions read it"),
    ("none_is is a condition", ("default: [0.9, 0.5], names: [b1, b2],",
                                "default: [null, 0.5], names: [b1, b2], none_is: lr > 1,"),
     f"{P}:18:71: 'none_is' of argument 'betas' must be a number, got a condition"),
    ("machine_eps outside step", ("init: 1, update", "init: machine_eps, update"),
     f"{P}:20:28: 'machine_eps' is the parameter dtype's machine epsilon: only 'step' and 'none_is' expressions "
     "read it"),
    ("ndim in step", ("momentum: b2", "momentum: b2 * ndim"),
     f"{P}:23:17: 'ndim' is the parameter's number of dimensions: only the conditions of 'alternatives' read it"),
    ("ndim in a check", ("    init: {mom: 0}", "    init: {mom: 0}\n    checks:\n      - {require: ndim > 1, message: no}"),
     f"{P}:26:19: 'ndim' is the parameter's number of dimensions: only the conditions of 'alternatives' read it"),
    ("machine_eps in an alternative", ("    init: {mom: 0}", "    init: {mom: 0}\n    alternatives:\n"
                                                            "      - {when: machine_eps > 1, op: other_update}"),
     f"{P}:26:16: 'machine_eps' is the parameter dtype's machine epsilon: only 'step' and 'none_is' expressions "
     "read it"),
    ("a builtin", ("{name: lr, default: 0.1,", "{name: len, default: 0.1,"),
     f"{P}:17:16: argument name 'len' is a name the generated class uses itself (a Python builtin, or one of "
     "group, host, choice, self, initial, weight)"),
    ("a generated name", ("{name: lr, default: 0.1,", "{name: group, default: 0.1,"),
     f"{P}:17:16: argument name 'group' is a name the generated class uses itself (a Python builtin, or one of "
     "group, host, choice, self, initial, weight)"),
    ("the init keyword", ("{name: lr, default: 0.1,", "{name: weight, default: 0.1,"),
     f"{P}:17:16: argument name 'weight' is a name the generated class uses itself (a Python builtin, or one of "
     "group, host, choice, self, initial, weight)"),
    ("an empty doc", ("doc: A toy optimizer.", 'doc: ""'), f"{P}:15:10: the doc of class 'Toy' is empty"),
    ("tuple without names", ("names: [b1, b2], ", ""),
     f"{P}:18:23: the tuple argument 'betas' needs 'names': one per element, as the expressions read them"),
    ("names count", ("names: [b1, b2]", "names: [b1]"), f"{P}:18:51: argument 'betas' has 2 elements but 1 names"),
    ("bad default", ("default: 0.1, min", "default: fast, min"),
     f"{P}:17:29: the default of argument 'lr' must be a float literal, got 'fast'"),
    ("default out of bounds", ("default: 0.1, min: 0", "default: -0.1, min: 0"),
     f"{P}:17:29: the default of argument 'lr' is -0.1, below its minimum 0"),
    ("bound on a bool", ("{name: lr, default: 0.1, min: 0,", "{name: lr, default: true, min: 0,"),
     f"{P}:17:35: the bool argument 'lr' cannot have a bound"),
    ("undefined name", ("momentum: b2", "momentum: b3"), f"{P}:23:17: undefined name 'b3'"),
    ("no eval of spec text", ("momentum: b2", "momentum: __import__('os').system('x')"),
     f"{P}:23:17: only the spec language's functions can be called"),
    ("a tensor function", ("momentum: b2", "momentum: row_mean(b2)"),
     f"{P}:23:17: row_mean() reads a tensor's rows or columns; host expressions read numbers only"),
    ("initial host state reads t", ("init: 1, update", "init: t, update"), f"{P}:20:28: undefined name 't'"),
    ("bad state dtype", ("    init: {mom: 0}", "    init: {mom: 0}\n    state_dtype: float16"),
     f"{P}:25:18: state_dtype must be one of weight, float32, got 'float16'"),
    ("alternative on a number", ("    init: {mom: 0}", "    init: {mom: 0}\n    alternatives:\n"
                                                      "      - {when: lr, op: other_update}"),
     f"{P}:26:16: this must be a condition (a comparison), got a number"),
    ("element declared twice", ("names: [b1, b2]", "names: [b1, lr]"), f"{P}:18:16: 'lr' is declared twice "
                                                                       "(first at line 17)"),
    ("check on a number", ("    init: {mom: 0}", "    init: {mom: 0}\n    checks:\n      - {require: lr + 1, message: no}"),
     f"{P}:26:19: this must be a condition (a comparison), got a number"),
]


def _edit(edit):
    old, new = edit
    assert old in BASE, old
    return BASE.replace(old, new, 1)


def test_base_spec_is_valid():
    (cls,) = parse_spec(BASE, P, expected_name="toy_update").optimizers
    assert cls.class_name == "Toy" and [a.name for a in cls.args] == ["lr", "betas"]
    assert cls.ops == ("toy_update",) and [h.name for h in cls.host_state] == ["prod"]


@pytest.mark.parametrize("edit, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_error_message(edit, message):
    with pytest.raises(SpecError) as info:
        parse_spec(_edit(edit), P, expected_name="toy_update")
    assert str(info.value) == message


OTHER = BASE.replace("toy_update", "other_update").split("optimizer:")[0]

PACKAGE_CASES = [
    ("unknown op", ("    init: {mom: 0}", "    init: {mom: 0}\n    alternatives:\n      - {when: b1 > 0.5, op: toy2_update}"),
     "specs/toy_update.yaml:26:9: class 'Toy' uses op 'toy2_update', which no spec defines; did you mean "
     "'toy_update'?"),
    ("not a parameter", ("momentum: b2", "momentum: b2\n      moment: b1"),
     "specs/toy_update.yaml:24:7: 'moment' is not a parameter of the ops class 'Toy' uses; did you mean 'momentum'?"),
    ("a condition for a float", ("momentum: b2", "momentum: b2 > 0"),
     "specs/toy_update.yaml:23:7: 'momentum' is a float parameter of op 'toy_update' but its expression gives a "
     "condition"),
    ("required parameter missing", ("      lr: lr * (1 - prod) / t\n", ""),
     "specs/toy_update.yaml:14:12: class 'Toy' gives no value for the required parameter 'lr' of op 'toy_update' "
     "in 'step'"),
    ("state without initial value", ("    init: {mom: 0}", "    init: {}"),
     "specs/toy_update.yaml:14:12: class 'Toy' gives no initial value for the state 'mom' of op 'toy_update' in "
     "'init'"),
    ("a host state named like a state", ("{name: prod, init: 1, update: prod * b1}\n    step:\n      lr: lr * (1 - prod)",
                                         "{name: mom, init: 1, update: mom * b1}\n    step:\n      lr: lr * (1 - mom)"),
     "specs/toy_update.yaml:20:9: host state 'mom' would share its name with a state in each parameter's state "
     "dict"),
    ("a host state named step", ("{name: prod, init: 1, update: prod * b1}\n    step:\n      lr: lr * (1 - prod)",
                                 "{name: step, init: 1, update: step * b1}\n    step:\n      lr: lr * (1 - step)"),
     "specs/toy_update.yaml:20:9: host state 'step' would share its name with the step count in each parameter's "
     "state dict"),
    ("initial value of no state", ("    init: {mom: 0}", "    init: {mom: 0, moment: 1}"),
     "specs/toy_update.yaml:24:20: 'moment' is not a state of the ops class 'Toy' uses; did you mean 'mom'?"),
]


@pytest.mark.parametrize("edit, message", [c[1:] for c in PACKAGE_CASES], ids=[c[0] for c in PACKAGE_CASES])
def test_cross_spec_errors(tmp_path, edit, message):
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "toy_update.yaml").write_text(_edit(edit))
    (specs / "other_update.yaml").write_text(OTHER)
    with pytest.raises(SpecError) as info:
        load_specs(specs)
    assert str(info.value) == f"{tmp_path}/{message}"


def test_a_class_cannot_drive_an_op_without_a_multi_tensor_kernel(tmp_path):
    """An op with a read-only input has no multi-tensor kernel, which a step calls: the class
    is a spec error (not a generated optim.py that fails to import)."""
    specs = tmp_path / "specs"
    specs.mkdir()
    text = BASE.replace("  - {name: mom, role: state, doc: Momentum}\n",
                        "  - {name: mom, role: state, doc: Momentum}\n  - {name: prior, role: input, doc: Prior}\n")
    (specs / "toy_update.yaml").write_text(text.replace("- lr * grad", "- lr * grad * prior"))
    with pytest.raises(SpecError, match="cannot drive op 'toy_update', which has no multi-tensor kernel"):
        load_specs(specs)


def test_a_class_declared_twice(tmp_path):
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "toy_update.yaml").write_text(BASE)
    (specs / "other_update.yaml").write_text(BASE.replace("toy_update", "other_update"))
    with pytest.raises(SpecError, match=r"toy_update.yaml:14:12: class 'Toy' is declared twice \(first in "
                                        r"other_update.yaml at line 14\)"):
        load_specs(specs)


HOSTILE_DOC = 'Ends the docstring: """ ; \\"""; a backslash \\ and a quote " ; __import__("os")'


def test_a_users_spec_builds_a_working_class_and_hostile_text_stays_data(tmp_path):
    """A spec outside the repository: `opgen build` writes its package with an optim module;
    its class trains as the formulas say, computed by hand here; the hostile doc is only a
    docstring."""
    pytest.importorskip("torch")
    specs = tmp_path / "specs"
    specs.mkdir()
    hostile = BASE.replace("doc: A toy optimizer.", "doc: |\n      " + HOSTILE_DOC)
    (specs / "toy_update.yaml").write_text(hostile)
    build = subprocess.run([sys.executable, "-m", "opgen", "build", "--specs", str(specs), "--out", "toypkg"],
                           cwd=tmp_path, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    script = textwrap.dedent("""
        import torch, toypkg.optim as o
        assert o.Toy.__doc__.strip().splitlines()[0] == %r
        w = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
        opt = o.Toy([w], lr=0.5, betas=(0.8, 0.25))
        for _ in range(2):
            w.grad = torch.full((3,), 2.0, dtype=torch.float64)
            opt.step()
        print(w.detach().tolist(), opt.state[w]["prod"])
    """ % HOSTILE_DOC)
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    # by hand: t=1: prod=0.8, lr1=0.5*(1-0.8)/1=0.1, mom=-0.2, w=0.8;
    #          t=2: prod=0.64, lr2=0.5*0.36/2=0.09, mom=0.25*-0.2-0.18=-0.23, w=0.57
    values, prod = eval(run.stdout.strip().rsplit(" ", 1)[0]), float(run.stdout.strip().rsplit(" ", 1)[1])
    assert values == pytest.approx([0.57] * 3, abs=1e-12) and prod == pytest.approx(0.64)


def test_the_repository_specs_declare_the_documented_classes():
    classes = {c.class_name: c.ops for op in load_specs(ROOT / "specs") for c in op.optimizers}
    assert set(classes) == {"Adam", "AdamW", "SparseAdam", "SGD", "Adagrad", "RMSprop", "NAdam", "MXNetAdam",
                            "MXNetSGD", "LAMB", "LARS", "NovoGrad", "Adafactor"}
    assert classes["Adafactor"] == ("torch_adafactor_vector_update", "torch_adafactor_update")
    assert classes["RMSprop"][-1] == "torch_rmsprop_update" and len(classes["RMSprop"]) == 4
