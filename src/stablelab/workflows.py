"""The playbook's procedures as commands that run real trials.

Every trial is a normal ``stablelab-train`` run in its own process, writing its own run
directory under the workflow's output directory (``<out>/<trial name>``); a trial that
diverges ends cleanly (exit 0, ``feasible: false``) and the workflow goes on, a trial that
crashes is recorded as failed (infeasible) and the workflow goes on too. ``jobs`` trials
run at once, each with ``threads`` torch threads (default: the CPU count split between the
jobs); the results do not depend on ``jobs`` for a fixed ``threads`` (tested). The
analysis reads the run directories only (:mod:`stablelab.analysis.sweep`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrialOptions:
    """How a workflow runs its trials: the Hydra overrides every trial gets, how many run
    at once, torch threads per trial (None: the available cores / jobs), progress output,
    and GPU ids (one trial per device at a time)."""

    overrides: list[str] = field(default_factory=list)
    jobs: int = 1
    threads: int | None = None
    progress: bool = True
    devices: list[str] | None = None

    def trials(self, trials: list[Trial], out_dir: str | Path, label: str, **kw: Any):
        """:func:`run_trials` with these options (``kw`` overrides one, e.g. ``jobs=1``)."""
        o = {"jobs": self.jobs, "devices": self.devices, **kw}
        return run_trials(
            trials, out_dir, list(self.overrides), o["jobs"], self.threads, label,
            self.progress, o["devices"],
        )  # fmt: skip


@dataclass
class Trial:
    name: str
    overrides: list[str] = field(default_factory=list)


def _fmt_time(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def run_trials(
    trials: list[Trial],
    out_dir: str | Path,
    base: list[str] = (),
    jobs: int = 1,
    threads: int | None = None,
    label: str = "trials",
    progress: bool = True,
    devices: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Run each trial as ``python -m stablelab.train <base> <overrides>`` writing to
    ``out_dir/<name>``; return ``[{"name", "run_dir", "returncode", "seconds"}]`` in the
    trials' order. Output of each goes to ``out_dir/<name>.log``.

    ``devices`` (e.g. GPU ids ``["0", "1"]``): one trial per device at a time, each
    process seeing only its own (``CUDA_VISIBLE_DEVICES``); ``jobs`` becomes their number.
    """
    import queue

    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    free: queue.Queue[str | None] = queue.Queue()
    if devices:
        jobs = len(devices)
        for d in devices:
            free.put(str(d))
    jobs = max(1, int(jobs))
    from stablelab.threads import available_cores

    threads = threads or max(1, available_cores() // jobs)  # the thread policy's cores
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"),
        "WANDB_SILENT": os.environ.get("WANDB_SILENT", "true"),
        # the W&B group of every trial of this workflow (unless logger.wandb.group is set)
        "STABLELAB_SWEEP_GROUP": f"{out_dir.resolve().parent.name}/{out_dir.name}",
    }

    def one(t: Trial) -> dict[str, Any]:
        run_dir = out_dir / t.name
        cmd = [
            sys.executable,
            "-m",
            "stablelab.train",
            *base,
            *t.overrides,
            # plain progress lines into the trial's log, which the workflow reads back
            "callbacks.progress_bar.terminal=false",
            f"hydra.run.dir={run_dir}",
        ]
        start = time.time()
        device = free.get() if devices else None
        trial_env = env if device is None else {**env, "CUDA_VISIBLE_DEVICES": device}
        try:
            with (out_dir / f"{t.name}.log").open("w") as log:
                if device is not None:
                    log.write(f"CUDA_VISIBLE_DEVICES={device}\n")
                log.write(" ".join(cmd) + "\n")
                log.flush()
                rc = subprocess.run(
                    cmd, stdout=log, stderr=subprocess.STDOUT, env=trial_env
                ).returncode
        finally:
            if device is not None:
                free.put(device)
        return {
            "name": t.name,
            "run_dir": str(run_dir),
            "returncode": rc,
            "seconds": time.time() - start,
        }

    results: dict[str, dict[str, Any]] = {}
    start = time.time()
    interactive = progress and sys.stderr.isatty()  # a bar on a terminal, lines in logs
    if progress:
        print(
            f"[{label}] {len(trials)} trial(s), {jobs} at a time, {threads} thread(s) each, "
            f"in {out_dir}",
            file=sys.stderr if interactive else sys.stdout,
            flush=True,
        )
    bar = tqdm(
        total=len(trials),
        desc=label,
        unit="trial",
        disable=not interactive,
        dynamic_ncols=True,
        file=sys.stderr,
    )
    stop = threading.Event()
    watcher = threading.Thread(
        target=_watch_trials,
        # in a log, quarter lines only where every trial runs at once (one wave: otherwise
        # the trials' own end lines come often enough)
        args=(
            out_dir,
            [t.name for t in trials],
            label,
            bar,
            interactive,
            len(trials) > jobs,
            stop,
        ),  # fmt: skip
        daemon=True,
    )
    if progress:
        watcher.start()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(one, t): t for t in trials}
        for k, fut in enumerate(as_completed(futures), start=1):
            r = fut.result()
            results[r["name"]] = r
            elapsed = time.time() - start
            eta = elapsed / k * (len(trials) - k)
            bar.update(1)
            bar.set_postfix_str(f"ETA {_fmt_time(eta)}")
            if progress:
                (bar.write if interactive else print)(
                    f"[{label} {k}/{len(trials)}] {r['name']}: {_status(r)} "
                    f"({_fmt_time(r['seconds'])}; elapsed {_fmt_time(elapsed)}, "
                    f"ETA {_fmt_time(eta)})"
                )
    stop.set()
    if watcher.is_alive():
        watcher.join()
    bar.close()
    return [results[t.name] for t in trials]


