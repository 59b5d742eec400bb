"""The six update rules of the seed on one workload, each with its own LR sweep.

    python experiments/optimizers/run.py [--out logs/experiments/optimizers] [--jobs 2]

Workload: the default experiment (MNIST-1D, 1-D ResNet) for 500 steps, constant LR, no
warmup, one torch thread per trial. Each rule gets LRs half a decade apart over the range
where it is expected to train (the SGD family higher). Writes optimizers.csv (every trial)
and optimizers.png (best validation loss vs LR per rule) into experiments/optimizers/.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from stablelab.analysis.plots import _pyplot, _save
from stablelab.analysis.sweep import draw_lr_series, style_lr_axis, write_rows
from stablelab.workflows import Trial, run_trials

HERE = Path(__file__).resolve().parent
BASE = ["experiment=study_optimizers"]  # configs/experiment/study_optimizers.yaml
SGD_LRS = [0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0]
ADAPTIVE_LRS = [0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1]
RULES = {
    "sgd": SGD_LRS,
    "momentum": SGD_LRS,
    "nesterov": SGD_LRS,
    "rmsprop": ADAPTIVE_LRS,
    "adam": ADAPTIVE_LRS,
    "nadam": ADAPTIVE_LRS,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("logs/experiments/optimizers"))
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    trials = [
        Trial(f"{rule}_lr{lr:g}", [f"optimizer={rule}", f"optimizer.lr={lr}"])
        for rule, lrs in RULES.items()
        for lr in lrs
    ]
    run_trials(trials, args.out, BASE, jobs=args.jobs, threads=1, label="optimizers")
    rows = []
    for rule, lrs in RULES.items():
        for lr in lrs:
            s = json.loads((args.out / f"{rule}_lr{lr:g}" / "summary.json").read_text())
            val, l0 = s.get("val_loss"), s.get("initial_loss")
            rows.append({
                "rule": rule, "lr": lr, "status": s["status"],
                "feasible": bool(s["feasible"]) and not (val is not None and l0 and val >= l0),
                "unstable": s.get("unstable"), "val_loss": val, "val_acc": s.get("val_acc"),
            })  # fmt: skip
    write_rows(HERE / "optimizers.csv", rows)
    plot(rows, HERE / "optimizers.png")
    for rule in RULES:
        mine = [r for r in rows if r["rule"] == rule and r["feasible"]]
        best = min(mine, key=lambda r: r["val_loss"]) if mine else None
        ok = [r["lr"] for r in mine]
        print(rule, "best", best and (best["lr"], round(best["val_loss"], 4), best["val_acc"]),
              "feasible LRs", ok)  # fmt: skip


def plot(rows, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for i, rule in enumerate(RULES):
        draw_lr_series(ax, [r for r in rows if r["rule"] == rule], rule, f"C{i}")
    style_lr_axis(ax, "six update rules, 500 steps (ring: unstable, x at top: infeasible)")
    ax.set_ylabel("best validation loss")
    ax.legend(fontsize=8)
    print(f"wrote {_save(fig, path)}")


if __name__ == "__main__":
    main()
