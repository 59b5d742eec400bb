"""The per-run stability report: ``report.md`` plus PNGs, built from the run directory only.

``write_report(run_dir)`` reads ``summary.json``, ``config.yaml`` and the per-step files the
callbacks wrote (``stability.csv``, ``evals.csv``, ``dense_eval.csv``, ``grad_norms.csv``,
``update_ratios.csv``), draws ``loss.png`` and ``lr.png`` (and the gradient-norm plots if
they are missing), and writes ``report.md``: a verdict, the flags, and a short reading that
maps what happened to the playbook's candidate fixes (:func:`stablelab.policy.reading`).
``train`` calls it at the end of every run, diverged or not; ``stablelab report RUN_DIR``
rebuilds it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from stablelab.analysis.runs import read_config, read_csv, read_summary
from stablelab.policy import Finding, reading
from stablelab.policy import fmt as _fmt

REPORT_FILE = "report.md"
FIGURES = [
    ("loss.png", "training loss (every step, EMA), validation loss, dense evaluations"),
    ("lr.png", "learning-rate schedule"),
    ("grad_norm.png", "unclipped gradient norm per step"),
    ("grad_norm_hist.png", "gradient-norm histogram with p50/p90/p99"),
    ("update_ratio.png", "update-to-weight ratio per parameter tensor"),
    ("sharpness.png", "sharpness against the update rule's stability threshold"),
    ("noise_scale.png", "gradient noise scale against the batch size"),
    ("lm_monitor.png", "max attention logit per layer and log Z of the output logits"),
]


# the files a run may hold, as the report's closing line names those it has
FILES = [
    ("summary.json", " (every number)"),
    ("stability.csv", " (per-step loss, EMA, events)"),
    ("grad_norms.csv", ""),
    ("evals.csv", ""),
    ("dense_eval.csv", ""),
    ("lm_monitor.csv", ""),
    ("config.yaml", ""),
    ("checkpoints/", ""),
]


# the columns the report reads of each file it reads
COLUMNS = {
    "stability.csv": ("step", "loss", "loss_ema"),
    "dense_eval.csv": ("step", "val_loss"),
    "evals.csv": ("step", "val_loss"),
    "grad_norms.csv": ("step", "grad_norm", "clip_threshold"),
}


def _csv(path: Path) -> list[dict[str, str]]:
    return read_csv(path.parent, path.name, COLUMNS.get(path.name, ("step",)))


def _f(x: str | None) -> float:
    try:
        return float(x) if x not in (None, "") else math.nan
    except ValueError:
        return math.nan


# ---------------------------------------------------------------------- the report
def load_config(run_dir: str | Path) -> dict[str, Any]:
    """The run's config (see :func:`stablelab.analysis.runs.read_config`)."""
    return read_config(run_dir)


def _lr_plot(cfg: dict[str, Any], run_dir: Path) -> Path | None:
    """lr.png, when the schedule in the run's config.yaml may be built (see
    :func:`stablelab.analysis.runs.lr_curve`); no LR plot otherwise, still a report."""
    from stablelab.analysis.plots import plot_schedule
    from stablelab.analysis.runs import lr_curve

    built = lr_curve(cfg, source=str(run_dir / "config.yaml"))
    if built is None:
        return None
    sched, steps, lrs = built
    return plot_schedule(
        lrs,
        run_dir / "lr.png",
        sched.warmup_steps,
        sched.post_warmup_steps,
        title=f"{type(sched).__name__} schedule, base LR {float(cfg['optimizer']['lr']):g}",
        steps=steps,
    )


def _events(*tables: list[dict[str, str]], summary: dict[str, Any]) -> list[tuple[int, str]]:
    """``(step, kind)`` from the ``events`` columns of stability.csv and dense_eval.csv."""
    events = sorted(
        (int(r["step"]), k)
        for t in tables
        for r in t
        for k in (r.get("events") or "").split(";")
        if k
    )
    if summary.get("diverged_at_step") is not None and "diverged" not in {k for _, k in events}:
        events.append((int(summary["diverged_at_step"]), "diverged"))
    return events


