"""``opgen build``: specs -> rendered outputs -> the writer -> compiled C kernels."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import jinja2

from opgen.spec import OpSpec, load_specs
from opgen.targets import c_kernels, cuda_kernels, docs, python_api
from opgen.writer import Outputs, SyncReport, sync

# (template, output path, context) for each op, then for the whole package.
PER_OP: tuple[tuple[str, str, Callable[[OpSpec], dict]], ...] = (
    ("op.py.j2", "{op}.py", python_api.context),
    ("op_math.h.j2", "csrc/{op}_math.h", c_kernels.math_context),
    ("op.c.j2", "csrc/{op}.c", c_kernels.context),
    ("op.cdef.j2", "csrc/{op}.cdef", c_kernels.context),
    ("op.cu.j2", "cuda/{op}.cu", cuda_kernels.context),
    ("op.md.j2", "docs/{op}.md", docs.context),
)
PER_PACKAGE: tuple[tuple[str, str, Callable[[list[OpSpec]], dict]], ...] = (
    ("package_init.py.j2", "__init__.py", python_api.package_context),
    ("package_main.py.j2", "__main__.py", python_api.package_context),
    ("kernel_common.h.j2", "csrc/opgen_kernel.h", lambda ops: c_kernels.common_context()),
    ("kernel_common.cuh.j2", "cuda/opgen_kernel.cuh", lambda ops: cuda_kernels.common_context()),
    ("index.md.j2", "docs/index.md", docs.index_context),
)
TARGETS = ("python", "c", "cuda", "docs")
DEFAULT_TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


@dataclass(frozen=True)
class BuildResult:
    ops: tuple[str, ...]
    report: SyncReport
    compiled: tuple[str, ...]
    compile_seconds: float


def environment(templates: Path) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def render(ops: list[OpSpec], templates: Path) -> Outputs:
    env = environment(templates)
    shown = templates.name
    outputs = Outputs()
    for op in ops:
        for template, path, make_context in PER_OP:
            body = env.get_template(template).render(make_context(op))
            outputs.add(path.format(op=op.name), f"{shown}/{template}", op.path, body)
    sources = ", ".join(op.path for op in ops) or "no specs"
    for template, path, make_context in PER_PACKAGE:
        body = env.get_template(template).render(make_context(ops))
        outputs.add(path, f"{shown}/{template}", sources if path.endswith((".py", ".md")) else "opgen", body)
    return outputs


def build(specs: Path, out: Path, templates: Path = DEFAULT_TEMPLATES, check: bool = False,
          compile_c: bool = True) -> BuildResult:
    ops = load_specs(specs)  # raises SpecError before anything is written
    outputs = render(ops, templates)
    report = sync(out, outputs, check=check)
    compiled: tuple[str, ...] = ()
    started = time.perf_counter()
    if compile_c and not check:
        compiled = compile_kernels(out, [op.name for op in ops])
    return BuildResult(tuple(op.name for op in ops), report, compiled, time.perf_counter() - started)


def compile_kernels(out: Path, names: list[str]) -> tuple[str, ...]:
    """Compile (or find in the cache) every op's C extension, in parallel."""
    from opgen import cbuild

    cbuild.toolchain()  # CompilerUnavailable before starting threads

    def one(name: str) -> str:
        cbuild.load(name, out / "csrc" / f"{name}.c", out / "csrc" / f"{name}.cdef")
        return name

    with ThreadPoolExecutor() as pool:
        return tuple(pool.map(one, names))