_STEP_LINE = re.compile(r"^step (\d+)/(\d+) \((\d+)%\).*ETA (\S+)\s*$", re.M)


def trial_progress(log: Path) -> tuple[int, int, int, str] | None:
    """The last progress line of a running trial's log: (step, total, percent, ETA)."""
    try:
        with log.open("rb") as f:
            f.seek(max(0, f.seek(0, 2) - 4096))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    found = _STEP_LINE.findall(tail)
    if not found:
        return None
    step, total, pct, eta = found[-1]
    return int(step), int(total), int(pct), eta


def _watch_trials(
    out_dir, names, label, bar, interactive, quiet_log, stop, every: float = 2.0
) -> None:
    """While trials run: on a terminal, the running trials' step and ETA in the bar;
    in a log (unless ``quiet_log``), a line when a trial passes 25%, 50% and 75% of its
    steps (a long trial, such as diagnose's probe, is not silent until it ends)."""
    reported: dict[str, int] = {}
    while not stop.wait(every):
        running = []
        for name in names:
            p = trial_progress(out_dir / f"{name}.log")
            if p is None or p[0] >= p[1]:
                continue
            step, total, pct, eta = p
            running.append(f"{name} {pct}% (ETA {eta})")
            quarter = pct // 25 * 25
            if not interactive and not quiet_log and quarter > reported.get(name, 0):
                reported[name] = quarter
                print(f"[{label}] {name}: step {step}/{total} ({pct}%), ETA {eta}", flush=True)
        if interactive and running:
            bar.set_postfix_str("; ".join(running))


def study_args(doc: str, study: str) -> Any:
    """The command line every ``experiments/<study>/run.py`` shares: ``--out`` (the trials'
    folder, default ``logs/experiments/<study>``), ``--jobs`` and ``--from-runs`` (train
    nothing: rebuild the study's CSV and plot from the runs already in ``--out``). Without
    ``--from-runs`` an existing ``--out`` is emptied first, so no old trial is mixed in."""
    import argparse
    import shutil

    ap = argparse.ArgumentParser(
        description=doc.split("\n")[0], epilog=doc, formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--out", type=Path, default=Path("logs/experiments") / study,
                    help="where the trials run (default: %(default)s)")  # fmt: skip
    ap.add_argument("--jobs", type=int, default=2, help="trials at once (default: 2)")
    ap.add_argument("--from-runs", action="store_true",
                    help="train nothing: rebuild CSV and plot from the runs in --out")  # fmt: skip
    args = ap.parse_args()
    if args.from_runs and not args.out.is_dir():
        ap.error(f"--from-runs: no runs in {args.out}")
    if not args.from_runs and args.out.exists():
        shutil.rmtree(args.out)
    return args


