"""The decisions the workflows make, as tables of rules (one place, no nested ternaries).

* :func:`probe_verdict`: what the early-instability probe found (``early_instability``,
  ``unstable_later`` or ``stable``), for the ``stablelab probe`` line and the diagnosis.
* :data:`FIX_RULES` / :func:`choose_fix`: which playbook fix to try first after
  ``diagnose``, the first rule whose condition holds, as a structured :class:`Fix` (a key
  tests can assert on, the evidence, the fix and the command that applies it).

* :data:`READING_RULES` / :func:`reading`: the per-run reading (report.md, ``stablelab
  report``, the diagnosis): every rule that holds for a run's summary, config and events
  adds a :class:`Finding` (key, evidence, fix, step, command), in the playbook's order of
  preference.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

PROBE_VERDICTS = {
    "early_instability": "early instability",
    "unstable_later": "unstable later in the run",
    "stable": "stable",
}


def probe_verdict(probe: dict[str, Any]) -> str:
    """The key of :data:`PROBE_VERDICTS` for a probe result."""
    if probe.get("early_instability"):
        return "early_instability"
    return "unstable_later" if probe.get("unstable") else "stable"


@dataclass(frozen=True)
class Fix:
    key: str  # warmup | clipping | lower_lr | none
    evidence: str  # what the workflows found that calls for it
    fix: str  # the playbook's fix, in words
    command: str | None = None  # the overrides that apply it, when known

    def text(self) -> str:
        """One line for the console and the diagnosis."""
        out = f"{self.fix} ({self.evidence})" if self.evidence else self.fix
        return out + (f": `{self.command}`" if self.command else "")


def _facts(result: dict[str, Any]) -> dict[str, Any]:
    sweep, probe = result["sweep"], result.get("probe") or {}
    warmup = result.get("warmup") or {}
    return {
        "no_feasible": sweep.get("lr_star") is None,
        "early": bool(probe.get("early_instability")),
        "edge": bool(sweep.get("edge_of_feasibility")),
        "unstable": bool(probe.get("unstable")),
        "warmup_ran": bool(warmup),
        "warmup_steps": warmup.get("warmup_steps"),
        "warmup_advice": warmup.get("advice"),
        "clip_threshold": result.get("clip_threshold"),
    }


def _clip_evidence(f: dict[str, Any]) -> str:
    if f["early"]:
        return (
            "early instability that no warmup under the 10% cap fixed"
            if f["warmup_ran"]
            else "early instability"
        )
    return "lr* sits at the edge of feasibility" if f["edge"] else "instability at 2 x lr*"


def _clip(f: dict[str, Any]) -> Fix:
    thr = f["clip_threshold"]
    return Fix(
        "clipping",
        _clip_evidence(f),
        "gradient clipping at the 90th percentile of lr*'s unclipped norms",
        f"clipping=fixed clipping.clip_threshold={thr:.4g}" if thr else None,
    )


# (condition on the facts, the fix): the first whose condition holds is the fix to try first
FIX_RULES: list[tuple[Callable[[dict[str, Any]], bool], Callable[[dict[str, Any]], Fix]]] = [
    (
        lambda f: f["no_feasible"],
        lambda f: Fix("lower_lr", "no trial of the sweep was feasible", "lower the learning rate"),
    ),
    (
        lambda f: (f["early"] or f["edge"]) and bool(f["warmup_steps"]),
        lambda f: Fix(
            "warmup",
            "early instability" if f["early"] else "lr* sits at the edge of feasibility",
            f"learning-rate warmup: {f['warmup_advice']}",
        ),
    ),
    (lambda f: f["early"] or f["edge"] or f["unstable"], _clip),
    (
        lambda f: True,
        lambda f: Fix(
            "none",
            "",
            "none needed: lr* trains stably and instability does not limit the learning rate",
        ),
    ),
]


def choose_fix(result: dict[str, Any]) -> Fix:
    """The first rule of :data:`FIX_RULES` that holds for a ``diagnose`` result."""
    facts = _facts(result)
    return next(make(facts) for holds, make in FIX_RULES if holds(facts))


# ====================================================================== the per-run reading
EARLY_FRACTION = 0.1  # instability in the first 10% of the steps counts as early


@dataclass(frozen=True)
class Finding:
    """One line of a run's reading: what happened (``evidence``), what to try (``fix``),
    the step it refers to and the overrides that apply the fix, when there are any."""

    key: str  # one of READING_RULES' keys
    evidence: str
    fix: str = ""
    step: int | None = None
    command: str | None = None

    @property
    def text(self) -> str:
        """The finding as one Markdown paragraph (report.md, the console)."""
        return f"{self.evidence} {self.fix}".strip()


def fmt(x: Any, digits: int = 4) -> str:
    """A number (or flag) as the reports print it."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def _counts(s: dict[str, Any]) -> str:
    names = [
        ("loss_spikes", "loss spike"),
        ("grad_norm_spikes", "gradient-norm spike"),
        ("loss_rises", "training-loss rise"),
        ("val_loss_rises", "validation-loss rise"),
    ]
    parts = [f"{n} {what}{'s' if n != 1 else ''}" for key, what in names if (n := s.get(key) or 0)]
    return ", ".join(parts) or "a rise of the loss"


