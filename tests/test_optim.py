"""generated.optim (issue 11): torch.optim classes from the specs' optimizer sections, against
torch.optim itself: 100 steps of a small model, every option; and the behaviour users rely on
(param groups, state_dict round trips, lr schedulers, closures, GradScaler, parameters without
gradients, sparse gradients, bfloat16 with float32 states, stochastic rounding, bad arguments)."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
optim = pytest.importorskip("generated.optim")

STEPS = 100
ATOL, RTOL = 2e-5, 1e-4  # float32 after 100 steps: torch and opgen round differently (lerp, FMA)


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3))


def _data(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(48, 6, generator=g), torch.randn(48, 3, generator=g)


def _train(model, opt, steps: int = STEPS, scheduler=None, data=None):
    x, y = data or _data()
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.item())
    return losses


def _assert_same_params(a, b, atol=ATOL, rtol=RTOL):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


#: (our class, torch's, keyword arguments): every option of each class
PARITY = [
    ("Adam", {}), ("Adam", dict(amsgrad=True)), ("Adam", dict(weight_decay=0.05)),
    ("Adam", dict(maximize=True)), ("Adam", dict(betas=(0.8, 0.99), eps=1e-6, amsgrad=True, weight_decay=0.01)),
    ("Adam", dict(decoupled_weight_decay=True, weight_decay=0.1)),
    ("AdamW", {}), ("AdamW", dict(amsgrad=True, weight_decay=0.1)), ("AdamW", dict(maximize=True)),
    ("SGD", {}), ("SGD", dict(momentum=0.9)), ("SGD", dict(momentum=0.9, dampening=0.3)),
    ("SGD", dict(momentum=0.9, nesterov=True, weight_decay=0.01)), ("SGD", dict(weight_decay=0.1, maximize=True)),
    ("Adagrad", {}), ("Adagrad", dict(lr_decay=0.01, initial_accumulator_value=0.1, weight_decay=0.01)),
    ("Adagrad", dict(eps=1e-6, maximize=True)),
    ("RMSprop", {}), ("RMSprop", dict(momentum=0.9)), ("RMSprop", dict(centered=True)),
    ("RMSprop", dict(centered=True, momentum=0.5, weight_decay=0.01)), ("RMSprop", dict(alpha=0.9, maximize=True)),
    ("NAdam", {}), ("NAdam", dict(momentum_decay=0.01, weight_decay=0.01)),
    ("NAdam", dict(decoupled_weight_decay=True, weight_decay=0.1, maximize=True)),
    # matrices factored (row_var, col_var), the biases not (variance): two ops in one group
    ("Adafactor", {}), ("Adafactor", dict(weight_decay=0.1, d=1.5)), ("Adafactor", dict(maximize=True)),
    ("Adafactor", dict(eps=(1e-20, 1e-2), beta2_decay=-0.5)), ("Adafactor", dict(eps=(None, 0.0))),
]
LR = {"Adam": 0.01, "AdamW": 0.01, "SGD": 0.05, "Adagrad": 0.05, "RMSprop": 0.002, "NAdam": 0.002,
      "Adafactor": 0.01}


@pytest.mark.parametrize("name, kwargs", PARITY, ids=[f"{n}-{k}" for n, k in PARITY])
def test_follows_torch_optim_for_100_steps(name, kwargs):
    ours_model, theirs_model = _model(), _model()
    ours = getattr(optim, name)(ours_model.parameters(), lr=LR[name], **kwargs)
    theirs = getattr(torch.optim, name)(theirs_model.parameters(), lr=LR[name], foreach=False, **kwargs)
    # maximizing a squared error diverges, which amplifies every rounding difference: fewer steps
    steps = 15 if kwargs.get("maximize") else STEPS
    ours_losses = _train(ours_model, ours, steps)
    theirs_losses = _train(theirs_model, theirs, steps)
    assert ours_losses[-1] == pytest.approx(theirs_losses[-1], rel=1e-4, abs=1e-6)
    assert ours_losses[-1] != ours_losses[0]  # it trained
    _assert_same_params(ours_model, theirs_model)
    # the same state names and values as torch.optim's
    for p, q in zip(ours_model.parameters(), theirs_model.parameters()):
        ours_state, theirs_state = ours.state[p], theirs.state[q]
        assert float(ours_state["step"]) == steps  # (torch's SGD keeps no step count)
        for key, value in theirs_state.items():
            if key == "step":
                assert float(value) == steps
                continue
            if value is None:  # SGD's momentum_buffer without momentum: we keep none either
                assert key not in ours_state
                continue
            if key == "sum":
                key = "state_sum"  # `sum` is a function name of the spec language
            if key == "mu_product":  # host state: a float here, a float32 tensor in torch
                assert ours_state[key] == pytest.approx(float(value), rel=1e-6)
                continue
            torch.testing.assert_close(ours_state[key], value, atol=ATOL, rtol=1e-3)


def test_sparse_adam_follows_torch_sparse_adam():
    def embedding():
        torch.manual_seed(3)
        return torch.nn.Embedding(20, 4, sparse=True)

    ours_emb, theirs_emb = embedding(), embedding()
    ours = optim.SparseAdam(ours_emb.parameters(), lr=0.05)
    theirs = torch.optim.SparseAdam(theirs_emb.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(4)
    for step in range(60):
        rows = torch.randint(0, 20, (6,), generator=g)
        target = torch.randn(6, 4, generator=g)
        for emb, opt in ((ours_emb, ours), (theirs_emb, theirs)):
            opt.zero_grad()
            ((emb(rows) - target) ** 2).sum().backward()
            opt.step()
    torch.testing.assert_close(ours_emb.weight.detach(), theirs_emb.weight.detach(), atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(ours.state[ours_emb.weight]["exp_avg"], theirs.state[theirs_emb.weight]["exp_avg"],
                               atol=ATOL, rtol=RTOL)


def test_param_groups_have_their_own_hyperparameters():
    ours_model, theirs_model = _model(), _model()

    def groups(model):
        first, second = model[0], model[2]
        return [{"params": first.parameters(), "lr": 0.02, "betas": (0.8, 0.95)},
                {"params": second.parameters(), "weight_decay": 0.1, "amsgrad": True}]

    ours = optim.Adam(groups(ours_model), lr=0.005)
    theirs = torch.optim.Adam(groups(theirs_model), lr=0.005, foreach=False)
    _train(ours_model, ours, 50)
    _train(theirs_model, theirs, 50)
    _assert_same_params(ours_model, theirs_model)
    assert "max_exp_avg_sq" in ours.state[ours_model[2].weight] and \
        "max_exp_avg_sq" not in ours.state[ours_model[0].weight]


def test_state_dict_resume_is_bit_identical():
    """Saved at step 30 and resumed in a new optimizer and model: the same bits as the
    uninterrupted run at step 60."""
    straight_model = _model()
    straight = optim.Adam(straight_model.parameters(), lr=0.01, amsgrad=True)
    _train(straight_model, straight, 60)

    first_model = _model()
    first = optim.Adam(first_model.parameters(), lr=0.01, amsgrad=True)
    _train(first_model, first, 30)
    saved = copy.deepcopy((first_model.state_dict(), first.state_dict()))
    resumed_model = _model(seed=99)
    resumed_model.load_state_dict(saved[0])
    resumed = optim.Adam(resumed_model.parameters(), lr=0.5)  # the saved hyperparameters win
    resumed.load_state_dict(saved[1])
    _train(resumed_model, resumed, 30)
    for p, q in zip(straight_model.parameters(), resumed_model.parameters()):
        assert torch.equal(p, q)


def test_a_torch_state_dict_loads_and_continues_as_torch():
    """torch.optim.Adam's state_dict loads into generated.optim.Adam (the same state names)
    and the run continues as torch's would."""
    torch_model, ours_model = _model(), _model()
    theirs = torch.optim.Adam(torch_model.parameters(), lr=0.01, foreach=False)
    _train(torch_model, theirs, 20)
    ours_model.load_state_dict(torch_model.state_dict())
    ours = optim.Adam(ours_model.parameters(), lr=0.01)
    ours.load_state_dict(copy.deepcopy(theirs.state_dict()))  # (torch's load_state_dict shares the tensors)
    _train(torch_model, theirs, 20)
    _train(ours_model, ours, 20)
    _assert_same_params(ours_model, torch_model)


