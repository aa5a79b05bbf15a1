"""Array adapters: everything the runtime asks of an array type, in one interface.

The runtime works on two native kinds, NumPy arrays (host: the C and NumPy backends) and
CuPy arrays (device: CUDA); their adapters say where a value lives and how to read its
pointer, byte range, writeability and device, and the checks and backends ask only these.
Any other array type is one new adapter module: it says which values it owns, presents
each as a native array over the same memory (``view``: a NumPy view of host memory, or a
CuPy array over device memory through DLPack, with no copy), and turns a new native
result back into its own type (``wrap``); it calls :func:`register` with an instance.
Nothing else changes.
"""

from __future__ import annotations

import contextlib

import numpy as np
from numpy.lib.array_utils import byte_bounds as _np_byte_bounds


class ArrayAdapter:
    """One array type. ``device`` is False for host memory (C and NumPy backends), True for
    device memory (the CUDA backend)."""

    name = "array"  # how messages name the type: "NumPy (host)"
    type_names = "array"  # how messages name what it accepts: "numpy.ndarray"
    device = False
    native = True  # the runtime works on such arrays directly (NumPy, CuPy)

    def owns(self, value) -> bool:
        raise NotImplementedError

    def view(self, value):
        """A native array (NumPy or CuPy) over the same memory, zero-copy."""
        return value

    def wrap(self, array, like):
        """A new native result as this adapter's type (``like`` is the call's weight)."""
        return array

    def module(self, value):
        """The array namespace (numpy, cupy) that creates and copies such arrays."""
        raise NotImplementedError

    def pointer(self, value) -> int:
        raise NotImplementedError

    def byte_bounds(self, value) -> tuple[int, int]:
        raise NotImplementedError

    def writeable(self, value) -> bool:
        return True

    def device_id(self, value) -> int | None:
        return None

    def on_device(self, value):
        """A context in which new arrays, copies and launches go to ``value``'s device."""
        return contextlib.nullcontext()

    def launch_context(self, value):
        """A foreign array's context for the run (torch: its current CUDA stream)."""
        return contextlib.nullcontext()

    def written(self, values) -> None:
        """The kernels wrote these arrays (the caller's originals): torch's version counters."""

    def host_pointers(self, values: list, like: list) -> list[int] | None:
        """The data pointers of ``values``, where each is host memory the C kernels may read
        in place as its ``like`` (a NumPy array): of its dtype and shape, C-contiguous, its
        memory holding its values. None where one is not: the full checks decide (and name it)."""
        return None

    def number(self, value):
        """A one-element array as a parameter's value, or None where it is not one."""
        return value.item() if getattr(value, "size", None) == 1 and getattr(value, "ndim", None) == 0 else None

    def may_share_memory(self, a, b) -> bool:
        lo_a, hi_a = self.byte_bounds(a)
        lo_b, hi_b = self.byte_bounds(b)
        return lo_a < hi_b and lo_b < hi_a and hi_a > lo_a and hi_b > lo_b


class Refused(Exception):
    """An adapter cannot present a value: ``exc`` (TypeError or ValueError) and the end of the
    message after "argument 'NAME' ", which the caller completes with the argument's name."""

    def __init__(self, exc: type[Exception], message: str) -> None:
        super().__init__(message)
        self.exc, self.message = exc, message


# Which NumPy arrays the runtime takes: numpy.ndarray itself, and the subclasses known to
# keep its element semantics (numpy.memmap: an ndarray over a mapped file, nothing more).
# Any other subclass may change what its elements mean -- numpy.ma.MaskedArray hides some
# behind a mask, numpy.matrix changes shapes and products -- which the kernels, reading the
# raw memory, would silently ignore; so it is refused with a TypeError naming the argument
# (numpy.asarray(x) passes its plain data, on purpose). A subclass joins this tuple only
# when every element of its memory means what it means in a plain ndarray.
SAFE_NDARRAY_SUBCLASSES: tuple[type, ...] = (np.memmap,)


class NumpyArrays(ArrayAdapter):
    name = "NumPy (host)"
    type_names = "numpy.ndarray"

    def owns(self, value) -> bool:
        return type(value) is np.ndarray or isinstance(value, SAFE_NDARRAY_SUBCLASSES)

    def module(self, value):
        return np

    def pointer(self, value) -> int:
        return value.__array_interface__["data"][0]

    def byte_bounds(self, value) -> tuple[int, int]:
        return _np_byte_bounds(value)

    def writeable(self, value) -> bool:
        return bool(value.flags.writeable)

    def may_share_memory(self, a, b) -> bool:
        return bool(np.may_share_memory(a, b))


