"""``stablelab``: the workflow and report commands (training itself is ``stablelab-train``).

stablelab schedule-plot [HYDRA OVERRIDES ...] [--out schedule.png]
stablelab clip-threshold RUN_DIR [--percentile 90] [-q]
stablelab report RUN_DIR
stablelab eval CHECKPOINT [OVERRIDES ...] [--out DIR]
stablelab sample RUN_DIR [--chars N] [--temperature T] [--top-k K] [--seed S] [--prompt P]
stablelab sweep lr [OVERRIDES ...] [--lrs ...] [--out DIR] [--jobs N]
stablelab sweep warmup --unstable-lr X [OVERRIDES ...] [--factor 10] [--grid ...]
stablelab probe --lr X [OVERRIDES ...] [--steps 500]
stablelab analyze SWEEP_DIR
stablelab diagnose [OVERRIDES ...] [--lrs ...] [--jobs N] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any


def schedule_plot(args: argparse.Namespace) -> int:
    """Plot the LR over the steps (every step up to 20,000) for the composed config's
    optimizer.lr and schedule."""
    from stablelab.analysis.plots import plot_schedule
    from stablelab.analysis.runs import lr_curve
    from stablelab.config import ConfigError, checked

    if problem := _image_format_problem(args.out):
        print(f"stablelab schedule-plot: {problem}", file=sys.stderr)
        return 2
    try:
        plain = checked(args.overrides)
    except ConfigError as e:
        print(f"stablelab schedule-plot: {e}", file=sys.stderr)
        return 2
    built = lr_curve(plain)
    if built is None:
        print("stablelab schedule-plot: the schedule could not be built", file=sys.stderr)
        return 2
    sched, steps, lrs = built
    base = float(plain["optimizer"]["lr"])
    out = plot_schedule(
        lrs,
        args.out,
        sched.warmup_steps,
        sched.post_warmup_steps,
        title=f"{type(sched).__name__} schedule, base LR {base:g}, {sched.total_steps:,} steps",
        steps=steps,
    )
    W, P, total = sched.warmup_steps, sched.post_warmup_steps, sched.total_steps
    print(f"wrote {out}")
    for s in sorted({m for m in (0, W, W + P, total - 1) if 0 <= m < total}):
        print(f"  step {s:>7d}: lr = {base * sched(s):.6g}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # printed below as a note instead
        msg = sched.warn_if_long_warmup()
    if msg:
        print(f"  note: {msg}")
    return 0


def _image_format_problem(out: Path) -> str | None:
    """``--out x.txt``: a format matplotlib cannot write (a traceback after the work)."""
    from matplotlib.figure import Figure

    formats = sorted(Figure().canvas.get_supported_filetypes())
    suffix = out.suffix.lower().lstrip(".")
    if suffix in formats:
        return None
    return f"--out {out}: {'.' + suffix if suffix else 'no'} suffix; an image: {', '.join(formats)}"


def clip_threshold(args: argparse.Namespace) -> int:
    """Print the recommended clip threshold: a percentile of a run's unclipped norms."""
    import numpy as np

    from stablelab.analysis.runs import RunFileError, finite_grad_norms, read_grad_norms

    try:
        finite, steps = finite_grad_norms(args.run_dir), len(read_grad_norms(args.run_dir))
    except (FileNotFoundError, RunFileError) as e:
        print(f"stablelab clip-threshold: {e}", file=sys.stderr)
        return 2
    if not finite.size:
        print("stablelab clip-threshold: no finite gradient norms in that run", file=sys.stderr)
        return 2
    value = float(np.percentile(finite, args.percentile))
    if args.quiet:
        print(f"{value:.6g}")
        return 0
    print(f"run: {args.run_dir}")
    print(f"steps with a finite unclipped gradient norm: {finite.size} of {steps}")
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
    from stablelab.analysis.runs import RunFileError, has_summary

    if args.run_dir.is_file():
        print(
            f"stablelab report: {args.run_dir} is a file: give the run directory that holds "
            f"summary.json ({args.run_dir.parent})",
            file=sys.stderr,
        )
        return 2
    if not has_summary(args.run_dir):
        print(
            f"stablelab report: {args.run_dir / 'summary.json'} not found: is {args.run_dir} "
            "a stablelab run directory?",
            file=sys.stderr,
        )
        return 2
    try:
        path = write_report(args.run_dir)
        summary, findings = findings_for(args.run_dir)
    except RunFileError as e:
        print(f"stablelab report: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    print(f"verdict: {verdict(summary)}")
    for f in findings:
        print(f"  - [{f.key}] {f.text.replace('**', '').replace('`', '')}")
    return 0


def eval_cmd(args: argparse.Namespace) -> int:
    """Evaluate a checkpoint on the validation and test splits (its own data and model)."""
    from stablelab.config import ConfigError
    from stablelab.evaluate import evaluate
    from stablelab.sample import checkpoint_of

    try:  # a run directory: its best checkpoint, else its last
        ckpt = checkpoint_of(args.checkpoint) if args.checkpoint.is_dir() else args.checkpoint
        s = evaluate(str(ckpt), args.overrides, str(args.out) if args.out else None)
    except (ConfigError, FileNotFoundError) as e:
        print(f"stablelab eval: {e}", file=sys.stderr)
        return 2
    print(f"checkpoint: {ckpt} (step {s.get('steps')})")
    for split in ("val", "test"):
        loss, acc = s.get(f"{split}_loss"), s.get(f"{split}_acc")
        if loss is not None:
            print(f"  {split}: loss {loss:.6g}, accuracy {acc:.4f}")
    print(f"run directory: {s['run_dir']}")
    return 0 if s.get("status") == "completed" else 1


def _number(kind: type, low: float, high: float | None = None, above: bool = False):
    """An argparse type: a finite ``kind`` (int / float) >= ``low`` (> ``low`` if ``above``)
    and <= ``high``; a usage error naming the option otherwise."""

    def parse(text: str):
        import math

        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            hint = (
                " (an override after a list of numbers: put the overrides before the option)"
                if "=" in text
                else ""
            )
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}{hint}") from None
        bad = not math.isfinite(value) or value < low or (above and value == low)
        if bad or (high is not None and value > high):
            want = f"> {low}" if above else f">= {low}"
            want += f" and <= {high}" if high is not None else ""
            if not math.isfinite(value):
                want = f"a finite number {want}"
            raise argparse.ArgumentTypeError(f"must be {want}, got {text}")
        return value

    return parse