def _name(d: dict[str, Any]) -> str:
    return str(d.get("_target_", "")).rsplit(".", 1)[-1]


def run_facts(
    summary: dict[str, Any], cfg: dict[str, Any], events: Iterable[tuple[int, str]] = ()
) -> dict[str, Any]:
    """What the reading's rules look at, computed once from a run's summary, config and
    ``(step, kind)`` events (``stability.csv`` / ``dense_eval.csv``)."""
    s = summary
    total = s.get("total_steps") or s.get("steps") or 1
    early_end = max(1, int(EARLY_FRACTION * total))
    first = s.get("first_instability_step")
    sched, clip, opt = (cfg.get(k) or {} for k in ("schedule", "clipping", "optimizer"))
    residual = (cfg.get("model") or {}).get("residual")
    residual = residual if isinstance(residual, dict) else {}
    mid_kinds = ("loss_spike", "grad_norm_spike", "loss_rise", "val_loss_rise", "diverged")
    mid = sorted(step for step, k in events if k in mid_kinds and step >= early_end)
    mid_at = mid[0] if mid else (first if first is not None and first >= early_end else None)
    vr = s.get("val_loss_rise_step")
    return {
        "s": s,
        "evaluation": "evaluated_checkpoint" in s,
        "status": s.get("status"),
        "telemetry": "unstable" in s,
        "unstable": bool(s.get("unstable")),
        "early_end": early_end,
        "early_at": first if first is not None and first < early_end else None,
        "mid_at": mid_at,
        "early_val_rise": vr if vr is not None and vr < early_end else None,
        "warmup": int(sched.get("warmup_steps") or 0),
        "warmup_cap": max(1, int(0.1 * (sched.get("max_train_steps") or total))),
        "clip_kind": _name(clip),
        "clip_threshold": clip.get("clip_threshold"),
        "p90": s.get("recommended_clip_threshold"),
        "layout": residual.get("layout"),
        "branch_init": residual.get("branch_init"),
        "rule": _name(opt),
        "lr": opt.get("lr"),
        "cfg_skip": cfg.get("skip_spikes") or {},
    }


def _evaluation(f: dict[str, Any]) -> Finding:
    s = f["s"]
    ev = s["evaluated_checkpoint"]
    return Finding(
        "evaluation",
        f"An evaluation of `{ev.get('checkpoint')}` (trained for {ev.get('step')} steps): "
        f"validation loss {fmt(s.get('val_loss'))}, accuracy {fmt(s.get('val_acc'))}; test "
        f"loss {fmt(s.get('test_loss'))}, accuracy {fmt(s.get('test_acc'))}.",
        "The stability reading is in the report of the run that trained it.",
        step=ev.get("step"),
    )


def _interrupted(f: dict[str, Any]) -> Finding:
    s = f["s"]
    info = s.get("interrupted") or {}
    step = info.get("step", s.get("steps"))
    ckpt = info.get("checkpoint")
    at = (
        f"checkpointed at step {info.get('checkpoint_step')} (`{ckpt}`). Resume it from "
        "there (same files, same numbers as an uninterrupted run) with"
        if ckpt
        else "no checkpoint had been saved, so it starts again; run it in place with"
    )
    return Finding(
        "interrupted",
        f"**Interrupted** by {info.get('signal', 'a signal')} at step {step} of "
        f"{s.get('total_steps')}; {at} `{s.get('resume_command')}`.",
        "The reading below covers the steps trained so far.",
        step=step,
        command=s.get("resume_command"),
    )


