"""Compile an op's generated C with cffi and load it, cached by content hash.

The C toolchain, shared by the build (``opgen build`` compiles every op) and the runtime
(a kernel is compiled, or found in the cache, on first use): it imports neither.

cffi's out-of-line API mode writes the extension's C (our kernels plus its wrappers);
we compile it with the platform's C compiler directly, so flags and errors stay ours.
The cache key covers the sources, flags, compiler, Python and cffi versions and the
machine. Builds go to a private folder inside the cache and are renamed into place, so
two processes building at once both succeed; each library has a ``.sha256`` file beside
it, and is loaded only when its bytes match (a truncated library would crash the process
with SIGBUS when mapped): a damaged entry is rebuilt. A cache folder that cannot be used
gives one warning and a private temporary folder instead. Every failure to compile raises
CompilerUnavailable (nothing here can build a Python extension: the same for every op) or
CompileError (one op's source failed), which the runtime turns into a warning and the
NumPy backend.
"""

from __future__ import annotations

import atexit
import ctypes
import errno
import functools
import hashlib
import importlib.machinery
import importlib.util
import os
import platform
import re
import shlex
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import NamedTuple, TypeVar

import cffi
import numpy
from cffi.recompiler import make_c_source

T = TypeVar("T")


class CompilerUnavailable(RuntimeError):
    """No working C compiler (or no folder to build in): the NumPy backend is the fallback."""


class CompileError(RuntimeError):
    """The compiler failed on one op's generated C (a bug in opgen, not in the user's call)."""


@dataclass(frozen=True)
class Toolchain:
    command: tuple[str, ...]
    version: str
    flags: tuple[str, ...]
    fallback_flags: tuple[str, ...]  # without OpenMP or -march=native, if the first try fails
    python_include: str  # the folder of Python.h
    numpy_include: str  # the folder of NumPy's C headers (the per-call fast path reads array fields)
    ext_suffix: str  # a Python extension's file suffix here
    link: tuple[str, ...]
    machine: str  # CPU architecture and model: -march=native builds only run on the same model


_lock = threading.RLock()  # guards this module's per-process state (toolchain, probe, folders)


def _once(make: Callable[[], T]) -> Callable[[], T]:
    """``make()`` run once per process, under the lock: sysconfig and platform are not
    thread-safe on first use (a racing thread can read None), so every thread must see the
    one result. A CompilerUnavailable it raises is kept too: it is raised again each call."""
    done: list[tuple[T | None, CompilerUnavailable | None]] = []

    @functools.wraps(make)
    def get() -> T:
        if not done:
            with _lock:
                if not done:
                    try:
                        done.append((make(), None))
                    except CompilerUnavailable as exc:
                        done.append((None, exc))
        value, error = done[0]
        if error is not None:
            raise error.with_traceback(None)
        return value  # type: ignore[return-value]

    return get


def compiler_command() -> tuple[str, ...]:
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return tuple(shlex.split(cc))


