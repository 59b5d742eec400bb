"""Test-only Lightning callbacks (importable as ``helpers.X`` from configs in tests)."""

from __future__ import annotations

import lightning as L


class RaiseAtStep(L.Callback):
    """Raise RuntimeError when training reaches ``step`` (simulates a crash mid-run)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            raise RuntimeError(f"boom at step {trainer.global_step}")
