"""Figure 9 of the playbook: unclipped gradient norms with no clipping, a threshold far above
the typical norm, the 90th-percentile threshold, and the adaptive strategies.

    python experiments/clipping/run.py [--out logs/experiments/clipping] [--jobs 2]

Workload: the default experiment at Adam LR 3e-2 (10x the default: unstable, see
experiments/axis_plot), 1,000 steps. First the unclipped run (its 90th percentile is the
threshold of the p90 run), then the others in parallel. Writes clipping_summary.csv and
clipping.png into experiments/clipping/.
"""

from __future__ import annotations

import csv
from pathlib import Path

from stablelab.analysis.report import load_config
from stablelab.analysis.runs import read_summary
from stablelab.analysis.sweep import write_rows
from stablelab.workflows import clip_threshold, clipping_study, study_args

HERE = Path(__file__).resolve().parent
BASE = ["experiment=study_clipping"]  # configs/experiment/study_clipping.yaml


def main() -> None:
    args = study_args(__doc__, "clipping")
    names = clipping_study(args.out, BASE, args.jobs, train=not args.from_runs)
    rows = []
    for name in names:
        s = read_summary(args.out / name)
        thr = (load_config(args.out / name).get("clipping") or {}).get("clip_threshold", "")
        rows.append({
            "run": name, "clip_threshold": thr, "status": s["status"],
            "val_loss": s["val_loss"], "val_acc": s["val_acc"],
            "clip_fraction": s.get("clip_fraction"), "loss_spikes": s.get("loss_spikes"),
            "grad_norm_spikes": s.get("grad_norm_spikes"), "unstable": s.get("unstable"),
            "grad_norm_p90": s.get("grad_norm_p90"),
        })  # fmt: skip
    write_rows(HERE / "clipping_summary.csv", rows)
    plot(args.out, names, HERE / "clipping.png")
    print(f"p90 of the unclipped norms: {clip_threshold(args.out / 'none'):.4g}")
    for r in rows:
        print(r)


def plot(out: Path, names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5), dpi=110, sharex=True, sharey=True)
    for ax, name in zip(axes.flat, names, strict=True):
        rows = list(csv.DictReader((out / name / "grad_norms.csv").open()))
        steps = [int(r["step"]) for r in rows]
        ax.plot(steps, [float(r["grad_norm"]) for r in rows], lw=0.6, label="unclipped ||g||")
        thr = [(s, float(r["clip_threshold"])) for s, r in zip(steps, rows, strict=True)
               if r["clip_threshold"] not in ("", "inf", "nan")]  # fmt: skip
        if thr and name == "zscore":  # ZClip's threshold exists only where it clips
            ax.scatter(*zip(*thr, strict=True), s=14, color="C3", marker="v", zorder=3,
                       label="clipped to (ZClip)")  # fmt: skip
        elif thr and name != "agc":
            ax.plot(*zip(*thr, strict=True), lw=1, color="C3", ls="--", label="threshold")
        clipped = sum(float(r["clipped"]) for r in rows) / len(rows)
        ax.set_title(f"{name} (clipped {clipped:.0%})", fontsize=10)
        if name == "agc":  # its threshold is per unit, on ||G_i|| / ||W_i||: no line to draw
            ax.text(0.03, 0.95, "no global threshold: AGC clips each unit i where\n"
                    "||G_i|| / max(||W_i||, 1e-3) > lambda; 'clipped' counts the\n"
                    "steps where any unit was", transform=ax.transAxes, fontsize=8,
                    va="top")  # fmt: skip
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
    handles = {}
    for ax in axes.flat:  # one legend with both lines (the first panel has no threshold)
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, h)
    axes[0][0].legend(handles.values(), handles.keys(), fontsize=8, loc="lower left")
    for ax in axes[1]:
        ax.set_xlabel("step")
    for ax in axes[:, 0]:
        ax.set_ylabel("gradient norm")
    fig.tight_layout()
    fig.savefig(path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
