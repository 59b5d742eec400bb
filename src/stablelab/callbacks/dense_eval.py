"""Dense early evaluation: the validation loss after every one of the first N updates.

The playbook's Figure 5: evaluating every 1,000 steps hides the early spikes that per-step
evaluation over the first steps shows. This callback evaluates the model after updates
``1..every_step_until`` and then after every ``then_every``-th update (if set), on the whole
validation split or on a fixed subset of its first ``subset`` examples. It runs outside
Lightning's validation loop (no checkpoint, no early stopping, no change to the training
batches or random state), keeps the sums on the device and reads them back with the other
telemetry, so it adds no host synchronisation per step. Each point goes to
``<run dir>/dense_eval.csv`` (step, val_loss, val_acc, examples), to every logger as
``val_dense/loss`` and ``val_dense/acc`` and into the stability report's loss plot. ``step``
counts the updates applied before the evaluation. The points of the every-step phase also
go to the stability monitor's validation-rise detector (``events`` column).
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch

from stablelab.callbacks.base import CsvRows, Rows, TelemetryCallback, telemetry_callbacks
from stablelab.constraints import NonNegInt, PosInt
from stablelab.data.loader import HeadLoader

CSV_FIELDS = ("step", "val_loss", "val_acc", "examples", "events")
CACHE_BYTES = 256 * 2**20  # evaluation data kept on the device between evaluations


class DenseEval(TelemetryCallback):
    sets_interval = False  # read back whenever the other telemetry is

    def __init__(
        self,
        every_step_until: NonNegInt = 25,
        then_every: PosInt | None = None,
        subset: PosInt | None = None,
        filename: str = "dense_eval.csv",
    ) -> None:
        self.every_step_until = every_step_until
        self.then_every = then_every
        self.subset = subset
        self.csv: CsvRows = CsvRows(filename, CSV_FIELDS)
        self._batches: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._pending: list[tuple[int, torch.Tensor]] = []
        self._last_step = -1

    def due(self, step: int) -> bool:
        """Whether to evaluate after ``step`` updates."""
        if step < 1:
            return False
        return step <= self.every_step_until or bool(
            self.then_every and step % self.then_every == 0
        )

    @property
    def enabled(self) -> bool:
        return self.every_step_until > 0 or self.then_every is not None

    # ------------------------------------------------------------------ hooks
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step != self._last_step and self.due(step):  # (accumulation: once per update)
            self._last_step = step
            self._pending.append((step, self._evaluate(trainer, pl_module)))
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def _eval_batches(self, trainer, pl_module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's validation batches (or its share of the subset), moved to the device
        once and kept there (up to ``CACHE_BYTES``; beyond that they are re-read from the
        loader at each evaluation).

        Every rank keeps every batch its loader gives, empty ones included: a sharded model
        (FSDP) gathers its parameters in every forward, so a rank with one forward fewer
        would leave the others waiting forever (the in-memory loader, like Lightning's
        distributed sampler, gives every rank the same number of batches). With the
        in-memory loader the subset is exactly the first ``subset`` examples of the split,
        whatever the number of ranks.
        """
        if self._batches is not None:
            return self._batches
        dm = trainer.datamodule
        loader = dm.val_dataloader() if dm is not None else trainer.val_dataloaders
        if self.subset and isinstance(loader, HeadLoader):  # exactly the first `subset`
            loader = loader.head(self.subset)
            need = math.inf
        else:  # another loader: each rank takes its share of the subset from its batches
            need = math.ceil(self.subset / trainer.world_size) if self.subset else math.inf
        batches, got, size = [], 0, 0
        dev = pl_module.device  # as Lightning's loops: float64 inputs under 64-true
        for batch in loader:
            if got >= need:
                break
            x, y = batch[0], batch[1]
            take = int(min(y.shape[0], need - got))
            x, y = trainer.precision_plugin.convert_input((x[:take].to(dev), y[:take].to(dev)))
            batches.append((x, y))
            got += take
            size += x.nbytes + y.nbytes
        if size <= CACHE_BYTES:
            self._batches = batches
        return batches

    @torch.no_grad()
    def _evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> torch.Tensor:
        """``[loss_sum, correct, count]`` over the evaluation batches, summed over ranks,
        left on the device."""
        was_training = pl_module.training
        pl_module.eval()
        total = torch.zeros(3, dtype=torch.float64, device=pl_module.device)
        with trainer.strategy.precision_plugin.forward_context():
            for x, y in self._eval_batches(trainer, pl_module):
                total += pl_module.eval_sums(x, y)  # type: ignore[operator]  # StableModule
        pl_module.train(was_training)
        if trainer.world_size > 1:
            total = trainer.strategy.reduce(total, reduce_op="sum")
        return total

    def consume(self, trainer, pl_module, rows) -> None:
        if not self._pending:
            return
        steps = [s for s, _ in self._pending]
        dev = self._pending[-1][1].device  # (pending sums restored from a checkpoint: CPU)
        values = torch.stack([t.to(dev) for _, t in self._pending]).cpu().tolist()
        self._pending = []
        new = [
            {"step": s, "val_loss": ls / n, "val_acc": c / n, "examples": int(n)}
            for s, (ls, c, n) in zip(steps, values, strict=True)
        ]
        # the every-step phase feeds the stability monitor's validation-rise detector (later
        # points are sparse, and a late rise is overfitting, not instability)
        for r in new:
            kinds = []
            if r["step"] <= self.every_step_until:
                for cb in telemetry_callbacks(trainer):
                    kinds += cb.observe_eval(trainer, r["step"], r["val_loss"])
            r["events"] = ";".join(kinds)
        self.csv.add(self.dir, new, write=trainer.is_global_zero)
        for r in new:
            m = {"val_dense/loss": r["val_loss"], "val_dense/acc": r["val_acc"]}
            self.log_step(trainer, r["step"], m)

    @property
    def records(self) -> Rows:
        return self.csv.rows

    def state_dict(self) -> dict[str, Any]:
        """The points so far, and those evaluated but not yet read back (a checkpoint
        between two flushes: their sums, copied to the host)."""
        pending = [(s, t.cpu().tolist()) for s, t in self._pending]
        return {"csv": self.csv.state_dict(), "pending": pending, "last_step": self._last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.csv.load_state_dict(state_dict["csv"])
        self._pending = [
            (s, torch.tensor(v, dtype=torch.float64)) for s, v in state_dict["pending"]
        ]
        self._last_step = state_dict["last_step"]

    def summary(self) -> dict[str, Any]:
        if not self.records:
            return {}
        return {
            "dense_eval_points": len(self.records),
            "dense_eval_examples": self.records[0]["examples"],
        }
