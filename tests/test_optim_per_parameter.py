"""Optimizer classes whose op is chosen per parameter (``ndim`` in an alternative's condition)
and whose hyperparameters may be None (``none_is``), against torch.optim itself:
generated.optim.Adafactor feeds matrices and parameters of more dimensions to the grid op (one
call each: per-row and per-column states of each slice over the last two dimensions) and vectors and 0-d parameters to the unfactored op (one multi-tensor call), and reads
``eps=(None, ...)`` as the machine epsilon of each parameter's dtype, as torch.optim.Adafactor
does."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
optim = pytest.importorskip("generated.optim")
if not hasattr(torch.optim, "Adafactor"):
    pytest.skip("this torch has no torch.optim.Adafactor (torch >= 2.5)", allow_module_level=True)

ATOL, RTOL = 2e-5, 1e-4


class _Mixed(torch.nn.Module):
    """Matrices, vectors and a 0-d scale: every kind of parameter Adafactor keeps apart."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        torch.manual_seed(0)
        self.first = torch.nn.Linear(6, 12, dtype=dtype)
        self.second = torch.nn.Linear(12, 3, dtype=dtype)
        self.scale = torch.nn.Parameter(torch.tensor(1.5, dtype=dtype))

    def forward(self, x):
        return self.second(torch.tanh(self.first(x))) * self.scale


