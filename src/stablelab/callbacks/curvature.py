"""``callbacks.sharpness``: the top Hessian eigenvalue of the training loss on a fixed probe
batch every N updates, against the rule's stability threshold (Cohen et al. 2021, 2022).

What is measured (:mod:`stablelab.curvature`): the sharpness, and for the adaptive rules
(Adam, NAdam, RMSProp) the preconditioned sharpness, the top eigenvalue of P^-1 H with the
rule's current preconditioner, each by ``iterations`` Lanczos steps on Hessian-vector
products. The probe batch is the first ``probe_examples`` training examples of a fresh
training loader, taken once and kept on the device; the objective is the training one
(cross-entropy plus z-loss when set) in the model's training mode, under a forked random
generator (a dropout mask fixed for the measurement, the training run's generator
untouched) with normalisation statistics restored afterwards, so a run with the
instrument trains exactly as one without it.

Off by default (``every_n_steps: null``). A measurement costs one forward and backward
with a retained graph and ``iterations`` (x2 with ``preconditioned``) double backwards, and
one host read; it runs on rank 0 only (the other ranks go on; nothing here is a
collective). Rows go to ``sharpness.csv``, the loggers (``curvature/...``), ``sharpness.png``
(the measurements against the threshold over the run) and ``summary.json``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from stablelab.callbacks.base import CsvRows, TelemetryCallback
from stablelab.constraints import PosInt

FIELDS = ["step", "lr", "sharpness", "threshold", "precond_sharpness", "precond_threshold"]


class SharpnessMonitor(TelemetryCallback):
    sets_interval = False  # measurements at its own interval; nothing on the device buffer

    def __init__(
        self,
        every_n_steps: PosInt | None = None,
        iterations: PosInt = 20,
        probe_examples: PosInt = 512,
        preconditioned: bool = True,
        seed: int = 0,
        plots: bool = True,
        filename: str = "sharpness.csv",
    ) -> None:
        self.every_n_steps = every_n_steps
        self.iterations = iterations
        self.probe_examples = probe_examples
        self.preconditioned = preconditioned
        self.seed = seed
        self.plots = plots
        self.csv: CsvRows = CsvRows(filename, FIELDS)
        self._probe: tuple[torch.Tensor, torch.Tensor] | None = None
        self._last_step = -1

    # ------------------------------------------------------------------ measuring
    def _probe_batch(self, trainer, pl_module) -> tuple[torch.Tensor, torch.Tensor]:
        if self._probe is None:
            xs, ys, n = [], [], 0
            for x, y in trainer.datamodule.train_dataloader():
                xs.append(x)
                ys.append(y)
                n += len(x)
                if n >= self.probe_examples:
                    break
            x, y = torch.cat(xs)[: self.probe_examples], torch.cat(ys)[: self.probe_examples]
            self._probe = (x.to(pl_module.device), y.to(pl_module.device))
        return self._probe

    def measure(self, trainer, pl_module) -> dict[str, Any]:
        """One row: the step, the LR of the next update, the sharpness and the
        preconditioned sharpness with their thresholds (None where none applies)."""
        from stablelab import curvature

        x, y = self._probe_batch(trainer, pl_module)
        optimizer = trainer.optimizers[0]
        lr = float(optimizer.param_groups[0]["lr"])
        params = [p for p in pl_module.parameters() if p.requires_grad]
        saved = {n: b.detach().clone() for n, b in pl_module.named_buffers()}
        devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        was_training = pl_module.training
        pl_module.train()
        try:
            with torch.random.fork_rng(devices=devices), torch.enable_grad():
                torch.manual_seed(self.seed)
                _, objective = pl_module.loss_terms(pl_module(x), y)
                hvp = curvature.hessian_operator(objective, params)
                sharp = curvature.lanczos_top(hvp, params, self.iterations, self.seed)
                d = curvature.inverse_sqrt_preconditioner(optimizer)
                pre = None
                if self.preconditioned and d is not None:
                    op = curvature.preconditioned_operator(hvp, d)
                    pre = curvature.lanczos_top(op, params, self.iterations, self.seed)
        finally:
            with torch.no_grad():
                for n, b in pl_module.named_buffers():
                    b.copy_(saved[n])
            pl_module.train(was_training)
        limits = curvature.thresholds(optimizer, lr)
        return {
            "step": int(trainer.global_step),
            "lr": lr,
            "sharpness": sharp,
            "threshold": limits["sharpness"],
            "precond_sharpness": pre,
            "precond_threshold": limits["preconditioned"] if pre is not None else None,
        }

    def _record(self, trainer, pl_module) -> None:
        self._last_step = trainer.global_step
        if not trainer.is_global_zero:
            return
        row = self.measure(trainer, pl_module)
        self.csv.add(self.dir, [row], write=True)
        metrics = {f"curvature/{k}": v for k, v in row.items() if k != "step" and v is not None}
        for lg in trainer.loggers:
            lg.log_metrics(metrics, step=row["step"])

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        if self.every_n_steps and trainer.global_step == 0:  # the initialisation too
            self._record(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step, every = trainer.global_step, self.every_n_steps
        if every and step != self._last_step and step % every == 0:
            self._record(trainer, pl_module)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def finish(self, trainer, pl_module) -> None:
        if self.plots and self.csv.rows and trainer.is_global_zero:
            from stablelab.analysis.plots import plot_sharpness

            plot_sharpness(self.csv.rows, Path(trainer.default_root_dir) / "sharpness.png")

    # ------------------------------------------------------------------ state, summary
    def state_dict(self) -> dict[str, Any]:
        return {"csv": self.csv.state_dict(), "last_step": self._last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.csv.load_state_dict(state_dict["csv"])
        self._last_step = state_dict["last_step"]

    def summary(self) -> dict[str, Any]:
        rows = self.csv.rows
        if not rows:
            return {}
        out: dict[str, Any] = {"sharpness_measurements": len(rows)}
        for key, limit, prefix in (
            ("sharpness", "threshold", "sharpness"),
            ("precond_sharpness", "precond_threshold", "precond_sharpness"),
        ):
            vals = [(r["step"], r[key], r[limit]) for r in rows if _num(r[key])]
            if not vals:
                continue
            out[f"{prefix}_first"] = vals[0][1]
            out[f"{prefix}_max"] = max(v for _, v, _ in vals)
            out[f"{prefix}_last"] = vals[-1][1]
            judged = [(s, v / t) for s, v, t in vals if _num(t) and t > 0]
            if judged:
                out[f"{prefix}_threshold_last"] = vals[-1][2]
                out[f"{prefix}_max_ratio"] = max(r for _, r in judged)
                above = [s for s, r in judged if r > 1.0]
                out[f"{prefix}_above_threshold"] = len(above)
                out[f"{prefix}_first_above_step"] = above[0] if above else None
        return out


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
