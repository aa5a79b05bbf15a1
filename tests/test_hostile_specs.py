"""A spec is untrusted input (issue 9): its text reaches generated files only as data, every
name it defines is checked against every target's rules and every derived name, and text
no file can carry is refused with its place. Each case asserts the exact clean outcome."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from opgen.build import build, render, DEFAULT_TEMPLATES
from opgen.errors import SpecError
from opgen.spec import load_specs
from opgen.spec.loader import parse_spec
from packages import import_fresh
from test_spec_errors import BASE, P

ROOT = Path(__file__).resolve().parent.parent

def spec_error(text: str) -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(text, P, expected_name=None)
    return str(info.value)


def edit(old: str, new: str, text: str = BASE) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


# ---- text is data ---------------------------------------------------------------------------

# Each payload tries to end the place it lands in: a Python string or docstring, a C or
# HTML comment, a Markdown table row, a Jinja expression; or to become markup.
PAYLOADS = [
    '"""; __import__("os").system("touch PWNED"); """',
    "'''; __import__('os').system('touch PWNED'); '''",
    "ends in a backslash \\",
    "a \\\" quote and a \\\\ pair",
    "$\\beta_1$ and \\n not a newline",
    "*/ int pwned = 1; /*",
    "--> <script>alert(1)</script> <!--",
    "x | y | z",
    "line one\n| a | b |\n## heading",
    "{{ 7 * 7 }} {% raw %}",
    "??/ trigraph",
    "`back`ticks`` and ```fences",
]


def hostile_spec(payload: str) -> str:
    """Every free-text field of a spec holds ``payload``; the math line carries it as a comment."""
    quoted = '"' + payload.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    comment = quoted.replace("\\n", " ")  # a newline would end a math line's comment
    return textwrap.dedent(f"""\
        name: hostile_update
        summary: {quoted}
        description: {quoted}
        tensors:
          - {{name: weight, role: weight, doc: {quoted}}}
          - {{name: grad, role: grad, doc: {quoted}}}
          - {{name: mom, role: state, doc: {quoted}}}
        params:
          - {{name: lr, type: float, required: true, doc: {quoted}}}
          - {{name: rescale_grad, type: float, default: 1.0, doc: {quoted}}}
        skip_if: {'"rescale_grad == 0  # ' + comment[1:]}
        deviations:
          - {quoted}
        math:
          - {'"mom = 0.5 * mom + grad * rescale_grad  # ' + comment[1:]}
          - weight = weight - lr * mom
        """)


def build_hostile(tmp_path: Path, payload: str, folder: str = "specs", package: str = "hostile_pkg",
                  compile_c: bool = False):
    spec_dir = tmp_path / folder
    spec_dir.mkdir()
    (spec_dir / "hostile_update.yaml").write_text(hostile_spec(payload), encoding="utf-8")
    build(spec_dir, tmp_path / package, compile_c=compile_c)
    return tmp_path / package


@pytest.mark.parametrize("payload", PAYLOADS)
def test_spec_text_reaches_every_generated_file_as_data(tmp_path, payload, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = build_hostile(tmp_path, payload)
    pkg = import_fresh(tmp_path, "hostile_pkg")
    w, g, m = np.ones(3, np.float32), np.ones(3, np.float32), np.zeros(3, np.float32)
    result = pkg.hostile_update(w, g, m, lr=0.5)
    np.testing.assert_array_equal(result, np.full(3, 0.5, np.float32))  # 1 - 0.5 * (0.5 * 0 + 1)
    assert not (tmp_path / "PWNED").exists()
    # Python: the docstrings hold the text exactly
    doc = pkg.hostile_update.__doc__
    flat = " ".join(payload.split())
    assert flat in " ".join(doc.split())
    assert pkg.hostile_update.__module__ == "hostile_pkg.hostile_update"
    module = importlib.import_module("hostile_pkg.hostile_update")
    assert flat in module.__doc__
    # C and CUDA: the math line's comment cannot close the comment it lands in
    for rel in ("csrc/hostile_update_math.h", "csrc/hostile_update.c", "cuda/hostile_update.cu"):
        text = (out / rel).read_text()
        for comment_free in re.sub(r"/\*.*?\*/", "", text, flags=re.S).splitlines():
            assert "pwned" not in comment_free and "??/" not in comment_free, (rel, comment_free)
    # Markdown: no raw HTML, the header comment closes once, the index keeps its columns
    page = (out / "docs" / "hostile_update.md").read_text()
    index = (out / "docs" / "index.md").read_text()
    for text in (page, index):
        header, body = text.split("\n", 1)
        assert header.count("-->") == 1 and header.endswith("-->") and header.count("<!--") == 1, header
        assert "<script" not in body and "<!--" not in body, body  # no markup, no comment opened
    row = next(line for line in index.splitlines() if line.startswith("| [`hostile_update`]"))
    assert len(re.findall(r"(?<!\\)\|", row)) == 3, row  # two cells: three unescaped bars
    assert "49" not in page.replace("2004", "")  # Jinja never evaluated the spec's {{ 7 * 7 }}


def test_hostile_comments_compile_in_c(tmp_path, monkeypatch):
    """The payloads that aim at C comments, all at once, through the real compiler."""
    monkeypatch.setenv("OPGEN_CACHE_DIR", str(tmp_path / "cache"))
    from opgen.cbuild import compiler_available

    if not compiler_available():
        pytest.skip("no C compiler")
    build_hostile(tmp_path, "*/ int pwned = 1; /* ??/ \\", compile_c=True)
    pkg = import_fresh(tmp_path, "hostile_pkg")
    with pkg.use_backend("c"):
        result = pkg.hostile_update(np.ones(3, np.float32), np.ones(3, np.float32), np.zeros(3, np.float32), lr=0.5)
    np.testing.assert_array_equal(result, np.full(3, 0.5, np.float32))


@pytest.mark.parametrize("folder", ["my specs", "quo'te\"s", "new\nline", "dash--> x", "back\\slash", "ünï"])
def test_the_spec_folders_name_is_data_in_every_header(tmp_path, folder, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = build_hostile(tmp_path, "plain", folder=folder)
    pkg = import_fresh(tmp_path, "hostile_pkg")
    assert pkg.hostile_update(np.ones(2), np.ones(2), np.zeros(2), lr=1.0).tolist() == [0.0, 0.0]
    assert not (tmp_path / "PWNED").exists()
    assert importlib.import_module("hostile_pkg.hostile_update")._OP.spec == f"{folder}/hostile_update.yaml"
    for path in out.rglob("*"):
        if path.is_file():
            first, second = path.read_text().splitlines()[:2]
            assert "@generated by opgen" in first and "Do not edit" in first, path
            if path.suffix == ".md":
                assert first.count("-->") == 1 and first.endswith("-->")


# NUL, lone surrogates and other text no generated file can carry (YAML's escapes spell them)
@pytest.mark.parametrize("escape, what", [
    ("\\0", "a NUL character (U+0000)"),
    ("\\ud800", "a lone surrogate (U+D800)"),
    ("\\x1b", "a control character (U+001B)"),
    ("\\x85", "a control character (U+0085)"),
    ("\\u2028", "a control character (U+2028)"),
    ("\\u202e", "a bidirectional-text control character (U+202E)"),
    ("\\u2066", "a bidirectional-text control character (U+2066)"),
])
@pytest.mark.parametrize("field", ["summary", "doc", "symbol"])
def test_text_no_file_can_hold_is_refused_with_its_place(field, escape, what):
    old = {"summary": "summary: A toy update.", "doc": "doc: Momentum}",
           "symbol": "doc: Momentum}"}[field]
    new = {"summary": f'summary: "A toy{escape} update."', "doc": f'doc: "Mom{escape}"}}',
           "symbol": f'doc: Momentum, symbol: "m{escape}"}}'}[field]
    line, col = {"summary": (2, 10), "doc": (6, 35), "symbol": (6, 53)}[field]
    assert spec_error(edit(old, new)) == f"{P}:{line}:{col}: the text holds {what}, which is not allowed"


def test_a_refused_character_in_a_plain_scalar_is_placed_exactly(tmp_path):
    # PyYAML refuses most control characters itself; a tab-free plain scalar with a bidi
    # override is readable YAML: the column is the character's own
    text = edit("summary: A toy update.", "summary: A toy \u202eupdate.")
    assert spec_error(text) == (f"{P}:2:16: the text holds a bidirectional-text control character (U+202E), "
                                "which is not allowed")


def test_a_bad_spec_leaves_the_output_folder_untouched(tmp_path):
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "toy_update.yaml").write_text(BASE)
    out = tmp_path / "pkg"
    build(specs, out, compile_c=False)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (specs / "toy_update.yaml").write_text(edit("doc: Momentum}", 'doc: "M\\ud800"}'))
    result = subprocess.run([sys.executable, "-m", "opgen", "build", "--no-compile", "--specs", str(specs), "--out",
                             str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == ("specs/toy_update.yaml:6:35: the text holds a lone surrogate (U+D800), "
                                     "which is not allowed")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("symbol", ["$x$", "x}", "{x", "\\\\begin{x}", "a \\\\\\\\ b", "<b>", "a`b"])
def test_latex_symbols_are_plain_symbols(symbol):
    message = spec_error(edit("doc: Momentum}", f'doc: Momentum, symbol: "{symbol}"}}'))
    assert message.startswith(f"{P}:6:53: symbol ") and "is not a plain LaTeX symbol" in message


def test_deeply_nested_yaml_is_a_spec_error():
    text = BASE + "description: " + "[" * 5000 + "]" * 5000 + "\n"
    assert spec_error(text) == f"{P}:1:1: invalid YAML: collections nested too deeply"


# ---- names ----------------------------------------------------------------------------------

NAME_CASES = [
    # (edits of BASE, expected message)
    ([("{name: mom, role: state", "{name: int, role: state")], "6:12: tensor name 'int' is a keyword of C, C++ or CUDA"),
    ([("{name: mom, role: state", "{name: class, role: state")], "6:12: tensor name 'class' is a keyword of Python"),
    ([("{name: mom, role: state", "{name: threadIdx, role: state")],
     "6:12: tensor name 'threadIdx' is a keyword of C, C++ or CUDA"),
    ([("{name: momentum, type", "{name: template, type")],
     "9:12: parameter name 'template' is a keyword of C, C++ or CUDA"),
    ([("{name: mom, role: state", "{name: mōm, role: state")],
     "6:12: tensor name 'mōm' is not a valid name (ASCII letters, digits and '_', starting with a letter)"),
    ([("name: toy_update", "name: Toy-update")],
     "1:7: the op's name 'Toy-update' is not a valid name (ASCII letters, digits and '_', starting with a letter)"),
    ([("{name: momentum, type", "{name: out, type")], "9:12: parameter name 'out' is reserved"),
    # derived names: the multi-tensor form's arguments are the tensors' names + "s"
    ([("{name: mom, role", "{name: i, role"), ("mom = momentum * mom", "i = momentum * i"),
      ("weight + mom", "weight + i")],
     "6:5: tensor 'i' gives the argument 'is' of toy_update_multi(), which is a keyword of Python"),
    ([("{name: mom, role", "{name: a, role"), ("mom = momentum * mom", "a = momentum * a"),
      ("weight + mom", "weight + a")],
     "6:5: tensor 'a' gives the argument 'as' of toy_update_multi(), which is a keyword of Python"),
    ([("{name: momentum, type", "{name: weights, type"), ("momentum * mom", "weights * mom")],
     "9:5: parameter 'weights' gives the argument 'weights' of toy_update_multi(), which tensor 'weight' already "
     "gives"),
    ([("{name: momentum, type", "{name: grads, type"), ("momentum * mom", "grads * mom")],
     "9:5: parameter 'grads' gives the argument 'grads' of toy_update_multi(), which tensor 'grad' already gives"),
    # every multi-tensor entry point's clipping argument
    ([("{name: momentum, type", "{name: max_grad_norm, type"), ("momentum * mom", "max_grad_norm * mom")],
     "1:7: the clipping argument 'max_grad_norm' gives the argument 'max_grad_norm' of toy_update_multi(), which "
     "parameter 'max_grad_norm' already gives"),
]


@pytest.mark.parametrize("edits, expected", NAME_CASES, ids=[c[1].split(": ", 1)[1][:48] for c in NAME_CASES])
def test_names_meet_every_targets_rules(edits, expected):
    text = BASE
    for old, new in edits:
        text = edit(old, new, text)
    assert spec_error(text) == f"{P}:{expected}"


def test_a_non_ascii_temporary_is_refused_at_its_place():
    text = edit("  - weight = weight + mom", "  - stepβ = mom * 1.0\n  - weight = weight + stepβ")
    assert spec_error(text) == (f"{P}:12:5: temporary 'stepβ' is not a valid name (ASCII letters, digits and '_', "
                                "starting with a letter)")


def test_a_temporary_named_like_a_c_keyword_is_refused():
    text = edit("  - weight = weight + mom", "  - double = mom * 2.0\n  - weight = weight + double")
    assert spec_error(text) == f"{P}:12:5: temporary 'double' is a keyword of C, C++ or CUDA"


INTERLEAVED = """\
name: toy_update
summary: MXNet's multi-tensor convention.
tensors:
  - {name: weight, role: weight, doc: Weight}
  - {name: grad, role: grad, doc: Gradient}
