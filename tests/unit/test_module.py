"""StableModule's evaluation, outside a Trainer: the validation loss is the mean of the
per-example cross-entropies over every batch (a float64 reference), independent of how the
batches are added up (bit for bit), a NaN loss is not dropped, and an empty batch
(a rank's empty last slice) changes nothing."""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from conftest import compose_cfg
from stablelab.config import validate
from stablelab.module import StableModule

SPEC = {"kind": "real", "length": 40, "channels": 1, "vocab_size": 0}


def _module(tmp_path) -> StableModule:
    cfg = validate(compose_cfg(["model=mlp", "model.norm=layernorm"], tmp_path))
    torch.manual_seed(0)
    module = StableModule(cfg, SPEC, num_classes=10).eval()
    module._trainer = SimpleNamespace(world_size=1)  # eval_result reads the world size
    return module


def _validate(module, batches) -> tuple[float, float]:
    with torch.no_grad():
        for i, b in enumerate(batches):
            module.validation_step(b, i)
    loss, acc = module.eval_result("val")
    assert loss.dtype == torch.float64
    return loss.item(), acc.item()


def _data(n: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 40, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_val_loss_is_the_mean_over_all_examples_of_uneven_batches(tmp_path):
    module = _module(tmp_path)
    x, y = _data(13)
    loss, acc = _validate(module, [(x[:8], y[:8]), (x[8:8], y[8:8]), (x[8:], y[8:])])
    with torch.no_grad():
        logits = module.double()(x.double())
    module.float()
    ref = torch.nn.functional.cross_entropy(logits, y).item()
    assert math.isclose(loss, ref, rel_tol=1e-6)
    assert acc == (logits.argmax(-1) == y).sum().item() / 13


def test_the_mean_does_not_depend_on_the_order_of_the_batches(tmp_path):
    """The batches' float32 per-example losses are summed in float64, which is exact: the
    same batches in any order (as ranks and resumed runs add them up) give the same bits.
    Other batchings agree to float32 precision only: a matmul over 400 rows may round an
    example's logits differently than one over 200 (it does with one thread)."""
    module = _module(tmp_path)
    x, y = _data(400)
    cuts = [0, 7, 150, 151, 190, 233, 300, 399, 400]
    batches = [(x[a:b], y[a:b]) for a, b in zip(cuts, cuts[1:], strict=False)]
    ref = _validate(module, batches)
    for order in (batches[::-1], batches[3:] + batches[:3], batches[1::2] + batches[::2]):
        assert _validate(module, order) == ref
    whole = _validate(module, [(x, y)])
    assert math.isclose(whole[0], ref[0], rel_tol=1e-6) and whole[1] == ref[1]


def test_a_nan_validation_loss_is_reported_not_dropped(tmp_path):
    module = _module(tmp_path)
    x, y = torch.randn(6, 1, 40), torch.arange(6)
    x[2] = float("nan")  # one example's logits (and loss) are NaN
    loss, _ = _validate(module, [(x, y)])
    assert math.isnan(loss)


def test_weight_decay_groups_honour_the_models_no_weight_decay(tmp_path):
    """SGD with weight decay 0.1 at LR 0.5 and zero gradients: every weight matrix shrinks
    by exactly 1 - 0.05 (float64), while biases, norm gains and the Transformer's position
    table (its no_weight_decay()) stay as they were."""
    cfg = validate(
        compose_cfg(
            ["model=transformer", "optimizer=sgd", "optimizer.lr=0.5",
             "optimizer.weight_decay=0.1", "trainer.precision=64-true"],
            tmp_path,
        )
    )  # fmt: skip
    module = StableModule(cfg, SPEC, num_classes=10).double()
    opt = module.configure_optimizers()["optimizer"]
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    for p in module.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    decayed = 0
    for name, p in module.model.named_parameters():
        keep = name == "pos" or p.ndim < 2
        want = before[name] if keep else before[name] * (1 - 0.5 * 0.1)
        assert torch.equal(p.detach(), want), name
        decayed += not keep
    assert decayed >= 4 and module.model.pos.ndim == 2  # (pos is 2-D: excluded by name)


def test_a_clipping_exclusion_that_names_no_parameter_is_warned_about(tmp_path, caplog):
    """AGC's exclude prefixes against the model's parameter names: a typo (or a
    weight-tied head) excludes nothing and says so with the names there are; the default
    ``model.head`` on the MLP (which has a head) says nothing."""
    cfgs = {
        "typo": ["model=mlp", "clipping=agc", "clipping.exclude=[model.nosuch,model.head]"],
        "default": ["model=mlp", "clipping=agc"],
    }
    for name, overrides in cfgs.items():
        caplog.clear()
        with caplog.at_level("WARNING", logger="stablelab"):
            StableModule(validate(compose_cfg(overrides, tmp_path / name)), SPEC, num_classes=10)
        warned = [r.getMessage() for r in caplog.records if "clipping.exclude" in r.getMessage()]
        if name == "default":
            assert warned == []
        else:
            (msg,) = warned
            assert "['model.nosuch'] matches no parameter of MLP" in msg and "model.head" in msg


def test_labels_of_any_integer_dtype_give_the_int64_labels_numbers(tmp_path):
    """int32 / uint8 labels (a numpy array of your own, say) are what cross_entropy
    refuses; the module takes them and reports the float64 reference's loss and accuracy,
    in evaluation and in the training loss."""
    module = _module(tmp_path)
    x, y = _data(13)
    with torch.no_grad():
        logits64 = module.double()(x.double())
    module.float()
    ref = torch.nn.functional.cross_entropy(logits64, y).item()
    for dtype in (torch.int32, torch.uint8):
        loss, acc = _validate(module, [(x, y.to(dtype))])
        assert math.isclose(loss, ref, rel_tol=1e-6)
        assert acc == (logits64.argmax(-1) == y).sum().item() / 13
        with torch.no_grad():
            train_loss, _ = module.loss_terms(module(x), y.to(dtype))
        assert math.isclose(train_loss.item(), ref, rel_tol=1e-5)
