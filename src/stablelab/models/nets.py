"""The three model families: MLP, 1-D (Wide)ResNet and Transformer.

All take ``input_spec`` (from the datamodule: ``kind`` real|tokens, ``length``,
``channels``, ``vocab_size``) and ``num_classes``, and return logits of shape (B, classes).
Every residual block is a :class:`~stablelab.models.blocks.ResidualBlock`, so
``residual.layout`` / ``residual.branch_init`` / ``norm`` apply to all of them, and each
model has a final norm (``norm``'s kind) before its head for every layout whose residual
stream is not normalised (pre_norm, branch_norm, none).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from stablelab.constraints import (
    Activation,
    NonNegInt,
    NormKind,
    PosInt,
    Prob,
    Range,
    ResidualSpec,
    raise_problems,
)
from stablelab.models.blocks import (
    InitScheme,
    Norm,
    ResidualBlock,
    final_norm_kind,
    residual_spec,
    standard_init,
)
from stablelab.models.blocks import activation as _act

PosIntList = Sequence[Annotated[int, Range(gt=0)]]
NonNegIntList = Sequence[Annotated[int, Range(ge=0)]]


class MLP(nn.Module):
    """Flatten -> Linear(width) -> ``depth`` residual blocks -> Linear(classes).

    Block branch: Linear(width, hidden_mult*width) -> act -> dropout -> Linear(width).
    Token inputs are embedded (``embed_dim`` per position) before flattening.
    """

    def __init__(
        self,
        input_spec: Mapping[str, Any],
        num_classes: PosInt,
        width: PosInt = 256,
        depth: NonNegInt = 2,
        hidden_mult: PosInt = 2,
        activation: Activation = "relu",
        norm: NormKind = "layernorm",
        residual: ResidualSpec | None = None,
        dropout: Prob = 0.0,
        embed_dim: PosInt = 16,
    ) -> None:
        super().__init__()
        spec = residual_spec(residual)
        length, channels = input_spec["length"], input_spec["channels"]
        if input_spec["kind"] == "tokens":
            self.embed: nn.Module = nn.Embedding(input_spec["vocab_size"], embed_dim)
            in_features = length * embed_dim
        else:
            self.embed = nn.Identity()
            in_features = length * channels
        self.stem = nn.Linear(in_features, width)
        self.blocks = nn.Sequential(
            *[
                ResidualBlock(
                    nn.Sequential(
                        nn.Linear(width, hidden_mult * width),
                        _act(activation),
                        nn.Dropout(dropout),
                        nn.Linear(hidden_mult * width, width),
                    ),
                    norm,
                    width,
                    width,
                    spec,
                )
                for _ in range(depth)
            ]
        )
        self.final_norm = Norm(final_norm_kind(norm, spec.layout), width)
        self.act = _act(activation)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(self.embed(x).flatten(1))
        h = self.final_norm(self.blocks(h))
        return self.head(self.act(h))


class ResNet1D(nn.Module):
    """A 1-D convolutional ResNet / WideResNet.

    stem Conv(channels -> stem_width, stem_kernel) -> stages -> pool -> Linear(classes).
    Stage i has ``depths[i]`` blocks of width ``widths[i]``; its first block has stride
    ``strides[i]`` (and a 1x1 projection shortcut when stride or width changes). Block
    branch: Conv(k, stride) -> act -> Conv(k). The playbook's Figure 4 variant (one block's
    stride 2x2 -> 1x1) is e.g. ``model.strides=[1,1,2]`` instead of ``[1,2,2]``.
    """

    def __init__(
        self,
        input_spec: Mapping[str, Any],
        num_classes: PosInt,
        stem_width: PosInt = 32,
        stem_kernel: PosInt = 5,
        widths: PosIntList = (32, 64, 128),
        depths: NonNegIntList = (2, 2, 2),
        strides: PosIntList = (1, 2, 2),
        kernel_size: PosInt = 3,
        activation: Activation = "relu",
        norm: NormKind = "batchnorm",
        residual: ResidualSpec | None = None,
        pool: Literal["avg", "flatten"] = "avg",
        embed_dim: PosInt = 16,
    ) -> None:
        super().__init__()
        raise_problems(self.config_problems(locals()), "model")
        spec = residual_spec(residual)
        if input_spec["kind"] == "tokens":
            self.embed: nn.Module = nn.Embedding(input_spec["vocab_size"], embed_dim)
            in_ch = embed_dim
        else:
            self.embed = nn.Identity()
            in_ch = input_spec["channels"]
        self.tokens = input_spec["kind"] == "tokens"
        self.stem = nn.Conv1d(in_ch, stem_width, stem_kernel, padding=stem_kernel // 2)
        blocks: list[nn.Module] = []
        c, length = stem_width, input_spec["length"]
        pad = kernel_size // 2
        for w, d, s in zip(widths, depths, strides, strict=True):
            for j in range(d):
                stride = s if j == 0 else 1
                shortcut = nn.Conv1d(c, w, 1, stride=stride) if (stride != 1 or c != w) else None
                branch = nn.Sequential(
                    nn.Conv1d(c, w, kernel_size, stride=stride, padding=pad),
                    _act(activation),
                    nn.Conv1d(w, w, kernel_size, padding=pad),
                )
                blocks.append(ResidualBlock(branch, norm, c, w, spec, shortcut, True))
                length = (length + 2 * pad - kernel_size) // stride + 1
                c = w
        self.blocks = nn.Sequential(*blocks)
        self.final_norm = Norm(final_norm_kind(norm, spec.layout), c, True)
        self.act = _act(activation)
        self.pool = pool
        self.head = nn.Linear(c * (length if pool == "flatten" else 1), num_classes)

    @staticmethod
    def config_problems(c: Mapping[str, Any]) -> list[str]:
        n = (len(c["widths"]), len(c["depths"]), len(c["strides"]))
        if len(set(n)) > 1:
            return [
                f"widths/depths/strides: need one entry per stage each, got {n[0]}, {n[1]}, {n[2]}"
            ]
        return []

    def no_weight_decay(self) -> set[str]:
        """The learned position table is not a weight to shrink (timm's convention for
        position embeddings): ``optimizer.weight_decay`` leaves it alone."""
        return {"pos"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tokens:
            h = self.embed(x).transpose(1, 2)  # (B, L, E) -> (B, E, L)
        else:
            h = x.unsqueeze(1) if x.dim() == 2 else x  # (B, L) -> (B, 1, L)
        h = self.act(self.final_norm(self.blocks(self.stem(h))))
        h = h.mean(-1) if self.pool == "avg" else h.flatten(1)
        return self.head(h)


class SelfAttention(nn.Module):
    """Multi-head self-attention: qkv projection -> SDPA -> output projection."""

    def __init__(self, d_model: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)  # the branch's last layer
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, d // self.num_heads).unbind(2)
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Transformer(nn.Module):
    """An encoder Transformer classifier.

    Embedding (tokens) or Linear (real inputs, per position) + learned positions ->
    ``num_layers`` x [attention block, MLP block] -> final norm -> pool (mean or last
    token) -> Linear. ``init``: as :class:`~stablelab.models.GPT`'s (``gpt2``, the standard
    one, by default; ``xavier``; ``torch_default``), see
    :func:`~stablelab.models.blocks.standard_init`.
    """

    def __init__(
        self,
        input_spec: Mapping[str, Any],
        num_classes: PosInt,
        d_model: PosInt = 64,
        num_heads: PosInt = 4,
        num_layers: NonNegInt = 2,
        mlp_ratio: PosInt = 4,
        dropout: Prob = 0.0,
        activation: Activation = "gelu",
        norm: NormKind = "layernorm",
        residual: ResidualSpec | None = None,
        pool: Literal["mean", "last"] = "mean",
        init: InitScheme = "gpt2",
    ) -> None:
        super().__init__()
        raise_problems(self.config_problems(locals()), "model")
        spec = residual_spec(residual)
        if input_spec["kind"] == "tokens":
            self.embed: nn.Module = nn.Embedding(input_spec["vocab_size"], d_model)
        else:
            self.embed = nn.Linear(input_spec["channels"], d_model)
        self.tokens = input_spec["kind"] == "tokens"
        self.pos = nn.Parameter(torch.randn(input_spec["length"], d_model) * 0.02)
        layers: list[ResidualBlock] = []
        for _ in range(num_layers):
            layers.append(
                ResidualBlock(
                    SelfAttention(d_model, num_heads, dropout), norm, d_model, d_model, spec
                )
            )
            mlp = nn.Sequential(
                nn.Linear(d_model, mlp_ratio * d_model),
                _act(activation),
                nn.Dropout(dropout),
                nn.Linear(mlp_ratio * d_model, d_model),
            )
            layers.append(ResidualBlock(mlp, norm, d_model, d_model, spec))
        self.layers = nn.Sequential(*layers)
        self.final_norm = Norm(final_norm_kind(norm, spec.layout), d_model)
        self.pool = pool
        self.head = nn.Linear(d_model, num_classes)
        standard_init(self, init, layers)
        if spec.branch_init == "zero":  # the init above overwrote the zeroed last layers
            for b in layers:
                b._zero_last_layer()

    @staticmethod
    def config_problems(c: Mapping[str, Any]) -> list[str]:
        if c["d_model"] % c["num_heads"]:
            return [f"d_model = {c['d_model']}: must be divisible by num_heads = {c['num_heads']}"]
        return []

    def no_weight_decay(self) -> set[str]:
        """The learned position table is not a weight to shrink (timm's convention for
        position embeddings): ``optimizer.weight_decay`` leaves it alone."""
        return {"pos"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tokens:
            h = self.embed(x)
        else:  # real inputs: (B, L) or (B, C, L), as the other models -> (B, L, C)
            h = self.embed(x.unsqueeze(-1) if x.dim() == 2 else x.transpose(1, 2))
        h = self.final_norm(self.layers(h + self.pos))
        h = h.mean(1) if self.pool == "mean" else h[:, -1]
        return self.head(h)
