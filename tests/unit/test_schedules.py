"""Schedules against their closed forms, the playbook's 5% / 10% warmup rules, and the LR
that an optimizer really sees through LambdaLR."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from stablelab.optim.schedules import (
    Constant,
    Cosine,
    Linear,
    RSqrt,
    Step,
    WarmupScheduleWarning,
)

W, P, M = 100, 200, 1000  # warmup, post-warmup, max_train_steps


@pytest.mark.parametrize("cls", [Constant, Cosine, Linear, RSqrt, Step])
def test_warmup_and_hold(cls):
    s = cls(M, warmup_steps=W, post_warmup_steps=P)
    assert s(0) == 0.0  # the ramp starts at 0
    assert s(1) == pytest.approx(1 / W)
    assert s(W // 2) == pytest.approx(0.5)
    assert s(W - 1) == pytest.approx((W - 1) / W)
    assert s(W) == 1.0  # end of warmup: the base learning rate
    assert s(W + P - 1) == 1.0  # end of post-warmup
    assert s(W + P) == 1.0  # decay starts from there


def test_decay_closed_forms():
    T = M - W - P  # decay steps
    last = M - 1
    cos = Cosine(M, warmup_steps=W, post_warmup_steps=P, final_lr_fraction=0.1)
    assert cos(last) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (T - 1) / T)))
    assert cos(W + P + T // 2) == pytest.approx(0.55)
    assert cos(M) == pytest.approx(0.1)
    lin = Linear(M, warmup_steps=W, post_warmup_steps=P, final_lr_fraction=0.2)
    assert lin(last) == pytest.approx(1 - 0.8 * (T - 1) / T)
    assert lin(W + P + T // 4) == pytest.approx(0.8)
    rs = RSqrt(M, warmup_steps=W, post_warmup_steps=P, timescale=50)
    assert rs(W + P + 150) == pytest.approx(0.5)  # 1 / sqrt(1 + 150 / 50)
    st = Step(M, warmup_steps=W, post_warmup_steps=P, milestones=[0.5, 0.75], gamma=0.1)
    assert st(W + P + T // 2 - 1) == 1.0 and st(W + P + T // 2) == pytest.approx(0.1)
    assert st(last) == pytest.approx(0.01)
    assert Constant(M)(last) == 1.0 and Constant(M)(0) == 1.0  # no warmup


def test_extend_max_train_steps_prepends_warmup():
    # the playbook's example: a 10,000-step baseline + 1,000 warmup steps = 11,000 steps
    s = Cosine(10_000, warmup_steps=1_000, extend_max_train_steps=True)
    assert s.total_steps == 11_000
    assert s(1_000) == 1.0 and s(11_000) == pytest.approx(0.0, abs=1e-12)
    # and the decay covers the baseline's 10,000 steps
    assert s(1_000 + 5_000) == pytest.approx(0.5)
    assert Cosine(10_000, warmup_steps=1_000).total_steps == 10_000


@pytest.mark.parametrize(
    "warmup,match",
    [(400, None), (500, None), (600, "above 5%"), (1000, "above 5%"), (1100, "10% maximum")],
)
def test_warmup_length_rules(warmup, match):
    s = Constant(10_000, warmup_steps=warmup)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        msg = s.warn_if_long_warmup()
    if match is None:
        assert msg is None and not w
    else:
        assert match in msg and issubclass(w[0].category, WarmupScheduleWarning)


def test_lambda_lr_applies_the_schedule_per_step():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.5)
    s = Cosine(50, warmup_steps=10, post_warmup_steps=5, final_lr_fraction=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, s)
    seen = []
    for _ in range(50):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [0.5 * s(k) for k in range(50)]
    assert seen == pytest.approx(expected, abs=1e-15)
    assert seen[0] == 0 and seen[10] == 0.5


def test_the_lr_curve_of_a_long_run_is_bounded_and_keeps_the_warmup_edges():
    """lr.png / schedule-plot of a 100M-step run: at most ~20,000 points (every step took
    minutes and ~17 GB), evenly spread, with warmup's last ramp step, its top and the end
    of the hold exact; values against the cosine's closed form in float64."""
    from stablelab.analysis.runs import MAX_CURVE_POINTS, curve_steps, lr_curve

    total, w, p, f = 100_000_000, 1_000, 3_000, 0.1
    cfg = {"optimizer": {"lr": 0.5},
           "schedule": {"_target_": "stablelab.optim.schedules.Cosine", "warmup_steps": w,
                        "post_warmup_steps": p, "max_train_steps": total,
                        "final_lr_fraction": f}}  # fmt: skip
    _, steps, lrs = lr_curve(cfg)
    assert len(steps) <= MAX_CURVE_POINTS + 4 and steps == sorted(set(steps))
    assert {0, w - 1, w, w + p - 1, w + p, total - 1} <= set(steps)
    gap = math.ceil(total / (MAX_CURVE_POINTS - 1))
    assert max(b - a for a, b in zip(steps, steps[1:], strict=False)) <= gap
    T = total - w - p

    def closed_form(s: int) -> float:
        if s < w:
            return 0.5 * s / w
        if s < w + p:
            return 0.5
        return 0.5 * (f + (1 - f) * 0.5 * (1 + math.cos(math.pi * (s - w - p) / T)))

    assert lrs == pytest.approx([closed_form(s) for s in steps], rel=1e-9, abs=1e-15)
    # a short run: every step, nothing added
    assert curve_steps(50, (10, 30)) == list(range(50))
    assert curve_steps(10, (3,), most=4) == [0, 2, 3, 6, 9]