def findings_for(
    run_dir: str | Path, advise_for_steps: int | None = None
) -> tuple[dict[str, Any], list[Finding]]:
    """A run directory's summary and the reading of it. ``advise_for_steps``: the length of
    the run the advice is for, when that is not this run (the probe's 500 steps stand in
    for a longer training run, whose warmup cap is 10% of its own length)."""
    run_dir = Path(run_dir)
    summary = read_summary(run_dir)
    tables = _csv(run_dir / "stability.csv"), _csv(run_dir / "dense_eval.csv")
    events = _events(*tables, summary=summary)
    cfg = load_config(run_dir)
    if advise_for_steps:
        sched = {**(cfg.get("schedule") or {}), "max_train_steps": int(advise_for_steps)}
        cfg = {**cfg, "schedule": sched}
    return summary, reading(summary, cfg, events)


def write_report(run_dir: str | Path, figures: bool = True) -> Path:
    """Write ``report.md`` and (unless ``figures`` is false: the run's ``plots=false``) its
    PNGs into ``run_dir``; return the report's path."""
    run_dir = Path(run_dir)
    summary = read_summary(run_dir)
    cfg = load_config(run_dir)
    stab = _csv(run_dir / "stability.csv")
    dense_rows = _csv(run_dir / "dense_eval.csv")
    events = _events(stab, dense_rows, summary=summary)
    if figures:
        _draw_figures(run_dir, summary, cfg, stab, dense_rows, events)
    findings = reading(summary, cfg, events)
    path = run_dir / REPORT_FILE
    path.write_text(render(summary, cfg, findings, run_dir))
    return path


def _draw_figures(run_dir: Path, summary, cfg, stab, dense_rows, events) -> None:
    """loss.png, lr.png, and the gradient-norm plots if the run did not draw them."""
    from stablelab.analysis import plots

    train = [(int(r["step"]), _f(r["loss"])) for r in stab]
    ema = [(int(r["step"]), _f(r["loss_ema"])) for r in stab]
    val = [(int(r["step"]), _f(r["val_loss"])) for r in _csv(run_dir / "evals.csv")]
    dense = [(int(r["step"]), _f(r["val_loss"])) for r in dense_rows]
    if train or val or dense:
        plots.plot_loss_curves(
            train,
            run_dir / "loss.png",
            ema=ema,
            val=val,
            dense=dense,
            events=events,
            diverged_at=summary.get("diverged_at_step"),
            title=f"loss: {run_dir.name}",
        )
    if cfg:
        _lr_plot(cfg, run_dir)
    _lm_monitor_plot(run_dir, cfg)
    grad = _csv(run_dir / "grad_norms.csv")
    if grad and not (run_dir / "grad_norm.png").is_file():
        norms = [_f(r["grad_norm"]) for r in grad]
        plots.plot_grad_norms(
            [int(r["step"]) for r in grad],
            norms,
            [_f(r["clip_threshold"]) for r in grad],
            run_dir / "grad_norm.png",
        )
        plots.plot_grad_norm_hist(norms, run_dir / "grad_norm_hist.png")


def _lm_monitor_plot(run_dir: Path, cfg: dict[str, Any]) -> None:
    """lm_monitor.png from lm_monitor.csv, with the alarm levels the run flagged by."""
    from stablelab.analysis import plots

    rows = read_csv(run_dir, "lm_monitor.csv", ("step", "logz_mean", "logz_max"))
    if not rows:
        return
    mon = ((cfg.get("callbacks") or {}).get("lm_monitor") or {}) if cfg else {}
    levels = {k: mon[k] for k in ("logit_alarm", "growth_factor", "logz_alarm") if _num(mon.get(k))}
    prefix = "attn_logit_max/"
    layers = {
        k.removeprefix(prefix): [_f(r[k]) for r in rows] for k in rows[0] if k.startswith(prefix)
    }
    plots.plot_lm_monitor(
        [int(r["step"]) for r in rows],
        [_f(r["logz_mean"]) for r in rows],
        [_f(r["logz_max"]) for r in rows],
        layers,
        run_dir / "lm_monitor.png",
        **levels,
    )