def _status(r: dict[str, Any]) -> str:
    from stablelab.analysis.runs import has_summary, read_summary

    if not has_summary(r["run_dir"]):
        return f"failed before writing a summary (exit {r['returncode']}, see {r['name']}.log)"
    s = read_summary(r["run_dir"])
    if s.get("status") == "diverged":
        return f"diverged at step {s.get('diverged_at_step')} (infeasible)"
    if s.get("status") != "completed":
        return f"{s.get('status')} (exit {r['returncode']})"
    val = s.get("val_loss")
    tag = "unstable" if s.get("unstable") else "stable"
    return f"val loss {val:.4g}, {tag}" if val is not None else tag


def lr_name(lr: float) -> str:
    return f"lr_{lr:.4g}".replace("+", "")


def default_lrs(base_lr: float, below: int = 2, above: int = 3) -> list[float]:
    """Round, half-decade LRs around ``base_lr``: the 1-3-10 grid (..., 1e-3, 3e-3, 1e-2,
    3e-2, ...), ``below`` points under the grid value nearest ``base_lr`` (in log scale)
    and ``above`` over it. A base LR on the grid is one of the points."""
    import math

    def value(i: int) -> float:  # grid index i: 10^(i // 2) x (1 or 3)
        return float(f"{(1 if i % 2 == 0 else 3) * 10.0 ** (i // 2):.1e}")

    i = round(2 * math.log10(base_lr))  # nearest half-decade (3 ~ 10^0.5)
    i = min((i - 1, i, i + 1), key=lambda j: abs(math.log(value(j) / base_lr)))
    return [value(j) for j in range(i - below, i + above + 1)]


def lr_sweep(
    lrs: list[float], out_dir: str | Path, opts: TrialOptions | None = None
) -> dict[str, Any]:
    """Train one trial per LR, then analyse the sweep (see analysis.sweep)."""
    from stablelab.analysis.sweep import analyze_lr_sweep

    trials = [Trial(lr_name(lr), [f"optimizer.lr={lr}"]) for lr in sorted(lrs)]
    (opts or TrialOptions()).trials(trials, out_dir, "LR sweep")
    return analyze_lr_sweep(out_dir)


def probe(
    lr: float, out_dir: str | Path, opts: TrialOptions | None = None, *, steps: int = 500
) -> dict[str, Any]:
    """The playbook's check for early instability: a short run at ``lr`` (2 x lr*) that
    evaluates after every step. Returns the trial's summary plus its reading."""
    from stablelab.analysis.report import findings_for

    name = f"probe_{lr_name(lr)}"
    args = [
        f"optimizer.lr={lr}",
        f"max_train_steps={steps}",
        f"callbacks.dense_eval.every_step_until={steps}",
        "test=false",
    ]
    opts = opts or TrialOptions()
    devices = opts.devices[:1] if opts.devices else None
    (r,) = opts.trials([Trial(name, args)], out_dir, "probe", jobs=1, devices=devices)
    from stablelab.analysis.runs import has_summary

    if not has_summary(r["run_dir"]):
        return {"run_dir": r["run_dir"], "status": "failed", "findings": []}
    summary, findings = findings_for(r["run_dir"])
    early = summary.get("first_instability_step")
    end = max(1, int(0.1 * (summary.get("total_steps") or steps)))
    return {
        **summary,
        "run_dir": r["run_dir"],
        "lr": lr,
        "early_instability": bool(early is not None and early < end),
        "findings": [(f.key, f.text) for f in findings],
    }


