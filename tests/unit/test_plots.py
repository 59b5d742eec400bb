"""Plots a user reads at a glance: readable axes whatever the data."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from stablelab.analysis import plots  # noqa: E402


@pytest.fixture
def captured(monkeypatch):
    """The figure each plot function draws, before it is closed."""
    figs = []
    real = plots._save

    def keep(fig, path):
        fig.canvas.draw()
        figs.append(fig)
        return real(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return figs


@pytest.mark.parametrize("spread", [0.4, 2.5, 6.0])
def test_histogram_log_axis_has_few_plain_labels(tmp_path, captured, spread):
    norms = np.exp(np.random.default_rng(0).normal(0, spread, 600))
    plots.plot_grad_norm_hist(list(norms), tmp_path / "h.png")
    ax = captured[0].axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert 2 <= len(labels) <= 8, labels
    for text in labels:  # plain numbers, no mathtext "3\\times10^{-1}"
        float(text)
    assert not [t.get_text() for t in ax.get_xticklabels(minor=True) if t.get_text()]
    # every label inside the axis, in increasing order, the data inside the axis
    values = [float(t) for t in labels]
    lo, hi = ax.get_xlim()
    assert values == sorted(values) and lo <= values[0] and values[-1] <= hi
    assert lo <= norms.min() and norms.max() <= hi


def test_every_log_axis_of_a_saved_figure_gets_plain_labels(tmp_path, captured):
    steps = list(range(600))
    norms = list(np.exp(np.random.default_rng(1).normal(0, 0.4, 600)))
    plots.plot_grad_norms(steps, norms, [5.0] * 600, tmp_path / "g.png")
    ax = captured[0].axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    assert 2 <= len(labels) <= 8 and all(float(t) > 0 for t in labels), labels
    assert not [t.get_text() for t in ax.get_yticklabels(minor=True) if t.get_text()]
    lo, hi = ax.get_ylim()
    assert lo <= min(norms) and max(norms) <= hi and hi >= 5.0  # the threshold stays in view


def test_constant_lr_plot_starts_at_zero(tmp_path, captured):
    plots.plot_schedule([3e-3] * 40, tmp_path / "lr.png", title="Constant")
    lo, hi = captured[0].axes[0].get_ylim()
    assert lo == 0 and 3e-3 < hi < 3.5e-3


@pytest.mark.parametrize("values", [[2.2783, 2.2828], [2.3, 2.1, 2.25], [150.0, 180.0]])
def test_a_narrow_log_axis_and_a_short_run_read_as_plain_numbers(tmp_path, captured, values):
    """A run of a few steps: its losses span less than a factor of 3 (matplotlib wrote
    '2.283x10^0' at minor ticks), and its step axis is short (0.2, 0.4, ... of a step)."""
    train = list(enumerate(values))
    plots.plot_loss_curves(train, tmp_path / "l.png", val=[(len(values), values[-1])])
    ax = captured[0].axes[0]
    assert ax.get_yscale() == "log"
    labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    assert len(labels) >= 2 and len(set(labels)) == len(labels), labels
    numbers = [float(t) for t in labels]  # plain numbers, no mathtext
    assert numbers == sorted(numbers)
    lo, hi = ax.get_ylim()
    assert lo <= min(values) and max(values) <= hi and lo <= numbers[0] and numbers[-1] <= hi
    assert not [t.get_text() for t in ax.get_yticklabels(minor=True) if t.get_text()]
    steps = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert steps and all(float(s.replace("\N{MINUS SIGN}", "-")).is_integer() for s in steps)
    # a one-point series is drawn (a marker), not an empty legend entry
    assert all(len(line.get_xdata()) > 1 or line.get_marker() not in ("", "None", None)
               for line in ax.get_lines())  # fmt: skip


def test_a_one_step_run_draws_its_point(tmp_path, captured):
    """max_train_steps=1: the schedule and the gradient norm have one point each, which a
    plain line does not draw; a marker, and a step axis around it."""
    plots.plot_schedule([3e-3], tmp_path / "lr.png")
    plots.plot_grad_norms([0], [1.4], [float("inf")], tmp_path / "g.png")
    for fig in captured:
        ax = fig.axes[0]
        (line,) = ax.get_lines()
        assert line.get_marker() not in ("", "None", None)
        lo, hi = ax.get_xlim()
        assert lo < 0 < 1 <= hi  # step 0 inside, not a +-0.05 zoom


def test_a_log_axis_over_about_a_decade_gets_at_least_three_labels(tmp_path, captured):
    """Losses from 1.3 down to 0.22: the 1-2-5 labels inside are only 0.5 and 1, which
    leaves the lower third unlabelled; a denser plain sequence (0.3, 0.5, 1) is used."""
    values = list(np.geomspace(1.3, 0.22, 50))
    plots.plot_loss_curves(list(enumerate(values)), tmp_path / "l.png")
    ax = captured[0].axes[0]
    labels = [float(t.get_text()) for t in ax.get_yticklabels() if t.get_text()]
    lo, hi = ax.get_ylim()
    assert 3 <= len(labels) <= 8 and all(lo <= v <= hi for v in labels), labels
    assert labels[0] < 0.35  # the lower part of the axis is labelled


@pytest.mark.parametrize("lo,hi", [(1300.0, 45000.0), (0.013, 0.9), (2.2, 95.0)])
def test_a_log_axis_is_labelled_near_both_ends(tmp_path, captured, lo, hi):
    """Data at 1,500 under a lowest label of 3,000 cannot be read off: a label within a
    factor of 2 of each end of the axis (at most 8)."""
    norms = list(np.geomspace(lo, hi, 40))
    plots.plot_grad_norms(list(range(40)), norms, [float("inf")] * 40, tmp_path / "g.png")
    ax = captured[0].axes[0]
    labels = [float(t.get_text()) for t in ax.get_yticklabels() if t.get_text()]
    bottom, top = ax.get_ylim()
    assert 3 <= len(labels) <= 8, labels
    assert labels[0] <= 2 * bottom and labels[-1] >= top / 2, (labels, bottom, top)


def _sweep_trial(root, name, lr, warmup, val):
    import json

    import yaml

    d = root / name
    d.mkdir(parents=True)
    summary = {"status": "completed", "feasible": True, "unstable": False, "val_loss": val,
               "initial_loss": 2.3, "total_steps": 50, "steps": 50}  # fmt: skip
    (d / "summary.json").write_text(json.dumps(summary))
    cfg = {"optimizer": {"lr": lr}, "schedule": {"warmup_steps": warmup}}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = "".join(f"{s},{2.3 - s * lr},{2.3 - s * lr}\n" for s in range(50))
    (d / "stability.csv").write_text("step,loss,loss_ema\n" + rows)


def test_sweep_curves_say_which_sweep_and_which_curve_is_lr_star(tmp_path, captured):
    """The curves of an LR sweep are titled with lr* and its curve is marked in the legend
    (lr* = 0.01, the lowest validation loss); a warmup sweep's name the sweep's LR."""
    from stablelab.analysis.sweep import analyze_lr_sweep

    for lr, val in ((0.003, 0.5), (0.01, 0.3), (0.02, 0.4)):
        _sweep_trial(tmp_path / "lr", f"lr_{lr}", lr, 0, val)
    analyze_lr_sweep(tmp_path / "lr")
    (curves,) = [f for f in captured if "next larger" in f.axes[0].get_title()]
    assert curves.axes[0].get_title() == "training loss at lr* = 0.01 and the next larger LRs"
    labels = [t.get_text() for t in curves.axes[0].get_legend().get_texts()]
    assert labels == ["lr 0.01 (lr*)", "lr 0.02"]
    captured.clear()
    for w in (5, 10):
        _sweep_trial(tmp_path / "warmup", f"warmup_{w}", 0.02, w, 0.4)
    analyze_lr_sweep(tmp_path / "warmup")
    assert [f.axes[0].get_title() for f in captured] == ["warmup sweep at lr 0.02: training loss"]


def _lm_run(run, rows, header, cfg):
    import csv

    import yaml

    run.mkdir()
    with (run / "lm_monitor.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))


def test_lm_monitor_figure_draws_each_layer_and_the_configured_alarms(tmp_path, captured):
    """lm_monitor.png from a hand-written lm_monitor.csv: a line per layer holding that
    column's values, named by layer index and module, the run's own alarm levels."""
    from stablelab.analysis.report import _lm_monitor_plot

    header = ["step", "logz_mean", "logz_max", "attn_logit_max",
              "attn_logit_max/blocks.0.branch", "attn_logit_max/blocks.2.branch"]  # fmt: skip
    rows = [[0, 4.2, 4.3, 0.3, 0.25, 0.3], [50, 9.5, 12.0, 80.0, 80.0, 3.0],
            [100, 11.0, 15.0, 120.0, 120.0, 4.0]]  # fmt: skip
    cfg = {"callbacks": {"lm_monitor": {"logit_alarm": 70.0, "growth_factor": 5.0,
                                        "logz_alarm": 18.0}}}  # fmt: skip
    _lm_run(tmp_path / "run", rows, header, cfg)
    _lm_monitor_plot(tmp_path / "run", cfg)
    assert (tmp_path / "run" / "lm_monitor.png").is_file()
    attn, logz = captured[0].axes
    lines = {ln.get_label(): ln for ln in attn.get_lines()}
    assert list(lines) == ["layer 0 (blocks.0.branch)", "layer 1 (blocks.2.branch)",
                           "alarm: > 70 and 5x its step-0 value"]  # fmt: skip
    assert list(lines["layer 0 (blocks.0.branch)"].get_ydata()) == [0.25, 80.0, 120.0]
    assert list(lines["layer 1 (blocks.2.branch)"].get_xdata()) == [0, 50, 100]
    assert list(lines["layer 1 (blocks.2.branch)"].get_ydata()) == [0.3, 3.0, 4.0]
    assert list(lines["alarm: > 70 and 5x its step-0 value"].get_ydata()) == [70.0, 70.0]
    assert attn.get_yscale() == "log"
    z = {ln.get_label(): list(ln.get_ydata()) for ln in logz.get_lines()}
    assert z["mean log Z"] == [4.2, 9.5, 11.0] and z["max log Z"] == [4.3, 12.0, 15.0]
    # the mean came within half of the alarm (11 > 9): both alarm lines drawn
    assert [18.0, 18.0] in z.values() and [-18.0, -18.0] in z.values()


def test_lm_monitor_figure_of_a_model_without_stablelabs_attention(tmp_path, captured):
    """log Z only (one panel); a mean far from its alarm names the alarm in the title
    instead of squashing the curve under two far lines; the default levels without a
    config."""
    from stablelab.analysis.report import _lm_monitor_plot

    _lm_run(tmp_path / "run", [[0, 4.2, 4.4], [10, 4.0, 4.5]],
            ["step", "logz_mean", "logz_max"], {})  # fmt: skip
    _lm_monitor_plot(tmp_path / "run", {})
    (ax,) = captured[0].axes
    assert "alarm at |mean| > 20" in ax.get_title()
    assert all(abs(y) < 20 for ln in ax.get_lines() for y in ln.get_ydata())


@pytest.mark.parametrize("total, unit", [(1500, ""), (300_000, "k"), (100_000_000, "M")])
def test_a_step_axis_reads_in_one_plain_unit(tmp_path, captured, total, unit):
    """Steps of a long run: 100k, 20M (not 0.2 under a '1e8' offset), one unit per axis
    (not '50000' beside '100k'); each label reads its tick's value."""
    steps = [0, total // 3, total - 1]
    plots.plot_schedule([0.0, 1e-3, 1e-4], tmp_path / "lr.png", steps=steps)
    ax = captured[0].axes[0]
    lo, hi = ax.get_xlim()
    ticks = [(t.get_text(), v) for t, v in zip(ax.get_xticklabels(), ax.get_xticks(), strict=True)
             if lo <= v <= hi]  # fmt: skip
    assert len(ticks) >= 3 and ax.xaxis.get_offset_text().get_text() == ""
    scale = {"": 1, "k": 1e3, "M": 1e6}[unit]
    for text, value in ticks:
        if value == 0:
            assert text == "0"
            continue
        assert text.endswith(unit) and (unit or text.isdigit()), ticks
        assert float(text.removesuffix(unit) if unit else text) * scale == pytest.approx(value)
    assert list(ax.get_lines()[0].get_xdata()) == steps
