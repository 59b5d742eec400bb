"""Clipping strategies against their formulas, telemetry bookkeeping, and no host syncs."""

from __future__ import annotations

import contextlib
import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from stablelab.callbacks.grad_norm import GradNormMonitor, TooMuchClippingWarning
from stablelab.optim.clipping import (
    AGC,
    ClipStats,
    FixedNorm,
    NoClip,
    PercentileClip,
    ZScoreClip,
    global_grad_norm,
)
from stablelab.telemetry import StepTelemetry


def _params(arrays, dtype=torch.float64):
    """Named parameters whose .grad are the given arrays (weights = ones)."""
    out = []
    for i, a in enumerate(arrays):
        p = torch.nn.Parameter(torch.ones(np.shape(a), dtype=dtype))
        p.grad = torch.tensor(a, dtype=dtype)
        out.append((f"layer{i}.weight", p))
    return out


def _with_norm(target: float, rng) -> list[np.ndarray]:
    """Two gradient tensors whose global norm is exactly ``target`` (in float64)."""
    a, b = rng.standard_normal((4, 3)), rng.standard_normal(5)
    s = target / math.sqrt((a**2).sum() + (b**2).sum())
    return [a * s, b * s]


# ------------------------------------------------------------------ the norm
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_global_norm_matches_float64_reference(dtype, tol):
    rng = np.random.default_rng(0)
    arrays = [
        rng.standard_normal(s) * 10.0 ** rng.uniform(-3, 3)
        for s in [(7, 5), (11,), (2, 3, 4), (1,)]
    ]
    ref = math.sqrt(sum(float((a.astype(np.float64) ** 2).sum()) for a in arrays))
    got = global_grad_norm([torch.tensor(a, dtype=dtype) for a in arrays])
    assert float(got) == pytest.approx(ref, rel=tol)


# (Sharded gradients: the norm of FSDP2's DTensor shards is tested for real, in two gloo
# processes against one process: tests/integration/test_distributed.py, fixed clip and AGC.)


# ------------------------------------------------------------------ strategies
def test_fixed_norm_is_the_playbook_rule():
    named = _params([[3.0, 0.0], [[4.0]]])  # ||g|| = 5
    stats = FixedNorm(2.0)(named)
    np.testing.assert_allclose(named[0][1].grad.numpy(), [2 * 3 / 5, 0.0], rtol=1e-15)
    np.testing.assert_allclose(named[1][1].grad.numpy(), [[2 * 4 / 5]], rtol=1e-15)
    assert (float(stats.grad_norm), float(stats.grad_norm_clipped)) == (5.0, 2.0)
    assert float(stats.clipped) == 1.0 and float(stats.threshold) == 2.0
    # below the threshold: untouched, bit for bit
    named = _params([[3.0, 0.0], [[4.0]]])
    stats = FixedNorm(10.0)(named)
    assert named[0][1].grad.tolist() == [3.0, 0.0] and float(stats.clipped) == 0.0
    assert float(stats.grad_norm_clipped) == 5.0
    # a zero gradient stays zero (no 0/0)
    named = _params([[0.0, 0.0]])
    FixedNorm(1.0)(named)
    assert named[0][1].grad.tolist() == [0.0, 0.0]


def test_no_clip_measures_only():
    named = _params([[30.0, 40.0]])
    stats = NoClip()(named)
    assert named[0][1].grad.tolist() == [30.0, 40.0]
    assert float(stats.grad_norm) == 50.0 and float(stats.clipped) == 0.0
    assert math.isinf(float(stats.threshold))


