"""A causal decoder (GPT) for next-token prediction, with the stability remedies of the
large trainers, each off by default.

Token embeddings + learned positions (or RoPE) -> ``n_layer`` x [attention block, MLP block]
-> final norm -> head (tied to the token embedding by default) -> logits (B, T, vocab).
Every block is a :class:`~stablelab.models.blocks.ResidualBlock`, so ``residual.layout``
(``pre_norm`` is GPT-2's and the default here), ``residual.branch_init`` and ``norm`` work
as in every other model. A final norm sits before the head for every layout whose residual
stream is not normalised (pre_norm, branch_norm, none); post_norm's output already is.

Initialisation ``init``:

* ``gpt2`` (default; GPT-2 / nanoGPT): every Linear and Embedding weight ~ N(0, 0.02),
  biases 0, norm gains 1, and the two residual output projections of each layer (attention
  out, MLP out) ~ N(0, 0.02 / sqrt(2 n_layer));
* ``xavier``: Linear weights Xavier-uniform, biases 0, embeddings N(0, 0.02);
* ``torch_default``: PyTorch's own (Linear: kaiming-uniform, Embedding: N(0, 1)).

Remedies (Wortsman et al. 2023; Gemma 2):

``bias``: biases in the Linear layers and the LayerNorms (nanoGPT's default: none).

* ``qk_norm``: a norm (``norm``'s kind; LayerNorm when that is none) on the queries and the
  keys of each head, over the head dimension, before the dot product;
* ``attn_logit_softcap`` c: attention logits q.k / sqrt(d) -> c tanh(logits / c);
* ``final_logit_softcap`` c: output logits -> c tanh(logits / c);
* z-loss is a term of the objective: ``loss.z_loss`` (see :mod:`stablelab.module`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from stablelab.constraints import (
    Activation,
    ConfigError,
    NonNegInt,
    NormKind,
    PosFloat,
    PosInt,
    Prob,
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


def softcap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    """``cap * tanh(x / cap)`` (Gemma 2's soft-capping); ``None``: x unchanged."""
    return x if cap is None else cap * torch.tanh(x / cap)


def rope_tables(length: int, dim: int, base: float = 10000.0) -> tuple[torch.Tensor, ...]:
    """cos and sin, (length, dim), of rotary position embeddings (Su et al. 2021) in the
    rotate-half layout: pair (i, i + dim/2) turns by position x base^(-2i/dim)."""
    inv = base ** (-torch.arange(0, dim // 2, dtype=torch.float64) * 2 / dim)
    angles = torch.arange(length, dtype=torch.float64)[:, None] * inv[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (..., T, D) rotated: x cos + rotate_half(x) sin, rotate_half(a, b) = (-b, a)."""
    a, b = x.chunk(2, dim=-1)
    t = x.shape[-2]
    return x * cos[:t].to(x.dtype) + torch.cat([-b, a], dim=-1) * sin[:t].to(x.dtype)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention (the branch of an attention block)."""

    rope_cos: torch.Tensor  # buffers, with rope=true
    rope_sin: torch.Tensor

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        block_size: int,
        dropout: float = 0.0,
        bias: bool = False,
        qk_norm: str | None = None,
        softcap: float | None = None,
        rope: bool = False,
    ) -> None:
        super().__init__()
        self.n_head, self.head_dim = n_head, n_embd // n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.proj = nn.Linear(n_embd, n_embd, bias=bias)  # the residual output projection
        self.resid_dropout = nn.Dropout(dropout)
        self.dropout = dropout
        self.softcap = softcap
        self.q_norm = Norm(qk_norm, self.head_dim, bias=bias) if qk_norm else None
        self.k_norm = Norm(qk_norm, self.head_dim, bias=bias) if qk_norm else None
        if rope:
            cos, sin = rope_tables(block_size, self.head_dim)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.rope = rope

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v of shape (B, heads, T, head_dim), q and k normalised and rotated as
        configured: what the attention logits are made of."""
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope:
            q, k = (
                apply_rope(q, self.rope_cos, self.rope_sin),
                apply_rope(k, self.rope_cos, self.rope_sin),
            )
        return q, k, v

    def logits(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """The attention logits q.k / sqrt(head_dim), soft-capped if configured (no mask)."""
        return softcap(q @ k.transpose(-2, -1) / math.sqrt(self.head_dim), self.softcap)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv_heads(x)
        p = self.dropout if self.training else 0.0
        if self.softcap is None:  # fused kernel; it never materialises the logits
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:
            att = self.logits(q, k)
            causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            att = F.dropout(att.masked_fill(~causal, float("-inf")).softmax(-1), p)
            y = att @ v
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(b, t, c)))


class GPT(nn.Module):
    """A GPT decoder; see the module docstring. Returns logits (B, T, vocab)."""

    next_token = True  # predicts at every position (the module checks it against the data)

    def __init__(
        self,
        input_spec: Mapping[str, Any],
        num_classes: PosInt,
        n_layer: NonNegInt = 4,
        n_head: PosInt = 4,
        n_embd: PosInt = 128,
        mlp_ratio: PosInt = 4,
        dropout: Prob = 0.0,
        bias: bool = False,
        tie_weights: bool = True,
        rope: bool = False,
        activation: Activation = "gelu",
        norm: NormKind = "layernorm",
        residual: ResidualSpec | None = None,
        init: InitScheme = "gpt2",
        qk_norm: bool = False,
        attn_logit_softcap: PosFloat | None = None,
        final_logit_softcap: PosFloat | None = None,
    ) -> None:
        super().__init__()
        raise_problems(self.config_problems(locals()), "model")
        if input_spec.get("task") != "next_token":
            raise ConfigError(
                [
                    "model = GPT: predicts the next token at every position; use a text "
                    "dataset (data=shakespeare_char or data=text_file)"
                ]
            )
        spec = residual_spec(residual)
        vocab, block = input_spec["vocab_size"], input_spec["length"]
        self.n_layer = n_layer
        self.tok = nn.Embedding(vocab, n_embd)
        self.pos = None if rope else nn.Embedding(block, n_embd)
        self.drop = nn.Dropout(dropout)
        qk_kind = (norm if norm in ("layernorm", "rmsnorm") else "layernorm") if qk_norm else None
        layers: list[ResidualBlock] = []
        for _ in range(n_layer):
            attn = CausalSelfAttention(
                n_embd, n_head, block, dropout, bias, qk_kind, attn_logit_softcap, rope
            )
            layers.append(ResidualBlock(attn, norm, n_embd, n_embd, spec, norm_bias=bias))
            mlp = nn.Sequential(
                nn.Linear(n_embd, mlp_ratio * n_embd, bias=bias),
                _act(activation),
                nn.Linear(mlp_ratio * n_embd, n_embd, bias=bias),  # residual output projection
                nn.Dropout(dropout),
            )
            layers.append(ResidualBlock(mlp, norm, n_embd, n_embd, spec, norm_bias=bias))
        self.blocks = nn.Sequential(*layers)
        self.final_norm = Norm(final_norm_kind(norm, spec.layout), n_embd, bias=bias)
        self.head = nn.Linear(n_embd, num_classes, bias=False)
        self.final_logit_softcap = final_logit_softcap
        standard_init(self, init, layers)
        if tie_weights:
            self.head.weight = self.tok.weight
        if spec.branch_init == "zero":  # init above overwrote the zeroed last layers
            for b in layers:
                b._zero_last_layer()

    @staticmethod
    def config_problems(c: Mapping[str, Any]) -> list[str]:
        out = []
        if c["n_embd"] % c["n_head"]:
            out.append(f"n_embd = {c['n_embd']}: must be divisible by n_head = {c['n_head']}")
        elif c["rope"] and (c["n_embd"] // c["n_head"]) % 2:
            out.append(f"rope = true: needs an even head dimension, n_embd / n_head = "
                       f"{c['n_embd'] // c['n_head']}")  # fmt: skip
        return out

    def residual_projections(self) -> list[nn.Linear | nn.Conv1d]:
        """The two residual output projections of each layer (attention out, MLP out)."""
        return [b.output_layer() for b in self.blocks if isinstance(b, ResidualBlock)]

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        h = self.tok(idx)
        if self.pos is not None:
            h = h + self.pos(torch.arange(t, device=idx.device))
        h = self.final_norm(self.blocks(self.drop(h)))
        return softcap(self.head(h), self.final_logit_softcap)
