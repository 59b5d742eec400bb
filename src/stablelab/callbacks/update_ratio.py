"""Optional telemetry: the update-to-weight ratio ||delta theta|| / ||theta|| per parameter.

On every ``every_n_steps``-th update the parameters are copied just before the optimizer
step (``on_before_optimizer_step``) and, after it, each parameter tensor's ratio
``||theta_after - theta_before|| / ||theta_before||`` is computed with the multi-tensor
``torch._foreach_*`` kernels and kept on the device (inf where ``theta_before`` is all
zeros, e.g. a ReZero gate at initialisation). The ratios are read back with the other
telemetry and go to ``<run dir>/update_ratios.csv`` (one column per parameter), to W&B
(``update_ratio/<name>``; the other loggers get the median and max), to
``update_ratio.png`` and to ``summary.json`` (``update_ratio_median``, ``update_ratio_max``,
``update_ratio_max_param``). Off by default (``every_n_steps: null``): each measured step
costs a copy of the parameters.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stablelab.callbacks.base import CsvRows, Rows, TelemetryCallback
from stablelab.constraints import PosInt
from stablelab.optim.clipping import is_dtensor, local_shard


class UpdateRatioMonitor(TelemetryCallback):
    sets_interval = False  # read back whenever the other telemetry is

    def __init__(
        self,
        every_n_steps: PosInt | None = None,
        plots: bool = True,
        filename: str = "update_ratios.csv",
    ) -> None:
        self.every_n_steps = every_n_steps
        self.plots = plots
        self.csv: CsvRows = CsvRows(filename)
        self.names: list[str] = []
        self._params: list[torch.Tensor] = []
        self._before: list[torch.Tensor] | tuple[torch.Tensor, ...] | None = None
        self._step = -1
        self._pending: list[tuple[int, torch.Tensor]] = []

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit":
            named = [(n, p) for n, p in pl_module.named_parameters() if p.requires_grad]
            self.names = [n.removeprefix("model.") for n, _ in named]
            self._params = []  # taken at the first measurement: FSDP2 replaces the
            self.csv.fields = ["step", *self.names]  # parameters after setup

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0 and self.names:
            if not self._params:
                self._params = [p for p in pl_module.parameters() if p.requires_grad]
            self._before = torch._foreach_mul([local_shard(p.detach()) for p in self._params], 1.0)
            self._step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._before is not None and trainer.global_step > self._step:  # the step ran
            after = [local_shard(p.detach()) for p in self._params]
            delta = torch._foreach_sub(after, self._before)
            # squared norms of this rank's part of each tensor (the whole tensor unsharded)
            sq = torch.stack(
                [*torch._foreach_norm(delta), *torch._foreach_norm(self._before)]
            ).float().square()  # fmt: skip
            sharded = next((p for p in self._params if is_dtensor(p)), None)
            if sharded is not None:  # FSDP2: one all-reduce adds the ranks' parts, no sync
                import torch.distributed as dist

                dist.all_reduce(sq, group=sharded.device_mesh.get_group())
            num, den = sq.sqrt().chunk(2)
            self._pending.append((self._step, num / den))
            self._before = None
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def consume(self, trainer, pl_module, rows) -> None:
        if not self._pending:
            return
        steps = [s for s, _ in self._pending]
        dev = self._pending[-1][1].device  # (pending ratios restored from a checkpoint: CPU)
        values = torch.stack([r.to(dev) for _, r in self._pending]).cpu().tolist()
        self._pending = []
        new = [
            {"step": s, **dict(zip(self.names, v, strict=True))}
            for s, v in zip(steps, values, strict=True)
        ]
        self.csv.add(self.dir, new, write=trainer.is_global_zero)
        if not trainer.is_global_zero:
            return
        for r in new:  # every parameter to W&B, the median and max to every logger
            finite = [r[n] for n in self.names if math.isfinite(r[n])]
            per_param = {f"update_ratio/{n}": r[n] for n in self.names}
            m = {
                "update_ratio/median": float(np.median(finite)) if finite else math.nan,
                "update_ratio/max": max(finite) if finite else math.nan,
                **per_param,
            }
            self.log_step(trainer, r["step"], m, wandb_only=per_param)

    @property
    def rows(self) -> Rows:
        return self.csv.rows

    def state_dict(self) -> dict[str, Any]:
        pending = [(s, t.cpu().tolist()) for s, t in self._pending]
        return {"csv": self.csv.state_dict(), "pending": pending}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.csv.load_state_dict(state_dict["csv"])
        self._pending = [(s, torch.tensor(v)) for s, v in state_dict["pending"]]

    def finish(self, trainer, pl_module) -> None:
        if self.plots and self.rows and trainer.is_global_zero:
            from stablelab.analysis.plots import plot_update_ratios

            plot_update_ratios(
                self.rows, self.names, Path(trainer.default_root_dir) / "update_ratio.png"
            )

    def summary(self) -> dict[str, Any]:
        if not self.rows:
            return {}
        values = np.array([self.rows.column(n) for n in self.names], dtype=float).T
        finite = np.isfinite(values)
        if not finite.any():
            return {"update_ratio_median": None, "update_ratio_max": None}
        masked = np.where(finite, values, -np.inf)
        _, col = np.unravel_index(np.argmax(masked), values.shape)
        return {
            "update_ratio_median": float(np.median(values[finite])),
            "update_ratio_max": float(values[finite].max()),
            "update_ratio_max_param": self.names[col],
        }
