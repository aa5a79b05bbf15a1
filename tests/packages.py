"""Building specs into a throwaway package and importing it: the one helper the suites
that need a package of their own share."""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path
from types import ModuleType

from opgen.build import build


def import_fresh(folder: Path, package: str) -> ModuleType:
    """Import ``folder/package`` anew (a package of that name imported before is dropped)."""
    sys.path.insert(0, str(folder))
    try:
        for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
            del sys.modules[name]
        return importlib.import_module(package)
    finally:
        sys.path.remove(str(folder))


def build_package(tmp_path: Path, specs: dict[str, str], package: str, compile_c: bool = True) -> ModuleType:
    """Build ``specs`` (name -> YAML) into tmp_path/package and import it."""
    spec_dir = tmp_path / f"{package}_specs"
    spec_dir.mkdir()
    for name, text in specs.items():
        (spec_dir / f"{name}.yaml").write_text(textwrap.dedent(text), encoding="utf-8")
    build(spec_dir, tmp_path / package, compile_c=compile_c)
    return import_fresh(tmp_path, package)
