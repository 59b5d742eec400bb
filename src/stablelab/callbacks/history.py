"""Record every validation's loss and accuracy with the step it ran at."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L

from stablelab.callbacks.base import CsvRows, Rows

FIELDS = ("step", "val_loss", "val_acc")


class EvalHistory(L.Callback):
    """Keeps ``records``: one ``{"step", "val_loss", "val_acc"}`` per validation run
    (sanity checks excluded; ``step`` = updates applied) and appends each to
    ``<run dir>/evals.csv``. Reading the values costs one host sync per evaluation. The
    records are checkpointed, and the file rewritten from them at the start of fit (see
    :class:`~stablelab.callbacks.base.CsvRows`)."""

    def __init__(self, filename: str | None = "evals.csv") -> None:
        self.csv = CsvRows(filename or "", FIELDS)
        self.write = bool(filename)

    @property
    def records(self) -> Rows:
        return self.csv.rows

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.write and trainer.is_global_zero:
            self.csv.rewrite(Path(trainer.default_root_dir))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        if "val/loss" not in m:
            return
        rec = {
            "step": int(trainer.global_step),
            "val_loss": float(m["val/loss"]),
            "val_acc": float(m["val/acc"]) if "val/acc" in m else None,
        }
        write = self.write and trainer.is_global_zero
        self.csv.add(Path(trainer.default_root_dir), [rec], write=write)

    def best(self, monitor: str | None = "val/loss") -> dict[str, Any] | None:
        """The best evaluation as the checkpoint callback's ``monitor`` ranks them: the
        highest finite accuracy for ``val/acc``, else the lowest finite validation loss
        (``val/bpc`` is the loss in bits: the same order); the first of equals. None if
        none is finite."""
        key = "val_acc" if monitor == "val/acc" else "val_loss"
        finite = [r for r in self.records if r[key] is not None and math.isfinite(r[key])]
        if not finite:
            return None
        pick = max if key == "val_acc" else min
        return pick(finite, key=lambda r: r[key])

    def state_dict(self) -> dict[str, Any]:
        return {"csv": self.csv.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.csv.load_state_dict(state_dict["csv"])
