"""opgen as users get it (issue 9): the wheel carries the templates, so an installed opgen
builds a user's specs into the user's own package; the build names that package in the
docs, refuses to overwrite files it did not write, and cleans up after a killed build."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

import opgen
from opgen import writer
from opgen.build import build
from test_build import USER_SPEC

ROOT = Path(__file__).resolve().parent.parent

def opgen_cli(*args: str, cwd: Path, executable: str = sys.executable) -> subprocess.CompletedProcess:
    return subprocess.run([executable, "-m", "opgen", *args], cwd=cwd, capture_output=True, text=True)


def user_specs(tmp_path: Path, specs: dict[str, str] | None = None) -> Path:
    folder = tmp_path / "myspecs"
    folder.mkdir(exist_ok=True)
    for name, text in (specs or {"decay_update": USER_SPEC}).items():
        (folder / f"{name}.yaml").write_text(text)
    return folder


# ---- the distribution -----------------------------------------------------------------------

def test_the_package_list_is_every_package_and_the_templates():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = sorted(".".join(p.parent.relative_to(ROOT).parts) for base in ("opgen", "generated")
                   for p in (ROOT / base).rglob("__init__.py"))
    assert sorted(config["packages"]) == sorted(found + ["opgen.templates"])
    assert config["package-dir"] == {"opgen.templates": "templates"}


def test_license_and_version():
    assert "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0" in (ROOT / "LICENSE").read_text()
    result = opgen_cli("--version", cwd=ROOT)
    assert result.returncode == 0 and result.stdout.strip() == f"opgen {opgen.__version__}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A wheel built from the tracked files, installed into a fresh virtual environment
    outside the repository (its dependencies seen through a path file, opgen only from the
    wheel). Returns the environment's python."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
    for rel in filter(None, tracked.stdout.split("\0")):
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    wheel = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(src), "-w", str(tmp / "dist")],
                           capture_output=True, text=True)
    assert wheel.returncode == 0, wheel.stderr[-3000:]
    (built,) = (tmp / "dist").glob("opgen-*.whl")
    env = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    env_site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   capture_output=True, text=True, check=True).stdout.strip())
    # numpy, cffi, jinja2, pyyaml from this environment; a path line does not run its .pth files,
    # so the editable opgen of this checkout stays invisible
    (env_site / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                              str(built)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-3000:]
    return python


def test_the_wheel_builds_a_users_specs_outside_the_repository(installed, tmp_path):
    user_specs(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OPGEN_CACHE_DIR": str(tmp_path / "cache")}
    where = subprocess.run([str(installed), "-c", "import opgen; print(opgen.__file__)"], cwd=tmp_path,
                           capture_output=True, text=True, env=env)
    assert where.returncode == 0 and not Path(where.stdout.strip()).is_relative_to(ROOT), where
    opgen_exe = installed.parent / "opgen"
    result = subprocess.run([str(opgen_exe), "build", "--specs", "myspecs", "--out", "myops"], cwd=tmp_path,
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert "1 ops (decay_update)" in result.stdout
    script = textwrap.dedent("""\
        import numpy as np
        from myops import decay_update, use_backend
        w = np.array([2.0, -4.0], np.float32); g = np.array([1.0, 0.5], np.float32)
        with use_backend("c"):
            print(decay_update(w, g, lr=0.1).tolist())
        """)
    run = subprocess.run([str(installed), "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    got = [float(x) for x in run.stdout.strip().strip("[]").split(",")]
    assert got == pytest.approx([0.5 * 2.0 - 0.1 * 1.0, 0.5 * -4.0 - 0.1 * 0.5], rel=1e-6)
    page = (tmp_path / "myops" / "docs" / "decay_update.md").read_text()
    assert ("myops.decay_update(weight, grad, lr, keep=0.5, out=None, *, rounding=\"nearest\", seed=None)" in page
            and "generated." not in page)


# ---- the output package ---------------------------------------------------------------------

@pytest.mark.parametrize("name, reason", [
    ("my-ops", "is not a valid name (ASCII letters, digits and '_', starting with a letter)"),
    ("class", "is a keyword of Python"),
    ("json", "is a name Python already uses"),
    ("numpy", "is a name Python already uses"),
])
def test_the_output_folder_must_be_an_importable_package_name(tmp_path, name, reason):
    user_specs(tmp_path)
    result = opgen_cli("build", "--no-compile", "--specs", "myspecs", "--out", name, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (f"opgen: error: the output folder's name '{name}' is the package's import "
                                     f"name, and it {reason}")
    assert not (tmp_path / name).exists()


def test_a_users_own_files_are_never_overwritten(tmp_path):
    user_specs(tmp_path)
    out = tmp_path / "myops"
    (out / "docs").mkdir(parents=True)
    (out / "__init__.py").write_text("print('my own package')\n")
    (out / "docs" / "index.md").write_text("# my notes\n")
    for args in (("build", "--no-compile"), ("build", "--check")):
        result = opgen_cli(*args, "--specs", "myspecs", "--out", "myops", cwd=tmp_path)
        assert result.returncode == 2, result
        assert result.stderr.strip() == ("opgen: error: the output folder holds files that opgen did not generate "
                                         "and a build would replace: myops/docs/index.md, myops/__init__.py; move "
                                         "them away or choose another --out")
    assert (out / "__init__.py").read_text() == "print('my own package')\n"
    assert sorted(p.name for p in out.rglob("*")) == ["__init__.py", "docs", "index.md"]  # nothing written


def test_a_killed_builds_temporary_files_are_reported_then_removed(tmp_path):
    user_specs(tmp_path)
    out = tmp_path / "myops"
    assert opgen_cli("build", "--no-compile", "--specs", "myspecs", "--out", "myops", cwd=tmp_path).returncode == 0
    leftovers = [out / ".decay_update.py.a1b2c3d4.tmp", out / "docs" / ".index.md.zz_9x8y7.tmp"]
    for path in leftovers:
        path.write_text("half a file")
    mine = out / ".notes.txt.a1b2c3d4.tmp"  # not a kind of file opgen writes: not opgen's
    mine.write_text("keep")
    check = opgen_cli("build", "--check", "--specs", "myspecs", "--out", "myops", cwd=tmp_path)
    assert check.returncode == 1
    for path in leftovers:
        assert f"opgen: myops/{path.relative_to(out)} is a temporary file left by an interrupted build" in check.stderr
        assert path.exists()
    result = opgen_cli("build", "--no-compile", "--specs", "myspecs", "--out", "myops", cwd=tmp_path)
    assert result.returncode == 0
    assert "0 files written" in result.stdout and "2 temporary files of an interrupted build removed" in result.stdout
    assert not any(p.exists() for p in leftovers) and mine.exists()
    assert opgen_cli("build", "--check", "--specs", "myspecs", "--out", "myops", cwd=tmp_path).returncode == 0


SECOND_SPEC = USER_SPEC.replace("decay_update", "plain_update").replace("keep * weight", "weight")
SECOND_SPEC = SECOND_SPEC.replace("  - {name: keep, type: float, default: 0.5, doc: Fraction of the weight kept}\n", "")


def import_check(tmp_path: Path) -> subprocess.CompletedProcess:
    script = "import myops, numpy as np; print(sorted(n for n in myops.__all__ if n.endswith('_update')))"
    return subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)


@pytest.mark.parametrize("change", ["add an op", "remove an op"])
def test_the_package_imports_at_every_instant_of_a_build(tmp_path, monkeypatch, change):
    """Kill the build after each single write (or removal): the package as left imports,
    either as it was or as it will be; modules go in before __init__ imports them and
    leave after it stopped."""
    specs = user_specs(tmp_path, {"decay_update": USER_SPEC} if change == "add an op" else
                       {"decay_update": USER_SPEC, "plain_update": SECOND_SPEC})
    out = tmp_path / "myops"
    build(specs, out, compile_c=False)
    if change == "add an op":
        user_specs(tmp_path, {"plain_update": SECOND_SPEC})
    else:
        (specs / "plain_update.yaml").unlink()
    before = sorted(import_check(tmp_path).stdout.split())
    steps = 0
    while True:
        calls = {"n": 0}
        real_write, real_unlink = writer._atomic_write, Path.unlink

        class Killed(BaseException):
            pass

        def counted(action):
            def run(*args, **kwargs):
                if calls["n"] == steps:
                    raise Killed
                calls["n"] += 1
                return action(*args, **kwargs)
            return run

        monkeypatch.setattr(writer, "_atomic_write", counted(real_write))
        monkeypatch.setattr(Path, "unlink", counted(real_unlink))
        try:
            build(specs, out, compile_c=False)
            finished = True
        except Killed:
            finished = False
        monkeypatch.undo()
        state = import_check(tmp_path)
        assert state.returncode == 0, (steps, state.stderr)
        if finished:
            break
        steps += 1
    after = sorted(import_check(tmp_path).stdout.split())
    assert before != after and steps >= 2


@pytest.mark.parametrize("where", ["afile", "afile/pkg", "pkg_with_cuda_file", "pkg_with_docs_file"])
def test_a_file_where_the_build_needs_a_folder_is_one_clean_error(tmp_path, where):
    user_specs(tmp_path)
    (tmp_path / "afile").write_text("mine")
    for folder in ("pkg_with_cuda_file", "pkg_with_docs_file"):
        (tmp_path / folder).mkdir()
    (tmp_path / "pkg_with_cuda_file" / "cuda").write_text("mine")
    (tmp_path / "pkg_with_docs_file" / "docs").write_text("mine")
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    result = opgen_cli("build", "--no-compile", "--specs", "myspecs", "--out", where, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    blocked = {"afile": "afile", "afile/pkg": "afile", "pkg_with_cuda_file": "pkg_with_cuda_file/cuda",
               "pkg_with_docs_file": "pkg_with_docs_file/docs"}[where]
    assert result.stderr.strip() == f"opgen: error: {blocked} is not a folder, but the build needs a folder there"
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == before  # nothing written


def test_an_output_folder_that_cannot_be_written_is_one_clean_error(tmp_path):
    if os.geteuid() == 0:
        target = "/proc/opgen_pkg"  # root may write anywhere but there
    else:
        (tmp_path / "locked").mkdir(mode=0o500)
        target = str(tmp_path / "locked" / "pkg")
    user_specs(tmp_path)
    result = opgen_cli("build", "--no-compile", "--specs", "myspecs", "--out", target, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"opgen: error: cannot write the package into {target}: ")


def test_no_specs_and_the_spec_folder_as_output_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    result = opgen_cli("build", "--no-compile", "--specs", "empty", "--out", "pkg", cwd=tmp_path)
    assert (result.returncode, result.stderr.strip()) == (2, "opgen: error: no specs (NAME.yaml files) in empty")
    user_specs(tmp_path)
    result = opgen_cli("build", "--no-compile", "--specs", "myspecs", "--out", "myspecs", cwd=tmp_path)
    assert (result.returncode, result.stderr.strip()) == (
        2, "opgen: error: the output folder myspecs is the spec folder; choose another --out")
    assert sorted(p.name for p in (tmp_path / "myspecs").iterdir()) == ["decay_update.yaml"]
    assert not (tmp_path / "pkg").exists()


def test_the_demo_names_the_package_it_is_run_as(tmp_path):
    user_specs(tmp_path)
    assert opgen_cli("build", "--no-compile", "--specs", "myspecs", "--out", "myops", cwd=tmp_path).returncode == 0
    run = subprocess.run([sys.executable, "-m", "myops"], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.strip() == "usage: python -m myops OP   (OP: decay_update)"
