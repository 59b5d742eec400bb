"""StableModule's evaluation metrics, outside a Trainer: the validation loss is the mean
of the per-example cross-entropies over every batch (a float64 reference), a NaN loss is
not dropped, and an empty batch (a rank's empty last slice) changes nothing."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from conftest import compose_cfg
from stablelab.config import validate
from stablelab.module import StableModule

SPEC = {"kind": "real", "length": 40, "channels": 1, "vocab_size": 0}


def _module(tmp_path) -> StableModule:
    cfg = validate(compose_cfg(["model=mlp", "model.norm=layernorm"], tmp_path))
    torch.manual_seed(0)
    return StableModule(cfg, SPEC, num_classes=10).eval()


def _validate(module, batches) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # self.log without a Trainer: a no-op, with a warning
        for i, b in enumerate(batches):
            module.validation_step(b, i)


def test_val_loss_is_the_mean_over_all_examples_of_uneven_batches(tmp_path):
    module = _module(tmp_path)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(13, 1, 40, generator=g), torch.randint(0, 10, (13,), generator=g)
    _validate(module, [(x[:8], y[:8]), (x[8:8], y[8:8]), (x[8:], y[8:])])
    with torch.no_grad():
        ref = torch.nn.functional.cross_entropy(module.double()(x.double()), y).item()
    assert module.val_loss.compute().item() == pytest.approx(ref, rel=1e-6)
    assert module.val_acc.update_count == 2  # the empty batch was not counted


def test_a_nan_validation_loss_is_reported_not_dropped(tmp_path):
    module = _module(tmp_path)
    x, y = torch.randn(6, 1, 40), torch.arange(6)
    x[2] = float("nan")  # one example's logits (and loss) are NaN
    _validate(module, [(x, y)])
    assert math.isnan(module.val_loss.compute().item())
