"""Residual layouts across learning rates and depths, without warmup.

    python experiments/residual_layouts/run.py [--out logs/experiments/residual_layouts] [--jobs 2]

Workload: MNIST-1D, the residual MLP (width 128, LayerNorm), the playbook's Adam at a
constant LR with no warmup, 500 steps. Variants: post_norm Norm(x + f(x)), branch_norm
x + Norm(f(x)), pre_norm x + f(Norm(x)), rezero x + a f(x) (a = 0 at init, no norm); depths
4 and 32 blocks; LRs 1e-3, 1e-2, 1e-1. Writes residual_layouts.csv and residual_layouts.png
into experiments/residual_layouts/.
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
BASE = ["experiment=study_residual_layouts"]  # configs/experiment/study_residual_layouts.yaml
VARIANTS = {
    "post_norm": ["model.residual.layout=post_norm"],
    "branch_norm": ["model.residual.layout=branch_norm"],
    "pre_norm": ["model.residual.layout=pre_norm"],
    "rezero": ["model.residual.layout=none", "model.residual.branch_init=rezero"],
}
DEPTHS = [4, 32]
LRS = [0.001, 0.01, 0.1]


def main() -> None:
    args = study_args(__doc__, "residual_layouts")
    trials = [
        Trial(f"{v}_d{d}_lr{lr:g}", [*extra, f"model.depth={d}", f"optimizer.lr={lr}"])
        for v, extra in VARIANTS.items()
        for d in DEPTHS
        for lr in LRS
    ]
    if not args.from_runs:
        run_trials(trials, args.out, BASE, jobs=args.jobs, threads=1, label="layouts")
    by_name = {Path(t["run_dir"]).name: t for t in load_trials(args.out)}  # feasible: it
    rows = []  # also never got below its loss at init (the sweep's reading)
    for v in VARIANTS:
        for d in DEPTHS:
            for lr in LRS:
                t = by_name[f"{v}_d{d}_lr{lr:g}"]
                s = read_summary(Path(t["run_dir"]))
                rows.append({
                    "variant": v, "depth": d, "lr": lr, "status": s["status"],
                    "feasible": t["feasible"], "unstable": t["unstable"],
                    "first_instability_step": t["first_instability_step"],
                    "val_loss": t["val_loss"], "val_acc": s.get("val_acc"),
                    "final_val_loss": t["final_val_loss"], "initial_loss": t["initial_loss"],
                })  # fmt: skip
    add_lr_sensitivity(rows, "variant", "depth")
    write_rows(HERE / "residual_layouts.csv", rows)
    plot(rows, HERE / "residual_layouts.png")
    for r in rows:
        print(r)


def plot(rows, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(DEPTHS), figsize=(11, 4), dpi=110, sharey=True)
    for ax, d in zip(axes, DEPTHS, strict=True):
        for i, v in enumerate(VARIANTS):
            mine = [r for r in rows if r["variant"] == v and r["depth"] == d]
            label = f"{v}, LR sens. {mine[0]['lr_sensitivity']:.2f}"
            draw_lr_series(ax, mine, label, f"C{i}", bad_y=2.4)
        style_lr_axis(ax, f"depth {d} (x at top: infeasible; ring: unstable)")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("best validation loss")
    print(f"wrote {save_figure(fig, path)}")


if __name__ == "__main__":
    main()
