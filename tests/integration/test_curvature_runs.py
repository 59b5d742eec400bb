"""The curvature instruments in real runs: they measure what an independent computation
on the run's own checkpoint gives, and a run with them trains exactly as one without."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from conftest import compose_cfg
from stablelab.train import train

TINY = ["data=digits", "model=mlp", "model.width=8", "model.depth=1", "model.hidden_mult=1",
        "optimizer=momentum", "optimizer.lr=0.05", "max_train_steps=30",
        "trainer.val_check_interval=30", "schedule.warmup_steps=5", "test=false",
        "logger=csv", "callbacks.progress_bar.refresh_rate=0", "callbacks.dense_eval=null",
        "print_config=false", "plots=false"]  # fmt: skip
PROBE = 256


def _run(tmp_path: Path, name: str, extra: list[str]) -> tuple[dict, Path]:
    out = tmp_path / name
    return train(compose_cfg([*TINY, *extra], out)), out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("curv")
    on = ["callbacks.sharpness.every_n_steps=10", f"callbacks.sharpness.probe_examples={PROBE}",
          "callbacks.sharpness.iterations=40", "callbacks.noise_scale.every_n_steps=5"]  # fmt: skip
    return _run(tmp, "on", on), _run(tmp, "off", [])


def test_a_run_with_the_instruments_trains_exactly_as_one_without(runs):
    """Sharpness and noise scale on (dropout masks forked, normalisation statistics
    restored): the same weights, bit for bit; the noise scale measured its 6 points."""
    (s, on), (_, off) = runs
    assert s["noise_scale_measurements"] == 6 and s["noise_scale"] > 0
    rows = list(csv.DictReader((on / "noise_scale.csv").open()))
    assert [int(r["step"]) for r in rows] == [5, 10, 15, 20, 25, 30]
    assert {(r["b_small"], r["b_big"]) for r in rows} == {("16", "64")}  # digits: batch 64
    a = torch.load(on / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(off / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_measured_sharpness_is_the_exact_hessians_top_eigenvalue(runs):
    """At step 30, from the run's own checkpoint: the probe batch (the first 256 examples
    of a fresh training loader), the exact Hessian of the mean cross-entropy in float64
    (torch.autograd.functional.hessian), its largest eigenvalue; and the threshold is
    (2 + 2 x 0.9) / lr at the logged LR."""
    from stablelab.config import instantiate
    from stablelab.module import StableModule

    (s, on), _ = runs
    rows = list(csv.DictReader((on / "sharpness.csv").open()))
    assert [int(r["step"]) for r in rows] == [0, 10, 20, 30]
    last = rows[-1]
    assert float(last["threshold"]) == pytest.approx(3.8 / float(last["lr"]), rel=1e-12)
    assert last["precond_sharpness"] == ""  # momentum has no preconditioner

    module = StableModule.load_from_checkpoint(on / "checkpoints" / "last.ckpt")
    dm = instantiate(module.cfg["data"])
    xs, ys = zip(*list(dm.train_dataloader()), strict=True)
    x, y = torch.cat(xs)[:PROBE].double(), torch.cat(ys)[:PROBE]
    model = module.model.double().train()
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]

    def loss_of(flat):
        chunks = [c.view(sh) for c, sh in zip(torch.split(flat, sizes), shapes, strict=True)]
        params = dict(zip(names, chunks, strict=True))
        logits = torch.func.functional_call(model, params, (x,))
        return torch.nn.functional.cross_entropy(logits, y)

    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    exact = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss_of, flat))[-1].item()
    # the run measured in float32 (40 Lanczos steps): float32 tolerance
    assert float(last["sharpness"]) == pytest.approx(exact, rel=2e-3)
    assert s["sharpness_last"] == pytest.approx(float(last["sharpness"]))
    assert s["sharpness_measurements"] == 4
    assert rows[0]["threshold"] == ""  # step 0 of the warmup: LR 0, no threshold
    ratio = max(float(r["sharpness"]) / float(r["threshold"]) for r in rows[1:])
    assert s["sharpness_max_ratio"] == pytest.approx(ratio)


def test_the_instruments_and_skip_step_resume_exactly(tmp_path):
    """A run that crashes at step 25 and resumes from its step-20 checkpoint ends with the
    sharpness and noise-scale files and the skipped-step record of an uninterrupted run,
    byte for byte (the noise scale's smoothing and the skip windows come from the
    checkpoint)."""
    args = [*TINY, "trainer.val_check_interval=10", "callbacks.sharpness.every_n_steps=10",
            "callbacks.noise_scale.every_n_steps=5", "skip_spikes.enabled=true",
            "skip_spikes.min_history=5"]  # fmt: skip
    full, rf = _run(tmp_path, "full", args)
    boom = ["+callbacks.boom._target_=helpers.RaiseAtStep", "+callbacks.boom.step=25"]
    with pytest.raises(RuntimeError, match="boom"):
        _run(tmp_path, "crashed", [*args, *boom])
    ckpt = tmp_path / "crashed" / "checkpoints" / "last.ckpt"
    resumed, rb = _run(tmp_path, "resumed", [*args, f"ckpt_path={ckpt}"])
    assert resumed["resumed_from"]["step"] == 20 and resumed["steps"] == 30
    for name in ("sharpness.csv", "noise_scale.csv", "grad_norms.csv"):
        assert (rb / name).read_bytes() == (rf / name).read_bytes(), name
    for key in ("skipped_step_list", "noise_scale", "sharpness_last", "val_loss"):
        assert resumed[key] == full[key], key


def test_preconditioned_sharpness_of_a_gpt_with_weight_decay(tmp_path):
    """The language model's Adam decays weights but not biases and gains: two parameter
    groups in another order than the model's. The preconditioned sharpness is measured at
    every point after the first update (it used to crash at the second), positive and
    finite, with Adam's threshold (2 + 2 beta1) / ((1 - beta1) lr)."""
    import math

    lm = ["experiment=shakespeare_char_cpu", "model.n_layer=1", "model.n_embd=16",
          "model.n_head=2", "max_train_steps=20", "schedule.warmup_steps=2",
          "trainer.val_check_interval=20", "test=false", "logger=csv", "plots=false",
          "print_config=false", "callbacks.progress_bar.refresh_rate=0",
          "callbacks.dense_eval=null", "callbacks.sharpness.every_n_steps=10",
          "callbacks.sharpness.probe_examples=8", "callbacks.sharpness.iterations=5"]  # fmt: skip
    s = train(compose_cfg(lm, tmp_path / "gpt"))
    assert s["status"] == "completed", s.get("error")
    rows = list(csv.DictReader((tmp_path / "gpt" / "sharpness.csv").open()))
    assert [int(r["step"]) for r in rows] == [0, 10, 20]
    for r in rows[1:]:
        pre, lr = float(r["precond_sharpness"]), float(r["lr"])
        assert math.isfinite(pre) and pre > 0
        assert float(r["precond_threshold"]) == pytest.approx((2 + 2 * 0.9) / (0.1 * lr))
