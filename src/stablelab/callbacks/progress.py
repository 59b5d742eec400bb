"""Progress of the whole run, in optimizer steps (Lightning's bar counts batches per epoch).

On a terminal: one bar for the run, ``step / total`` with the run's elapsed time and ETA,
the training loss (refreshed every ``refresh_rate`` steps), the LR and the last validation
loss. Not on a terminal (a log file, CI, a workflow's trial): no carriage returns, one plain
line every ``plain_every`` steps (default: every 5% of the run, but not more often than
the training loss is logged, ``trainer.log_every_n_steps``) and at the end::

    step 300/1500 (20%)  loss 0.4121  lr 3e-03  val 0.3984  elapsed 0:12  ETA 0:48

The ETA counts everything the run does per step so far (validations included). Rank zero
only. ``refresh_rate=0`` turns it off. The loss shown is the last logged one, read only when
the bar refreshes (no extra host sync per step).
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any

from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar

from stablelab.constraints import NonNegInt, PosInt


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class RunProgress(ProgressBar):
    def __init__(
        self,
        refresh_rate: NonNegInt = 10,
        plain_every: PosInt | None = None,
        terminal: bool | None = None,
    ) -> None:
        """``terminal``: force the bar (true) or the plain lines (false); null: the bar
        when standard error is a terminal. ``STABLELAB_PROGRESS=plain`` in the environment
        (a workflow's trials) means plain lines whatever ``terminal`` says."""
        super().__init__()
        self.refresh_rate = refresh_rate
        self.plain_every = plain_every
        self.terminal = terminal
        self._enabled = refresh_rate > 0
        self._bar: Any = None
        self._t0 = 0.0
        self._step0 = 0
        self._val: float | None = None

    # ---------------------------------------------------------------- the ProgressBar API
    @property
    def is_enabled(self) -> bool:
        return self._enabled

    @property
    def is_disabled(self) -> bool:
        return not self._enabled

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = self.refresh_rate > 0

    def print(self, *args: Any, **kwargs: Any) -> None:
        if self._bar is not None:
            self._bar.write(" ".join(map(str, args)), file=sys.stderr)
        else:
            print(*args, file=sys.stderr, **kwargs)

    # ---------------------------------------------------------------- what it shows
    def _on_terminal(self) -> bool:
        if os.environ.get("STABLELAB_PROGRESS") == "plain":  # a workflow's trial
            return False
        return sys.stderr.isatty() if self.terminal is None else self.terminal

    def _total(self) -> int:
        return max(1, int(self.trainer.max_steps))

    def _every(self) -> int:
        """``plain_every``, else 5% of the run but not more often than the training loss is
        logged (a 100-step run logging every 10 would print each loss twice)."""
        if self.plain_every:
            return self.plain_every
        logged = int(getattr(self.trainer, "log_every_n_steps", 1) or 1)
        return max(1, math.ceil(self._total() / 20), logged)

    def _fields(self) -> dict[str, str]:
        trainer = self.trainer
        out = {}
        loss = trainer.progress_bar_metrics.get("train/loss")
        if loss is not None:
            out["loss"] = f"{float(loss):#.4g}"  # (#: 0.3000, not 0.3, beside 0.3110)
        if trainer.optimizers:
            out["lr"] = f"{trainer.optimizers[0].param_groups[0]['lr']:.3g}"
        if self._val is not None:
            out["val"] = f"{self._val:#.4g}"
        return out

    def line(self, step: int) -> str:
        """The plain line for ``step`` (also what the bar's postfix holds)."""
        total = self._total()
        done = step - self._step0
        elapsed = time.perf_counter() - self._t0
        eta = elapsed / done * (total - step) if done > 0 else math.nan
        fields = "  ".join(f"{k} {v}" for k, v in self._fields().items())
        eta_s = _clock(eta) if math.isfinite(eta) else "?"
        return (
            f"step {step}/{total} ({step / total:.0%})  {fields}  "
            f"elapsed {_clock(elapsed)}  ETA {eta_s}"
        )

    # ---------------------------------------------------------------- hooks
    def on_train_start(self, trainer, pl_module) -> None:
        if self.is_disabled:
            return
        self._t0 = time.perf_counter()
        self._step0 = trainer.global_step
        if self._on_terminal():
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=self._total(), initial=self._step0, desc="train", unit="step",
                file=sys.stderr, dynamic_ncols=True, leave=True, smoothing=0.05,
            )  # fmt: skip

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.is_disabled:
            return
        step, total = trainer.global_step, self._total()
        if self._bar is not None:
            if step % self.refresh_rate == 0 or step >= total:
                self._bar.n = step
                self._bar.set_postfix(self._fields(), refresh=False)
                self._bar.refresh()
        elif step % self._every() == 0 or step >= total:
            self.print(self.line(step))

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.is_disabled or trainer.sanity_checking:
            return
        val = trainer.callback_metrics.get("val/loss")
        self._val = float(val) if val is not None else self._val

    def on_train_end(self, trainer, pl_module) -> None:
        if self._bar is not None:
            self._bar.n = trainer.global_step
            self._bar.set_postfix(self._fields(), refresh=False)
            self._bar.close()
            self._bar = None
        if self.is_enabled:
            elapsed = time.perf_counter() - self._t0
            self.print(f"trained to step {trainer.global_step} in {_clock(elapsed)}")

    def on_test_start(self, trainer, pl_module) -> None:
        if self.is_enabled:
            self.print("evaluating the test split ...")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