POSITIVE = _number(float, 0, above=True)  # learning rates, factors


def sample_cmd(args: argparse.Namespace) -> int:
    """Print text sampled from a language model run's best checkpoint."""
    from stablelab.checkpoints import CheckpointError
    from stablelab.module import StableModule
    from stablelab.sample import checkpoint_of, stream

    try:
        path = args.checkpoint or checkpoint_of(args.run_dir)
        module = StableModule.load_from_checkpoint(path, map_location="cpu")
        chars = stream(module, args.prompt, args.chars, args.temperature, args.top_k, args.seed)
    except (FileNotFoundError, ValueError, CheckpointError) as e:
        print(f"stablelab sample: {e}", file=sys.stderr)
        return 2
    out = sys.stdout
    try:  # each character as it is sampled: a long sample shows progress, Ctrl-C keeps it
        out.write(args.prompt)
        for c in chars:
            out.write(c)
            out.flush()
        out.write("\n")
        out.flush()
    except KeyboardInterrupt:
        out.write("\n")
        print("stablelab sample: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `stablelab sample ... | head`: the reader has what it wanted
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


def _out(args: argparse.Namespace, what: str) -> Path:
    """``--out`` or ``logs/<what>/<time>_<id>`` (under $STABLELAB_ROOT if set)."""
    if args.out is not None:
        return args.out
    import os
    import time

    from stablelab.config import run_id

    root = Path(os.environ.get("STABLELAB_ROOT", "."))
    return root / "logs" / what / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{run_id()}"


def _check(
    overrides: list[str], prog: str, advise_warmup: bool = False, needs: tuple[str, ...] = ()
) -> bool:
    """Validate the overrides once before any trial starts (exit 2 on a bad config). With
    ``advise_warmup`` (the trials train the configured schedule: an LR sweep) the
    schedule's warmup advice is given here once, not only in each trial's log. ``needs``:
    the callbacks the workflow reads (refused without them before the full check)."""
    from stablelab.config import ConfigError, checked
    from stablelab.workflows import refuse_without_callbacks

    try:
        if needs:
            refuse_without_callbacks(overrides, prog, needs)
        # the full check imports torch and Lightning: seconds on a small machine, said so
        print(f"stablelab {prog}: checking the config ...", flush=True)
        plain = checked(overrides)
    except ConfigError as e:
        print(f"stablelab {prog}: {e}", file=sys.stderr)
        return False
    if advise_warmup:
        from hydra.utils import instantiate

        instantiate(plain["schedule"]).warn_if_long_warmup()  # a warning: printed as one line
    return True


def sweep_cmd(args: argparse.Namespace) -> int:
    if args.kind == "warmup" and args.unstable_lr is None:  # before the (slow) config check
        print(
            "stablelab sweep warmup: --unstable-lr is required (the smallest LR that was "
            "infeasible or unstable in an LR sweep: see `stablelab analyze`)",
            file=sys.stderr,
        )
        return 2
    from stablelab import workflows

    if not _check(
        args.overrides, f"sweep {args.kind}", advise_warmup=args.kind == "lr", needs=("stability",)
    ):
        return 2
    out = _out(args, f"{args.kind}_sweep")
    if args.kind == "lr":
        res = workflows.lr_sweep(args.lrs, out, _opts(args))
        print(res["verdict"])
        if res["lr_sensitivity"] is not None:
            print(f"LR sensitivity: {res['lr_sensitivity']:.4g}")
        print(_wrote_sweep(out))
        return 0
    res = workflows.warmup_sweep(
        args.unstable_lr, None, out, _opts(args), factor=args.factor, grid=args.grid
    )
    print(f"warmup_steps tried: {res['grid']} at base_learning_rate {res['base_learning_rate']:g}")
    print(f"result: {res['advice']}")
    if res["rows"]:
        print(_wrote_sweep(out))
    return 0


def probe_cmd(args: argparse.Namespace) -> int:
    from stablelab import workflows

    if not _check(args.overrides, "probe", needs=("dense_eval", "stability")):
        return 2
    res = workflows.probe(args.lr, _out(args, "probe"), _opts(args, jobs=1), steps=args.steps)
    from stablelab.policy import PROBE_VERDICTS, probe_verdict

    verdict = PROBE_VERDICTS[probe_verdict(res)]
    print(f"probe at lr {args.lr:g}: {verdict}; report: {res['run_dir']}/report.md")
    for key, text in res.get("findings", []):
        print(f"  - [{key}] {text.replace('**', '').replace('`', '')}")
    return 0


def analyze_cmd(args: argparse.Namespace) -> int:
    from stablelab.analysis.sweep import analyze_lr_sweep

    try:
        res = analyze_lr_sweep(args.sweep_dir)
    except (FileNotFoundError, ValueError) as e:
        print(f"stablelab analyze: {e}", file=sys.stderr)
        return 2
    print(res["verdict"])
    if res.get("also_varied"):
        print(f"the trials also differ in: {res['also_varied']} (see sweep_report.md)")
    if res.get("kind") == "warmup":
        print(_wrote_sweep(args.sweep_dir))
        return 0
    print(f"unstable_base_learning_rate: {res['unstable_base_learning_rate']}")
    by_warmup = res["lr_sensitivity_by_warmup"]
    for w, v in by_warmup.items():
        if v is not None:
            at = f" (warmup {w})" if len(by_warmup) > 1 else ""
            print(f"LR sensitivity{at}: {v:.4g}")
    print(_wrote_sweep(args.sweep_dir))
    return 0


SWEEP_FILES = (
    "sweep_summary.csv", "axis_plot.png", "curves_above_lr_star.png", "warmup_curves.png",
    "sweep_report.md",
)  # fmt: skip


def _wrote_sweep(sweep_dir) -> str:
    """The files the analysis wrote (the curves plot only exists when there is an lr*)."""
    from pathlib import Path

    names = [n for n in SWEEP_FILES if (Path(sweep_dir) / n).is_file()]
    return f"wrote {sweep_dir}/{', '.join(names)}"


def diagnose_cmd(args: argparse.Namespace) -> int:
    from stablelab import workflows

    if not _check(
        args.overrides, "diagnose", advise_warmup=True, needs=("dense_eval", "stability")
    ):
        return 2
    workflows.diagnose(
        _out(args, "diagnose"),
        _opts(args),
        lrs=args.lrs,
        probe_steps=args.probe_steps,
        factor=args.factor,
        grid=args.grid,
    )
    return 0


def _opts(args: argparse.Namespace, **kw: Any):
    """The workflow options from the command line (``kw`` overrides one)."""
    from stablelab.workflows import TrialOptions

    o = {
        "overrides": list(args.overrides),
        "jobs": getattr(args, "jobs", 1),
        "threads": args.threads,
        "devices": args.gpus,
        **kw,
    }
    return TrialOptions(**o)


def _trial_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "overrides",
        nargs="*",
        help="Hydra overrides for every trial, e.g. experiment=digits_mlp max_train_steps=500",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output directory (default: logs/<workflow>/<time>_<id>)",
    )
    p.add_argument("--jobs", type=_number(int, 1), default=1, help="trials run at once (default 1)")
    p.add_argument(
        "--threads",
        type=_number(int, 1),
        default=None,
        help="torch threads per trial "
        "(default: available cores / jobs); results are identical for a fixed value",
    )
    p.add_argument(
        "--gpus",
        type=lambda v: [g for g in v.split(",") if g],
        default=None,
        help="one trial per GPU at a time, each seeing only its own (CUDA_VISIBLE_DEVICES); "
        "e.g. --gpus 0,1,2,3 (sets --jobs); add trainer=gpu to the overrides",
    )


