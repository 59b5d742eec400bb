"""Divergence and instability detection on a per-step training-loss / gradient-norm series.

Pure host-side arithmetic on Python floats (no torch, no Lightning): the callback
:class:`~stablelab.callbacks.StabilityMonitor` feeds it the rows it reads back from the
device, and the tests feed it crafted series.

For each step ``t`` with training loss ``L_t`` and unclipped gradient norm ``g_t``:

* **divergence** (the run cannot go on): ``L_t`` or ``g_t`` is NaN or infinite, or
  ``L_t > max_loss_ratio * L_0`` where ``L_0`` is the first step's loss (checked only when
  ``L_0 > 0``). The first such step is ``diverged_at_step``; nothing after it is analysed.
* **float16 overflow** (``precision=16-mixed``, a GradScaler): a step whose gradients
  overflowed float16 (``g_t`` not finite, ``L_t`` finite) had its update skipped by the
  scaler, which halves its loss scale and goes on; it raises an ``amp_overflow`` event and
  is not divergence (the scaler doubles its scale every 2,000 clean steps, so a long run
  overflows now and then by design). ``AMP_OVERFLOW_LIMIT`` consecutive overflows (the
  scale fallen 2^24-fold: gradients that no scale fits) are divergence.
* **loss rise** (the loss goes *up*, the playbook's sign of instability): the EMA
  ``m_0 = L_0``, ``m_t = ema_decay * m_{t-1} + (1 - ema_decay) * L_t`` and its running
  minimum ``mmin_t = min(m_0..m_t)``; the rise is ``m_t - mmin_t`` and a rise episode
  starts at the first step with ``m_t - mmin_t > rise_margin * L_0``. It ends when the rise
  falls back to at most half that margin (then a new episode may start).
* **spikes**: against the previous ``spike_window`` finite values of the same series
  (spikes included), once at least ``spike_min_history`` are known: with their mean ``mu``
  and population standard deviation ``sd``, ``x_t`` is a spike when
  ``sd > 0 and x_t - mu > spike_zscore * sd``; a *loss* spike must also lift the loss by
  more than ``rise_margin * L_0`` (late in training, when the loss is near zero, a batch
  at 0.1 is many sigmas out yet harmless). Defaults (6 sigma over the previous 128 steps,
  active after 64) are OLMo-core's skip-step rule (see STABILITY_NOTES).

* **validation-loss rise** (dense early evaluation only, :meth:`update_eval`): some models
  are very unstable early and recover, and only per-step evaluation shows it (the
  playbook's Figure 5). With ``V_0`` the first evaluated loss, an episode starts at the
  first evaluation with ``V_t - min(V_0..V_t) > rise_margin * V_0`` (or a non-finite
  ``V_t``) and ends once the rise is back to at most half that margin. No smoothing: each
  point is already a mean over the validation examples.

A run is **unstable** when it diverged, had a loss rise, a loss spike or a validation-loss
rise during dense evaluation (and, with
``grad_norm_spikes_are_instability``, a gradient-norm spike); ``first_instability_step``
is the earliest of those steps. Gradient-norm spikes are always counted and reported:
outlier gradients are what clipping is for, but on their own (the loss unmoved) they are
not instability.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

DIVERGED, LOSS_RISE, LOSS_SPIKE, GRAD_NORM_SPIKE, VAL_LOSS_RISE, UPDATE_SKIPPED = (
    "diverged",
    "loss_rise",
    "loss_spike",
    "grad_norm_spike",
    "val_loss_rise",
    "update_skipped",  # skip_spikes undid the step's update: its loss does not count
)
AMP_OVERFLOW = "amp_overflow"  # float16 gradients overflowed: the GradScaler skipped the step
AMP_OVERFLOW_LIMIT = 24  # consecutive overflows that are divergence (scale / 2^24)


@dataclass
class Event:
    step: int
    kind: str  # DIVERGED, LOSS_RISE, ... , UPDATE_SKIPPED, AMP_OVERFLOW (the constants above)
    value: float  # the loss, the rise, or the spiking value
    detail: str


class _Window:
    """The previous ``size`` values with their running mean and population std."""

    def __init__(self, size: int) -> None:
        self.values: deque[float] = deque(maxlen=size)

    def zscore(self, x: float) -> tuple[float, float, float]:
        n = len(self.values)
        mu = math.fsum(self.values) / n
        var = math.fsum((v - mu) ** 2 for v in self.values) / n
        return mu, math.sqrt(var), x - mu


class InstabilityDetector:
    def __init__(
        self,
        max_loss_ratio: float | None = 10.0,
        ema_decay: float = 0.9,
        rise_margin: float = 0.1,
        spike_window: int = 128,
        spike_min_history: int = 64,
        spike_zscore: float = 6.0,
        grad_norm_spikes_are_instability: bool = False,
    ) -> None:
        if spike_min_history > spike_window:
            raise ValueError("spike_min_history must be <= spike_window")
        self.max_loss_ratio = max_loss_ratio
        self.ema_decay = ema_decay
        self.rise_margin = rise_margin
        self.spike_window = spike_window
        self.spike_min_history = spike_min_history
        self.spike_zscore = spike_zscore
        self.grad_norm_spikes_are_instability = grad_norm_spikes_are_instability
        self.initial_loss: float | None = None
        self.ema: float | None = None
        self.ema_min = math.inf
        self.max_loss_rise = 0.0
        self._rising = False
        self._loss_window = _Window(spike_window)
        self._grad_window = _Window(spike_window)
        self.events: list[Event] = []
        self.steps_seen = 0
        self.eval_first: float | None = None
        self.eval_min = math.inf
        self.max_val_loss_rise = 0.0
        self._eval_rising = False
        self.overflow_run = 0  # consecutive float16 overflows (amp_overflow) so far

    # ------------------------------------------------------------------ feeding
    @property
    def diverged(self) -> Event | None:
        return next((e for e in self.events if e.kind == DIVERGED), None)

    def update(
        self,
        step: int,
        loss: float,
        grad_norm: float | None = None,
        skipped: bool = False,
        amp_overflow: bool = False,
    ) -> list[Event]:
        """Analyse one step; return the events it raised (none once diverged). A step whose
        update was skipped (``skip_spikes``) left the model as it was: it raises one
        ``update_skipped`` event and enters neither the divergence check nor the windows.
        So does a step whose float16 gradients overflowed under a GradScaler
        (``amp_overflow``: the scaler skipped it), with a finite loss, unless it is the
        ``AMP_OVERFLOW_LIMIT``-th in a row."""
        if self.diverged is not None:
            return []
        if amp_overflow and math.isfinite(loss):
            return self._overflowed(step, loss)
        self.overflow_run = 0
        if skipped:
            value = loss if grad_norm is None else grad_norm
            new = [Event(step, UPDATE_SKIPPED, value, f"loss {loss:.4g}: update skipped")]
            self.events += new
            return new
        self.steps_seen += 1
        new = self._divergence(step, loss, grad_norm)
        if new:
            self.events += new
            return new
        if self.initial_loss is None:
            self.initial_loss = loss
        new += self._rise(step, loss)
        new += self._spike(step, loss, self._loss_window, LOSS_SPIKE, "loss", self._margin())
        if grad_norm is not None:
            new += self._spike(step, grad_norm, self._grad_window, GRAD_NORM_SPIKE, "grad norm")
        self.events += new
        return new

    def update_eval(self, step: int, val_loss: float) -> list[Event]:
        """Analyse one dense evaluation (after ``step`` updates)."""
        if self.diverged is not None:
            return []
        if self.eval_first is None:
            self.eval_first = val_loss
        finite = math.isfinite(val_loss)
        if finite:
            self.eval_min = min(self.eval_min, val_loss)
        rise = val_loss - self.eval_min if finite else math.inf
        if finite:
            self.max_val_loss_rise = max(self.max_val_loss_rise, rise)
        v0 = self.eval_first
        margin = self.rise_margin * v0 if math.isfinite(v0) and v0 > 0 else math.inf
        new = []
        if not self._eval_rising and rise > margin:
            self._eval_rising = True
            detail = (
                f"validation loss {val_loss:.4g} rose {rise:.4g} above its minimum "
                f"{self.eval_min:.4g} so far (margin {margin:.4g})"
            )
            new.append(Event(step, VAL_LOSS_RISE, val_loss, detail))
        elif self._eval_rising and rise <= margin / 2:
            self._eval_rising = False
        self.events += new
        return new

    def _divergence(self, step: int, loss: float, grad_norm: float | None) -> list[Event]:
        if not math.isfinite(loss):
            return [Event(step, DIVERGED, loss, f"training loss is {loss}")]
        if grad_norm is not None and not math.isfinite(grad_norm):
            return [Event(step, DIVERGED, grad_norm, f"gradient norm is {grad_norm}")]
        l0, ratio = self.initial_loss, self.max_loss_ratio
        if ratio is not None and l0 is not None and l0 > 0 and loss > ratio * l0:
            detail = f"training loss {loss:.4g} > {ratio:g} x initial loss {l0:.4g}"
            return [Event(step, DIVERGED, loss, detail)]
        return []

    def _overflowed(self, step: int, loss: float) -> list[Event]:
        self.overflow_run += 1
        n = self.overflow_run
        if n >= AMP_OVERFLOW_LIMIT:
            detail = (
                f"the float16 gradients overflowed at {n} consecutive steps (the GradScaler "
                f"skipped each update and cut its loss scale {2**n:,}-fold)"
            )
            new = [Event(step, DIVERGED, math.inf, detail)]
        else:
            detail = (
                f"loss {loss:.4g}: gradients overflowed float16; the GradScaler skipped the update"
            )
            new = [Event(step, AMP_OVERFLOW, loss, detail)]
        self.events += new
        return new

    def _rise(self, step: int, loss: float) -> list[Event]:
        b = self.ema_decay
        self.ema = loss if self.ema is None else b * self.ema + (1 - b) * loss
        self.ema_min = min(self.ema_min, self.ema)
        rise = self.ema - self.ema_min
        self.max_loss_rise = max(self.max_loss_rise, rise)
        margin = self._margin()
        if not self._rising and rise > margin:
            self._rising = True
            detail = (
                f"smoothed loss {self.ema:.4g} rose {rise:.4g} above its minimum "
                f"{self.ema_min:.4g} (margin {margin:.4g})"
            )
            return [Event(step, LOSS_RISE, rise, detail)]
        if self._rising and rise <= margin / 2:
            self._rising = False
        return []

    def _margin(self) -> float:
        """The smallest loss increase that counts: ``rise_margin * L_0``."""
        l0 = self.initial_loss
        return self.rise_margin * l0 if l0 is not None and l0 > 0 else math.inf

    def _spike(
        self, step: int, x: float, window: _Window, kind: str, what: str, min_dev: float = 0.0
    ) -> list[Event]:
        out = []
        if len(window.values) >= self.spike_min_history:
            mu, sd, dev = window.zscore(x)
            if sd > 0 and dev > self.spike_zscore * sd and dev > min_dev:
                z = dev / sd
                detail = f"{what} {x:.4g} is {z:.1f} sd above the mean {mu:.4g} of the window"
                out.append(Event(step, kind, x, detail))
        window.values.append(x)
        return out

    # ------------------------------------------------------------------ results
    def count(self, kind: str) -> int:
        return sum(e.kind == kind for e in self.events)

    def first(self, *kinds: str) -> int | None:
        steps = [e.step for e in self.events if e.kind in kinds]
        return min(steps) if steps else None

    @property
    def instability_kinds(self) -> tuple[str, ...]:
        kinds = (DIVERGED, LOSS_RISE, LOSS_SPIKE, VAL_LOSS_RISE)
        return (*kinds, GRAD_NORM_SPIKE) if self.grad_norm_spikes_are_instability else kinds

    def summary(self) -> dict[str, Any]:
        d = self.diverged
        first = self.first(*self.instability_kinds)
        return {
            "diverged": d is not None,
            "diverged_at_step": d.step if d else None,
            "divergence_reason": d.detail if d else None,
            "unstable": first is not None,
            "first_instability_step": first,
            "loss_rise_step": self.first(LOSS_RISE),
            "loss_rises": self.count(LOSS_RISE),
            "max_loss_rise": self.max_loss_rise,
            "loss_spikes": self.count(LOSS_SPIKE),
            "grad_norm_spikes": self.count(GRAD_NORM_SPIKE),
            "first_loss_spike_step": self.first(LOSS_SPIKE),
            "first_grad_norm_spike_step": self.first(GRAD_NORM_SPIKE),
            "val_loss_rises": self.count(VAL_LOSS_RISE),
            "val_loss_rise_step": self.first(VAL_LOSS_RISE),
            "max_val_loss_rise": self.max_val_loss_rise if self.eval_first is not None else None,
            "initial_loss": self.initial_loss,
            "amp_overflow_steps": self.count(AMP_OVERFLOW),
            "amp_overflow_step_list": [e.step for e in self.events if e.kind == AMP_OVERFLOW][:100],
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "initial_loss": self.initial_loss,
            "ema": self.ema,
            "ema_min": self.ema_min,
            "max_loss_rise": self.max_loss_rise,
            "rising": self._rising,
            "loss_window": list(self._loss_window.values),
            "grad_window": list(self._grad_window.values),
            "events": [asdict(e) for e in self.events],
            "steps_seen": self.steps_seen,
            "eval": [self.eval_first, self.eval_min, self.max_val_loss_rise, self._eval_rising],
            "overflow_run": self.overflow_run,
        }

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.initial_loss, self.ema, self.ema_min = s["initial_loss"], s["ema"], s["ema_min"]
        self.max_loss_rise, self._rising = s["max_loss_rise"], s["rising"]
        # replace, not append: loading into a used detector (or twice) restores exactly
        self._loss_window.values.clear()
        self._loss_window.values.extend(s["loss_window"])
        self._grad_window.values.clear()
        self._grad_window.values.extend(s["grad_window"])
        self.events = [Event(**e) for e in s["events"]]
        self.steps_seen = s["steps_seen"]
        if "eval" in s:
            self.eval_first, self.eval_min, self.max_val_loss_rise, self._eval_rising = s["eval"]
        self.overflow_run = int(s.get("overflow_run", 0))


class TrainingDiverged(RuntimeError):
    """Raised by the divergence guard to stop ``trainer.fit`` cleanly."""

    def __init__(
        self,
        step: int,
        reason: str,
        fail: bool = False,
        rollback: tuple[int, float] | None = None,
    ) -> None:
        super().__init__(f"training diverged at step {step}: {reason}")
        self.step = step
        self.reason = reason
        self.fail = fail
        # (batches to skip, LR factor) when the guard asks for a rollback instead of an end
        self.rollback = rollback
