"""``train(cfg)`` in-process: reproducibility, exact resume, nothing lost when a run fails."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from conftest import compose_cfg
from stablelab.train import train

FAST = ["logger=csv", "callbacks.progress_bar.refresh_rate=0", "trainer.log_every_n_steps=5"]


def _rows(run: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((run / "metrics.csv").open()))


def _train(tmp_path: Path, name: str, overrides: list[str]) -> tuple[dict, Path]:
    out = tmp_path / name
    return train(compose_cfg([*FAST, *overrides], out)), out


def test_same_seed_gives_identical_metrics(tmp_path):
    args = ["max_train_steps=40", "trainer.val_check_interval=20"]
    s1, r1 = _train(tmp_path, "a", [*args, "seed=3"])
    s2, r2 = _train(tmp_path, "b", [*args, "seed=3"])
    s3, _ = _train(tmp_path, "c", [*args, "seed=4"])
    assert _rows(r1) == _rows(r2)  # every logged value, bit for bit
    assert (s1["val_loss"], s1["test_acc"]) == (s2["val_loss"], s2["test_acc"])
    assert s3["val_loss"] != s1["val_loss"]  # the seed matters: the test can fail


def test_resume_continues_the_same_trajectory(tmp_path):
    """Stop at step 40 (mid-epoch: 28 batches an epoch), resume to 80: identical to an
    uninterrupted 80-step run."""
    args = ["trainer.val_check_interval=20", "test=false"]
    full, rf = _train(tmp_path, "full", [*args, "max_train_steps=80"])
    _, ra = _train(tmp_path, "first", [*args, "max_train_steps=40"])
    ckpt = ra / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["global_step"] == 40  # plain data only
    resumed, rb = _train(tmp_path, "resumed", [*args, "max_train_steps=80", f"ckpt_path={ckpt}"])
    assert resumed["steps"] == 80
    # every value logged from step 40 on (the dense-eval columns exist only in the first run)
    after = lambda rows: [  # noqa: E731
        {k: v for k, v in r.items() if v != ""} for r in rows if int(r["step"]) >= 40
    ]
    assert after(_rows(rb)) == after(_rows(rf))
    assert resumed["val_loss"] == full["val_loss"] and resumed["best_step"] == full["best_step"]


def test_the_last_step_is_validated_and_checkpointed(tmp_path):
    """13 steps, validation every 5: Lightning alone would validate after steps 5 and 10
    only, leaving the final weights unevaluated and last.ckpt at step 10."""
    s, run = _train(
        tmp_path, "run", ["max_train_steps=13", "trainer.val_check_interval=5", "plots=false"]
    )
    evals = list(csv.DictReader((run / "evals.csv").open()))
    assert [int(r["step"]) for r in evals] == [5, 10, 13]
    assert s["evaluations"] == 3 and s["steps"] == 13
    assert s["val_loss"] == min(float(r["val_loss"]) for r in evals)
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 13


def test_failed_run_keeps_what_it_wrote(tmp_path):
    out = tmp_path / "crash"
    cfg = compose_cfg(
        [
            *FAST,
            "max_train_steps=60",
            "trainer.val_check_interval=10",
            "+callbacks.boom._target_=helpers.RaiseAtStep",
            "+callbacks.boom.step=25",
        ],
        out,
    )
    with pytest.raises(RuntimeError, match="boom at step 25"):
        train(cfg)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and "boom at step 25" in summary["error"]
    assert summary["feasible"] is False and summary["steps"] == 25
    assert summary["best_step"] == 20  # evaluations before the crash are kept
    assert (out / "config.yaml").is_file()
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 20
    steps = [int(r["step"]) for r in _rows(out) if r["train/loss"]]
    assert steps and max(steps) >= 19  # metrics flushed despite the crash


def test_checkpoint_rebuilds_the_module_from_plain_config(tmp_path):
    from stablelab.module import StableModule

    summary, out = _train(
        tmp_path, "ck", ["max_train_steps=20", "trainer.val_check_interval=10", "model=mlp"]
    )
    module = StableModule.load_from_checkpoint(summary["best_checkpoint"], weights_only=True)
    assert type(module.model).__name__ == "MLP"
    assert module.hparams["cfg"]["optimizer"]["_target_"] == "stablelab.optim.Adam"
    x = torch.randn(4, 40)
    assert module(x).shape == (4, 10)


def test_tensorboard_logger_writes_events_and_csv(tmp_path):
    out = tmp_path / "tb"
    cfg = compose_cfg(
        [
            "logger=tensorboard",
            "callbacks.progress_bar.refresh_rate=0",
            "max_train_steps=10",
            "trainer.val_check_interval=5",
            "trainer.log_every_n_steps=2",
        ],
        out,
    )
    train(cfg)
    events = list((out / "tensorboard").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert "train/loss" in (out / "metrics.csv").read_text().splitlines()[0]


def test_float64_run_evaluates_densely_in_float64(tmp_path):
    """precision=64-true: Lightning converts the loops' batches; dense evaluation (outside
    the loops) must too, or the first evaluation fails on a float32 input."""
    s, run = _train(tmp_path, "f64", ["trainer.precision=64-true", "max_train_steps=30"])
    assert s["status"] == "completed"
    rows = list(csv.DictReader((run / "dense_eval.csv").open()))
    assert [int(r["step"]) for r in rows][:3] == [1, 2, 3] and len(rows) >= 25
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float64}