def warmup_sweep(
    unstable_lr: float,
    max_train_steps: int,
    out_dir: str | Path,
    opts: TrialOptions | None = None,
    *,
    factor: float = 10.0,
    grid: list[int] = (10, 1000, 10000, 100000),
) -> dict[str, Any]:
    """The playbook's warmup sweep at ``base_learning_rate = factor * unstable_lr``:
    ``warmup_steps`` over ``grid`` capped at 10% of ``max_train_steps``,
    ``post_warmup_steps = 2 * warmup_steps``; the answer is the smallest stable one."""
    from stablelab.analysis.sweep import (
        load_trials,
        plot_curves,
        smallest_stable_warmup,
        warmup_advice,
        warmup_grid,
        write_summary_csv,
    )

    base_lr = float(f"{factor * unstable_lr:.6g}")
    values = warmup_grid(max_train_steps, list(grid))
    trials = [
        Trial(
            f"warmup_{w}",
            [
                f"optimizer.lr={base_lr}",
                f"max_train_steps={max_train_steps}",
                f"schedule.warmup_steps={w}",
                f"schedule.post_warmup_steps={2 * w}",
            ],
        )
        for w in values
    ]
    (opts or TrialOptions()).trials(trials, out_dir, "warmup sweep")
    rows = load_trials(out_dir)
    write_summary_csv(rows, Path(out_dir) / "sweep_summary.csv")
    if rows:
        plot_curves(rows, Path(out_dir) / "warmup_curves.png", label="warmup")
    best = smallest_stable_warmup(rows)
    return {
        "unstable_base_learning_rate": unstable_lr,
        "base_learning_rate": base_lr,
        "grid": values,
        "rows": rows,
        "warmup_steps": best["warmup_steps"] if best else None,
        "advice": warmup_advice(best["warmup_steps"], max_train_steps)
        if best
        else (
            f"no warmup in {values} trains stably at {base_lr:g}: the cap (10% of "
            "max_train_steps) is reached; try a smaller factor, clipping, or longer training"
        ),
    }


def clip_threshold(run_dir: str | Path, percentile: float = 90.0) -> float | None:
    """The playbook's starting clip threshold: a percentile of a run's unclipped norms."""
    import numpy as np

    from stablelab.analysis.runs import read_grad_norms

    try:
        norms = np.array(read_grad_norms(run_dir))
    except FileNotFoundError:
        return None
    finite = norms[np.isfinite(norms)]
    return float(np.percentile(finite, percentile)) if finite.size else None


def clipping_study(
    out_dir: Path, base: list[str], jobs: int, extra: list[Trial] = (), train: bool = True
) -> list[str]:
    """The playbook's Figure 9 as a procedure: the unclipped run first, its 90th percentile
    of the unclipped norms, then a fixed threshold 100x that, a fixed threshold at it,
    AutoClip (``percentile``), ZClip (``zscore``), AGC and any ``extra`` trials, in
    parallel. One torch thread per trial (at an unstable LR a different thread count alone
    changes the trajectory). ``train=False``: only name the trials already in ``out_dir``.
    Returns the trial names in that order."""
    if train:
        run_trials([Trial("none", ["clipping=none"])], out_dir, base, threads=1, label="unclipped")
    p90 = clip_threshold(out_dir / "none")
    trials = [
        Trial("fixed_far_above", ["clipping=fixed", f"clipping.clip_threshold={100 * p90:.4g}"]),
        Trial("fixed_p90", ["clipping=fixed", f"clipping.clip_threshold={p90:.4g}"]),
        Trial("percentile", ["clipping=percentile"]),
        Trial("zscore", ["clipping=zscore"]),
        Trial("agc", ["clipping=agc"]),
        *extra,
    ]
    if train:
        run_trials(trials, out_dir, base, jobs=jobs, threads=1, label="clipping")
    return ["none", *[t.name for t in trials]]


