"""Figure 4 of the playbook: one block's stride changed from 2 to 1, LR sweeps for both, then
warmup at the high LR for the changed model.

    python experiments/stride/run.py [--out logs/experiments/stride] [--jobs 2]

Workload: MNIST-1D, the 1-D ResNet (three stages); `model.strides=[1,2,2]` (default) vs
`[1,1,2]` (the second stage's first block at stride 1: longer feature maps after it), the
playbook's Adam, constant LR, no warmup, 600 steps. Then the stride-1 model at the highest
LR with warmup_steps over [10, 60] (60 = the 10% cap), post_warmup_steps = 2 x warmup.
Writes stride.csv and stride.png into experiments/stride/.
"""

from __future__ import annotations

from pathlib import Path

from stablelab.analysis.plots import pyplot, save_figure
from stablelab.analysis.sweep import draw_lr_series, load_trials, style_lr_axis, write_rows
from stablelab.workflows import Trial, run_trials, study_args

HERE = Path(__file__).resolve().parent
BASE = ["experiment=study_stride"]  # configs/experiment/study_stride.yaml
LRS = [0.001, 0.003, 0.01, 0.03, 0.1]
MODELS = {"stride2": "model.strides=[1,2,2]", "stride1": "model.strides=[1,1,2]"}
WARMUP_LR = 0.1


def main() -> None:
    args = study_args(__doc__, "stride")
    for name, override in MODELS.items():
        trials = [Trial(f"lr_{lr:g}", [override, f"optimizer.lr={lr}"]) for lr in LRS]
        if not args.from_runs:
            run_trials(trials, args.out / name, BASE, jobs=args.jobs, threads=1, label=name)
    warm = [
        Trial(
            f"warmup_{w}",
            [
                MODELS["stride1"],
                f"optimizer.lr={WARMUP_LR}",
                f"schedule.warmup_steps={w}",
                f"schedule.post_warmup_steps={2 * w}",
            ],
        )  # fmt: skip
        for w in (10, 60)
    ]
    if not args.from_runs:
        run_trials(
            warm, args.out / "stride1_warmup", BASE, jobs=args.jobs, threads=1, label="warmup"
        )
    rows = []
    for group in ("stride2", "stride1", "stride1_warmup"):
        for r in load_trials(args.out / group):
            rows.append({"group": group, **{k: r[k] for k in (
                "lr", "warmup_steps", "status", "feasible", "unstable",
                "first_instability_step", "val_loss", "final_val_loss", "initial_loss",
                "lr_sensitivity")}})  # fmt: skip
    write_rows(HERE / "stride.csv", rows)
    plot(rows, HERE / "stride.png")
    for r in rows:
        print(r)


def plot(rows, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    styles = {"stride2": ("C0", "o", "strides [1,2,2] (default)"),
              "stride1": ("C3", "s", "strides [1,1,2]")}  # fmt: skip
    for group, (color, marker, label) in styles.items():
        mine = [r for r in rows if r["group"] == group]
        sens = mine[0]["lr_sensitivity"]
        label += f", LR sens. {sens:.2f}" if sens is not None else ""
        draw_lr_series(ax, mine, label, color, marker)
    warm = [r for r in rows if r["group"] == "stride1_warmup" and r["feasible"]]
    for i, r in enumerate(sorted(warm, key=lambda r: r["warmup_steps"])):
        color, marker = ("C2", "*") if i == 0 else ("C4", "P") if i == 1 else (f"C{5 + i}", "D")
        ax.scatter([r["lr"]], [r["val_loss"]], marker=marker, s=150, color=color, zorder=4,
                   edgecolors="k", linewidths=0.5,
                   label=f"[1,1,2] + warmup {r['warmup_steps']}")  # fmt: skip
    style_lr_axis(ax, "stride change (ring: unstable, x at top: infeasible)")
    ax.set_ylabel("best validation loss")
    ax.legend(fontsize=8)
    print(f"wrote {save_figure(fig, path)}")


if __name__ == "__main__":
    main()
