"""Record every validation's loss and accuracy with the step it ran at."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L

from stablelab.callbacks.base import append_csv


class EvalHistory(L.Callback):
    """Keeps ``records``: one ``{"step", "val_loss", "val_acc"}`` per validation run
    (sanity checks excluded; ``step`` = updates applied) and appends each to
    ``<run dir>/evals.csv``. Reading the values costs one host sync per evaluation."""

    def __init__(self, filename: str | None = "evals.csv") -> None:
        self.records: list[dict[str, Any]] = []
        self.filename = filename

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
        self.records.append(rec)
        if self.filename and trainer.is_global_zero:
            append_csv(Path(trainer.default_root_dir) / self.filename, list(rec), [rec])

    def best(self) -> dict[str, Any] | None:
        """The evaluation with the lowest finite validation loss (None if none is finite)."""
        finite = [r for r in self.records if math.isfinite(r["val_loss"])]
        return min(finite, key=lambda r: r["val_loss"]) if finite else None

    def state_dict(self) -> dict[str, Any]:
        return {"records": list(self.records)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.records = list(state_dict.get("records", []))
