"""Broken specs: exact `file:line:col: message`, exit status 2, output folder untouched."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from opgen.errors import SpecError
from opgen.spec.loader import parse_spec

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
"""

P = "specs/toy_update.yaml"
MOM = "  - {name: mom, role: state, doc: Momentum}\n"
TAIL = BASE[BASE.index(MOM):]  # the momentum state to the end: edits that touch several places

# (name, (old, new) edit of BASE, expected error)
CASES = [
    ("unknown key", ("summary:", "sumary: x\nsummary:"),
     f"{P}:2:1: unknown key 'sumary' in the spec; did you mean 'summary'?"),
    ("duplicate key", ("summary: A toy update.", "summary: A toy update.\nsummary: again"),
     f"{P}:3:1: duplicate key 'summary' in the spec (first at line 2)"),
    ("missing key", ("summary: A toy update.\n", ""),
     f"{P}:1:1: the spec is missing the required key 'summary'"),
    ("wrong type of value", (BASE[BASE.index("tensors:"):BASE.index("params:")], "tensors: 3\n"),
     f"{P}:3:10: 'tensors' in the spec must be a list, got '3'"),
    ("unknown param type", ("type: float, default: 0.9", "type: floot, default: 0.9"),
     f"{P}:9:28: unknown type 'floot' for parameter 'momentum' (types: float, int, bool)"),
    ("unknown role", ("role: state", "role: stat"),
     f"{P}:6:23: unknown role 'stat' for tensor 'mom' (roles: weight, grad, state, scalar, input)"),
    ("quoted default", ("default: 0.9", 'default: "0.9"'),
     f"{P}:9:44: default of float parameter 'momentum' is the quoted string '0.9'; write it without quotes"),
    ("bad default", ("default: 0.9", "default: fast"),
     f"{P}:9:44: default of float parameter 'momentum' must be a float literal, got 'fast'"),
    ("required with default", ("required: true", "required: true, default: 1"),
     f"{P}:8:45: parameter 'lr' is required and so cannot have a default"),
    ("no default", ("required: true, ", ""),
     f"{P}:8:5: parameter 'lr' needs a default or 'required: true'"),
    ("declared twice", ("{name: momentum,", "{name: lr,"),
     f"{P}:9:5: 'lr' is declared twice (first at line 8)"),
    ("undefined name", ("- lr * grad", "- lr * gard"),
     f"{P}:11:33: undefined name 'gard'; did you mean 'grad'?"),
    ("unknown function", ("weight + mom", "weight + sqr(mom)"),
     f"{P}:12:23: unknown function 'sqr'; did you mean 'sqrt'?"),
    ("wrong arity", ("weight + mom", "weight + sqrt(mom, 2)"),
     f"{P}:12:23: sqrt() takes 1 argument, got 2"),
    ("assign to gradient", ("  - weight = weight + mom", "  - grad = grad * 2\n  - weight = weight + mom"),
     f"{P}:12:5: cannot assign to 'grad': it is a read-only input"),
    ("assign to parameter", ("  - weight = weight + mom", "  - lr = 2 * lr\n  - weight = weight + mom"),
     f"{P}:12:5: cannot assign to 'lr': it is a parameter"),
    ("state never written", ("  - mom = momentum * mom - lr * grad\n  - weight = weight + mom",
                             "  - step = momentum * mom - lr * grad\n  - weight = weight + step"),
     f"{P}:6:5: state 'mom' is never written by the math"),
    ("parameter never used", ("doc: Momentum}\nmath", "doc: Momentum}\n  - {name: beta, type: float, default: 1, doc: x}\nmath"),
     f"{P}:10:5: parameter 'beta' is never used by the math (mark it 'ignored: true' if it is accepted only "
     "for compatibility)"),
    ("math syntax", ("weight + mom", "weight + * mom"), f"{P}:12:23: invalid math syntax: invalid syntax"),
    ("YAML syntax", ("doc: Momentum}", "doc: Momentum"), f"{P}:7:7: invalid YAML: expected ',' or '}}', but got ':'"),
    ("no eval of spec text", ("weight + mom", '__import__("os").system("x")'),
     f"{P}:12:14: only the spec language's functions can be called"),
    ("attribute access", ("weight + mom", "weight + mom.real"), f"{P}:12:23: unsupported syntax in math: Attribute"),
    ("condition in arithmetic", ("weight + mom", "weight + (mom > 0)"),
     f"{P}:12:14: '+' needs a number, got a condition"),
    ("number as condition", ("weight + mom", "weight + (mom if lr else 0)"),
     f"{P}:12:31: a condition ('x if condition else y') needs a condition (a comparison or a bool parameter), got a number"),
    ("two weights", ("role: state", "role: weight"),
     f"{P}:4:3: an op needs exactly one tensor with role 'weight', found 2 (or, an op that only reduces, inputs "
     "alone and an output)"),
    ("name and file differ", ("name: toy_update", "name: other_update"),
     f"{P}:1:7: the op is named 'other_update' but its file is 'toy_update.yaml'; they must match"),
    ("reserved name", ("{name: momentum,", "{name: out,"), f"{P}:9:12: parameter name 'out' is reserved"),
    ("unused temporary", ("  - weight = weight + mom", "  - spare = 2 * mom\n  - weight = weight + mom"),
     f"{P}:12:5: temporary 'spare' is assigned but never used"),
    ("ignored but used", ("{name: momentum, type: float, default: 0.9,", "{name: momentum, type: float, default: 0.9, ignored: true,"),
     f"{P}:9:5: parameter 'momentum' is marked ignored but the math uses it"),
    ("bad range", ("default: 0.9,", "default: 0.9, range: [1, 0],"),
     f"{P}:9:56: range of parameter 'momentum' is empty: 1 > 0"),
    ("skip_if reads a tensor", ("math:", "skip_if: grad > 0\nmath:"),
     f"{P}:10:10: this condition may read parameters and scalar inputs only, not tensors"),
    ("output not a temporary", ("math:", "output: mom\nmath:"),
     f"{P}:10:9: output 'mom' must be a temporary assigned by the math"),
    ("fixed dtype on weight", ("role: weight, doc: Weight}", "role: weight, doc: Weight, dtype: float32}"),
     f"{P}:4:54: the weight 'weight' takes the call's dtype; only gradients, states and inputs can fix theirs"),
    ("input never read", ("  - {name: mom, role: state, doc: Momentum}\n",
                          "  - {name: mom, role: state, doc: Momentum}\n  - {name: prior, role: input, doc: Prior}\n"),
     f"{P}:7:5: input 'prior' is never read by the math"),
    ("input assigned", (TAIL, TAIL.replace("  - weight = weight + mom", "  - prior = mom\n  - weight = weight + prior")
                        .replace(MOM, MOM + "  - {name: prior, role: input, doc: Prior}\n")),
     f"{P}:13:5: cannot assign to 'prior': it is a read-only input"),
    ("input with row_sparse", (TAIL, TAIL.replace("math:", "row_sparse: {lazy: true}\nmath:")
                               .replace("lr * grad", "lr * grad * prior")
                               .replace(MOM, MOM + "  - {name: prior, role: input, doc: Prior}\n")),
     f"{P}:11:1: an op with read-only inputs takes dense gradients only: remove row_sparse"),
    ("unknown output dtype", (TAIL, TAIL.replace("math:\n", "output: {name: step, dtype: float8}\nmath:\n  - step = lr * grad\n")
                              .replace("  - weight = weight + mom\n", "")),
     f"{P}:10:29: unknown dtype 'float8' for the output 'step' (dtypes: float16, bfloat16, float32, float64)"),
    ("uniform output", (TAIL, TAIL.replace("math:\n", "output: n\nmath:\n  - n = lr * 2\n")
                        .replace("  - weight = weight + mom\n", "")),
     f"{P}:10:9: output 'n' is the same for every element (it reads no tensor); an output is one value per "
     "element: keep a per-call value in a per-tensor state instead"),
    ("unknown output key", (TAIL, TAIL.replace("math:\n", "output: {name: step, dtpe: float32}\nmath:\n  - step = lr * grad\n")
                            .replace("  - weight = weight + mom\n", "")),
     f"{P}:10:22: unknown key 'dtpe' in the output; did you mean 'dtype'?"),
    ("bad lazy switch", ("math:", "row_sparse: {lazy: momentum}\nmath:"),
     f"{P}:10:20: row_sparse.lazy must be true, false or the name of a bool parameter, got 'momentum'"),
]


