"""The ``opgen`` command line."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from opgen import __version__
from opgen.build import DEFAULT_TEMPLATES, TARGETS, BuildError, build
from opgen.errors import SpecError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opgen", description="Optimizer update operators from YAML specs.")
    parser.add_argument("--version", action="version", version=f"opgen {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="render every spec into the output package and compile its C kernels")
    b.add_argument("--specs", type=Path, default=Path("specs"), help="folder of NAME.yaml specs (default: specs)")
    b.add_argument("--out", type=Path, default=Path("generated"), help="output package folder (default: generated)")
    b.add_argument("--templates", type=Path, default=DEFAULT_TEMPLATES, help=argparse.SUPPRESS)
    b.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 if the output folder differs from what the specs give")
    b.add_argument("--no-compile", action="store_true", help="do not compile the C kernels")
    c = sub.add_parser("cache", help="show the compiled-kernel cache: its folder, kernels and size")
    c.add_argument("--clear", action="store_true",
                   help="remove the compiled kernels (and leftovers of killed builds) that opgen put there")
    return parser


def _warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line, without opgen's source location."""
    print(f"opgen: warning: {str(message).removeprefix('opgen: ')}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    shown, warnings.showwarning = warnings.showwarning, _warning
    try:
        return _run(args)
    finally:
        warnings.showwarning = shown


def _run(args: argparse.Namespace) -> int:
    if args.command == "cache":
        return _cache(args.clear)
    if not args.specs.is_dir():
        print(f"opgen: error: spec folder '{args.specs}' does not exist", file=sys.stderr)
        return 2
    if not args.templates.is_dir():
        print(f"opgen: error: template folder '{args.templates}' does not exist", file=sys.stderr)
        return 2
    try:
        result = build(_shown(args.specs), args.out, args.templates, check=args.check,
                       compile_c=not args.no_compile)
    except SpecError as exc:
        print(exc, file=sys.stderr)
        return 2
    except BuildError as exc:
        print(f"opgen: error: {exc}", file=sys.stderr)
        return 2
    report = result.report
    if args.check:
        if report.changed:
            for rel in report.written:
                print(f"opgen: {args.out / rel} is out of date", file=sys.stderr)
            for rel in report.removed:
                print(f"opgen: {args.out / rel} is no longer generated", file=sys.stderr)
            for rel in report.leftovers:
                print(f"opgen: {args.out / rel} is a temporary file left by an interrupted build", file=sys.stderr)
            print("opgen: run `opgen build` to regenerate", file=sys.stderr)
            return 1
        print(f"opgen: {args.out} is up to date ({len(report.unchanged)} files, {len(result.ops)} ops)")
        return 0
    print(f"opgen: {len(result.ops)} ops ({', '.join(result.ops)}); targets: {', '.join(TARGETS)}")
    leftovers = f", {len(report.leftovers)} temporary files of an interrupted build removed" \
        if report.leftovers else ""
    print(f"opgen: {len(report.written)} files written, {len(report.unchanged)} unchanged, "
          f"{len(report.removed)} removed{leftovers}, in {args.out}")
    if result.compiled:
        print(f"opgen: C kernels of {len(result.compiled)} ops ready in {result.compile_seconds:.1f} s")
    if result.compiler_missing:
        print(f"opgen: warning: {result.compiler_missing}; the NumPy backend will be used", file=sys.stderr)
    if result.compile_failed:
        print(f"opgen: error: {result.compile_failed}", file=sys.stderr)
        return 1
    return 0


def _cache(clear: bool) -> int:
    """``opgen cache``: where compiled kernels are kept, how many and how big; ``--clear``
    removes them (only opgen's files: anything else in the folder stays)."""
    from opgen import cbuild

    if clear:
        try:
            removed = cbuild.clear_cache()
        except OSError as exc:
            print(f"opgen: error: {exc}", file=sys.stderr)
            return 1
        print(f"opgen: removed {removed} files from {cbuild.cache_dir()}")
        return 0
    info = cbuild.cache_info()
    print(f"opgen: cache folder {info.path}: {info.entries} compiled kernels, {info.bytes / 1e6:.1f} MB")
    return 0


def _shown(path: Path) -> Path:
    """The spec folder as errors name it: relative to here when inside it."""
    rel = os.path.relpath(path)
    return Path(rel) if not rel.startswith("..") else path.resolve()
