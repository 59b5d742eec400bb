"""Figure 5 of the playbook from one run directory: the validation loss as a sparse
evaluation schedule sees it (every K steps) next to per-step evaluation of the first steps.

    python experiments/early_eval/plot.py RUN_DIR OUT.png
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path


def main(run_dir: str, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run_dir)
    sparse = [
        (int(r["step"]), float(r["val_loss"])) for r in csv.DictReader((run / "evals.csv").open())
    ]
    dense = [
        (int(r["step"]), float(r["val_loss"]))
        for r in csv.DictReader((run / "dense_eval.csv").open())
    ]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=120, sharey=True)
    for ax, title, pts, style in [
        (axes[0], "evaluating every 100 steps", sparse, dict(marker="o", color="C3")),
        (
            axes[1],
            "evaluating every step (first 100), then every 100",
            dense + sparse,
            dict(marker=".", color="C2", ms=3),
        ),
    ]:
        pts = sorted(pts)
        ax.plot(*zip(*pts, strict=True), lw=1, **style)
        ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("validation loss")
    fig.tight_layout()
    fig.savefig(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