def _failed(f: dict[str, Any]) -> Finding:
    s = f["s"]
    if not s.get("steps"):
        return Finding(
            "failed",
            f"**The run failed** before its first update: `{s.get('error')}`.",
            "Its config and log are kept; fix the cause and start it again.",
            step=0,
        )
    return Finding(
        "failed",
        f"**The run failed** after {s.get('steps')} steps: `{s.get('error')}`.",
        "Everything written before is kept (config, metrics, checkpoints); the reading below "
        "covers the steps trained so far.",
        step=s.get("steps"),
    )


def _attention_logits(f: dict[str, Any]) -> Finding:
    s = f["s"]
    return Finding(
        "attention_logits",
        f"**Attention-logit growth**: the largest attention logit grew "
        f"{fmt(s.get('attn_logit_growth'), 3)}x, from {fmt(s.get('attn_logit_max_first'))} to "
        f"{fmt(s.get('attn_logit_max'))} (`lm_monitor.csv`).",
        "Wortsman et al. 2023 find this precedes divergence at high learning rates: try "
        "`model.qk_norm=true` (or a soft-cap, `model.attn_logit_softcap=50`), or a lower "
        "learning rate.",
        command="model.qk_norm=true",
    )


def _logz(f: dict[str, Any]) -> Finding:
    return Finding(
        "logz",
        "**Output-logit drift**: the mean log Z of the output logits reached "
        f"{fmt(f['s'].get('logz_abs_max'))} in magnitude (`lm_monitor.csv`):",
        "try z-loss, `loss.z_loss=1e-4` (PaLM, OLMo).",
        command="loss.z_loss=1e-4",
    )


def _infeasible(f: dict[str, Any]) -> Finding:
    s = f["s"]
    return Finding(
        "infeasible",
        f"The run **diverged at step {s.get('diverged_at_step')}** "
        f"({s.get('divergence_reason')}) and was stopped there; everything written before it "
        "is kept.",
        "In an LR sweep this trial is *infeasible* (NaN or abnormally high loss): the "
        "learning rate is past the edge of feasibility.",
        step=s.get("diverged_at_step"),
    )


def _stable(f: dict[str, Any]) -> Finding:
    s = f["s"]
    g = s.get("grad_norm_spikes") or 0
    clipped = f["clip_kind"] not in ("", "NoClip")
    remedy = (
        "the clipping of this run caps them"
        if clipped
        else "clipping at the 90th percentile of the norms caps them"
    )
    outliers = (
        f" The {g} gradient-norm spike{'s' if g != 1 else ''} (first at step "
        f"{s.get('first_grad_norm_spike_step')}) left the loss unmoved; if they ever do not, "
        f"{remedy}."
        if g
        else ""
    )
    # over-clipped (the finding before this one): stable, but not "nothing to fix"
    verdict = (
        "stable, but see the clipping above" if s.get("too_much_clipping") else "nothing to fix"
    )
    return Finding(
        "stable",
        "No divergence, no rise of the smoothed training loss above its margin and no loss "
        f"spike: {verdict}.{outliers}",
        "Some models are unstable only in the first steps and recover, which infrequent "
        "evaluation hides: the playbook's check is a ~500-step run at 2x this learning rate "
        "with an evaluation after every step (`callbacks.dense_eval.every_step_until=500`).",
        step=s.get("first_grad_norm_spike_step") if g else None,
        command="callbacks.dense_eval.every_step_until=500",
    )


def _warmup(f: dict[str, Any]) -> Finding:
    now = (
        f"the schedule has {f['warmup']} warmup steps: try a longer warmup"
        if f["warmup"]
        else "the schedule has no warmup"
    )
    if f["early_val_rise"] is not None:
        now += (
            f"; the dense evaluation shows the validation loss rising at step "
            f"{f['early_val_rise']}, which evaluating every few hundred steps would hide"
        )
    return Finding(
        "warmup",
        f"**Early instability** (first sign at step {f['early_at']}, within the first "
        f"{EARLY_FRACTION:.0%} of training):",
        f"the playbook's best fix is learning-rate warmup; {now}. Sweep "
        "`schedule.warmup_steps` over orders of magnitude (the playbook's grid: 10, 1000, "
        "10000, 100000), at most 10% of max_train_steps (here "
        f"{f['warmup_cap']}), with `schedule.post_warmup_steps` = 2 x warmup_steps, and keep "
        "the smallest warmup that trains stably. Gradient clipping also helps early "
        "instability and can fix bad initialisations that warmup cannot.",
        step=f["early_at"],
        command=(
            f"stablelab sweep warmup --unstable-lr {fmt(f['lr'])} --factor 1"
            if f["lr"] is not None
            else None
        ),
    )