def main(argv: list[str] | None = None) -> int:
    from stablelab import __version__

    ap = argparse.ArgumentParser(
        prog="stablelab",
        description="The workflow and report commands. Training itself: stablelab-train.",
    )
    ap.add_argument("--version", action="version", version=f"stablelab {__version__}")
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
        help="PNG to write (default: schedule.png in the current directory; git-ignored "
        "in a stablelab checkout)",
    )
    sp.set_defaults(func=schedule_plot)
    cp = sub.add_parser(
        "clip-threshold",
        help="recommend a clip threshold from a finished run's unclipped gradient norms",
        description="Read RUN_DIR/grad_norms.csv (every step's unclipped global gradient "
        "norm) and print its percentile: the playbook's starting point for clip_threshold.",
    )
    cp.add_argument("run_dir", type=Path, help="a run directory (holding grad_norms.csv)")
    cp.add_argument(
        "--percentile",
        type=_number(float, 0, 100),
        default=90.0,
        help="default: 90 (the playbook's)",
    )
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
    ev = sub.add_parser(
        "eval",
        help="evaluate a checkpoint on the validation and test splits",
        description="Rebuild the module from CHECKPOINT's own stored config (data, model, "
        "optimizer, schedule, clipping: every _target_ checked, nothing in the file runs), "
        "load its weights (weights_only) and evaluate them on the validation and test "
        "splits. Writes a run directory (config.yaml, summary.json, report.md): "
        "logs/eval/runs/<time>_<id>/ or --out. Overrides change the trainer or the logger "
        "(logger=csv), or keys of the stored groups (data.eval_batch_size=500, "
        "+model.key=..., ~model.key); another option of a stored group (model=gpt) is "
        "refused: use stablelab-train train=false ckpt_path=CHECKPOINT with your config.",
    )
    ev.add_argument(
        "checkpoint",
        type=Path,
        help="a stablelab checkpoint (.ckpt), or a run directory (its best checkpoint, else "
        "its last)",
    )
    ev.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. logger=csv")
    ev.add_argument("--out", type=Path, default=None, help="the run directory to write")
    ev.set_defaults(func=eval_cmd)
    sa = sub.add_parser(
        "sample",
        help="print text sampled from a language model run's best checkpoint",
        description="Generate characters autoregressively from RUN_DIR's best checkpoint "
        "(or --checkpoint), with the run's own vocabulary. The same --seed gives the same "
        "text; --temperature 0 is greedy.",
    )
    sa.add_argument("run_dir", type=Path, nargs="?", default=Path("."), help="a run directory")
    sa.add_argument("--checkpoint", type=Path, default=None, help="a checkpoint instead")
    sa.add_argument("--chars", type=_number(int, 0), default=500,
                    help="characters to generate (500)")  # fmt: skip
    sa.add_argument("--temperature", type=_number(float, 0), default=0.8,
                    help="0: greedy (0.8)")  # fmt: skip
    sa.add_argument("--top-k", type=_number(int, 1), default=None,
                    help="sample from the k most likely")  # fmt: skip
    sa.add_argument("--seed", type=int, default=1337, help="random seed (1337)")
    sa.add_argument("--prompt", default="\n", help="text to continue (a newline)")
    sa.set_defaults(func=sample_cmd)
    sw = sub.add_parser(
        "sweep",
        help="run an LR sweep or a warmup sweep (one stablelab-train trial per value)",
        description="lr: one trial per base learning rate (default: the round half-decade "
        "grid 1, 3, 10, 30, ... x 10^k from two points below the config's LR to three above), "
        "then the analysis (sweep_summary.csv, the axis plot with "
        "infeasible trials, lr*, the edge-of-feasibility verdict). warmup: at "
        "base_learning_rate = FACTOR x --unstable-lr, one trial per warmup_steps of the grid "
        "capped at 10% of max_train_steps, post_warmup_steps = 2 x warmup_steps; prints the "
        "smallest stable warmup.",
    )
    sw.add_argument("kind", choices=["lr", "warmup"])
    _trial_args(sw)
    sw.add_argument("--lrs", type=POSITIVE, nargs="+", default=None, help="lr: the LRs to try")
    sw.add_argument(
        "--unstable-lr",
        type=POSITIVE,
        default=None,
        help="warmup: unstable_base_learning_rate (from an LR sweep)",
    )
    sw.add_argument(
        "--factor",
        type=POSITIVE,
        default=10.0,
        help="warmup: base_learning_rate = factor x unstable LR (10; 100 may be tried)",
    )
    sw.add_argument(
        "--grid",
        type=_number(int, 0),
        nargs="+",
        default=[10, 1000, 10000, 100000],
        help="warmup: warmup_steps to try before the 10%% cap",
    )
    sw.set_defaults(func=sweep_cmd)
    pr = sub.add_parser(
        "probe",
        help="the early-instability probe: a short run evaluating after every step",
        description="Train --steps steps at --lr (the playbook: 2 x lr*) with an evaluation "
        "after every update, then print the stability verdict and the report's reading.",
    )
    pr.add_argument("--lr", type=POSITIVE, required=True, help="the LR to probe (2 x lr*)")
    pr.add_argument("--steps", type=_number(int, 1), default=500, help="steps (default 500)")
    _trial_args(pr)
    pr.set_defaults(func=probe_cmd)
    an = sub.add_parser(
        "analyze",
        help="analyse an LR sweep directory (a Hydra multirun or `stablelab sweep lr`) or a "
        "warmup sweep's",
        description="Read every run directory under SWEEP_DIR and write sweep_summary.csv, "
        "axis_plot.png (best val loss vs LR, infeasible trials marked), "
        "curves_above_lr_star.png and sweep_report.md with lr* and the verdict. A warmup "
        "sweep (one LR, several warmup_steps) gets the smallest stable warmup, "
        "warmup_curves.png and sweep_report.md instead.",
    )
    an.add_argument("sweep_dir", type=Path)
    an.set_defaults(func=analyze_cmd)
    dg = sub.add_parser(
        "diagnose",
        help="LR sweep -> probe at 2 x lr* -> warmup sweep -> clip threshold, one report",
        description="Run the playbook's procedures in order on a config and write "
        "diagnosis.md (plots, lr*, stable or not, the recommended warmup and clip threshold, "
        "the first fix to try), also to W&B.",
    )
    _trial_args(dg)
    dg.add_argument(
        "--lrs",
        type=POSITIVE,
        nargs="+",
        default=None,
        help="the LR sweep (default: the half-decade grid 1, 3, 10 x 10^k around the config's LR)",
    )
    dg.add_argument("--probe-steps", type=_number(int, 1), default=500, help="probe length (500)")
    dg.add_argument("--factor", type=POSITIVE, default=10.0, help="warmup base LR factor (10)")
    dg.add_argument(
        "--grid",
        type=_number(int, 0),
        nargs="+",
        default=[10, 1000, 10000, 100000],
        help="warmup grid before the 10%% cap",
    )
    dg.set_defaults(func=diagnose_cmd)
    return _dispatch(_parse(ap, sub, argv))


