"""The six update rules against float64 references written from the playbook's formulas.

The references below are plain numpy, one line per formula line, independent of the
optimizer code: they share nothing with it but the formulas.
"""

from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import torch

from stablelab.optim import SGD, Adam, Momentum, NAdam, Nesterov, RMSProp

STEPS = 60


# ------------------------------------------------------------------ references (numpy f64)
def ref_sgd(theta, grads, lrs, wd=0.0):
    out = []
    for g, eta in zip(grads, lrs, strict=True):
        theta = theta * (1 - eta * wd)
        theta = theta - eta * g
        out.append(theta)
    return out


def ref_momentum(theta, grads, lrs, gamma, wd=0.0):
    v, out = np.zeros_like(theta), []
    for g, eta in zip(grads, lrs, strict=True):
        theta = theta * (1 - eta * wd)
        v = gamma * v + g
        theta = theta - eta * v
        out.append(theta)
    return out


def ref_nesterov(theta, grads, lrs, gamma, wd=0.0):
    v, out = np.zeros_like(theta), []
    for g, eta in zip(grads, lrs, strict=True):
        theta = theta * (1 - eta * wd)
        v = gamma * v + g
        theta = theta - eta * (gamma * v + g)
        out.append(theta)
    return out


def ref_rmsprop(theta, grads, lrs, rho, gamma, eps, wd=0.0):
    v, m, out = np.ones_like(theta), np.zeros_like(theta), []  # v0 = 1, m0 = 0
    for g, eta in zip(grads, lrs, strict=True):
        theta = theta * (1 - eta * wd)
        v = rho * v + (1 - rho) * g**2
        m = gamma * m + eta / np.sqrt(v + eps) * g
        theta = theta - m
        out.append(theta)
    return out


def ref_adam(theta, grads, lrs, b1, b2, eps, wd=0.0, nesterov=False):
    m, v, out = np.zeros_like(theta), np.zeros_like(theta), []
    for t, (g, alpha) in enumerate(zip(grads, lrs, strict=True)):
        theta = theta * (1 - alpha * wd)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        b = math.sqrt(1 - b2 ** (t + 1)) / (1 - b1 ** (t + 1))
        num = b1 * m + (1 - b1) * g if nesterov else m
        theta = theta - alpha * num / (np.sqrt(v) + eps) * b
        out.append(theta)
    return out


# hyperparameters deliberately away from the defaults
RULES = {
    "sgd": (SGD, {}, lambda th, gs, lrs, wd: ref_sgd(th, gs, lrs, wd)),
    "momentum": (
        Momentum,
        {"momentum": 0.7},
        lambda th, gs, lrs, wd: ref_momentum(th, gs, lrs, 0.7, wd),
    ),
    "nesterov": (
        Nesterov,
        {"momentum": 0.8},
        lambda th, gs, lrs, wd: ref_nesterov(th, gs, lrs, 0.8, wd),
    ),
    "rmsprop": (
        RMSProp,
        {"rho": 0.8, "momentum": 0.6, "eps": 1e-6},
        lambda th, gs, lrs, wd: ref_rmsprop(th, gs, lrs, 0.8, 0.6, 1e-6, wd),
    ),
    "adam": (
        Adam,
        {"beta1": 0.8, "beta2": 0.95, "eps": 1e-6},
        lambda th, gs, lrs, wd: ref_adam(th, gs, lrs, 0.8, 0.95, 1e-6, wd),
    ),
    "nadam": (
        NAdam,
        {"beta1": 0.85, "beta2": 0.9, "eps": 1e-5},
        lambda th, gs, lrs, wd: ref_adam(th, gs, lrs, 0.85, 0.9, 1e-5, wd, nesterov=True),
    ),
}
SHAPES = [(7, 5), (11,), (2, 3, 4)]


