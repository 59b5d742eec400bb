"""The edge of stability (Cohen et al. 2021, 2022): under full-batch gradient descent the
sharpness rises until it reaches 2 / lr and hovers there; under Adam the preconditioned
sharpness rises to (2 + 2 beta1) / ((1 - beta1) lr) = 38 / lr.

    python experiments/edge_of_stability/run.py [--out logs/experiments/edge_of_stability]

Workload (configs/experiment/study_edge_of_stability.yaml): a tanh MLP (one residual block,
width 64, no normalisation) on MNIST-1D, every step on all 3,600 training examples (full
batch), the sharpness of that full-batch loss every 10 steps (callbacks.sharpness, 20
Lanczos steps). Gradient descent (the playbook's SGD) at LR 0.4, 0.8, 1.6 for 1,000 steps;
Adam at LR 0.01 and 0.03 for 600 steps. Writes edge_of_stability.csv (one row per run) and
edge_of_stability.png into experiments/edge_of_stability/.
"""

from __future__ import annotations

import csv
from pathlib import Path

from stablelab.analysis.plots import pyplot, save_figure
from stablelab.analysis.runs import read_summary
from stablelab.analysis.sweep import write_rows
from stablelab.workflows import Trial, run_trials, study_args

HERE = Path(__file__).resolve().parent
BASE = ["experiment=study_edge_of_stability"]
GD_LRS = [0.4, 0.8, 1.6]
ADAM_LRS = [0.01, 0.03]


def _trials() -> list[Trial]:
    gd = [Trial(f"gd_lr_{lr:g}", ["optimizer=sgd", f"optimizer.lr={lr}"]) for lr in GD_LRS]
    adam = [
        Trial(f"adam_lr_{lr:g}", ["optimizer=adam", f"optimizer.lr={lr}", "max_train_steps=600"])
        for lr in ADAM_LRS
    ]
    return gd + adam


def _series(run: Path, key: str, limit: str) -> list[tuple[int, float, float]]:
    rows = list(csv.DictReader((run / "sharpness.csv").open()))
    return [(int(r["step"]), float(r[key]), float(r[limit])) for r in rows if r[key] and r[limit]]


def main() -> None:
    args = study_args(__doc__, "edge_of_stability")
    trials = _trials()
    if not args.from_runs:
        run_trials(trials, args.out, BASE, jobs=args.jobs, threads=1, label="edge of stability")
    rows = []
    for t in trials:
        run = args.out / t.name
        gd = t.name.startswith("gd")
        key, limit = ("sharpness", "threshold")
        if not gd:
            key, limit = ("precond_sharpness", "precond_threshold")
        pts = _series(run, key, limit)
        ratios = [v / th for _, v, th in pts]
        half = ratios[len(ratios) // 2 :]
        s = read_summary(run)
        rows.append({
            "run": t.name, "rule": "gd" if gd else "adam",
            "lr": float(t.overrides[1].split("=")[1]), "threshold": pts[-1][2],
            "first": pts[0][1], "max": max(v for _, v, _ in pts), "max_ratio": max(ratios),
            "step_reaching_95pct": next((st for st, v, th in pts if v >= 0.95 * th), None),
            "mean_ratio_second_half": sum(half) / len(half),
            "final_train_loss": s.get("final_train_loss"), "status": s.get("status"),
        })  # fmt: skip
    write_rows(HERE / "edge_of_stability.csv", rows)
    plot(args.out, trials, HERE / "edge_of_stability.png")
    for r in rows:
        print(r)


def plot(out: Path, trials: list[Trial], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), dpi=110)
    for ax, prefix, key, limit, title in (
        (axes[0], "gd", "sharpness", "threshold",
         "gradient descent: sharpness vs 2 / lr (dashed)"),
        (axes[1], "adam", "precond_sharpness", "precond_threshold",
         "Adam: preconditioned sharpness vs 38 / lr (dashed)"),
    ):  # fmt: skip
        for i, t in enumerate(x for x in trials if x.name.startswith(prefix)):
            pts = _series(out / t.name, key, limit)
            lr = t.overrides[1].split("=")[1]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=f"C{i}", lw=1.5,
                    label=f"lr {lr}")  # fmt: skip
            ax.axhline(pts[-1][2], color=f"C{i}", ls="--", lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(key.replace("_", " "))
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    print(f"wrote {save_figure(fig, path)}")


if __name__ == "__main__":
    main()
