"""Per-step gradient telemetry kept on the device and read back at intervals.

``record`` writes one step's :class:`~stablelab.optim.clipping.ClipStats` into a
preallocated device buffer at a host-side index: no host synchronisation. ``flush`` copies
the filled part of the buffer to the host in one transfer and returns the rows, so the
full per-step series is kept while the device is waited on once per interval.
"""

from __future__ import annotations

from typing import Any

import torch

from stablelab.optim.clipping import ClipStats

FIELDS = ("grad_norm", "grad_norm_clipped", "clipped", "clip_threshold")


class GradTelemetry:
    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be > 0")
        self.capacity = capacity
        self.buf: torch.Tensor | None = None
        self.steps: list[int] = []
        self.overflow: list[dict[str, Any]] = []  # rows flushed early because the buffer filled

    @property
    def pending(self) -> int:
        return len(self.steps)

    def record(self, step: int, stats: ClipStats) -> None:
        if self.buf is None:
            self.buf = torch.empty(self.capacity, len(FIELDS), device=stats.grad_norm.device)
        if self.pending == self.capacity:  # never lose a step: flush early (one sync)
            self.overflow += self.flush()
        row = torch.stack(
            [stats.grad_norm, stats.grad_norm_clipped, stats.clipped, stats.threshold]
        ).float()
        self.buf[self.pending].copy_(row)
        self.steps.append(int(step))

    def flush(self) -> list[dict[str, Any]]:
        """Rows ``{"step", "grad_norm", "grad_norm_clipped", "clipped", "clip_threshold"}``
        recorded since the last flush (one device-to-host copy)."""
        rows, self.overflow = self.overflow, []
        if self.pending:
            assert self.buf is not None
            values = self.buf[: self.pending].cpu().tolist()
            rows += [
                {"step": s, **dict(zip(FIELDS, v, strict=True))}
                for s, v in zip(self.steps, values, strict=True)
            ]
            self.steps = []
        return rows
