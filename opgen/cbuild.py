"""Compile an op's generated C with cffi and load it, cached by content hash.

The C toolchain, shared by the build (``opgen build`` compiles every op) and the runtime
(a kernel is compiled, or found in the cache, on first use): it imports neither.

cffi's out-of-line API mode writes the extension's C (our kernels plus its wrappers);
we compile it with the platform's C compiler directly, so flags and errors stay ours.
The cache key covers the sources, flags, compiler, Python and cffi versions and the
machine; builds go to a private temporary folder and are renamed into place, so two
processes building at once both succeed.
"""

from __future__ import annotations

import contextlib
import functools
import io
import hashlib
import importlib.util
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import cffi



class CompilerUnavailable(RuntimeError):
    """No working C compiler: the NumPy backend is the fallback."""


class CompileError(RuntimeError):
    """The compiler rejected generated C (a bug in opgen, not in the user's call)."""


@dataclass(frozen=True)
class Toolchain:
    command: tuple[str, ...]
    version: str
    flags: tuple[str, ...]
    fallback_flags: tuple[str, ...]  # without OpenMP or -march=native, if the first try fails


def compiler_command() -> tuple[str, ...]:
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return tuple(shlex.split(cc))


@functools.lru_cache(maxsize=1)
def toolchain() -> Toolchain:
    command = compiler_command()
    if not command or shutil.which(command[0]) is None:
        raise CompilerUnavailable(f"no C compiler found (tried {' '.join(command) or 'cc'}; set CC)")
    try:
        probe = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise CompilerUnavailable(f"the C compiler {command[0]} does not run: {exc}") from None
    version = (probe.stdout or probe.stderr).splitlines()[0] if (probe.stdout or probe.stderr) else command[0]
    # -fno-math-errno lets sqrt vectorize; no -ffast-math, so NaN propagates as in MXNet;
    # -ffp-contract=off keeps results bit-identical to the NumPy reference (no FMA).
    base = ("-O3", "-std=gnu11", "-fPIC", "-fno-math-errno", "-ffp-contract=off", "-fvisibility=hidden")
    native = ("-march=native",) if platform.machine().lower() in ("x86_64", "amd64") else ()
    return Toolchain(command, version, base + native + ("-fopenmp",), base)


def compiler_available() -> bool:
    try:
        toolchain()
    except CompilerUnavailable:
        return False
    return True


def cache_dir() -> Path:
    root = os.environ.get("OPGEN_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "opgen"


_loaded: dict[str, ModuleType] = {}
_locks: dict[str, threading.Lock] = {}  # one per module, so different ops compile in parallel
_locks_guard = threading.Lock()


def load(op_name: str, source: Path, cdef: Path) -> ModuleType:
    """The compiled extension of one op (``.lib`` holds the kernels, ``.ffi`` the FFI)."""
    tc = toolchain()
    c_text = source.read_text()
    cdef_text = cdef.read_text()
    key = hashlib.sha256("\0".join([  # the source with every header it includes, as compiled
        inline_includes(source), cdef_text, " ".join(tc.command), tc.version, " ".join(tc.flags),
        sys.version, cffi.__version__, platform.machine(), platform.processor(), _cpu_model(),
    ]).encode()).hexdigest()[:20]
    module_name = f"_opgen_{op_name}_{key}"
    with _locks_guard:
        lock = _locks.setdefault(module_name, threading.Lock())
    with lock:
        module = _loaded.get(module_name)
        if module is None:
            module = _load_or_build(module_name, c_text, cdef_text, source.parent, tc)
            _loaded[module_name] = module
    return module


_INCLUDE = re.compile(r'^#include "([^"]+)"\s*$', re.M)


def inline_includes(path: Path, seen: frozenset[Path] = frozenset()) -> str:
    """``path``'s text with each ``#include "FILE"`` (relative to it) replaced by FILE's
    text, recursively; a file already inlined on the way is dropped (include guards)."""
    def include(match: re.Match) -> str:
        target = (path.parent / match.group(1)).resolve()
        return "" if target in seen else inline_includes(target, seen | {target})

    return _INCLUDE.sub(include, path.read_text())


def _load_or_build(module_name: str, c_text: str, cdef_text: str, include: Path, tc: Toolchain) -> ModuleType:
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / (module_name + sysconfig.get_config_var("EXT_SUFFIX"))
    if target.exists():
        try:
            return _import(module_name, target)
        except ImportError:
            target.unlink(missing_ok=True)  # a damaged cache entry is a miss
    _build(module_name, c_text, cdef_text, include, tc, target)
    return _import(module_name, target)


def _build(module_name: str, c_text: str, cdef_text: str, include: Path, tc: Toolchain, target: Path) -> None:
    ffi = cffi.FFI()
    ffi.cdef(cdef_text)
    ffi.set_source(module_name, c_text)
    work = Path(tempfile.mkdtemp(prefix=f".build-{module_name}-", dir=target.parent))
    try:
        c_file = work / f"{module_name}.c"
        with contextlib.redirect_stdout(io.StringIO()):  # cffi announces "generating ..."
            ffi.emit_c_code(str(c_file))
        built = work / target.name
        link = ["-shared"] + (["-undefined", "dynamic_lookup"] if sys.platform == "darwin" else [])
        includes = [f"-I{include}", f"-I{sysconfig.get_paths()['include']}"]
        errors = ""
        for flags in (tc.flags, tc.fallback_flags):
            run = subprocess.run([*tc.command, *flags, *includes, str(c_file), "-o", str(built), *link],
                                 capture_output=True, text=True)
            if run.returncode == 0:
                if flags is tc.fallback_flags:
                    warnings.warn(f"{module_name}: compiled without OpenMP and -march=native, which the "
                                  f"compiler refused (single-threaded kernels):\n{errors[-800:]}", RuntimeWarning)
                os.replace(built, target)
                return
            errors = errors or run.stderr
        raise CompileError(f"compiling {module_name} failed:\n{errors[-4000:]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _import(module_name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.lru_cache(maxsize=1)
def _cpu_model() -> str:
    """-march=native builds are only valid on the same CPU model: part of the key."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                return line
    except OSError:
        pass
    return ""