def _num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def verdict(summary: dict[str, Any]) -> str:
    if "evaluated_checkpoint" in summary:
        return "EVALUATION (no training)"
    if summary.get("diverged"):
        return f"DIVERGED at step {summary.get('diverged_at_step')}"
    if summary.get("status") not in (None, "completed"):
        return f"{str(summary['status']).upper()}"
    if "unstable" not in summary:
        return "NOT MEASURED"
    return "UNSTABLE" if summary.get("unstable") else "STABLE"


def _subset_text(summary: dict[str, Any]) -> str | None:
    """'val 1 of 4, test 3 of 10' where an evaluation covered part of its split."""
    parts = summary.get("eval_subset") or {}
    return ", ".join(f"{k} {v['batches']} of {v['of']}" for k, v in parts.items()) or None


def resumed_text(summary: dict[str, Any]) -> str | None:
    """'step 20; settings changed since the checkpoint: optimizer.lr, ...' for a run
    resumed in a way an uninterrupted run cannot reproduce; None otherwise (an exact
    resume's report is the uninterrupted run's)."""
    r = summary.get("resumed_from")
    if not isinstance(r, dict) or r.get("exact") is not False:
        return None
    if r.get("changed"):
        why = "settings changed since the checkpoint: " + ", ".join(r["changed"])
    else:
        why = "the data module does not declare exact_resume"
    return f"step {r.get('step')}; {why} (the numbers after it need not be an uninterrupted run's)"


def _data_changed_text(summary: dict[str, Any]) -> str | None:
    """'95700efb20d1 / 9b5aba894a81' for an evaluation on another file than its
    checkpoint was trained on (the sha256s' starts); None otherwise."""
    changed = (summary.get("evaluated_checkpoint") or {}).get("data_changed")
    if not isinstance(changed, dict):
        return None
    return " / ".join(str(changed.get(k, ""))[:12] for k in ("trained_on", "now"))


def numerics_changed_text(summary: dict[str, Any]) -> str | None:
    """'threads 2 -> 1' for an evaluation computed on other numerics (torch, CPU kernels,
    threads, device) than its checkpoint was trained on; None otherwise."""
    changed = (summary.get("evaluated_checkpoint") or {}).get("numerics_changed")
    if not isinstance(changed, dict) or not changed:
        return None
    return ", ".join(f"{k} {v[0]} -> {v[1]}" for k, v in changed.items())


