"""The playbook's six update rules, exactly as its FAQ writes them.

eta (``lr``) is the learning rate at the step (the schedule sets it each step), g the
gradient. ``torch.optim``'s RMSprop, Adam and NAdam differ from these formulas (eps inside
vs outside the root, v0 = 1, the LR inside RMSProp's momentum, NAdam's momentum schedule):
use these to follow the playbook to the letter.

Each optimizer has a plain per-tensor path (``foreach=False``, the formulas line by line)
and a multi-tensor path (``foreach=True``, default) built from ``torch._foreach_*`` ops
that computes the same thing in a few fused kernels. Step counts are Python ints, so no
step needs a host synchronisation.

Addition to the seed: optional decoupled weight decay ``weight_decay`` (default 0),
theta <- theta - eta * weight_decay * theta before the rule's update (as in AdamW), applied
to every parameter of a group whose ``weight_decay`` is not 0. Which parameters decay is
decided once, in parameter groups (as timm and nanoGPT do), not in the update: given plain
parameters, a rule makes two groups, weights (tensors of two or more dimensions) with
``weight_decay`` and the rest (biases, norm gains, ReZero scales) without, unless
``decay_norms_and_biases=True``; :func:`weight_decay_groups` does the same from named
parameters and also honours a model's ``no_weight_decay()`` (the LightningModule uses it).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from stablelab.constraints import NonNegFloat, PosFloat, Prob

__all__ = ["SGD", "Momentum", "Nesterov", "RMSProp", "Adam", "NAdam", "weight_decay_groups"]


def weight_decay_groups(
    named_params: Iterable[tuple[str, Tensor]],
    weight_decay: float,
    decay_norms_and_biases: bool = False,
    no_weight_decay: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """Parameter groups for decoupled weight decay: ``[{params: decayed, weight_decay},
    {params: the rest, weight_decay: 0}]`` (empty groups left out). Decayed: tensors of two
    or more dimensions (every tensor with ``decay_norms_and_biases``) whose name is not in
    ``no_weight_decay`` (names as ``named_parameters`` gives them; a name also excludes the
    tensors under it, ``"pos"`` -> ``"pos"`` and ``"pos.weight"``)."""
    skip = tuple(no_weight_decay)

    def excluded(name: str) -> bool:
        return any(name == k or name.startswith(k + ".") for k in skip)

    decay: list[torch.Tensor] = []
    rest: list[torch.Tensor] = []
    for name, p in named_params:
        if not p.requires_grad:
            continue
        wants = (decay_norms_and_biases or p.ndim >= 2) and not excluded(name)
        (decay if wants else rest).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def _groups(params: Iterable[Any], weight_decay: float, decay_all: bool) -> list[Any]:
    """Plain parameters -> the two weight-decay groups (by dimension); groups as given."""
    params = list(params)
    if not params or isinstance(params[0], dict) or not weight_decay:
        return params
    named = [(str(i), p) for i, p in enumerate(params)]
    return weight_decay_groups(named, weight_decay, decay_all)


class _PlaybookOptimizer(torch.optim.Optimizer):
    """Shared machinery: state init, sparse check, grouping by device/dtype, weight decay.

    Subclasses set ``buffers`` (name -> initial fill value) and implement ``_single`` and
    ``_multi``. ``state["step"]`` counts the updates applied to a parameter, including the
    current one (so it is t + 1 in the playbook's notation during an update).
    """

    buffers: dict[str, float] = {}
    # Skip-step mode (stablelab.remedies.SpikeSkipper sets it, inside the closure, for the
    # update about to be made): a 0-dim bool tensor on the device; when true the update is
    # computed and then undone, parameters and every state tensor restored bit for bit,
    # and the step count (a device tensor in this mode) not advanced. Never read on the host.
    skip: Tensor | None = None

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        skip, saved = self.skip, []
        if skip is not None:
            self.skip = None  # for this step only
            saved = self._snapshot()
        self._update()
        if skip is not None:
            self._restore_if(skip, saved)
        return loss

    def _snapshot(self) -> list[tuple[Tensor, Tensor]]:
        """(tensor, copy) for every parameter with a gradient and its state tensors (the
        state created first: a fresh state is part of what a skipped step leaves alone)."""
        out = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                self._init_state(p, state)
                if not isinstance(state["step"], Tensor):  # counts on the device from here
                    state["step"] = torch.tensor(float(state["step"]), device=p.device)
                out += [(t, t.clone()) for t in (p, *(state[n] for n in self.buffers))]
                out.append((state["step"], state["step"].clone()))
        return out

    @staticmethod
    def _restore_if(skip: Tensor, saved: list[tuple[Tensor, Tensor]]) -> None:
        for t, old in saved:
            t.copy_(torch.where(skip, old, t))  # exact either way, NaN-safe

    def _init_state(self, p: Tensor, state: dict) -> None:
        if not state:
            state["step"] = 0
            for name, fill in self.buffers.items():
                state[name] = torch.full_like(p, fill, memory_format=torch.preserve_format)

    def _update(self) -> None:
        for group in self.param_groups:
            buckets: dict[tuple, list[tuple[Tensor, Tensor, dict]]] = defaultdict(list)
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(
                        f"{type(self).__name__} does not support sparse gradients; "
                        "use dense gradients (e.g. nn.Embedding(sparse=False))"
                    )
                state = self.state[p]
                self._init_state(p, state)
                state["step"] += 1
                buckets[(p.device, p.dtype)].append((p, p.grad, state))
            lr, wd = group["lr"], group["weight_decay"]
            for items in buckets.values():
                params = [p for p, _, _ in items]
                grads = [g for _, g, _ in items]
                states = [s for _, _, s in items]
                if group["foreach"]:
                    if wd:  # (which tensors decay is the group's business: see the docstring)
                        torch._foreach_mul_(params, 1 - lr * wd)
                    self._multi(group, params, grads, states)
                else:
                    for p, g, s in items:
                        if wd:
                            p.mul_(1 - lr * wd)
                        self._single(group, p, g, s)

    def _single(self, group: dict, p: Tensor, g: Tensor, state: dict) -> None:
        raise NotImplementedError

    def _multi(self, group: dict, params: list[Tensor], grads: list[Tensor], states: list) -> None:
        raise NotImplementedError


class SGD(_PlaybookOptimizer):
    """Stochastic gradient descent: theta <- theta - eta * g."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: PosFloat,
        weight_decay: NonNegFloat = 0.0,
        decay_norms_and_biases: bool = False,
        foreach: bool = True,
    ) -> None:
        defaults = {"lr": lr, "weight_decay": weight_decay}
        super().__init__(
            _groups(params, weight_decay, decay_norms_and_biases),
            {**defaults, "foreach": foreach},
        )

    def _single(self, group, p, g, state):
        p.add_(g, alpha=-group["lr"])

    def _multi(self, group, params, grads, states):
        torch._foreach_add_(params, grads, alpha=-group["lr"])


