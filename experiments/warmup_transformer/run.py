"""Figures 6 and 8 of the playbook: a post-norm Transformer across base LRs, with and without
warmup, and warmup lengths over orders of magnitude at a high LR.

    python experiments/warmup_transformer/run.py [--out logs/experiments/warmup_transformer]

Workload: `experiment=recall_transformer` (key-value recall, 2-layer Transformer, LayerNorm)
with the post-norm layout Norm(x + f(x)), cosine decay, 1,000 steps. Base LRs 1e-3..3e-2,
each without warmup and with 100 warmup steps (the 10% cap) and post_warmup_steps = 2x;
at the highest LR also warmup 10. Writes warmup_transformer.csv and warmup_transformer.png
into experiments/warmup_transformer/.
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

from stablelab.analysis.sweep import load_trials
from stablelab.workflows import Trial, run_trials

HERE = Path(__file__).resolve().parent
BASE = [
    "experiment=recall_transformer",
    "model.residual.layout=post_norm",
    "logger=csv",
    "test=false",
]
LRS = [0.001, 0.003, 0.01, 0.03]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("logs/experiments/warmup_transformer"))
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    trials = []
    for lr in LRS:
        for w in (0, 100) if lr != LRS[-1] else (0, 10, 100):
            trials.append(
                Trial(
                    f"lr{lr:g}_warmup{w}",
                    [
                        f"optimizer.lr={lr}",
                        f"schedule.warmup_steps={w}",
                        f"schedule.post_warmup_steps={2 * w}",
                    ],
                )  # fmt: skip
            )
    run_trials(trials, args.out, BASE, jobs=args.jobs, threads=1, label="warmup x LR")
    rows = [
        {
            k: r[k]
            for k in (
                "lr",
                "warmup_steps",
                "status",
                "feasible",
                "unstable",
                "first_instability_step",
                "val_loss",
            )
        }  # fmt: skip
        for r in load_trials(args.out)
    ]
    with (HERE / "warmup_transformer.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot(rows, HERE / "warmup_transformer.png")
    for r in rows:
        print(r)


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    for i, w in enumerate(sorted({r["warmup_steps"] for r in rows})):
        mine = sorted((r for r in rows if r["warmup_steps"] == w), key=lambda r: r["lr"])
        ok = [(r["lr"], r["val_loss"]) for r in mine if r["feasible"]]
        if ok:
            ax.plot(*zip(*ok, strict=True), marker="o", color=f"C{i}", label=f"warmup {w}")
        bad = [r["lr"] for r in mine if not r["feasible"]]
        if bad:
            ax.scatter(bad, [3.0] * len(bad), marker="x", color=f"C{i}", s=60)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("base learning rate")
    ax.set_ylabel("best validation loss")
    ax.set_title("post-norm Transformer: warmup vs base LR (x at top: infeasible)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
