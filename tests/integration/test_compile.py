"""compile=true: the model under torch.compile (inductor, a C++ compiler on CPU)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from conftest import compose_cfg
from stablelab.train import train

pytestmark = pytest.mark.slow  # inductor's first compile takes tens of seconds on a CPU

RUN = ["experiment=digits_mlp", "logger=csv", "plots=false", "test=false", "max_train_steps=30",
       "trainer.val_check_interval=15", "callbacks.dense_eval.every_step_until=0",
       "callbacks.progress_bar.refresh_rate=0"]  # fmt: skip


def _losses(run):
    return np.array([float(r["loss"]) for r in csv.DictReader((run / "stability.csv").open())])


def test_compiled_model_trains_as_the_eager_one_and_keeps_its_checkpoint_keys(tmp_path):
    eager = train(compose_cfg(RUN, tmp_path / "eager"))
    compiled = train(compose_cfg([*RUN, "compile=true"], tmp_path / "compiled"))
    assert compiled["status"] == eager["status"] == "completed"
    # inductor fuses and reorders float32 arithmetic: equal within float32 tolerances
    np.testing.assert_allclose(_losses(tmp_path / "compiled"), _losses(tmp_path / "eager"),
                               rtol=2e-4, atol=1e-5)  # fmt: skip
    assert compiled["val_loss"] == pytest.approx(eager["val_loss"], rel=2e-4)
    ckpt = torch.load(tmp_path / "compiled" / "checkpoints" / "last.ckpt", weights_only=True)
    keys = set(ckpt["state_dict"])
    eager_keys = set(
        torch.load(tmp_path / "eager" / "checkpoints" / "last.ckpt", weights_only=True)[
            "state_dict"
        ]
    )
    assert keys == eager_keys and not any("_orig_mod" in k for k in keys)