class CupyArrays(ArrayAdapter):
    """CuPy arrays; CuPy is imported only once such an array arrives."""

    name = "CuPy (device)"
    type_names = "cupy.ndarray"
    device = True

    def owns(self, value) -> bool:
        return type(value).__module__.split(".")[0] == "cupy" and hasattr(value, "dtype")

    def module(self, value):
        import cupy

        return cupy

    def pointer(self, value) -> int:
        return value.data.ptr

    def byte_bounds(self, value) -> tuple[int, int]:
        # From the strides, not nbytes: a strided or reversed view spans more than its
        # nbytes, and a reversed one starts below its pointer.
        start = value.data.ptr
        if not value.size:
            return start, start
        low = high = start
        for n, stride in zip(value.shape, value.strides):
            if stride < 0:
                low += stride * (n - 1)
            else:
                high += stride * (n - 1)
        return low, high + value.itemsize

    def device_id(self, value) -> int | None:
        return value.device.id

    def on_device(self, value):
        return value.device

    def may_share_memory(self, a, b) -> bool:
        return bool(self.module(a).may_share_memory(a, b))


class ProtocolArrays(ArrayAdapter):
    """Any other object that exposes its memory through ``__array_interface__`` (host) or
    ``__dlpack__`` (host, or a CUDA device through CuPy): updated in place through a
    zero-copy view. NumPy scalars and Python numbers are numbers, not arrays."""

    name = "array-protocol object"
    type_names = "an object with __dlpack__ or __array_interface__"
    native = False

    def owns(self, value) -> bool:
        if isinstance(value, (np.ndarray, np.generic, int, float, complex, bool, str, bytes, list, tuple, dict)):
            return False  # ndarray subclasses: see SAFE_NDARRAY_SUBCLASSES
        return hasattr(value, "__dlpack__") or hasattr(value, "__array_interface__")

    def view(self, value):
        if hasattr(value, "__dlpack__") and hasattr(value, "__dlpack_device__"):
            device_type = int(value.__dlpack_device__()[0])
            if device_type == 2:  # kDLCUDA
                import cupy

                return cupy.from_dlpack(value)
            if device_type != 1:  # kDLCPU
                raise Refused(TypeError, f"is a DLPack array on device type {device_type}: opgen runs on the host "
                                         "and on CUDA devices")
            if not hasattr(value, "__array_interface__"):
                try:
                    return np.from_dlpack(value)
                except (TypeError, ValueError, BufferError, RuntimeError) as exc:
                    raise Refused(TypeError, f"cannot be seen as an array through DLPack ({exc})") from None
        try:
            return np.asarray(value)  # __array_interface__: a view of the same memory
        except (TypeError, ValueError) as exc:
            raise Refused(TypeError, f"cannot be seen as an array through __array_interface__ ({exc})") from None

    def wrap(self, array, like):
        return array  # a new result: a NumPy or CuPy array


NUMPY = NumpyArrays()
# Built in, in the order asked: the native kinds, torch (torch_arrays), the protocols.
_ADAPTERS: list[ArrayAdapter] = [NUMPY, CupyArrays()]


def register(adapter: ArrayAdapter) -> None:
    """Make the runtime accept a new array type (``adapter.native`` must be False)."""
    if adapter.native:
        raise ValueError("register: argument 'adapter' must present its arrays as NumPy or CuPy views "
                         "(native = False)")
    if adapter not in _ADAPTERS:
        _ADAPTERS.append(adapter)


def unregister(adapter: ArrayAdapter) -> None:
    if adapter in _ADAPTERS and not adapter.native:
        _ADAPTERS.remove(adapter)


class Presented:
    """A call's arrays as native views, and how to hand a result back in the caller's type."""

    __slots__ = ("originals", "views", "adapter", "first")

    def __init__(self, values, adapter: ArrayAdapter | None, first=None) -> None:
        self.originals, self.views, self.adapter, self.first = values, values, adapter, first

    def written(self, positions) -> None:
        """Tell the adapter which of the call's values the kernels wrote."""
        if self.adapter is not None:
            self.adapter.written([self.originals[k] for k in positions])

    def context(self):
        """Where the run goes (torch CUDA tensors: torch's current stream)."""
        return self.adapter.launch_context(self.first) if self.adapter is not None else contextlib.nullcontext()

    def result(self, value):
        """``value`` as the caller sees it: the object it passed, or a new one of its type."""
        for original, view in zip(self.originals, self.views):
            if value is view:
                return original
        if self.adapter is None:
            return value
        return self.adapter.wrap(value, None)


