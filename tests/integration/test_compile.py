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


def test_the_sharpness_of_a_compiled_model_is_measured_as_the_eager_ones(tmp_path):
    """compile=true with callbacks.sharpness: the Hessian-vector products run the model
    eagerly (the compiled backward has no double backward: the run used to fail at its
    first measurement). At initialisation the weights are the eager run's, so the
    sharpness is the same number; later within float32 tolerance of the eager run's."""
    on = ["callbacks.sharpness.every_n_steps=15", "callbacks.sharpness.probe_examples=64"]
    train(compose_cfg([*RUN, *on], tmp_path / "eager"))
    s = train(compose_cfg([*RUN, *on, "compile=true"], tmp_path / "compiled"))
    assert s["status"] == "completed", s.get("error")

    def sharpness(run):
        return [float(r["sharpness"]) for r in csv.DictReader((run / "sharpness.csv").open())]

    a, b = sharpness(tmp_path / "compiled"), sharpness(tmp_path / "eager")
    assert len(a) == len(b) == 3 and a[0] == b[0]
    np.testing.assert_allclose(a, b, rtol=1e-2)