class _WithMomentum(_PlaybookOptimizer):
    """The constructor of the two momentum rules: one velocity buffer v, coefficient gamma."""

    buffers = {"v": 0.0}

    def __init__(
        self,
        params: Iterable[Any],
        lr: PosFloat,
        momentum: Prob = 0.9,
        weight_decay: NonNegFloat = 0.0,
        decay_norms_and_biases: bool = False,
        foreach: bool = True,
    ) -> None:
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay}
        super().__init__(
            _groups(params, weight_decay, decay_norms_and_biases),
            {**defaults, "foreach": foreach},
        )


class Momentum(_WithMomentum):
    """Heavy-ball momentum: v_0 = 0; v <- gamma * v + g; theta <- theta - eta * v."""

    def _single(self, group, p, g, state):
        v = state["v"]
        v.mul_(group["momentum"]).add_(g)
        p.add_(v, alpha=-group["lr"])

    def _multi(self, group, params, grads, states):
        vs = [s["v"] for s in states]
        torch._foreach_mul_(vs, group["momentum"])
        torch._foreach_add_(vs, grads)
        torch._foreach_add_(params, vs, alpha=-group["lr"])


class Nesterov(_WithMomentum):
    """Nesterov momentum: v_0 = 0; v <- gamma * v + g; theta <- theta - eta * (gamma * v + g)."""

    def _single(self, group, p, g, state):
        gamma, lr = group["momentum"], group["lr"]
        v = state["v"]
        v.mul_(gamma).add_(g)
        p.sub_(v.mul(gamma).add_(g), alpha=lr)

    def _multi(self, group, params, grads, states):
        gamma, lr = group["momentum"], group["lr"]
        vs = [s["v"] for s in states]
        torch._foreach_mul_(vs, gamma)
        torch._foreach_add_(vs, grads)
        # theta - eta (gamma v + g) as two in-place adds: no temporary the size of the model
        torch._foreach_add_(params, vs, alpha=-lr * gamma)
        torch._foreach_add_(params, grads, alpha=-lr)


