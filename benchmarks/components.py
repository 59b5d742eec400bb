"""Where stablelab-train's time goes: the default experiment with one component off at a
time, against everything on, timed side by side.

    python benchmarks/components.py [--steps 1500] [--repeats 3] [--threads 1]
        [--only NAME ...]

Each variant is ``stablelab-train`` (the default experiment) with the overrides below; the
variants run in a rotating order, ``--repeats`` times each, every one a fresh process with
the same ``threads``. The table gives the medians of fit + test (the summary's
``wall_seconds``), of the whole process's wall time and of its CPU time (user + system: on a
shared machine less noisy than the clock), and what switching the component off saves per
training step: (all on - variant) / steps, in ms (negative: within noise, or the variant
costs more). The bare-loop comparison is ``benchmarks/vs_bare_loop.py``.
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

VARIANTS = {
    "all on (default)": [],
    "W&B logger off (CSV only)": ["logger=csv"],
    "every logger off": ["logger=none"],
    "progress output off": ["callbacks.progress_bar.refresh_rate=0"],
    "telemetry + stability guard off": ["callbacks.grad_norm=null", "callbacks.stability=null"],
    "dense evaluation off (less work)": ["callbacks.dense_eval.every_step_until=0"],
    "checkpoints off": ["callbacks.model_checkpoint=null"],
    "deterministic off": ["trainer.deterministic=false"],
    "plots off": ["plots=false"],
    "Lightning log every 50 steps (not 10)": ["trainer.log_every_n_steps=50"],
    "compile=true (adds torch.compile)": ["compile=true"],
}


def run(overrides: list[str], steps: int, threads: int, out: Path) -> dict:
    cmd = [
        sys.executable, "-m", "stablelab.train", *overrides, f"max_train_steps={steps}",
        f"threads={threads}", f"hydra.run.dir={out}",
    ]  # fmt: skip
    env = dict(os.environ, WANDB_MODE=os.environ.get("WANDB_MODE", "offline"))
    _, wall, cpu = timed(cmd, env)
    s = json.loads((out / "summary.json").read_text())
    return {"process": wall, "cpu": cpu, "fit_test": s["wall_seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", nargs="+", choices=list(VARIANTS), help="variants to time")
    args = ap.parse_args()
    names = [n for n in VARIANTS if not args.only or n in args.only or n == "all on (default)"]
    times: dict[str, list[dict]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        run([], 2, args.threads, Path(tmp, "warmup"))  # the data cache, imports in the OS cache
        for i in range(args.repeats):
            order = names[i % len(names) :] + names[: i % len(names)]
            for n in order:
                r = run(VARIANTS[n], args.steps, args.threads, Path(tmp, f"{i}-{names.index(n)}"))
                times[n].append(r)
                print(f"  #{i} {n}: fit+test {r['fit_test']:.1f} s, process {r['process']:.1f} s,"
                      f" CPU {r['cpu']:.1f} s", file=sys.stderr, flush=True)  # fmt: skip
    med = {n: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for n, rs in times.items()}
    base = med["all on (default)"]
    print(f"\ndefault experiment, {args.steps} steps, {args.threads} thread(s), "
          f"medians of {args.repeats}\n")  # fmt: skip
    print("| variant | fit + test (s) | whole process (s) | process CPU (s) | saves per step, "
          "wall (ms) | saves per step, CPU (ms) |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for n in names:
        m = med[n]
        saved = (base["fit_test"] - m["fit_test"]) / args.steps * 1000
        saved_cpu = (base["cpu"] - m["cpu"]) / args.steps * 1000
        a, b = ("-", "-") if n == "all on (default)" else (f"{saved:+.2f}", f"{saved_cpu:+.2f}")
        print(f"| {n} | {m['fit_test']:.1f} | {m['process']:.1f} | {m['cpu']:.1f} | {a} | {b} |")


if __name__ == "__main__":
    main()
