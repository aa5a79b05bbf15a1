"""PyTorch tensors as arrays the runtime works on: zero-copy views, no host synchronisation.

CPU tensors become NumPy views of their memory (bfloat16 through ml_dtypes, as NumPy has
none), which the C kernels update in place; CUDA tensors become CuPy arrays over the same
device memory through DLPack, and the kernels launch on torch's current stream of that
device. ``nn.Parameter`` and tensors that require grad are seen through ``detach()``, which
shares their memory, so an update writes the parameter without autograd errors. A coalesced
or uncoalesced sparse COO gradient with one sparse dimension (``nn.Embedding(sparse=True)``)
becomes a RowSparseArray of its coalesced rows.

torch is never imported here until a tensor arrives: ``import generated`` works without it.
"""

from __future__ import annotations

import contextlib
import sys

import ml_dtypes
import numpy as np

from opgen.runtime.arrays import ArrayAdapter, Refused


def _torch():
    import torch

    return torch


class TorchTensors(ArrayAdapter):
    name = "torch (CPU or CUDA)"
    type_names = "torch.Tensor"
    native = False

    def owns(self, value) -> bool:
        if "torch" not in sys.modules or not type(value).__module__.startswith("torch"):
            return False
        return isinstance(value, sys.modules["torch"].Tensor)

    def view(self, value):
        torch = _torch()
        if value.layout is torch.sparse_coo:
            return self._row_sparse(value)
        if value.layout is not torch.strided:
            raise Refused(TypeError, f"is a torch tensor with layout {value.layout}: only strided (dense) tensors "
                                     "and sparse COO gradients are taken")
        if _is_distributed(value):
            value = value.to_local()  # a DTensor: the update runs on this rank's shard
        tensor = value.detach()
        if tensor.is_neg() or tensor.is_conj():
            raise Refused(TypeError, "is a torch tensor with a lazy negation or conjugation bit; pass "
                                     "tensor.resolve_neg() (its memory does not hold the values)")
        if tensor.device.type == "cuda":
            if tensor.dtype is torch.bfloat16:
                raise Refused(TypeError, "is a CUDA bfloat16 tensor: CuPy, which launches the CUDA kernels, has no "
                                         "bfloat16 arrays yet; use float16 or float32 on the GPU")
            try:
                import cupy
            except ImportError:
                raise Refused(TypeError, "is a CUDA tensor, and the CUDA kernels need CuPy: pip install -e "
                                         "'.[cuda]'") from None
            return cupy.from_dlpack(tensor)
        if tensor.device.type != "cpu":
            raise Refused(TypeError, f"is a torch tensor on device '{tensor.device}': opgen runs on CPU and CUDA "
                                     "tensors")
        if tensor.dtype is torch.bfloat16:
            return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        try:
            return tensor.numpy()
        except (TypeError, RuntimeError) as exc:  # a dtype NumPy has no name for (complex32, float8...)
            raise Refused(TypeError, f"has torch dtype {tensor.dtype}, which opgen does not take ({exc})") from None

    def _row_sparse(self, value):
        from opgen.runtime.rowsparse import RowSparseArray

        if value.sparse_dim() != 1:
            raise Refused(TypeError, f"is a sparse COO tensor with {value.sparse_dim()} sparse dimensions; a "
                                     "row-sparse gradient has one (whole rows, as nn.Embedding(sparse=True) makes)")
        value = value.detach()
        if not value.is_coalesced():
            value = value.coalesce()  # sorted, unique rows (duplicates summed): a new tensor, the gradient is read
        data, indices = self.view(value.values()), self.view(value.indices()[0])
        return RowSparseArray(data, indices, tuple(value.shape))

    def wrap(self, array, like):
        torch = _torch()
        if isinstance(array, np.ndarray):
            if array.dtype == ml_dtypes.bfloat16:
                return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
            return torch.from_numpy(array)
        return torch.from_dlpack(array)

    def launch_context(self, value):
        """CUDA tensors: launches go on torch's current stream of their device, so they
        order with torch's own work without a synchronisation."""
        torch = _torch()
        if not isinstance(value, torch.Tensor) or value.device.type != "cuda":
            return contextlib.nullcontext()
        import cupy

        stream = torch.cuda.current_stream(value.device)
        return cupy.cuda.ExternalStream(stream.cuda_stream, value.device.index)

    def written(self, values) -> None:
        """Tensors whose memory the kernels wrote: their autograd version counters move on, as
        after torch's own in-place ops (a graph that saved one of them then refuses backward)."""
        tensors = [v for v in values if isinstance(v, _torch().Tensor) and v.layout is _torch().strided]
        if tensors:
            bump_versions(tensors)

    def host_pointers(self, values: list, like: list) -> list[int] | None:
        """Plain CPU tensors (exactly ``torch.Tensor``: no DTensor or other subclass), strided,
        C-contiguous, without a negation bit, of their ``like``'s dtype and shape: their data
        pointers, read without a NumPy view (a training step's new gradients, every step)."""
        torch = _torch()
        tensor, strided, dtypes = torch.Tensor, torch.strided, _torch_dtypes()
        pointers = []
        for value, array in zip(values, like):
            if type(value) is not tensor or value.dtype is not dtypes.get(array.dtype) or not value.is_cpu \
                    or value.layout is not strided or value.shape != array.shape or not value.is_contiguous() \
                    or value.is_neg():
                return None
            pointers.append(value.data_ptr())
        return pointers

    def number(self, value):
        """A one-element tensor as a parameter's value (``lr=torch.tensor(0.01)``); a CUDA one
        is read back to the host, once per call."""
        if value.numel() != 1 or value.layout is not _torch().strided or value.device.type not in ("cpu", "cuda"):
            return None
        return value.detach().item()


_DTYPES: dict = {}


def _torch_dtypes() -> dict:
    """NumPy dtype -> the torch dtype of the same values (bfloat16 through ml_dtypes)."""
    if not _DTYPES:
        torch = _torch()
        _DTYPES.update({np.dtype(np.float16): torch.float16, np.dtype(ml_dtypes.bfloat16): torch.bfloat16,
                        np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64})
    return _DTYPES


def sharded(value) -> str | None:
    """A DTensor split across ranks: its placements (``(Shard(dim=0),)``), else None. Cheap
    where torch.distributed.tensor was never imported (no DTensor can exist)."""
    if not _is_distributed(value):
        return None
    placements = tuple(value.placements)
    if all(p.is_replicate() for p in placements):
        return None
    return ", ".join(map(repr, placements))


def shard_refusal(op_name: str, placement: str) -> str:
    """Why an op with whole-tensor reductions refuses a shard (every entry point says so)."""
    return (f"is a DTensor sharded across ranks ({placement}), but {op_name}'s whole-tensor reductions need the "
            "whole tensor (they would see this rank's shard only); use replicated parameters (DDP, or "
            "ZeroRedundancyOptimizer, which keeps each parameter whole on one rank)")


def _is_distributed(value) -> bool:
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(value, getattr(module, "DTensor", ()))


def bump_versions(tensors: list) -> None:
    """torch.autograd.graph.increment_version over a list (one call), or one by one."""
    torch = _torch()
    try:
        torch.autograd.graph.increment_version(tensors)
    except TypeError:  # a torch whose increment_version takes one tensor
        for t in tensors:
            torch.autograd.graph.increment_version(t)
