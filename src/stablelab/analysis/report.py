"""The per-run stability report: ``report.md`` plus PNGs, built from the run directory only.

``write_report(run_dir)`` reads ``summary.json``, ``config.yaml`` and the per-step files the
callbacks wrote (``stability.csv``, ``evals.csv``, ``dense_eval.csv``, ``grad_norms.csv``,
``update_ratios.csv``), draws ``loss.png`` and ``lr.png`` (and the gradient-norm plots if
they are missing), and writes ``report.md``: a verdict, the flags, and a short reading that
maps what happened to the playbook's candidate fixes (:func:`reading`). ``train`` calls it
at the end of every run, diverged or not; ``stablelab report RUN_DIR`` rebuilds it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stablelab.analysis.runs import read_config, read_csv, read_summary

REPORT_FILE = "report.md"
EARLY_FRACTION = 0.1  # instability in the first 10% of the steps counts as early
FIGURES = [
    ("loss.png", "training loss (every step, EMA), validation loss, dense evaluations"),
    ("lr.png", "learning-rate schedule"),
    ("grad_norm.png", "unclipped gradient norm per step"),
    ("grad_norm_hist.png", "gradient-norm histogram with p50/p90/p99"),
    ("update_ratio.png", "update-to-weight ratio per parameter tensor"),
]


@dataclass
class Finding:
    # interrupted | failed | evaluation | attention_logits | logz | stable | infeasible |
    # warmup | clipping | lower_lr | residual_layout | residual_init | optimizer |
    # last_resort | no_telemetry
    key: str
    text: str


def _csv(path: Path) -> list[dict[str, str]]:
    return read_csv(path.parent, path.name)


def _f(x: str | None) -> float:
    try:
        return float(x) if x not in (None, "") else math.nan
    except ValueError:
        return math.nan


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


# ---------------------------------------------------------------------- the reading
def _counts(summary: dict[str, Any]) -> str:
    names = [
        ("loss_spikes", "loss spike"),
        ("grad_norm_spikes", "gradient-norm spike"),
        ("loss_rises", "training-loss rise"),
        ("val_loss_rises", "validation-loss rise"),
    ]
    parts = [
        f"{n} {what}{'s' if n != 1 else ''}" for key, what in names if (n := summary.get(key) or 0)
    ]
    return ", ".join(parts) or "a rise of the loss"


def _how_it_ended(summary: dict[str, Any]) -> list[Finding]:
    """An interrupted or failed run: what stopped it, how to go on; the rest of the
    reading covers the steps it trained."""
    status = summary.get("status")
    if "evaluated_checkpoint" in summary:
        ev = summary["evaluated_checkpoint"]
        return [
            Finding(
                "evaluation",
                f"An evaluation of `{ev.get('checkpoint')}` (trained for {ev.get('step')} "
                f"steps): validation loss {_fmt(summary.get('val_loss'))}, accuracy "
                f"{_fmt(summary.get('val_acc'))}; test loss {_fmt(summary.get('test_loss'))}, "
                f"accuracy {_fmt(summary.get('test_acc'))}. The stability reading is in the "
                "report of the run that trained it.",
            )
        ]
    if status == "interrupted":
        info = summary.get("interrupted") or {}
        ckpt = info.get("checkpoint")
        at = (
            f"checkpointed at step {info.get('checkpoint_step')} (`{ckpt}`). Resume it "
            "from there (same files, same numbers as an uninterrupted run) with"
            if ckpt
            else "no checkpoint had been saved, so it starts again; run it in place with"
        )
        return [
            Finding(
                "interrupted",
                f"**Interrupted** by {info.get('signal', 'a signal')} at step "
                f"{info.get('step', summary.get('steps'))} of {summary.get('total_steps')}; "
                f"{at}:\n\n  `{summary.get('resume_command')}`\n\n"
                "  The reading below covers the steps trained so far.",
            )
        ]
    if status == "failed":
        return [
            Finding(
                "failed",
                f"**The run failed** after {summary.get('steps')} steps: "
                f"`{summary.get('error')}`. Everything written before is kept (config, "
                "metrics, checkpoints); the reading below covers the steps trained so far.",
            )
        ]
    return []


def _lm_findings(summary: dict[str, Any]) -> list[Finding]:
    """The language-model monitor's flags (Wortsman et al. 2023's instabilities)."""
    out = []
    if summary.get("attn_logit_growing"):
        out.append(
            Finding(
                "attention_logits",
                f"**Attention-logit growth**: the largest attention logit grew "
                f"{_fmt(summary.get('attn_logit_growth'), 3)}x, from "
                f"{_fmt(summary.get('attn_logit_max_first'))} to "
                f"{_fmt(summary.get('attn_logit_max'))} (`lm_monitor.csv`). Wortsman et al. "
                "2023 find this precedes divergence at high learning rates: try "
                "`model.qk_norm=true` (or a soft-cap, `model.attn_logit_softcap=50`), or a "
                "lower learning rate.",
            )
        )
    if summary.get("logz_drifting"):
        out.append(
            Finding(
                "logz",
                f"**Output-logit drift**: the mean log Z of the output logits reached "
                f"{_fmt(summary.get('logz_abs_max'))} in magnitude (`lm_monitor.csv`): try "
                "z-loss, `loss.z_loss=1e-4` (PaLM, OLMo).",
            )
        )
    return out


def reading(
    summary: dict[str, Any], cfg: dict[str, Any], events: list[tuple[int, str]] = ()
) -> list[Finding]:
    """What happened, mapped to the playbook's fixes (in the playbook's order of preference).

    ``events`` are ``(step, kind)`` pairs from ``stability.csv``; "early" means within the
    first ``EARLY_FRACTION`` of ``total_steps``.
    """
    if "evaluated_checkpoint" in summary:
        return _how_it_ended(summary)
    if "unstable" not in summary:
        return [
            *_how_it_ended(summary),
            Finding(
                "no_telemetry",
                "No stability telemetry in this run (the `stability` callback was off), so "
                "nothing can be said about its stability.",
            ),
        ]
    total = summary.get("total_steps") or summary.get("steps") or 1
    early_end = max(1, int(EARLY_FRACTION * total))
    first = summary.get("first_instability_step")
    diverged = summary.get("diverged_at_step")
    sched = cfg.get("schedule") or {}
    clip = cfg.get("clipping") or {}
    model = cfg.get("model") or {}
    opt = cfg.get("optimizer") or {}
    lr = opt.get("lr")
    warmup = int(sched.get("warmup_steps") or 0)
    clip_kind = str(clip.get("_target_", "")).rsplit(".", 1)[-1]
    out: list[Finding] = _how_it_ended(summary) + _lm_findings(summary)

    if summary.get("diverged"):
        out.append(
            Finding(
                "infeasible",
                f"The run **diverged at step {diverged}** ({summary.get('divergence_reason')}) "
                "and was stopped there; everything written before it is kept. In an LR "
                "sweep this trial is *infeasible* (NaN or abnormally high loss): the "
                "learning rate is past the edge of feasibility.",
            )
        )
    if not summary.get("unstable"):
        g = summary.get("grad_norm_spikes") or 0
        outliers = (
            f" The {g} gradient-norm spike{'s' if g != 1 else ''} (first at step "
            f"{summary.get('first_grad_norm_spike_step')}) left the loss unmoved; if they "
            "ever do not, clipping at the 90th percentile of the norms caps them."
            if g
            else ""
        )
        out.append(
            Finding(
                "stable",
                "No divergence, no rise of the smoothed training loss above its margin and "
                f"no loss spike: nothing to fix.{outliers} Some models are unstable "
                "only in the first steps and recover, which infrequent evaluation hides: the "
                "playbook's check is a ~500-step run at 2x this learning rate with an "
                "evaluation after every step (`callbacks.dense_eval.every_step_until=500`).",
            )
        )
        return out

    mid_kinds = ("loss_spike", "grad_norm_spike", "loss_rise", "val_loss_rise", "diverged")
    mid = sorted(s for s, k in events if k in mid_kinds and s >= early_end)
    if first is not None and first < early_end:
        now = (
            f"the schedule has {warmup} warmup steps: try a longer warmup"
            if warmup
            else "the schedule has no warmup"
        )
        cap = max(1, int(0.1 * (sched.get("max_train_steps") or total)))
        vr = summary.get("val_loss_rise_step")
        if vr is not None and vr < early_end:
            now += (
                f"; the dense evaluation shows the validation loss rising at step {vr}, "
                "which evaluating every few hundred steps would hide"
            )
        out.append(
            Finding(
                "warmup",
                f"**Early instability** (first sign at step {first}, within the first "
                f"{EARLY_FRACTION:.0%} of training): the playbook's best fix is "
                f"learning-rate warmup; {now}. Sweep `schedule.warmup_steps` over orders of "
                "magnitude (the playbook's grid: 10, 1000, 10000, 100000), at most 10% of "
                f"max_train_steps (here {cap}), with `schedule.post_warmup_steps` = 2 x "
                "warmup_steps, and keep the smallest "
                "warmup that trains stably. Gradient clipping also helps early instability "
                "and can fix bad initialisations that warmup cannot.",
            )
        )
    if mid or (first is not None and first >= early_end):
        at = mid[0] if mid else first
        p90 = summary.get("recommended_clip_threshold")
        if clip_kind == "FixedNorm":
            how = (
                f"clipping is on at {_fmt(clip.get('clip_threshold'))}: lower the threshold "
                f"(the 90th percentile of this run's unclipped norms is {_fmt(p90)})"
            )
        else:
            how = (
                "clip gradients, starting from the 90th percentile of the unclipped norms: "
                f"`clipping=fixed clipping.clip_threshold={_fmt(p90)}`"
                if p90
                else "clip gradients at the 90th percentile of the unclipped norms"
            )
        out.append(
            Finding(
                "clipping",
                f"**Sudden instability mid-training** (from step {at}: {_counts(summary)}): "
                f"{how}. "
                "Longer warmup can fix what clipping cannot.",
            )
        )
    if summary.get("too_much_clipping"):
        out.append(
            Finding(
                "lower_lr",
                f"**More than half of the updates were clipped** (clip fraction "
                f"{_fmt(summary.get('clip_fraction'), 2)}, at most "
                f"{_fmt(summary.get('clip_fraction_recent_max'), 2)} over a recent window): "
                "the playbook calls this a strange way of lowering the learning rate; lower "
                "the learning rate instead (or raise the threshold).",
            )
        )
    residual = _residual(model)
    if residual.get("layout") == "post_norm":
        out.append(
            Finding(
                "residual_layout",
                "The model uses the **post-norm** residual layout `Norm(x + f(x))`, which the "
                "playbook says is known to cause issues: try "
                "`model.residual.layout=branch_norm` (`x + Norm(f(x))`, normalisation as the "
                "last operation before the residual) or zero-initialised branches, "
                "`model.residual.branch_init=rezero`.",
            )
        )
    elif residual.get("branch_init") == "default" and residual.get("layout") != "none":
        out.append(
            Finding(
                "residual_init",
                "Initialising the residual branches to zero often stabilises training: try "
                "`model.residual.branch_init=rezero` (or `zero`).",
            )
        )
    rule = str(opt.get("_target_", "")).rsplit(".", 1)[-1]
    if rule in ("SGD", "Momentum", "Nesterov"):
        out.append(
            Finding(
                "optimizer",
                f"The update rule is {rule}: sometimes Adam handles instabilities that "
                "Momentum cannot (`optimizer=adam`, then re-tune its learning rate).",
            )
        )
    if not any(f.key == "lower_lr" for f in out):
        out.append(
            Finding(
                "last_resort",
                "Last resort: a lower learning rate"
                + (f" than {_fmt(lr)}" if lr is not None else "")
                + " (the instability costs you if it forces you onto a learning rate that "
                "is too small, so try the fixes above first).",
            )
        )
    return out


# ---------------------------------------------------------------------- the report
def load_config(run_dir: str | Path) -> dict[str, Any]:
    """The run's config (see :func:`stablelab.analysis.runs.read_config`)."""
    return read_config(run_dir)