def _parse(ap: argparse.ArgumentParser, sub: Any, argv: list[str] | None) -> argparse.Namespace:
    """The command line, options written out and Hydra overrides anywhere."""
    # an option is written out: `sweep lr --lr=1e-3` would otherwise be taken as --lrs
    for parser in (ap, *sub.choices.values()):
        parser.allow_abbrev = False
    # Hydra overrides may come anywhere, also after options (`sweep warmup --unstable-lr X
    # key=value`): argparse stops a positional list at the first option, so collect the rest
    args, extra = ap.parse_known_args(argv)
    if extra:
        stray = [e for e in extra if e.startswith("-") or "=" not in e]
        if stray or not hasattr(args, "overrides"):
            _unrecognized(sub.choices[args.command], stray or extra)
        args.overrides = [*args.overrides, *extra]
    _refuse_repeats(ap, args)
    return args


def _unrecognized(parser: argparse.ArgumentParser, stray: list[str]) -> None:
    """Argparse's error for arguments the command does not take, from the command's own
    parser (its usage, not the top level's), with the nearest option it does take."""
    import difflib

    options = [o[2:] for a in parser._actions for o in a.option_strings if o.startswith("--")]
    hints = []
    for word in stray:
        name = word.split("=", 1)[0]
        bare = name.lstrip("-")
        close = [o for o in options if len(bare) > 1 and o.startswith(bare)][:1] or (
            difflib.get_close_matches(bare, options, n=1)
        )
        if word.startswith("-") and close:
            hints.append(f"{name}: did you mean --{close[0]}?")
    parser.error(f"unrecognized arguments: {' '.join(stray)}" + "".join(f"; {h}" for h in hints))