def test_load_state_dict_keeps_float32_states_of_bfloat16_parameters():
    model = _model().to(torch.bfloat16)
    opt = optim.Adam(model.parameters(), lr=0.01, state_dtype=torch.float32)
    _train(model, opt, 3, data=tuple(t.to(torch.bfloat16) for t in _data()))
    saved = copy.deepcopy(opt.state_dict())
    again = optim.Adam(model.parameters(), lr=0.01)
    again.load_state_dict(saved)
    for p in model.parameters():
        assert again.state[p]["exp_avg"].dtype is torch.float32
        assert torch.equal(again.state[p]["exp_avg"], opt.state[p]["exp_avg"])


@pytest.mark.parametrize("make_scheduler", [
    lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=10, gamma=0.5),
    lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=STEPS),  # cycles betas too
    lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=40),
], ids=["StepLR", "OneCycleLR", "CosineAnnealingLR"])
def test_lr_schedulers_work_unchanged(make_scheduler):
    ours_model, theirs_model = _model(), _model()
    ours = optim.Adam(ours_model.parameters(), lr=0.01)
    theirs = torch.optim.Adam(theirs_model.parameters(), lr=0.01, foreach=False)
    _train(ours_model, ours, scheduler=make_scheduler(ours))
    _train(theirs_model, theirs, scheduler=make_scheduler(theirs))
    _assert_same_params(ours_model, theirs_model)
    assert ours.param_groups[0]["lr"] == theirs.param_groups[0]["lr"]


def test_parameters_without_gradients_are_skipped():
    model = _model()
    frozen = model[0].weight
    frozen.requires_grad_(False)
    before = frozen.detach().clone()
    opt = optim.Adam(model.parameters(), lr=0.1)
    _train(model, opt, 3)
    assert torch.equal(frozen, before) and not opt.state[frozen]
    assert float(opt.state[model[2].weight]["step"]) == 3


