"""``diagnosis.md``: the report of ``stablelab diagnose``, rendered from the result the
workflow returns (:func:`stablelab.workflows.diagnose`); paths are written relative to the
diagnosis directory so the Markdown and its figures move together."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


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
            *_probe_findings(pr.get("findings", [])),
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


def _probe_findings(findings: list) -> list[str]:
    """The probe report's findings; their numbers are the probe run's (2 x lr*), so a clip
    threshold among them is not the one section 4 recommends from lr*'s norms."""
    if not findings:
        return []
    head = (
        ["The probe's report (its numbers are the probe run's at 2 x lr*: the clip threshold "
         "to start from is section 4's, from lr*'s gradient norms):", ""]
        if any("clip_threshold=" in t for _, t in findings)
        else []
    )  # fmt: skip
    return [*head, *[f"- [{k}] {t}" for k, t in findings], ""]
