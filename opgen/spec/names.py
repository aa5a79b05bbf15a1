"""The rules every name a spec defines must meet, in every target, and the names the
generator derives from them (one home: the targets call these functions too).

A spec's op, tensor, parameter and temporary names become Python identifiers (module,
function and argument names), C and CUDA identifiers (kernel names, locals) and file
names. Each must be an ASCII identifier that is a keyword in none of those languages,
and must not collide with a name the generator derives or the package exports.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from opgen.errors import Location, SpecError

if TYPE_CHECKING:
    from opgen.spec.model import OpSpec

_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")

# C11/C23, C++20 and CUDA C++ keywords and CUDA's built-in variables (identifiers a kernel
# cannot redeclare). Python's come from the keyword module.
_C_KEYWORDS = frozenset("""
    auto break case char const continue default do double else enum extern float for goto if inline int
    long register restrict return short signed sizeof static struct switch typedef union unsigned void
    volatile while bool true false nullptr alignas alignof static_assert thread_local typeof constexpr
""".split())
_CXX_KEYWORDS = frozenset("""
    and and_eq asm bitand bitor catch char8_t char16_t char32_t class compl concept const_cast consteval
    constinit co_await co_return co_yield decltype delete dynamic_cast explicit export friend mutable
    namespace new noexcept not not_eq operator or or_eq private protected public reinterpret_cast
    requires static_cast template this throw try typeid typename using virtual wchar_t xor xor_eq
""".split())
_CUDA_NAMES = frozenset("threadIdx blockIdx blockDim gridDim warpSize".split())
KEYWORDS = frozenset(keyword.kwlist) | _C_KEYWORDS | _CXX_KEYWORDS | _CUDA_NAMES

# What ``import PACKAGE`` offers besides the ops (package_init.py.j2 exports exactly these).
PACKAGE_EXPORTS = ("RowSparseArray", "available_backends", "set_flush_denormal", "use_backend")
# Names a generated package uses for its own files and folders: an op with one of them
# would write over them (docs/index.md) or be hidden by them (the folders).
PACKAGE_FILES = ("index", "csrc", "cuda", "docs", "optim")
OUT_ARGUMENT = "out"  # every entry point's output argument
ROUNDING_ARGUMENTS = ("rounding", "seed")  # every entry point's keyword-only rounding arguments
CLIP_ARGUMENT = "max_grad_norm"  # every multi-tensor entry point's keyword-only clipping by the global norm
DATA_ARGUMENT = "data"  # the flat array list of MXNet's multi-tensor convention
PUBLIC_SUFFIX_MULTI = "_multi"


def group_name(tensor_name: str) -> str:
    """The multi-tensor entry point's argument for a tensor: weight -> weights."""
    return tensor_name + "s"


def multi_name(op_name: str) -> str:
    return op_name + PUBLIC_SUFFIX_MULTI


# Names become file names (the op's compiled library is ``_opgen_NAME_<key>.<suffix>``,
# about 60 characters besides NAME, under the usual 255-byte limit) and C identifiers.
MAX_NAME_LENGTH = 64


def identifier_problem(name: str) -> str | None:
    """Why ``name`` cannot be a name in every target, or None."""
    if not _IDENTIFIER.match(name):
        return "is not a valid name (ASCII letters, digits and '_', starting with a letter)"
    if len(name) > MAX_NAME_LENGTH:
        return f"is {len(name)} characters long, more than the {MAX_NAME_LENGTH} a name may have"
    if name in KEYWORDS:
        lang = "Python" if keyword.iskeyword(name) else "C, C++ or CUDA"
        return f"is a keyword of {lang}"
    return None


def check_identifier(name: str, what: str, where: Location) -> None:
    problem = identifier_problem(name)
    if problem is not None:
        raise SpecError(where, f"{what} '{name}' {problem}")


def check_arguments(entry: str, arguments: Iterable[tuple[str, str, Location]]) -> None:
    """One entry point's argument names (name, what it is, where it comes from): each a valid
    name and none twice. Derived names (``weights`` from ``weight``) are checked here."""
    seen: dict[str, str] = {}
    for name, what, where in arguments:
        problem = identifier_problem(name)
        if problem is not None:
            raise SpecError(where, f"{what} gives the argument '{name}' of {entry}(), which {problem}")
        if name in seen:
            raise SpecError(where, f"{what} gives the argument '{name}' of {entry}(), which {seen[name]} "
                                   "already gives")
        seen[name] = what


def check_package(ops: Iterable["OpSpec"]) -> None:
    """The names a package exports: none twice (``foo_multi`` of op ``foo`` and an op
    ``foo_multi``), none one of the package's own names, and no two op modules whose file
    names differ only in case (one file on case-insensitive file systems)."""
    taken: dict[str, str] = {name: "the package itself" for name in PACKAGE_EXPORTS + PACKAGE_FILES}
    modules: dict[str, str] = {}
    for op in ops:
        folded = op.name.lower()
        if folded in modules:
            raise SpecError(op.location, f"op '{op.name}' differs from op '{modules[folded]}' only in case: "
                                         "their files would be one file on case-insensitive file systems")
        modules[folded] = op.name
        for name in op.entry_points:
            if name in taken:
                raise SpecError(op.location, f"op '{op.name}' exports '{name}', a name {taken[name]} already "
                                             "uses")
            taken[name] = f"op '{op.name}'" if name == op.name else f"the multi-tensor form of op '{op.name}'"