def test_step_with_a_closure_returns_the_loss():
    model = _model()
    x, y = _data()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def closure():
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        return loss

    first = opt.step(closure)
    second = opt.step(closure)
    assert isinstance(first, torch.Tensor) and second.item() < first.item()


def test_grad_scaler_skips_the_step_on_inf():
    model = _model()
    opt = optim.Adam(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 4)
    x, y = _data()
    before = [p.detach().clone() for p in model.parameters()]
    loss = ((model(x) - y) ** 2).mean()
    scaler.scale(loss).backward()
    model[0].weight.grad[0, 0] = float("inf")
    scaler.step(opt)
    scaler.update()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert scaler.get_scale() == 2.0 ** 3  # the scale backed off
    # a finite step goes through, unscaled: the same as an unscaled plain step
    reference_model = copy.deepcopy(model)
    reference = optim.Adam(reference_model.parameters(), lr=0.1)
    for m, o, s in ((model, opt, scaler), (reference_model, reference, None)):
        o.zero_grad()
        loss = ((m(x) - y) ** 2).mean()
        if s is None:
            loss.backward()
            o.step()
        else:
            s.scale(loss).backward()
            s.step(o)
    _assert_same_params(model, reference_model, atol=1e-6, rtol=1e-5)


def test_one_multi_tensor_call_per_dtype_bucket(monkeypatch):
    """Four float32 tensors and two float64 ones: two kernel calls per step."""
    calls = []
    original = optim.Adam._MULTIS

    def counting(multi):
        def run(groups, *args, **kwargs):
            calls.append(len(groups[0]))
            return multi(groups, *args, **kwargs)
        return run

    monkeypatch.setattr(optim.Adam, "_MULTIS", tuple(counting(m) for m in original))
    params = [torch.nn.Parameter(torch.randn(5)) for _ in range(4)] + \
        [torch.nn.Parameter(torch.randn(3, dtype=torch.float64)) for _ in range(2)]
    opt = optim.Adam(params, lr=0.1)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    assert sorted(calls) == [2, 4]


def test_bfloat16_parameters_with_float32_states_track_float32():
    """bf16 weights with float32 states follow a float32 run within bf16 rounding, and the
    states stay float32."""
    model32 = _model()
    model16 = copy.deepcopy(model32).to(torch.bfloat16)
    opt32 = optim.Adam(model32.parameters(), lr=0.01)
    opt16 = optim.Adam(model16.parameters(), lr=0.01, state_dtype=torch.float32)
    x, y = _data()
    for _ in range(20):
        for m, o, (xx, yy) in ((model32, opt32, (x, y)), (model16, opt16, (x.bfloat16(), y.bfloat16()))):
            o.zero_grad()
            ((m(xx) - yy) ** 2).mean().backward()
            o.step()
    for p16, p32 in zip(model16.parameters(), model32.parameters()):
        assert p16.dtype is torch.bfloat16 and opt16.state[p16]["exp_avg_sq"].dtype is torch.float32
        torch.testing.assert_close(p16.float(), p32.detach(), atol=0.05, rtol=0.05)


def test_stochastic_rounding_is_deterministic_per_seed_and_unbiased_on_tiny_updates():
    """Updates far below half a bf16 ulp: round-to-nearest never moves the weights;
    stochastic rounding moves them, the same way for the same seed."""
    def run(rounding, seed=0):
        w = torch.nn.Parameter(torch.ones(4096, dtype=torch.bfloat16))
        opt = optim.SGD([w], lr=1e-4, rounding=rounding, seed=seed)
        for _ in range(50):
            w.grad = torch.ones_like(w)
            opt.step()
        return w.detach().float()

    nearest = run("nearest")
    assert torch.equal(nearest, torch.ones(4096))
    a, b, other = run("stochastic", 7), run("stochastic", 7), run("stochastic", 8)
    assert torch.equal(a, b) and not torch.equal(a, other)
    # 50 steps of -1e-4 each: the mean follows 1 - 5e-3 within a few standard errors
    assert abs(a.mean().item() - (1 - 50 * 1e-4)) < 5e-4


@pytest.mark.parametrize("make, message", [
    (lambda p: optim.Adam(p, lr=-1.0), "argument 'lr' must be >= 0"),
    (lambda p: optim.Adam(p, betas=(1.0, 0.9)), "argument 'betas' must hold values < 1"),
    (lambda p: optim.Adam(p, betas=(0.9,)), "argument 'betas' must be a tuple of 2 floats"),
    (lambda p: optim.Adam(p, amsgrad="yes"), "argument 'amsgrad' must be a bool"),
    (lambda p: optim.Adam(p, lr="0.1"), "argument 'lr' must be a real number"),
    (lambda p: optim.SGD(p, lr=0.1, nesterov=True), "Nesterov momentum requires a momentum and zero dampening"),
    (lambda p: optim.Adam(p, differentiable=True), "argument 'differentiable' must be False"),
    (lambda p: optim.Adam(p, capturable=True), "argument 'capturable' must be False"),
    (lambda p: optim.Adam(p, rounding="up"), "argument 'rounding' must be 'nearest' or 'stochastic'"),
    (lambda p: optim.Adam(p, state_dtype=torch.int32), "argument 'state_dtype'"),
], ids=["lr", "betas-range", "betas-length", "amsgrad", "lr-type", "nesterov", "differentiable", "capturable",
        "rounding", "state_dtype"])
