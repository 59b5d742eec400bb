"""The playbook's procedures as commands that run real trials: the LR sweep, the probe,
the warmup sweep, the clip threshold, ``diagnose`` and its report.

Trials run in the pool of :mod:`stablelab.trials` (a ``stablelab-train`` process each,
options in :class:`~stablelab.trials.TrialOptions`); a trial that diverges ends cleanly
(exit 0, ``feasible: false``) and the workflow goes on, a trial that crashes is recorded as
failed (infeasible) and the workflow goes on too; the results do not depend on ``jobs`` for
a fixed ``threads`` (tested). The analysis reads the run directories only
(:mod:`stablelab.analysis.sweep`); which fix to try first is :mod:`stablelab.policy`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

# the trial pool lives in stablelab.trials; re-exported for the studies and older imports
from stablelab.trials import (  # noqa: E402, F401
    Trial,
    TrialOptions,
    _fmt_time,
    _watch_trials,
    run_trials,
    study_args,
    trial_progress,
)


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
    lrs: list[float] | None, out_dir: str | Path, opts: TrialOptions | None = None
) -> dict[str, Any]:
    """Train one trial per LR, then analyse the sweep (see analysis.sweep). ``lrs=None``:
    :func:`default_lrs` around the config's ``optimizer.lr``."""
    from stablelab.analysis.sweep import analyze_lr_sweep

    opts = opts or TrialOptions()
    cfg = refuse_without_callbacks(opts.overrides, "sweep lr", ("stability",))
    if not lrs:
        lrs = default_lrs(float(cfg["optimizer"]["lr"]))
    trials = [Trial(lr_name(lr), [f"optimizer.lr={lr}"]) for lr in sorted(lrs)]
    opts.trials(trials, out_dir, "LR sweep")
    return analyze_lr_sweep(out_dir)


def probe(
    lr: float, out_dir: str | Path, opts: TrialOptions | None = None, *, steps: int = 500
) -> dict[str, Any]:
    """The playbook's check for early instability: a short run at ``lr`` (2 x lr*) that
    evaluates after every step. Returns the trial's summary plus its reading, whose advice
    (the warmup cap) is for the configured run's length, not the probe's."""
    from stablelab.analysis.report import findings_for
    from stablelab.config import checked

    name = f"probe_{lr_name(lr)}"
    args = [
        f"optimizer.lr={lr}",
        f"max_train_steps={steps}",
        f"callbacks.dense_eval.every_step_until={steps}",
        "test=false",
    ]
    opts = opts or TrialOptions()
    refuse_without_callbacks(opts.overrides, "probe", ("dense_eval", "stability"))
    run_steps = int(checked(opts.overrides)["max_train_steps"])  # (the run it stands in for)
    devices = opts.devices[:1] if opts.devices else None
    (r,) = opts.trials([Trial(name, args)], out_dir, "probe", jobs=1, devices=devices)
    from stablelab.analysis.runs import has_summary

    if not has_summary(r["run_dir"]):
        return {"run_dir": r["run_dir"], "status": "failed", "findings": []}
    summary, findings = findings_for(r["run_dir"], advise_for_steps=run_steps)
    from stablelab.policy import EARLY_FRACTION

    early = summary.get("first_instability_step")
    end = max(1, int(EARLY_FRACTION * (summary.get("total_steps") or steps)))
    return {
        **summary,
        "run_dir": r["run_dir"],
        "lr": lr,
        "early_instability": bool(early is not None and early < end),
        "findings": [(f.key, f.text) for f in findings],
    }


def refuse_without_callbacks(
    overrides: Sequence[str], workflow: str, names: Sequence[str]
) -> dict[str, Any]:
    """A workflow that reads what these callbacks measure: refused (ConfigError, before any
    trial) when the config leaves one out (``callbacks=none``, ``callbacks.<name>=null``).
    Checks the config's fast pass only (no torch import: a refusal in about a second);
    returns that plain config."""
    from stablelab.config import compose, validate
    from stablelab.constraints import ConfigError

    cfg = validate(compose([*overrides, "paths.output_dir=."]), fast_only=True)
    callbacks = cfg.get("callbacks") or {}
    off = [n for n in names if not callbacks.get(n)]
    if off:
        reads = {"dense_eval": "the dense evaluation after every step",
                 "stability": "the stability monitor's findings (divergence, instability:"
                              " without them a diverging trial reads as stable)"}  # fmt: skip
        raise ConfigError(
            [
                f"{', '.join(f'callbacks.{n}' for n in off)}: off, but stablelab {workflow} reads "
                f"{' and '.join(reads[n] for n in off)}; keep the default callbacks "
                "(callbacks=default) or give the callback back"
            ]
        )
    return cfg


