"""Plots written as PNG files (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_schedule(
    lrs: Sequence[float],
    path: str | Path,
    warmup_steps: int = 0,
    post_warmup_steps: int = 0,
    title: str = "learning-rate schedule",
) -> Path:
    """LR vs step, with the end of warmup and of the post-warmup hold marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=120)
    ax.plot(range(len(lrs)), lrs, lw=1.5, color="C0")
    if warmup_steps:
        ax.axvline(warmup_steps, color="C1", ls="--", lw=1, label=f"end of warmup ({warmup_steps})")
    if post_warmup_steps:
        end = warmup_steps + post_warmup_steps
        ax.axvline(end, color="C2", ls=":", lw=1, label=f"end of post-warmup ({end})")
    ax.set_xlabel("step (optimizer update)")
    ax.set_ylabel("learning rate")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if warmup_steps or post_warmup_steps:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_grad_norms(steps, norms, thresholds, path: str | Path) -> Path:
    """Unclipped gradient norm vs step (log scale) with the clipping threshold drawn."""
    import math

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=120)
    ax.plot(steps, norms, lw=0.8, color="C0", label="unclipped ||g||")
    th = [(s, t) for s, t in zip(steps, thresholds, strict=True) if math.isfinite(t)]
    if th:
        ax.plot(*zip(*th, strict=True), lw=1.2, color="C3", ls="--", label="clip threshold")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("gradient L2 norm")
    ax.set_title("gradient norm (before clipping)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


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
        if hi > lo:
            ax.set_xscale("log")
        for p, c in [(50, "C2"), (90, "C3"), (99, "C1")]:
            v = float(np.percentile(x, p))
            ax.axvline(v, color=c, ls="--", lw=1.2, label=f"p{p} = {v:.3g}")
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel("gradient L2 norm (unclipped)")
    ax.set_ylabel("steps")
    ax.set_title(f"gradient norms over {x.size} steps")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