def present(values: tuple, fail=None) -> tuple[tuple, Presented | None]:
    """Foreign arrays among ``values`` replaced by native views (others unchanged), and how
    to hand a result back; None when every value is native already (the usual call).
    ``fail(k, exc, message)`` makes the error for a value an adapter refuses (k: its place)."""
    foreign, converted, first = None, None, None
    for k, value in enumerate(values):
        if type(value) is np.ndarray or value is None:
            continue
        adapter = adapter_for(value)
        if adapter is not None and not adapter.native:
            converted = converted or list(values)
            try:
                converted[k] = adapter.view(value)
            except Refused as refused:
                if fail is None:
                    raise refused.exc(f"argument {k} {refused.message}") from None
                raise fail(k, refused.exc, refused.message) from None
            if foreign is None:
                foreign, first = adapter, value
    if converted is None:
        return values, None
    presented = Presented(tuple(values), foreign, first)
    presented.views = tuple(converted)
    return presented.views, presented


def number(value):
    """A one-element array (NumPy 0-d, a torch tensor of one element) as a Python number,
    or None where ``value`` is no such array."""
    adapter = adapter_for(value)
    return None if adapter is None else adapter.number(value)


def adapter_for(value) -> ArrayAdapter | None:
    """The adapter that owns ``value``, or None for anything that is not an array."""
    if type(value) is np.ndarray:  # the common case, asked many times per call
        return NUMPY
    for adapter in _ADAPTERS:
        if adapter.owns(value):
            return adapter
    return None


def refused_subclass(value) -> str | None:
    """For an ndarray subclass that the runtime refuses (see SAFE_NDARRAY_SUBCLASSES), the
    end of the error message that says why; None for anything else."""
    if not isinstance(value, np.ndarray) or NUMPY.owns(value):
        return None
    cls = type(value)
    module = "numpy.ma" if cls.__module__ == "numpy.ma.core" else cls.__module__
    return (f"is a {module}.{cls.__qualname__}: numpy.ndarray subclasses other than numpy.memmap are refused, "
            "as they may change what elements mean (a mask, matrix semantics) and the kernels would "
            "ignore that; pass numpy.asarray(...) to use the plain data")


def may_overlap_itself(array) -> bool:
    """Whether two elements of ``array`` (NumPy or CuPy) may share memory, as a zero stride
    (np.broadcast_to) or overlapping strides (as_strided) make them; an array the kernels
    write must not, or one element's update would overwrite another's.

    Sound (never False for an array whose elements overlap) and cheap: contiguous arrays
    answer from their flags; otherwise the axes of length > 1, sorted by |stride|, must each
    step over everything the smaller ones span. That may refuse a few exotic interleaved
    layouts that do not overlap, never accepts one that does.
    """
    flags = array.flags
    if flags.c_contiguous or flags.f_contiguous:
        return False
    if array.size <= 1:
        return False
    extent = array.itemsize  # bytes spanned by the axes seen so far
    for stride, n in sorted((abs(s), n) for s, n in zip(array.strides, array.shape) if n > 1):
        if stride < extent:
            return True
        extent += stride * (n - 1)
    return False


def accepted_types(*extra: str) -> str:
    """'numpy.ndarray or cupy.ndarray': what the runtime takes, for messages."""
    names = [a.type_names for a in _ADAPTERS] + list(extra)
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]


def kind(value) -> str:
    adapter = adapter_for(value)
    return adapter.name if adapter is not None else type(value).__name__


def same_view(a, b) -> bool:
    """The same memory seen the same way (a view of the whole weight counts as the weight)."""
    if a is b:
        return True
    adapter = adapter_for(a)
    return adapter is not None and adapter is adapter_for(b) and adapter.pointer(a) == adapter.pointer(b) \
        and a.shape == b.shape and a.strides == b.strides


def array_module(value):
    """numpy for host arrays, cupy for device arrays (imported only when one is seen)."""
    adapter = adapter_for(value)
    return adapter.module(value) if adapter is not None else np


def is_device_array(value) -> bool:
    adapter = adapter_for(value)
    return adapter is not None and adapter.device


def _builtin_foreign_adapters() -> None:
    from opgen.runtime.torch_arrays import TorchTensors

    _ADAPTERS.extend([TorchTensors(), ProtocolArrays()])


_builtin_foreign_adapters()


def grid_axis_shapes(shape) -> tuple[tuple, tuple]:
    """A grid op's per-row and per-column values for a weight (..., rows, cols), as torch keeps
    them: (..., rows, 1) and (..., 1, cols) (each (rows, cols) slice's own)."""
    *lead, rows, cols = shape
    return (*lead, rows, 1), (*lead, 1, cols)