def _data(dtype=torch.float32, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(48, 6, generator=g).to(dtype), torch.randn(48, 3, generator=g).to(dtype)


def _train(model, opt, steps, data, grad_factor: float = 1.0, scheduler=None):
    x, y = data
    for _ in range(steps):
        opt.zero_grad()
        (((model(x) - y) ** 2).mean() * grad_factor).backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()


def _assert_same(a, b, atol=ATOL, rtol=RTOL):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


def _assert_same_states(ours, theirs, model_a, model_b, atol=ATOL, rtol=1e-3):
    for p, q in zip(model_a.parameters(), model_b.parameters()):
        mine, torchs = ours.state[p], theirs.state[q]
        assert set(mine) == set(torchs), (set(mine), set(torchs))
        for key, value in torchs.items():
            if key == "step":
                assert float(mine[key]) == float(value)
                continue
            assert mine[key].shape == value.shape and mine[key].dtype == value.dtype, key
            torch.testing.assert_close(mine[key], value, atol=atol, rtol=rtol)


@pytest.mark.parametrize("kwargs", [{}, dict(lr=0.02, weight_decay=0.1, d=1.2, beta2_decay=-0.6),
                                    dict(eps=(1e-10, 1e-2), maximize=True)], ids=["defaults", "decay", "eps-maximize"])
def test_every_kind_of_parameter_follows_torch_optim_adafactor(kwargs):
    """Matrices (row_var (rows, 1), col_var (1, cols)), vectors and a 0-d parameter (variance):
    torch's state names, shapes and values, 100 steps (fewer when maximizing, which diverges)."""
    ours_model, theirs_model = _Mixed(), _Mixed()
    ours = optim.Adafactor(ours_model.parameters(), **kwargs)
    theirs = torch.optim.Adafactor(theirs_model.parameters(), **kwargs)
    steps = 15 if kwargs.get("maximize") else 100
    _train(ours_model, ours, steps, _data())
    _train(theirs_model, theirs, steps, _data())
    _assert_same(ours_model, theirs_model)
    _assert_same_states(ours, theirs, ours_model, theirs_model)
    assert ours.state[ours_model.first.weight]["row_var"].shape == (12, 1)
    assert ours.state[ours_model.scale]["variance"].shape == ()


def test_a_sliced_parameter_off_the_cpu_is_refused_before_anything_changes():
    """The CUDA kernels take one (rows, cols) slice: a parameter of three dimensions on another
    device (here torch's meta device, which needs no GPU) is refused by name in the checks
    that run before any tensor is written or any state made, not halfway through the step."""
    matrix = torch.nn.Parameter(torch.ones(4, 5))
    cube = torch.nn.Parameter(torch.ones(2, 3, 4, device="meta"))
    opt = optim.Adafactor([matrix, cube])
    matrix.grad, cube.grad = torch.full_like(matrix, 0.5), torch.ones(2, 3, 4, device="meta")
    with pytest.raises(ValueError, match=r"parameter 1 of param group 0 has shape \(2, 3, 4\) on meta; .* CUDA "
                                         r"kernels take matrices"):
        opt.step()
    assert torch.equal(matrix.detach(), torch.ones(4, 5))
    assert not opt.state[matrix] and not opt.state[cube]


class _Convolutional(torch.nn.Module):
    """Parameters of three and four dimensions beside matrices and vectors: a Conv2d's
    (out, in, kh, kw) weight, a stack of per-head projections (heads, in, out), a Linear."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        torch.manual_seed(3)
        self.conv = torch.nn.Conv2d(2, 4, 3, padding=1, dtype=dtype)
        self.heads = torch.nn.Parameter(torch.randn(3, 4, 5, dtype=dtype) * 0.3)
        self.out = torch.nn.Linear(15, 2, dtype=dtype)

    def forward(self, x):  # x: (batch, 2, 6, 6)
        h = torch.tanh(self.conv(x)).mean(dim=(2, 3))  # (batch, 4)
        z = torch.einsum("bi,hio->bho", h, self.heads).reshape(x.shape[0], 15)
        return self.out(torch.tanh(z))


@pytest.mark.parametrize("kwargs", [{}, dict(lr=0.02, weight_decay=0.1, d=1.2, beta2_decay=-0.6)],
                         ids=["defaults", "decay"])
def test_parameters_of_three_and_four_dimensions_follow_torch_optim_adafactor(kwargs):
    """torch factors a parameter's last two dimensions: row_var (..., rows, 1), col_var
    (..., 1, cols), each slice's factors and mean its own, the RMS norms the whole
    parameter's. 100 steps against torch.optim.Adafactor, states included (60 with decay:
    from step 64 on, that run amplifies any rounding, and torch's own run with `heads` moved
    by one ulp is 3e-4 away by step 99)."""
    steps = 60 if kwargs else 100
    ours_model, theirs_model = _Convolutional(), _Convolutional()
    ours = optim.Adafactor(ours_model.parameters(), **kwargs)
    theirs = torch.optim.Adafactor(theirs_model.parameters(), **kwargs)
    g = torch.Generator().manual_seed(4)
    data = torch.randn(16, 2, 6, 6, generator=g), torch.randn(16, 2, generator=g)
    for model, opt in ((ours_model, ours), (theirs_model, theirs)):
        x, y = data
        for _ in range(steps):
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            opt.step()
    _assert_same(ours_model, theirs_model)
    _assert_same_states(ours, theirs, ours_model, theirs_model)
    assert ours.state[ours_model.conv.weight]["row_var"].shape == (4, 2, 3, 1)
    assert ours.state[ours_model.conv.weight]["col_var"].shape == (4, 2, 1, 3)
    assert ours.state[ours_model.heads]["col_var"].shape == (3, 1, 5)


def test_a_none_eps_is_the_machine_epsilon_of_the_parameters_dtype():
    """float64 parameters with gradients near 1e-9: float32's epsilon (1.2e-7) as eps1 would
    floor the variance estimate (eps1**2 = 1.4e-14 against g**2 = 1e-18) and shrink every
    update; torch reads None as float64's epsilon (2.2e-16), and so do we."""
    ours_model, theirs_model = _Mixed(torch.float64), _Mixed(torch.float64)
    ours = optim.Adafactor(ours_model.parameters())
    theirs = torch.optim.Adafactor(theirs_model.parameters())
    fixed_model = _Mixed(torch.float64)
    fixed = optim.Adafactor(fixed_model.parameters(), eps=(torch.finfo(torch.float32).eps, 1e-3))
    data = _data(torch.float64)
    for model, opt in ((ours_model, ours), (theirs_model, theirs), (fixed_model, fixed)):
        _train(model, opt, 20, data, grad_factor=1e-9)
    _assert_same(ours_model, theirs_model, atol=1e-12, rtol=1e-10)
    moved = [float((p - q).abs().max()) for p, q in zip(fixed_model.parameters(), theirs_model.parameters())]
    assert max(moved) > 1e-4, moved  # float32's epsilon would have given another trajectory


def test_param_groups_schedulers_and_skipped_parameters():
    """Two groups with their own lr (a scheduler changing both), and a matrix whose gradient
    is missing on some steps (its plan is dropped and made again): as torch."""
    def groups(model):
        return [{"params": [model.first.weight, model.first.bias], "lr": 0.02},
                {"params": [model.second.weight, model.second.bias, model.scale]}]

    ours_model, theirs_model = _Mixed(), _Mixed()
    ours = optim.Adafactor(groups(ours_model), lr=0.005)
    theirs = torch.optim.Adafactor(groups(theirs_model), lr=0.005)
    x, y = _data()
    for model, opt in ((ours_model, ours), (theirs_model, theirs)):
        scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
        for step in range(30):
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            if step % 3 == 1:
                model.second.weight.grad = None  # skipped this step
            if step % 4 == 2:
                model.first.bias.grad = None
            opt.step()
            scheduler.step()
    _assert_same(ours_model, theirs_model)
    _assert_same_states(ours, theirs, ours_model, theirs_model)


