"""Divergence, loss-rise and spike detection against closed forms and a numpy reference,
the dense-evaluation schedule (the reading of crafted runs: test_policy.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stablelab.callbacks.dense_eval import DenseEval
from stablelab.stability import InstabilityDetector


def _feed(det: InstabilityDetector, losses, norms=None):
    norms = [None] * len(losses) if norms is None else norms
    for t, (lo, g) in enumerate(zip(losses, norms, strict=True)):
        det.update(t, float(lo), None if g is None else float(g))
    return det


# ------------------------------------------------------------------ divergence
@pytest.mark.parametrize(
    "bad_loss,bad_norm,reason",
    [
        (math.nan, 1.0, "training loss is nan"),
        (math.inf, 1.0, "training loss is inf"),
        (2.0, math.nan, "gradient norm is nan"),
        (2.0, math.inf, "gradient norm is inf"),
        (30.01, 1.0, "x initial loss"),  # > 10 x the first loss (3.0)
    ],
)
def test_divergence_at_the_first_bad_step_and_nothing_after(bad_loss, bad_norm, reason):
    losses = [3.0, 2.5, 2.4, 2.3, bad_loss, 1.0, 1.0]
    norms = [1.0, 1.0, 1.0, 1.0, bad_norm, 1.0, 1.0]
    det = _feed(InstabilityDetector(max_loss_ratio=10.0), losses, norms)
    s = det.summary()
    assert s["diverged"] and s["diverged_at_step"] == 4 and s["first_instability_step"] == 4
    assert reason in s["divergence_reason"]
    assert det.steps_seen == 5  # steps after the divergence are not analysed
    assert s["unstable"]


def test_loss_at_exactly_the_ratio_is_not_divergence_and_ratio_can_be_off():
    det = _feed(InstabilityDetector(max_loss_ratio=10.0), [3.0, 30.0])
    assert not det.summary()["diverged"]
    det = _feed(InstabilityDetector(max_loss_ratio=None), [3.0, 3e6, 1.0])
    assert det.diverged is None


# ------------------------------------------------------------------ loss rise
@pytest.mark.parametrize("beta,margin", [(0.9, 0.1), (0.95, 0.05), (0.5, 0.3)])
def test_rise_fires_at_the_step_the_closed_form_gives(beta, margin):
    """Loss 1.0 for 50 steps, then 1.5: the EMA stays at its minimum 1.0 and afterwards
    m_{49+k} = 1.5 - 0.5 beta^k, so the rise 0.5 (1 - beta^k) first exceeds margin * 1.0 at
    k = floor(log(1 - 2 margin) / log(beta)) + 1."""
    losses = [1.0] * 50 + [1.5] * 100
    det = _feed(InstabilityDetector(ema_decay=beta, rise_margin=margin), losses)
    k = math.floor(math.log(1 - 2 * margin) / math.log(beta)) + 1
    s = det.summary()
    assert s["loss_rise_step"] == 49 + k and s["loss_rises"] == 1
    assert s["first_instability_step"] == 49 + k and s["unstable"]
    assert s["max_loss_rise"] == pytest.approx(0.5 * (1 - beta**100), rel=1e-12)


def _reference_rise_steps(losses, beta, margin):
    """float64 numpy: the EMA as a weighted sum (no recursion), the running minimum, and
    the episode starts (rise > margin * L0; re-armed once the rise is <= margin * L0 / 2)."""
    L = np.asarray(losses, dtype=np.float64)
    n = len(L)
    t = np.arange(n)
    w = np.where(t[:, None] >= t[None, :], beta ** (t[:, None] - t[None, :]), 0.0)
    w[:, 1:] *= 1 - beta
    w[:, 0] = beta**t  # m_0 = L_0 carries weight beta^t
    ema = w @ L
    rise = ema - np.minimum.accumulate(ema)
    thr = margin * L[0]
    starts, armed = [], True
    for i, r in enumerate(rise):
        if armed and r > thr:
            starts.append(i)
            armed = False
        elif not armed and r <= thr / 2:
            armed = True
    return starts, float(rise.max())


def test_rise_episodes_match_a_numpy_reference_on_a_noisy_series():
    rng = np.random.default_rng(0)
    n = 600
    base = 2.3 * np.exp(-np.arange(n) / 80) + 0.2
    base[250:320] += np.linspace(0, 0.8, 70)  # a slow rise ...
    base[320:400] += 0.8 * np.exp(-np.arange(80) / 15)  # ... and recovery
    base[480:] += 0.6  # then a jump that stays
    losses = base + rng.normal(0, 0.03, n)
    det = _feed(InstabilityDetector(ema_decay=0.9, rise_margin=0.1, spike_zscore=1e9), losses)
    starts, max_rise = _reference_rise_steps(losses, 0.9, 0.1)
    assert len(starts) >= 2  # the series is crafted to rise twice: the test can fail
    got = [e.step for e in det.events if e.kind == "loss_rise"]
    assert got == starts
    assert det.summary()["max_loss_rise"] == pytest.approx(max_rise, rel=1e-9)


def test_a_new_rise_episode_needs_the_rise_to_fall_to_half_the_margin():
    """L0 = 1, margin 0.1: down to 0.5, up to 0.8 (episode 1), back to 0.535 (rise 0.035:
    below half the margin, re-armed), up again (episode 2); back to only 0.56 (rise 0.06:
    still armed off) and up again: no third episode."""
    losses = [1.0] * 50 + [0.5] * 100 + [0.8] * 60 + [0.535] * 100 + [0.8] * 60
    losses += [0.56] * 100 + [0.8] * 60
    det = _feed(InstabilityDetector(ema_decay=0.9, rise_margin=0.1, spike_zscore=1e9), losses)
    starts, _ = _reference_rise_steps(losses, 0.9, 0.1)
    assert len(starts) == 2
    assert [e.step for e in det.events if e.kind == "loss_rise"] == starts


def test_validation_rise_episodes_on_dense_evaluations():
    """V0 = 2, margin 0.2: 1.3 is 0.3 above the minimum 1.0 (episode); 0.9 is a new minimum
    (rise 0: re-armed); 1.15 is 0.25 above it (episode 2); NaN while in an episode is not a
    new one, and the run's training-loss state is untouched."""
    det = InstabilityDetector(rise_margin=0.1)
    vals = [2.0, 1.5, 1.0, 1.05, 1.3, 0.9, 1.15, math.nan]
    for step, v in enumerate(vals, start=1):
        det.update_eval(step, v)
    assert [(e.step, e.kind) for e in det.events] == [(5, "val_loss_rise"), (7, "val_loss_rise")]
    s = det.summary()
    assert s["val_loss_rises"] == 2 and s["val_loss_rise_step"] == 5
    assert s["max_val_loss_rise"] == pytest.approx(0.3) and s["unstable"]
    assert s["first_instability_step"] == 5 and s["loss_rises"] == 0
    det2 = InstabilityDetector(rise_margin=0.1)
    det2.update_eval(1, 2.0)
    assert [e.kind for e in det2.update_eval(2, math.inf)] == ["val_loss_rise"]