def _dispatch(args: argparse.Namespace) -> int:
    """Run the command; a refusal raised inside it (a workflow's trials already in --out)
    is exit 2 with its message, as everywhere."""
    from stablelab.console import plain_warnings
    from stablelab.constraints import ConfigError
    from stablelab.trials import TrialsFailed, TrialsInterrupted

    plain_warnings(f"stablelab {args.command}")
    if (problem := _out_problem(args)) is not None:
        print(f"stablelab {args.command}: {problem}", file=sys.stderr)
        return 2
    try:
        return int(args.func(args))
    except ConfigError as e:
        print(f"stablelab {args.command}: {e}", file=sys.stderr)
        return 2
    except TrialsFailed as e:  # every trial refused (2) or failed at start-up (1)
        print(f"stablelab {args.command}: {e}", file=sys.stderr)
        return 2 if e.refused else 1
    except TrialsInterrupted as e:  # 128 + N, as stablelab-train's
        print(
            f"stablelab {args.command}: {e}. To finish: resume the stopped trials, run the "
            f"missing values into the same --out, then: stablelab analyze {e.out_dir}"
            if args.command == "sweep" and getattr(args, "kind", "") == "lr"
            else f"stablelab {args.command}: {e}",
            file=sys.stderr,
        )
        return 128 + e.signum
    except KeyboardInterrupt:  # outside the trials: nothing running to pass it to
        print(f"stablelab {args.command}: interrupted", file=sys.stderr)
        return 130


