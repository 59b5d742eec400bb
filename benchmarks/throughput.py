"""Training throughput of the trainer configs (steps/s and examples/s).

    python benchmarks/throughput.py [--trainers cpu ddp_cpu fsdp_cpu] [--steps 40 240]
        [--workloads default larger] [--repeats 3]

Each (trainer, workload) trains twice through ``stablelab-train``, for the two ``--steps``
counts, with no validation, test, dense evaluation or loggers; throughput is the step
difference over the difference of the runs' ``wall_seconds`` (fit time), so process start,
process-group set-up, model sharding and the end-of-run checkpoint and plots cancel. Median
over ``--repeats`` pairs. On GPUs use ``--trainers gpu ddp fsdp`` (bf16-mixed, all visible
GPUs for ddp / fsdp). Prints a Markdown table for benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

WORKLOADS = {
    "default": [],  # MNIST-1D ResNet, ~0.1M parameters, batch 128 per process
    "larger": ["model.widths=[128,256,512]", "model.depths=[2,2,2]", "model.stem_width=64"],
}
QUIET = [
    "logger=none", "test=false", "callbacks.dense_eval.every_step_until=0",
    "callbacks.progress_bar.refresh_rate=0", "trainer.val_check_interval=1000000",
    "trainer.num_sanity_val_steps=0",
]  # fmt: skip


def fit_seconds(trainer: str, workload: list[str], steps: int, out: Path) -> dict:
    cmd = [
        sys.executable, "-m", "stablelab.train", f"trainer={trainer}", *workload, *QUIET,
        f"max_train_steps={steps}", f"hydra.run.dir={out}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return json.loads((out / "summary.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trainers", nargs="+", default=["cpu", "ddp_cpu", "fsdp_cpu"])
    ap.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    ap.add_argument("--steps", nargs=2, type=int, default=[40, 240], metavar=("SHORT", "LONG"))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    short, long = args.steps
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for wname in args.workloads:
            fit_seconds("cpu", WORKLOADS[wname], 2, Path(tmp, "warmup"))  # data cache, imports
            for trainer in args.trainers:
                rates, s = [], {}
                for i in range(args.repeats):
                    a = fit_seconds(trainer, WORKLOADS[wname], short, Path(tmp, f"{i}a"))
                    s = fit_seconds(trainer, WORKLOADS[wname], long, Path(tmp, f"{i}b"))
                    rates.append((long - short) / (s["wall_seconds"] - a["wall_seconds"]))
                rate = statistics.median(rates)
                row = (wname, trainer, s["world_size"], s["global_batch_size"], rate)
                rows.append(row)
                print(f"{wname} {trainer}: {rate:.1f} steps/s (runs: "
                      f"{', '.join(f'{r:.1f}' for r in rates)})", flush=True)  # fmt: skip
    print("\n| workload | trainer | processes | global batch | steps/s | examples/s |")
    print("|---|---|---|---|---|---|")
    for wname, trainer, world, batch, rate in rows:
        print(f"| {wname} | {trainer} | {world} | {batch} | {rate:.1f} | {rate * batch:,.0f} |")


if __name__ == "__main__":
    main()