def test_state_dict_resume_is_bit_identical_and_torch_state_loads():
    data = _data()
    straight_model = _Mixed()
    straight = optim.Adafactor(straight_model.parameters(), weight_decay=0.01)
    _train(straight_model, straight, 20, data)
    first_model = _Mixed()
    first = optim.Adafactor(first_model.parameters(), weight_decay=0.01)
    _train(first_model, first, 8, data)
    saved_model, saved_state = copy.deepcopy(first_model.state_dict()), copy.deepcopy(first.state_dict())
    resumed_model = _Mixed()
    resumed_model.load_state_dict(saved_model)
    resumed = optim.Adafactor(resumed_model.parameters(), weight_decay=0.01)
    resumed.load_state_dict(saved_state)
    _train(resumed_model, resumed, 12, data)
    for p, q in zip(resumed_model.parameters(), straight_model.parameters()):
        assert torch.equal(p, q)
    # torch's own state dict, at step 8, continues as torch does
    torch_model = _Mixed()
    torch_opt = torch.optim.Adafactor(torch_model.parameters(), weight_decay=0.01)
    _train(torch_model, torch_opt, 8, data)
    ours_model = copy.deepcopy(torch_model)
    ours = optim.Adafactor(ours_model.parameters(), weight_decay=0.01)
    ours.load_state_dict(copy.deepcopy(torch_opt.state_dict()))  # (as saved: its step tensors are torch's own)
    _train(ours_model, ours, 12, data)
    _train(torch_model, torch_opt, 12, data)
    _assert_same(ours_model, torch_model)


def test_max_grad_norm_follows_clip_grad_norm_then_torch():
    ours_model, theirs_model = _Mixed(), _Mixed()
    ours = optim.Adafactor(ours_model.parameters(), max_grad_norm=0.05)
    theirs = torch.optim.Adafactor(theirs_model.parameters())
    x, y = _data()
    for _ in range(20):
        for model, opt in ((ours_model, ours), (theirs_model, theirs)):
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            if opt is theirs:
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
            opt.step()
    _assert_same(ours_model, theirs_model)


def test_one_multi_call_for_the_vectors_and_one_call_per_matrix(monkeypatch):
    """A multi-tensor call a step for the vectors, one grid kernel call a step per matrix:
    checked on the first step, then kept ready (Operator.prepare) and only run."""
    multi_calls, grid_calls = [], []
    vector_multi = optim.Adafactor._MULTIS[0]
    matrix_op = optim.Adafactor._OPS[1]
    execute, prepare = type(matrix_op).execute, type(matrix_op).prepare

    def counting_multi(groups, *args, **kwargs):
        multi_calls.append(len(groups[0]))
        return vector_multi(groups, *args, **kwargs)

    def counting_execute(self, call):
        if self is matrix_op:
            grid_calls.append(("checked", call.weight.shape))
        return execute(self, call)

    def counting_prepare(self, call):
        run = prepare(self, call)
        shape = call.weight.shape

        def counted(*args):
            grid_calls.append(("kept", shape))
            return run(*args)
        return None if run is None else counted

    monkeypatch.setattr(optim.Adafactor, "_MULTIS", (counting_multi, None))
    monkeypatch.setattr(type(matrix_op), "execute", counting_execute)
    monkeypatch.setattr(type(matrix_op), "prepare", counting_prepare)
    model = _Mixed()
    opt = optim.Adafactor(model.parameters())
    for _ in range(3):  # the full path, the planned one, and again
        _train(model, opt, 1, _data())
    assert multi_calls == [3, 3, 3]  # two biases and the scale, one call a step
    assert sorted(grid_calls) == sorted([("checked", (12, 6)), ("checked", (3, 12))]
                                        + [("kept", (12, 6)), ("kept", (3, 12))] * 2)