def _problem(seed=0):
    """Initial parameters and STEPS gradients whose scale spans 1e-4 .. 1e2, with a
    changing learning rate (a warmup-like ramp) so LR placement in the rules matters."""
    rng = np.random.default_rng(seed)
    thetas = [rng.standard_normal(s) for s in SHAPES]
    grads = [
        [rng.standard_normal(s) * 10.0 ** rng.uniform(-4, 2, size=s) for s in SHAPES]
        for _ in range(STEPS)
    ]
    lrs = [0.02 * min(1.0, (k + 1) / 20) for k in range(STEPS)]
    return thetas, grads, lrs


def _run(cls, kw, thetas, grads, lrs, dtype, foreach, wd=0.0, decay_all=True):
    params = [torch.nn.Parameter(torch.tensor(t, dtype=dtype)) for t in thetas]
    opt = cls(
        params, lr=lrs[0], weight_decay=wd, decay_norms_and_biases=decay_all, foreach=foreach, **kw
    )
    traj = []
    for gs, lr in zip(grads, lrs, strict=True):
        for p, g in zip(params, gs, strict=True):
            p.grad = torch.tensor(g, dtype=dtype)
        for group in opt.param_groups:  # (as LambdaLR: every group)
            group["lr"] = lr
        opt.step()
        traj.append([p.detach().double().numpy().copy() for p in params])
    return traj


def _reference(ref, thetas, grads, lrs, wd):
    per_tensor = [ref(thetas[i], [g[i] for g in grads], lrs, wd) for i in range(len(SHAPES))]
    return [[per_tensor[i][k] for i in range(len(SHAPES))] for k in range(STEPS)]


@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "per_tensor"])
@pytest.mark.parametrize("name", list(RULES))
def test_rule_matches_float64_reference(name, foreach):
    cls, kw, ref = RULES[name]
    thetas, grads, lrs = _problem()
    got = _run(cls, kw, thetas, grads, lrs, torch.float64, foreach)
    want = _reference(ref, thetas, grads, lrs, 0.0)
    for k in range(STEPS):  # every step, every tensor
        for a, b in zip(got[k], want[k], strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=f"{name} step {k}")


@pytest.mark.parametrize("name", list(RULES))
def test_rule_float32_close_to_reference(name):
    cls, kw, ref = RULES[name]
    thetas, grads, lrs = _problem(1)
    got = _run(cls, kw, thetas, grads, lrs, torch.float32, True)[-1]
    want = _reference(ref, thetas, grads, lrs, 0.0)[-1]
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())


@pytest.mark.parametrize("name", list(RULES))
def test_decoupled_weight_decay(name):
    cls, kw, ref = RULES[name]
    thetas, grads, lrs = _problem(2)
    got = _run(cls, kw, thetas, grads, lrs, torch.float64, True, wd=0.1)[-1]
    want = _reference(ref, thetas, grads, lrs, 0.1)[-1]
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "per_tensor"])
@pytest.mark.parametrize("name", list(RULES))
def test_weight_decay_spares_biases_and_norm_gains_by_default(name, foreach):
    """decay_norms_and_biases=False: 1-D tensors follow the rule without decay."""
    cls, kw, ref = RULES[name]
    thetas, grads, lrs = _problem(8)
    got = _run(cls, kw, thetas, grads, lrs, torch.float64, foreach, wd=0.1, decay_all=False)[-1]
    for i, (a, theta) in enumerate(zip(got, thetas, strict=True)):
        wd = 0.1 if theta.ndim >= 2 else 0.0  # SHAPES[1] is the 1-D tensor
        want = ref(theta, [g[i] for g in grads], lrs, wd)[-1]
        np.testing.assert_allclose(a, want, rtol=1e-12, atol=1e-12)
    assert thetas[1].ndim == 1 and thetas[0].ndim == 2


