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

from pathlib import Path

from stablelab.analysis.plots import pyplot, save_figure
from stablelab.analysis.sweep import draw_lr_series, load_trials, style_lr_axis, write_rows
from stablelab.workflows import Trial, run_trials, study_args

HERE = Path(__file__).resolve().parent
BASE = ["experiment=study_warmup_transformer"]  # configs/experiment/study_warmup_transformer.yaml
LRS = [0.001, 0.003, 0.01, 0.03]


def main() -> None:
    args = study_args(__doc__, "warmup_transformer")
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
    if not args.from_runs:
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
                "final_val_loss",
                "initial_loss",
                "lr_sensitivity",
            )
        }  # fmt: skip
        for r in load_trials(args.out)
    ]
    write_rows(HERE / "warmup_transformer.csv", rows)
    plot(rows, HERE / "warmup_transformer.png")
    for r in rows:
        print(r)


def plot(rows, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    import math

    warmups = sorted({r["warmup_steps"] for r in rows})
    style = {w: (f"C{i}", "osD^v"[i % 5]) for i, w in enumerate(warmups)}
    # series with fewer points on top, so a lone point is not hidden under a line
    for w in sorted(warmups, key=lambda w: -sum(r["warmup_steps"] == w for r in rows)):
        mine = [r for r in rows if r["warmup_steps"] == w]
        sens = mine[0]["lr_sensitivity"]
        label = f"warmup {w}" + (f", LR sens. {sens:.2f}" if sens is not None else "")
        draw_lr_series(ax, mine, label, *style[w], bad_y=3.0)
    ax.axhline(math.log(8), color="gray", ls=":", lw=1, label="chance (ln 8)")
    style_lr_axis(ax, "post-norm Transformer: warmup vs base LR (x at top: infeasible)")
    ax.set_ylabel("best validation loss")
    ax.legend(fontsize=8)
    print(f"wrote {save_figure(fig, path)}")


if __name__ == "__main__":
    main()
