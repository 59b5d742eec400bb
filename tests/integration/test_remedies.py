"""Automatic spike remedies in real runs: the skipped update of a crafted spike."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import compose_cfg
from stablelab.train import train

SPIKE = 70  # past the stability detector's 64 steps of history
BASE = ["data=digits", "model=mlp", "model.width=32", "optimizer=adam", "optimizer.lr=3e-3",
        "max_train_steps=90", "trainer.val_check_interval=45", "test=false", "plots=false",
        "logger=csv", "callbacks.progress_bar.refresh_rate=0", "callbacks.dense_eval=null",
        "print_config=false", "+callbacks.spike._target_=helpers.SpikeAtStep",
        f"+callbacks.spike.step={SPIKE}"]  # fmt: skip
SKIP = ["skip_spikes.enabled=true", "skip_spikes.window=32", "skip_spikes.min_history=16"]


def _spike_cb(trainer):
    from helpers import SpikeAtStep

    (cb,) = [c for c in trainer.callbacks if isinstance(c, SpikeAtStep)]
    return cb


def _run(tmp_path, name, extra):
    import stablelab.train as T

    seen = {}
    build = T.build

    def keep(plain):  # the trainer, to read the crafted-spike callback afterwards
        out = build(plain)
        seen["trainer"] = out[2]
        return out

    T.build = keep
    try:
        s = train(compose_cfg([*BASE, *extra], tmp_path / name))
    finally:
        T.build = build
    return s, _spike_cb(seen["trainer"])


def test_a_crafted_spike_is_skipped_leaving_weights_and_state_untouched(tmp_path):
    s, cb = _run(tmp_path, "skip", SKIP)
    assert s["status"] == "completed"
    assert s["skipped_steps"] == 1 and s["skipped_step_list"] == [SPIKE]
    for n, p in cb.before["params"].items():
        assert torch.equal(p, cb.after["params"][n]), n
    assert cb.before["state"].keys() == cb.after["state"].keys()
    for k, v in cb.before["state"].items():
        assert torch.equal(torch.as_tensor(v), torch.as_tensor(cb.after["state"][k])), k
    # the detector sees the step as skipped, not as a spike of a model that moved
    import csv

    rows = {int(r["step"]): r for r in csv.DictReader((tmp_path / "skip" / "stability.csv").open())}
    assert rows[SPIKE]["events"] == "update_skipped"

    # the same run without the remedy: the spike's update is applied
    s0, cb0 = _run(tmp_path, "noskip", [])
    assert "skipped_steps" not in s0
    moved = [
        n for n, p in cb0.before["params"].items() if not torch.equal(p, cb0.after["params"][n])
    ]
    assert moved


def test_no_step_is_skipped_without_a_spike_and_the_run_is_the_same(tmp_path):
    """Skip mode on, no spike: nothing skipped; the weights equal the run without the
    remedy up to rounding (Adam's bias correction is then computed on the device, and Adam
    amplifies float32 rounding over 90 steps: compared in float64)."""
    base = [a for a in BASE if "spike" not in a] + ["trainer.precision=64-true"]
    on = train(compose_cfg([*base, *SKIP], tmp_path / "on"))
    off = train(compose_cfg(base, tmp_path / "off"))
    assert on["skipped_steps"] == 0 and on["skipped_step_list"] == []
    a = torch.load(tmp_path / "on" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "off" / "checkpoints" / "last.ckpt", weights_only=True)
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=1e-9, atol=1e-12)
    assert on["val_loss"] == pytest.approx(off["val_loss"], rel=1e-9)


ROLL = ["data=digits", "model=mlp", "model.width=32", "optimizer=adam", "optimizer.lr=3e-3",
        "max_train_steps=80", "trainer.val_check_interval=20", "trainer.log_every_n_steps=10",
        "test=false", "plots=false", "logger=csv", "callbacks.progress_bar.refresh_rate=0",
        "callbacks.dense_eval=null", "print_config=false",
        "callbacks.stability.rollbacks=1", "callbacks.stability.rollback_skip_batches=30",
        "callbacks.stability.rollback_lr_factor=0.5",
        "+callbacks.diverge._target_=helpers.DivergeAt", "+callbacks.diverge.step=47"]  # fmt: skip


def _lr_by_step(run) -> dict[int, float]:
    import csv

    rows = csv.DictReader((run / "metrics.csv").open())
    return {int(r["step"]): float(r["train/lr"]) for r in rows if r.get("train/lr")}


def test_a_divergence_rolls_back_skips_batches_lowers_the_lr_and_is_reproducible(tmp_path):
    """Diverged at step 47 (a crafted, transient blow-up): back to the step-40 checkpoint,
    the 8 batches through the diverging one and 30 more skipped, LR halved, on to step 80;
    recorded in summary.json; the same run twice gives the same weights and metrics bit
    for bit."""
    s = train(compose_cfg(ROLL, tmp_path / "a"))
    assert s["status"] == "completed" and s["steps"] == 80 and s["feasible"]
    (rb,) = s["rollbacks"]
    assert (rb["diverged_at_step"], rb["to_step"], rb["skip_batches"], rb["lr_factor"]) == (
        47, 40, 8 + 30, 0.5,
    )  # fmt: skip
    assert not s["diverged"]  # the detector's state is the checkpoint's, then the new steps'
    lrs = _lr_by_step(tmp_path / "a")
    # (metrics.csv holds float32 values)
    before = [lr for st, lr in lrs.items() if st < 40]
    after = [lr for st, lr in lrs.items() if st > 40]
    assert before and before == pytest.approx([3e-3] * len(before), rel=1e-6)
    assert after and after == pytest.approx([1.5e-3] * len(after), rel=1e-6)
    s2 = train(compose_cfg(ROLL, tmp_path / "b"))
    assert s2["rollbacks"] == s["rollbacks"] and s2["val_loss"] == s["val_loss"]
    a = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert a["rollback"]["offset"] == 38 and a["rollback"]["lr_scale"] == 0.5
    assert (tmp_path / "a" / "metrics.csv").read_bytes() == (
        tmp_path / "b" / "metrics.csv"
    ).read_bytes()


def test_a_divergence_that_comes_back_ends_the_run_after_the_allowed_rollbacks(tmp_path):
    s = train(compose_cfg([*ROLL, "+callbacks.diverge.times=1000"], tmp_path / "r"))
    assert s["status"] == "diverged" and not s["feasible"]
    assert len(s["rollbacks"]) == 1 and s["rollbacks"][0]["to_step"] == 40


def test_a_skipped_blow_up_does_not_end_the_run_as_diverged(tmp_path):
    """A loss far above 10x the initial one (the divergence guard's line) whose update
    skip_spikes undid: the model never moved, so the guard does not stop the run; the step
    is an `update_skipped` event in stability.csv."""
    import csv

    args = [a for a in ROLL if "rollback" not in a] + SKIP
    s = train(compose_cfg(args, tmp_path / "r"))
    assert s["status"] == "completed" and not s["diverged"] and s["steps"] == 80
    assert s["skipped_step_list"] == [47]
    rows = {int(r["step"]): r for r in csv.DictReader((tmp_path / "r" / "stability.csv").open())}
    assert rows[47]["events"] == "update_skipped" and float(rows[47]["loss"]) > 100
    # without the remedy the same blow-up ends the run
    s0 = train(compose_cfg([a for a in ROLL if "rollback" not in a], tmp_path / "n"))
    assert s0["status"] == "diverged" and s0["diverged_at_step"] == 47


def test_a_corrupt_batch_is_skipped_by_the_rollback_not_met_again(tmp_path):
    """InjectSpikes picks its batch by place in the data order (with the rollback's
    offset): after one rollback the corrupt batch is behind the run, so one rollback is
    enough (a spike tied to the step would come back and end the run)."""
    args = [a for a in ROLL if "diverge" not in a] + [
        "+callbacks.spikes._target_=stablelab.callbacks.InjectSpikes",
        "+callbacks.spikes.batches=[47]",
    ]
    s = train(compose_cfg(args, tmp_path / "r"))
    assert s["status"] == "completed" and s["steps"] == 80
    (rb,) = s["rollbacks"]
    assert (rb["diverged_at_step"], rb["to_step"]) == (47, 40)


# float16 AMP's GradScaler on CPU (Lightning itself runs bf16 there): the plugin named in
# the config, as a user with a GPU gets from trainer.precision=16-mixed
FP16 = ["trainer.precision=null",
        "+trainer.plugins._target_=lightning.pytorch.plugins.precision.MixedPrecision",
        "+trainer.plugins.precision=16-mixed", "+trainer.plugins.device=cpu",
        "+trainer.plugins.scaler._target_=torch.amp.GradScaler",
        "+trainer.plugins.scaler.device=cpu"]  # fmt: skip
AMP = ["data=digits", "model=mlp", "model.width=32", "optimizer=adam", "optimizer.lr=3e-3",
       "trainer.val_check_interval=40", "test=false", "logger=csv", "print_config=false",
       "callbacks.progress_bar.refresh_rate=0", "callbacks.dense_eval=null", *FP16,
       "+callbacks.overflow._target_=helpers.OverflowScaler"]  # fmt: skip


def _overflow_run(tmp_path, name, steps, n, extra=()):
    import stablelab.train as T
    from helpers import OverflowScaler

    seen = {}
    build = T.build

    def keep(plain):
        out = build(plain)
        seen["trainer"] = out[2]
        return out

    T.build = keep
    try:
        args = [*AMP, f"max_train_steps={n}", f"+callbacks.overflow.steps={list(steps)}", *extra]
        s = train(compose_cfg(args, tmp_path / name))
    finally:
        T.build = build
    (cb,) = [c for c in seen["trainer"].callbacks if isinstance(c, OverflowScaler)]
    return s, cb


@pytest.mark.parametrize("extra", ["plain", "skip_spikes", "percentile"])
def test_float16_overflows_are_the_scalers_skips_not_divergence(tmp_path, extra):
    """A GradScaler's overflow (non-finite float16 gradients, the update skipped, the scale
    halved) is its normal working, not divergence: the run completes and names the steps,
    which are the ones the scaler itself skipped (read from its scale). skip_spikes does
    not count them as its own skips; the percentile clipper's thresholds stay finite."""
    import csv

    args = {"plain": [], "skip_spikes": SKIP, "percentile": ["clipping=percentile"]}[extra]
    s, cb = _overflow_run(tmp_path, "amp", [20, 21, 50], 80, args)
    if extra == "skip_spikes":
        assert s["skipped_steps"] == 0
    if extra == "percentile":
        norms = list(csv.DictReader((tmp_path / "amp" / "grad_norms.csv").open()))
        after = [float(r["clip_threshold"]) for r in norms if int(r["step"]) >= 25]
        assert all(math.isfinite(t) for t in after) and len(after) == 80 - 25
    assert cb.skipped == [20, 21, 50] and all(cb.unchanged)  # the reference: the scaler
    assert s["status"] == "completed" and not s["diverged"], s.get("divergence_reason")
    assert s["amp_overflow_steps"] == 3 and s["amp_overflow_step_list"] == cb.skipped
    assert s["precision"] == "16-mixed"
    rows = {int(r["step"]): r for r in csv.DictReader((tmp_path / "amp" / "stability.csv").open())}
    assert [k for k, r in rows.items() if r["events"] == "amp_overflow"] == cb.skipped
    report = (tmp_path / "amp" / "report.md").read_text()
    assert "**3 steps overflowed float16**" in report and "at steps 20, 21, 50" in report


def test_float16_overflow_at_every_step_is_divergence(tmp_path):
    """Gradients that overflow float16 at 24 steps in a row (the scale fallen 2^24-fold)
    are divergence: the run ends there, infeasible, saying why."""
    from stablelab.stability import AMP_OVERFLOW_LIMIT

    assert AMP_OVERFLOW_LIMIT == 24
    s, cb = _overflow_run(tmp_path, "amp", range(10, 80), 80)
    assert s["status"] == "diverged" and s["diverged_at_step"] == 10 + 23
    assert cb.skipped[:24] == list(range(10, 34))
    assert "overflowed at 24 consecutive steps" in s["divergence_reason"]
    assert s["amp_overflow_steps"] == 23
