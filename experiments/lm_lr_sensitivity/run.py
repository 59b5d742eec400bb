"""LR sensitivity of the language model (Wortsman et al. 2023, "Small-scale proxies for
large-scale Transformer training instabilities"): LR sweeps of a pre-norm GPT with and
without qk-norm and z-loss, and of the warmup length.

    python experiments/lm_lr_sensitivity/run.py [--out logs/experiments/lm_lr_sensitivity]

Workload: `experiment=study_lm_lr_sensitivity` (a 6-layer, 64-channel pre-norm GPT on Tiny
Shakespeare, context 64, batch 16, the playbook's Adam, 5% warmup then cosine to 10%, 300
steps; attention logits and log Z every 10 updates). Sweeps: the learning rates 3e-4 ..
3e-1 for {baseline, qk_norm, z_loss 1e-4, qk_norm + z_loss} (warmup 5%) and for the baseline
with warmup 0 / 5% / 25%. Writes into experiments/lm_lr_sensitivity/:
lm_lr_sensitivity.csv (one row per trial, with the LR sensitivity of its sweep),
lm_monitor.csv (step, attention-logit max and log Z of every trial) and
lm_lr_sensitivity.png.
"""

from __future__ import annotations

import csv
import math
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
BASE = ["experiment=study_lm_lr_sensitivity"]  # configs/experiment/study_lm_lr_sensitivity.yaml
LRS = [3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1]
STEPS = 300
Z = 1e-4  # PaLM's and Wortsman et al.'s z-loss coefficient
VARIANTS = {  # name -> overrides (warmup: the config's 5%)
    "baseline": [],
    "qk_norm": ["model.qk_norm=true"],
    "z_loss": [f"loss.z_loss={Z}"],
    "qk_norm+z_loss": ["model.qk_norm=true", f"loss.z_loss={Z}"],
}
WARMUPS = [0, 15, 75]  # 0, 5% (the variants' sweep), 25% of the run, for the baseline
DEFAULT_WARMUP = 15


def sweeps() -> dict[tuple[str, int], list[str]]:
    """(variant, warmup steps) -> overrides, one LR sweep each."""
    out = {(v, DEFAULT_WARMUP): ov for v, ov in VARIANTS.items()}
    out |= {("baseline", w): [] for w in WARMUPS}
    return out


def name(variant: str, warmup: int, lr: float) -> str:
    return f"{variant.replace('+', '_')}_w{warmup}_lr{lr:g}"


def main() -> None:
    args = study_args(__doc__, "lm_lr_sensitivity")
    trials = [
        Trial(
            name(v, w, lr),
            [*ov, f"schedule.warmup_steps={w}", f"optimizer.lr={lr}", f"max_train_steps={STEPS}"],
        )  # fmt: skip
        for (v, w), ov in sweeps().items()
        for lr in LRS
    ]
    if not args.from_runs:
        run_trials(trials, args.out, BASE, jobs=args.jobs, threads=1, label="variant x LR")
    rows, monitor = table(load_trials(args.out))
    write_rows(HERE / "lm_lr_sensitivity.csv", rows)
    write_rows(HERE / "lm_monitor.csv", monitor)
    plot(rows, monitor, HERE / "lm_lr_sensitivity.png")
    for (v, w), group in groups(rows).items():
        print(f"{v:>15} warmup {w:>3}: LR sensitivity {group[0]['lr_sensitivity']:.3f}")


def groups(rows: list[dict]) -> dict[tuple[str, int], list[dict]]:
    return {key: [r for r in rows if (r["variant"], r["warmup_steps"]) == key] for key in sweeps()}


def table(trials: list[dict]) -> tuple[list[dict], list[dict]]:
    """One row per trial (variant, LR, verdict, losses, the attention logit and log Z at
    init / end / max, the LR sensitivity of its sweep) and every trial's monitor rows."""

    by_name = {Path(t["run_dir"]).name: t for t in trials}
    rows, monitor = [], []
    for v, w in sweeps():
        for lr in LRS:
            t = by_name[name(v, w, lr)]
            run = Path(t["run_dir"])
            s = read_summary(run)
            rows.append({"variant": v, **{k: t[k] for k in (
                "lr", "warmup_steps", "status", "feasible", "unstable", "val_loss",
                "final_val_loss", "initial_loss")},
                "attn_logit_max_init": s.get("attn_logit_max_first"),
                "attn_logit_max": s.get("attn_logit_max"),
                "logz_mean_last": s.get("logz_mean_last"),
                "logz_abs_max": s.get("logz_abs_max")})  # fmt: skip
            if w == DEFAULT_WARMUP:  # the variants' curves (the warmup sweep is in the table)
                with (run / "lm_monitor.csv").open() as f:
                    monitor += [
                        {
                            "variant": v,
                            "lr": lr,
                            "step": int(r["step"]),
                            "attn_logit_max": float(r["attn_logit_max"]),
                            "logz_mean": float(r["logz_mean"]),
                        }  # fmt: skip
                        for r in csv.DictReader(f)
                    ]
    return add_lr_sensitivity(rows, "variant", "warmup_steps"), monitor