def test_kept_calls_take_the_checked_path_for_other_gradients_and_new_memory():
    """After the calls are kept: a transposed (non-contiguous) gradient, a gradient inside the
    parameter's own state, and a parameter moved to new memory each take the checked path,
    and the trajectory stays torch's."""
    ours_model, theirs_model = _Mixed(), _Mixed()
    ours = optim.Adafactor(ours_model.parameters())
    theirs = torch.optim.Adafactor(theirs_model.parameters())
    x, y = _data()
    for step in range(8):
        for model, opt in ((ours_model, ours), (theirs_model, theirs)):
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            if step == 3:  # the same values, another layout
                model.first.weight.grad = model.first.weight.grad.t().contiguous().t()
            if step == 5:  # new memory for a parameter (its state stays)
                with torch.no_grad():
                    model.second.weight.set_(model.second.weight.detach().clone())
            opt.step()
    _assert_same(ours_model, theirs_model)
    w = ours_model.first.weight
    w.grad = torch.ones_like(w)
    row_var = ours.state[w]["row_var"]
    before = w.detach().clone()
    w.grad = row_var.expand(12, 6)  # not contiguous and inside a state: refused by the full checks
    others = [p.detach().clone() for p in ours_model.parameters()]
    with pytest.raises((TypeError, ValueError)):
        ours.step()
    assert torch.equal(w.detach(), before)
    # nothing else was written either (the vectors' call comes after the matrices' checks)
    assert all(torch.equal(p, q) for p, q in zip(ours_model.parameters(), others))


def test_what_the_matrix_op_cannot_take_is_refused_before_anything_changes():
    message = "parameter 0 of param group 0 has a torch.sparse_coo gradient; torch_adafactor_update"
    matrix = torch.nn.Parameter(torch.ones(4, 5))
    cube = torch.nn.Parameter(torch.ones(2, 3, 4))
    vector = torch.nn.Parameter(torch.ones(5))
    params = [matrix, cube, vector]
    opt = optim.Adafactor(params)
    for p in params:
        p.grad = torch.full_like(p, 0.5)
    matrix.grad = torch.full_like(matrix, 0.5).to_sparse()
    before = [p.detach().clone() for p in params]
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    assert all(not opt.state[p] for p in params)  # no state made, no step counted


@pytest.mark.parametrize("eps, message", [
    ((None, -1.0), "argument 'eps' must hold values >= 0"),
    ((1e-30, None), "argument 'eps' must hold real numbers, got None"),
    ((None,), "argument 'eps' must be a tuple of 2 floats"),
    (None, "argument 'eps' must be a tuple of 2 floats"),
])
def test_eps_takes_none_only_where_torch_does(eps, message):
    with pytest.raises(ValueError, match=message):
        optim.Adafactor([torch.nn.Parameter(torch.ones(3))], eps=eps)


def test_bounds_follow_torch():
    p = [torch.nn.Parameter(torch.ones(3))]
    for kwargs, message in ((dict(beta2_decay=0.1), "'beta2_decay' must be <= 0"), (dict(d=0.5), "'d' must be >= 1"),
                            (dict(lr=-1.0), "'lr' must be >= 0"), (dict(weight_decay=-0.1), "'weight_decay'")):
        with pytest.raises(ValueError, match=message):
            optim.Adafactor(p, **kwargs)
        with pytest.raises(ValueError):
            torch.optim.Adafactor(p, **kwargs)


def test_stochastic_rounding_gives_each_matrix_its_own_stream():
    """Two identical bfloat16 matrices with identical gradients: each call draws its own bits
    (the group's seed mixed with the matrix's place), reproducibly for one seed."""
    def run(seed):
        a = torch.nn.Parameter(torch.ones(64, 64, dtype=torch.bfloat16))
        b = torch.nn.Parameter(torch.ones(64, 64, dtype=torch.bfloat16))
        opt = optim.Adafactor([a, b], lr=1e-4, rounding="stochastic", seed=seed)
        g = torch.Generator().manual_seed(3)
        for _ in range(5):
            grad = torch.randn(64, 64, generator=g).bfloat16()
            a.grad, b.grad = grad.clone(), grad.clone()
            opt.step()
        return a.detach().clone(), b.detach().clone()

    a1, b1 = run(11)
    a2, b2 = run(11)
    assert torch.equal(a1, a2) and torch.equal(b1, b2)
    assert not torch.equal(a1, b1)
    nearest_a = torch.nn.Parameter(torch.ones(64, 64, dtype=torch.bfloat16))
    assert not torch.equal(a1, nearest_a.detach())  # tiny updates moved it


def test_bfloat16_parameters_with_float32_states_track_float32():
    model32, model16 = _Mixed(), _Mixed().to(torch.bfloat16)
    opt32 = optim.Adafactor(model32.parameters())
    opt16 = optim.Adafactor(model16.parameters(), state_dtype=torch.float32)
    _train(model32, opt32, 20, _data())
    _train(model16, opt16, 20, _data(torch.bfloat16))
    for p16, p32 in zip(model16.parameters(), model32.parameters()):
        state = opt16.state[p16]
        assert all(state[k].dtype is torch.float32 for k in state if k != "step")
        torch.testing.assert_close(p16.float(), p32.detach(), atol=0.05, rtol=0.05)
