"""The same spiky run with no remedy, gradient clipping, skip-step and rollback: loss
curves and final losses side by side.

    python experiments/spike_remedies/run.py [--out logs/experiments/spike_remedies]

Workload (configs/experiment/study_spike_remedies.yaml): the default MNIST-1D ResNet with
the playbook's Adam (LR 3e-3), 800 steps, two corrupt training batches (data batches 200
and 450 of the data order: the model's output x -100 on them, a loss of hundreds of nats;
callbacks.spikes). Runs: `none`; `clipping` (clipping=percentile: the 90th percentile of
the recent unclipped norms, AutoClip); `skip_step` (skip_spikes.enabled=true: 6 sigma over
the previous 128 steps); `rollback` (the divergence guard at 10x the initial loss with
callbacks.stability.rollbacks=3, 20 batches skipped, the LR kept). Writes
spike_remedies.csv and spike_remedies.png into experiments/spike_remedies/.
"""

from __future__ import annotations

import csv
from pathlib import Path

from stablelab.analysis.plots import pyplot, save_figure
from stablelab.analysis.runs import read_summary
from stablelab.analysis.sweep import write_rows
from stablelab.workflows import Trial, run_trials, study_args

HERE = Path(__file__).resolve().parent
BASE = ["experiment=study_spike_remedies"]
TRIALS = [
    Trial("none", []),
    Trial("clipping", ["clipping=percentile"]),
    Trial("skip_step", ["skip_spikes.enabled=true"]),
    Trial("rollback", ["callbacks.stability.max_loss_ratio=10",
                       "callbacks.stability.rollbacks=3",
                       "callbacks.stability.rollback_skip_batches=20"]),
]  # fmt: skip


def _curve(run: Path) -> list[tuple[int, float, float]]:
    rows = csv.DictReader((run / "stability.csv").open())
    return [(int(r["step"]), float(r["loss"]), float(r["loss_ema"])) for r in rows]


def main() -> None:
    args = study_args(__doc__, "spike_remedies")
    if not args.from_runs:
        run_trials(TRIALS, args.out, BASE, jobs=args.jobs, threads=1, label="spike remedies")
    rows = []
    for t in TRIALS:
        s = read_summary(args.out / t.name)
        curve = _curve(args.out / t.name)
        rows.append({
            "run": t.name, "status": s.get("status"), "best_val_loss": s.get("val_loss"),
            "best_step": s.get("best_step"), "final_train_loss_ema": curve[-1][2],
            "max_train_loss": max(v for _, v, _ in curve),
            "skipped_steps": s.get("skipped_steps"), "clip_fraction": s.get("clip_fraction"),
            "rollbacks": len(s.get("rollbacks") or []),
        })  # fmt: skip
    write_rows(HERE / "spike_remedies.csv", rows)
    plot(args.out, HERE / "spike_remedies.png")
    for r in rows:
        print(r)


def plot(out: Path, path: Path) -> None:
    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=110,
                                 gridspec_kw={"width_ratios": [3, 1]})  # fmt: skip
    finals = []
    for i, t in enumerate(TRIALS):
        curve = _curve(out / t.name)
        ax.plot([c[0] for c in curve], [c[2] for c in curve], color=f"C{i}", lw=1.6,
                label=t.name)  # fmt: skip
        finals.append((t.name, read_summary(out / t.name).get("val_loss")))
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (EMA, 0.9)")
    ax.set_title("two corrupt batches (data batches 200 and 450): the loss per remedy",
                 fontsize=10)  # fmt: skip
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    names = [n for n, _ in finals]
    vals = [v if v is not None else float("nan") for _, v in finals]
    bx.bar(names, vals, color=[f"C{i}" for i in range(len(names))])
    for x, v in enumerate(vals):
        bx.text(x, v, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
    bx.set_ylabel("best validation loss")
    bx.set_title("best validation loss", fontsize=10)
    bx.tick_params(axis="x", labelrotation=30)
    print(f"wrote {save_figure(fig, path)}")


if __name__ == "__main__":
    main()