def _clipping(f: dict[str, Any]) -> Finding:
    p90 = f["p90"]
    command = f"clipping=fixed clipping.clip_threshold={fmt(p90)}" if p90 else None
    thr = f["clip_threshold"]
    if f["clip_kind"] == "FixedNorm" and _positive(thr, p90) and p90 < thr:
        command = f"clipping.clip_threshold={fmt(p90)}"
        how = (
            f"clipping is on at {fmt(thr)}, above the 90th percentile of this run's unclipped "
            f"norms: lower the threshold to it, `{command}`"
        )
    elif f["clip_kind"] == "FixedNorm" and not _positive(thr, p90):  # no norms measured
        command, how = None, f"clipping is on at {fmt(thr)}: lower the threshold"
    elif f["clip_kind"] == "FixedNorm":
        command = None  # already at or below the p90: lower it only while it clips < 50%
        how = (
            f"clipping is on at {fmt(thr)}, already at or below the 90th percentile of this "
            f"run's unclipped norms ({fmt(p90)}): lower it further only while at most half of "
            "the updates are clipped (beyond that, lower the learning rate instead)"
        )
    elif p90:
        how = (
            f"clip gradients, starting from the 90th percentile of the unclipped norms: `{command}`"
        )
    else:
        how = "clip gradients at the 90th percentile of the unclipped norms"
    return Finding(
        "clipping",
        f"**Sudden instability mid-training** (from step {f['mid_at']}: {_counts(f['s'])}):",
        f"{how}. Longer warmup can fix what clipping cannot.",
        step=f["mid_at"],
        command=command,
    )


def _lower_lr(f: dict[str, Any]) -> Finding:
    s = f["s"]
    recent, window = s.get("clip_fraction_recent_max"), s.get("clip_fraction_window")
    span = f"{window} consecutive steps" if window else "a recent window"
    peak = f", up to {fmt(recent, 2)} over {span}" if recent is not None else ""
    thr, p50, p90, lr = f["clip_threshold"], s.get("grad_norm_p50"), f["p90"], f["lr"]
    fixed = f["clip_kind"] == "FixedNorm" and _positive(thr, p50)
    scale = (
        f" At threshold {fmt(thr)} and a median unclipped norm of {fmt(p50)} the clipping "
        f"scaled the typical update by {fmt(thr / p50, 2)}"
        + (
            f", much as lowering the base learning rate to {fmt(lr * thr / p50)} would"
            if _positive(lr)
            else ""
        )
        + "."
        if fixed and thr < p50
        else ""
    )
    raise_to = fixed and _positive(p90) and p90 > thr
    return Finding(
        "lower_lr",
        f"**More than half of the updates were clipped** (clip fraction "
        f"{fmt(s.get('clip_fraction'), 2)} over the run{peak}):",
        "the playbook calls this a strange way of lowering the learning rate; lower the "
        "learning rate instead (or raise the threshold"
        + (
            f" to just above the typical norm, e.g. its 90th percentile: "
            f"`clipping.clip_threshold={fmt(p90)}`"
            if raise_to
            else ""
        )
        + f").{scale}",
        command=f"clipping.clip_threshold={fmt(p90)}" if raise_to else None,
    )


def _positive(*xs: Any) -> bool:
    return all(isinstance(x, int | float) and math.isfinite(x) and x > 0 for x in xs)


def _residual_layout(f: dict[str, Any]) -> Finding:
    return Finding(
        "residual_layout",
        "The model uses the **post-norm** residual layout `Norm(x + f(x))`, which the "
        "playbook says is known to cause issues:",
        "try `model.residual.layout=branch_norm` (`x + Norm(f(x))`, normalisation as the last "
        "operation before the residual) or zero-initialised branches, "
        "`model.residual.branch_init=rezero`.",
        command="model.residual.layout=branch_norm",
    )


def _residual_init(f: dict[str, Any]) -> Finding:
    return Finding(
        "residual_init",
        "Initialising the residual branches to zero often stabilises training:",
        "try `model.residual.branch_init=rezero` (or `zero`).",
        command="model.residual.branch_init=rezero",
    )


def _optimizer(f: dict[str, Any]) -> Finding:
    return Finding(
        "optimizer",
        f"The update rule is {f['rule']}:",
        "sometimes Adam handles instabilities that Momentum cannot (`optimizer=adam`, then "
        "re-tune its learning rate).",
        command="optimizer=adam",
    )