def test_bad_arguments_raise_value_error_naming_them(make, message):
    with pytest.raises(ValueError, match=message):
        make([torch.nn.Parameter(torch.ones(3))])


def test_a_bad_group_value_is_refused_before_anything_changes():
    p = torch.nn.Parameter(torch.ones(3))
    opt = optim.Adam([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.param_groups[0]["lr"] = -0.5
    with pytest.raises(ValueError, match="param group 0: 'lr' must be >= 0"):
        opt.step()
    assert torch.equal(p.detach(), torch.ones(3)) and not opt.state[p]
    with pytest.raises(ValueError, match="'betas'"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))], "betas": (0.5, 2.0)})


@pytest.mark.parametrize("kwargs", [{}, dict(wd=0.01, rescale_grad=0.5, clip_gradient=0.05, beta1=0.8)])
def test_mxnet_adam_folds_the_bias_correction_into_lr(kwargs):
    """MXNetAdam against the independent reference of adam_update (tests/reference.py), fed
    lr * sqrt(1 - beta2**t) / (1 - beta1**t) as mx.optimizer.Adam computes it."""
    import numpy as np

    import reference

    w = torch.nn.Parameter(torch.randn(7, 5, generator=torch.Generator().manual_seed(0)))
    opt = optim.MXNetAdam([w], lr=0.01, **kwargs)
    expected = w.detach().numpy().copy()
    mean, var = np.zeros_like(expected), np.zeros_like(expected)
    beta1, beta2 = kwargs.get("beta1", 0.9), 0.999
    for t in range(1, 11):
        grad = torch.randn(7, 5, generator=torch.Generator().manual_seed(t))
        w.grad = grad
        opt.step()
        lr = 0.01 * (1 - beta2 ** t) ** 0.5 / (1 - beta1 ** t)
        args = {k: v for k, v in kwargs.items() if k != "beta1"}
        expected, mean, var = reference.adam_update(expected, grad.numpy(), mean, var, lr, beta1=beta1, **args)
        np.testing.assert_allclose(w.detach().numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(opt.state[w]["var"].numpy(), var, rtol=1e-5, atol=1e-9)


def _paper_lamb(params, grads, states, t, lr, beta1, beta2, eps, wd):
    """LAMB, You et al. 2019, Algorithm 2, per tensor, in float64: the trust ratio
    ||w|| / ||u|| (1 where either norm is 0)."""
    out = []
    for w, g, (m, v) in zip(params, grads, states):
        m.mul_(beta1).add_((1 - beta1) * g)
        v.mul_(beta2).add_((1 - beta2) * g * g)
        u = (m / (1 - beta1 ** t)) / ((v / (1 - beta2 ** t)).sqrt() + eps) + wd * w
        r1, r2 = w.norm(), u.norm()
        trust = r1 / r2 if r1 > 0 and r2 > 0 else 1.0
        out.append(w - lr * trust * u)
    return out


def _paper_lars(params, grads, moms, lr, momentum, eta, eps, wd):
    """LARS, You et al. 2017, Algorithm 1, as MXNet's LARS steps each layer, in float64: the
    layer's rate lr * eta * ||w|| / (||g|| + wd * ||w|| + eps) (lr where either norm is 0),
    the momentum stored negated (MXNet's sgd_mom_update)."""
    out = []
    for w, g, mom in zip(params, grads, moms):
        w_norm, g_norm = w.norm(), g.norm()
        rate = lr * eta * w_norm / (g_norm + wd * w_norm + eps) if w_norm > 0 and g_norm > 0 else lr
        mom.mul_(momentum).sub_(rate * wd * w).sub_(rate * g)
        out.append(w + mom)
    return out


@pytest.mark.parametrize("kwargs", [{}, dict(betas=(0.8, 0.99), eps=1e-4, weight_decay=0.1)])
def test_lamb_follows_the_paper_per_tensor(kwargs):
    """optim.LAMB on a model's parameters (matrices, biases) in float64 against Algorithm 2
    computed here, 20 steps: each tensor's trust ratio is its own."""
    model = _model().double()
    params = [p for p in model.parameters()]
    expected = [p.detach().clone() for p in params]
    states = [(torch.zeros_like(p), torch.zeros_like(p)) for p in expected]
    opt = optim.LAMB(params, lr=0.01, **kwargs)
    beta1, beta2 = kwargs.get("betas", (0.9, 0.999))
    x, y = (a.double() for a in _data())
    for t in range(1, 21):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        grads = [p.grad.detach().clone() for p in params]
        opt.step()
        expected = _paper_lamb(expected, grads, states, t, 0.01, beta1, beta2, kwargs.get("eps", 1e-6),
                               kwargs.get("weight_decay", 0.0))
        for p, e in zip(params, expected):
            torch.testing.assert_close(p.detach(), e, rtol=1e-10, atol=1e-12)
        expected = [p.detach().clone() for p in params]  # each step from opgen's weights
    torch.testing.assert_close(opt.state[params[0]]["mean"], states[0][0], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("kwargs", [{}, dict(momentum=0.5, weight_decay=0.01, trust_coefficient=0.02, eps=1e-3)])
def test_lars_follows_the_paper_per_tensor(kwargs):
    """optim.LARS against Algorithm 1 computed here (MXNet's LARS form), float64, 20 steps."""
    model = _model().double()
    params = [p for p in model.parameters()]
    expected = [p.detach().clone() for p in params]
    moms = [torch.zeros_like(p) for p in expected]
    opt = optim.LARS(params, lr=1.0, **kwargs)
    x, y = (a.double() for a in _data())
    for _ in range(20):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        grads = [p.grad.detach().clone() for p in params]
        opt.step()
        expected = _paper_lars(expected, grads, moms, 1.0, kwargs.get("momentum", 0.9),
                               kwargs.get("trust_coefficient", 0.001), kwargs.get("eps", 0.0),
                               kwargs.get("weight_decay", 0.0))
        for p, e in zip(params, expected):
            torch.testing.assert_close(p.detach(), e, rtol=1e-10, atol=1e-12)
        expected = [p.detach().clone() for p in params]
    torch.testing.assert_close(opt.state[params[0]]["mom"], moms[0], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("kwargs", [{}, dict(betas=(0.9, 0.9), eps=1e-4, weight_decay=0.01, grad_averaging=True)])
def test_novograd_follows_the_paper_per_tensor(kwargs):
    """optim.NovoGrad against Algorithm 1 computed here, float64, 20 steps: each tensor's
    second moment is one number (v = ||g||^2 first, then its moving average)."""
    model = _model().double()
    params = [p for p in model.parameters()]
    opt = optim.NovoGrad(params, lr=0.01, **kwargs)
    beta1, beta2 = kwargs.get("betas", (0.95, 0.98))
    eps, wd, averaging = kwargs.get("eps", 1e-8), kwargs.get("weight_decay", 0.0), kwargs.get("grad_averaging", False)
    moms, vs = [torch.zeros_like(p) for p in params], [None] * len(params)
    x, y = (a.double() for a in _data())
    for t in range(1, 21):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        before = [p.detach().clone() for p in params]
        grads = [p.grad.detach().clone() for p in params]
        opt.step()
        for k, (w, g) in enumerate(zip(before, grads)):
            g2 = (g * g).sum()
            v = g2 if t == 1 else beta2 * vs[k] + (1 - beta2) * g2  # from v as stored, in double
            vs[k] = v.float().double()  # v is kept as one float32 value
            step = g / (v.sqrt() + eps) + wd * w
            moms[k] = beta1 * moms[k] + ((1 - beta1) * step if averaging else step)
            torch.testing.assert_close(params[k].detach(), w - 0.01 * moms[k], rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(opt.state[params[k]]["v"].double(), vs[k].reshape(1), rtol=0, atol=0)
    assert opt.state[params[0]]["v"].shape == (1,) and opt.state[params[0]]["v"].dtype == torch.float32


def test_mxnet_sgd_takes_the_momentum_op_only_with_momentum():
    import numpy as np

    import reference

    plain, heavy = torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.ones(4))
    opt = optim.MXNetSGD([{"params": [plain]}, {"params": [heavy], "momentum": 0.9}], lr=0.1, wd=0.01)
    w_plain, w_heavy, mom = np.ones(4, np.float32), np.ones(4, np.float32), np.zeros(4, np.float32)
    for t in range(5):
        g = np.full(4, 0.5 + t, np.float32)
        plain.grad, heavy.grad = torch.from_numpy(g.copy()), torch.from_numpy(g.copy())
        opt.step()
        (w_plain,) = reference.sgd_update(w_plain, g, 0.1, wd=0.01)
        w_heavy, mom = reference.sgd_mom_update(w_heavy, g, mom, 0.1, momentum=0.9, wd=0.01)
    np.testing.assert_allclose(plain.detach().numpy(), w_plain, rtol=1e-6)
    np.testing.assert_allclose(heavy.detach().numpy(), w_heavy, rtol=1e-6)
    assert set(opt.state[plain]) == {"step"} and set(opt.state[heavy]) == {"step", "mom"}


def test_the_usual_step_sees_replaced_states_and_parameter_memory():
    """After planned steps: a state replaced in the state dict, and a parameter whose .data
    was reassigned, are what the next step updates (no stale views), and the step counts
    stay right in the state dict."""
    p = torch.nn.Parameter(torch.ones(4))
    q = torch.nn.Parameter(torch.ones(4))
    opt = optim.SGD([p, q], lr=0.5, momentum=0.5)
    for _ in range(3):
        p.grad, q.grad = torch.ones(4), torch.ones(4)
        opt.step()
    assert [float(opt.state[x]["step"]) for x in (p, q)] == [3.0, 3.0]
    opt.state[p]["momentum_buffer"] = torch.zeros(4)
    q.data = torch.full((4,), 10.0)
    p_before = p.detach().clone()
    p.grad, q.grad = torch.ones(4), torch.ones(4)
    opt.step()
    # by hand: p's buffer from zero: 0.5 * 0 + 1 = 1; p -= 0.5 * 1
    assert torch.equal(opt.state[p]["momentum_buffer"], torch.ones(4))
    assert torch.equal(p.detach(), p_before - 0.5)
    # q's buffer after 3 steps: 1, 1.5, 1.75, now 1.875; q = 10 - 0.5 * 1.875
    assert torch.allclose(q.detach(), torch.full((4,), 10 - 0.5 * 1.875))
    assert float(opt.state[q]["step"]) == 4.0
    saved = copy.deepcopy(opt.state_dict())
    assert [float(s["step"]) for s in saved["state"].values()] == [4.0, 4.0]


# ---- what a review found: each a test against torch's own behaviour or by hand ------------------
def test_a_step_moves_autograd_version_counters_as_torch_does():
    """A graph that saved a parameter refuses backward after the step, as with torch.optim."""
    for make in (lambda p: optim.SGD(p, lr=0.1), lambda p: torch.optim.SGD(p, lr=0.1)):
        w = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))
        x = torch.tensor([1.0, 0.0, -1.0])
        opt = make([w])
        loss = (w * w * x).sum()
        loss.backward(retain_graph=True)
        opt.step()
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss.backward()


def test_the_functions_move_version_counters_of_what_they_write():
    w, g, m, v = torch.ones(3), torch.ones(3), torch.zeros(3), torch.zeros(3)
    versions = [t._version for t in (w, g, m, v)]
    import generated

    generated.adam_update(w, g, m, v, lr=0.1, out=w)
    assert [t._version for t in (w, g, m, v)] == [versions[0] + 1, versions[1], versions[2] + 1, versions[3] + 1]


def test_a_refused_step_changes_nothing():
    """A bad hyperparameter in a later group, or a gradient sharing a state's memory: every
    parameter, step count and host state as before."""
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = optim.NAdam([{"params": [a]}, {"params": [b]}], lr=0.1)
    for _ in range(2):
        a.grad, b.grad = torch.ones(2), torch.ones(2)
        opt.step()
    before = copy.deepcopy((a.detach(), b.detach(), opt.state_dict()))
    opt.param_groups[1]["lr"] = -1.0
    with pytest.raises(ValueError, match="param group 1: 'lr' must be >= 0"):
        opt.step()
    opt.param_groups[1]["lr"] = 0.1
    a.grad = opt.state[a]["exp_avg"]  # a gradient that is a state: refused by the kernel's checks
    with pytest.raises(ValueError, match="shares memory"):
        opt.step()
    after = (a.detach(), b.detach(), opt.state_dict())
    assert torch.equal(after[0], before[0]) and torch.equal(after[1], before[1])
    for s0, s1 in zip(before[2]["state"].values(), after[2]["state"].values()):
        assert float(s0["step"]) == float(s1["step"]) == 2.0 and s0["mu_product"] == s1["mu_product"]


def test_state_reset_and_layout_changes_are_seen():
    """opt.state.clear() starts the states again; a parameter re-laid-out over the same memory
    (a transposed .data) is updated through its new strides; a dtype change is planned anew."""
    w = torch.nn.Parameter(torch.zeros(2, 2))
    opt = optim.SGD([w], lr=0.5, momentum=0.5)
    for _ in range(3):
        w.grad = torch.ones(2, 2)
        opt.step()
    opt.state.clear()
    w.grad = torch.ones(2, 2)
    opt.step()
    assert float(opt.state[w]["step"]) == 1.0 and torch.equal(opt.state[w]["momentum_buffer"], torch.ones(2, 2))
    assert opt.state_dict()["state"][0]["step"] == 1.0
    # the same memory, other strides: the update lands where the new layout says
    w.data = w.data.t()
    reference = w.detach().clone()
    grad = torch.zeros(2, 2)
    grad[0, 1] = 1.0
    w.grad = grad
    buffer = opt.state[w]["momentum_buffer"].clone()
    opt.step()
    # by hand: buf = 0.5 * buf + grad; w -= 0.5 * buf (buf was ones, laid out as before)
    expected = reference - 0.5 * (0.5 * buffer + grad)
    assert torch.allclose(w.detach(), expected)
    b = torch.nn.Parameter(torch.ones(3))
    mixed = optim.Adam([b], lr=0.1, state_dtype=torch.float32)
    b.grad = torch.ones(3)
    mixed.step()
    b.data = b.data.half()
    b.grad = torch.ones(3, dtype=torch.float16)
    mixed.step()  # float16 now, float32 states: planned anew, no error
    assert b.dtype is torch.float16 and float(mixed.state[b]["step"]) == 2.0


def test_sgd_buffer_starts_as_the_gradient_when_it_is_created_as_torch():
    """Momentum 0 on the first step (no buffer), then 0.9: torch creates the buffer then, as
    a copy of the gradient; so does SGD. And a torch SGD checkpoint (no 'step') loads."""
    ours_w, theirs_w = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    ours = optim.SGD([ours_w], lr=1.0, dampening=0.5)
    theirs = torch.optim.SGD([theirs_w], lr=1.0, dampening=0.5)
    for step in range(3):
        for w, opt in ((ours_w, ours), (theirs_w, theirs)):
            if step == 1:
                opt.param_groups[0]["momentum"] = 0.9
            w.grad = torch.ones(2)
            opt.step()
    torch.testing.assert_close(ours_w.detach(), theirs_w.detach())
    torch.testing.assert_close(ours.state[ours_w]["momentum_buffer"], theirs.state[theirs_w]["momentum_buffer"])
    resumed_w = torch.nn.Parameter(theirs_w.detach().clone())
    resumed = optim.SGD([resumed_w], lr=1.0, momentum=0.9, dampening=0.5)
    resumed.load_state_dict(copy.deepcopy(theirs.state_dict()))
    for w, opt in ((resumed_w, resumed), (theirs_w, theirs)):
        w.grad = torch.ones(2)
        opt.step()
    torch.testing.assert_close(resumed_w.detach(), theirs_w.detach())


def test_a_state_dict_without_a_hyperparameter_takes_the_default():
    p = torch.nn.Parameter(torch.ones(2))
    opt = optim.Adam([p], lr=0.1)
    saved = copy.deepcopy(opt.state_dict())
    del saved["param_groups"][0]["maximize"]
    opt.load_state_dict(saved)
    p.grad = torch.ones(2)
    opt.step()
    assert opt.param_groups[0]["maximize"] is False


def test_int_hyperparameters_have_their_bounds_checked():
    from opgen.runtime.optim import OptimArg

    arg = OptimArg("k", "int", 1, low=1.0)
    assert arg.problem(0) == "must be >= 1, got 0" and arg.problem(3) is None and "an int" in arg.problem(1.5)


def test_two_groups_each_keep_their_plan(monkeypatch):
    """A decay / no-decay split: two multi calls per step, and neither re-plans every step."""
    import opgen.runtime.multi as multi

    made = []
    original = multi.MultiOperator._plan_for

    def counting(self, *args, **kwargs):
        made.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(multi.MultiOperator, "_plan_for", counting)
    decay, no_decay = [torch.nn.Parameter(torch.randn(8)) for _ in range(3)], [torch.nn.Parameter(torch.randn(4))]
    opt = optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=0.01)
    for _ in range(20):
        for p in decay + no_decay:
            p.grad = torch.randn(p.shape)
        opt.step()
    assert len(made) == 2


