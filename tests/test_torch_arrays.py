"""torch tensors in every generated function (issue 11): CPU tensors updated in place,
zero-copy, in every dtype and state-precision combination, against the independent reference
(tests/reference.py); nn.Parameters and tensors that require grad; one-element tensors as
parameters; sparse COO gradients; objects exposing only __array_interface__ or __dlpack__;
and bad tensors refused naming the argument with nothing written."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import cases
import generated
from generated import RowSparseArray

torch = pytest.importorskip("torch")

BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPE_COMBOS = [(np.dtype(d), np.dtype(d)) for d in cases.DTYPES] + \
    [(np.dtype(w), np.dtype(s)) for w, s in cases.STATE_DTYPE_COMBOS]
COMBO_IDS = cases.DTYPE_IDS + cases.STATE_DTYPE_COMBO_IDS


def to_torch(value):
    """A torch tensor over a copy of ``value`` (a RowSparseArray: a sparse COO tensor)."""
    if isinstance(value, RowSparseArray):
        data = to_torch(np.asarray(value.data))
        return torch.sparse_coo_tensor(torch.from_numpy(np.asarray(value.indices).copy())[None], data,
                                       value.shape, check_invariants=True).coalesce()
    if not isinstance(value, np.ndarray):
        return value
    copy = value.copy()
    if copy.dtype == BF16:
        return torch.from_numpy(copy.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(copy)


def to_numpy(tensor) -> np.ndarray:
    if tensor.dtype is torch.bfloat16:
        return tensor.detach().view(torch.int16).numpy().view(BF16)
    return tensor.detach().numpy()


def _torch_case(op, w, s, shape=(7, 33)):
    state = s if cases.op(op).free_states else None
    pset = next(iter(cases.PARAMS[op]))
    params = cases.step_params(op, cases.PARAMS[op][pset], 1)
    return cases.make_case(op, cases.seed(op, "torch", w.name, s.name), shape, w, params, state_dtype=state)


#: every op in every dtype, and in each state-precision combination where it has free states
OP_COMBOS = [pytest.param(op, combo, id=f"{op}-{label}") for op in cases.OPS
             for combo, label in zip(DTYPE_COMBOS, COMBO_IDS)
             if combo[0] == combo[1] or op in cases.MIXED_STATE_OPS]


@pytest.mark.parametrize("op, combo", OP_COMBOS)
def test_every_op_updates_torch_tensors_in_place(op, combo):
    """The weight (an nn.Parameter that requires grad) and the states are torch tensors, the
    result is written through their memory, and equals the reference."""
    w, s = combo
    case = _torch_case(op, w, s)
    expected = case.expected()
    tensors = {k: to_torch(v) for k, v in case.arrays.items()}
    weight = tensors[case.op.weight]
    if not case.op.output:
        tensors[case.op.weight] = weight = torch.nn.Parameter(weight, requires_grad=True)
    memory = {k: t.data_ptr() for k, t in tensors.items() if isinstance(t, torch.Tensor) and not t.is_sparse}
    inputs = [case.params[n] if n in case.params else tensors[n] for n in case.op.tensor_names]
    out = None if case.op.output else weight
    result = cases.call(op, inputs, case.kwargs(), out=out)
    assert isinstance(result, torch.Tensor)
    if out is not None:
        assert result is weight
    case.check(to_numpy(result), expected[0], "weight")
    for name, e in zip(case.op.states, expected[1:]):
        case.check(to_numpy(tensors[name]), e, name)
        assert tensors[name].data_ptr() == memory[name]  # updated in place, no copy
    assert weight.requires_grad or case.op.output


@pytest.mark.parametrize("op", cases.SINGLE)
def test_one_element_tensors_as_parameters(op):
    """lr=torch.tensor(0.01) (and every other float parameter as a 0-d tensor) means the number."""
    case = _torch_case(op, np.dtype(np.float32), np.dtype(np.float32))
    expected = case.expected()
    floats = {k: v for k, v in case.kwargs().items()
              if case.op.param[k].type == "float" and isinstance(v, float)}
    if not floats:
        pytest.skip("no float parameter")
    kwargs = {**case.kwargs(), **{k: torch.tensor(v, dtype=torch.float64) for k, v in floats.items()}}
    result = cases.call(op, case.inputs(), kwargs)
    case.check(result, expected[0], "weight")


def test_a_bool_tensor_is_not_a_float_parameter():
    w, g = torch.ones(4), torch.ones(4)
    with pytest.raises(TypeError, match="argument 'lr' must be a real number"):
        cases.op("sgd_update").fn(w, g, lr=torch.tensor(True))
    with pytest.raises(TypeError, match="argument 'lr'"):
        cases.op("sgd_update").fn(w, g, lr=torch.ones(2))


@pytest.mark.parametrize("op", cases.ROW_SPARSE)
def test_sparse_coo_gradients_are_row_sparse(op):
    """A torch sparse COO gradient (nn.Embedding(sparse=True)'s kind) gets the row-sparse
    update, as the same rows in a RowSparseArray would; uncoalesced ones are coalesced."""
    shape = (9, 5)
    rows = np.array([1, 4, 7])
    case = cases.make_case(op, cases.seed(op, "coo"), shape, np.float32,
                           cases.step_params(op, next(iter(cases.PARAMS[op].values())), 1), grad_rows=rows)
    if not isinstance(case.grad, RowSparseArray):
        case.grad = cases.rsp(case.grad[rows].copy(), rows, shape)
    for mode, extra in case.op.sparse_modes.items():
        expected = case.expected(extra)
        tensors = {k: to_torch(v) for k, v in case.arrays.items()}
        # the same rows, uncoalesced: row 4 split in two halves that sum to it
        grad = tensors[case.op.grad]
        values = grad.values()
        split = torch.cat([values, values[1:2] * 0.5]), torch.tensor([[1, 4, 7, 4]])
        values = split[0].clone()
        values[1] *= 0.5
        tensors[case.op.grad] = torch.sparse_coo_tensor(split[1], values, shape, check_invariants=True)
        inputs = [case.params[n] if n in case.params else tensors[n] for n in case.op.tensor_names]
        result = case.op.fn(*inputs, **case.kwargs(), **extra, out=tensors[case.op.weight])
        case.check(to_numpy(result), expected[0], f"{mode} weight")
        for name, e in zip(case.op.states, expected[1:]):
            case.check(to_numpy(tensors[name]), e, f"{mode} {name}")


def test_embedding_sparse_gradient_end_to_end():
    """nn.Embedding(sparse=True): only the looked-up rows change under the lazy update."""
    emb = torch.nn.Embedding(10, 3, sparse=True)
    before = emb.weight.detach().clone()
    emb(torch.tensor([2, 5, 5])).sum().backward()
    mean, var = torch.zeros(10, 3), torch.zeros(10, 3)
    cases.op("adam_update").fn(emb.weight, emb.weight.grad, mean, var, lr=0.1, out=emb.weight)
    changed = (emb.weight.detach() != before).any(dim=1)
    assert changed.tolist() == [i in (2, 5) for i in range(10)]
    # by hand: grad rows are 1 (row 2) and 2 (row 5); first Adam step moves by lr*m/(sqrt(v)+eps)
    m2, m5 = 0.1 * 1.0, 0.1 * 2.0
    assert torch.allclose(mean[2], torch.full((3,), m2)) and torch.allclose(mean[5], torch.full((3,), m5))
    step = 0.1 * m2 / (np.sqrt(0.001) + 1e-8)
    assert torch.allclose(emb.weight.detach()[2], before[2] - step, atol=1e-6)


def test_strided_tensors_are_views_not_copies():
    """A transposed weight and states: updated through their strides, in place."""
    w = torch.randn(6, 4).t()
    g, m = torch.randn(6, 4).t(), torch.zeros(6, 4).t()
    w0 = w.clone()
    # by hand: mom = momentum * 0 - lr * grad; weight = weight + mom
    cases.op("sgd_mom_update").fn(w, g, m, lr=0.5, momentum=0.9, out=w)
    assert torch.allclose(m, -0.5 * g) and torch.allclose(w, w0 - 0.5 * g)


def test_a_new_result_is_a_torch_tensor_and_the_weight_is_kept():
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        w = torch.ones(5, dtype=dtype)
        result = cases.op("sgd_update").fn(w, torch.ones(5, dtype=dtype), lr=0.25)
        assert isinstance(result, torch.Tensor) and result.dtype is dtype
        assert result.tolist() == [0.75] * 5 and w.tolist() == [1.0] * 5


def test_multi_tensor_functions_take_torch_lists():
    ws = [torch.ones(3), torch.ones(5)]
    gs = [torch.full((3,), 2.0), torch.full((5,), 4.0)]
    moms = [torch.zeros(3), torch.zeros(5)]
    import generated

    result = generated.sgd_mom_update_multi(ws, gs, moms, lr=[0.5, 0.25], momentum=0.0, out=ws)
    assert result[0] is ws[0] and result[1] is ws[1]
    assert ws[0].tolist() == [0.0] * 3 and ws[1].tolist() == [0.0] * 5
    assert moms[1].tolist() == [-1.0] * 5


class _InterfaceOnly:
    """An object exposing its memory through __array_interface__ alone."""

    def __init__(self, array: np.ndarray) -> None:
        self._array = array
        self.__array_interface__ = array.__array_interface__


class _DLPackOnly:
    def __init__(self, array: np.ndarray) -> None:
        self._array = array

    def __dlpack__(self, **kwargs):
        return self._array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._array.__dlpack_device__()


@pytest.mark.parametrize("wrapper", [_InterfaceOnly, _DLPackOnly, torch.from_numpy])
def test_protocol_objects_are_updated_in_place(wrapper):
    weight, mom = np.ones(4, np.float32), np.zeros(4, np.float32)
    grad = np.full(4, 2.0, np.float32)
    import generated

    generated.sgd_mom_update(wrapper(weight), wrapper(grad), wrapper(mom), lr=0.5, momentum=0.0,
                             out=wrapper(weight))
    assert weight.tolist() == [0.0] * 4 and mom.tolist() == [-1.0] * 4


def _adam_args():
    return torch.ones(4), torch.ones(4), torch.zeros(4), torch.zeros(4)


@pytest.mark.parametrize("bad, where, exc, message", [
    (lambda a: torch.ones(4, dtype=torch.int32), 1, TypeError, "argument 'grad' has dtype int32"),
    (lambda a: torch.ones(4).neg().conj_physical()._neg_view(), 2, TypeError, "argument 'mean' is a torch tensor "
                                                                              "with a lazy negation"),
    (lambda a: torch.ones(2, 2).to_sparse(), 3, TypeError, "argument 'var' is a sparse COO tensor"),
    (lambda a: torch.ones(2, 2).to_sparse_csr(), 3, TypeError,
     "argument 'var' is a torch tensor with layout torch.sparse_csr"),
    (lambda a: torch.sparse_coo_tensor(torch.tensor([[0], [1]]), torch.ones(1), (4, 4), check_invariants=True), 1,
     TypeError,
     "argument 'grad' is a sparse COO tensor with 2 sparse dimensions"),
    (lambda a: torch.ones(5), 3, ValueError, "argument 'var' has shape"),
    (lambda a: torch.ones(4, dtype=torch.complex64), 0, TypeError, "argument 'weight' has dtype complex64"),
    (lambda a: a[0], 2, ValueError, "argument 'mean' shares memory with 'weight'"),
])
def test_bad_tensors_are_refused_naming_the_argument(bad, where, exc, message):
    args = list(_adam_args())
    bad_value = bad(args)
    args[where] = bad_value
    before = [a.clone() if a.layout is torch.strided else a for a in args]
    with pytest.raises(exc, match=message):
        cases.op("adam_update").fn(*args, lr=0.1, out=args[0])
    for a, b in zip(args, before):
        if a.layout is torch.strided:
            assert torch.equal(a, b)


def test_torch_is_not_imported_by_the_package():
    import subprocess
    import sys

    code = "import generated, sys; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


needs_torch_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU for torch")


@needs_torch_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_cuda_tensors_run_the_cuda_kernels_in_place_on_torchs_stream(dtype):
    """CUDA tensors: updated in place through DLPack on torch's current stream (a side
    stream here), equal to the same call on CPU tensors."""
    pytest.importorskip("cupy")
    g = torch.Generator().manual_seed(0)
    weight, grad = (torch.randn(1000, generator=g).to(dtype) for _ in range(2))
    mean, var = torch.zeros(1000, dtype=dtype), torch.zeros(1000, dtype=dtype)
    cpu = [t.clone() for t in (weight, grad, mean, var)]
    cases.op("adam_update").fn(*cpu, lr=0.01, out=cpu[0])
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        dev = [t.cuda() for t in (weight, grad, mean, var)]
        pointer = dev[0].data_ptr()
        result = cases.op("adam_update").fn(*dev, lr=0.01, out=dev[0])
    stream.synchronize()
    assert result is dev[0] and dev[0].data_ptr() == pointer
    tolerance = dict(rtol=1e-3, atol=1e-3) if dtype is torch.float16 else dict(rtol=1e-6, atol=1e-7)
    for d, c in zip(dev, cpu):
        torch.testing.assert_close(d.cpu(), c, **tolerance)


@needs_torch_cuda
def test_generated_optim_adam_on_cuda_follows_torch():
    pytest.importorskip("cupy")
    import generated.optim as optim

    torch.manual_seed(0)
    ours_model = torch.nn.Linear(8, 4).cuda()
    theirs_model = torch.nn.Linear(8, 4).cuda()
    theirs_model.load_state_dict(ours_model.state_dict())
    ours = optim.Adam(ours_model.parameters(), lr=0.01)
    theirs = torch.optim.Adam(theirs_model.parameters(), lr=0.01, foreach=False)
    x, y = torch.randn(16, 8, device="cuda"), torch.randn(16, 4, device="cuda")
    for _ in range(20):
        for m, o in ((ours_model, ours), (theirs_model, theirs)):
            o.zero_grad()
            ((m(x) - y) ** 2).mean().backward()
            o.step()
    for p, q in zip(ours_model.parameters(), theirs_model.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4)


def test_a_cuda_bfloat16_tensor_is_refused_with_the_reason(monkeypatch):
    """Without a GPU the refusal is checked on a tensor that says it is on CUDA."""
    from opgen.runtime.arrays import Refused
    from opgen.runtime.torch_arrays import TorchTensors

    class FakeCuda:
        layout = torch.strided
        dtype = torch.bfloat16

        def detach(self):
            return self

        def is_neg(self):
            return False

        def is_conj(self):
            return False

        @property
        def device(self):
            return torch.device("cuda", 0)

    with pytest.raises(Refused, match="CUDA bfloat16 tensor"):
        TorchTensors().view(FakeCuda())


def test_without_torch_the_classes_say_how_to_get_it():
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None\n"
            "import generated\n"
            "try:\n    import generated.optim\nexcept ImportError as exc:\n    print(exc)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "need torch: pip install -e '.[torch]'" in result.stdout


def test_trailing_arrays_may_be_torch_tensors_of_any_float_dtype():
    """MXNet's preloaded lrs and wds as torch tensors (bfloat16, requiring grad): their values."""
    w, g = np.ones(3, np.float32), np.ones(3, np.float32)
    for lrs in (torch.tensor([0.5], dtype=torch.bfloat16), torch.tensor([0.5], requires_grad=True)):
        out = generated.preloaded_multi_sgd_update(w, g, lrs, torch.zeros(1), num_weights=1)
        np.testing.assert_array_equal(out[0], np.full(3, 0.5, np.float32))
