"""Residual layouts against their formulas written out by hand (float64), and the
identity-at-initialisation property of zero / rezero branches."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from stablelab.config import ResidualSpec
from stablelab.models import MLP, ResidualBlock, ResNet1D, Transformer

LAYOUTS = ["post_norm", "branch_norm", "pre_norm", "none"]
NORMS = ["layernorm", "batchnorm", "rmsnorm", "none"]


def norm_by_hand(kind: str, x: torch.Tensor, module: nn.Module, channels_first: bool):
    """The normalisation formula itself, on float64 tensors (batch statistics for BN)."""
    if kind == "none":
        return x
    inner = module.inner
    if kind == "batchnorm":
        ch = 1 if (x.dim() == 2 or channels_first) else 2  # the feature dimension
        dims = [d for d in range(x.dim()) if d != ch]
        shape = [1] * x.dim()
        shape[ch] = -1
        mu = x.mean(dim=dims, keepdim=True)
        var = ((x - mu) ** 2).mean(dim=dims, keepdim=True)  # biased, as BN normalises
        w, b = inner.weight.view(shape), inner.bias.view(shape)
        return (x - mu) / torch.sqrt(var + inner.eps) * w + b
    xl = x.transpose(1, 2) if (channels_first and x.dim() == 3) else x
    if kind == "layernorm":
        mu = xl.mean(-1, keepdim=True)
        var = ((xl - mu) ** 2).mean(-1, keepdim=True)
        y = (xl - mu) / torch.sqrt(var + inner.eps) * inner.weight + inner.bias
    else:  # rmsnorm
        y = xl / torch.sqrt((xl**2).mean(-1, keepdim=True) + inner.eps) * inner.weight
    return y.transpose(1, 2) if (channels_first and x.dim() == 3) else y


def _randomise(block: ResidualBlock) -> None:
    """Non-trivial norm gains/biases and rezero scale, so swapped terms show up."""
    g = torch.Generator().manual_seed(1)
    for name, p in block.norm.named_parameters():
        with torch.no_grad():
            p.copy_(
                torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5
                + (1.0 if "weight" in name else 0.0)
            )
    if block.alpha is not None:
        with torch.no_grad():
            block.alpha.fill_(0.7)


SHAPES = {
    # name: (input shape, in_dim, out_dim, channels_first, branch, shortcut)
    "linear": lambda: (
        (6, 8),
        8,
        8,
        False,
        nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8)),
        None,
    ),
    "tokens": lambda: (
        (3, 5, 8),
        8,
        8,
        False,
        nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8)),
        None,
    ),
    "conv_down": lambda: (
        (4, 6, 12),
        6,
        10,
        True,
        nn.Sequential(
            nn.Conv1d(6, 10, 3, stride=2, padding=1), nn.ReLU(), nn.Conv1d(10, 10, 3, padding=1)
        ),
        nn.Conv1d(6, 10, 1, stride=2),
    ),
}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("init", ["default", "rezero"])
def test_layout_matches_formula(shape, norm, layout, init):
    torch.manual_seed(0)
    x_shape, din, dout, cf, branch, shortcut = SHAPES[shape]()
    block = ResidualBlock(
        branch, norm, din, dout, ResidualSpec(layout, init), shortcut, cf
    ).double()
    _randomise(block)
    block.train()
    x = torch.randn(x_shape, dtype=torch.float64)
    f, s = block.branch, block.shortcut
    a = 1.0 if block.alpha is None else block.alpha
    kind = norm if layout != "none" else "none"
    N = lambda h: norm_by_hand(kind, h, block.norm, cf)  # noqa: E731
    expected = {
        "post_norm": lambda: N(s(x) + a * f(x)),
        "branch_norm": lambda: s(x) + a * N(f(x)),
        "pre_norm": lambda: s(x) + a * f(N(x)),
        "none": lambda: s(x) + a * f(x),
    }[layout]()
    torch.testing.assert_close(block(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("init", ["zero", "rezero"])
@pytest.mark.parametrize("shape", ["linear", "tokens"])
def test_zero_and_rezero_are_identity_at_init(norm, layout, init, shape):
    torch.manual_seed(0)
    x_shape, din, dout, cf, branch, _ = SHAPES[shape]()
    block = ResidualBlock(branch, norm, din, dout, ResidualSpec(layout, init), None, cf).double()
    block.train()
    x = torch.randn(x_shape, dtype=torch.float64) * 3 + 1
    y = block(x)
    if layout == "post_norm":
        # Norm(x + 0): the branch vanishes but the block still normalises its input
        kind = norm
        torch.testing.assert_close(y, norm_by_hand(kind, x, block.norm, cf), rtol=1e-12, atol=1e-12)
    else:
        torch.testing.assert_close(y, x, rtol=0, atol=0)
    # learning can start: the zeroed layer / scale receives a non-zero gradient
    y.square().sum().backward()
    if init == "rezero":
        assert block.alpha.grad is not None and block.alpha.grad.abs() > 0
    else:
        grads = [p.grad for p in block.parameters() if p.grad is not None]
        assert any(g.abs().sum() > 0 for g in grads)


def test_zero_init_zeroes_the_branch_last_layer():
    br = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))
    ResidualBlock(br, "layernorm", 4, 4, ResidualSpec("pre_norm", "zero"))
    assert torch.count_nonzero(br[2].weight) == 0 and torch.count_nonzero(br[2].bias) == 0
    assert torch.count_nonzero(br[0].weight) > 0  # only the last layer
    br2 = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))
    blk = ResidualBlock(br2, "layernorm", 4, 4, ResidualSpec("branch_norm", "zero"))
    assert torch.count_nonzero(blk.norm.weight) == 0  # Norm(f(x)) is the branch's last op


@pytest.mark.parametrize("init", ["zero", "rezero"])
@pytest.mark.parametrize("layout", ["branch_norm", "pre_norm", "none"])
def test_models_blocks_start_as_identity(init, layout):
    spec = {"layout": layout, "branch_init": init}
    real = {"kind": "real", "length": 40, "channels": 1, "vocab_size": 0}
    models = [
        MLP(real, 10, width=16, depth=2, residual=spec),
        Transformer(real, 10, d_model=16, num_heads=2, num_layers=2, residual=spec),
        ResNet1D(
            real, 10, stem_width=8, widths=[8, 8], depths=[2, 1], strides=[1, 1], residual=spec
        ),
    ]
    for m in models:
        m.double().train()
        blocks = [b for b in m.modules() if isinstance(b, ResidualBlock)]
        assert blocks
        for b in blocks:
            shape = (
                (4, 8, 12)
                if isinstance(m, ResNet1D)
                else (4, 16)
                if isinstance(m, MLP)
                else (4, 5, 16)
            )
            x = torch.randn(shape, dtype=torch.float64)
            torch.testing.assert_close(b(x), x, rtol=0, atol=0)


def test_resnet_stride_variant_changes_resolution():
    real = {"kind": "real", "length": 40, "channels": 1, "vocab_size": 0}
    a = ResNet1D(real, 10, widths=[8, 8, 8], depths=[1, 1, 1], strides=[1, 2, 2], pool="flatten")
    b = ResNet1D(real, 10, widths=[8, 8, 8], depths=[1, 1, 1], strides=[1, 1, 2], pool="flatten")
    # 40 -> 40 -> 20 -> 10 vs 40 -> 40 -> 40 -> 20 positions before the head
    assert a.head.in_features == 8 * 10 and b.head.in_features == 8 * 20
    x = torch.randn(3, 40)
    assert a(x).shape == b(x).shape == (3, 10)


@pytest.mark.parametrize("cls", [MLP, ResNet1D, Transformer])
@pytest.mark.parametrize("kind", ["real", "tokens"])
def test_models_output_logits(cls, kind):
    spec = {"kind": kind, "length": 17, "channels": 1, "vocab_size": 24}
    m = cls(spec, 8)
    x = torch.randint(0, 24, (5, 17)) if kind == "tokens" else torch.randn(5, 17)
    out = m(x)
    assert out.shape == (5, 8) and torch.isfinite(out).all()


REAL = {"kind": "real", "length": 40, "channels": 1, "vocab_size": 0}


def _small(cls, layout: str, norm: str = "layernorm", depth: int = 2):
    spec = {"layout": layout}
    if cls is MLP:
        return MLP(REAL, 10, width=16, depth=depth, norm=norm, residual=spec)
    if cls is Transformer:
        return Transformer(REAL, 10, d_model=16, num_heads=2, num_layers=depth, norm=norm,
                           residual=spec)  # fmt: skip
    return ResNet1D(REAL, 10, stem_width=8, widths=[8, 8], depths=[depth, 1], strides=[1, 2],
                    norm=norm, residual=spec)  # fmt: skip


@pytest.mark.parametrize("cls", [MLP, ResNet1D, Transformer])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_model_has_a_final_norm_unless_post_norm(cls, layout):
    """The head reads a normalised stream in every layout: post_norm's last block ends in
    its norm; every other layout has a final norm, whose output is the norm's formula
    (float64, by hand) applied to the last block's output."""
    norm = "batchnorm" if cls is ResNet1D else "layernorm"
    torch.manual_seed(0)
    m = _small(cls, layout, norm).double().train()
    want = (
        "Identity" if layout == "post_norm" else {"batchnorm": "BatchNorm1d"}.get(norm, "LayerNorm")
    )
    assert type(m.final_norm.inner).__name__ == want
    if layout == "post_norm":
        return
    seen = {}
    m.final_norm.register_forward_hook(lambda mod, i, o: seen.update(x=i[0], h=o))
    m(torch.randn(6, 40, dtype=torch.float64))
    ref = norm_by_hand(norm, seen["x"], m.final_norm, cls is ResNet1D)
    torch.testing.assert_close(seen["h"], ref, rtol=1e-10, atol=1e-12)


