"""The experiments' claims, rerun (slow: `make test-all`; each study also has `make exp-*`)."""

from __future__ import annotations

import csv
import json

import pytest

from conftest import QUIET, assert_ok, run_cli

pytestmark = pytest.mark.slow


def test_early_eval_dense_evaluation_shows_what_sparse_evaluation_hides(tmp_path):
    out = tmp_path / "early_eval"
    args = [
        *QUIET, "optimizer.lr=0.03", "max_train_steps=300", "logger=csv", "test=false",
        "callbacks.dense_eval.every_step_until=100", f"hydra.run.dir={out}",
    ]  # fmt: skip
    assert_ok(run_cli(args, tmp_path))
    sparse = [float(r["val_loss"]) for r in csv.DictReader((out / "evals.csv").open())]
    dense = [float(r["val_loss"]) for r in csv.DictReader((out / "dense_eval.csv").open())]
    assert max(dense) > 10 * max(sparse)  # the early blow-up is only visible densely
    s = json.loads((out / "summary.json").read_text())
    assert s["val_loss_rise_step"] is not None and s["val_loss_rise_step"] <= 10
    assert "**Early instability**" in (out / "report.md").read_text()