@_once
def toolchain() -> Toolchain:
    """The compiler and everything the cache key and the build read from sysconfig and
    platform, looked up once so that every thread computes the same key."""
    command = compiler_command()
    if not command or shutil.which(command[0]) is None:
        raise CompilerUnavailable(f"no C compiler found (tried {' '.join(command) or 'cc'}; set CC)")
    try:
        probe = subprocess.run([*command, "--version"], capture_output=True, text=True, errors="replace",
                               timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise CompilerUnavailable(f"the C compiler {command[0]} does not run: {exc}") from None
    version = (probe.stdout or probe.stderr).splitlines()[0] if (probe.stdout or probe.stderr) else command[0]
    # -fno-math-errno lets sqrt vectorize; no -ffast-math, so NaN propagates as in MXNet;
    # -ffp-contract=off keeps results bit-identical to the NumPy reference (no FMA).
    # _CFFI_NO_LIMITED_API: the full C API (METH_FASTCALL) for the per-call fast path; the
    # library is only ever loaded by this interpreter (sys.version is part of the key).
    base = ("-O3", "-std=gnu11", "-fPIC", "-fno-math-errno", "-ffp-contract=off", "-fvisibility=hidden",
            "-D_CFFI_NO_LIMITED_API", "-DNPY_NO_DEPRECATED_API=NPY_1_7_API_VERSION")
    native = ("-march=native",) if platform.machine().lower() in ("x86_64", "amd64") else ()
    link = ("-shared",) + (("-undefined", "dynamic_lookup") if sys.platform == "darwin" else ())
    machine = "\0".join([platform.machine(), platform.processor(), _cpu_model()])
    return Toolchain(command, version, base + native + ("-fopenmp",), base, sysconfig.get_paths()["include"],
                     numpy.get_include(), importlib.machinery.EXTENSION_SUFFIXES[0], link, machine)


def compiler_available() -> bool:
    """Whether the C backend can run here: a compiler that builds a loadable extension."""
    try:
        _probe()
    except CompilerUnavailable:
        return False
    return True


def cache_dir() -> Path:
    """The cache folder as configured (``$OPGEN_CACHE_DIR``, else the user's cache)."""
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
    try:
        c_text, cdef_text, compiled = source.read_text(), cdef.read_text(), inline_includes(source)
    except OSError as exc:  # a damaged install: the op runs on NumPy
        raise CompileError(f"{op_name}: cannot read its generated C: {exc}") from None
    key = hashlib.sha256("\0".join([  # the source with every header it includes, as compiled
        compiled, cdef_text, " ".join(tc.command), tc.version, " ".join(tc.flags),
        sys.version, cffi.__version__, numpy.__version__, tc.machine,
    ]).encode()).hexdigest()[:20]
    module_name = f"_opgen_{op_name}_{key}"
    with _locks_guard:
        lock = _locks.setdefault(module_name, threading.Lock())
    with lock:
        module = _loaded.get(module_name)
        if module is None:
            module = _load_cached(module_name, _cache_folder() / (module_name + tc.ext_suffix))
            if module is None:
                _probe()
                module = _in_build_folder(module_name, lambda work: _build(
                    module_name, c_text, cdef_text, source.parent, tc, work))
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


# -- the cache folder ------------------------------------------------------------------

_BUILD_PREFIX = ".build-_opgen_"  # every build folder opgen makes (and nothing else's)
_STALE_SECONDS = 3600  # a build folder this old was left by a killed build, not one running
# A library (module name, then the extension suffix of any Python) or its hash file.
_ENTRY = re.compile(r"_opgen_\w+_[0-9a-f]{20}(\.[\w-]+)*\.(so|pyd|dylib)(\.sha256)?")
_folders: dict[Path, Path] = {}  # the configured cache folder -> the one used (it, or the private one)
_private: list[Path] = []  # this process's fallback folder, once made


def _cache_folder() -> Path:
    configured = cache_dir()
    usable = _folders.get(configured)
    if usable is None:
        with _lock:
            usable = _folders.get(configured)
            if usable is None:
                try:
                    _prepare(configured)
                    usable = _folders[configured] = configured
                except OSError as exc:
                    usable = _fall_back(configured, exc)
    return usable


def _prepare(folder: Path) -> None:
    """Make the folder, check that it takes a build and that only its owner can put a
    library there (this process loads what it finds, and the hash beside a library is only
    as safe as the folder), and clear builds left by killed ones."""
    folder.mkdir(parents=True, exist_ok=True)
    info = folder.stat()
    # (group-writable is allowed: with user-private groups, umask 002 makes every folder so)
    if hasattr(os, "getuid") and (info.st_uid != os.getuid() or info.st_mode & stat.S_IWOTH):
        whose = "another user's" if info.st_uid != os.getuid() else "writable by every user"
        raise PermissionError(errno.EPERM, f"the folder is {whose}, so a library there could be planted", str(folder))
    os.rmdir(tempfile.mkdtemp(prefix=_BUILD_PREFIX + "check-", dir=folder))  # os.access is wrong for root, ACLs
    for stale in _stale_builds(folder):
        shutil.rmtree(stale, ignore_errors=True)


def _fall_back(folder: Path, exc: OSError) -> Path:
    """This process's private folder, used from now on in place of ``folder``; made, and
    warned about, once."""
    with _lock:
        if not _private:
            try:
                private = Path(tempfile.mkdtemp(prefix="opgen-cache-"))
            except OSError as err:
                raise CompilerUnavailable(f"no folder to compile C kernels in: {_reason(exc)}; "
                                          f"temporary folder: {_reason(err)}") from None
            atexit.register(shutil.rmtree, private, ignore_errors=True)
            _private.append(private)
            source = "from OPGEN_CACHE_DIR" if os.environ.get("OPGEN_CACHE_DIR") else "the default"
            warnings.warn(f"opgen: cannot use the kernel cache folder {folder} ({source}): {_reason(exc)}; "
                          f"C kernels are compiled into a temporary folder for this process instead "
                          f"(set OPGEN_CACHE_DIR to a writable folder to keep them)", RuntimeWarning, stacklevel=2)
        _folders[folder] = _private[0]
        return _private[0]


def _reason(exc: OSError) -> str:
    return f"{exc.strerror}: {exc.filename}" if exc.strerror and exc.filename else str(exc)


def _in_build_folder(name: str, task: Callable[[Path], T]) -> T:  # name: a module's, or _opgen_probe
    """``task(work)`` in a fresh build folder inside the cache folder, removed after; where
    that folder takes no more (full disk, turned read-only), once more in the private one."""
    folder = _cache_folder()
    while True:
        try:
            work = Path(tempfile.mkdtemp(prefix=f".build-{name}-", dir=folder))
            try:
                return task(work)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        except OSError as exc:
            private = _fall_back(folder, exc)
            if private == folder:
                raise CompilerUnavailable(f"cannot write compiled kernels to {folder}: {_reason(exc)}") from None
            folder = private


def _stale_builds(folder: Path) -> list[Path]:
    now = time.time()
    return [p for p in _listing(folder) if p.name.startswith(_BUILD_PREFIX) and _age(p, now) > _STALE_SECONDS]


def _age(path: Path, now: float) -> float:
    try:
        return now - path.stat().st_mtime
    except OSError:
        return 0.0


def _listing(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:  # missing, not a folder, unreadable: nothing of ours there
        return []


class CacheInfo(NamedTuple):
    path: Path  # the cache folder as configured
    entries: int  # compiled libraries
    bytes: int  # theirs, their hash files' and any build folders'


def cache_info() -> CacheInfo:
    """The configured cache folder, its number of compiled libraries and opgen's bytes there."""
    folder = cache_dir()
    size = 0
    entries = 0
    for path in _listing(folder):
        if _ENTRY.fullmatch(path.name):
            entries += not path.name.endswith(".sha256")
            size += _size(path)
        elif path.name.startswith(_BUILD_PREFIX):
            size += sum(_size(Path(top, name)) for top, _, names in os.walk(path) for name in names)
    return CacheInfo(folder, entries, size)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size if path.is_file() else 0
    except OSError:
        return 0


def clear_cache() -> int:
    """Remove opgen's files from the configured cache folder: compiled libraries, their hash
    files and build folders left by killed builds (a recent build folder may be another
    process's build under way, and stays). Returns how many were removed (a folder counts
    one); raises OSError, after trying every file, if some could not be removed."""
    folder = cache_dir()
    removed, failed = 0, []
    for path in [p for p in _listing(folder) if _ENTRY.fullmatch(p.name)] + _stale_builds(folder):
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed += 1
        except FileNotFoundError:
            pass  # gone meanwhile
        except OSError as exc:
            failed.append(exc)
    if failed:
        raise OSError(f"removed {removed} files from {folder}, but {len(failed)} could not be removed: "
                      f"{_reason(failed[0])}")
    return removed


# -- compiling -----------------------------------------------------------------------

_PROBE = "#include <Python.h>\nint opgen_probe(void) { return (int)sizeof(PyObject); }\n"


@_once
def _probe() -> None:
    """Compile and load a tiny extension, once per process and only where something must
    be compiled: a compiler that cannot build one (no Python headers, exits 0 but writes
    nothing, writes junk, always fails) is CompilerUnavailable, one reason for every op."""
    tc = toolchain()

    def probe(work: Path) -> None:
        (work / "probe.c").write_text(_PROBE)
        library = _compile(tc, tc.fallback_flags, work, "probe.c", "probe" + tc.ext_suffix, (),
                           CompilerUnavailable, f"the C compiler {' '.join(tc.command)} cannot build a "
                                                f"Python extension")
        try:
            ctypes.CDLL(str(library))
        except OSError as exc:
            raise CompilerUnavailable(f"the C compiler {' '.join(tc.command)} wrote a file that is not a "
                                      f"loadable library ({exc})") from None

    _in_build_folder("_opgen_probe", probe)


def _compile(tc: Toolchain, flags: tuple[str, ...], work: Path, c_name: str, out_name: str,
             includes: tuple[str, ...], failure: type[RuntimeError], what: str) -> Path:
    """Compile ``work/c_name`` into ``work/out_name``, with names relative to ``work`` so
    that the library's bytes do not depend on the folder (two processes building at once
    write the same file, with the same hash); ``failure(what ...)`` if no library comes."""
    try:
        run = subprocess.run([*tc.command, *flags, *includes, f"-I{tc.python_include}", f"-I{tc.numpy_include}", c_name,
                              "-o", out_name, *tc.link], cwd=work, capture_output=True, text=True, errors="replace")
    except (OSError, subprocess.SubprocessError) as exc:
        raise CompilerUnavailable(f"the C compiler {tc.command[0]} does not run: {exc}") from None
    library = work / out_name
    if run.returncode != 0:
        said = (run.stderr or run.stdout).strip()
        raise failure(f"{what}:\n{said[-4000:]}" if said else f"{what}: it exited with status {run.returncode}, "
                                                              f"printing nothing")
    if not library.is_file():
        raise failure(f"{what}: it exited 0 but wrote no library")
    return library


def _build(module_name: str, c_text: str, cdef_text: str, include: Path, tc: Toolchain, work: Path) -> ModuleType:
    ffi = cffi.FFI()
    ffi.cdef(cdef_text)
    c_name = f"{module_name}.c"
    make_c_source(ffi, module_name, c_text, str(work / c_name), verbose=False)  # prints nothing (no redirection)
    built = work / (module_name + tc.ext_suffix)
    what = f"compiling {module_name} failed"
    includes = (f"-I{include.resolve()}",)  # absolute: the compiler runs in the build folder
    try:
        _compile(tc, tc.flags, work, c_name, built.name, includes, CompileError, what)
    except CompileError as first:
        try:
            _compile(tc, tc.fallback_flags, work, c_name, built.name, includes, CompileError, what)
        except CompileError:
            raise first from None  # the first try's errors: the build as meant
        warnings.warn(f"{module_name}: compiled without OpenMP and -march=native, which the compiler "
                      f"refused (single-threaded kernels):\n{str(first)[-800:]}", RuntimeWarning)
    try:
        module = _import(module_name, built)  # loaded before it is published: the cache only holds libraries that load
    except ImportError as exc:
        raise CompileError(f"{what}: the compiler wrote a file that is not a loadable extension ({exc})") from None
    try:
        _publish(built, work)
    except OSError as exc:  # the module is loaded; later builds of this process go to the private folder
        _fall_back(work.parent, exc)
    return module


def _publish(built: Path, work: Path) -> None:
    """Rename the library into place, then its hash file. A process that reads between the
    two renames sees a library without its hash, or with the one before, and rebuilds: a
    library is loaded only when it matches its hash, never half-written or truncated."""
    target = work.parent / built.name
    digest = work / "sha256"
    digest.write_text(_sha256(built) + "\n")
    os.replace(built, target)
    os.replace(digest, _hash_file(target))


def _load_cached(module_name: str, target: Path) -> ModuleType | None:
    """The cached library if it is there, whole (its bytes match its hash file) and loads;
    else None, and it is rebuilt and replaced (never deleted: another process may be
    publishing a good one)."""
    try:
        if _sha256(target) != _hash_file(target).read_text().strip():
            return None
        return _import(module_name, target)
    except (OSError, ImportError):
        return None


def _hash_file(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _import(module_name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cpu_model() -> str:
    """-march=native builds are only valid on the same CPU model: part of the key."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                return line
    except OSError:
        pass
    return ""