class RMSProp(_PlaybookOptimizer):
    """RMSProp with momentum, as the playbook writes it.

    v_0 = 1, m_0 = 0;
    v <- rho * v + (1 - rho) * g^2;
    m <- gamma * m + eta / sqrt(v + eps) * g     (eps inside the root, eta inside m);
    theta <- theta - m.
    """

    buffers = {"v": 1.0, "m": 0.0}

    def __init__(
        self,
        params: Iterable[Any],
        lr: PosFloat,
        rho: Prob = 0.9,
        momentum: Prob = 0.0,
        eps: PosFloat = 1e-8,  # > 0: a zero gradient would make 0 / 0
        weight_decay: NonNegFloat = 0.0,
        decay_norms_and_biases: bool = False,
        foreach: bool = True,
    ) -> None:
        defaults = {
            "lr": lr,
            "rho": rho,
            "momentum": momentum,
            "eps": eps,
            "weight_decay": weight_decay,
        }
        super().__init__(
            _groups(params, weight_decay, decay_norms_and_biases),
            {**defaults, "foreach": foreach},
        )

    def _single(self, group, p, g, state):
        rho, gamma, lr, eps = group["rho"], group["momentum"], group["lr"], group["eps"]
        v, m = state["v"], state["m"]
        v.mul_(rho).addcmul_(g, g, value=1 - rho)
        m.mul_(gamma).addcdiv_(g, v.add(eps).sqrt_(), value=lr)
        p.sub_(m)

    def _multi(self, group, params, grads, states):
        rho, gamma, lr, eps = group["rho"], group["momentum"], group["lr"], group["eps"]
        vs = [s["v"] for s in states]
        ms = [s["m"] for s in states]
        torch._foreach_mul_(vs, rho)
        torch._foreach_addcmul_(vs, grads, grads, value=1 - rho)
        denom = torch._foreach_add(vs, eps)
        torch._foreach_sqrt_(denom)
        torch._foreach_mul_(ms, gamma)
        torch._foreach_addcdiv_(ms, grads, denom, value=lr)
        torch._foreach_sub_(params, ms)


def _bias_correction(beta1: float, beta2: float, step: int | Tensor) -> float | Tensor:
    """b_{t+1} = sqrt(1 - beta2^{t+1}) / (1 - beta1^{t+1}) with step = t + 1 (a 0-dim
    device tensor in skip-step mode: then so is the result, in float64)."""
    if isinstance(step, Tensor):
        t = step.double()
        return torch.sqrt(1 - beta2**t) / (1 - beta1**t)
    return math.sqrt(1 - beta2**step) / (1 - beta1**step)


