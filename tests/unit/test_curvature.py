"""Sharpness (Lanczos on Hessian-vector products), the rules' stability thresholds and the
gradient-noise-scale estimator, against closed forms and exact float64 Hessians."""

from __future__ import annotations

import math

import pytest
import torch

from stablelab.curvature import (
    inverse_sqrt_preconditioner,
    lanczos_top,
    noise_scale_terms,
    thresholds,
    top_eigenvalue,
)
from stablelab.optim import SGD, Adam, Momentum, Nesterov, RMSProp


def _spd(n: int, eigs: list[float], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigs, dtype=torch.float64)) @ q.T


def test_quadratic_sharpness_is_its_largest_eigenvalue():
    """0.5 x^T A x (+ a linear term, which the Hessian ignores): H = A exactly."""
    eigs = [7.5, 3.0, 2.9, 1.0, 0.5, 0.1, -0.3, -2.0]
    A = _spd(8, eigs)
    x = torch.randn(8, dtype=torch.float64, requires_grad=True)
    b = torch.randn(8, dtype=torch.float64)
    loss = 0.5 * x @ A @ x + b @ x
    assert top_eigenvalue(loss, [x], iterations=8) == pytest.approx(7.5, rel=1e-12)
    # split into two parameter tensors of other shapes: the same operator
    y = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    z = torch.randn(2, dtype=torch.float64, requires_grad=True)
    v = torch.cat([y.reshape(-1), z])
    loss = 0.5 * v @ A @ v
    assert top_eigenvalue(loss, [y, z], iterations=8) == pytest.approx(7.5, rel=1e-12)


def test_lanczos_finds_the_top_of_a_large_spectrum_in_few_iterations():
    """500 eigenvalues, 30 iterations: the largest (well separated) to 1e-9."""
    g = torch.Generator().manual_seed(1)
    eigs = torch.rand(500, generator=g, dtype=torch.float64) * 10
    eigs[0] = 40.0
    A = _spd(500, eigs.tolist(), seed=2)
    top = lanczos_top(lambda v: [A @ v[0]], [torch.zeros(500, dtype=torch.float64)], 30)
    assert top == pytest.approx(40.0, rel=1e-9)


def _net_and_loss():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)
    ).double()
    x = torch.randn(40, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (40,))
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    sizes = [p.numel() for p in net.parameters()]

    def loss_of(flat: torch.Tensor) -> torch.Tensor:
        chunks = torch.split(flat, sizes)
        params = {n: c.view(s) for n, c, s in zip(names, chunks, shapes, strict=True)}
        out = torch.func.functional_call(net, params, (x,))
        return torch.nn.functional.cross_entropy(out, y)

    return net, x, y, loss_of


