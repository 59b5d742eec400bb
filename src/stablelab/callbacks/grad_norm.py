"""Unclipped gradient-norm telemetry, clip fraction, and the playbook's clipping plots.

Every optimizer step the module's clipper measures the global L2 norm of the full gradient
(after all-reduce, unscaling and accumulation, before clipping) and the
:class:`~stablelab.telemetry.StepTelemetry` buffer keeps it on the device. Every
``log_every_n_steps`` the buffer is read back once (see :mod:`stablelab.callbacks.base`) and
this callback

* appends every step to ``<run dir>/grad_norms.csv`` (step, grad_norm, grad_norm_clipped,
  clipped, clip_threshold);
* sends every step to W&B (``train/grad_norm``, ``train/grad_norm_clipped``,
  ``train/clipped``, ``train/clip_threshold``, ``train/clip_fraction``) and the interval's
  last step to the other loggers;
* tracks the clip fraction over the run and over the last ``recent_window`` steps, and
  warns once when either exceeds ``max_clip_fraction`` (the playbook: more than 50%
  clipped is a strange way of lowering the learning rate; lower it instead).

At the end (or when training fails) it writes ``grad_norm.png`` (norm vs step, log scale,
threshold drawn) and ``grad_norm_hist.png`` (histogram with the 50th/90th/99th
percentiles), sends both and a histogram to W&B, and provides the ``summary.json`` keys.
"""

from __future__ import annotations

import math
import warnings
from collections import deque
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np

from stablelab.callbacks.base import CsvRows, Rows, TelemetryCallback
from stablelab.constraints import OpenUnit, PosInt
from stablelab.telemetry import GRAD_FIELDS

ADVICE = (
    "more than {pct:.0%} of updates were clipped ({where}): the playbook calls extremely "
    "aggressive clipping a strange way of lowering the learning rate; lower the learning "
    "rate instead (or raise the clip threshold)."
)


class TooMuchClippingWarning(UserWarning):
    pass