def _last_resort(f: dict[str, Any]) -> Finding:
    than = f" than {fmt(f['lr'])}" if f["lr"] is not None else ""
    return Finding(
        "last_resort",
        "Last resort:",
        f"a lower learning rate{than} (the instability costs you if it forces you onto a "
        "learning rate that is too small, so try the fixes above first).",
    )


def _curvature(f: dict[str, Any]) -> Finding:
    s = f["s"]
    pre = (s.get("precond_sharpness_above_threshold") or 0) > 0
    key = "precond_sharpness" if pre else "sharpness"
    step = s.get(f"{key}_first_above_step")
    what = "preconditioned sharpness (of P^-1 H)" if pre else "sharpness"
    return Finding(
        "curvature",
        f"**At the edge of stability**: the {what} rose above the update rule's stability "
        f"threshold at step {step} ({s.get(f'{key}_above_threshold')} of "
        f"{s.get('sharpness_measurements')} measurements; at most "
        f"{fmt(s.get(f'{key}_max_ratio'), 3)}x the threshold; `sharpness.csv`, "
        "`sharpness.png`).",
        "Above it a quadratic model of the loss diverges; full-batch training hovers there "
        "and still makes progress (Cohen et al. 2021, 2022), but a run that turns unstable "
        "with it early needs the curvature lowered or the threshold raised: warmup keeps the "
        "early sharpness down (Gilmer et al. 2021), a lower learning rate raises the "
        "threshold.",
        step=step,
    )


def _noise_scale(f: dict[str, Any]) -> Finding:
    s = f["s"]
    b, noise = s.get("global_batch_size"), s.get("noise_scale")
    if isinstance(b, int) and b > 0 and noise:
        ratio = noise / b
        where = (
            "well below the noise scale: a larger batch would take fewer steps at almost "
            "the same number of examples"
            if ratio > 4
            else "well above the noise scale: a smaller batch would need fewer examples "
            "for about the same number of steps"
            if ratio < 0.25
            else "near the noise scale, the compromise McCandlish et al. suggest"
        )
        text = f"the batch ({b} examples) is {where}."
    else:
        text = "compare it with the batch size: McCandlish et al. 2018 find it predicts the "
        text += "largest batch that still pays."
    return Finding(
        "noise_scale",
        f"The gradient noise scale B_simple was {fmt(noise, 3)} examples at the last "
        "measurement (`noise_scale.csv`, `noise_scale.png`):",
        text,
        command=None,
    )


def _skipped(f: dict[str, Any]) -> Finding:
    s = f["s"]
    steps = s.get("skipped_step_list") or []
    n = s.get("skipped_steps") or 0
    shown = ", ".join(str(x) for x in steps[:10]) + (", ..." if n > 10 else "")
    skip = f["cfg_skip"]
    at = "at steps" if n != 1 else "at step"
    return Finding(
        "skip_step",
        f"**{n} update{'s were' if n != 1 else ' was'} skipped** (`skip_spikes`: the loss or "
        f"the unclipped gradient norm above {fmt(skip.get('zscore', 6.0))} sigma of the "
        f"previous {skip.get('window', 128)} steps), {at} {shown}.",
        "The weights and optimizer state were left as before each of them. Occasional "
        "skips are the remedy working; many mean the instability is not rare: treat its "
        "cause (warmup, clipping, a lower learning rate).",
        step=steps[0] if steps else None,
    )


def _amp_overflow(f: dict[str, Any]) -> Finding:
    s = f["s"]
    steps = s.get("amp_overflow_step_list") or []
    n = s.get("amp_overflow_steps") or 0
    shown = ", ".join(str(x) for x in steps[:10]) + (", ..." if n > 10 else "")
    total = s.get("steps") or s.get("total_steps") or 0
    share = f"; {100 * n / total:.2g}% of {total} steps" if total else ""
    return Finding(
        "amp_overflow",
        f"**{n} step{'s' if n != 1 else ''} overflowed float16** (`precision=16-mixed`"
        f"{share}): the GradScaler skipped {'their updates' if n != 1 else 'its update'} "
        f"and halved its loss scale, {'at steps' if n != 1 else 'at step'} {shown}.",
        "A few per run are the scaler at work (it doubles its scale after 2,000 clean "
        "steps and backs off at the next overflow); many mean gradients at the edge of "
        "float16's range: use bfloat16 where the GPU has it "
        "(`trainer.precision=bf16-mixed`).",
        step=steps[0] if steps else None,
        command="trainer.precision=bf16-mixed",
    )


