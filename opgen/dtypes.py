"""The one table of storage dtypes and the one table of parameter types.

Imported by the spec loader, every target and the runtime; it imports nothing of opgen.
Adding a storage dtype is one row here plus its ``OPGEN_LOAD_<name>``/``OPGEN_STORE_<name>``
conversions in the shared C and CUDA headers (templates/kernel_common.*.j2).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True)
class MathType:
    """A type the element math is computed in."""

    name: str  # NumPy's name of it
    c_type: str  # C and CUDA spelling
    suffix: str  # libm suffix: sqrtf for float, sqrt for double
    itemsize: int


FLOAT = MathType("float32", "float", "f", 4)
DOUBLE = MathType("float64", "double", "", 8)
MATH_TYPES: tuple[MathType, ...] = (FLOAT, DOUBLE)


@dataclass(frozen=True)
class DType:
    """A storage dtype: how a tensor's elements sit in memory."""

    name: str  # NumPy's name; also the suffix of kernel names
    c_storage: str  # element type in memory as the C kernels see it
    cuda_storage: str  # the same in CUDA
    math: MathType  # the narrowest type its math is computed in
    itemsize: int  # bytes per element
    # the dtypes a call with a weight of this dtype may keep its states in, besides its own:
    # float32 states beside 16-bit weights (mixed precision), bf16 states beside float32
    # weights (half the optimizer memory)
    other_states: tuple[str, ...] = ()
    # whether the C header can narrow a block of float results into it with one instruction
    # per vector on some machines (OPGEN_NARROW_<name>): its stores then take the
    # block-narrowed loops where the machine compiled for has it
    block_narrowing: bool = False

    @property
    def load(self) -> str:
        """The shared headers' macro converting a stored element to the math type."""
        return f"OPGEN_LOAD_{self.name}"

    @property
    def store(self) -> str:
        """The shared headers' macro converting a math-type value to storage."""
        return f"OPGEN_STORE_{self.name}"

    @property
    def round(self) -> str:
        """The shared headers' macro storing with the call's rounding: (value, stochastic?,
        the stored tensor's key, the element's index); stochastic only into 16-bit types."""
        return f"OPGEN_ROUND_{self.name}"

    @property
    def narrow(self) -> str:
        """The C header's function narrowing a block of float values into this type (where
        ``block_narrowing``), to nearest: ``(dst, src, count)``; ``OPGEN_NARROWS_IN_BLOCKS_<name>``
        says whether the machine compiled for does it faster than element by element."""
        return f"OPGEN_NARROW_{self.name}"

    @property
    def stochastic(self) -> bool:
        """Whether rounding="stochastic" changes a store into this type."""
        return self.itemsize < self.math.itemsize


DTYPES: tuple[DType, ...] = (
    DType("float16", "opgen_half", "opgen_half", FLOAT, 2, ("float32",), block_narrowing=True),
    DType("bfloat16", "opgen_bf16", "opgen_bf16", FLOAT, 2, ("float32",), block_narrowing=True),  # in NumPy: ml_dtypes.bfloat16
    DType("float32", "float", "float", FLOAT, 4, ("bfloat16",)),
    DType("float64", "double", "double", DOUBLE, 8),
)
DTYPE_BY_NAME: dict[str, DType] = {d.name: d for d in DTYPES}
DTYPE_NAMES: tuple[str, ...] = tuple(d.name for d in DTYPES)


@dataclass(frozen=True)
class Variant:
    """A call's storage: the weight's dtype (the gradient's and ``out``'s too) and the one
    dtype of the states the spec does not fix. Each variant of an op is its own kernels."""

    dtype: DType
    states: DType

    @property
    def name(self) -> str:
        """The suffix of its kernels' names: ``float32``, ``bfloat16_with_float32_states``."""
        return self.dtype.name if self.states == self.dtype else f"{self.dtype.name}_with_{self.states.name}_states"


def variants(free_states: bool) -> tuple[Variant, ...]:
    """Every variant, weight dtype by weight dtype: its own states first, then the others
    (``free_states``: the op has states whose dtype the spec does not fix)."""
    return tuple(Variant(d, DTYPE_BY_NAME[s]) for d in DTYPES
                 for s in (d.name,) + (d.other_states if free_states else ()))


def dtype_list(names: tuple[str, ...] = DTYPE_NAMES) -> str:
    """'float16, float32 or float64': for messages and docs."""
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]


def widest_math(dtypes) -> MathType:
    """The math type of a call whose tensors have these storage dtypes."""
    return max((d.math for d in dtypes), key=lambda m: m.itemsize)


class ParamType(str, enum.Enum):
    """A scalar parameter's type, as the spec names it."""

    FLOAT = "float"
    INT = "int"
    BOOL = "bool"


@dataclass(frozen=True)
class ParamKind:
    """How one parameter type crosses every boundary."""

    type: ParamType
    python: str  # the Python type in signatures and docstrings
    doc: str  # the type as documentation pages name it
    c_arg: str  # the kernels' argument type (C and CUDA): floats arrive in double
    numpy_arg: str  # NumPy's name of c_arg, for packed per-tensor lists and device launches
    c_value: str | None  # the type inside the kernels; None: the math type (floats)
    plain: frozenset  # Python types a call passes as they are (the runtime's fast path)
    neutral: object  # a value that means nothing where the math does not read the parameter


PARAM_KINDS: dict[ParamType, ParamKind] = {
    k.type: k
    for k in (
        ParamKind(ParamType.FLOAT, "float", "float", "double", "float64", None, frozenset((float, int)), 0.0),
        ParamKind(ParamType.INT, "int", "int", "int64_t", "int64", "int64_t", frozenset((int,)), 0),
        ParamKind(ParamType.BOOL, "bool", "boolean", "int", "int32", "int", frozenset((bool,)), True),
    )
}
# How a spec writes a bool (a default, a switch), as Python spells it.
BOOL_LITERALS = {"true": "True", "false": "False", "True": "True", "False": "False"}
# Scalar inputs (role: scalar) cross the ABI as floats.
SCALAR_INPUT_KIND = PARAM_KINDS[ParamType.FLOAT]
# The kernels' size and index arguments.
C_INDEX = "int64_t"
