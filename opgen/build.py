"""``opgen build``: specs -> rendered outputs -> the writer -> compiled C kernels."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import jinja2

from opgen.errors import Location, SpecError
from opgen.spec import OpSpec, load_specs, names
from opgen.targets import c_kernels, cuda_kernels, docs, optim_api, python_api
from opgen.writer import BlockedFolders, ForeignFiles, Outputs, SyncReport, sync

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
    ("optim.py.j2", "optim.py", optim_api.context),
)
TARGETS = ("python", "c", "cuda", "docs")


def _default_templates() -> Path:
    """The templates: installed inside opgen (a wheel), or at the repository's top level
    (a checkout, an editable install)."""
    here = Path(__file__).resolve().parent
    installed = here / "templates"
    return installed if installed.is_dir() else here.parent / "templates"


DEFAULT_TEMPLATES = _default_templates()


@dataclass(frozen=True)
class BuildResult:
    ops: tuple[str, ...]
    report: SyncReport
    compiled: tuple[str, ...]
    compile_seconds: float
    compiler_missing: str | None = None  # why no C compiler works: the NumPy backend will be used
    compile_failed: str | None = None  # the compiler rejected generated C (a bug in opgen)


def environment(templates: Path) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


# What a generated package imports: a package of that name would hide it.
_IMPORTED = frozenset({"opgen", "numpy", "cffi", "jinja2", "yaml", "cupy", "torch", "ml_dtypes"})


def package_name(out: Path) -> str:
    """The import name of the package a build writes: its folder's name, which must be
    one (docs show calls as ``PACKAGE.op(...)``)."""
    name = out.resolve().name
    problem = names.identifier_problem(name)
    if problem is not None or name in sys.stdlib_module_names or name in _IMPORTED:
        reason = problem or "is a name Python already uses"
        raise BuildError(f"the output folder's name '{name}' is the package's import name, and it {reason}")
    return name


class BuildError(Exception):
    """A build that cannot be done as asked (no specs; an output folder that cannot hold the
    package: its name, files opgen did not write, a file where a folder must be, no
    permission). Nothing was written, except where writing itself failed."""


def render(ops: list[OpSpec], templates: Path, package: str = "generated") -> Outputs:
    env = environment(templates)
    env.globals["package"] = package  # the package's import name, for every template
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
    for path, text in outputs.files.items():
        if path.endswith(".py"):
            _compiles(path, text, ops)
    return outputs


def _compiles(path: str, text: str, ops: list[OpSpec]) -> None:
    """A generated module is Python that compiles: anything else is a build error naming
    its spec, never a surprise at import."""
    try:
        compile(text, path, "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as exc:
        op = next((op for op in ops if path == f"{op.name}.py"), None)
        where = op.location if op is not None and op.location else Location(path, 1, 1)
        raise SpecError(where, f"the generated module {path} does not compile ({exc}); this is a bug in "
                               "opgen, please report it with this spec") from None


def build(specs: Path, out: Path, templates: Path = DEFAULT_TEMPLATES, check: bool = False,
          compile_c: bool = True) -> BuildResult:
    package = package_name(out)
    if out.resolve() == specs.resolve():
        raise BuildError(f"the output folder {out} is the spec folder; choose another --out")
    ops = load_specs(specs)  # raises SpecError before anything is written
    if not ops:
        raise BuildError(f"no specs (NAME.yaml files) in {specs}")
    outputs = render(ops, templates, package)
    try:
        report = sync(out, outputs, check=check)
    except (ForeignFiles, BlockedFolders) as exc:
        raise BuildError(str(exc)) from None
    except OSError as exc:  # permissions, a full disk: the write order kept the package importable
        raise BuildError(f"cannot write the package into {out}: {exc.strerror or exc} "
                         f"({exc.filename or out})") from None
    compiled: tuple[str, ...] = ()
    missing = failed = None
    started = time.perf_counter()
    if compile_c and not check:
        from opgen.cbuild import CompileError, CompilerUnavailable

        try:
            compiled = compile_kernels(out, [op.name for op in ops])
        except CompilerUnavailable as exc:
            missing = str(exc)
        except CompileError as exc:
            failed = str(exc)
    return BuildResult(tuple(op.name for op in ops), report, compiled, time.perf_counter() - started,
                       missing, failed)


def compile_kernels(out: Path, names: list[str]) -> tuple[str, ...]:
    """Compile (or find in the cache) every op's C extension, in parallel."""
    from opgen import cbuild

    cbuild.toolchain()  # no compiler at all fails here; a broken one fails in the first thread's probe

    def one(name: str) -> str:
        cbuild.load(name, out / "csrc" / f"{name}.c", out / "csrc" / f"{name}.cdef")
        return name

    with ThreadPoolExecutor() as pool:
        return tuple(pool.map(one, names))
