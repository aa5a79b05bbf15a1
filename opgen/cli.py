"""The ``opgen`` command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from opgen import __version__
from opgen.build import DEFAULT_TEMPLATES, TARGETS, OutputError, build
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
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
    except OutputError as exc:
        print(f"opgen: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a compiler that fails is reported, not dumped
        from opgen.cbuild import CompileError, CompilerUnavailable

        if isinstance(exc, CompilerUnavailable):
            print(f"opgen: warning: {exc}; the NumPy backend will be used", file=sys.stderr)
            return 0
        if isinstance(exc, CompileError):
            print(f"opgen: error: {exc}", file=sys.stderr)
            return 1
        raise
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
    return 0


def _shown(path: Path) -> Path:
    """The spec folder as errors name it: relative to here when inside it."""
    rel = os.path.relpath(path)
    return Path(rel) if not rel.startswith("..") else path.resolve()
