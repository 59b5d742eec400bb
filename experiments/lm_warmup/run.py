"""Warmup and residual layout on the language model (Xiong et al. 2020; Liu et al. 2020; the
playbook's warmup section): post-norm vs pre-norm vs x + Norm(f(x)) GPT with the standard
initialisation, across learning rates, with warmup 0 / 1% / 5% / 10% of the run.

    python experiments/lm_warmup/run.py [--out logs/experiments/lm_warmup] [--jobs 2]

Workload: `experiment=study_lm_warmup` (a 6-layer, 64-channel GPT on Tiny Shakespeare,
context 64, batch 16, the playbook's Adam, warmup then cosine to 10%, 300 steps), and
post-norm also with half the run as warmup (beyond the playbook's 10% cap). Writes
lm_warmup.csv (one row per trial, with the LR sensitivity of each layout x warmup) and
lm_warmup.png into experiments/lm_warmup/.
"""

from __future__ import annotations

import math
from pathlib import Path

from stablelab.analysis.plots import pyplot, save_figure
from stablelab.analysis.sweep import (
    add_lr_sensitivity,
    draw_lr_series,
    load_trials,
    style_lr_axis,
    write_rows,
)
from stablelab.data import CharTextDataModule
from stablelab.data.text import unigram_entropy
from stablelab.workflows import Trial, run_trials, study_args

HERE = Path(__file__).resolve().parent
BASE = ["experiment=study_lm_warmup"]  # configs/experiment/study_lm_warmup.yaml
LAYOUTS = ["post_norm", "pre_norm", "branch_norm"]
LRS = [0.001, 0.003, 0.01, 0.03]
STEPS = 300
WARMUP_FRACTIONS = [0.0, 0.01, 0.05, 0.10]  # the playbook's range: at most 10%
BEYOND_CAP = ("post_norm", 0.5)  # and post-norm with half the run as warmup


def warmups(layout: str | None = None) -> list[int]:
    extra = [BEYOND_CAP[1]] if layout == BEYOND_CAP[0] else []
    return [round(f * STEPS) for f in [*WARMUP_FRACTIONS, *extra]]


def main() -> None:
    args = study_args(__doc__, "lm_warmup")
    trials = [
        Trial(
            f"{layout}_lr{lr:g}_w{w}",
            [
                f"model.residual.layout={layout}",
                f"optimizer.lr={lr}",
                f"schedule.warmup_steps={w}",
                f"max_train_steps={STEPS}",
            ],
        )  # fmt: skip
        for layout in LAYOUTS
        for w in warmups(layout)
        for lr in LRS
    ]
    if not args.from_runs:
        run_trials(trials, args.out, BASE, jobs=args.jobs, threads=1, label="layout x warmup x LR")
    rows = table(load_trials(args.out))
    write_rows(HERE / "lm_warmup.csv", rows)
    plot(rows, HERE / "lm_warmup.png")
    for r in rows:
        print(r)


def table(trials: list[dict]) -> list[dict]:
    """One row per trial with its layout, and the LR sensitivity of its layout x warmup."""
    rows = []
    for t in trials:
        layout = Path(t["run_dir"]).name.split("_lr")[0]
        rows.append({"layout": layout, **{k: t[k] for k in (
            "lr", "warmup_steps", "status", "feasible", "unstable", "first_instability_step",
            "val_loss", "final_val_loss", "initial_loss")}})  # fmt: skip
    add_lr_sensitivity(rows, "layout", "warmup_steps")
    return sorted(rows, key=lambda r: (LAYOUTS.index(r["layout"]), r["warmup_steps"], r["lr"]))


def plot(rows: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(LAYOUTS), figsize=(14, 5.6), dpi=110, sharey=True)
    chance, unigram = math.log(65), unigram_entropy(CharTextDataModule().texts["train"])
    for ax, layout in zip(axes, LAYOUTS, strict=True):
        for i, w in enumerate(warmups(layout)):
            mine = [r for r in rows if r["layout"] == layout and r["warmup_steps"] == w]
            sens = mine[0]["lr_sensitivity"] if mine else None
            label = f"warmup {w} ({w / STEPS:.0%})" + (
                f", LR sens. {sens:.2f}" if sens is not None else ""
            )
            draw_lr_series(ax, mine, label, f"C{i}", "osD^v"[i], bad_y=chance)
        ax.axhline(chance, color="gray", ls=":", lw=1, label="uniform guess (ln 65)")
        ax.axhline(unigram, color="k", ls="--", lw=0.8,
                   label=f"context ignored (unigram, {unigram:.2f})")  # fmt: skip
        style_lr_axis(ax, f"{layout} GPT, {STEPS} steps (ring: flagged unstable)")
        ax.set_yscale("linear")
        ax.set_ylim(2.3, chance + 0.1)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    axes[0].set_ylabel("best validation loss (nats / char)")
    fig.subplots_adjust(bottom=0.33, wspace=0.08)
    print(f"wrote {save_figure(fig, path)}")


if __name__ == "__main__":
    main()