@pytest.mark.parametrize("history_size", [10_000, 20])
def test_percentile_threshold_is_numpy_percentile_of_history(history_size):
    rng = np.random.default_rng(1)
    norms = np.exp(rng.normal(0, 1, size=60))
    norms[[30, 45]] *= 50  # spikes
    clip = PercentileClip(percentile=75, warmup_steps=10, history_size=history_size)
    for k, n in enumerate(norms):
        arrays = _with_norm(n, rng)
        named = _params(arrays)
        stats = clip(named)
        seen = norms[: k + 1][-history_size:]  # the current norm included
        if k + 1 <= 10:
            assert math.isinf(float(stats.threshold)) and float(stats.clipped) == 0
            expected = arrays
        else:
            lam = np.percentile(seen, 75)  # numpy's default: linear interpolation
            assert float(stats.threshold) == pytest.approx(lam, rel=1e-12)
            expected = [a * min(1.0, lam / n) for a in arrays]
            assert float(stats.clipped) == float(n > lam)
        for (_, p), e in zip(named, expected, strict=True):
            np.testing.assert_allclose(p.grad.numpy(), e, rtol=1e-12)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_norms_stay_out_of_the_adaptive_statistics(bad):
    """A step whose gradient is not finite (a float16 overflow the GradScaler skips, a
    spike skip_spikes skips) must not poison the thresholds of the steps after it: the
    percentile is numpy's over the finite norms of the window, and ZClip's statistics
    are its rule's over the finite norms."""
    rng = np.random.default_rng(3)
    norms = list(np.exp(rng.normal(0, 0.3, size=50)))
    for k in (3, 20):  # one inside the warm-up, one after it
        norms[k] = bad
    pct = PercentileClip(percentile=90, warmup_steps=10, history_size=30)
    z = ZScoreClip(z_threshold=2.0, alpha=0.9, warmup_steps=10, eps=1e-6)
    finite = [n for n in norms if math.isfinite(n)]
    ref_z = dict(zip([k for k, n in enumerate(norms) if math.isfinite(n)],
                     _zclip_reference(finite[:9] + finite[9:], 2.0, 0.9, 9, "adaptive", 1e-6),
                     strict=True))  # fmt: skip
    for k, n in enumerate(norms):
        a = [np.full(4, n / 2.0)] if math.isfinite(n) else [np.array([bad, 1.0, 1.0, 1.0])]
        t_pct = float(pct(_params(a)).threshold)
        t_z = float(z(_params(a)).threshold)
        if not math.isfinite(n) or k < 10:
            continue
        window = [x for x in norms[: k + 1][-30:] if math.isfinite(x)]
        assert t_pct == pytest.approx(np.percentile(window, 90), rel=1e-12), k
        assert t_z == ref_z[k] or t_z == pytest.approx(ref_z[k], rel=1e-12), k


def _zclip_reference(norms, z_thr, alpha, warmup, mode, eps):
    """ZClip written from its description, in float64: thresholds per step."""
    out, mu, var = [], None, None
    for k, g in enumerate(norms):
        if k < warmup:
            out.append(math.inf)
            if k == warmup - 1:
                w = np.array(norms[:warmup])
                mu, var = w.mean(), ((w - w.mean()) ** 2).mean()
            continue
        s = math.sqrt(var)
        z = (g - mu) / (s + eps)
        lam = (
            (mu + z_thr * s / (z / z_thr) if mode == "adaptive" else mu) if z > z_thr else math.inf
        )
        gc = min(g, lam)
        mu = alpha * mu + (1 - alpha) * gc
        var = alpha * var + (1 - alpha) * (gc - mu) ** 2
        out.append(lam)
    return out


@pytest.mark.parametrize("mode", ["adaptive", "mean"])
def test_zscore_matches_its_rule(mode):
    rng = np.random.default_rng(2)
    norms = list(np.exp(rng.normal(0, 0.2, size=80)))
    for k in (40, 41, 60):
        norms[k] *= 20  # spikes
    clip = ZScoreClip(z_threshold=2.0, alpha=0.9, warmup_steps=15, mode=mode, eps=1e-6)
    ref = _zclip_reference(norms, 2.0, 0.9, 15, mode, 1e-6)
    n_clipped = 0
    for k, n in enumerate(norms):
        arrays = _with_norm(n, rng)
        named = _params(arrays)
        stats = clip(named)
        if math.isinf(ref[k]):
            assert math.isinf(float(stats.threshold)), k
            assert float(stats.clipped) == 0
        else:
            n_clipped += 1
            assert float(stats.threshold) == pytest.approx(ref[k], rel=1e-9), k
            np.testing.assert_allclose(named[0][1].grad.numpy(), arrays[0] * ref[k] / n, rtol=1e-9)
    assert n_clipped >= 3  # the spikes were caught


