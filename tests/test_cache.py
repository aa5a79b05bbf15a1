"""The kernel cache and the compiler (opgen/cbuild.py): an unusable cache folder, damaged
cache entries, compilers that fail in every way, threads, and `opgen cache`'s functions.

Every scenario that loads a kernel runs in a subprocess with its own cache folder: a crash
(a truncated library used to kill the process with SIGBUS) fails the test instead of
pytest, and each process starts with a fresh toolchain and cache state.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from opgen import cbuild

ROOT = Path(__file__).resolve().parent.parent
needs_cc = pytest.mark.skipif(not cbuild.compiler_available(), reason="no working C compiler")

# One step of signsgd (the quickest op to compile): w - lr * sign(g).
STEP = """\
import numpy as np
from generated import signsgd_update, sgd_update, use_backend
w, g = np.ones(4, np.float32), np.array([1, -1, 2, 0], np.float32)
with use_backend({backend!r}):
    print(signsgd_update(w, g, lr=0.5).tolist())
    if {both}:
        print(sgd_update(w, g, lr=0.5).tolist())
"""
SIGNSGD = "[0.5, 1.5, 0.5, 1.0]"
SGD = "[0.5, 1.5, 0.0, 1.0]"


def python(script: str, cache: Path, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "OPGEN_CACHE_DIR": str(cache), **env}, timeout=600)


def step(cache: Path, backend: str = "c", both: bool = False, **env: str) -> subprocess.CompletedProcess:
    return python(STEP.format(backend=backend, both=both), cache, **env)


def libraries(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir() if p.name.startswith("_opgen_") and not p.name.endswith(".sha256"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_clean(run: subprocess.CompletedProcess, warnings: int) -> None:
    """It ran to the end, with no traceback and exactly ``warnings`` warnings (besides
    those of a compiler without OpenMP, which some machines give for every build)."""
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    lines = [line for line in run.stderr.splitlines()
             if "RuntimeWarning" in line and "compiled without OpenMP" not in line]
    assert len(lines) == warnings, run.stderr


# -- an unusable cache folder ---------------------------------------------------------------

def _a_file(tmp_path: Path) -> Path:
    (tmp_path / "afile").write_text("not a folder")
    return tmp_path / "afile"


def _under_a_file(tmp_path: Path) -> Path:
    return _a_file(tmp_path) / "cache"


def _writable(folder: Path) -> bool:
    try:
        os.rmdir(tempfile.mkdtemp(dir=folder))
    except OSError:
        return False
    return True


def _read_only(tmp_path: Path) -> Path:
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    if not _writable(folder):
        return folder
    folder.chmod(stat.S_IRWXU)
    if Path("/sys").is_dir() and not _writable(Path("/sys")):
        return Path("/sys")  # root writes in any folder of a writable file system, not in sysfs
    pytest.skip("no folder here that this user cannot write in")


def _world_writable(tmp_path: Path) -> Path:
    """A shared folder anyone can write in: anyone could plant a library (and its hash)."""
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o777)
    return folder


@needs_cc
@pytest.mark.parametrize("make, reasons", [(_a_file, ["File exists"]), (_under_a_file, ["Not a directory"]),
                                           (_read_only, ["Permission denied", "Operation not permitted",
                                                         "Read-only file system"]),
                                           (_world_writable, ["the folder is writable by every user"])],
                         ids=["file", "under_a_file", "read_only", "world_writable"])
def test_an_unusable_cache_folder_falls_back_to_a_private_one_with_one_warning(tmp_path, make, reasons):
    cache = make(tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    try:
        run = step(cache, both=True, TMPDIR=str(private_tmp))  # two ops, on C: still one warning
    finally:
        if (tmp_path / "readonly").is_dir():
            (tmp_path / "readonly").chmod(stat.S_IRWXU)  # so that pytest can remove it
    assert_clean(run, warnings=1)
    assert run.stdout.splitlines() == [SIGNSGD, SGD]
    assert "OPGEN_CACHE_DIR" in run.stderr and str(cache) in run.stderr
    assert any(reason in run.stderr for reason in reasons), run.stderr
    assert sorted(p.name for p in tmp_path.rglob("*") if "tmp" not in p.relative_to(tmp_path).parts) == before
    assert not any(private_tmp.iterdir())  # the private folder went at exit


@needs_cc
def test_a_full_cache_disk_falls_back_to_a_private_folder(tmp_path):
    """The folder was fine at first, then a build could not write in it (full disk)."""
    cache, private_tmp = tmp_path / "cache", tmp_path / "tmp"
    private_tmp.mkdir()
    script = textwrap.dedent(f"""\
        import errno, os
        from opgen import cbuild
        real = cbuild.make_c_source
        def full(ffi, name, source, path, verbose=False):
            if path.startswith({str(cache)!r}):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
            return real(ffi, name, source, path, verbose=verbose)
        cbuild.make_c_source = full
        """) + STEP.format(backend="c", both=False)
    run = python(script, cache, TMPDIR=str(private_tmp))
    assert_clean(run, warnings=1)
    assert run.stdout.strip() == SIGNSGD
    assert "No space left on device" in run.stderr and str(cache) in run.stderr
    assert libraries(cache) == [] and not any(private_tmp.iterdir())


# -- damaged cache entries ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def built_cache(tmp_path_factory) -> Path:
    """A cache holding signsgd_update's library, built once for the tests that damage a copy."""
    cache = tmp_path_factory.mktemp("built") / "cache"
    run = step(cache)
    assert run.returncode == 0 and run.stdout.strip() == SIGNSGD, run.stderr
    return cache


