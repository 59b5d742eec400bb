"""The divergence guard and instability detection, fed from the device telemetry.

Every step's training loss (the mean over DDP ranks) and unclipped gradient norm stay on
the device; at each flush (every ``check_every_n_steps`` steps, before every validation,
at the end) this callback runs :class:`~stablelab.stability.InstabilityDetector` over the
new steps, writes them to ``<run dir>/stability.csv`` (step, loss, loss_ema, loss_rise,
grad_norm, events) and the loggers (``stability/*``), and warns on the first event of each
kind. When the run diverged it raises :class:`~stablelab.stability.TrainingDiverged` out of
``trainer.fit``: the step that diverged was at most ``check_every_n_steps - 1`` steps ago,
and no validation or checkpoint ran in between. ``train`` turns that into a clean end:
``status: diverged``, ``feasible: false``, exit 0 (non-zero with ``fail_on_divergence``).
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

import lightning as L

from stablelab.callbacks.base import CsvRows, TelemetryCallback
from stablelab.constraints import NonNegInt, PosFloat, PosInt, Prob, Range
from stablelab.stability import InstabilityDetector, TrainingDiverged

log = logging.getLogger("stablelab")

CSV_FIELDS = ("step", "loss", "loss_ema", "loss_rise", "grad_norm", "events")


class StabilityMonitor(TelemetryCallback):
    def __init__(
        self,
        check_every_n_steps: PosInt | None = None,
        max_loss_ratio: Annotated[float, Range(gt=1)] | None = 10.0,
        fail_on_divergence: bool = False,
        ema_decay: Prob = 0.9,
        rise_margin: PosFloat = 0.1,
        spike_window: PosInt = 128,
        spike_min_history: PosInt = 64,
        spike_zscore: PosFloat = 6.0,
        grad_norm_spikes_are_instability: bool = False,
        rollbacks: NonNegInt = 0,
        rollback_skip_batches: NonNegInt = 200,
        rollback_lr_factor: Annotated[float, Range(gt=0, le=1)] = 1.0,
        filename: str = "stability.csv",
    ) -> None:
        self.flush_every = check_every_n_steps
        self.fail_on_divergence = fail_on_divergence
        # PaLM's practice: on divergence, restart from the last checkpoint, skip the
        # batches from it through the spike and `rollback_skip_batches` more (and lower
        # the LR), at most `rollbacks` times
        self.rollbacks = rollbacks
        self.rollback_skip_batches = rollback_skip_batches
        self.rollback_lr_factor = rollback_lr_factor
        self.csv: CsvRows = CsvRows(filename, CSV_FIELDS)
        self.detector = InstabilityDetector(
            max_loss_ratio=max_loss_ratio,
            ema_decay=ema_decay,
            rise_margin=rise_margin,
            spike_window=spike_window,
            spike_min_history=spike_min_history,
            spike_zscore=spike_zscore,
            grad_norm_spikes_are_instability=grad_norm_spikes_are_instability,
        )
        self._warned: set[str] = set()
        self._raised = False

    @staticmethod
    def config_problems(c: dict[str, Any]) -> list[str]:
        if c.get("spike_min_history", 64) > c.get("spike_window", 128):
            return ["spike_min_history must be <= spike_window"]
        return []

    def consume(self, trainer: L.Trainer, pl_module: L.LightningModule, rows) -> None:
        if not rows:
            return
        det = self.detector
        out = []
        for r in rows:
            if det.diverged is not None:
                break  # nothing after the divergence is analysed
            flags = bool(r.get("skipped")), bool(r.get("amp_overflow"))
            events = det.update(r["step"], r["loss"], r["grad_norm"], *flags)
            ema = det.ema if det.ema is not None else float("nan")
            out.append(
                {
                    "step": r["step"],
                    "loss": r["loss"],
                    "loss_ema": ema,
                    "loss_rise": ema - det.ema_min,
                    "grad_norm": r["grad_norm"],
                    "events": ";".join(e.kind for e in events),
                }
            )
            self._warn(trainer, events)
        self.csv.add(self.dir, out, write=trainer.is_global_zero)
        if trainer.is_global_zero and out:
            self._log(trainer, out)

    def observe_eval(self, trainer: L.Trainer, step: int, val_loss: float) -> list[str]:
        """A dense evaluation (from :class:`~stablelab.callbacks.DenseEval`); returns the
        kinds of the events it raised."""
        events = self.detector.update_eval(step, val_loss)
        self._warn(trainer, events)
        return [e.kind for e in events]

    def _warn(self, trainer: L.Trainer, events) -> None:
        """Log the first event of each kind: a warning for instability, a note for the rest
        (gradient-norm spikes that are not counted as instability)."""
        for e in events:
            if e.kind not in self._warned:
                self._warned.add(e.kind)
                if trainer.is_global_zero:
                    level = (
                        logging.WARNING
                        if e.kind in self.detector.instability_kinds
                        else logging.INFO
                    )
                    log.log(level, "stability: %s at step %d: %s", e.kind, e.step, e.detail)

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit":
            self._raised = False  # (a rollback fits again)

    def after_flush(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        d = self.detector.diverged
        if d is not None and not self._raised:
            self._raised = True
            done = len((getattr(pl_module, "rollback", None) or {}).get("log", []))
            back = (
                (self.rollback_skip_batches, self.rollback_lr_factor)
                if done < self.rollbacks
                else None
            )
            raise TrainingDiverged(d.step, d.detail, fail=self.fail_on_divergence, rollback=back)

    def _log(self, trainer: L.Trainer, rows: list[dict[str, Any]]) -> None:
        """Every step to W&B (with its loss); the interval's last step to the others."""
        det = self.detector
        counts = {
            "stability/loss_spikes": det.count("loss_spike"),
            "stability/grad_norm_spikes": det.count("grad_norm_spike"),
            "stability/loss_rises": det.count("loss_rise"),
        }
        for r in rows:
            m = {
                "stability/loss_ema": r["loss_ema"],
                "stability/loss_rise": r["loss_rise"],
                "stability/loss": r["loss"],
            }
            last = r is rows[-1]
            if last:
                m.update(counts)
            self.log_step(trainer, r["step"], m, others=last, wandb_only=("stability/loss",))

    def summary(self) -> dict[str, Any]:
        if not self.detector.steps_seen:
            return {}
        return self.detector.summary()

    def state_dict(self) -> dict[str, Any]:
        return {
            "detector": self.detector.state_dict(),
            "warned": sorted(self._warned),
            "csv": self.csv.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.detector.load_state_dict(state_dict["detector"])
        self._warned = set(state_dict.get("warned", []))
        self.csv.load_state_dict(state_dict["csv"])