def test_a_meta_tensor_is_not_a_number():
    p = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="argument 'lr' must be a real number"):
        optim.Adam([p], lr=torch.tensor(0.1, device="meta"))


# -- clipping by the global gradient norm (issue 12) --------------------------------------
def _train_clipped_by_torch(model, opt, max_norm: float, steps: int, data=None):
    x, y = data or _data()
    norms = []
    for _ in range(steps):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)))
        opt.step()
    return norms


@pytest.mark.parametrize("name, kwargs", [("Adam", {}), ("SGD", dict(momentum=0.9)), ("AdamW", dict(weight_decay=0.1))])
def test_max_grad_norm_follows_torch_clip_grad_norm_then_torch_optim(name, kwargs):
    """max_grad_norm=0.2 (below the model's gradient norms for the first steps, above them
    later) for 50 steps, two param groups: torch.nn.utils.clip_grad_norm_ then torch.optim's
    step; the norm before clipping is what ours reports each step."""
    ours_model, torch_model = _model(), _model()
    groups = lambda m: [{"params": list(m[0].parameters())}, {"params": list(m[2].parameters()), "lr": LR[name] / 2}]  # noqa: E731
    ours = getattr(optim, name)(groups(ours_model), lr=LR[name], max_grad_norm=0.2, **kwargs)
    reference = getattr(torch.optim, name)(groups(torch_model), lr=LR[name], **kwargs)
    torch_norms = _train_clipped_by_torch(torch_model, reference, 0.2, 50)
    x, y = _data()
    our_norms = []
    for _ in range(50):
        ours.zero_grad()
        ((ours_model(x) - y) ** 2).mean().backward()
        before = [p.grad.clone() for p in ours_model.parameters()]
        ours.step()
        our_norms.append(ours.last_grad_norm)
        assert all(torch.equal(b, p.grad) for b, p in zip(before, ours_model.parameters()))  # grads untouched
    assert sum(n > 0.2 for n in torch_norms) >= 5  # steps that clipped
    torch.testing.assert_close(torch.tensor(our_norms), torch.tensor(torch_norms), rtol=1e-4, atol=1e-6)
    _assert_same_params(ours_model, torch_model)


