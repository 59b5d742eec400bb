"""Automatic spike remedies: skip the update of a spiking step (OLMo-core's rule), on the
device, without a host synchronisation.

:class:`SpikeSkipper` keeps the previous ``window`` values of the step's training loss
(the mean over the micro-batches, and over the processes under DDP) and of the unclipped
global gradient norm in device ring buffers. Once ``min_history`` steps are known, a step
is a spike when, for either series, with the window's mean ``mu`` and population standard
deviation ``sd``, ``x - mu > zscore * sd`` (``sd > 0``), or when the value is not finite;
the defaults (6 sigma over the previous 128 steps, from the 64th on) are those of the
stability detector (:mod:`stablelab.stability`), so a skipped step is what the report
counts as a spike. Every step's values enter the window (a non-finite one as the window's
mean), so the position in the ring is the step count, known on the host.

The decision is a 0-dim bool tensor handed to the update rule (``optimizer.skip``): the
playbook rules compute the update and undo it when it is true, parameters and every state
tensor restored bit for bit and the step count not advanced (see
:class:`stablelab.optim.rules._PlaybookOptimizer`). The skipped steps are flags in a device
tensor read once, at the end of the run (``summary.json``: ``skipped_steps``,
``skipped_step_list``), and kept in checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


class SpikeSkipper:
    def __init__(
        self,
        total_steps: int,
        window: int = 128,
        min_history: int = 64,
        zscore: float = 6.0,
    ) -> None:
        if not 1 <= min_history <= window:
            raise ValueError("skip_spikes: need 1 <= min_history <= window")
        self.total_steps = total_steps
        self.window = window
        self.min_history = min_history
        self.zscore = zscore
        self.seen = 0  # steps recorded (host-known: every step records)
        self.values: Tensor | None = None  # (2, window): loss, grad norm
        self.flags: Tensor | None = None  # (total_steps + 1,) 1.0 where skipped
        self._loss_sum: Tensor | None = None
        self._loss_count = 0
        # the mean over DDP ranks (every rank must take the same decision)
        self.reduce_loss: Callable[[Tensor], Tensor] | None = None

    def _allocate(self, device: torch.device) -> None:
        if self.values is None:
            self.values = torch.zeros(2, self.window, dtype=torch.float64, device=device)
        if self.flags is None:
            self.flags = torch.zeros(self.total_steps + 1, dtype=torch.float32, device=device)
        elif self.flags.device != device:  # restored from a checkpoint on the host
            self.flags = self.flags.to(device)
            self.values = self.values.to(device)

    def add_loss(self, loss: Tensor) -> None:
        """One micro-batch's (detached) training loss."""
        loss = loss.detach().double()
        self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
        self._loss_count += 1

    def decide(self, step: int, grad_norm: Tensor, amp_overflow: Tensor | None = None) -> Tensor:
        """Whether the update of ``step`` (about to be applied) is skipped: a 0-dim bool
        tensor on ``grad_norm``'s device. Records the step's values. ``amp_overflow`` (a
        0-dim bool tensor, under a float16 GradScaler): the gradients overflowed and the
        scaler skips the step itself, so it is not counted as a spike here."""
        device = grad_norm.device
        self._allocate(device)
        assert self.values is not None and self.flags is not None
        if self._loss_sum is None:
            loss = torch.full((), float("nan"), dtype=torch.float64, device=device)
        else:
            loss = self._loss_sum.to(device) / self._loss_count
            if self.reduce_loss is not None:
                loss = self.reduce_loss(loss)
        self._loss_sum, self._loss_count = None, 0
        x = torch.stack([loss, grad_norm.detach().double()])
        n = min(self.seen, self.window)
        known = self.values[:, :n] if n else self.values[:, :1]
        mu = known.mean(dim=1)
        sd = known.std(dim=1, correction=0)
        finite = torch.isfinite(x)
        spike = ((sd > 0) & (x - mu > self.zscore * sd)) | ~finite
        skip = spike.any() if self.seen >= self.min_history else ~finite.all()
        if amp_overflow is not None:
            skip = skip & ~amp_overflow
        self.values[:, self.seen % self.window] = torch.where(finite, x, mu)
        self.seen += 1
        if 0 <= step < len(self.flags):
            self.flags[step] = skip.float()
        return skip

    # ------------------------------------------------------------------ state, summary
    def state_dict(self) -> dict[str, Any]:
        return {
            "seen": self.seen,
            "values": None if self.values is None else self.values.cpu(),
            "flags": None if self.flags is None else self.flags.cpu(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen = int(state["seen"])
        self.values = state["values"]
        flags = state["flags"]
        if flags is not None and len(flags) < self.total_steps + 1:  # a longer resumed run
            flags = torch.cat([flags, flags.new_zeros(self.total_steps + 1 - len(flags))])
        self.flags = flags

    def summary(self) -> dict[str, Any]:
        """One host read: the steps whose update was skipped."""
        if self.flags is None:
            return {"skipped_steps": 0, "skipped_step_list": []}
        steps = torch.nonzero(self.flags > 0).flatten().tolist()
        return {"skipped_steps": len(steps), "skipped_step_list": steps[:100]}
