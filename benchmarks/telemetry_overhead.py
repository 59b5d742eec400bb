"""Training throughput with gradient telemetry, the stability guard and clipping on vs off.

    python benchmarks/telemetry_overhead.py [--steps 300] [--repeats 5] [--clipping fixed]

"off": ``clipping=none`` and no telemetry callback (the module then skips even the norm).
"on": the default GradNormMonitor and StabilityMonitor (per-step loss and unclipped norm on
the device, flushed every ``log_every_n_steps``, grad_norms.csv, stability.csv, divergence
and spike checks on the host at each flush) and a clipping strategy. Dense evaluation is
off in both (it is evaluation work, not telemetry).
Each configuration trains ``--steps`` steps with no validation, checkpoints or loggers;
the time from step 20 to the last step is measured (``StepTimer``), median over
``--repeats`` runs, on and off interleaved. Two workloads: the default experiment
(MNIST-1D ResNet, ~100k parameters) and a larger ResNet (~3.8M parameters).
Target: overhead (on / off - 1) <= 3%.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

WORKLOADS = {
    "default": [],  # MNIST-1D ResNet, ~0.1M parameters
    # ResNet, ~3.8M parameters
    "larger": ["model.widths=[128,256,512]", "model.depths=[2,2,2]", "model.stem_width=64"],
}


class StepTimer(L.Callback):
    """Wall time from the start of step ``skip`` to the end of the last training batch.

    Appended last, so its batch-end hook runs after the telemetry flushes (counted); the
    one-off end-of-run report (plots) is not throughput and is not counted.
    """

    def __init__(self, skip: int = 20) -> None:
        self.skip = skip
        self.t0 = None
        self.t1 = None
        self.steps = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.skip and self.t0 is None:
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.t1 = time.perf_counter()
        self.steps = trainer.global_step - self.skip

    @property
    def seconds(self) -> float:
        return self.t1 - self.t0


def run_once(overrides: list[str]) -> float:
    """Seconds per step of one training run."""
    from stablelab.config import compose, validate
    from stablelab.train import build

    with tempfile.TemporaryDirectory() as out:
        cfg = compose(
            [
                f"paths.output_dir={out}",
                "logger=none",
                "test=false",
                "callbacks.progress_bar=null",
                "+trainer.enable_progress_bar=false",
                "callbacks.model_checkpoint=null",
                "trainer.val_check_interval=100000",
                "trainer.num_sanity_val_steps=0",
                "+trainer.limit_val_batches=0",
                *overrides,
            ]
        )
        plain = validate(cfg)
        L.seed_everything(0, verbose=False)
        dm, module, trainer, _, _ = build(plain)
        timer = StepTimer()
        trainer.callbacks.append(timer)
        trainer.fit(module, datamodule=dm)
        return timer.seconds / timer.steps


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--clipping", default="fixed", help="strategy for 'on' (fixed, percentile, zscore, agc)"
    )
    ap.add_argument("--workloads", nargs="*", default=list(WORKLOADS), choices=list(WORKLOADS))
    args = ap.parse_args()
    import logging
    import warnings

    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    import torch

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps, "
        f"median of {args.repeats} runs, on = clipping={args.clipping} + GradNormMonitor "
        "+ StabilityMonitor\n"
    )
    print("| workload | off (ms/step) | on (ms/step) | overhead |")
    print("|---|---|---|---|")
    quiet = ["callbacks.dense_eval=null", "callbacks.update_ratio=null"]
    off_cfg = ["clipping=none", "callbacks.grad_norm=null", "callbacks.stability=null", *quiet]
    on_cfg = [f"clipping={args.clipping}", *quiet]
    if args.clipping == "fixed":
        on_cfg.append("clipping.clip_threshold=1.0")
    for name in args.workloads:
        extra = WORKLOADS[name]
        common = [f"max_train_steps={args.steps}", *extra]
        off, on = [], []
        for _ in range(args.repeats):
            off.append(run_once(common + off_cfg))
            on.append(run_once(common + on_cfg))
        a, b = statistics.median(off), statistics.median(on)
        label = {"default": "default (ResNet ~0.1M)", "larger": "larger (ResNet ~3.8M)"}[name]
        print(
            f"| {label} | {a * 1e3:.2f} | {b * 1e3:.2f} | {100 * (b / a - 1):+.1f}% |", flush=True
        )


if __name__ == "__main__":
    main()