def test_max_grad_norm_is_one_factor_across_dtype_buckets():
    """float32 and float64 parameters (two multi-tensor calls): one global norm over both."""
    a = torch.nn.Parameter(torch.tensor([3.0, 0.0]))
    b = torch.nn.Parameter(torch.tensor([4.0], dtype=torch.float64))
    opt = optim.SGD([a, b], lr=1.0, max_grad_norm=1.0)
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0], dtype=torch.float64)
    opt.step()
    assert opt.last_grad_norm == 5.0
    factor = 1.0 / (5.0 + 1e-6)
    torch.testing.assert_close(a.detach(), torch.tensor([3.0 - 3.0 * factor, 0.0]))
    torch.testing.assert_close(b.detach(), torch.tensor([4.0 - 4.0 * factor], dtype=torch.float64), rtol=1e-15,
                               atol=0)


def test_max_grad_norm_refusals():
    with pytest.raises(ValueError, match=r"Adam\(\): argument 'max_grad_norm' must be positive and finite"):
        optim.Adam(_model().parameters(), max_grad_norm=0.0)
    with pytest.raises(TypeError, match=r"Adam\(\): argument 'max_grad_norm' must be None or a number"):
        optim.Adam(_model().parameters(), max_grad_norm="1")
    embedding = torch.nn.Embedding(10, 3, sparse=True)
    opt = optim.SparseAdam(embedding.parameters(), max_grad_norm=1.0) if hasattr(optim, "SparseAdam") else None
    if opt is not None:
        before = embedding.weight.detach().clone()
        embedding(torch.tensor([1, 2])).sum().backward()
        with pytest.raises(TypeError, match="max_grad_norm clips dense gradients"):
            opt.step()
        assert torch.equal(before, embedding.weight.detach())