def plot(rows: list[dict], monitor: list[dict], path: Path) -> None:
    import matplotlib as mpl

    from stablelab.data import CharTextDataModule
    from stablelab.data.text import unigram_entropy as entropy

    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(13, 10), dpi=110)
    chance = math.log(65)
    unigram = entropy(CharTextDataModule().texts["train"])
    by = groups(rows)
    # (a) final loss vs LR per variant, (b) per warmup length
    for ax, keys, title in (
        (axes[0, 0], [(v, DEFAULT_WARMUP) for v in VARIANTS], "qk-norm and z-loss (warmup 5%)"),
        (axes[0, 1], [("baseline", w) for w in WARMUPS], "warmup length (baseline)"),
    ):
        for i, key in enumerate(keys):
            g = by[key]
            label = key[0] if ax is axes[0, 0] else f"warmup {key[1]} ({key[1] / STEPS:.0%})"
            draw_lr_series(ax, g, f"{label}: LR sens. {g[0]['lr_sensitivity']:.2f}", f"C{i}",
                           "osD^"[i], bad_y=chance, key="final_val_loss")  # fmt: skip
        ax.axhline(chance, color="gray", ls=":", lw=1, label="uniform guess (ln 65)")
        ax.axhline(unigram, color="k", ls="--", lw=0.8,
                   label=f"context ignored (unigram, {unigram:.2f})")  # fmt: skip
        style_lr_axis(ax, f"{title}: final validation loss, {STEPS} steps (ring: unstable)")
        ax.set_yscale("linear")
        ax.set_ylim(2.3, chance + 0.1)
        ax.set_ylabel("final validation loss (nats / char)")
        ax.legend(fontsize=8, loc="upper left")
    # (c) the largest attention logit over steps, (d) mean log Z over steps, per LR
    cmap = mpl.colormaps["viridis"]
    colour = {lr: cmap(i / (len(LRS) - 1)) for i, lr in enumerate(LRS)}
    for ax, key, pair, ylabel in (
        (axes[1, 0], "attn_logit_max", ("baseline", "qk_norm"), "max attention logit q.k/sqrt(d)"),
        (axes[1, 1], "logz_mean", ("baseline", "z_loss"), "mean log Z of the output logits"),
    ):  # fmt: skip
        for v, ls in zip(pair, ("-", "--"), strict=True):
            for lr in LRS:
                pts = [(m["step"], m[key]) for m in monitor if m["variant"] == v and m["lr"] == lr]
                ax.plot(*zip(*pts, strict=True), ls=ls, color=colour[lr], lw=1.3)
        handles = [mpl.lines.Line2D([], [], color=colour[lr], label=f"LR {lr:g}") for lr in LRS]
        handles += [mpl.lines.Line2D([], [], color="k", ls=ls, label=v)
                    for v, ls in zip(pair, ("-", "--"), strict=True)]  # fmt: skip
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
        ax.legend(handles=handles, fontsize=8, ncol=2)
    axes[1, 0].set_yscale("symlog", linthresh=10)
    axes[1, 0].set_title("attention logits: baseline (solid) vs qk_norm (dashed), every LR",
                         fontsize=10)  # fmt: skip
    axes[1, 1].axhline(0, color="gray", ls=":", lw=1)
    axes[1, 1].set_title(f"output logits: baseline (solid) vs z_loss {Z:g} (dashed), every LR",
                         fontsize=10)  # fmt: skip
    fig.suptitle("Pre-norm GPT on Tiny Shakespeare: LR sensitivity (Wortsman et al. 2023)")
    fig.tight_layout()
    print(f"wrote {save_figure(fig, path)}")


if __name__ == "__main__":
    main()
