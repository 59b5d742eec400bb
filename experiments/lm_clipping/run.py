"""Figure 9 of the playbook on the language model: unclipped gradient norms of a GPT at a
learning rate where it fails, a threshold far above the typical norm, the 90th-percentile
threshold, the adaptive strategies, and qk-norm (unclipped) beside them.

    python experiments/lm_clipping/run.py [--out logs/experiments/lm_clipping] [--jobs 2]

Workload: `experiment=study_lm_clipping` (lm_lr_sensitivity's 6-layer pre-norm GPT at LR
1e-2 with 5% warmup, 300 steps: unclipped it ends at the unigram level). First the
unclipped run (its 90th percentile is the threshold of the p90 run), then the others in
parallel. Writes lm_clipping.csv, lm_clipping_curves.csv and lm_clipping.png into
experiments/lm_clipping/.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from stablelab.analysis.plots import pyplot, save_figure
from stablelab.analysis.report import load_config
from stablelab.analysis.runs import read_summary
from stablelab.analysis.sweep import write_rows
from stablelab.workflows import Trial, clip_threshold, clipping_study, study_args

HERE = Path(__file__).resolve().parent
BASE = ["experiment=study_lm_clipping"]  # configs/experiment/study_lm_clipping.yaml


def main() -> None:
    args = study_args(__doc__, "lm_clipping")
    # the unclipped run is bit-identical to lm_lr_sensitivity's baseline at 1e-2
    qk = Trial("qk_norm", ["clipping=none", "model.qk_norm=true"])  # the remedy beside clipping
    names = clipping_study(args.out, BASE, args.jobs, [qk], train=not args.from_runs)
    p90 = clip_threshold(args.out / "none")
    rows, curves = [], []
    for name in names:
        run = args.out / name
        s = read_summary(run)
        clip = load_config(run).get("clipping") or {}
        evals = list(csv.DictReader((run / "evals.csv").open()))
        rows.append({
            "run": name, "clip_threshold": str(clip.get("clip_threshold", "")),
            "status": s["status"],
            "val_loss": s["val_loss"], "final_val_loss": float(evals[-1]["val_loss"]),
            "clip_fraction": s.get("clip_fraction"), "loss_spikes": s.get("loss_spikes"),
            "grad_norm_spikes": s.get("grad_norm_spikes"), "unstable": s.get("unstable"),
            "first_instability_step": s.get("first_instability_step"),
            "grad_norm_p90": s.get("grad_norm_p90"), "attn_logit_max": s.get("attn_logit_max"),
        })  # fmt: skip
        losses = {int(r["step"]): r for r in csv.DictReader((run / "stability.csv").open())}
        for r in csv.DictReader((run / "grad_norms.csv").open()):
            step = int(r["step"])
            curves.append({
                "run": name, "step": step, "grad_norm": float(r["grad_norm"]),
                "clip_threshold": r["clip_threshold"], "clipped": float(r["clipped"]),
                "loss_ema": float(losses[step]["loss_ema"]) if step in losses else None,
            })  # fmt: skip
    write_rows(HERE / "lm_clipping.csv", rows)
    write_rows(HERE / "lm_clipping_curves.csv", curves)
    plot(names, rows, curves, HERE / "lm_clipping.png")
    print(f"p90 of the unclipped norms: {p90:.4g}")
    for r in rows:
        print(r)


def plot(names: list[str], rows: list[dict], curves: list[dict], path: Path) -> None:
    from stablelab.data import CharTextDataModule
    from stablelab.data.text import unigram_entropy

    plt = pyplot()
    fig, axes = plt.subplots(2, 4, figsize=(16, 7.5), dpi=110)
    by_run = {r["run"]: r for r in rows}
    for ax, name in zip(axes.flat, names, strict=False):
        mine = [c for c in curves if c["run"] == name]
        steps = [c["step"] for c in mine]
        ax.plot(steps, [c["grad_norm"] for c in mine], lw=0.6, label="unclipped ||g||")
        thr = [(c["step"], float(c["clip_threshold"])) for c in mine
               if c["clip_threshold"] not in ("", "inf", "nan")]  # fmt: skip
        if thr and name == "zscore":  # ZClip's threshold exists only where it clips
            ax.scatter(*zip(*thr, strict=True), s=14, color="C3", marker="v", zorder=3,
                       label="clipped to (ZClip)")  # fmt: skip
        elif thr and name != "agc":
            ax.plot(*zip(*thr, strict=True), lw=1, color="C3", ls="--", label="threshold")
        clipped = round(sum(c["clipped"] for c in mine))
        final = by_run[name]["final_val_loss"]
        ax.set_title(f"{name}: {clipped} of {len(mine)} steps clipped, final val loss {final:.2f}",
                     fontsize=9)  # fmt: skip
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3, which="both")
    norms = [c["grad_norm"] for c in curves]
    for ax in axes.flat[: len(names)]:  # one scale for every run's gradient norms
        ax.set_ylim(min(norms) / 1.5, max(norms) * 1.5)
    axes[0, 0].set_ylabel("gradient norm")
    axes[1, 0].set_ylabel("gradient norm")
    handles = {}
    for ax in axes.flat:  # one legend with both lines (the first panel has no threshold)
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, h)
    axes[0, 0].legend(handles.values(), handles.keys(), fontsize=8, loc="upper right")
    ax = axes.flat[len(names)]  # the last panel: every run's training loss
    for i, name in enumerate(names):
        pts = [(c["step"], c["loss_ema"]) for c in curves
               if c["run"] == name and c["loss_ema"] is not None]  # fmt: skip
        ax.plot(*zip(*pts, strict=True), color=f"C{i}", lw=1, label=name)
    unigram = unigram_entropy(CharTextDataModule().texts["train"])
    ax.axhline(unigram, color="k", ls="--", lw=0.8, label=f"unigram ({unigram:.2f})")
    ax.set_ylim(2.0, math.log(65) + 0.2)
    ax.set_title("training loss (EMA) of every run", fontsize=9)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.suptitle("Pre-norm GPT at LR 1e-2 (5% warmup): gradient clipping vs qk-norm")
    fig.tight_layout()
    print(f"wrote {save_figure(fig, path)}")


if __name__ == "__main__":
    main()
