"""Residual blocks with the playbook's layouts and branch initialisations.

A block computes, with shortcut s(x) (identity, or a projection when shape changes) and
branch f:

=============  =========================  =====================================
layout         formula                    note
=============  =========================  =====================================
post_norm      Norm(s(x) + a f(x))        the original Transformer/ResNet order;
                                          the playbook: "known to cause issues"
branch_norm    s(x) + a Norm(f(x))        the playbook's recommendation:
                                          "normalize as the last op of the branch"
pre_norm       s(x) + a f(Norm(x))        GPT-2 style
none           s(x) + a f(x)              no normalisation
=============  =========================  =====================================

``a`` is 1 except with ``branch_init=rezero`` (Bachlechner et al. 2020), where it is a
learnable scalar initialised to 0. ``branch_init=zero`` starts the branch's last layer at 0
(the norm's gain for ``branch_norm``, else the last Linear/Conv), so with every layout but
``post_norm`` the block is the identity map (given an identity shortcut) at initialisation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Literal

import torch
from torch import nn

from stablelab.constraints import ResidualSpec


def residual_spec(residual: ResidualSpec | Mapping | None) -> ResidualSpec:
    if residual is None:
        return ResidualSpec()
    return residual if isinstance(residual, ResidualSpec) else ResidualSpec(**residual)


InitScheme = Literal["gpt2", "xavier", "torch_default"]


def final_norm_kind(norm_kind: str, layout: str) -> str:
    """The norm before a model's head: the blocks' kind for every layout whose residual
    stream leaves the last block unnormalised (pre_norm, branch_norm, none); post_norm's
    stream already ends in a norm."""
    return "none" if layout == "post_norm" else norm_kind


def standard_init(model: nn.Module, scheme: str, blocks: Iterable[ResidualBlock]) -> None:
    """Initialise a Transformer-type ``model`` in place.

    * ``gpt2`` (GPT-2 / nanoGPT): every Linear and Embedding weight ~ N(0, 0.02), biases 0,
      norms untouched (gain 1, bias 0), and the output layer of every residual branch in
      ``blocks`` ~ N(0, 0.02 / sqrt(n)), n the number of residual blocks (two per layer:
      GPT-2's 0.02 / sqrt(2 n_layer));
    * ``xavier``: Linear weights Xavier-uniform, biases 0, Embeddings N(0, 0.02);
    * ``torch_default``: nothing changes (Linear: kaiming-uniform, Embedding: N(0, 1)).

    Call it before zeroing any branch (``branch_init=zero``) and before tying weights.
    """
    if scheme == "torch_default":
        return
    for m in model.modules():
        if isinstance(m, nn.Linear):
            if scheme == "gpt2":
                nn.init.normal_(m.weight, 0.0, 0.02)
            else:
                nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)
    if scheme == "gpt2":
        outs = [b.output_layer() for b in blocks]
        for layer in outs:
            nn.init.normal_(layer.weight, 0.0, 0.02 / math.sqrt(max(len(outs), 1)))


def activation(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}[name]()


class Norm(nn.Module):
    """LayerNorm / BatchNorm / RMSNorm / identity over the feature (channel) dimension.

    ``channels_first`` inputs are (B, C, L) (convolutions); otherwise (B, D) or (B, T, D).
    ``bias=False``: a LayerNorm without its additive bias (GPT-2 style models without biases).
    """

    def __init__(
        self, kind: str, dim: int, channels_first: bool = False, bias: bool = True
    ) -> None:
        super().__init__()
        self.kind = kind
        self.channels_first = channels_first
        if kind == "layernorm":
            self.inner: nn.Module = nn.LayerNorm(dim, bias=bias)
        elif kind == "rmsnorm":
            self.inner = nn.RMSNorm(dim, eps=1e-6)
        elif kind == "batchnorm":
            self.inner = nn.BatchNorm1d(dim)
        elif kind == "none":
            self.inner = nn.Identity()
        else:
            raise ValueError(f"unknown norm {kind!r}")

    @property
    def weight(self) -> torch.Tensor | None:
        return getattr(self.inner, "weight", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2 or self.kind == "none":
            return self.inner(x)
        # BatchNorm1d wants channels at dim 1; LayerNorm / RMSNorm want them last
        wants_first = self.kind == "batchnorm"
        if wants_first == self.channels_first:
            return self.inner(x)
        return self.inner(x.transpose(1, 2)).transpose(1, 2)


class ResidualBlock(nn.Module):
    """One residual block; see the module docstring for the formulas.

    Args:
        branch: f, ending in a Linear or Conv1d (its last layer is zeroed by ``zero``).
        norm_kind: the block's normalisation.
        in_dim, out_dim: features of x and of f(x) (pre_norm normalises x: in_dim).
        spec: layout and branch_init.
        shortcut: s; ``None`` is the identity (in_dim must equal out_dim).
        channels_first: inputs are (B, C, L).
        norm_bias: whether a LayerNorm has its bias.
    """

    def __init__(
        self,
        branch: nn.Module,
        norm_kind: str,
        in_dim: int,
        out_dim: int,
        spec: ResidualSpec,
        shortcut: nn.Module | None = None,
        channels_first: bool = False,
        norm_bias: bool = True,
    ) -> None:
        super().__init__()
        self.layout = spec.layout
        self.branch = branch
        self.shortcut = shortcut if shortcut is not None else nn.Identity()
        norm_dim = in_dim if spec.layout == "pre_norm" else out_dim
        kind = norm_kind if spec.layout != "none" else "none"
        self.norm = Norm(kind, norm_dim, channels_first, norm_bias)
        if spec.branch_init == "rezero":
            self.alpha = nn.Parameter(torch.zeros(()))
        else:
            self.register_parameter("alpha", None)
        if spec.branch_init == "zero":
            self._zero_last_layer()

    def output_layer(self) -> nn.Linear | nn.Conv1d:
        """The branch's last Linear / Conv1d (a Transformer's residual output projection)."""
        return [m for m in self.branch.modules() if isinstance(m, nn.Linear | nn.Conv1d)][-1]

    def _zero_last_layer(self) -> None:
        if self.layout == "branch_norm" and self.norm.weight is not None:
            nn.init.zeros_(self.norm.weight)  # Norm(f(x)) = bias = 0 at init
            return
        last = self.output_layer()
        nn.init.zeros_(last.weight)
        if last.bias is not None:
            nn.init.zeros_(last.bias)

    def _scale(self, h: torch.Tensor) -> torch.Tensor:
        return h if self.alpha is None else self.alpha * h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.shortcut(x)
        if self.layout == "post_norm":
            return self.norm(s + self._scale(self.branch(x)))
        if self.layout == "branch_norm":
            return s + self._scale(self.norm(self.branch(x)))
        if self.layout == "pre_norm":
            return s + self._scale(self.branch(self.norm(x)))
        return s + self._scale(self.branch(x))