def _lr_plot(cfg: dict[str, Any], run_dir: Path) -> Path | None:
    try:
        from hydra.utils import instantiate

        sched = instantiate(cfg["schedule"])
        base = float(cfg["optimizer"]["lr"])
    except Exception:  # a config this version cannot rebuild: no LR plot, still a report
        return None
    from stablelab.analysis.plots import plot_schedule

    lrs = [base * sched(s) for s in range(sched.total_steps)]
    return plot_schedule(
        lrs,
        run_dir / "lr.png",
        sched.warmup_steps,
        sched.post_warmup_steps,
        title=f"{type(sched).__name__} schedule, base LR {base:g}",
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


def findings_for(run_dir: str | Path) -> tuple[dict[str, Any], list[Finding]]:
    """A run directory's summary and the reading of it."""
    run_dir = Path(run_dir)
    summary = read_summary(run_dir)
    tables = _csv(run_dir / "stability.csv"), _csv(run_dir / "dense_eval.csv")
    events = _events(*tables, summary=summary)
    return summary, reading(summary, load_config(run_dir), events)


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
        ("feasible", summary.get("feasible")),
        ("best val loss (at step)", several("val_loss", "best_step")),
        ("test accuracy", summary.get("test_acc")),
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
        *[f"| {k} | {_fmt(v)} |" for k, v in rows if v is not None and v != "- / -"],
        "",
        "## Figures",
        "",
    ]
    for fname, caption in FIGURES:
        if (run_dir / fname).is_file():
            lines += [f"![{caption}]({fname})", f"*{caption}*", ""]
    lines += [
        "Files: `summary.json` (every number), `stability.csv` (per-step loss, EMA, events), "
        "`grad_norms.csv`, `evals.csv`, `dense_eval.csv`, `config.yaml`, `checkpoints/`.",
        "",
    ]
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