def _edit(edit: tuple[str, str]) -> str:
    old, new = edit
    assert old in BASE, old
    return BASE.replace(old, new, 1)


def test_base_spec_is_valid():
    op = parse_spec(BASE, P, expected_name="toy_update")
    assert [t.name for t in op.tensors] == ["weight", "grad", "mom"]
    assert [p.default for p in op.params] == [None, "0.9"]


@pytest.mark.parametrize("edit, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_error_message(edit, message):
    with pytest.raises(SpecError) as info:
        parse_spec(_edit(edit), P, expected_name="toy_update")
    assert str(info.value) == message


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", [CASES[0], CASES[11], CASES[16]], ids=lambda c: c[0])
def test_cli_reports_error_and_leaves_output_untouched(tmp_path, case):
    specs, out = tmp_path / "specs", tmp_path / "out"
    specs.mkdir()
    (specs / "toy_update.yaml").write_text(BASE)
    ok = subprocess.run([sys.executable, "-m", "opgen", "build", "--no-compile", "--out", "out"],
                        cwd=tmp_path, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    (out / "toy_update.py").write_text("# a hand edit that a failed build must not touch\n")
    before = _snapshot(out)

    # a second, valid spec sorts first: a build that wrote specs one by one would touch it
    (specs / "aaa_update.yaml").write_text(BASE.replace("toy_update", "aaa_update"))
    (specs / "toy_update.yaml").write_text(_edit(case[1]))
    bad = subprocess.run([sys.executable, "-m", "opgen", "build", "--no-compile", "--out", "out"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip() == case[2]
    assert "Traceback" not in bad.stderr and bad.stdout == ""
    assert _snapshot(out) == before