def diagnose(
    out_dir: str | Path,
    opts: TrialOptions | None = None,
    *,
    lrs: list[float] | None = None,
    probe_steps: int = 500,
    factor: float = 10.0,
    grid: list[int] = (10, 1000, 10000, 100000),
) -> dict[str, Any]:
    """LR sweep -> lr* and the axis plot; probe at 2 x lr*; warmup sweep at 10x the
    unstable LR; clip threshold from lr*'s norms; one report (``diagnosis.md``)."""
    from omegaconf import OmegaConf

    from stablelab.config import compose, validate

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    opts = opts or TrialOptions()
    overrides, progress = list(opts.overrides), opts.progress
    plain = validate(compose([*overrides, f"paths.output_dir={out_dir}"]))  # fail early
    base_lr = float(plain["optimizer"]["lr"])
    max_steps = int(plain["max_train_steps"])
    lrs = sorted(lrs or default_lrs(base_lr))
    OmegaConf.save(OmegaConf.create(plain), out_dir / "base_config.yaml")
    say = print if progress else (lambda *a, **k: None)
    say(f"diagnose: {len(lrs)}-trial LR sweep, probe at 2 x lr*, warmup sweep -> {out_dir}")

    sweep = lr_sweep(lrs, out_dir / "lr_sweep", opts)
    say(f"diagnose: {sweep['verdict']}")
    result: dict[str, Any] = {"out_dir": str(out_dir), "lrs": lrs, "sweep": sweep}
    star = sweep["lr_star"]
    if star is not None:
        result["probe"] = probe(2 * star, out_dir / "probe", opts, steps=probe_steps)
        result["clip_threshold"] = clip_threshold(sweep["lr_star_run"])
    unstable = sweep["unstable_base_learning_rate"]
    pr = result.get("probe")
    if pr and pr.get("unstable") and (unstable is None or pr["lr"] < unstable):
        unstable = pr["lr"]  # the probe found instability below the sweep's first bad LR
    if unstable is not None:
        result["warmup"] = warmup_sweep(
            unstable, max_steps, out_dir / "warmup", opts, factor=factor, grid=grid
        )
    result["first_fix"] = first_fix(result)
    report = out_dir / "diagnosis.md"
    report.write_text(render_diagnosis(result, out_dir))
    _diagnosis_to_wandb(result, out_dir, report)
    say(f"diagnose: first fix to try: {result['first_fix']}")
    say(f"diagnose: wrote {report}")
    return result


def first_fix(result: dict[str, Any]) -> str:
    """Which playbook fix to try first, from what the workflows found: the first rule of
    :data:`stablelab.policy.FIX_RULES` that holds (warmup when there is early instability
    or lr* sits at the edge and the warmup sweep found a stable warmup; otherwise clipping
    when anything was unstable; otherwise nothing), as one line."""
    from stablelab.policy import choose_fix

    return choose_fix(result).text()


