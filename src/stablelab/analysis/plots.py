"""Plots written as PNG files (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    """Lay out, write (creating the folder) and close a figure. Every log axis gets plain,
    non-overlapping labels (see :func:`_log_axis_plain_labels`)."""
    for ax in fig.axes:
        for which in ("x", "y"):
            if getattr(ax, f"get_{which}scale")() == "log":
                lo, hi = sorted(getattr(ax, f"get_{which}lim")())
                if lo > 0 and hi > 3 * lo:
                    _log_axis_plain_labels(ax, lo, hi, which)
                elif lo > 0:  # within a factor of 3: matplotlib writes 2.283x10^0
                    _narrow_log_axis_labels(ax, which)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    _pyplot().close(fig)
    return path


def _integer_ticks(axis) -> None:
    """Steps and counts: whole-number ticks (a 2-step run's axis reads 0, 1, 2, not 0.2),
    written plainly (200k, 1.5M: not 0.2 and 1.5 under a '1e6' offset)."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))  # 0, 20, 40: not 8
    axis.set_major_formatter(
        FuncFormatter(lambda v, _: count_label(v, max(map(abs, axis.get_view_interval()))))
    )


def count_label(v: float, top: float | None = None) -> str:
    """A step or count as a tick label, in one unit for the whole axis (``top``: its
    largest value): 0, 250, 1500; 5k, 10k, 15k; 20M, 40M; 2B."""
    top = abs(v) if top is None else top
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e4, "k")):
        if top >= scale:
            unit = 1e3 if suffix == "k" else scale
            return f"{v / unit:.4g}{suffix}" if v else "0"
    return f"{v:.0f}" if float(v).is_integer() else f"{v:g}"


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (for scripts drawing figures
    in the style of stablelab's own: experiments/)."""
    return _pyplot()


def save_figure(fig, path: str | Path) -> Path:
    """Lay out, write and close a figure, with stablelab's plain log-axis labels."""
    return _save(fig, path)


def plot_schedule(
    lrs: Sequence[float],
    path: str | Path,
    warmup_steps: int = 0,
    post_warmup_steps: int = 0,
    title: str = "learning-rate schedule",
    steps: Sequence[int] | None = None,
) -> Path:
    """LR vs step (``steps``, default 0, 1, ...: one LR each), with the end of warmup and of
    the post-warmup hold marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=120)
    xs = range(len(lrs)) if steps is None else steps
    ax.plot(xs, lrs, lw=1.5, color="C0", marker="o" if len(lrs) == 1 else "")
    if len(lrs) == 1:  # one step: an axis around it, not a +-0.05 zoom onto step 0
        ax.set_xlim(-0.5, 1.5)
    if warmup_steps:
        ax.axvline(warmup_steps, color="C1", ls="--", lw=1, label=f"end of warmup ({warmup_steps})")
    if post_warmup_steps:
        end = warmup_steps + post_warmup_steps
        ax.axvline(end, color="C2", ls=":", lw=1, label=f"end of post-warmup ({end})")
    _integer_ticks(ax.xaxis)
    ax.set_xlabel("step (optimizer update)")
    ax.set_ylabel("learning rate")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    top = max((v for v in lrs if v == v), default=0.0)
    if top > 0 and min(lrs) >= 0:  # from 0: a constant LR is a flat line, not a +-5% zoom
        ax.set_ylim(0, top * 1.08)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    if warmup_steps or post_warmup_steps:
        ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def plot_grad_norms(
    steps, norms, thresholds, path: str | Path, nonfinite_label: str = "not finite"
) -> Path:
    """Unclipped gradient norm vs step (log scale) with the clipping threshold drawn; steps
    whose norm is not finite (a gap in the line) are marked x at the bottom, labelled
    ``nonfinite_label`` (under float16 AMP: the GradScaler's overflows)."""
    import math

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=120)
    one = len(steps) == 1  # a one-point line draws nothing: a marker
    ax.plot(steps, norms, lw=0.8, color="C0", label="unclipped ||g||", marker="o" if one else "")
    bad = [s for s, n in zip(steps, norms, strict=True) if not math.isfinite(n)]
    if bad:
        at_bottom = ax.get_xaxis_transform()  # x in steps, y in axes fractions
        ax.plot(bad, [0.03] * len(bad), ls="", marker="x", color="C1", ms=6,
                transform=at_bottom, label=nonfinite_label, clip_on=False)  # fmt: skip
    th = [(s, t) for s, t in zip(steps, thresholds, strict=True) if math.isfinite(t)]
    if th:
        ax.plot(*zip(*th, strict=True), lw=1.2, color="C3", ls="--", label="clip threshold",
                marker="_" if one else "", ms=12)  # fmt: skip
    if one:
        ax.set_xlim(steps[0] - 0.5, steps[0] + 1.5)
    ax.set_yscale("log")
    _integer_ticks(ax.xaxis)
    ax.set_xlabel("step")
    ax.set_ylabel("gradient L2 norm")
    ax.set_title("gradient norm (before clipping)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def plot_grad_norm_hist(norms, path: str | Path) -> Path:
    """Histogram of the unclipped norms over all steps (log-spaced bins) with the 50th,
    90th and 99th percentiles marked; the 90th is the playbook's starting threshold."""
    import math

    import numpy as np

    plt = _pyplot()
    x = np.array([n for n in norms if math.isfinite(n) and n > 0])
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=120)
    if x.size:
        lo, hi = x.min(), x.max()
        bins = np.geomspace(lo, hi * 1.0001, 50) if hi > lo else 10
        ax.hist(x, bins=bins, color="C0", alpha=0.8)
        if hi > 3 * lo:  # a narrower range reads better on a linear axis
            _log_axis_plain_labels(ax, lo, hi)
        for p, c in [(50, "C2"), (90, "C3"), (99, "C1")]:
            v = float(np.percentile(x, p))
            ax.axvline(v, color=c, ls="--", lw=1.2, label=f"p{p} = {v:.4g}")
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel("gradient L2 norm (unclipped)")
    _integer_ticks(ax.yaxis)
    ax.set_ylabel("steps")
    ax.set_title(f"gradient norms over {x.size} steps")
    return _save(fig, path)


def _fixed_ticks(ax, which: str, ticks: list[float], fmt) -> None:
    """``ticks`` as the axis's only labels, written by ``fmt``; the view stays as it was."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    limits = getattr(ax, f"get_{which}lim")()
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(lambda v, _: fmt(v)))
    axis.set_minor_locator(NullLocator())
    axis.set_minor_formatter(NullFormatter())
    getattr(ax, f"set_{which}lim")(limits)  # (a fixed locator must not move the view)


def _log_axis_plain_labels(ax, lo: float, hi: float, which: str = "x") -> None:
    """A log axis labelled with plain numbers (0.3, 1, 2) that never overlap: matplotlib's
    default labels some minor ticks as 3x10^-1, 4x10^-1 side by side. At most ~8 labels,
    from the 1-2-5 sequence over the range."""
    import math

    getattr(ax, f"set_{which}scale")("log")
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)

    def within(mults: tuple[float, ...]) -> list[float]:
        return [m * 10.0**d for d in decades for m in mults if lo <= m * 10.0**d <= hi]

    # the sparsest sequence with at most 8 labels that labels the whole axis: at least 3,
    # and one within a factor of 2 of each end (a decade with only 0.5 and 1, or data at
    # 1,500 under a lowest label of 3,000, leaves part of the axis unread)
    options = [(1,), (1, 3), (1, 2, 5), (1, 2, 3, 5), (1, 1.5, 2, 3, 4, 5, 7)]
    fitting = [ticks for ticks in map(within, options) if len(ticks) <= 8]
    covering = [t for t in fitting if len(t) >= 3 and t[0] <= 2 * lo and t[-1] >= hi / 2]
    enough = covering or [ticks for ticks in fitting if len(ticks) >= 3]
    if enough:
        ticks = enough[0]
    elif fitting:
        ticks = max(fitting, key=len)
    else:  # many decades: every k-th power of ten
        ticks = within((1,))
        k = math.ceil(len(ticks) / 8)
        ticks = [t for t in ticks if round(math.log10(t)) % k == 0]
    if len(ticks) < 2:  # no 1-2-5 value inside: the ends
        ticks = [lo, hi]
    _fixed_ticks(ax, which, ticks, lambda v: f"{float(f'{v:.3g}'):g}")


def _narrow_log_axis_labels(ax, which: str) -> None:
    """A log axis spanning less than a factor of 3 (a short or flat run) is all but linear:
    evenly spaced plain ticks, with as many digits as tell neighbours apart."""
    import math

    from matplotlib.ticker import MaxNLocator

    lo, hi = sorted(getattr(ax, f"get_{which}lim")())
    ticks = [v for v in MaxNLocator(nbins=6).tick_values(lo, hi) if lo <= v <= hi and v > 0]
    if len(ticks) < 2:
        return
    # the fewest decimals that write every tick exactly (2.279, 2.280, ...; 2.25, 2.50)
    decimals = next(
        (d for d in range(12) if all(math.isclose(round(v, d), v, rel_tol=1e-9) for v in ticks)),
        12,
    )
    _fixed_ticks(ax, which, ticks, lambda v: f"{v:.{decimals}f}")


def plot_update_ratios(rows, names, path: str | Path) -> Path:
    """||delta theta|| / ||theta|| per parameter tensor vs step (log scale): a thin line per
    tensor, the median over tensors in bold."""
    import numpy as np

    plt = _pyplot()
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=120)
    for n in names:
        pts = [(s, r[n]) for s, r in zip(steps, rows, strict=True) if _pos(r[n])]
        if pts:
            ax.plot(*zip(*pts, strict=True), lw=0.6, alpha=0.45)
    med = []
    for s, r in zip(steps, rows, strict=True):
        finite = [r[n] for n in names if _pos(r[n])]
        if finite:
            med.append((s, float(np.median(finite))))
    if med:
        ax.plot(*zip(*med, strict=True), lw=2, color="k", label="median over tensors")
        ax.set_yscale("log")
        ax.legend(loc="best", fontsize=8)
    _integer_ticks(ax.xaxis)
    ax.set_xlabel("step")
    ax.set_ylabel("||delta theta|| / ||theta||")
    ax.set_title(f"update-to-weight ratio ({len(names)} parameter tensors)")
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)


def plot_sharpness(rows, path: str | Path) -> Path:
    """The sharpness measurements against the rule's stability threshold over the run (log
    scale): one panel for the Hessian (threshold 2 / lr, (2 + 2 gamma) / lr with momentum),
    one for the preconditioned Hessian of an adaptive rule (38 / lr for Adam), where
    measured. A threshold follows the LR schedule, so it is a curve, not a line."""
    panels = [
        (key, limit, title)
        for key, limit, title in (
            ("sharpness", "threshold", "sharpness (top Hessian eigenvalue)"),
            ("precond_sharpness", "precond_threshold", "preconditioned sharpness (P^-1 H)"),
        )
        if any(_pos(r[key]) for r in rows)
    ]
    plt = _pyplot()
    fig, axes = plt.subplots(
        len(panels) or 1,
        1,
        figsize=(7, 3.2 * max(1, len(panels))),
        dpi=120,
        squeeze=False,
        sharex=True,
    )
    for ax, (key, limit, title) in zip(axes[:, 0], panels, strict=False):
        pts = [(r["step"], r[key]) for r in rows if _pos(r[key])]
        ax.plot(*zip(*pts, strict=True), "o-", ms=3, lw=1.5, color="C0", label="measured")
        lim = [(r["step"], r[limit]) for r in rows if _pos(r[limit])]
        if lim:
            ax.plot(*zip(*lim, strict=True), "--", lw=1.2, color="C3",
                    label="stability threshold of the rule at the current LR")  # fmt: skip
        else:
            title += "; no threshold for this rule"
        ax.set_yscale("log")
        ax.set_ylabel(key.replace("_", " "))
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="best", fontsize=8)
    for a in axes.flat:
        _integer_ticks(a.xaxis)
    axes[-1, 0].set_xlabel("step")
    return _save(fig, path)


def plot_noise_scale(rows, batch_size: int | None, path: str | Path) -> Path:
    """The gradient noise scale B_simple over the run (smoothed, and each measurement's raw
    estimate, which is noisy and can be negative: those are left out), with the global
    batch size for comparison (log scale)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=120)
    raw = [(r["step"], r["b_simple_raw"]) for r in rows if _pos(r["b_simple_raw"])]
    if raw:
        ax.plot(*zip(*raw, strict=True), ".", ms=4, color="C0", alpha=0.4,
                label="one measurement")  # fmt: skip
    smooth = [(r["step"], r["b_simple"]) for r in rows if _pos(r["b_simple"])]
    if smooth:
        ax.plot(*zip(*smooth, strict=True), "-", lw=2, color="C0",
                label="B_simple (numerator and denominator smoothed)")  # fmt: skip
    if batch_size:
        ax.axhline(batch_size, color="C3", ls="--", lw=1.2,
                   label=f"the run's global batch size ({batch_size})")  # fmt: skip
    if raw or smooth:
        ax.set_yscale("log")
    _integer_ticks(ax.xaxis)
    ax.set_xlabel("step")
    ax.set_ylabel("examples")
    ax.set_title("gradient noise scale tr(Sigma) / |G|^2 (McCandlish et al. 2018)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def plot_lm_monitor(
    steps: Sequence[int],
    logz_mean: Sequence[float],
    logz_max: Sequence[float],
    layers: Mapping[str, Sequence[float]],
    path: str | Path,
    logit_alarm: float = 50.0,
    growth_factor: float = 10.0,
    logz_alarm: float = 20.0,
) -> Path:
    """The language-model monitor over the run (Wortsman et al. 2023's two instabilities):
    the largest attention logit q.k/sqrt(d) of each layer (``layers``: name -> values, in
    the model's order; log scale where all are positive) with the report's alarm level, and
    log Z of the output logits (mean and max over the probe's positions), whose alarm
    lines are drawn once the mean comes within half of them. One panel, log Z, for a model
    without stablelab's attention layers."""
    import math

    plt = _pyplot()
    n = 2 if layers else 1
    fig, axes = plt.subplots(1, n, figsize=(6.2 * n, 3.8), dpi=120, squeeze=False)
    if layers:
        ax = axes[0, 0]
        cmap = plt.get_cmap("viridis")
        values: list[float] = []
        for i, (name, ys) in enumerate(layers.items()):
            pts = [(s, y) for s, y in zip(steps, ys, strict=True) if math.isfinite(y)]
            values += [y for _, y in pts]
            if pts:
                color = cmap(i / max(1, len(layers) - 1) * 0.9)
                ax.plot(*zip(*pts, strict=True), "-", lw=1.5, color=color,
                        label=f"layer {i} ({name})")  # fmt: skip
        alarm = f"alarm: > {logit_alarm:g} and {growth_factor:g}x its step-0 value"
        ax.axhline(logit_alarm, color="C3", ls="--", lw=1.2, label=alarm)
        if values and min(values) > 0:
            ax.set_yscale("log")
        ax.set_ylabel("max attention logit q.k / sqrt(d)")
        ax.set_title("attention logits per layer (fixed probe batch)")
        ax.legend(loc="best", fontsize=7)
    ax = axes[0, n - 1]
    for ys, style, label in ((logz_mean, "-", "mean log Z"), (logz_max, ":", "max log Z")):
        pts = [(s, y) for s, y in zip(steps, ys, strict=True) if math.isfinite(y)]
        if pts:
            ax.plot(*zip(*pts, strict=True), style, lw=1.8, color="C0", label=label)
    ax.axhline(0, color="0.5", lw=0.8, ls="-.", label="0 (where z-loss pulls it)")
    near = [abs(y) for y in logz_mean if math.isfinite(y)]
    if near and max(near) > logz_alarm / 2:
        for sign in (1, -1):
            ax.axhline(sign * logz_alarm, color="C3", ls="--", lw=1.2,
                       label=f"alarm |mean| > {logz_alarm:g}" if sign > 0 else None)  # fmt: skip
        title = "log Z = logsumexp of the output logits"
    else:
        title = f"log Z = logsumexp of the output logits (alarm at |mean| > {logz_alarm:g})"
    ax.set_ylabel("log Z")
    ax.set_title(title)
    ax.legend(loc="best", fontsize=7)
    for a in axes.flat:
        _integer_ticks(a.xaxis)
        a.set_xlabel("step")
        a.grid(alpha=0.3, which="both")
    return _save(fig, path)


