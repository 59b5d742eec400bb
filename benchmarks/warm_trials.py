"""Warm trials against fresh interpreters: a workflow timed both ways, side by side.

    python benchmarks/warm_trials.py [--repeats 2] [-- WORKFLOW ARGS ...]

The workflow (default: ``make diagnose``'s ``stablelab diagnose max_train_steps=500
logger=csv --jobs 2``) runs ``--repeats`` times each way, alternating: warm (the trials
forked from the server that did the imports, ``stablelab/warm.py``) and fresh
(``STABLELAB_WARM_TRIALS=0``: each trial a new interpreter). The table: medians of the
wall time and of the CPU time (user + system of the workflow and everything it started),
their ratios, and whether every trial's validation loss was the same both ways (it must
be: a warm trial is the same run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from vs_bare_loop import timed  # benchmarks/ is on sys.path for its scripts

DIAGNOSE = ["diagnose", "max_train_steps=500", "logger=csv", "--jobs", "2"]


def trial_losses(out: Path) -> dict[str, float]:
    """Every trial's validation loss, by its path under the workflow's directory."""
    return {
        str(p.parent.relative_to(out)): json.loads(p.read_text()).get("val_loss")
        for p in sorted(out.rglob("summary.json"))
        if "wandb" not in p.parts
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("workflow", nargs="*", help="the stablelab command and its arguments")
    args = ap.parse_args()
    workflow = args.workflow or DIAGNOSE
    times: dict[str, list[tuple[float, float]]] = {"warm": [], "fresh": []}
    losses: dict[str, list[dict[str, float]]] = {"warm": [], "fresh": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for mode in ("warm", "fresh"):
                out = Path(tmp) / f"{mode}{i}"
                env = dict(os.environ, STABLELAB_WARM_TRIALS="1" if mode == "warm" else "0")
                cmd = [sys.executable, "-m", "stablelab.cli", *workflow, "--out", str(out)]
                _, wall, cpu = timed(cmd, env)
                times[mode].append((wall, cpu))
                losses[mode].append(trial_losses(out))
                print(f"{mode} {i + 1}/{args.repeats}: {wall:.1f} s, CPU {cpu:.1f} s", flush=True)
    med = {m: [statistics.median(t[k] for t in times[m]) for k in (0, 1)] for m in times}
    same = all(w == f for w in losses["warm"] for f in losses["fresh"])
    print(f"\n{' '.join(workflow)}: {len(losses['warm'][0])} trials, {args.repeats} repeats")
    print("| | fresh | warm | warm / fresh |\n|---|---|---|---|")
    for k, name in enumerate(("wall (s)", "CPU (s)")):
        print(f"| {name} | {med['fresh'][k]:.1f} | {med['warm'][k]:.1f} | "
              f"{med['warm'][k] / med['fresh'][k]:.2f}x |")  # fmt: skip
    print(f"every trial's val loss the same both ways: {same}")


if __name__ == "__main__":
    main()