def _truncate(library: Path) -> None:
    data = library.read_bytes()
    library.write_bytes(data[:len(data) // 2])  # in place: a killed copy, a full disk


def _zero_length(library: Path) -> None:
    library.write_bytes(b"")


def _corrupt(library: Path) -> None:
    data = bytearray(library.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 256] = b"\xff" * 256
    library.write_bytes(bytes(data))


def _junk(library: Path) -> None:
    library.write_text("junk")


def _no_hash(library: Path) -> None:
    Path(str(library) + ".sha256").unlink()  # killed between the library's rename and its hash's


def _wrong_hash(library: Path) -> None:
    Path(str(library) + ".sha256").write_text("0" * 64 + "\n")


@needs_cc
@pytest.mark.parametrize("damage", [_truncate, _zero_length, _corrupt, _junk, _no_hash, _wrong_hash],
                         ids=lambda f: f.__name__.strip("_"))
def test_a_damaged_cache_entry_is_rebuilt(tmp_path, built_cache, damage):
    cache = tmp_path / "cache"
    shutil.copytree(built_cache, cache)
    [library] = libraries(cache)
    good = library.read_bytes()
    damage(library)
    damaged_inode = library.stat().st_ino
    run = step(cache)  # on C: a fallback to NumPy would fail here
    assert_clean(run, warnings=0)
    assert run.stdout.strip() == SIGNSGD
    assert libraries(cache) == [library]
    assert library.stat().st_ino != damaged_inode  # replaced by a rename, not written in place
    assert library.read_bytes() == good  # the same bytes as any build of it
    assert Path(str(library) + ".sha256").read_text().strip() == sha256(library)


@needs_cc
def test_a_good_entry_is_loaded_not_rebuilt_and_old_build_folders_are_cleared(tmp_path, built_cache):
    cache = tmp_path / "cache"
    shutil.copytree(built_cache, cache)
    [library] = libraries(cache)
    inode = library.stat().st_ino
    stale, fresh = cache / ".build-_opgen_x_1-killed", cache / ".build-_opgen_x_2-running"
    for folder in (stale, fresh):
        folder.mkdir()
        (folder / "part.c").write_text("int x;")
    old = time.time() - 2 * 86400  # a build killed two days ago
    os.utime(stale, (old, old))
    run = step(cache)
    assert_clean(run, warnings=0)
    assert run.stdout.strip() == SIGNSGD
    assert library.stat().st_ino == inode
    assert not stale.exists() and fresh.exists()  # a recent one may be another process's build


# -- compilers that fail ------------------------------------------------------------------

FAKE_COMPILERS = {
    "exits_0_writes_nothing": "exit 0",
    "writes_junk": 'while [ $# -gt 0 ]; do [ "$1" = -o ] && echo junk > "$2"; shift; done; exit 0',
    "exits_1": 'echo "cc: internal compiler error" >&2; exit 1',
}


def fake_compiler(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "fakecc"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return script


@pytest.mark.parametrize("body", FAKE_COMPILERS.values(), ids=FAKE_COMPILERS.keys())
def test_a_broken_compiler_gives_one_warning_and_the_numpy_fallback(tmp_path, body):
    cc = fake_compiler(tmp_path, body)
    script = STEP.format(backend="auto", both=True) + textwrap.dedent("""\
        from opgen.cbuild import CompilerUnavailable
        from generated import available_backends
        print(available_backends())
        try:
            with use_backend("c"):
                signsgd_update(w, g, lr=0.5)
        except CompilerUnavailable as exc:
            print("refused")
        """)
    run = python(script, tmp_path / "cache", CC=str(cc))
    assert_clean(run, warnings=1)  # one for the process, not one per op
    assert run.stdout.splitlines() == [SIGNSGD, SGD, "('numpy',)", "refused"]
    assert "C backend unavailable" in run.stderr and str(cc) in run.stderr


@needs_cc
def test_a_compiler_that_writes_junk_for_one_op_warns_for_that_op(tmp_path):
    """It builds the probe (a real extension) but writes junk for the kernels: CompileError,
    one warning per op that falls back, and NumPy's numbers."""
    real = " ".join(shlex.quote(part) for part in cbuild.compiler_command())
    cc = fake_compiler(tmp_path, f'case "$*" in *probe.c*) exec {real} "$@";; esac\n' + FAKE_COMPILERS["writes_junk"])
    run = step(tmp_path / "cache", backend="auto", both=True, CC=str(cc))
    assert_clean(run, warnings=2)
    assert run.stdout.splitlines() == [SIGNSGD, SGD]
    assert "signsgd_update: C kernel failed to build" in run.stderr and "not a loadable extension" in run.stderr
    assert libraries(tmp_path / "cache") == []  # junk never enters the cache


USER_SPEC = """\
name: {name}
summary: Decay towards zero, then step against the gradient.
tensors:
  - {{name: weight, role: weight, doc: Weight}}
  - {{name: grad, role: grad, doc: Gradient}}
params:
  - {{name: lr, type: float, required: true, doc: Learning rate}}
math:
  - weight = {keep} * weight - lr * grad
"""


def user_specs(tmp_path: Path, count: int) -> Path:
    specs = tmp_path / "specs"
    specs.mkdir()
    for k in range(count):
        name = f"decay{k}_update"
        (specs / f"{name}.yaml").write_text(USER_SPEC.format(name=name, keep=0.5 + k / 10))
    return specs


def opgen_build(tmp_path: Path, cache: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "opgen", "build", "--specs", "specs", "--out", "ops"], cwd=tmp_path,
                          capture_output=True, text=True, env={**os.environ, "OPGEN_CACHE_DIR": str(cache), **env},
                          timeout=600)


def test_opgen_build_with_a_broken_compiler_warns_and_succeeds(tmp_path):
    user_specs(tmp_path, 2)
    run = opgen_build(tmp_path, tmp_path / "cache", CC=str(fake_compiler(tmp_path, FAKE_COMPILERS["writes_junk"])))
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    assert "opgen: warning:" in run.stderr and "the NumPy backend will be used" in run.stderr
    assert (tmp_path / "ops" / "decay1_update.py").exists()


# -- threads ------------------------------------------------------------------------------

@needs_cc
def test_threads_compiling_at_once_print_nothing_and_agree_on_keys(tmp_path):
    """Eight threads load three ops at once in a fresh cache, the very first use of the
    toolchain: one library per op, and nothing printed by or lost to the builds."""
    script = """\
        import sys, threading
        from pathlib import Path
        from opgen import cbuild
        csrc = Path("generated/csrc").resolve()
        ops = ["signsgd_update", "sgd_update", "signum_update"]
        start = threading.Barrier(9)
        names = set()
        def load(op):
            start.wait()
            names.add((op, cbuild.load(op, csrc / f"{op}.c", csrc / f"{op}.cdef").__name__))
        threads = [threading.Thread(target=load, args=(ops[k % 3],)) for k in range(8)]
        for t in threads:
            t.start()
        start.wait()
        print("during")
        for t in threads:
            t.join()
        print("after", sys.stdout is sys.__stdout__)
        print(len(names), len({op for op, _ in names}))
        """
    cache = tmp_path / "cache"
    run = python(script, cache)
    assert_clean(run, warnings=0)
    assert run.stdout.splitlines() == ["during", "after True", "3 3"]  # one module name per op
    assert len(libraries(cache)) == 3 and len(list(cache.glob("*.sha256"))) == 3


@needs_cc
def test_a_first_opgen_build_prints_its_report_and_a_second_finds_the_same_keys(tmp_path):
    user_specs(tmp_path, 3)
    cache = tmp_path / "cache"
    first = opgen_build(tmp_path, cache)
    assert first.returncode == 0 and "Traceback" not in first.stderr, first.stderr
    assert "opgen: 3 ops (decay0_update, decay1_update, decay2_update)" in first.stdout
    assert "C kernels of 3 ops ready" in first.stdout and "generating" not in first.stdout
    built = {p.name: p.stat().st_ino for p in libraries(cache)}
    assert len(built) == 3
    second = opgen_build(tmp_path, cache)
    assert second.returncode == 0 and "C kernels of 3 ops ready" in second.stdout
    assert {p.name: p.stat().st_ino for p in libraries(cache)} == built  # found, not rebuilt


# -- cache_info and clear_cache -------------------------------------------------------------

KEY = "0123456789abcdef0123"


def test_cache_info_and_clear_cache_count_and_remove_only_opgens_files(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("OPGEN_CACHE_DIR", str(cache))
    assert cbuild.cache_info() == (cache, 0, 0) and cbuild.clear_cache() == 0  # no folder yet
    cache.mkdir()
    ours = {f"_opgen_sgd_update_{KEY}.cpython-311-x86_64-linux-gnu.so": 100,
            f"_opgen_sgd_update_{KEY}.cpython-311-x86_64-linux-gnu.so.sha256": 65,
            f"_opgen_adam_update_{KEY}.cpython-310-darwin.so": 30,  # another Python's
            f"_opgen_adam_update_{KEY}.cpython-310-darwin.so.sha256": 65}
    theirs = ["notes.txt", "_opgen_notes.txt", "mylib.so", f"_opgen_x_{KEY[:8]}.so", f"x_{KEY}.so"]
    for name, size in ours.items():
        (cache / name).write_bytes(b"x" * size)
    for name in theirs:
        (cache / name).write_text("a user's file")
    (cache / "keep").mkdir()
    (cache / ".build-other").mkdir()
    stale, fresh = cache / ".build-_opgen_sgd_update_1-abc", cache / ".build-_opgen_adam_update_2-def"
    for folder in (stale, fresh):
        folder.mkdir()
        (folder / "part.c").write_bytes(b"y" * 7)
    old = time.time() - 2 * 86400
    os.utime(stale, (old, old))

    info = cbuild.cache_info()
    assert info == (cache, 2, sum(ours.values()) + 14)
    assert (info.path, info.entries, info.bytes) == tuple(info)
    assert cbuild.clear_cache() == 5  # four files and the stale build folder
    left = sorted(p.name for p in cache.iterdir())
    assert left == sorted(theirs + ["keep", ".build-other", fresh.name])
    assert cbuild.cache_info() == (cache, 0, 7)


def test_cache_info_of_a_file_is_empty(tmp_path, monkeypatch):
    monkeypatch.setenv("OPGEN_CACHE_DIR", str(_a_file(tmp_path)))
    assert cbuild.cache_info() == (tmp_path / "afile", 0, 0) and cbuild.clear_cache() == 0
    assert (tmp_path / "afile").read_text() == "not a folder"


@needs_cc
def test_clear_cache_removes_a_real_entry(tmp_path, built_cache, monkeypatch):
    cache = tmp_path / "cache"
    shutil.copytree(built_cache, cache)
    monkeypatch.setenv("OPGEN_CACHE_DIR", str(cache))
    [library] = libraries(cache)
    assert cbuild.cache_info() == (cache, 1, library.stat().st_size + 65)
    assert cbuild.clear_cache() == 2 and not any(cache.iterdir())


@needs_cc
def test_the_opgen_cache_command_shows_and_clears_only_opgens_files(tmp_path, built_cache):
    cache = tmp_path / "cache"
    shutil.copytree(built_cache, cache)
    (cache / "notes.txt").write_text("mine")
    [library] = libraries(cache)
    size = library.stat().st_size + 65  # the library and its hash file
    env = {**os.environ, "OPGEN_CACHE_DIR": str(cache)}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "opgen", "cache", *args], capture_output=True, text=True, env=env)

    shown = cli()
    assert shown.returncode == 0 and shown.stdout.strip() == (f"opgen: cache folder {cache}: 1 compiled kernels, "
                                                              f"{size / 1e6:.1f} MB")
    cleared = cli("--clear")
    assert cleared.returncode == 0 and cleared.stdout.strip() == f"opgen: removed 2 files from {cache}"
    assert sorted(p.name for p in cache.iterdir()) == ["notes.txt"]
    assert cli().stdout.strip() == f"opgen: cache folder {cache}: 0 compiled kernels, 0.0 MB"