def test_deep_branch_norm_mlp_starts_near_chance():
    """Without a final norm a depth-32 branch_norm MLP's stream is a sum of 32 unit-variance
    branches and its first loss was 4.06 where chance is ln 10 = 2.30; with the final norm
    every layout starts within 0.25 nats of ln 10 on random inputs and labels."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(512, 40, generator=g), torch.randint(0, 10, (512,), generator=g)
    for layout in LAYOUTS:
        torch.manual_seed(0)
        m = MLP(REAL, 10, width=64, depth=32, residual={"layout": layout}).double()
        loss = nn.functional.cross_entropy(m(x.double()), y).item()
        assert abs(loss - math.log(10)) < 0.25, (layout, loss)


def test_transformer_standard_init_statistics():
    """Transformer's default init is GPT-2's: Linear weights N(0, 0.02), the two residual
    output projections per layer N(0, 0.02 / sqrt(2 num_layers)), biases 0; sample mean and
    variance within 4 standard errors of the stated distribution."""
    layers = 3
    torch.manual_seed(0)
    m = Transformer(REAL | {"kind": "tokens", "vocab_size": 50}, 10, d_model=64, num_heads=4,
                    num_layers=layers)  # fmt: skip
    outs = [b.output_layer() for b in m.layers]
    assert len(outs) == 2 * layers
    assert outs[0] is m.layers[0].branch.proj and outs[1] is m.layers[1].branch[-1]
    out_ids = {id(o.weight) for o in outs}
    checked = 0
    for mod in m.modules():
        if not isinstance(mod, nn.Linear | nn.Embedding):
            continue
        std = 0.02 / math.sqrt(2 * layers) if id(mod.weight) in out_ids else 0.02
        w = mod.weight.detach().double().flatten()
        n = w.numel()
        assert abs(w.mean().item()) < 4 * std / math.sqrt(n)
        assert abs(w.var().item() - std**2) < 4 * std**2 * math.sqrt(2 / n)
        if getattr(mod, "bias", None) is not None:
            assert torch.all(mod.bias == 0)
        checked += 1
    assert checked == 1 + 4 * layers + 1  # embedding, (qkv, proj, fc, fc-out) x layers, head
    xavier = Transformer(REAL, 10, d_model=64, num_heads=4, num_layers=1, init="xavier")
    fan = xavier.layers[0].branch.qkv.weight
    bound = math.sqrt(6 / (fan.shape[0] + fan.shape[1]))  # Xavier-uniform's bound
    assert fan.abs().max().item() <= bound and fan.abs().max().item() > 0.9 * bound
    default = Transformer(REAL, 10, d_model=64, num_heads=4, num_layers=1, init="torch_default")
    w = default.layers[0].branch.qkv.weight  # kaiming-uniform(a=sqrt 5): bound 1/sqrt(fan_in)
    assert w.abs().max().item() <= 1 / math.sqrt(64) and w.abs().max().item() > 0.9 / 8


def test_transformer_zero_branches_survive_the_init():
    m = Transformer(REAL, 10, d_model=16, num_heads=2, num_layers=2,
                    residual={"layout": "pre_norm", "branch_init": "zero"})  # fmt: skip
    for b in m.layers:
        assert torch.count_nonzero(b.output_layer().weight) == 0