def render_diagnosis(result: dict[str, Any], out_dir: Path) -> str:
    sweep, pr, wu = result["sweep"], result.get("probe"), result.get("warmup")

    def rel(p: str | Path | None) -> str | None:
        return os.path.relpath(p, out_dir) if p else None

    lines = [
        "# Diagnosis",
        "",
        f"**First fix to try: {result['first_fix']}**",
        "",
        "## 1. LR sweep",
        "",
        f"{sweep['verdict']}.",
        "",
        f"LRs tried: {', '.join(f'{x:.4g}' for x in result['lrs'])}; "
        f"{sweep['infeasible']} infeasible, {sweep['unstable']} unstable. "
        + (
            f"LR sensitivity (Wortsman et al. 2023) {sweep['lr_sensitivity']:.4g}. "
            if sweep.get("lr_sensitivity") is not None
            else ""
        )
        + "Details: [lr_sweep/sweep_report.md](lr_sweep/sweep_report.md).",
        "",
        "![axis plot](lr_sweep/axis_plot.png)",
        "",
    ]
    if sweep.get("curves"):
        lines += ["![curves above lr*](lr_sweep/curves_above_lr_star.png)", ""]
    lines += ["## 2. Stability probe (2 x lr*, evaluation after every step)", ""]
    if pr is None:
        lines += ["Not run: no feasible lr*.", ""]
    else:
        from stablelab.policy import PROBE_VERDICTS, probe_verdict

        key = probe_verdict(pr)
        verdict = (
            f"**{PROBE_VERDICTS[key]}**" if key == "early_instability" else PROBE_VERDICTS[key]
        )
        lines += [
            f"At lr = {pr['lr']:.4g} for {pr.get('total_steps')} steps: {verdict}"
            + (f", diverged at step {pr['diverged_at_step']}" if pr.get("diverged") else "")
            + f". Report: [{rel(pr['run_dir'])}/report.md]({rel(pr['run_dir'])}/report.md).",
            "",
            *(  # no figure when the trials ran with plots=false
                [f"![probe loss]({rel(pr['run_dir'])}/loss.png)", ""]
                if (Path(pr["run_dir"]) / "loss.png").is_file()
                else []
            ),
            *[f"- [{k}] {t}" for k, t in pr.get("findings", [])],
            "",
        ]
    lines += ["## 3. Warmup sweep", ""]
    if wu is None:
        lines += [
            "Not run: no LR in the sweep (or the probe) was infeasible or unstable, so there "
            "is no `unstable_base_learning_rate` to warm up from.",
            "",
        ]
    else:
        lines += [
            f"unstable_base_learning_rate = {wu['unstable_base_learning_rate']:.4g}; "
            f"base_learning_rate = {wu['base_learning_rate']:.4g}; warmup_steps tried "
            f"(capped at 10% of max_train_steps) {wu['grid']}, post_warmup_steps = 2 x "
            "warmup_steps.",
            "",
            f"Result: {wu['advice']}.",
            "",
            "| warmup_steps | feasible | unstable | best val loss |",
            "|---|---|---|---|",
            *[
                f"| {r['warmup_steps']} | {'yes' if r['feasible'] else 'no'} | "
                f"{'yes' if r['unstable'] else 'no'} | "
                + (f"{r['val_loss']:.4g}" if r["val_loss"] is not None else "-")
                + " |"
                for r in wu["rows"]
            ],
            "",
            "![warmup curves](warmup/warmup_curves.png)",
            "",
        ]
    thr = result.get("clip_threshold")
    lines += [
        "## 4. Clip threshold",
        "",
        (
            f"The 90th percentile of lr*'s unclipped gradient norms: **{thr:.4g}** "
            f"(`clipping=fixed clipping.clip_threshold={thr:.4g}`); lower it if instability "
            "remains, and lower the LR instead if more than 50% of updates get clipped."
            if thr is not None
            else "No gradient norms recorded for lr*."
        ),
        "",
    ]
    return "\n".join(lines)


def _diagnosis_to_wandb(result: dict[str, Any], out_dir: Path, report: Path) -> None:
    """One W&B run (offline unless WANDB_MODE says otherwise) with the plots and report."""
    import shutil

    from stablelab.tracking import finish_and_wait

    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    images = {
        "diagnose/axis_plot": out_dir / "lr_sweep" / "axis_plot.png",
        "diagnose/curves_above_lr_star": out_dir / "lr_sweep" / "curves_above_lr_star.png",
        "diagnose/warmup_curves": out_dir / "warmup" / "warmup_curves.png",
    }
    if result.get("probe"):
        images["diagnose/probe_loss"] = Path(result["probe"]["run_dir"]) / "loss.png"
    run = wandb.init(
        dir=str(out_dir),
        project="stablelab",
        job_type="diagnose",
        config={"lrs": result["lrs"]},
        reinit="finish_previous",
    )
    try:
        run.log({k: wandb.Image(str(p)) for k, p in images.items() if p.is_file()})
        wu = result.get("warmup") or {}
        run.summary.update(
            {
                "lr_star": result["sweep"]["lr_star"],
                "edge_of_feasibility": result["sweep"]["edge_of_feasibility"],
                "unstable_base_learning_rate": result["sweep"]["unstable_base_learning_rate"],
                "lr_sensitivity": result["sweep"].get("lr_sensitivity"),
                "probe_unstable": (result.get("probe") or {}).get("unstable"),
                "warmup_steps": wu.get("warmup_steps"),
                "clip_threshold": result.get("clip_threshold"),
                "first_fix": result["first_fix"],
            }
        )
        shutil.copyfile(report, Path(run.dir) / report.name)
    finally:
        finish_and_wait(run)
