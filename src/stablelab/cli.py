"""``stablelab``: the workflow and report commands (training itself is ``stablelab-train``).

stablelab schedule-plot [HYDRA OVERRIDES ...] [--out schedule.png]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from stablelab.config import register_resolvers
    from stablelab.paths import config_dir

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("train", overrides=overrides)


def schedule_plot(args: argparse.Namespace) -> int:
    """Plot the LR of every step for the composed config's optimizer.lr and schedule."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from stablelab.analysis.plots import plot_schedule
    from stablelab.config import ConfigError, validate

    cfg = _compose(args.overrides + ["paths.output_dir=."])
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
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