class GradNormMonitor(TelemetryCallback):
    def __init__(
        self,
        log_every_n_steps: PosInt | None = None,
        recent_window: PosInt = 100,
        max_clip_fraction: OpenUnit = 0.5,
        plots: bool = True,
        filename: str = "grad_norms.csv",
    ) -> None:
        self.flush_every = log_every_n_steps
        self.recent_window = recent_window
        self.max_clip_fraction = max_clip_fraction
        self.plots = plots
        self.csv: CsvRows = CsvRows(filename, ["step", *GRAD_FIELDS], extra=["clip_fraction"])
        self._clipped_total = 0.0
        self._recent: deque[float] = deque(maxlen=recent_window)
        self._recent_max = 0.0
        self.warned: str | None = None

    @property
    def rows(self) -> Rows:
        """Every step so far: ``step``, the gradient fields and the running clip fraction."""
        return self.csv.rows

    # ------------------------------------------------------------------ work
    def consume(self, trainer: L.Trainer, pl_module: L.LightningModule, rows) -> None:
        if not rows:
            return
        rows = [{k: r[k] for k in ("step", *GRAD_FIELDS)} for r in rows]
        self._count(rows)
        self.csv.add(self.dir, rows, write=trainer.is_global_zero)
        if trainer.is_global_zero:
            self._log(trainer, rows)
        self._check_clip_fraction()

    def _count(self, rows: list[dict[str, Any]]) -> None:
        """The running and recent clip fractions over ``rows`` (new steps, in order)."""
        fractions = self._fractions([r["clipped"] for r in rows])
        for r, f in zip(rows, fractions, strict=True):
            r["clip_fraction"] = f

    def _fractions(self, clipped: list[float], n: int | None = None) -> list[float]:
        """The running clip fraction after each of these steps, which follow ``n`` steps
        (default: the rows in memory)."""
        n, out = len(self.csv.rows) if n is None else n, []
        for c in clipped:
            n += 1
            self._recent.append(c)
            self._clipped_total += c
            out.append(self._clipped_total / n)
            if len(self._recent) == self.recent_window:
                self._recent_max = max(self._recent_max, sum(self._recent) / self.recent_window)
        return out

    def _log(self, trainer: L.Trainer, rows: list[dict[str, Any]]) -> None:
        """Every step to W&B; the interval's last step to the other loggers."""
        for r in rows:
            metrics = {f"train/{k}": v for k, v in r.items() if k != "step"}
            if not math.isfinite(metrics["train/clip_threshold"]):
                metrics.pop("train/clip_threshold")
            self.log_step(trainer, r["step"], metrics, others=r is rows[-1])

    def _check_clip_fraction(self, final: bool = False) -> None:
        """During training: the fraction over the last ``recent_window`` steps; at the end:
        over the whole run too (early in a run, the running fraction is too noisy)."""
        if self.warned or not self.rows:
            return
        run = self.rows[-1]["clip_fraction"]
        where = None
        if final and run > self.max_clip_fraction:
            where = f"{run:.0%} over the run"
        elif self._recent_max > self.max_clip_fraction:
            where = f"{self._recent_max:.0%} of the last {self.recent_window} steps"
        if where:
            self.warned = ADVICE.format(pct=self.max_clip_fraction, where=where)
            warnings.warn(self.warned, TooMuchClippingWarning, stacklevel=2)

    def finish(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check_clip_fraction(final=True)
        if not (trainer.is_global_zero and self.plots and self.rows):
            return
        from stablelab.analysis.plots import plot_grad_norm_hist, plot_grad_norms

        run_dir = Path(trainer.default_root_dir)
        steps = self.rows.column("step")
        norms = self.rows.column("grad_norm")
        thresholds = self.rows.column("clip_threshold")
        amp = getattr(trainer.precision_plugin, "scaler", None) is not None
        label = "float16 overflow (update skipped)" if amp else "not finite"
        line = plot_grad_norms(steps, norms, thresholds, run_dir / "grad_norm.png", label)
        hist = plot_grad_norm_hist(norms, run_dir / "grad_norm_hist.png")
        self._log_images(trainer, line, hist, norms)

    def _log_images(self, trainer, line: Path, hist: Path, norms: list[float]) -> None:
        from lightning.pytorch.loggers import WandbLogger

        for lg in trainer.loggers:
            if isinstance(lg, WandbLogger):
                import wandb

                finite = [n for n in norms if math.isfinite(n)]
                lg.experiment.log(
                    {
                        "plots/grad_norm": wandb.Image(str(line)),
                        "plots/grad_norm_hist": wandb.Image(str(hist)),
                        "train/grad_norm_histogram": wandb.Histogram(finite or [0.0]),
                    }
                )

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"csv": self.csv.state_dict(), "warned": self.warned}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.csv.load_state_dict(state_dict["csv"])
        self._clipped_total, self._recent_max = 0.0, 0.0
        self._recent.clear()
        rows = self.csv.rows  # the counters and the clip fractions: from the rows
        rows.set_column("clip_fraction", self._fractions(rows.column("clipped"), 0))
        self.warned = state_dict["warned"]

    # ------------------------------------------------------------------ results
    def summary(self) -> dict[str, Any]:
        """The ``summary.json`` keys (percentiles over every step's unclipped norm)."""
        norms = np.array(self.rows.column("grad_norm"), dtype=float)
        finite = norms[np.isfinite(norms)]
        if not self.rows:
            return {}
        pct = (
            {p: float(np.percentile(finite, p)) for p in (50, 90, 99)}
            if finite.size
            else {50: None, 90: None, 99: None}
        )
        return {
            "grad_norm_p50": pct[50],
            "grad_norm_p90": pct[90],
            "grad_norm_p99": pct[99],
            "grad_norm_max": float(finite.max()) if finite.size else None,
            "clip_fraction": self.rows[-1]["clip_fraction"],
            # the largest fraction over recent_window consecutive steps (None: a shorter run)
            "clip_fraction_recent_max": (
                self._recent_max if len(self.rows) >= self.recent_window else None
            ),
            "clip_fraction_window": self.recent_window,
            "recommended_clip_threshold": pct[90],
            "too_much_clipping": self.warned is not None,
            "too_much_clipping_advice": self.warned,
        }