# ---- the usual step's new gradients, read by their pointers -------------------------------------
def _planned_sgd(sizes=(4, 4, 8)):
    params = [torch.nn.Parameter(torch.ones(n)) for n in sizes]
    opt = optim.SGD(params, lr=0.5, momentum=0.5)
    for _ in range(2):  # the second step is the planned one
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()
    return params, opt


def test_the_usual_step_does_not_keep_the_gradients_alive():
    """zero_grad(set_to_none=True) frees the gradients: the step's plan holds their pointers,
    not them (a GPT-2-sized model would otherwise keep a second set of gradients alive)."""
    import gc
    import weakref

    params, opt = _planned_sgd()
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    refs = [weakref.ref(p.grad) for p in params]
    opt.zero_grad(set_to_none=True)
    gc.collect()
    assert [r() for r in refs] == [None] * len(params)


@pytest.mark.parametrize("victim", ["parameter", "state", "inside a state"])
def test_a_new_gradient_sharing_written_memory_is_refused_in_the_usual_step(victim):
    """The pointer check of new gradients against every array the kernel writes: another
    tensor's parameter, its state, or a window inside a longer tensor's state (the overlap is
    neither at its start nor at its end). Refused, as on the first step, with nothing changed."""
    params, opt = _planned_sgd()
    before = [p.detach().clone() for p in params], [opt.state[p]["momentum_buffer"].clone() for p in params]
    for p in params:
        p.grad = torch.ones_like(p)
    params[0].grad = {"parameter": params[1].detach(), "state": opt.state[params[1]]["momentum_buffer"],
                      "inside a state": opt.state[params[2]]["momentum_buffer"][2:6]}[victim]
    with pytest.raises(ValueError, match="shares memory"):
        opt.step()
    assert all(torch.equal(p.detach(), b) for p, b in zip(params, before[0]))
    assert all(torch.equal(opt.state[p]["momentum_buffer"], b) for p, b in zip(params, before[1]))
    assert [float(opt.state[p]["step"]) for p in params] == [2.0] * 3