@pytest.mark.parametrize("name", list(RULES))
def test_multi_tensor_equals_per_tensor(name):
    cls, kw, _ = RULES[name]
    thetas, grads, lrs = _problem(3)
    for dtype, tol in [(torch.float64, 1e-12), (torch.float32, 1e-5)]:
        a = _run(cls, kw, thetas, grads, lrs, dtype, True)
        b = _run(cls, kw, thetas, grads, lrs, dtype, False)
        for k in range(STEPS):
            for x, y in zip(a[k], b[k], strict=True):
                np.testing.assert_allclose(x, y, rtol=tol, atol=tol * np.abs(y).max())


@pytest.mark.parametrize("name", list(RULES))
def test_state_dict_round_trip_continues_identically(name):
    cls, kw, _ = RULES[name]
    thetas, grads, lrs = _problem(4)
    params = [torch.nn.Parameter(torch.tensor(t)) for t in thetas]
    opt = cls(params, lr=0.01, **kw)

    def steps(opt, params, ks):
        for k in ks:
            for p, g in zip(params, grads[k], strict=True):
                p.grad = torch.tensor(g)
            opt.step()

    steps(opt, params, range(30))
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "params": [p.detach() for p in params]}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)  # plain data only
    params2 = [torch.nn.Parameter(t.clone()) for t in saved["params"]]
    opt2 = cls(params2, lr=0.01, **kw)
    opt2.load_state_dict(saved["opt"])
    steps(opt, params, range(30, STEPS))
    steps(opt2, params2, range(30, STEPS))
    for p, q in zip(params, params2, strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize(
    "ours,torch_kw",
    [
        (lambda ps: SGD(ps, lr=0.05), {"lr": 0.05}),
        (lambda ps: Momentum(ps, lr=0.05, momentum=0.7), {"lr": 0.05, "momentum": 0.7}),
        (
            lambda ps: Nesterov(ps, lr=0.05, momentum=0.7),
            {"lr": 0.05, "momentum": 0.7, "nesterov": True},
        ),
    ],
    ids=["sgd", "momentum", "nesterov"],
)
def test_sgd_family_equals_torch_sgd(ours, torch_kw):
    thetas, grads, _ = _problem(5)
    a = [torch.nn.Parameter(torch.tensor(t)) for t in thetas]
    b = [torch.nn.Parameter(torch.tensor(t)) for t in thetas]
    oa, ob = ours(a), torch.optim.SGD(b, **torch_kw)
    for gs in grads:
        for p, q, g in zip(a, b, gs, strict=True):
            p.grad, q.grad = torch.tensor(g), torch.tensor(g)
        oa.step()
        ob.step()
    for p, q in zip(a, b, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)


def test_adam_differs_from_torch_adam():
    """The playbook's eps placement is not torch's: the difference shows when eps matters."""
    thetas, grads, _ = _problem(6)
    a = [torch.nn.Parameter(torch.tensor(t)) for t in thetas]
    b = [torch.nn.Parameter(torch.tensor(t)) for t in thetas]
    oa = Adam(a, lr=0.01, eps=1e-3)
    ob = torch.optim.Adam(b, lr=0.01, eps=1e-3)
    for gs in grads[:5]:
        for p, q, g in zip(a, b, gs, strict=True):
            p.grad, q.grad = torch.tensor(g) * 1e-3, torch.tensor(g) * 1e-3
        oa.step()
        ob.step()
    assert not torch.allclose(a[0], b[0], rtol=1e-6)


def test_parameter_groups_use_their_own_hyperparameters():
    thetas, grads, _ = _problem(7)
    p1 = torch.nn.Parameter(torch.tensor(thetas[0]))
    p2 = torch.nn.Parameter(torch.tensor(thetas[1]))
    opt = Adam([{"params": [p1]}, {"params": [p2], "lr": 0.001, "beta1": 0.5}], lr=0.01)
    for gs in grads[:20]:
        p1.grad, p2.grad = torch.tensor(gs[0]), torch.tensor(gs[1])
        opt.step()
    w1 = ref_adam(thetas[0], [g[0] for g in grads[:20]], [0.01] * 20, 0.9, 0.999, 1e-8)[-1]
    w2 = ref_adam(thetas[1], [g[1] for g in grads[:20]], [0.001] * 20, 0.5, 0.999, 1e-8)[-1]
    np.testing.assert_allclose(p1.detach().numpy(), w1, rtol=1e-12)
    np.testing.assert_allclose(p2.detach().numpy(), w2, rtol=1e-12)


@pytest.mark.parametrize("name", list(RULES))
def test_sparse_gradients_are_rejected(name):
    cls, kw, _ = RULES[name]
    emb = torch.nn.Embedding(10, 3, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    opt = cls(emb.parameters(), lr=0.1, **kw)
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()


def test_parameters_without_grad_are_skipped():
    a = torch.nn.Parameter(torch.ones(3))
    b = torch.nn.Parameter(torch.ones(3))
    opt = Adam([a, b], lr=0.1)
    a.grad = torch.ones(3)
    opt.step()
    assert torch.equal(b, torch.ones(3)) and not torch.equal(a, torch.ones(3))
    assert opt.state[a]["step"] == 1 and b not in opt.state
    opt2 = copy.deepcopy(opt)
    assert opt2.state_dict()["state"][0]["step"] == 1


# ------------------------------------------------------------------ skip-step mode
SKIP_RULES = [
    (SGD, {}), (Momentum, {}), (Nesterov, {}), (RMSProp, {"momentum": 0.9}),
    (Adam, {}), (NAdam, {}), (Adam, {"weight_decay": 0.1}),
]  # fmt: skip


def _grads(step: int, shapes) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(s, generator=g) for s in shapes]


def _trajectory(opt_cls, kw, skips: list[bool | None], foreach: bool = True):
    """Parameters after one step per entry: None = normal mode, True/False = skip mode."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
    opt = opt_cls(params, lr=0.01, foreach=foreach, **kw)
    for t, skip in enumerate(skips):
        for p, g in zip(params, _grads(t, [p.shape for p in params]), strict=True):
            p.grad = g
        opt.skip = None if skip is None else torch.tensor(skip)
        opt.step()
    return params, opt


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("opt_cls,kw", SKIP_RULES)
def test_a_skipped_step_leaves_parameters_and_state_untouched(opt_cls, kw, foreach):
    """Skip-step mode, step 3 skipped: parameters, every state tensor and the step count
    are bit for bit those after step 2; and the run then continues as if step 3's gradient
    had never come (against the same run without that step)."""
    before, ob = _trajectory(opt_cls, kw, [False, False, False], foreach)
    after, oa = _trajectory(opt_cls, kw, [False, False, False, True], foreach)
    for p, q in zip(before, after, strict=True):
        assert torch.equal(p, q)
        for k, v in ob.state[p].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(oa.state[q][k])), k
    # skip mode without a skip: the update of normal mode (Adam's bias correction is then
    # computed on the device, in float64: float32 rounding apart)
    normal, _ = _trajectory(opt_cls, kw, [None] * 5, foreach)
    skipping, _ = _trajectory(opt_cls, kw, [False] * 5, foreach)
    for p, q in zip(normal, skipping, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_a_skipped_step_is_as_if_its_gradient_never_came():
    """Adam: steps with gradients g0, g1, [g2 skipped], g3 end where g0, g1, g3 do (step
    counts, hence the bias correction, included)."""
    torch.manual_seed(0)

    def run(grads_at: list[int], skip_at: int | None):
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.randn(5))
        opt = Adam([p], lr=0.01)
        for i, t in enumerate(grads_at):
            p.grad = _grads(t, [(5,)])[0]
            opt.skip = torch.tensor(i == skip_at)
            opt.step()
        return p

    torch.testing.assert_close(run([0, 1, 2, 3], skip_at=2), run([0, 1, 3], None), rtol=0, atol=0)