def _rolled_back(f: dict[str, Any]) -> Finding:
    log = f["s"].get("rollbacks") or []
    parts = [
        f"diverged at step {r.get('diverged_at_step')} -> back to step {r.get('to_step')}, "
        f"{r.get('skip_batches')} batches skipped, LR x {fmt(r.get('lr_factor'))}"
        for r in log
    ]
    n = len(log)
    return Finding(
        "rollback",
        f"**{n} rollback{'s' if n != 1 else ''}** (`callbacks.stability.rollbacks`, PaLM's "
        f"practice): {'; '.join(parts)}.",
        "The rows of the rolled-back steps were replaced by the continuation's; the run's "
        "numbers are those of the continuation. A divergence that needs rollbacks is a "
        "stability problem of its own: the findings below still apply.",
        step=log[0].get("diverged_at_step") if log else None,
    )


def _no_telemetry(f: dict[str, Any]) -> Finding:
    if f["status"] in ("failed", "interrupted") and not f["s"].get("steps"):
        return Finding(  # the callback may well be on: nothing was trained for it to see
            "no_telemetry", "No update was trained,", "so there is no stability reading."
        )
    return Finding(
        "no_telemetry",
        "No stability telemetry in this run (the `stability` callback was off),",
        "so nothing can be said about its stability.",
        command="callbacks=default",
    )


@dataclass(frozen=True)
class Rule:
    key: str
    holds: Callable[[dict[str, Any]], bool]
    make: Callable[[dict[str, Any]], Finding]
    final: bool = False  # when it holds, no later rule is read


# The per-run reading, in the playbook's order of preference: every rule that holds adds
# its finding, until a final one holds. ``stablelab report`` / report.md render them; the
# diagnosis lists them; tests assert on keys, steps and commands.
READING_RULES: list[Rule] = [
    Rule("evaluation", lambda f: f["evaluation"], _evaluation, final=True),
    Rule("interrupted", lambda f: f["status"] == "interrupted", _interrupted),
    Rule("failed", lambda f: f["status"] == "failed", _failed),
    Rule("no_telemetry", lambda f: not f["telemetry"], _no_telemetry, final=True),
    Rule("attention_logits", lambda f: bool(f["s"].get("attn_logit_growing")), _attention_logits),
    Rule("logz", lambda f: bool(f["s"].get("logz_drifting")), _logz),
    Rule("rollback", lambda f: bool(f["s"].get("rollbacks")), _rolled_back),
    Rule("infeasible", lambda f: bool(f["s"].get("diverged")), _infeasible),
    Rule(
        "curvature",
        lambda f: (
            (f["s"].get("sharpness_above_threshold") or 0) > 0
            or (f["s"].get("precond_sharpness_above_threshold") or 0) > 0
        ),
        _curvature,
    ),
    Rule("noise_scale", lambda f: f["s"].get("noise_scale") is not None, _noise_scale),
    Rule("skip_step", lambda f: (f["s"].get("skipped_steps") or 0) > 0, _skipped),
    Rule("amp_overflow", lambda f: (f["s"].get("amp_overflow_steps") or 0) > 0, _amp_overflow),
    # the playbook's > 50% clipped: stable or not, a strange way of lowering the LR
    Rule("lower_lr", lambda f: bool(f["s"].get("too_much_clipping")), _lower_lr),
    Rule("stable", lambda f: not f["unstable"], _stable, final=True),
    # from here on the run is unstable
    Rule("warmup", lambda f: f["early_at"] is not None, _warmup),
    Rule("clipping", lambda f: f["mid_at"] is not None, _clipping),
    Rule("residual_layout", lambda f: f["layout"] == "post_norm", _residual_layout),
    Rule(
        "residual_init",
        lambda f: f["layout"] not in ("post_norm", "none") and f["branch_init"] == "default",
        _residual_init,
    ),
    Rule("optimizer", lambda f: f["rule"] in ("SGD", "Momentum", "Nesterov"), _optimizer),
    Rule("last_resort", lambda f: not f["s"].get("too_much_clipping"), _last_resort),
]


def reading(
    summary: dict[str, Any], cfg: dict[str, Any], events: Iterable[tuple[int, str]] = ()
) -> list[Finding]:
    """A run's findings: every rule of :data:`READING_RULES` that holds, in order, up to
    the first final one. ``events`` are ``(step, kind)`` pairs; "early" means within the
    first ``EARLY_FRACTION`` of ``total_steps``."""
    facts = run_facts(summary, cfg, events)
    out = []
    for rule in READING_RULES:
        if rule.holds(facts):
            out.append(rule.make(facts))
            if rule.final:
                break
    return out