class Adam(_PlaybookOptimizer):
    """Adam, as the playbook writes it.

    m_0 = v_0 = 0;
    m <- beta1 * m + (1 - beta1) * g;   v <- beta2 * v + (1 - beta2) * g^2;
    b_{t+1} = sqrt(1 - beta2^{t+1}) / (1 - beta1^{t+1});
    theta <- theta - alpha * m / (sqrt(v) + eps) * b_{t+1}
    (eps outside the root, before the bias correction; torch.optim.Adam divides by
    sqrt(v_hat) + eps instead).
    """

    buffers = {"m": 0.0, "v": 0.0}

    def __init__(
        self,
        params: Iterable[Any],
        lr: PosFloat,
        beta1: Prob = 0.9,
        beta2: Prob = 0.999,
        eps: PosFloat = 1e-8,  # > 0: a zero gradient would make 0 / 0
        weight_decay: NonNegFloat = 0.0,
        decay_norms_and_biases: bool = False,
        foreach: bool = True,
    ) -> None:
        defaults = {
            "lr": lr,
            "beta1": beta1,
            "beta2": beta2,
            "eps": eps,
            "weight_decay": weight_decay,
        }
        super().__init__(
            _groups(params, weight_decay, decay_norms_and_biases),
            {**defaults, "foreach": foreach},
        )

    def _moments(self, group, g, state) -> tuple[Tensor, Tensor]:
        b1, b2 = group["beta1"], group["beta2"]
        m, v = state["m"], state["v"]
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        return m, v

    def _numerator(self, group, g: Tensor, m: Tensor) -> Tensor:
        return m

    def _single(self, group, p, g, state):
        m, v = self._moments(group, g, state)
        b = _bias_correction(group["beta1"], group["beta2"], state["step"])
        denom = v.sqrt().add_(group["eps"])
        if isinstance(b, Tensor):  # skip-step mode: b on the device
            denom.div_(b.to(denom.dtype))
            b = 1.0
        p.addcdiv_(self._numerator(group, g, m), denom, value=-group["lr"] * b)

    def _multi_update(self, group, params, grads, ms, denom, steps: list[float]) -> None:
        # theta <- theta + step * m / (sqrt(v) + eps), step = -alpha * b_{t+1}
        torch._foreach_addcdiv_(params, ms, denom, steps)

    def _multi(self, group, params, grads, states):
        b1, b2, lr, eps = group["beta1"], group["beta2"], group["lr"], group["eps"]
        ms = [s["m"] for s in states]
        vs = [s["v"] for s in states]
        torch._foreach_lerp_(ms, grads, 1 - b1)  # b1 m + (1 - b1) g in one pass
        torch._foreach_mul_(vs, b2)
        torch._foreach_addcmul_(vs, grads, grads, value=1 - b2)
        denom = torch._foreach_sqrt(vs)
        torch._foreach_add_(denom, eps)
        if isinstance(states[0]["step"], Tensor):  # skip-step mode: b on the device
            b = _bias_correction(b1, b2, states[0]["step"])  # (the bucket steps together)
            assert isinstance(b, Tensor)
            torch._foreach_div_(denom, b.to(denom[0].dtype))
            steps = [-lr] * len(params)
        else:
            steps = [-lr * _bias_correction(b1, b2, s["step"]) for s in states]
        self._multi_update(group, params, grads, ms, denom, steps)


class NAdam(Adam):
    """NAdam, as the playbook writes it: Adam's m, v and b_{t+1}, with the update

    theta <- theta - alpha * (beta1 * m + (1 - beta1) * g) / (sqrt(v) + eps) * b_{t+1}

    (a fixed beta1 in the look-ahead; torch.optim.NAdam uses Dozat's momentum schedule).
    """

    def _numerator(self, group, g, m):
        b1 = group["beta1"]
        return m.mul(b1).add_(g, alpha=1 - b1)

    def _multi_update(self, group, params, grads, ms, denom, steps):
        # the numerator b1 m + (1 - b1) g split into two in-place updates (no temporary)
        b1 = group["beta1"]
        torch._foreach_addcdiv_(params, ms, denom, [s * b1 for s in steps])
        torch._foreach_addcdiv_(params, grads, denom, [s * (1 - b1) for s in steps])
