"""The six update rules of the seed on one workload, each with its own LR sweep.

    python experiments/optimizers/run.py [--out logs/experiments/optimizers] [--jobs 2]

Workload: the default experiment (MNIST-1D, 1-D ResNet) for 500 steps, constant LR, no
warmup, one torch thread per trial. Each rule gets LRs half a decade apart over the range
where it is expected to train (the SGD family higher). Writes optimizers.csv (every trial)
and optimizers.png (best validation loss vs LR per rule) into experiments/optimizers/.
"""

from __future__ import annotations

from pathlib import Path

from stablelab.analysis.plots import pyplot, save_figure
from stablelab.analysis.runs import read_summary
from stablelab.analysis.sweep import (
    add_lr_sensitivity,
    draw_lr_series,
    load_trials,
    style_lr_axis,
    write_rows,
)
from stablelab.workflows import Trial, run_trials, study_args

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
    args = study_args(__doc__, "optimizers")
    trials = [
        Trial(f"{rule}_lr{lr:g}", [f"optimizer={rule}", f"optimizer.lr={lr}"])
        for rule, lrs in RULES.items()
        for lr in lrs
    ]
    if not args.from_runs:
        run_trials(trials, args.out, BASE, jobs=args.jobs, threads=1, label="optimizers")
    by_name = {Path(t["run_dir"]).name: t for t in load_trials(args.out)}  # feasible: it
    rows = []  # also never got below its loss at init (the sweep's reading)
    for rule, lrs in RULES.items():
        for lr in lrs:
            t = by_name[f"{rule}_lr{lr:g}"]
            s = read_summary(Path(t["run_dir"]))
            rows.append({
                "rule": rule, "lr": lr, "status": s["status"], "feasible": t["feasible"],
                "unstable": t["unstable"], "val_loss": t["val_loss"], "val_acc": s.get("val_acc"),
                "final_val_loss": t["final_val_loss"], "initial_loss": t["initial_loss"],
            })  # fmt: skip
    add_lr_sensitivity(rows, "rule")
    write_rows(HERE / "optimizers.csv", rows)
    plot(rows, HERE / "optimizers.png")
    for rule in RULES:
        mine = [r for r in rows if r["rule"] == rule and r["feasible"]]
        best = min(mine, key=lambda r: r["val_loss"]) if mine else None
        ok = [r["lr"] for r in mine]
        print(rule, "best", best and (best["lr"], round(best["val_loss"], 4), best["val_acc"]),
              "feasible LRs", ok)  # fmt: skip


def plot(rows, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for i, rule in enumerate(RULES):
        mine = [r for r in rows if r["rule"] == rule]
        label = f"{rule}, LR sens. {mine[0]['lr_sensitivity']:.2f}"
        draw_lr_series(ax, mine, label, f"C{i}")
    style_lr_axis(ax, "six update rules, 500 steps (ring: unstable, x at top: infeasible)")
    ax.set_ylabel("best validation loss")
    ax.legend(fontsize=8)
    print(f"wrote {save_figure(fig, path)}")


if __name__ == "__main__":
    main()
