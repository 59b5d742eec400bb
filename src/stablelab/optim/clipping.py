"""Gradient clipping strategies.

Each strategy is called once per optimizer step with the parameters whose ``.grad`` holds
the full (all-reduced, unscaled, accumulated) gradient, and returns the unclipped global L2
norm as a 0-dim tensor on the gradients' device: no host synchronisation.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from stablelab.config import PosFloat


def _grads(params: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    return [p.grad for p in params if p.grad is not None]


def global_grad_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """||g||_2 over all gradient tensors, computed in float32 (or wider) on the device."""
    if not grads:
        return torch.zeros(())
    norms = torch._foreach_norm(grads, 2)
    return torch.linalg.vector_norm(torch.stack([n.float() for n in norms]), 2)


class NoClip:
    """No clipping: g' = g. (Still measures the unclipped norm.)"""

    def __call__(self, params: Iterable[torch.Tensor]) -> torch.Tensor:
        return global_grad_norm(_grads(params))


class FixedNorm:
    """Clip the global norm at a fixed threshold (the playbook's rule).

    if ||g|| > lambda then g' = lambda * g / ||g||, else g' = g; lambda = ``clip_threshold``.
    Computed as g' = min(1, lambda / ||g||) * g on the device.
    """

    def __init__(self, clip_threshold: PosFloat) -> None:
        self.clip_threshold = float(clip_threshold)

    def __call__(self, params: Iterable[torch.Tensor]) -> torch.Tensor:
        grads = _grads(params)
        norm = global_grad_norm(grads)
        if grads:
            coef = torch.clamp(self.clip_threshold / norm, max=1.0)
            torch._foreach_mul_(grads, coef.to(grads[0].dtype))
        return norm
