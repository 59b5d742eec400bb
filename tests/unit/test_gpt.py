"""The GPT decoder against hand-written references: causality, the initialisation's
statistics, the final norm, RoPE, qk-norm, soft-capping and z-loss (float64 formulas)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from stablelab.config import ConfigError
from stablelab.models import GPT
from stablelab.models.gpt import apply_rope, rope_tables
from stablelab.module import z_loss

SPEC = {"kind": "tokens", "length": 16, "channels": 1, "vocab_size": 11, "task": "next_token"}


def gpt(**kw) -> GPT:
    torch.manual_seed(kw.pop("seed", 0))
    args = {"n_layer": 2, "n_head": 2, "n_embd": 16, **kw}
    return GPT(SPEC, 11, **args).double().eval()


def tokens(b: int = 3, t: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 11, (b, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"residual": {"layout": "post_norm"}},
        {"residual": {"layout": "branch_norm"}, "rope": True},
        {"residual": {"layout": "none"}, "qk_norm": True, "attn_logit_softcap": 5.0},
        {"norm": "rmsnorm", "final_logit_softcap": 3.0, "residual": {"branch_init": "rezero"}},
    ],
)
def test_causal_the_future_never_changes_the_past(kw):
    model = gpt(**kw)
    x = tokens()
    for t in (0, 7, 14):
        y = x.clone()
        y[:, t + 1 :] = (y[:, t + 1 :] + 1 + torch.arange(15 - t)) % 11  # change the future
        with torch.no_grad():
            a, b = model(x), model(y)
        assert torch.equal(a[:, : t + 1], b[:, : t + 1]), t  # positions <= t: bit for bit
        assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :])  # (the change is seen)


def test_gpt2_init_statistics():
    """N(0, 0.02) for every Linear and Embedding weight, N(0, 0.02/sqrt(2 n_layer)) for
    the residual output projections, zero biases, unit norm gains: checked by the sample
    mean and standard deviation of each tensor (tolerance: 4 standard errors)."""
    n_layer = 6
    torch.manual_seed(0)
    model = GPT(SPEC, 11, n_layer=n_layer, n_head=4, n_embd=64, bias=True)
    projs = {id(p.weight) for p in model.residual_projections()}
    assert len(projs) == 2 * n_layer
    checked = 0
    for name, p in model.named_parameters():
        w = p.detach().double().flatten()
        if name.endswith("bias") and "norm" not in name:
            assert torch.all(w == 0), name
            continue
        if "norm" in name:
            assert torch.all(w == (1 if name.endswith("weight") else 0)), name
            continue
        std = 0.02 / math.sqrt(2 * n_layer) if id(p) in projs else 0.02
        n = w.numel()
        assert abs(w.mean().item()) < 4 * std / math.sqrt(n), name
        # the sample variance's standard error is about var * sqrt(2 / n)
        assert abs(w.var().item() - std**2) < 4 * std**2 * math.sqrt(2 / n), name
        checked += 1
    assert checked == 2 + 4 * n_layer  # tok, pos, (qkv, proj, fc, fc-out) per layer
    assert model.head.weight is model.tok.weight  # tied
    torch_default = GPT(SPEC, 11, n_layer=1, n_head=4, n_embd=64, init="torch_default")
    assert torch_default.tok.weight.std().item() > 0.5  # PyTorch's Embedding: N(0, 1)


@pytest.mark.parametrize("layout", ["post_norm", "branch_norm", "pre_norm", "none"])
def test_final_norm_for_every_unnormalised_stream(layout):
    """A final norm before the head unless the stream is post-norm's (already normalised
    by its last block): the head input of every position has mean 0 and variance
    v / (v + eps), v the variance of the stream it normalises (LayerNorm's definition)."""
    model = gpt(residual={"layout": layout}, n_layer=4, n_embd=32)
    kind = type(model.final_norm.inner).__name__
    assert kind == ("Identity" if layout == "post_norm" else "LayerNorm")
    last = model.final_norm if layout != "post_norm" else model.blocks[-1].norm
    seen = {}
    last.register_forward_hook(lambda m, i, o: seen.update(x=i[0], h=o))
    with torch.no_grad():
        model(tokens())
    x, h = seen["x"], seen["h"]
    v = x.var(-1, unbiased=False)
    torch.testing.assert_close(h.mean(-1), torch.zeros_like(v), atol=1e-12, rtol=0)
    torch.testing.assert_close(h.var(-1, unbiased=False), v / (v + 1e-5), atol=1e-12, rtol=1e-9)


def _manual_attention(attn, x, qk_norm=False, cap=None):
    """The attention branch written out in float64: q, k, v from the qkv weights, a
    LayerNorm over each head's dimension on q and k, q.k/sqrt(d), cap tanh(./cap), the
    causal mask, softmax, the output projection."""
    b, t, c = x.shape
    h, d = attn.n_head, attn.head_dim
    qkv = x @ attn.qkv.weight.T + (attn.qkv.bias if attn.qkv.bias is not None else 0.0)
    q, k, v = qkv.split(c, dim=-1)
    q, k, v = (z.view(b, t, h, d).transpose(1, 2) for z in (q, k, v))
    if qk_norm:

        def ln(z, norm):
            mu = z.mean(-1, keepdim=True)
            var = ((z - mu) ** 2).mean(-1, keepdim=True)
            b = norm.inner.bias if norm.inner.bias is not None else 0.0
            return (z - mu) / torch.sqrt(var + 1e-5) * norm.inner.weight + b

        q, k = ln(q, attn.q_norm), ln(k, attn.k_norm)
    logits = q @ k.transpose(-2, -1) / math.sqrt(d)
    if cap is not None:
        logits = cap * torch.tanh(logits / cap)
    logits = logits.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
    y = logits.softmax(-1) @ v
    out = y.transpose(1, 2).reshape(b, t, c) @ attn.proj.weight.T
    return out + (attn.proj.bias if attn.proj.bias is not None else 0.0)


@pytest.mark.parametrize("qk_norm,cap", [(False, None), (True, None), (False, 2.0), (True, 3.0)])
def test_attention_qk_norm_and_softcap_against_the_formula(qk_norm, cap):
    model = gpt(qk_norm=qk_norm, attn_logit_softcap=cap, bias=qk_norm)  # (norm biases too)
    attn = model.blocks[0].branch
    with torch.no_grad():  # large logits (so a cap binds), random gains and biases
        attn.qkv.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(4))
        for m in (attn.q_norm, attn.k_norm) if qk_norm else ():
            m.inner.weight.normal_(1, 0.3)
            if m.inner.bias is not None:
                m.inner.bias.normal_(0, 0.3)
    x = torch.randn(2, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(attn(x), _manual_attention(attn, x, qk_norm, cap))
    if cap is not None:  # the cap binds: without it the result differs
        with torch.no_grad():
            assert not torch.allclose(attn(x), _manual_attention(attn, x, qk_norm, None))


def test_final_logit_softcap_is_cap_tanh_of_the_logits():
    capped, plain = gpt(final_logit_softcap=0.1), gpt()  # same seed: same weights
    x = tokens()
    with torch.no_grad():
        raw, out = plain(x), capped(x)
    torch.testing.assert_close(out, 0.1 * torch.tanh(raw / 0.1))
    assert out.abs().max() < 0.1 < raw.abs().max()  # (the cap binds)


def test_rope_against_complex_rotation():
    """Rotate-half RoPE equals multiplying (x_i + i x_{i+d/2}) by exp(i pos theta_i),
    theta_i = 10000^(-2i/d); and the dot product of rotated q and k depends only on their
    distance."""
    t, d = 12, 8
    cos, sin = rope_tables(t, d)
    x = torch.randn(t, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    theta = 10000.0 ** (-torch.arange(d // 2, dtype=torch.float64) * 2 / d)
    z = torch.complex(x[:, : d // 2], x[:, d // 2 :]) * torch.exp(
        1j * torch.arange(t, dtype=torch.float64)[:, None] * theta
    )
    ref = torch.cat([z.real, z.imag], dim=-1)
    torch.testing.assert_close(apply_rope(x, cos.double(), sin.double()), ref, atol=1e-6, rtol=0)
    q, k = torch.randn(d, dtype=torch.float64), torch.randn(d, dtype=torch.float64)
    rq = apply_rope(q.expand(t, d), cos.double(), sin.double())
    rk = apply_rope(k.expand(t, d), cos.double(), sin.double())
    assert math.isclose(rq[5] @ rk[2], rq[9] @ rk[6], rel_tol=1e-5)  # both at distance 3


def test_z_loss_is_the_mean_squared_log_partition():
    logits = torch.randn(4, 7, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ref = (
        sum(math.log(sum(math.exp(v) for v in row)) ** 2 for row in logits.reshape(-1, 11).tolist())
        / 28
    )
    assert math.isclose(z_loss(logits).item(), ref, rel_tol=1e-12)


def test_training_objective_adds_z_loss_and_logs_the_cross_entropy(tmp_path):
    """With loss.z_loss = c the step minimises CE + c mean((log Z)^2); the telemetry and
    the logged loss are the cross-entropy alone."""
    from types import SimpleNamespace

    from conftest import compose_cfg
    from stablelab.config import validate
    from stablelab.data import CharTextDataModule
    from stablelab.module import StableModule

    dm = CharTextDataModule(block_size=16)
    cfg = validate(compose_cfg(["data=shakespeare_char", "model=gpt", "loss.z_loss=0.01",
                                "data.block_size=16", "model.n_layer=1"], tmp_path))  # fmt: skip
    torch.manual_seed(0)
    module = StableModule(cfg, dm.input_spec, dm.num_classes).double()
    recorded = []
    module.telemetry = SimpleNamespace(add_loss=recorded.append)
    module._logged_step = lambda: False  # (no trainer: nothing to log)
    x = torch.randint(0, 65, (2, 16), generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 65, (2, 16), generator=torch.Generator().manual_seed(1))
    objective = module.training_step((x, y), 0)
    logits = module(x)
    ce = F.cross_entropy(logits.reshape(-1, 65), y.reshape(-1))
    lse = torch.logsumexp(logits, -1)
    torch.testing.assert_close(objective, ce + 0.01 * (lse**2).mean())
    torch.testing.assert_close(recorded[0], ce)


def test_gpt_needs_a_text_task_and_valid_heads():
    with pytest.raises(ConfigError, match="data=shakespeare_char"):
        GPT({**SPEC, "task": "classification"}, 11)
    with pytest.raises(ConfigError, match="n_embd = 30: must be divisible by n_head = 4"):
        GPT(SPEC, 11, n_embd=30, n_head=4)
    with pytest.raises(ConfigError, match="even head dimension"):
        GPT(SPEC, 11, n_embd=12, n_head=4, rope=True)
