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