def warmup_values(max_train_steps: int, grid: Sequence[int]) -> list[int]:
    """The warmup lengths a sweep tries (``warmup_grid``: the grid within the playbook's
    cap of 10% of the run); raises ConfigError when none is left (nothing would run, and
    "no warmup trains stably" would be said of an empty sweep)."""
    from stablelab.analysis.sweep import warmup_grid
    from stablelab.config import ConfigError

    values = warmup_grid(max_train_steps, list(grid))
    if values:
        return values
    cap = int(0.1 * max_train_steps)
    if cap == 0:
        why = (
            f"max_train_steps = {max_train_steps}: the playbook caps warmup at 10% of the "
            "run, 0 steps here; a warmup sweep needs max_train_steps >= 10"
        )
    else:
        why = f"--grid {' '.join(map(str, grid))}: no warmup length > 0 in it"
    raise ConfigError([why])


def warmup_sweep(
    unstable_lr: float,
    max_train_steps: int | None,
    out_dir: str | Path,
    opts: TrialOptions | None = None,
    *,
    factor: float = 10.0,
    grid: Sequence[int] = (10, 1000, 10000, 100000),
) -> dict[str, Any]:
    """The playbook's warmup sweep at ``base_learning_rate = factor * unstable_lr``:
    ``warmup_steps`` over ``grid`` capped at 10% of ``max_train_steps``,
    ``post_warmup_steps = 2 * warmup_steps``; the answer is the smallest stable one.
    ``max_train_steps=None``: the config's."""
    from stablelab.analysis.sweep import (
        load_trials,
        smallest_stable_warmup,
        warmup_advice,
        write_summary_csv,
        write_warmup_sweep,
    )

    opts = opts or TrialOptions()
    cfg = refuse_without_callbacks(opts.overrides, "sweep warmup", ("stability",))
    if max_train_steps is None:
        max_train_steps = int(cfg["max_train_steps"])
    base_lr = float(f"{factor * unstable_lr:.6g}")
    values = warmup_values(max_train_steps, grid)
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
    opts.trials(trials, out_dir, "warmup sweep")
    rows = load_trials(out_dir)
    best = smallest_stable_warmup(rows)
    advice = (
        warmup_advice(best["warmup_steps"], max_train_steps)
        if best
        else (
            f"no warmup in {values} trains stably at {base_lr:g}: the cap (10% of "
            "max_train_steps) is reached; try a smaller factor, clipping, or longer training"
        )
    )
    if rows:
        at = f"{factor:g} x unstable_base_learning_rate {unstable_lr:g} = {base_lr:g}"
        write_warmup_sweep(out_dir, rows, f"warmup sweep at {at}: {advice}")
    else:
        write_summary_csv(rows, Path(out_dir) / "sweep_summary.csv")
    return {
        "unstable_base_learning_rate": unstable_lr,
        "base_learning_rate": base_lr,
        "grid": values,
        "rows": rows,
        "warmup_steps": best["warmup_steps"] if best else None,
        "advice": advice,
    }


def clip_threshold(run_dir: str | Path, percentile: float = 90.0) -> float | None:
    """The playbook's starting clip threshold: a percentile of a run's unclipped norms."""
    import numpy as np

    from stablelab.analysis.runs import finite_grad_norms

    try:
        finite = finite_grad_norms(run_dir)
    except FileNotFoundError:
        return None
    return float(np.percentile(finite, percentile)) if finite.size else None


def clipping_study(
    out_dir: Path, base: list[str], jobs: int, extra: Sequence[Trial] = (), train: bool = True
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
    if p90 is None:
        raise RuntimeError(
            f"{out_dir / 'none'}: the unclipped run recorded no finite gradient norm (did it "
            "diverge at its first step, or run with callbacks.grad_norm=null?), so there is "
            "no 90th percentile to clip at"
        )
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
    grid: Sequence[int] = (10, 1000, 10000, 100000),
) -> dict[str, Any]:
    """LR sweep -> lr* and the axis plot; probe at 2 x lr*; warmup sweep at 10x the
    unstable LR; clip threshold from lr*'s norms; one report (``diagnosis.md``)."""
    from omegaconf import OmegaConf

    from stablelab.config import checked

    out_dir = Path(out_dir)
    opts = opts or TrialOptions()
    refuse_without_callbacks(opts.overrides, "diagnose", ("dense_eval", "stability"))
    plain = checked(opts.overrides, out_dir)  # fail early
    base_lr = float(plain["optimizer"]["lr"])
    max_steps = int(plain["max_train_steps"])
    lrs = sorted(lrs or default_lrs(base_lr))
    warmup_values(max_steps, grid)  # (refused here, not after the LR sweep and the probe)
    out_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(plain), out_dir / "base_config.yaml")
    say = print if opts.progress else (lambda *a, **k: None)
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
    from stablelab.analysis.diagnosis import render_diagnosis
    from stablelab.tracking import log_diagnosis

    report = out_dir / "diagnosis.md"
    report.write_text(render_diagnosis(result, out_dir))
    log_diagnosis(result, out_dir, report)
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