def _pos(x) -> bool:
    import math

    return x is not None and math.isfinite(x) and x > 0


def plot_loss_curves(
    train: Sequence[tuple[int, float]],
    path: str | Path,
    ema: Sequence[tuple[int, float]] = (),
    val: Sequence[tuple[int, float]] = (),
    dense: Sequence[tuple[int, float]] = (),
    events: Sequence[tuple[int, str]] = (),
    diverged_at: int | None = None,
    title: str = "loss",
) -> Path:
    """Training loss per step (with its EMA), validation loss at each evaluation, the dense
    early evaluations, the detected events and the divergence step. Log-scale y when every
    plotted value is positive; non-finite values are left out (the divergence line marks
    where they start)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4), dpi=120)

    def finite(points):
        return [(s, v) for s, v in points if v is not None and v == v and abs(v) != float("inf")]

    series = [
        (finite(train), dict(lw=0.6, color="C0", alpha=0.5, label="train loss (every step)")),
        (finite(ema), dict(lw=1.4, color="C0", label="train loss, EMA")),
        (finite(dense), dict(lw=1.0, color="C2", marker=".", ms=3, label="val loss (dense)")),
        (finite(val), dict(lw=0, color="C3", marker="o", ms=5, label="val loss")),
    ]
    values = []
    for pts, style in series:
        if pts:
            if len(pts) == 1 and "marker" not in style:  # a line of one point draws nothing
                style = {**style, "marker": "."}
            ax.plot(*zip(*pts, strict=True), **style)
            values += [v for _, v in pts]
    if values and min(values) > 0:
        ax.set_yscale("log")
    colors = {"loss_rise": "C1", "loss_spike": "C4", "grad_norm_spike": "C5", "val_loss_rise": "C2"}
    seen = set()
    for step, kind in events:
        if kind == "diverged":
            continue
        ax.axvline(
            step,
            color=colors.get(kind, "C7"),
            lw=0.8,
            ls=":",
            label=kind.replace("_", " ") if kind not in seen else None,
        )
        seen.add(kind)
    if diverged_at is not None:
        ax.axvline(diverged_at, color="r", lw=1.5, label=f"diverged (step {diverged_at})")
    _integer_ticks(ax.xaxis)
    ax.set_xlabel("step (updates applied)")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="best", fontsize=8)
    return _save(fig, path)