def test_small_network_sharpness_matches_its_exact_hessian():
    net, x, y, loss_of = _net_and_loss()
    flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    H = torch.autograd.functional.hessian(loss_of, flat)
    exact = torch.linalg.eigvalsh(H)[-1].item()
    loss = torch.nn.functional.cross_entropy(net(x), y)
    got = top_eigenvalue(loss, list(net.parameters()), iterations=40)
    assert got == pytest.approx(exact, rel=1e-9)
    # preconditioned: the top eigenvalue of P^-1 H for a positive diagonal P
    P = torch.rand(flat.numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    P = 0.1 + P
    exact_pre = torch.linalg.eigvals(torch.diag(1 / P) @ H).real.max().item()
    d = [c.view(p.shape) for c, p in zip(torch.split(P.rsqrt(), [p.numel() for p in
         net.parameters()]), net.parameters(), strict=True)]  # fmt: skip
    loss = torch.nn.functional.cross_entropy(net(x), y)
    got = top_eigenvalue(loss, list(net.parameters()), iterations=60, precondition=d)
    assert got == pytest.approx(exact_pre, rel=1e-8)


def _stepped(opt_cls, **kw):
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    opt = opt_cls([p], **kw)
    for t in range(3):
        p.grad = torch.tensor([0.3, -0.1, 2.0], dtype=torch.float64) * (t + 1)
        opt.step()
    return p, opt


def test_adam_preconditioner_is_sqrt_v_plus_eps_over_the_bias_correction():
    p, opt = _stepped(Adam, lr=0.1, beta2=0.99, eps=1e-3)
    (d,) = inverse_sqrt_preconditioner(opt)
    # v after three steps of g_t = (t+1) g0, computed here in float64
    g0 = torch.tensor([0.3, -0.1, 2.0], dtype=torch.float64)
    v = sum(0.01 * 0.99 ** (2 - t) * ((t + 1) * g0) ** 2 for t in range(3))
    P = (v.sqrt() + 1e-3) / math.sqrt(1 - 0.99**3)
    torch.testing.assert_close(d, P.rsqrt(), rtol=1e-12, atol=0)
    _, rms = _stepped(RMSProp, lr=0.1, rho=0.9, eps=1e-3)
    (d,) = inverse_sqrt_preconditioner(rms)
    v = 0.9**3 + sum(0.1 * 0.9 ** (2 - t) * ((t + 1) * g0) ** 2 for t in range(3))  # v_0 = 1
    torch.testing.assert_close(d, (v + 1e-3).sqrt().rsqrt(), rtol=1e-12, atol=0)  # P^-1/2
    assert inverse_sqrt_preconditioner(_stepped(Momentum, lr=0.1)[1]) is None


def _run_quadratic(opt_cls, lam: float, lr: float, steps: int = 3000, **kw) -> float:
    x = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = opt_cls([x], lr=lr, **kw)
    for _ in range(steps):
        x.grad = lam * x.detach().clone()
        opt.step()
    return abs(x.item())


@pytest.mark.parametrize("opt_cls,kw", [(SGD, {}), (Momentum, {"momentum": 0.9}),
                                        (Momentum, {"momentum": 0.5})])  # fmt: skip
def test_thresholds_separate_convergence_from_divergence_on_a_quadratic(opt_cls, kw):
    """The rule itself, on 0.5 lam x^2: just below the threshold it converges, just above
    it blows up (the threshold is a closed form; this checks it against the update)."""
    lam = 4.0
    probe = opt_cls([torch.nn.Parameter(torch.zeros(1))], lr=1.0, **kw)
    edge_lr = thresholds(probe, 1.0)["sharpness"] / lam  # lam = threshold(lr) <=> lr = T(1)/lam
    assert _run_quadratic(opt_cls, lam, 0.98 * edge_lr, **kw) < 1e-6
    assert _run_quadratic(opt_cls, lam, 1.02 * edge_lr, **kw) > 1e6


def test_adam_threshold_is_38_over_lr_at_beta1_0_9_and_others_have_none():
    adam = Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    assert thresholds(adam, 0.01) == {"sharpness": None, "preconditioned": pytest.approx(3800)}
    nest = Nesterov([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    assert thresholds(nest, 0.01) == {"sharpness": None, "preconditioned": None}


def test_noise_scale_estimator_recovers_trace_sigma_over_g_squared():
    """Per-example gradients ~ N(mu, Sigma) (known): squared norms of means over 8 and over
    64 examples, averaged over 4000 draws, give |mu|^2 and tr(Sigma) within 3%."""
    g = torch.Generator().manual_seed(0)
    d = 20
    mu = torch.randn(d, generator=g, dtype=torch.float64)
    L = torch.randn(d, d, generator=g, dtype=torch.float64) * 0.5
    Sigma = L @ L.T
    small_sq, big_sq = [], []
    for _ in range(4000):
        z = mu + torch.randn(64, d, generator=g, dtype=torch.float64) @ L.T
        small_sq.append(z[:8].mean(0).square().sum().item())
        big_sq.append(z.mean(0).square().sum().item())
    g2, trace = noise_scale_terms(sum(small_sq) / 4000, sum(big_sq) / 4000, 8, 64)
    assert g2 == pytest.approx(mu.square().sum().item(), rel=0.03)
    assert trace == pytest.approx(torch.trace(Sigma).item(), rel=0.03)
    with pytest.raises(ValueError):
        noise_scale_terms(1.0, 1.0, 64, 8)


def test_piece_gradient_norms_match_per_example_gradients():
    """A second implementation: per-example gradients by torch.func (vmap of grad) in
    float64, averaged within each piece by hand."""
    from stablelab.curvature import piece_gradient_norms

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    net = net.double()
    x = torch.randn(26, 4, dtype=torch.float64)  # 26 = 4 pieces of 6, 2 dropped
    y = torch.randint(0, 3, (26,))
    params = dict(net.named_parameters())

    def one(p, xi, yi):
        out = torch.func.functional_call(net, p, (xi[None],))
        return torch.nn.functional.cross_entropy(out, yi[None])

    per = torch.func.vmap(torch.func.grad(one), in_dims=(None, 0, 0))(params, x, y)
    flat = torch.cat([g.reshape(26, -1) for g in per.values()], dim=1)  # (26, n_params)
    pieces = flat[:24].reshape(4, 6, -1).mean(1)  # each piece's mean gradient
    want_small = pieces.square().sum(1).mean().item()
    want_big = pieces.mean(0)

    def objective(xb, yb):
        return torch.nn.functional.cross_entropy(net(xb), yb)

    small, grads, b = piece_gradient_norms(objective, list(net.parameters()), x, y, 4)
    assert b == 6
    assert small.item() == pytest.approx(want_small, rel=1e-12)
    torch.testing.assert_close(torch.cat([g.reshape(-1) for g in grads]), want_big)
    with pytest.raises(ValueError, match="cannot be split"):
        piece_gradient_norms(objective, list(net.parameters()), x[:3], y[:3], 4)


def test_the_preconditioner_follows_the_measured_parameters_order_with_weight_decay():
    """With weight decay the rule holds two parameter groups (weights, then biases), not the
    module's order (weight, bias, weight, bias): the preconditioned sharpness must pair each
    parameter with its own P. Against a dense float64 reference: the top eigenvalue of
    P^-1 H, with P built here from each parameter's own second moment (a GPT with weight
    decay used to crash, a model whose shapes happened to line up would have been wrong)."""
    net, x, y, loss_of = _net_and_loss()
    params = list(net.parameters())
    opt = Adam(params, lr=0.01, beta2=0.99, eps=1e-8, weight_decay=0.1)
    assert [p.ndim for g in opt.param_groups for p in g["params"]] == [2, 2, 1, 1]
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    d = inverse_sqrt_preconditioner(opt, params)
    assert [t.shape for t in d] == [p.shape for p in params]
    P = torch.cat([
        ((opt.state[p]["v"].sqrt() + 1e-8) / math.sqrt(1 - 0.99**3)).reshape(-1) for p in params
    ])  # fmt: skip
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    H = torch.autograd.functional.hessian(loss_of, flat)
    exact = torch.linalg.eigvals(torch.diag(1 / P) @ H).real.max().item()
    loss = torch.nn.functional.cross_entropy(net(x), y)
    got = top_eigenvalue(loss, params, iterations=60, precondition=d)
    assert got == pytest.approx(exact, rel=1e-8)
    # a parameter the optimizer does not update: no preconditioner to pair it with
    assert inverse_sqrt_preconditioner(opt, [*params, torch.nn.Parameter(torch.ones(2))]) is None


def test_a_model_compiled_in_place_is_measured_eagerly():
    """compile=true compiles the model in place (nn.Module.compile), whose backward has no
    double backward; the sharpness callback runs it eagerly (_eager): no compilation, and
    the Hessian-vector product is an uncompiled copy's, exactly. Afterwards the module is
    still the compiled one."""
    import copy

    from stablelab.callbacks.curvature import _eager
    from stablelab.curvature import hessian_operator

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1))
    ref = copy.deepcopy(net)
    net.compile()
    x = torch.randn(8, 4)
    v = [torch.randn_like(p) for p in net.parameters()]

    def hvp(m):
        loss = m(x).pow(2).mean()
        return hessian_operator(loss, list(m.parameters()))(v)

    with _eager(net):
        got = hvp(net)
    for a, b in zip(got, hvp(ref), strict=True):
        assert torch.equal(a, b)
    assert net._compiled_call_impl is not None  # (compiled again outside)
