"""What every generated function calls: validate the arguments, then run a kernel.

All checks happen before anything is written, so a bad call raises ``TypeError`` or
``ValueError`` naming the argument and leaves every array as it was.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from opgen.runtime import backends, cbuild, cuda
from opgen.runtime.rowsparse import RowSparseArray, array_module

_backend = backends.current_backend_fast
_ftz = backends._flush_denormal

FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
_REAL = (int, float, np.integer, np.floating)
_PLAIN = {"float": frozenset((float, int)), "int": frozenset((int,)), "bool": frozenset((bool,))}  # taken as they are by the fast path


@dataclass(frozen=True)
class TensorArg:
    name: str
    role: str  # "weight", "grad", "state" or "scalar"
    dtype: str | None = None  # a fixed dtype (e.g. float32 master weights); None: the call's
    per_row: bool = False  # one value per row of the weight: shape (rows,) or (rows, 1)


@dataclass(frozen=True)
class ParamArg:
    name: str
    type: str  # "float", "int" or "bool"
    in_kernel: bool  # read by the math (passed to the kernels)
    bounds: tuple[float, float] | None = None  # inclusive range the value must lie in
    required: bool = False


@dataclass
class _Call:
    """A checked call: what the kernels need, nothing written yet."""

    weight: object
    grad: object
    states: list
    scalars: tuple  # kernel scalars: scalar inputs, then the math's parameters
    target: object  # where the result goes (None: a new array)
    mode: str  # "dense", "lazy" or "standard"


class Operator:
    """One generated op: its argument table, NumPy kernel, C and CUDA sources."""

    def __init__(self, *, name: str, spec: str, tensors: Sequence[TensorArg], params: Sequence[ParamArg],
                 lazy_param: str | None, always_lazy: bool, kernels: Sequence[str], numpy_kernel: Callable,
                 c_source: Path, c_cdef: Path, cuda_source: Path, output: bool = False,
                 skip_if: Callable | None = None) -> None:
        self.name = name
        self.spec = spec
        self.tensors = tuple(tensors)
        self.names = tuple(t.name for t in tensors)
        self.params = tuple(params)
        self.kernels = tuple(kernels)
        self.always_lazy = always_lazy
        self.output = output  # the kernels write `out` and leave the weight alone
        self.skip_if = skip_if
        self.lazy_index = next((k for k, p in enumerate(params) if p.name == lazy_param), None)
        self.weight_index = next(k for k, t in enumerate(tensors) if t.role == "weight")
        self.grad_index = next(k for k, t in enumerate(tensors) if t.role == "grad")
        self.kernel_params = tuple(k for k, p in enumerate(params) if p.in_kernel)
        self.fixed_dtypes = {t.name: np.dtype(t.dtype) for t in tensors if t.dtype}
        # The kernels' scalar arguments: scalar inputs (floats), then the math's parameters.
        self.scalar_inputs = sum(t.role == "scalar" for t in tensors)
        self.scalar_kinds = ("float",) * self.scalar_inputs + tuple(params[k].type for k in self.kernel_params)
        self.numpy_kernel = numpy_kernel
        self.c_source = c_source
        self.c_cdef = c_cdef
        self.cuda = cuda.CudaKernels(spec, cuda_source)
        self._c_functions: dict[tuple[str, str], Callable] = {}
        self._c_module = None
        # The fast path covers plain ops: every tensor of the call's dtype, no scalar
        # inputs, outputs, skip conditions or ranged parameters.
        self._fast_ok = not (output or skip_if or self.fixed_dtypes or any(p.bounds for p in params)
                             or any(t.role == "scalar" for t in tensors))
        self._fast_functions: dict[np.dtype, Callable] = {}  # dtype -> dense C kernel, once loaded
        self._fast_types = tuple(_PLAIN[p.type] for p in params)
        # the kernel parameters as a slice of the call's, when they come first
        prefix = len(self.kernel_params)
        self._kernel_prefix = prefix if self.kernel_params == tuple(range(prefix)) else None
        self._from_buffer = None
        self._distinct = _DISTINCT.get(len(self.tensors), _distinct_any)

    def math_dtype(self, dtype: np.dtype) -> type:
        """As the kernels: the widest fixed dtype of a mixed-precision op, else the call's
        dtype (float32 for float16)."""
        dtypes = list(self.fixed_dtypes.values()) or [dtype]
        return np.float64 if any(d == np.float64 for d in dtypes) else np.float32

    # -- the call ---------------------------------------------------------------
    def __call__(self, tensors: tuple, params: tuple, out):
        """The common call in a few attribute reads, else the general path.

        The fast path applies to NumPy arrays that own their memory (so distinct arrays
        cannot overlap), are C-contiguous and writable, and share one dtype and shape; a
        dense gradient; ``out`` None or the weight; plain Python numbers; the C backend.
        Everything else, errors included, goes through the full checks.
        """
        weight = tensors[self.weight_index]
        if type(weight) is np.ndarray and (out is None or out is weight):
            function = self._fast_functions.get(weight.dtype)
            if function is not None and _backend() != "numpy":
                dtype, shape = weight.dtype, weight.shape
                for t in tensors:
                    if type(t) is not np.ndarray or t.dtype is not dtype or t.shape != shape:
                        break
                    flags = t.flags
                    if not (flags.owndata and flags.c_contiguous and flags.writeable):
                        break
                else:
                    for value, allowed in zip(params, self._fast_types):
                        if type(value) not in allowed:
                            break
                    else:
                        if self._distinct(tensors):
                            kernel_params = params[:self._kernel_prefix] if self._kernel_prefix is not None \
                                else [params[k] for k in self.kernel_params]
                            if out is not None:  # in place: the weight's own buffer
                                function(weight.size, *map(self._from_buffer, tensors), *kernel_params, _ftz[0])
                                return weight
                            target = weight.copy()
                            function(weight.size, *[self._from_buffer(target if t is weight else t) for t in tensors],
                                     *kernel_params, _ftz[0])
                            return target
        return self._checked_call(tensors, params, out)

    def _checked_call(self, tensors: tuple, params: tuple, out, names: tuple[str, ...] | None = None,
                      out_name: str = "out"):
        call = self.check(tensors, params, out, names, out_name)
        return self.execute(call)

    def check(self, tensors: tuple, params: tuple, out, names: tuple[str, ...] | None = None,
              out_name: str = "out") -> _Call:
        """Every check of a call; raises before anything is written."""
        values = tuple(self._check_param(p, v) for p, v in zip(self.params, params))
        weight, grad, states, scalars = self._check_tensors(tensors, names)
        target = self._check_out(out, weight, grad, states, names, out_name)
        if isinstance(grad, RowSparseArray):
            lazy = self.always_lazy or (self.lazy_index is not None and values[self.lazy_index])
            mode = "lazy" if lazy else "standard"
        else:
            mode = "dense"
        return _Call(weight, grad, states, tuple(scalars) + tuple(values[k] for k in self.kernel_params),
                     target, mode)

    def execute(self, call: _Call):
        """Run a checked call: from here on, arrays are written."""
        weight, target = call.weight, call.target
        xp = array_module(weight)
        if self.skip_if is not None and self._skipped(weight.dtype, call.scalars):
            return weight.copy(order="C") if target is None else target
        if target is None:
            target = xp.empty_like(weight, order="C") if self.output else weight.copy(order="C")
        elif target is not weight and not self.output:
            xp.copyto(target, weight)
        # An output op reads the weight while it writes `out`: never through the same buffer.
        result = xp.empty_like(weight, order="C") if self.output and target is weight else target
        work = [_contiguous(xp, result)] + [_contiguous(xp, s) for s in call.states]
        source = _contiguous(xp, weight) if self.output else work[0]
        if xp is np:
            self._run(call.mode, weight.dtype, work[0], source, call.grad, work[1:], call.scalars)
        else:
            self._run_cuda(call.mode, weight.dtype, work[0], source, call.grad, work[1:], call.scalars)
        for original, used in zip([result, *call.states], work):
            if used is not original:
                original[...] = used
        if result is not target:
            target[...] = result
        return target

    def _skipped(self, dtype: np.dtype, scalars: tuple) -> bool:
        acc = self.math_dtype(dtype)
        with np.errstate(all="ignore"):
            return bool(self.skip_if(acc, *self._typed(scalars, acc)))

    def _typed(self, scalars: tuple, acc) -> tuple:
        """Kernel scalars in the math's type: scalar inputs and float parameters as acc."""
        return tuple(acc(v) if kind == "float" else v for kind, v in zip(self.scalar_kinds, scalars))

    # -- checks -----------------------------------------------------------------
    def _fail(self, exc: type[Exception], name: str, message: str) -> Exception:
        return exc(f"{self.name}(): argument '{name}' {message}")

    def _check_param(self, p: ParamArg, value):
        if p.type == "float":
            if not isinstance(value, _REAL) or isinstance(value, (bool, np.bool_)):
                raise self._fail(TypeError, p.name, f"must be a real number, got {type(value).__name__}")
            try:
                value = float(value)
            except OverflowError:
                raise self._fail(ValueError, p.name, "is too large for a float") from None
        elif p.type == "int":
            if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)):
                raise self._fail(TypeError, p.name, f"must be an integer, got {type(value).__name__}")
            value = int(value)
            if not -(2 ** 63) <= value < 2 ** 63:
                raise self._fail(ValueError, p.name, f"is {value}, outside the 64-bit integer range")
        elif isinstance(value, (bool, np.bool_)) or (isinstance(value, (int, np.integer)) and value in (0, 1)):
            value = bool(value)
        else:
            raise self._fail(TypeError, p.name, f"must be a bool, got {value!r}")
        if p.bounds is not None and not (p.bounds[0] <= value <= p.bounds[1]):
            low, high = (f"{b:g}" for b in p.bounds)
            raise self._fail(ValueError, p.name, f"is {value}, outside its range [{low}, {high}]")
        return value

    def _check_tensors(self, tensors: tuple, names: tuple[str, ...] | None = None):
        """``names``: how errors call each tensor (default: the spec's names)."""
        names = names or self.names
        weight = tensors[self.weight_index]
        w_name = names[self.weight_index]
        self._check_array(w_name, weight)
        xp = array_module(weight)
        states, state_names, scalars = [], [], []
        for spec, name, value in zip(self.tensors, names, tensors):
            if spec.role == "weight":
                continue
            if spec.role == "scalar":
                scalars.append(self._check_scalar(name, value, weight, w_name))
                continue
            if spec.role == "grad" and isinstance(value, RowSparseArray):
                self._check_row_sparse(name, value, weight, w_name)
                continue
            if spec.role == "grad" and "dense" not in self.kernels:
                raise self._fail(TypeError, name, "must be a RowSparseArray: this op has no dense update")
            self._check_array(name, value, row_sparse_ok=spec.role == "grad")
            self._check_same_side(name, value, weight, w_name)
            self._check_dtype(spec, name, value, weight, w_name)
            if spec.per_row:
                rows = weight.shape[0] if weight.ndim else 1
                if value.shape not in ((rows,), (rows, 1)):
                    raise self._fail(ValueError, name, f"has shape {value.shape}; it holds one value per row of "
                                                       f"'{w_name}': shape ({rows},) or ({rows}, 1)")
            elif value.shape != weight.shape:
                raise self._fail(ValueError, name, f"has shape {value.shape} but '{w_name}' has "
                                                   f"shape {weight.shape}; shapes must match")
            if spec.role == "state":
                if xp is np and not value.flags.writeable:
                    raise self._fail(ValueError, name, "is read-only; states are updated in place")
                states.append(value)
                state_names.append(name)
        grad = tensors[self.grad_index]
        g_name = names[self.grad_index]
        grad_memory = grad.data if isinstance(grad, RowSparseArray) else grad
        for k, (name, s) in enumerate(zip(state_names, states)):
            for other_name, other in [(g_name, grad_memory), (w_name, weight)] + list(zip(state_names[:k], states[:k])):
                if xp.may_share_memory(s, other):
                    raise self._fail(ValueError, name, f"shares memory with '{other_name}'")
        return weight, grad, states, scalars

    def _check_dtype(self, spec: TensorArg, name: str, value, weight, w_name: str) -> None:
        fixed = self.fixed_dtypes.get(spec.name)
        if fixed is not None:
            if value.dtype != fixed:
                raise self._fail(TypeError, name, f"has dtype {value.dtype}; it must be {fixed}")
        elif value.dtype != weight.dtype:
            raise self._fail(TypeError, name, f"has dtype {value.dtype} but '{w_name}' has "
                                              f"{weight.dtype}; all tensors must share one dtype")

    def _check_scalar(self, name: str, value, weight, w_name: str) -> float:
        """A one-element input: a real number, or an array holding exactly one float."""
        if isinstance(value, _REAL) and not isinstance(value, (bool, np.bool_)):
            return float(value)
        if not hasattr(value, "dtype") or not hasattr(value, "size"):
            raise self._fail(TypeError, name, f"must be a number or a one-element array, got {type(value).__name__}")
        self._check_same_side(name, value, weight, w_name)
        if value.dtype not in FLOAT_DTYPES:
            raise self._fail(TypeError, name, f"has dtype {value.dtype}; expected float16, float32 or float64")
        if value.size != 1:
            raise self._fail(ValueError, name, f"must hold exactly one element, got shape {value.shape}")
        return float(value.reshape(-1)[0])  # a device array is read back here, once per call

    def _check_same_side(self, name: str, value, weight, w_name: str) -> None:
        """Host and device arrays never mix in a call; device arrays share one device."""
        if cuda.is_device_array(value) != cuda.is_device_array(weight):
            raise self._fail(TypeError, name, f"is a {_kind(value)} array but '{w_name}' is a {_kind(weight)} "
                                              "array: host (NumPy) and device (CuPy) arrays cannot be mixed")
        if array_module(weight) is not np and value.device.id != weight.device.id:
            raise self._fail(ValueError, name, f"is on device {value.device.id} but '{w_name}' is on "
                                               f"device {weight.device.id}")

    def _check_array(self, name: str, value, row_sparse_ok: bool = False) -> None:
        if not (isinstance(value, np.ndarray) or (cuda.is_device_array(value) and hasattr(value, "dtype"))):
            kinds = "a numpy.ndarray, cupy.ndarray or RowSparseArray" if row_sparse_ok \
                else "a numpy.ndarray or cupy.ndarray"
            raise self._fail(TypeError, name, f"must be {kinds}, got {type(value).__name__}")
        if value.dtype not in FLOAT_DTYPES:
            raise self._fail(TypeError, name, f"has dtype {value.dtype}; expected float16, float32 or float64")

    def _check_row_sparse(self, name: str, grad: RowSparseArray, weight, w_name: str) -> None:
        if "lazy" not in self.kernels and "standard" not in self.kernels:
            raise self._fail(TypeError, name, "must be dense: this op has no row-sparse update")
        self._check_same_side(name, grad.data, weight, w_name)
        spec = self.tensors[self.grad_index]
        self._check_dtype(spec, name, grad.data, weight, w_name)
        if grad.shape != weight.shape:
            raise self._fail(ValueError, name, f"has shape {grad.shape} but '{w_name}' has shape {weight.shape}; "
                                               "shapes must match")
        expected = (len(grad.indices),) + tuple(grad.shape[1:])
        if grad.data.shape != expected:  # the data array was reshaped since the RowSparseArray was made
            raise self._fail(ValueError, name, f"data has shape {grad.data.shape}; expected {expected}")

    def _check_out(self, out, weight, grad, states: list, names: tuple[str, ...] | None = None,
                   out_name: str = "out"):
        names = names or self.names
        w_name = names[self.weight_index]
        if out is None:
            return None
        is_array = isinstance(out, np.ndarray) or (cuda.is_device_array(out) and hasattr(out, "dtype"))
        if not is_array or cuda.is_device_array(out) != cuda.is_device_array(weight):
            raise self._fail(TypeError, out_name, f"must be None or a {_kind(weight)} array like '{w_name}', "
                                                  f"got {type(out).__name__}")
        xp = array_module(weight)
        if out.dtype != weight.dtype:
            raise self._fail(TypeError, out_name, f"has dtype {out.dtype} but '{w_name}' has {weight.dtype}")
        if out.shape != weight.shape:
            raise self._fail(ValueError, out_name, f"has shape {out.shape} but '{w_name}' has shape {weight.shape}")
        if xp is not np and out.device.id != weight.device.id:
            raise self._fail(ValueError, out_name, f"is on device {out.device.id} but '{w_name}' is on "
                                                   f"device {weight.device.id}")
        if xp is np and not out.flags.writeable:
            name = w_name if _same_view(out, weight) else out_name
            raise self._fail(ValueError, name, "is read-only; the result is written into out")
        grad_memory = grad.data if isinstance(grad, RowSparseArray) else grad
        g_name = names[self.grad_index]
        state_names = [n for t, n in zip(self.tensors, names) if t.role == "state"]
        for other_name, other in [(g_name, grad_memory)] + list(zip(state_names, states)):
            if xp.may_share_memory(out, other):
                raise self._fail(ValueError, out_name, f"shares memory with '{other_name}'")
        if _same_view(out, weight):
            return weight
        if xp.may_share_memory(out, weight):
            raise self._fail(ValueError, out_name, f"overlaps '{w_name}' without being the same array")
        return out

    # -- execution --------------------------------------------------------------
    def _run(self, mode: str, dtype: np.dtype, target, source, grad, states, scalars) -> None:
        backend = backends.current_backend()
        if backend != "numpy":
            module = self._c(strict=backend == "c")
            if module is not None:
                self._run_c(module, mode, dtype, target, source, grad, states, scalars)
                return
        self._run_numpy(mode, dtype, target, source, grad, states, scalars)

    def c_module(self):
        """The compiled C module for the current backend, or None (NumPy backend)."""
        backend = backends.current_backend()
        return None if backend == "numpy" else self._c(strict=backend == "c")

    def _c(self, strict: bool):
        if self._c_module is None:
            try:
                self._c_module = cbuild.load(self.name, self.c_source, self.c_cdef)
            except (cbuild.CompilerUnavailable, cbuild.CompileError) as exc:
                if strict:
                    raise
                warnings.warn(f"{self.name}: C backend unavailable, using the NumPy backend ({exc})",
                              RuntimeWarning, stacklevel=4)
                self._c_module = False
        return self._c_module or None

    def _arrays(self, target, source, grad_array, states) -> list:
        """The kernels' array arguments: the element-wise tensors in order, then ``out``."""
        state_iter = iter(states)
        arrays = []
        for t in self.tensors:
            if t.role == "weight":
                arrays.append(source)
            elif t.role == "grad":
                arrays.append(grad_array)
            elif t.role == "state":
                arrays.append(next(state_iter))
        return arrays + ([target] if self.output else [])

    def _run_c(self, module, mode, dtype, target, source, grad, states, scalars) -> None:
        key = (mode, dtype.name)
        function = self._c_functions.get(key)
        if function is None:
            function = getattr(module.lib, f"opgen_{self.name}_{mode}_{dtype.name}")
            self._c_functions[key] = function
            if mode == "dense" and self._fast_ok:
                self._from_buffer = module.ffi.from_buffer
                self._fast_functions[dtype] = function
        ffi = module.ffi
        grad_array = np.ascontiguousarray(grad.data if isinstance(grad, RowSparseArray) else grad)
        pointers = [ffi.from_buffer(a) for a in self._arrays(target, source, grad_array, states)]
        ftz = _ftz[0]
        if mode == "dense":
            function(target.size, *pointers, *scalars, ftz)
            return
        rows = target.shape[0]
        row_len = target.size // rows if rows else 0
        indices = ffi.from_buffer("int64_t[]", grad.indices)
        if mode == "lazy":
            function(len(grad.indices), row_len, indices, *pointers, *scalars, ftz)
        else:
            function(rows, row_len, len(grad.indices), indices, *pointers, *scalars, ftz)

    def _run_cuda(self, mode, dtype, target, source, grad, states, scalars) -> None:
        import cupy

        grad_array = cupy.ascontiguousarray(grad.data if isinstance(grad, RowSparseArray) else grad)
        arrays = self._arrays(target, source, grad_array, states)
        acc = self.math_dtype(dtype)  # float math takes float arguments: no double in it
        types = {"float": acc, "int": np.int64, "bool": np.int32}
        typed = [types[kind](v) for kind, v in zip(self.scalar_kinds, scalars)]
        rows = target.shape[0] if target.ndim else 1
        row_len = target.size // rows if rows else 0
        indices = grad.indices if isinstance(grad, RowSparseArray) else None
        with target.device:  # the arrays' device, which may not be the current one
            cuda.launch(self.cuda, f"opgen_{self.name}_{mode}_{dtype.name}", mode, arrays, typed, target.size,
                        rows, row_len, indices, 0 if indices is None else len(indices))

    def _run_numpy(self, mode, dtype, target, source, grad, states, scalars) -> None:
        acc = self.math_dtype(dtype)
        typed = self._typed(scalars, acc)
        scalar_inputs, params = typed[:self.scalar_inputs], typed[self.scalar_inputs:]
        writable = [target, *states]  # the kernel returns new values in this order
        if mode == "lazy":
            rows = grad.indices
            row_len = grad.row_length
            widths = [row_len] + [1 if t.per_row else row_len for t in self.tensors if t.role == "state"]
            views = [w.reshape(w.shape[0] if w.ndim else 1, width) for w, width in zip(writable, widths)]
            weight_rows = source.reshape(source.shape[0], row_len)[rows]
            inputs = self._inputs(weight_rows, [v[rows] for v in views[1:]],
                                  grad.data.reshape(len(rows), row_len), scalar_inputs, acc)
            with np.errstate(all="ignore"):
                results = self.numpy_kernel(acc, *inputs, *params)
            for view, result in zip(views, results):
                view[rows] = result
            return
        dense_grad = grad.todense() if isinstance(grad, RowSparseArray) else grad
        inputs = self._inputs(source, states, dense_grad, scalar_inputs, acc)
        with np.errstate(all="ignore"):
            results = self.numpy_kernel(acc, *inputs, *params)
        for array, result in zip(writable, results):
            np.copyto(array, result, casting="unsafe")

    def _inputs(self, weight, states, grad, scalar_inputs, acc) -> list:
        """The NumPy kernel's tensor arguments in declaration order, in the math dtype."""
        state_iter, scalar_iter = iter(states), iter(scalar_inputs)
        ordered = []
        for t in self.tensors:
            if t.role == "scalar":
                ordered.append(next(scalar_iter))
            else:
                array = weight if t.role == "weight" else grad if t.role == "grad" else next(state_iter)
                ordered.append(array.astype(acc, copy=False))
        return ordered


# Whether the call's arrays are distinct objects: spelled out for the usual counts, as the
# fast path runs per call (a set of ids costs 3-4 times as much).
def _distinct_any(t) -> bool:
    return len(set(map(id, t))) == len(t)


_DISTINCT = {
    2: lambda t: t[0] is not t[1],
    3: lambda t: t[0] is not t[1] and t[0] is not t[2] and t[1] is not t[2],
    4: lambda t: (t[0] is not t[1] and t[0] is not t[2] and t[0] is not t[3] and t[1] is not t[2]
                  and t[1] is not t[3] and t[2] is not t[3]),
}


def _contiguous(xp, array):
    return array if array.flags.c_contiguous else xp.ascontiguousarray(array)


def _kind(value) -> str:
    return "CuPy (device)" if cuda.is_device_array(value) else "NumPy (host)" \
        if isinstance(value, np.ndarray) else type(value).__name__


def _pointer(array) -> int:
    return array.__array_interface__["data"][0] if isinstance(array, np.ndarray) else array.data.ptr


def _same_view(a, b) -> bool:
    if a is b:
        return True
    return _pointer(a) == _pointer(b) and a.shape == b.shape and a.strides == b.strides
