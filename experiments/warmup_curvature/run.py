"""Warmup and curvature (Gilmer et al. 2021; Kalra & Barkeshli 2024): at a learning rate
that needs warmup, the run without it lets the (preconditioned) sharpness cross the
rule's stability threshold early and turns unstable; warmup keeps it below.

    python experiments/warmup_curvature/run.py [--out logs/experiments/warmup_curvature]

Workload (configs/experiment/study_warmup_curvature.yaml): the post-norm recall Transformer
of experiments/warmup_transformer (Adam, cosine decay) at base LR 1e-2 for 400 steps,
without warmup and with 100 warmup steps (post_warmup_steps 200), the sharpness and Adam's
preconditioned sharpness (against 38 / lr at the current LR) every 10 steps on 512 training
examples. Writes warmup_curvature.csv and warmup_curvature.png into
experiments/warmup_curvature/.
"""

from __future__ import annotations

import csv
from pathlib import Path

from stablelab.analysis.plots import pyplot, save_figure
from stablelab.analysis.runs import read_summary
from stablelab.analysis.sweep import write_rows
from stablelab.workflows import Trial, run_trials, study_args

HERE = Path(__file__).resolve().parent
BASE = ["experiment=study_warmup_curvature"]
TRIALS = [
    Trial("no_warmup", ["schedule.warmup_steps=0", "schedule.post_warmup_steps=0"]),
    Trial("warmup_100", ["schedule.warmup_steps=100", "schedule.post_warmup_steps=200"]),
]


def _rows(run: Path) -> list[dict[str, float]]:
    out = []
    for r in csv.DictReader((run / "sharpness.csv").open()):
        if r["precond_sharpness"] and r["precond_threshold"]:
            out.append({"step": int(r["step"]), "lr": float(r["lr"]),
                        "sharpness": float(r["sharpness"]),
                        "pre": float(r["precond_sharpness"]),
                        "limit": float(r["precond_threshold"])})  # fmt: skip
    return out


def main() -> None:
    args = study_args(__doc__, "warmup_curvature")
    if not args.from_runs:
        run_trials(TRIALS, args.out, BASE, jobs=args.jobs, threads=1, label="warmup curvature")
    rows = []
    for t in TRIALS:
        s = read_summary(args.out / t.name)
        pts = _rows(args.out / t.name)
        ratios = [(p["step"], p["pre"] / p["limit"]) for p in pts]
        first_above = next((st for st, r in ratios if r > 1.0), None)
        rows.append({
            "run": t.name, "best_val_loss": s.get("val_loss"), "unstable": s.get("unstable"),
            "first_instability_step": s.get("first_instability_step"),
            "max_ratio": max(r for _, r in ratios), "first_step_above_threshold": first_above,
            "max_ratio_first_100_steps": max(r for st, r in ratios if st <= 100),
        })  # fmt: skip
    write_rows(HERE / "warmup_curvature.csv", rows)
    plot(args.out, HERE / "warmup_curvature.png")
    for r in rows:
        print(r)


def plot(out: Path, path: Path) -> None:
    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=110)
    for i, t in enumerate(TRIALS):
        pts = _rows(out / t.name)
        steps = [p["step"] for p in pts]
        ax.plot(steps, [p["pre"] for p in pts], color=f"C{i}", lw=1.6,
                label=f"{t.name}: preconditioned sharpness")  # fmt: skip
        ax.plot(steps, [p["limit"] for p in pts], color=f"C{i}", ls="--", lw=1.2,
                label=f"{t.name}: 38 / lr(t)")  # fmt: skip
        bx.plot(steps, [p["pre"] / p["limit"] for p in pts], color=f"C{i}", lw=1.6,
                label=t.name)  # fmt: skip
    bx.axhline(1.0, color="k", lw=1, ls=":")
    for a, ylabel, title, legend in (
        (ax, "preconditioned sharpness",
         "Adam's preconditioned sharpness and its threshold 38 / lr(t)", 7),
        (bx, "sharpness / threshold", "above 1: past the edge of stability", 8),
    ):  # fmt: skip
        a.set(yscale="log", xlabel="step", ylabel=ylabel)
        a.set_title(title, fontsize=10)
        a.grid(alpha=0.3, which="both")
        a.legend(fontsize=legend)
    print(f"wrote {save_figure(fig, path)}")


if __name__ == "__main__":
    main()