def render(
    summary: dict[str, Any], cfg: dict[str, Any], findings: list[Finding], run_dir: Path
) -> str:
    opt, sched, clip, model = (
        cfg.get(k) or {} for k in ("optimizer", "schedule", "clipping", "model")
    )

    def name(d: dict[str, Any]) -> str:
        return str(d.get("_target_", "-")).rsplit(".", 1)[-1]

    def several(*keys: str) -> str:
        return " / ".join(_fmt(summary.get(k)) for k in keys)

    rows = [
        ("status", summary.get("status")),
        ("steps (of total)", several("steps", "total_steps")),
        ("stopped before max_train_steps (LR schedule unfinished)", summary.get("stopped_early")),
        ("feasible", summary.get("feasible")),
        (
            "val loss (at step)"
            if summary.get("evaluated_checkpoint")
            else "val loss at the best val accuracy (at step)"
            if summary.get("best_by") == "val/acc"
            else "best val loss (at step)",
            several("val_loss", "best_step"),
        ),
        ("test accuracy", summary.get("test_acc")),
        (
            "tested on",
            "the final weights (no best checkpoint was kept)"
            if summary.get("tested_weights") == "final"
            else None,
        ),
        ("evaluated on part of a split (batches of)", _subset_text(summary)),
        ("resumed from", resumed_text(summary)),
        (
            "evaluated on another data file than it was trained on (sha256 then / now)",
            _data_changed_text(summary),
        ),
        (
            "evaluated on other numerics than it was trained on (the last bits may differ)",
            numerics_changed_text(summary),
        ),
        ("initial training loss", summary.get("initial_loss")),
        ("diverged at step", summary.get("diverged_at_step")),
        ("first instability step", summary.get("first_instability_step")),
        ("loss rises (first at step)", several("loss_rises", "loss_rise_step")),
        ("max loss rise (EMA above its minimum)", summary.get("max_loss_rise")),
        ("loss spikes", summary.get("loss_spikes")),
        (
            "dense validation-loss rises (first at step)",
            several("val_loss_rises", "val_loss_rise_step"),
        ),
        ("gradient-norm spikes", summary.get("grad_norm_spikes")),
        ("grad norm p50 / p90 / max", several("grad_norm_p50", "grad_norm_p90", "grad_norm_max")),
        ("clip fraction", summary.get("clip_fraction")),
        ("dense evaluations", summary.get("dense_eval_points")),
        ("update ratio median / max", several("update_ratio_median", "update_ratio_max")),
        (
            "max attention logit first / max",
            several("attn_logit_max_first", "attn_logit_max"),
        ),
        ("mean log Z first / last", several("logz_mean_first", "logz_mean_last")),
        ("held-out loss (bits per character)", several("heldout_loss", "heldout_bpc")),
        (
            "sharpness first / max / last",
            several("sharpness_first", "sharpness_max", "sharpness_last"),
        ),
        ("sharpness / threshold, at most", summary.get("sharpness_max_ratio")),
        (
            "preconditioned sharpness / threshold, at most",
            summary.get("precond_sharpness_max_ratio"),
        ),
        (
            "gradient noise scale B_simple (global batch)",
            several("noise_scale", "global_batch_size") if "noise_scale" in summary else None,
        ),
    ]
    lines = [
        f"# Stability report: {run_dir.name}",
        "",
        f"**Verdict: {verdict(summary)}**",
        "",
        f"Optimizer {name(opt)} (lr {_fmt(opt.get('lr'))}), schedule {name(sched)} "
        f"(warmup {_fmt(sched.get('warmup_steps'))}), clipping {name(clip)}, model "
        f"{name(model)}{_residual_text(model)}.",
        "",
        "## What happened and what to try",
        "",
        *[f"- {f.text}" for f in findings],
        "",
        "## Flags",
        "",
        "| | |",
        "|---|---|",
        *[
            f"| {k} | {_fmt(v)} |"
            for k, v in rows
            if v is not None and set(str(v).split(" / ")) != {"-"}
        ],
        "",
        "## Figures",
        "",
    ]
    for fname, caption in FIGURES:
        if (run_dir / fname).is_file():
            lines += [f"![{caption}]({fname})", f"*{caption}*", ""]
    files = [
        f"`{name}`{what}"
        for name, what in FILES
        if (run_dir / name).is_file() or any((run_dir / name.rstrip("/")).glob("*.ckpt"))
    ]
    if files:
        lines += [f"Files: {', '.join(files)}.", ""]
    return "\n".join(lines)


def _residual(model: dict[str, Any]) -> dict[str, Any]:
    """The model's ``residual`` mapping (stablelab's models); {} for a model without one
    (or whose own ``residual`` key means something else, such as a flag)."""
    r = model.get("residual")
    return r if isinstance(r, dict) else {}


def _residual_text(model: dict[str, Any]) -> str:
    r = _residual(model)
    if not r:
        return ""
    return f" (residual layout {_fmt(r.get('layout'))}, branch init {_fmt(r.get('branch_init'))})"
