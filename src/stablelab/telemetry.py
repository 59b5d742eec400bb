"""Per-step training telemetry kept on the device and read back at intervals.

Each optimizer step the module adds its training loss (:meth:`StepTelemetry.add_loss`,
once per micro-batch) and its :class:`~stablelab.optim.clipping.ClipStats`
(:meth:`StepTelemetry.record`) to a preallocated device buffer at a host-side index: no
host synchronisation. :meth:`StepTelemetry.flush` copies the filled part of the buffer to
the host in one transfer and returns one row per step, so the full per-step series is kept
while the device is waited on once per interval.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from stablelab.optim.clipping import ClipStats

GRAD_FIELDS = ("grad_norm", "grad_norm_clipped", "clipped", "clip_threshold")
FIELDS = ("loss", *GRAD_FIELDS)


class StepTelemetry:
    """One row per optimizer step: the mean training loss over its micro-batches and the
    gradient statistics of that step.

    ``every`` is how many steps the callbacks let pile up before they read the buffer back
    (the smallest interval any of them asks for); the buffer holds exactly that many rows
    and, if it ever fills before a flush, flushes itself early rather than lose a step.
    """

    def __init__(self, every: int) -> None:
        if every <= 0:
            raise ValueError("every must be > 0")
        self.every = every
        self.buf: torch.Tensor | None = None
        self.steps: list[int] = []
        self.overflow: list[dict[str, Any]] = []  # rows flushed early because the buffer filled
        self._loss_sum: torch.Tensor | None = None
        self._loss_count = 0
        # applied to the loss column on the device before it is read (e.g. the mean over
        # DDP ranks, so every rank reads the same global-batch loss)
        self.reduce_loss: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def pending(self) -> int:
        return len(self.steps)

    def add_loss(self, loss: torch.Tensor) -> None:
        """Add one micro-batch's (detached, scalar) loss to the current step."""
        loss = loss.detach().float()
        self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
        self._loss_count += 1

    def record(self, step: int, stats: ClipStats) -> None:
        """Close step ``step``: its gradient statistics and the mean of the losses added
        since the previous record (NaN if none was added)."""
        if self.buf is None:
            self.buf = torch.empty(self.every, len(FIELDS), device=stats.grad_norm.device)
        if self.pending == self.every:  # never lose a step: flush early (one sync)
            self.overflow += self.flush()
        if self._loss_sum is None:
            loss = torch.full((), float("nan"), device=stats.grad_norm.device)
        else:
            loss = self._loss_sum.to(stats.grad_norm.device) / self._loss_count
        row = torch.stack(
            [loss, stats.grad_norm, stats.grad_norm_clipped, stats.clipped, stats.threshold]
        ).float()
        self.buf[self.pending].copy_(row)
        self.steps.append(int(step))
        self._loss_sum, self._loss_count = None, 0

    def flush(self) -> list[dict[str, Any]]:
        """Rows ``{"step", "loss", "grad_norm", "grad_norm_clipped", "clipped",
        "clip_threshold"}`` recorded since the last flush (one device-to-host copy)."""
        rows, self.overflow = self.overflow, []
        if self.pending:
            assert self.buf is not None
            block = self.buf[: self.pending]
            if self.reduce_loss is not None:
                block = block.clone()
                block[:, 0] = self.reduce_loss(block[:, 0].contiguous())
            values = block.cpu().tolist()
            rows += [
                {"step": s, **dict(zip(FIELDS, v, strict=True))}
                for s, v in zip(self.steps, values, strict=True)
            ]
            self.steps = []
        return rows