# ------------------------------------------------------------------ spikes
def _reference_spikes(x, window, min_hist, z, min_dev=0.0):
    x = np.asarray(x, dtype=np.float64)
    out = []
    for t in range(len(x)):
        prev = x[max(0, t - window) : t]
        if len(prev) < min_hist:
            continue
        mu, sd = prev.mean(), prev.std()  # population std
        if sd > 0 and x[t] - mu > z * sd and x[t] - mu > min_dev:
            out.append(t)
    return out


def test_spikes_match_a_numpy_reference():
    rng = np.random.default_rng(1)
    n = 700
    losses = 1.0 + rng.normal(0, 0.05, n)
    norms = np.exp(rng.normal(0, 0.2, n))
    for t in (100, 101, 350, 600):
        losses[t] += 1.5  # lifts the loss by more than rise_margin * L0
        norms[t] *= 8
    losses[200] += 0.08  # many sigmas, but less than the margin: not a loss spike
    det = _feed(
        InstabilityDetector(spike_window=128, spike_min_history=64, spike_zscore=6.0),
        losses,
        norms,
    )
    margin = 0.1 * losses[0]
    ref_loss = _reference_spikes(losses, 128, 64, 6.0, margin)
    ref_norm = _reference_spikes(norms, 128, 64, 6.0)
    assert 100 in ref_loss and 200 not in ref_loss and 600 in ref_norm  # crafted as intended
    assert [e.step for e in det.events if e.kind == "loss_spike"] == ref_loss
    assert [e.step for e in det.events if e.kind == "grad_norm_spike"] == ref_norm
    s = det.summary()
    assert (s["loss_spikes"], s["grad_norm_spikes"]) == (len(ref_loss), len(ref_norm))


@pytest.mark.parametrize(
    "x,spike",
    [
        (8.01, True),  # 6.01 population sd above the mean 2 of [1, 3, 1, 3, ...]
        (8.0, False),  # exactly 6 sd: not more than
        (8.04, True),  # but below 6 *sample* sd (6.047): the population sd is the rule
    ],
)
def test_spike_threshold_is_strict_and_uses_the_population_std(x, spike):
    norms = [1.0, 3.0] * 32 + [x]  # the window: mean 2, population sd 1
    det = _feed(InstabilityDetector(spike_min_history=64), [1.0] * 65, norms)
    assert det.summary()["grad_norm_spikes"] == (1 if spike else 0)


def test_spike_window_holds_only_the_previous_values():
    """An outlier 129 steps back has left a 128-step window (mean 2, sd 1: 8.01 spikes)
    but not a 129-step one (mean 2.06, sd 1.22: z = 4.9)."""
    norms = [10.0] + [1.0, 3.0] * 64 + [8.01]
    losses = [1.0] * len(norms)
    inside = _feed(InstabilityDetector(spike_window=128), losses, norms)
    assert [e.step for e in inside.events] == [129]
    assert _feed(InstabilityDetector(spike_window=129), losses, norms).events == []