def test_agc_clips_units_by_ratio_to_weight_norm():
    W = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    G = torch.tensor([[0.05, 0.0], [0.0, 0.01], [0.3, 0.4]], dtype=torch.float64)
    w = torch.nn.Parameter(W.clone())
    w.grad = G.clone()
    b = torch.nn.Parameter(torch.tensor([0.0, 0.0], dtype=torch.float64))  # ||W|| -> eps
    b.grad = torch.tensor([0.3, 0.4], dtype=torch.float64)
    head = torch.nn.Parameter(torch.ones(2, 2, dtype=torch.float64))
    head.grad = torch.full((2, 2), 100.0, dtype=torch.float64)
    lam, eps = 0.02, 1e-3
    stats = AGC(clipping=lam, eps=eps)(
        [("model.body.weight", w), ("model.body.bias", b), ("model.head.weight", head)]
    )
    # reference, row by row: ratio ||G_i|| / max(||W_i||, eps) against lambda
    for i in range(3):
        wn, gn = max(float(W[i].norm()), eps), float(G[i].norm())
        want = G[i] * (lam * wn / gn if gn / wn > lam else 1.0)
        torch.testing.assert_close(w.grad[i], want, rtol=1e-12, atol=0)
    # rows 0 (0.05/1) and 2 (0.5/5 = 0.1) exceed 0.02; row 1 (0.01/2) does not
    assert torch.equal(w.grad[1], G[1])
    # a vector is one unit: its weight norm is 0 -> eps
    torch.testing.assert_close(
        b.grad, torch.tensor([0.3, 0.4], dtype=torch.float64) * lam * eps / 0.5
    )
    assert torch.equal(head.grad, torch.full((2, 2), 100.0, dtype=torch.float64))  # excluded
    assert float(stats.clipped) == 1.0 and math.isnan(float(stats.threshold))
    after = math.sqrt(
        float(w.grad.square().sum() + b.grad.square().sum() + head.grad.square().sum())
    )
    assert float(stats.grad_norm_clipped) == pytest.approx(after, rel=1e-12)


# ------------------------------------------------------------------ bookkeeping
def _monitor_run(flags, window, every=7, tmp=None):
    """Feed crafted clipped flags through StepTelemetry + GradNormMonitor (stub trainer)."""
    mon = GradNormMonitor(log_every_n_steps=every, recent_window=window, plots=False)
    trainer = SimpleNamespace(
        is_global_zero=True,
        loggers=[],
        default_root_dir=str(tmp),
        log_every_n_steps=every,
        world_size=1,
        callbacks=[mon],
    )
    module = SimpleNamespace(telemetry=None)
    mon.setup(trainer, module, "fit")
    one = torch.ones(())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step, f in enumerate(flags):
            module.telemetry.record(step, ClipStats(one * (step + 1), one, one * f, one * 2))
            mon.on_train_batch_end(trainer, module, None, None, step)
        mon.on_train_end(trainer, module)
    return mon, [w for w in caught if issubclass(w.category, TooMuchClippingWarning)]


def test_clip_fraction_is_exact_and_every_step_is_kept(tmp_path):
    rng = np.random.default_rng(3)
    flags = (rng.random(103) < 0.37).astype(float)
    mon, warned = _monitor_run(flags, window=10, tmp=tmp_path)
    assert [r["step"] for r in mon.rows] == list(range(103))  # no step lost, in order
    fractions = [r["clip_fraction"] for r in mon.rows]
    assert fractions == [flags[: k + 1].sum() / (k + 1) for k in range(103)]
    s = mon.summary()
    assert s["clip_fraction"] == flags.sum() / 103
    windows = [flags[k - 9 : k + 1].mean() for k in range(9, 103)]
    assert s["clip_fraction_recent_max"] == pytest.approx(max(windows))
    norms = np.arange(1, 104, dtype=float)
    assert s["grad_norm_p90"] == pytest.approx(np.percentile(norms, 90))
    assert s["recommended_clip_threshold"] == s["grad_norm_p90"]
    lines = (tmp_path / "grad_norms.csv").read_text().splitlines()
    assert (
        lines[0] == "step,grad_norm,grad_norm_clipped,clipped,clip_threshold" and len(lines) == 104
    )


def test_a_restored_monitor_has_the_clip_fractions_and_counters_of_its_checkpoint(tmp_path):
    """The running clip fraction is not in grad_norms.csv nor in the checkpoint: a monitor
    loaded from one recomputes it row by row (against the flags' own running means), and its
    summary is the one of the monitor that was saved."""
    import io

    rng = np.random.default_rng(4)
    flags = (rng.random(60) < 0.4).astype(float)
    mon, _ = _monitor_run(flags, window=10, tmp=tmp_path)
    buf = io.BytesIO()
    torch.save(mon.state_dict(), buf)
    buf.seek(0)
    back = GradNormMonitor(recent_window=10, plots=False)
    back.load_state_dict(torch.load(buf, weights_only=True))
    assert [r["clip_fraction"] for r in back.rows] == [
        flags[: k + 1].sum() / (k + 1) for k in range(60)
    ]
    assert back.summary() == mon.summary()


