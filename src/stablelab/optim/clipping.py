"""Gradient clipping strategies.

Each strategy is called once per optimizer step with the model's named parameters, whose
``.grad`` holds the full gradient (after DDP's all-reduce, AMP unscaling and gradient
accumulation: Lightning calls ``configure_gradient_clipping`` there). It clips the
gradients in place and returns :class:`ClipStats`, 0-dim tensors on the gradients' device:
nothing here synchronises with the host (no ``.item()``, no Python ``if`` on a tensor), and
step counters are Python ints. Because the inputs are the all-reduced gradients, every
rank computes the same norm, the same threshold and the same factor.

Strategies (``configs/clipping/``):

* :class:`NoClip` - measure only.
* :class:`FixedNorm` - the playbook's rule with a fixed lambda.
* :class:`PercentileClip` - lambda = p-th percentile of the norms seen so far (the
  playbook's "90th percentile" made automatic; AutoClip, Seetharaman et al. 2020).
* :class:`ZScoreClip` - clip norms that spike above running mean + z * std (ZClip,
  Kumar et al. 2025).
* :class:`AGC` - unit-wise adaptive gradient clipping by the gradient/weight norm ratio
  (Brock et al. 2021, NFNets).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Literal, TypeGuard

import torch
from torch import Tensor

try:  # FSDP2 gradients (torch.distributed._tensor before torch 2.5)
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover
    try:
        from torch.distributed._tensor import DTensor
    except ImportError:  # torch built without torch.distributed
        DTensor = ()  # type: ignore[assignment,misc]

from stablelab.constraints import NonNegInt, PosFloat, PosInt, Range

Percent = Annotated[float, Range(gt=0, lt=100)]
OpenUnit = Annotated[float, Range(gt=0, lt=1)]


@dataclass
class ClipStats:
    """One step's telemetry: 0-dim tensors on the gradients' device (the norm's dtype)."""

    grad_norm: Tensor  # unclipped global L2 norm
    grad_norm_clipped: Tensor  # global L2 norm after clipping
    clipped: Tensor  # 1.0 if this step's gradient was changed, else 0.0
    threshold: Tensor  # the global-norm threshold used (inf: none; nan: not global, AGC)


def is_dtensor(t: Tensor) -> TypeGuard[DTensor]:
    return bool(DTensor) and isinstance(t, DTensor)


def global_grad_norm(grads: Sequence[Tensor]) -> Tensor:
    """||g||_2 over all gradient tensors, on the device: per-tensor norms (one fused
    ``_foreach_norm``), then the norm of those, in float32 (float64 for float64 grads).

    Gradients sharded across ranks (FSDP2: DTensors) are measured the torch way, as
    torchtitan does: ``torch.nn.utils.get_total_norm`` over the DTensors (a partial norm per
    rank), then ``full_tensor()`` (one all-reduce, no host sync): the norm of the full
    gradient, the same on every rank."""
    grads = list(grads)
    if any(is_dtensor(g) for g in grads):
        total = torch.nn.utils.get_total_norm(grads, 2.0, foreach=True)
        return total.full_tensor() if is_dtensor(total) else total
    norms = torch._foreach_norm(grads, 2)
    dtypes = {n.dtype for n in norms}
    dtype = torch.float64 if torch.float64 in dtypes else torch.float32
    if dtypes == {dtype}:  # the common case: one stack, no per-tensor casts
        stacked = torch.stack(norms)
    else:
        stacked = torch.stack([n.to(dtype) for n in norms])
    return torch.linalg.vector_norm(stacked, 2)


def local_shard(t: Tensor) -> Tensor:
    """A DTensor's local shard (FSDP2), which in-place ops on it change; else ``t``."""
    return t.to_local() if is_dtensor(t) else t


def _grads(named_params: Iterable[tuple[str, Tensor]]) -> list[tuple[str, Tensor, Tensor]]:
    return [(n, p, p.grad) for n, p in named_params if p.grad is not None]


class GlobalNormClipper:
    """Base for strategies that scale the whole gradient: g' = min(1, lambda / ||g||) g.

    Subclasses choose lambda (``_threshold``) and may update state from the norm;
    ``clips = False`` measures only. Sharded (FSDP2) gradients need nothing special: the
    norm is the full gradient's (:func:`global_grad_norm`) and each rank scales its shard.
    """

    clips = True

    def _threshold(self, norm: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, named_params: Iterable[tuple[str, Tensor]]) -> ClipStats:
        grads = [g for _, _, g in _grads(named_params)]
        if not grads:
            z = torch.zeros(())
            return ClipStats(z, z, z, torch.full((), float("inf")))
        norm = global_grad_norm(grads)
        lam = self._threshold(norm)
        # lambda / ||g|| is inf for a zero gradient: clamped to 1 (unchanged)
        coef = torch.clamp(lam / norm, max=1.0)
        clipped = norm > lam
        if self.clips:  # in place on each rank's shard (the whole tensor unsharded)
            local = [local_shard(g) for g in grads]
            torch._foreach_mul_(local, coef.to(local[0].dtype))
        return ClipStats(norm, torch.minimum(norm, lam), clipped.to(norm.dtype), lam.to(norm.dtype))


class NoClip(GlobalNormClipper):
    """No clipping (g' = g); the unclipped norm is still measured and logged."""

    clips = False

    def _threshold(self, norm: Tensor) -> Tensor:
        return torch.full_like(norm, float("inf"))


class FixedNorm(GlobalNormClipper):
    """The playbook's rule: if ||g|| > lambda then g' = lambda * g / ||g||.

    lambda = ``clip_threshold``; the playbook suggests starting from the 90th percentile of
    the unclipped norms of a run (``stablelab clip-threshold RUN_DIR``).
    """

    def __init__(self, clip_threshold: PosFloat) -> None:
        self.clip_threshold = float(clip_threshold)

    def _threshold(self, norm: Tensor) -> Tensor:
        return torch.full_like(norm, self.clip_threshold)


class _History:
    """A ring buffer of the last ``size`` norms on the device (host-side counters)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.buf: Tensor | None = None
        self.count = 0

    def append(self, x: Tensor) -> None:
        if self.buf is None:  # float32, or float64 for float64 gradients
            dtype = torch.promote_types(x.dtype, torch.float32)
            self.buf = torch.zeros(self.size, dtype=dtype, device=x.device)
        self.buf[self.count % self.size] = x  # python int index: no sync
        self.count += 1

    def values(self) -> Tensor:
        assert self.buf is not None
        return self.buf[: min(self.count, self.size)]


class PercentileClip(GlobalNormClipper):
    """lambda_t = the ``percentile``-th percentile of the unclipped norms seen so far.

    The current step's norm is included (as AutoClip does: Seetharaman et al. 2020, who
    favour a low percentile such as 10; the playbook's starting point is 90). No clipping
    during the first ``warmup_steps`` steps. The history is the last ``history_size`` norms,
    kept on the device (float32, float64 for float64 gradients); the percentile with
    linear interpolation (numpy's default). A non-finite norm (a float16 overflow that the
    GradScaler skips, a step that ``skip_spikes`` skips) holds its place in the history as
    NaN and is left out of the percentile (``torch.nanquantile``): one such step would
    otherwise make every later threshold NaN until it left the history.
    """

    def __init__(
        self,
        percentile: Percent = 90.0,
        warmup_steps: NonNegInt = 25,
        history_size: PosInt = 10_000,
    ) -> None:
        self.percentile = float(percentile)
        self.warmup_steps = int(warmup_steps)
        self.history = _History(int(history_size))

    def _threshold(self, norm: Tensor) -> Tensor:
        self.history.append(torch.where(torch.isfinite(norm), norm, torch.nan))
        if self.history.count <= self.warmup_steps:
            return torch.full_like(norm, float("inf"))
        return torch.nanquantile(self.history.values(), self.percentile / 100.0)

    def state_dict(self) -> dict:
        return {"buf": self.history.buf, "count": self.history.count}

    def load_state_dict(self, state: dict) -> None:
        self.history.buf, self.history.count = state["buf"], int(state["count"])


class ZScoreClip(GlobalNormClipper):
    """Clip norm spikes by their z-score against running statistics (ZClip, 2025).

    Warm-up: the first ``warmup_steps`` norms set mean mu and variance s^2 (population),
    unclipped. Then with z = (g - mu) / (s + eps): when z > ``z_threshold`` the norm is
    clipped to mu + z_thr * s / (z / z_thr) (``mode: adaptive``) or to mu (``mode: mean``);
    the statistics follow the *clipped* norm g_c with an EMA of factor ``alpha``:
    mu <- alpha mu + (1 - alpha) g_c, then s^2 <- alpha s^2 + (1 - alpha) (g_c - mu)^2.
    A non-finite norm leaves the statistics unchanged, and is left out of the warm-up's.
    """

    def __init__(
        self,
        z_threshold: PosFloat = 2.5,
        alpha: OpenUnit = 0.97,
        warmup_steps: PosInt = 25,
        mode: Literal["adaptive", "mean"] = "adaptive",
        eps: PosFloat = 1e-6,
    ) -> None:
        self.z_threshold = float(z_threshold)
        self.alpha = float(alpha)
        self.warmup_steps = int(warmup_steps)
        self.mode = mode
        self.eps = float(eps)
        self.warm = _History(self.warmup_steps)
        self.mean: Tensor | None = None
        self.var: Tensor | None = None

    def _threshold(self, norm: Tensor) -> Tensor:
        if self.warm.count < self.warmup_steps:
            self.warm.append(norm)
            if self.warm.count == self.warmup_steps:
                w = self.warm.values()
                w = torch.where(torch.isfinite(w), w, torch.nan)
                self.mean = w.nanmean()
                self.var = ((w - self.mean) ** 2).nanmean()
            return torch.full_like(norm, float("inf"))
        assert self.mean is not None and self.var is not None
        zt = self.z_threshold
        std = torch.sqrt(self.var)
        z = (norm - self.mean) / (std + self.eps)
        target = self.mean + zt * std / (z / zt) if self.mode == "adaptive" else self.mean
        lam = torch.where(z > zt, target, torch.full_like(norm, float("inf")))
        g_c = torch.minimum(norm, lam)
        ok = torch.isfinite(norm)  # (an infinite norm would enter as g_c = its lambda)
        a = self.alpha
        new_mean = a * self.mean + (1 - a) * g_c
        new_var = a * self.var + (1 - a) * (g_c - new_mean) ** 2
        self.mean = torch.where(ok, new_mean, self.mean)
        self.var = torch.where(ok, new_var, self.var)
        return lam

    def state_dict(self) -> dict:
        return {"warm": self.warm.buf, "count": self.warm.count, "mean": self.mean, "var": self.var}

    def load_state_dict(self, state: dict) -> None:
        self.warm.buf, self.warm.count = state["warm"], int(state["count"])
        self.mean, self.var = state["mean"], state["var"]


class AGC:
    """Unit-wise adaptive gradient clipping (Brock et al. 2021, NFNets).

    For each unit i - a row of a weight (an output unit of a Linear, a filter of a Conv),
    or the whole tensor for vectors (biases, norm gains) -
    if ||G_i|| / max(||W_i||, eps) > lambda then G_i <- lambda * max(||W_i||, eps) / ||G_i|| * G_i.
    lambda = ``clipping`` (about 0.01 at large batch; smaller for larger batches), eps = 1e-3.
    Parameters whose name starts with one of ``exclude`` are left alone (the paper leaves
    the final classifier unclipped: ``model.head``).
    """

    clips = True

    def __init__(
        self,
        clipping: PosFloat = 0.01,
        eps: PosFloat = 1e-3,
        exclude: Sequence[str] = ("model.head",),
    ) -> None:
        self.clipping = float(clipping)
        self.eps = float(eps)
        self.exclude = tuple(exclude)

    @staticmethod
    def unit_norm(x: Tensor) -> Tensor:
        """Norm per output unit, broadcastable to x's local data (whole-tensor norm for
        ndim <= 1). FSDP2 shards along dim 0, so a rank holds whole rows: the row norms of
        its shard are exact; a vector's norm is reduced over the ranks (``full_tensor``)."""
        if is_dtensor(x):
            if x.ndim <= 1:
                full = torch.linalg.vector_norm(x.to(torch.promote_types(x.dtype, torch.float32)))
                return full.full_tensor() if is_dtensor(full) else full
            x = x.to_local()
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        if x.ndim <= 1:
            return torch.linalg.vector_norm(x)
        return torch.linalg.vector_norm(x, dim=tuple(range(1, x.ndim)), keepdim=True)

    def __call__(self, named_params: Iterable[tuple[str, Tensor]]) -> ClipStats:
        items = _grads(named_params)
        if not items:
            z = torch.zeros(())
            return ClipStats(z, z, z, torch.full((), float("nan")))
        norm = global_grad_norm([g for _, _, g in items])
        any_clipped = torch.zeros((), device=norm.device)
        for name, p, g in items:
            if name.startswith(self.exclude):
                continue
            max_norm = self.clipping * torch.clamp(self.unit_norm(p.detach()), min=self.eps)
            g_norm = self.unit_norm(g)
            over = g_norm > max_norm
            scale = torch.where(over, max_norm / g_norm.clamp(min=1e-30), torch.ones_like(g_norm))
            local_shard(g).mul_(scale.to(g.dtype))  # (a rank's shard: its rows, or its slice)
            any_clipped = torch.maximum(any_clipped, over.any().float())
        after = global_grad_norm([g for _, _, g in items])
        sharded = next((g for _, _, g in items if is_dtensor(g)), None)
        if sharded is not None:  # each rank saw its own rows: clipped anywhere, on every rank
            import torch.distributed as dist

            mesh = sharded.device_mesh
            dist.all_reduce(any_clipped, op=dist.ReduceOp.MAX, group=mesh.get_group())
        return ClipStats(norm, after, any_clipped, torch.full_like(norm, float("nan")))