def _out_problem(args: argparse.Namespace) -> str | None:
    """``--out`` that cannot be written, refused before any work: a folder (sweep, probe,
    diagnose, eval) under a file or where the file system will not make it; an image
    (schedule-plot) that is a folder or cannot be created."""
    from stablelab.preflight import writable_problem

    out = getattr(args, "out", None)
    if out is None:
        return None
    out = Path(out)
    if args.command != "schedule-plot":
        if out.exists() and not out.is_dir():
            return f"--out = '{out}': a file, not a directory"
        return writable_problem("--out", out)
    if out.is_dir():
        return f"--out = '{out}': a directory; give the image's file name ({out / 'schedule.png'})"
    if problem := writable_problem("--out", out.parent):
        return problem
    if not out.parent.is_dir():  # made with the plot (its first level was tried above)
        return None
    existed = out.exists()
    try:  # (a folder such as /proc says yes to root's permissions and no to the file)
        with out.open("ab"):
            pass
    except OSError as e:
        return f"--out = '{out}': cannot be written ({e.strerror or e})"
    if not existed:
        out.unlink()
    return None


def _refuse_repeats(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A value given twice in --lrs / --grid: one trial directory per value would collide."""
    for name in ("lrs", "grid"):
        values = getattr(args, name, None) or []
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            ap.error(f"--{name}: {', '.join(map(str, repeated))} given more than once")


if __name__ == "__main__":
    sys.exit(main())