def test_grad_norm_spikes_alone_are_reported_but_only_count_as_instability_if_asked():
    norms = [1.0, 1.1] * 40 + [50.0] + [1.0] * 10
    losses = [2.0] * len(norms)
    quiet = _feed(InstabilityDetector(), losses, norms).summary()
    assert quiet["grad_norm_spikes"] == 1 and quiet["first_grad_norm_spike_step"] == 80
    assert not quiet["unstable"] and quiet["first_instability_step"] is None
    strict = _feed(InstabilityDetector(grad_norm_spikes_are_instability=True), losses, norms)
    assert strict.summary()["unstable"] and strict.summary()["first_instability_step"] == 80


def test_state_round_trip_continues_identically():
    rng = np.random.default_rng(2)
    losses = 2 + rng.normal(0, 0.3, 400)
    norms = np.exp(rng.normal(0, 0.5, 400))
    whole = _feed(InstabilityDetector(), losses, norms)
    first = _feed(InstabilityDetector(), losses[:150], norms[:150])
    second = InstabilityDetector()
    second.load_state_dict(first.state_dict())
    for t in range(150, 400):
        second.update(t, float(losses[t]), float(norms[t]))
    assert second.summary() == whole.summary()
    assert second.events == whole.events
    # loading into a detector that has seen other data (or loading twice) replaces its
    # state: a state saved after 50 steps holds 50 values of the 128-value spike window
    early = _feed(InstabilityDetector(), losses[:50], norms[:50])
    third = _feed(InstabilityDetector(), losses[::-1][:200], norms[::-1][:200])
    third.load_state_dict(early.state_dict())
    third.load_state_dict(early.state_dict())
    assert third.state_dict() == early.state_dict()
    for t in range(50, 400):
        third.update(t, float(losses[t]), float(norms[t]))
    assert third.summary() == whole.summary() and third.events == whole.events


# ------------------------------------------------------------------ float16 overflow
def test_float16_overflows_are_skips_until_24_in_a_row():
    """Under a GradScaler a non-finite gradient norm with a finite loss is an overflow the
    scaler skipped: not divergence, and outside the windows; 24 in a row (the scale cut
    2^24-fold) are; a non-finite loss stays divergence."""
    from stablelab.stability import AMP_OVERFLOW

    det = InstabilityDetector()
    for t in range(100):  # overflows at 10, 11 and 40: the other steps steady
        over = t in (10, 11, 40)
        det.update(t, 2.0, math.inf if over else 1.0, amp_overflow=over)
    s = det.summary()
    assert not s["diverged"] and not s["unstable"]
    assert s["amp_overflow_steps"] == 3 and s["amp_overflow_step_list"] == [10, 11, 40]
    assert [e.kind for e in det.events] == [AMP_OVERFLOW] * 3
    assert det.steps_seen == 97 and len(det._grad_window.values) == 97  # none entered
    for t in range(100, 124):  # 24 consecutive overflows: the 24th diverges
        det.update(t, 2.0, math.nan, amp_overflow=True)
    s = det.summary()
    assert s["diverged"] and s["diverged_at_step"] == 123
    assert "overflowed at 24 consecutive steps" in s["divergence_reason"]
    assert s["amp_overflow_steps"] == 3 + 23
    nan_loss = InstabilityDetector()
    nan_loss.update(0, 2.0, 1.0)
    nan_loss.update(1, math.nan, math.nan, amp_overflow=True)
    assert nan_loss.summary()["diverged_at_step"] == 1


def test_a_clean_step_resets_the_overflow_count_and_the_count_survives_a_checkpoint():
    det = InstabilityDetector()
    for t in range(23):
        det.update(t, 2.0, math.inf, amp_overflow=True)
    det.update(23, 2.0, 1.0)  # one clean step: the scaler found a scale that fits
    for t in range(24, 47):
        det.update(t, 2.0, math.inf, amp_overflow=True)
    assert not det.summary()["diverged"]  # 23, one clean, 23
    resumed = InstabilityDetector()
    resumed.load_state_dict(det.state_dict())
    resumed.update(47, 2.0, math.inf, amp_overflow=True)  # the 24th of this run
    assert resumed.summary()["diverged_at_step"] == 47


# ------------------------------------------------------------------ dense evaluation
def test_dense_schedule_is_every_step_then_every_k():
    cb = DenseEval(every_step_until=7, then_every=5)
    assert [s for s in range(0, 31) if cb.due(s)] == [1, 2, 3, 4, 5, 6, 7, 10, 15, 20, 25, 30]
    only = DenseEval(every_step_until=4, then_every=None)
    assert [s for s in range(0, 100) if only.due(s)] == [1, 2, 3, 4]
    assert not DenseEval(every_step_until=0).due(1)
