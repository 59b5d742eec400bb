"""Curvature and gradient noise: the instruments behind ``callbacks.sharpness`` and
``callbacks.noise_scale`` (torch only; no Lightning).

Sharpness (Cohen et al. 2021, 2022): the top eigenvalue of the Hessian H of the training
loss on a fixed batch, by Lanczos iteration on Hessian-vector products (double backward
through one retained graph, full re-orthogonalisation, the Ritz values of the tridiagonal
matrix in float64). For an adaptive rule with preconditioner P (a positive diagonal), the
preconditioned sharpness is the top eigenvalue of P^-1 H, computed as that of the
symmetric P^-1/2 H P^-1/2 (same eigenvalues).

Stability thresholds (a quadratic with curvature lambda is stable under the rule at
learning rate eta exactly when lambda is below them):

* gradient descent: 2 / eta;
* heavy-ball momentum gamma (the playbook's Momentum, v <- gamma v + g): (2 + 2 gamma) / eta;
* Adam (on the preconditioned sharpness, P = diag(sqrt(v_hat) + eps_hat)):
  (2 + 2 beta1) / ((1 - beta1) eta), 38 / eta at beta1 = 0.9 (Cohen et al. 2022).

No threshold is given for Nesterov, RMSProp or NAdam (none is published in the form these
rules take); their sharpness (and, for RMSProp and NAdam, the preconditioned one) is still
measured.

Gradient noise scale (McCandlish et al. 2018): B_simple = tr(Sigma) / |G|^2 from squared
gradient norms at two batch sizes, see :func:`noise_scale_terms`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor


# ---------------------------------------------------------------------- Hessian products
def hessian_operator(
    loss: Tensor, params: Sequence[Tensor]
) -> Callable[[list[Tensor]], list[Tensor]]:
    """v -> H v for the Hessian of ``loss`` with respect to ``params`` (one graph, kept for
    every product). ``v`` and the result are lists shaped like ``params``."""
    grads = torch.autograd.grad(loss, list(params), create_graph=True)

    def hvp(v: list[Tensor]) -> list[Tensor]:
        out = torch.autograd.grad(grads, list(params), grad_outputs=v, retain_graph=True)
        return [o.detach() for o in out]

    return hvp


def lanczos_top(
    matvec: Callable[[list[Tensor]], list[Tensor]],
    like: Sequence[Tensor],
    iterations: int = 20,
    seed: int = 0,
    tol: float = 1e-10,
) -> float:
    """The largest eigenvalue of the symmetric operator ``matvec`` on vectors shaped like
    ``like``: ``iterations`` Lanczos steps from a seeded random start, with full
    re-orthogonalisation (so a few dozen steps are exact to the precision of the
    products); the largest Ritz value, in float64. Stops early when the Krylov space is
    exhausted (then the value is exact)."""
    shapes = [p.shape for p in like]
    sizes = [p.numel() for p in like]
    dtype, device = like[0].dtype, like[0].device

    def split(x: Tensor) -> list[Tensor]:
        return [c.view(s).to(dtype) for c, s in zip(torch.split(x, sizes), shapes, strict=True)]

    def flat(xs: list[Tensor]) -> Tensor:
        return torch.cat([x.reshape(-1) for x in xs]).double()

    n = sum(sizes)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn(n, generator=gen, dtype=torch.float64).to(device)
    q /= q.norm()
    basis = [q]
    alphas: list[Tensor] = []
    betas: list[Tensor] = []
    for _ in range(min(iterations, n)):
        w = flat(matvec(split(q)))
        alpha = torch.dot(w, q)
        w = w - alpha * q - (betas[-1] * basis[-2] if betas else 0.0)
        Q = torch.stack(basis)
        for _ in range(2):  # full re-orthogonalisation, twice is enough
            w = w - Q.T @ (Q @ w)
        beta = w.norm()
        alphas.append(alpha)
        if float(beta) <= tol * max(1.0, float(alpha.abs())):
            break
        betas.append(beta)
        q = w / beta
        basis.append(q)
    k = len(alphas)
    T = torch.diag(torch.stack(alphas))
    if k > 1:
        off = torch.stack(betas[: k - 1])
        T = T + torch.diag(off, 1) + torch.diag(off, -1)
    return float(torch.linalg.eigvalsh(T.cpu())[-1])


def top_eigenvalue(
    loss: Tensor,
    params: Sequence[Tensor],
    iterations: int = 20,
    seed: int = 0,
    precondition: Sequence[Tensor] | None = None,
) -> float:
    """The sharpness of ``loss`` at ``params``; with ``precondition`` = the diagonal of
    P^-1/2 (one tensor per parameter), the top eigenvalue of P^-1 H instead."""
    hvp = hessian_operator(loss, params)
    if precondition is not None:
        hvp = preconditioned_operator(hvp, precondition)
    return lanczos_top(hvp, params, iterations, seed)


def preconditioned_operator(
    hvp: Callable[[list[Tensor]], list[Tensor]], d: Sequence[Tensor]
) -> Callable[[list[Tensor]], list[Tensor]]:
    """v -> D H D v with D = P^-1/2 (one tensor per parameter): symmetric, with the
    eigenvalues of P^-1 H."""

    def op(v: list[Tensor]) -> list[Tensor]:
        hv = hvp([di * vi for di, vi in zip(d, v, strict=True)])
        return [di * h for di, h in zip(d, hv, strict=True)]

    return op


# ---------------------------------------------------------------------- the rules
def inverse_sqrt_preconditioner(
    optimizer: torch.optim.Optimizer, params: Sequence[Tensor] | None = None
) -> list[Tensor] | None:
    """P^-1/2 for each of ``params`` (default: every parameter of ``optimizer``, in its
    groups' order), for the adaptive playbook rules; None for the others, before the first
    update, or when the optimizer does not update one of ``params``.

    * Adam / NAdam: the update is eta b_t m / (sqrt(v) + eps) with
      b_t = sqrt(1 - beta2^t) / (1 - beta1^t), i.e. eta m_hat / P with
      P = (sqrt(v) + eps) / sqrt(1 - beta2^t);
    * RMSProp: m <- gamma m + eta g / sqrt(v + eps), so P = sqrt(v + eps).
    """
    from stablelab.optim.rules import Adam, RMSProp

    by_param: dict[int, Tensor] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p) or {}
            if "v" not in state:
                return None
            v = state["v"]
            if isinstance(optimizer, Adam):  # NAdam too
                c = math.sqrt(1 - group["beta2"] ** state["step"])
                P = (v.sqrt() + group["eps"]) / c
            elif isinstance(optimizer, RMSProp):
                P = (v + group["eps"]).sqrt()
            else:
                return None
            by_param[id(p)] = P.rsqrt()
    if params is None:  # the optimizer's order (its groups one after the other)
        return list(by_param.values())
    if any(id(p) not in by_param for p in params):  # a parameter this optimizer does not update
        return None
    return [by_param[id(p)] for p in params]


def thresholds(optimizer: torch.optim.Optimizer, lr: float) -> dict[str, float | None]:
    """The stability thresholds of ``optimizer``'s rule at learning rate ``lr``:
    ``sharpness`` (on the Hessian) and ``preconditioned`` (on P^-1 H); None where none
    applies (see the module docstring)."""
    from stablelab.optim.rules import SGD, Adam, Momentum, NAdam

    group = optimizer.param_groups[0]
    if lr <= 0:  # (the first warmup step) every curvature is stable at a zero LR
        return {"sharpness": None, "preconditioned": None}
    if type(optimizer) is SGD:
        return {"sharpness": 2.0 / lr, "preconditioned": None}
    if type(optimizer) is Momentum:
        return {"sharpness": (2.0 + 2.0 * group["momentum"]) / lr, "preconditioned": None}
    if isinstance(optimizer, Adam) and not isinstance(optimizer, NAdam):
        b1 = group["beta1"]
        return {"sharpness": None, "preconditioned": (2.0 + 2.0 * b1) / ((1.0 - b1) * lr)}
    return {"sharpness": None, "preconditioned": None}


# ---------------------------------------------------------------------- gradient noise
def noise_scale_terms(
    small_sq: float, big_sq: float, b_small: float, b_big: float
) -> tuple[float, float]:
    """Unbiased estimates of (|G|^2, tr(Sigma)) from the squared norms of gradients
    averaged over ``b_small`` and over ``b_big`` examples (McCandlish et al. 2018, App. A):

    |G|^2 ~ (b_big |g_big|^2 - b_small |g_small|^2) / (b_big - b_small),
    tr(Sigma) ~ (|g_small|^2 - |g_big|^2) / (1 / b_small - 1 / b_big).

    B_simple = tr(Sigma) / |G|^2, with both averaged over steps before dividing."""
    if not b_big > b_small > 0:
        raise ValueError(f"need b_big > b_small > 0, got {b_small}, {b_big}")
    g2 = (b_big * big_sq - b_small * small_sq) / (b_big - b_small)
    trace = (small_sq - big_sq) / (1.0 / b_small - 1.0 / b_big)
    return g2, trace


def piece_gradient_norms(
    objective: Callable[[Tensor, Tensor], Tensor],
    params: Sequence[Tensor],
    x: Tensor,
    y: Tensor,
    pieces: int,
) -> tuple[Tensor, list[Tensor], int]:
    """The batch split into ``pieces`` equal pieces (the remainder dropped): the mean over
    pieces of each piece's squared gradient norm (float64, on the device), the mean of the
    pieces' gradients (the gradient of the batch, one tensor per parameter) and the piece
    size. ``objective(x, y)`` is the mean loss of a batch."""
    b = len(x) // pieces
    if b < 1:
        raise ValueError(f"a batch of {len(x)} cannot be split into {pieces} pieces")
    small_sq = torch.zeros((), dtype=torch.float64, device=x.device)
    total: list[Tensor] | None = None
    for i in range(pieces):
        sl = slice(i * b, (i + 1) * b)
        grads = torch.autograd.grad(objective(x[sl], y[sl]), list(params))
        small_sq += sum(g.double().square().sum() for g in grads)
        total = (
            [g.double() for g in grads]
            if total is None
            else [t + g.double() for t, g in zip(total, grads, strict=True)]
        )
    assert total is not None
    return small_sq / pieces, [t / pieces for t in total], b