def test_clip_fraction_window_peak_is_none_in_a_run_shorter_than_the_window(tmp_path):
    flags = np.ones(9)  # every step clipped, but no 10-step window was ever complete
    mon, _ = _monitor_run(flags, window=10, tmp=tmp_path)
    s = mon.summary()
    assert s["clip_fraction"] == 1.0 and s["clip_fraction_recent_max"] is None
    assert s["clip_fraction_window"] == 10


@pytest.mark.parametrize(
    "flags,warn",
    [
        ([1.0] * 60 + [0.0] * 40, True),  # 60% over the run
        ([1.0, 0.0] * 50, False),  # exactly 50%: not more than half
        ([0.0] * 80 + [1.0] * 20, True),  # 20% over the run, 100% of the last 20 steps
    ],
    ids=["run", "half", "recent"],
)
def test_too_much_clipping_warns_once_with_the_advice(tmp_path, flags, warn):
    mon, warned = _monitor_run(flags, window=20, tmp=tmp_path)
    assert len(warned) == (1 if warn else 0)
    assert mon.summary()["too_much_clipping"] is warn
    if warn:
        assert "lower the learning rate instead" in str(warned[0].message)


# ------------------------------------------------------------------ no host sync
SYNC_METHODS = ["item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__", "nonzero"]


@contextlib.contextmanager
def forbid_host_sync(monkeypatch):
    """Make every Tensor method that waits for a value on the host raise."""
    calls = []

    def guard(name, orig):
        def wrapped(self, *a, **k):
            calls.append(name)
            raise AssertionError(f"host synchronisation: Tensor.{name}()")

        return wrapped

    with monkeypatch.context() as m:
        for name in SYNC_METHODS:
            m.setattr(torch.Tensor, name, guard(name, getattr(torch.Tensor, name)))
        yield calls


@pytest.mark.parametrize(
    "clipper",
    [NoClip(), FixedNorm(1.0), PercentileClip(warmup_steps=3), ZScoreClip(warmup_steps=3), AGC()],
    ids=["none", "fixed", "percentile", "zscore", "agc"],
)
def test_clipping_and_recording_do_not_sync(monkeypatch, clipper):
    rng = np.random.default_rng(4)
    tel = StepTelemetry(every=50)
    named = _params(_with_norm(1.0, rng), dtype=torch.float32)
    losses = torch.rand(12, 2) + 1
    with forbid_host_sync(monkeypatch):
        for step in range(12):  # through the warm-up of the adaptive strategies
            for _, p in named:
                p.grad = torch.randn_like(p) * (10 if step == 9 else 1)
            for micro in range(2):  # two micro-batches (gradient accumulation)
                tel.add_loss(losses[step, micro])
            tel.record(step, clipper(named))
    # positive control: the detector does fire, on the one transfer per interval
    with forbid_host_sync(monkeypatch), pytest.raises(AssertionError, match="host synchronisation"):
        tel.flush()
    rows = tel.flush()
    assert [r["step"] for r in rows] == list(range(12))
    # each step's loss is the mean of its micro-batches (float64 reference)
    ref = losses.double().mean(dim=1).tolist()
    assert [r["loss"] for r in rows] == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize("new_every", [7, 3, 1])
def test_telemetry_restored_into_a_shorter_interval_keeps_every_row(new_every):
    """A checkpoint taken with 5 rows pending (interval 7) restored by a run that reads
    back every 3 or every step: every row comes back once, in step order, with its values
    (written by hand), then the new rows (no refusal, nothing lost)."""
    one = torch.ones(())
    before = StepTelemetry(every=7)
    for step in range(12):  # flushed at 7 rows; 5 pending at the checkpoint
        if before.pending == 7:
            before.flush()
        before.add_loss(one * (100 + step))
        before.record(step, ClipStats(one * step, one * step / 2, one * (step % 2), one * 3))
    state = before.state_dict()
    assert state["steps"] == [7, 8, 9, 10, 11]
    after = StepTelemetry(every=new_every)
    after.load_state_dict(state)
    rows: list[dict] = []
    for step in range(12, 16):
        after.add_loss(one * (100 + step))
        after.record(step, ClipStats(one * step, one * step / 2, one * (step % 2), one * 3))
        if after.pending == new_every:
            rows += after.flush()
    rows += after.flush()
    assert [r["step"] for r in rows] == list(range(7, 16))
    for r in rows:
        s = r["step"]
        assert (r["loss"], r["grad_norm"], r["grad_norm_clipped"]) == (100 + s, s, s / 2)
        assert (r["clipped"], r["clip_threshold"], r["skipped"]) == (s % 2, 3, 0)