params:
  - {name: lrs, type: float, required: true, doc: Learning rates}
  - {name: num_weights, type: int, default: 1, doc: Count}
multi: {count: num_weights, per_tensor: {lrs: lr_list}}
math:
  - weight = weight - lrs * grad
"""


def test_the_interleaved_array_list_is_a_taken_name():
    text = edit("per_tensor: {lrs: lr_list}", "per_tensor: {lrs: data}", INTERLEAVED)
    assert spec_error(text) == (f"{P}:7:5: parameter 'lrs' gives the argument 'data' of toy_update(), which "
                                "the array list already gives")


def test_a_per_tensor_list_name_meets_the_rules():
    text = edit("per_tensor: {lrs: lr_list}", "per_tensor: {lrs: lambda}", INTERLEAVED)
    assert spec_error(text) == f"{P}:9:47: the per-tensor list name 'lambda' is a keyword of Python"


def write_specs(folder: Path, specs: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in specs.items():
        (folder / f"{name}.yaml").write_text(text)
    return folder


def renamed(name: str) -> str:
    return BASE.replace("name: toy_update", f"name: {name}")


@pytest.mark.parametrize("names, expected", [
    (("foo", "foo_multi"), "foo_multi.yaml:1:7: op 'foo_multi' exports 'foo_multi', a name the multi-tensor "
                           "form of op 'foo' already uses"),
    (("index",), "index.yaml:1:7: op 'index' exports 'index', a name the package itself already uses"),
    (("docs",), "docs.yaml:1:7: op 'docs' exports 'docs', a name the package itself already uses"),
    (("use_backend",), "use_backend.yaml:1:7: op 'use_backend' exports 'use_backend', a name the package itself "
                       "already uses"),
    (("RowSparseArray",), "RowSparseArray.yaml:1:7: op 'RowSparseArray' exports 'RowSparseArray', a name the "
                          "package itself already uses"),
    (("Adam", "adam"), "adam.yaml:1:7: op 'adam' differs from op 'Adam' only in case: their files would be one "
                       "file on case-insensitive file systems"),
])
def test_op_names_do_not_collide_in_the_package(tmp_path, names, expected):
    folder = write_specs(tmp_path / "specs", {n: renamed(n) for n in names})
    with pytest.raises(SpecError) as info:
        load_specs(folder)
    assert str(info.value) == f"{folder}/{expected}"


def test_a_colliding_op_leaves_the_output_untouched_and_exits_2(tmp_path):
    folder = write_specs(tmp_path / "specs", {"foo": renamed("foo")})
    out = tmp_path / "pkg"
    build(folder, out, compile_c=False)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    write_specs(folder, {"foo_multi": renamed("foo_multi")})
    result = subprocess.run([sys.executable, "-m", "opgen", "build", "--no-compile", "--specs", "specs", "--out",
                             "pkg"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("specs/foo_multi.yaml:1:7: op 'foo_multi' exports 'foo_multi'")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


# ---- numbers in defaults and ranges ---------------------------------------------------------

@pytest.mark.parametrize("change, expected", [
    (("default: 0.9", "default: 1e400"), "9:44: default of parameter 'momentum' 1e400 overflows a float64"),
    (("default: 0.9", "default: -1e400"), "9:44: default of parameter 'momentum' -1e400 overflows a float64"),
    (("default: 0.9", "default: 1e-400"), "9:44: default of parameter 'momentum' 1e-400 underflows to 0 in a float64"),
    (("default: 0.9", "default: 0.9, range: [0, 1e999]"),
     "9:60: range bound of parameter 'momentum' 1e999 overflows a float64"),
])
def test_float_numbers_must_fit_a_float64(change, expected):
    assert spec_error(edit(*change)) == f"{P}:{expected}"


@pytest.mark.parametrize("value, ok", [("9223372036854775807", True), ("-9223372036854775808", True),
                                       ("9223372036854775808", False), ("-9223372036854775809", False),
                                       ("100000000000000000000000000", False)])
def test_int_defaults_must_fit_the_kernels_int64(value, ok):
    text = edit("  - {name: momentum, type: float",
                f"  - {{name: steps, type: int, default: {value}, ignored: true, doc: n}}\n"
                "  - {name: momentum, type: float")
    if ok:
        assert parse_spec(text, P).params[1].default == value
    else:
        assert spec_error(text) == (f"{P}:9:39: default of int parameter 'steps' is {value}, outside the 64-bit "
                                    "range the kernels take")


# ---- generated modules compile at build time ------------------------------------------------

def test_a_module_that_would_not_compile_is_a_build_error_naming_the_spec(tmp_path, monkeypatch):
    """Defence in depth: were a template or an escape ever wrong, the build says so, naming
    the spec, and writes nothing."""
    ops = load_specs(write_specs(tmp_path / "specs", {"toy_update": BASE}))
    from opgen.targets import python_api

    real = python_api.context
    monkeypatch.setattr(python_api, "context", lambda op: real(op) | {"signature": "weight, )"})
    monkeypatch.setattr("opgen.build.PER_OP", tuple((t, p, python_api.context if t == "op.py.j2" else c)
                                                    for t, p, c in __import__("opgen.build").build.PER_OP))
    with pytest.raises(SpecError) as info:
        render(ops, DEFAULT_TEMPLATES)
    assert str(info.value).startswith(f"{tmp_path}/specs/toy_update.yaml:1:7: the generated module toy_update.py "
                                      "does not compile (")


# ---- found in review: YAML features, sizes, defaults, constant conditions, Markdown blocks ----

@pytest.mark.parametrize("text, expected", [
    ("x: &a [*a]\n", "13:4: YAML anchors (&name) are not allowed in a spec"),  # a cycle: used to hang
    ("x0: &a0 [lol, lol]\nx1: [*a0, *a0]\n", "13:5: YAML anchors (&name) are not allowed in a spec"),
    ("y: !!python/object:os.system foo\n", "13:4: YAML tags (!tag) are not allowed in a spec"),
])
def test_yaml_anchors_aliases_and_tags_are_refused_at_their_place(text, expected):
    assert spec_error(BASE + text) == f"{P}:{expected}"


def test_a_tag_on_a_value_is_refused_not_ignored():
    text = edit("default: 0.9", "default: !!str 0.9")
    assert spec_error(text) == f"{P}:9:44: YAML tags (!tag) are not allowed in a spec"


def test_a_billion_laughs_spec_is_refused_at_once(tmp_path):
    lines = ["x0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"x{k}: &a{k} [{', '.join([f'*a{k - 1}'] * 9)}]" for k in range(1, 12)]
    assert spec_error(BASE + "\n".join(lines) + "\n") == f"{P}:13:5: YAML anchors (&name) are not allowed in a spec"


def test_names_have_a_length_limit():
    long = "o" + "x" * 64
    assert spec_error(edit("name: toy_update", f"name: {long}")) == (
        f"{P}:1:7: the op's name '{long}' is 65 characters long, more than the 64 a name may have")
    assert parse_spec(edit("name: toy_update", "name: o" + "x" * 63), P).name == "o" + "x" * 63


def test_a_spec_file_has_a_size_limit(tmp_path):
    path = tmp_path / "toy_update.yaml"
    path.write_text(BASE + "description: " + "x" * (1 << 20) + "\n")
    from opgen.spec import load_spec

    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value) == f"{path}:1:1: the spec is {path.stat().st_size} bytes, more than the 1048576 a spec may hold"


@pytest.mark.parametrize("change, expected", [
    (("default: 0.9", "default: 5, range: [0, 1]"), "9:44: default 5 of parameter 'momentum' lies outside its range [0, 1]"),
    (("default: 0.9", "default: -1e-9, range: [0, 1]"),
     "9:44: default -1e-9 of parameter 'momentum' lies outside its range [0, 1]"),
])
def test_a_default_must_lie_in_its_range(change, expected):
    assert spec_error(edit(*change)) == f"{P}:{expected}"


INT_PARAM = "  - {name: steps, type: int, default: 3, ignored: true, doc: n}\n  - {name: momentum, type: float"


def test_int_ranges_take_int_bounds_and_int_defaults_no_leading_zeros():
    text = edit("  - {name: momentum, type: float", INT_PARAM)
    ranged = edit("default: 3,", "default: 3, range: [0.5, 9],", text)
    assert spec_error(ranged) == f"{P}:9:49: range of int parameter 'steps' must be [low, high], two ints"
    zeros = edit("default: 3,", "default: 0012,", text)
    assert spec_error(zeros) == f"{P}:9:39: default of int parameter 'steps' must be an int literal, got '0012'"
    assert parse_spec(edit("default: 3,", "default: 0,", text), P).params[1].default == "0"


@pytest.mark.parametrize("condition", ["True", "1 > 2", "not False"])
def test_a_constant_skip_condition_is_refused(condition):
    text = edit("math:", f"skip_if: {condition}\nmath:")
    assert spec_error(text) == (f"{P}:10:10: skip_if reads no parameter or scalar input: it would always hold, "
                                "or never")


@pytest.mark.parametrize("description", ["```\nunclosed code", "~~~~\ncode", "a $$ b \\\\alpha"])
def test_an_unclosed_markdown_block_in_a_description_ends_with_it(tmp_path, description):
    quoted = '"' + description.replace("\n", "\\n") + '"'
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "toy_update.yaml").write_text(edit("summary: A toy update.", f"summary: A toy update.\ndescription: {quoted}"))
    build(specs, tmp_path / "pkg", compile_c=False)
    page = (tmp_path / "pkg" / "docs" / "toy_update.md").read_text()
    before, after = page.split("## Update rule", 1)
    fences = [line for line in before.splitlines() if line.startswith(("```", "~~~"))]
    assert len(fences) % 2 == 0 and before.count("$$") % 2 == 0, before  # closed before the next heading
