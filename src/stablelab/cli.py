"""``stablelab``: the workflow and report commands (training itself is ``stablelab-train``).

stablelab schedule-plot [HYDRA OVERRIDES ...] [--out schedule.png]
stablelab clip-threshold RUN_DIR [--percentile 90] [-q]
stablelab report RUN_DIR
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path


def schedule_plot(args: argparse.Namespace) -> int:
    """Plot the LR of every step for the composed config's optimizer.lr and schedule."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from stablelab.analysis.plots import plot_schedule
    from stablelab.config import ConfigError, compose, validate

    cfg = compose([*args.overrides, "paths.output_dir=."])
    try:
        plain = validate(cfg)
    except ConfigError as e:
        print(f"stablelab schedule-plot: {e}", file=sys.stderr)
        return 2
    sched = instantiate(OmegaConf.create(plain["schedule"]))
    base = float(plain["optimizer"]["lr"])
    lrs = [base * sched(s) for s in range(sched.total_steps)]
    out = plot_schedule(
        lrs,
        args.out,
        sched.warmup_steps,
        sched.post_warmup_steps,
        title=f"{type(sched).__name__} schedule, base LR {base:g}, {sched.total_steps} steps",
    )
    W, P = sched.warmup_steps, sched.post_warmup_steps
    marks = sorted({0, W, W + P, len(lrs) - 1} & set(range(len(lrs))))
    print(f"wrote {out}")
    for s in marks:
        print(f"  step {s:>7d}: lr = {lrs[s]:.6g}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # printed below as a note instead
        msg = sched.warn_if_long_warmup()
    if msg:
        print(f"  note: {msg}")
    return 0


def clip_threshold(args: argparse.Namespace) -> int:
    """Print the recommended clip threshold: a percentile of a run's unclipped norms."""
    from stablelab.analysis.runs import read_grad_norms

    try:
        norms = read_grad_norms(args.run_dir)
    except FileNotFoundError as e:
        print(f"stablelab clip-threshold: {e}", file=sys.stderr)
        return 2
    import numpy as np

    finite = np.array([n for n in norms if np.isfinite(n)])
    if not finite.size:
        print("stablelab clip-threshold: no finite gradient norms in that run", file=sys.stderr)
        return 2
    value = float(np.percentile(finite, args.percentile))
    if args.quiet:
        print(f"{value:.6g}")
        return 0
    print(f"run: {args.run_dir}")
    print(f"steps with a finite unclipped gradient norm: {finite.size} of {len(norms)}")
    for p in sorted({50.0, 90.0, 99.0, args.percentile}):
        print(f"  p{p:g}: {np.percentile(finite, p):.6g}")
    print(f"recommended clip threshold (p{args.percentile:g}): {value:.6g}")
    print(f"  use: stablelab-train clipping=fixed clipping.clip_threshold={value:.4g}")
    print("  the playbook: a starting point; lower it if instability remains, and if more")
    print("  than 50% of updates end up clipped, lower the learning rate instead.")
    return 0


def report(args: argparse.Namespace) -> int:
    """(Re)build a run's stability report from its files and print its verdict."""
    from stablelab.analysis.report import findings_for, verdict, write_report

    if not (args.run_dir / "summary.json").is_file():
        print(
            f"stablelab report: {args.run_dir / 'summary.json'} not found: is {args.run_dir} "
            "a stablelab run directory?",
            file=sys.stderr,
        )
        return 2
    path = write_report(args.run_dir)
    summary, findings = findings_for(args.run_dir)
    print(f"wrote {path}")
    print(f"verdict: {verdict(summary)}")
    for f in findings:
        print(f"  - [{f.key}] {f.text.replace('**', '').replace('`', '')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="stablelab", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sp = sub.add_parser(
        "schedule-plot",
        help="plot the learning rate of every step for a config (writes a PNG)",
        description="Compose the training config with the given Hydra overrides and plot "
        "optimizer.lr x schedule(step) for every step of the run.",
    )
    sp.add_argument(
        "overrides",
        nargs="*",
        help="Hydra overrides, e.g. schedule=cosine schedule.warmup_steps=100",
    )
    sp.add_argument(
        "--out",
        type=Path,
        default=Path("schedule.png"),
        help="PNG to write (default: schedule.png)",
    )
    sp.set_defaults(func=schedule_plot)
    cp = sub.add_parser(
        "clip-threshold",
        help="recommend a clip threshold from a finished run's unclipped gradient norms",
        description="Read RUN_DIR/grad_norms.csv (every step's unclipped global gradient "
        "norm) and print its percentile: the playbook's starting point for clip_threshold.",
    )
    cp.add_argument("run_dir", type=Path, help="a run directory (holding grad_norms.csv)")
    cp.add_argument("--percentile", type=float, default=90.0, help="default: 90 (the playbook's)")
    cp.add_argument("-q", "--quiet", action="store_true", help="print only the threshold")
    cp.set_defaults(func=clip_threshold)
    rp = sub.add_parser(
        "report",
        help="rebuild a run's stability report (report.md + PNGs) and print its verdict",
        description="Read RUN_DIR (summary.json, config.yaml, stability.csv, evals.csv, "
        "dense_eval.csv, grad_norms.csv, update_ratios.csv) and write RUN_DIR/report.md with "
        "loss.png and lr.png: the verdict, the flags and the playbook's fixes for what "
        "happened. stablelab-train writes it at the end of every run already.",
    )
    rp.add_argument("run_dir", type=Path, help="a run directory (holding summary.json)")
    rp.set_defaults(func=report)
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