def test_a_gradient_right_beside_written_memory_is_taken():
    """A gradient that ends where a state begins (adjacent, not overlapping) is read in place."""
    params, opt = _planned_sgd(sizes=(4,))
    reference, reference_opt = _planned_sgd(sizes=(4,))
    storage = torch.zeros(8)
    params[0].grad = storage[:4]  # the gradient: the first half of one buffer
    opt.state[params[0]]["momentum_buffer"] = storage[4:]  # a state: the second half
    storage[:4] = 1.0
    storage[4:] = reference_opt.state[reference[0]]["momentum_buffer"]
    reference[0].grad = torch.ones(4)
    opt.step()
    reference_opt.step()
    assert torch.equal(params[0].detach(), reference[0].detach())
    assert torch.equal(storage[:4], torch.ones(4))  # the gradient is read, never written


def test_gradients_the_pointer_path_cannot_read_in_place_take_the_full_checks():
    """A transposed gradient (not C-contiguous) is read through its strides; one with a lazy
    negation bit is refused, naming it; a bfloat16 gradient of a bfloat16 parameter is read."""
    w = torch.nn.Parameter(torch.zeros(2, 2))
    opt = optim.SGD([w], lr=0.5)
    for _ in range(2):
        w.grad = torch.ones(2, 2)
        opt.step()
    grad = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    before = w.detach().clone()
    w.grad = grad.t()
    opt.step()
    assert torch.equal(w.detach(), before - 0.5 * grad.t())
    w.grad = torch._neg_view(torch.ones(2, 2))
    before = w.detach().clone()
    with pytest.raises(TypeError, match="negation"):
        opt.step()
    assert torch.equal(w.detach(), before)
    b = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    b_opt = optim.SGD([b], lr=0.5)
    for k in range(3):
        b.grad = torch.full((4,), float(k + 1), dtype=torch.bfloat16)
        b_opt.step()
    assert torch.equal(b.detach(), torch.full((4,), 1 - 0.5 * (1 + 2 + 3), dtype=torch.bfloat16))
