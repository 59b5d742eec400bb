"""The decisions the workflows make, as tables of rules (one place, no nested ternaries).

* :func:`probe_verdict`: what the early-instability probe found (``early_instability``,
  ``unstable_later`` or ``stable``), for the ``stablelab probe`` line and the diagnosis.
* :data:`FIX_RULES` / :func:`choose_fix`: which playbook fix to try first after
  ``diagnose``, the first rule whose condition holds, as a structured :class:`Fix` (a key
  tests can assert on, the evidence, the fix and the command that applies it).

(The per-run reading, :func:`stablelab.analysis.report.reading`, produces ``Finding``s
with keys in the same spirit.)
"""

from __future__ import annotations

from collections.abc import Callable
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
