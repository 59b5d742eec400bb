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
# "skipped": 1.0 where skip_spikes undid the step's update (stablelab.remedies);
# "amp_overflow": 1.0 where the gradients overflowed float16 under a GradScaler
# (precision=16-mixed), which then skipped the update
FIELDS = ("loss", *GRAD_FIELDS, "skipped", "amp_overflow")


def _as_rows(steps: list[int], values: list[list[float]]) -> list[dict[str, Any]]:
    """``{"step", *FIELDS}`` dicts of the buffer's rows."""
    return [
        {"step": s, **dict(zip(FIELDS, v, strict=True))} for s, v in zip(steps, values, strict=True)
    ]


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
        self._reduced = 0  # leading buffer rows whose loss is already reduced (restored)
        self._restored: torch.Tensor | None = None  # those rows, until the buffer exists
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

    def record(
        self,
        step: int,
        stats: ClipStats,
        skipped: torch.Tensor | None = None,
        amp_overflow: torch.Tensor | None = None,
    ) -> None:
        """Close step ``step``: its gradient statistics, the mean of the losses added
        since the previous record (NaN if none was added), whether skip_spikes skipped its
        update and whether its gradients overflowed float16 (0-dim device tensors, or
        None: not)."""
        buf = self._allocate(stats.grad_norm.device)
        if self.pending == self.every:  # never lose a step: flush early (one sync)
            self.overflow += self.flush()
        if self._loss_sum is None:
            loss = torch.full((), float("nan"), device=stats.grad_norm.device)
        else:
            loss = self._loss_sum.to(stats.grad_norm.device) / self._loss_count
        flags = [
            torch.zeros_like(loss) if f is None else f.to(loss.device, loss.dtype)
            for f in (skipped, amp_overflow)
        ]
        grads = [stats.grad_norm, stats.grad_norm_clipped, stats.clipped, stats.threshold]
        row = torch.stack([loss, *grads, *flags]).float()
        buf[self.pending].copy_(row)
        self.steps.append(int(step))
        self._loss_sum, self._loss_count = None, 0

    def flush(self) -> list[dict[str, Any]]:
        """Rows ``{"step", "loss", "grad_norm", "grad_norm_clipped", "clipped",
        "clip_threshold"}`` recorded since the last flush (one device-to-host copy)."""
        rows, self.overflow = self.overflow, []
        if self.pending:
            assert self.buf is not None
            block = self._reduced_block()
            rows += _as_rows(self.steps, block.cpu().tolist())
            self.steps = []
            self._reduced = 0
        return rows

    def _allocate(self, device: torch.device) -> torch.Tensor:
        """The buffer, on the device of the first step recorded (rows restored from a
        checkpoint wait on the host until then)."""
        if self.buf is None:
            self.buf = torch.empty(self.every, len(FIELDS), device=device)
            if self._restored is not None:
                self.buf[: len(self._restored)].copy_(self._restored)
                self._restored = None
        return self.buf

    def _reduced_block(self) -> torch.Tensor:
        """The pending rows with the loss column reduced (a collective under DDP: every
        rank calls it at the same moment)."""
        self._allocate(torch.device("cpu"))  # (only restored rows so far)
        assert self.buf is not None
        block = self.buf[: self.pending]
        if self.reduce_loss is not None and self.pending > self._reduced:
            block = block.clone()
            block[self._reduced :, 0] = self.reduce_loss(block[self._reduced :, 0].contiguous())
        return block

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The steps recorded but not yet read back (a checkpoint between two flushes),
        their losses already reduced over ranks, so that a resumed run reads them back at
        the same step as an uninterrupted one. Called on every rank."""
        if self._loss_count:
            raise RuntimeError("a checkpoint in the middle of an optimizer step")
        rows = self._reduced_block().cpu() if self.pending else torch.empty(0, len(FIELDS))
        return {"steps": list(self.steps), "rows": rows, "overflow": list(self.overflow)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        steps = list(state["steps"])
        self.overflow = list(state["overflow"])
        rows = state["rows"].float()
        if rows.dim() == 2 and rows.shape[1] < len(FIELDS):  # written before the last flags
            pad = rows.new_zeros(len(rows), len(FIELDS) - rows.shape[1])
            rows = torch.cat([rows, pad], dim=1)
        if len(steps) > self.every:  # resumed with a shorter interval: more rows than fit
            # (already reduced over ranks) read back at the next flush
            self.overflow += _as_rows(steps, rows.tolist())
            steps = []
        self.steps = steps
        self._reduced = len(steps)
        self._restored = rows if steps else None
