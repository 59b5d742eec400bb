"""Residual layout against depth on the language model, without warmup (Xiong et al. 2020;
Liu et al. 2020; Bachlechner et al. 2021): post-norm vs pre-norm vs x + Norm(f(x)) vs ReZero
GPTs of 2, 6, 12 and 24 layers.

    python experiments/lm_depth/run.py [--out logs/experiments/lm_depth] [--jobs 2]

Workload: `experiment=study_lm_depth` (narrow GPTs: 32 channels, 2 heads, on Tiny
Shakespeare, context 64, batch 16, the standard GPT-2 init, the playbook's Adam with no
warmup and cosine decay to 10%, 300 steps) at two fixed learning rates. Writes lm_depth.csv
(one row per trial) and lm_depth.png into experiments/lm_depth/.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from stablelab.analysis.plots import pyplot, save_figure
from stablelab.analysis.sweep import load_trials, write_rows
from stablelab.data import CharTextDataModule
from stablelab.data.text import unigram_entropy
from stablelab.workflows import Trial, run_trials, study_args

HERE = Path(__file__).resolve().parent
BASE = ["experiment=study_lm_depth"]  # configs/experiment/study_lm_depth.yaml
VARIANTS = {
    "post_norm": ["model.residual.layout=post_norm"],
    "pre_norm": ["model.residual.layout=pre_norm"],
    "branch_norm": ["model.residual.layout=branch_norm"],
    "rezero": ["model.residual.layout=none", "model.residual.branch_init=rezero"],
}
DEPTHS = [2, 6, 12, 24]
LRS = [1e-3, 3e-3]
STEPS = 300


def name(variant: str, depth: int, lr: float) -> str:
    return f"{variant}_d{depth}_lr{lr:g}"


def main() -> None:
    args = study_args(__doc__, "lm_depth")
    trials = [  # deepest first: the long trials do not end up alone at the tail
        Trial(
            name(v, d, lr),
            [*ov, f"model.n_layer={d}", f"optimizer.lr={lr}", f"max_train_steps={STEPS}"],
        )  # fmt: skip
        for d in sorted(DEPTHS, reverse=True)
        for v, ov in VARIANTS.items()
        for lr in LRS
    ]
    if not args.from_runs:
        run_trials(trials, args.out, BASE, jobs=args.jobs, threads=1, label="layout x depth x LR")
    rows, curves = table(load_trials(args.out))
    write_rows(HERE / "lm_depth.csv", rows)
    write_rows(HERE / "lm_depth_curves.csv", curves)
    plot(rows, curves, HERE / "lm_depth.png")
    for r in rows:
        print({k: r[k] for k in ("variant", "depth", "lr", "status", "final_val_loss")})


def table(trials: list[dict]) -> tuple[list[dict], list[dict]]:
    """One row per trial, and the training loss every 10 steps of every trial."""
    by_name = {Path(t["run_dir"]).name: t for t in trials}
    rows, curves = [], []
    for v in VARIANTS:
        for d in DEPTHS:
            for lr in LRS:
                t = by_name[name(v, d, lr)]
                rows.append({"variant": v, "depth": d, **{k: t[k] for k in (
                    "lr", "status", "feasible", "unstable", "first_instability_step",
                    "val_loss", "final_val_loss", "initial_loss")}})  # fmt: skip
                with (Path(t["run_dir"]) / "stability.csv").open() as f:
                    curves += [
                        {
                            "variant": v,
                            "depth": d,
                            "lr": lr,
                            "step": int(r["step"]),
                            "loss_ema": float(r["loss_ema"]),
                        }  # fmt: skip
                        for r in csv.DictReader(f)
                        if int(r["step"]) % 10 == 0
                    ]
    return rows, curves


def plot(rows: list[dict], curves: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(2, len(LRS), figsize=(13, 9.5), dpi=110)
    chance, unigram = math.log(65), unigram_entropy(CharTextDataModule().texts["train"])
    deepest = max(DEPTHS)
    for col, lr in enumerate(LRS):
        ax = axes[0, col]  # final validation loss vs depth
        for i, v in enumerate(VARIANTS):
            mine = sorted((r for r in rows if r["variant"] == v and r["lr"] == lr),
                          key=lambda r: r["depth"])  # fmt: skip
            ok = [(r["depth"], r["final_val_loss"]) for r in mine if r["feasible"]]
            if ok:
                ax.plot(*zip(*ok, strict=True), marker="osD^"[i], color=f"C{i}", label=v)
            bad = [r["depth"] for r in mine if not r["feasible"]]
            if bad:
                ax.scatter(bad, [chance] * len(bad), marker="x", color=f"C{i}", s=60)
        ax.set_xscale("log", base=2)
        ax.set_xticks(DEPTHS, [str(d) for d in DEPTHS])
        ax.set_xlabel("layers (n_layer)")
        ax.set_title(f"LR {lr:g}, no warmup: final validation loss after {STEPS} steps",
                     fontsize=10)  # fmt: skip
        ax = axes[1, col]  # training-loss curves of the deepest models
        for i, v in enumerate(VARIANTS):
            pts = [(c["step"], c["loss_ema"]) for c in curves
                   if c["variant"] == v and c["lr"] == lr and c["depth"] == deepest]  # fmt: skip
            if pts:
                ax.plot(*zip(*pts, strict=True), color=f"C{i}", label=v)
        ax.set_xlabel("step")
        ax.set_title(f"LR {lr:g}: training loss (EMA) of the {deepest}-layer models", fontsize=10)
        for ax in axes[:, col]:
            ax.axhline(chance, color="gray", ls=":", lw=1, label="uniform guess (ln 65)")
            ax.axhline(unigram, color="k", ls="--", lw=0.8,
                       label=f"context ignored (unigram, {unigram:.2f})")  # fmt: skip
            ax.set_ylim(2.0, chance + 0.15)
            ax.grid(alpha=0.3, which="both")
    axes[0, 0].set_ylabel("final validation loss (nats / char)")
    axes[1, 0].set_ylabel("training loss, EMA (nats / char)")
    axes[0, 0].legend(fontsize=8, loc="lower left")
    axes[1, 0].legend(fontsize=8, loc="lower left")
    fig.suptitle("Residual layout vs depth, GPT on Tiny Shakespeare, no warmup (x: infeasible)")
    fig.tight_layout()
    print(f"wrote {save_figure(fig, path)}")


if __name__ == "__main__":
    main()
