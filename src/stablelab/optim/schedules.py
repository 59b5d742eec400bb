"""Learning-rate schedules: the playbook's warmup prepended to a decay.

The LR at step s (the s-th optimizer update, counting from 0) is
``base_learning_rate * schedule(s)`` where, with W = ``warmup_steps`` and
P = ``post_warmup_steps``::

    schedule(s) = s / W                     for s < W        (linear ramp from 0)
                = 1                         for W <= s < W+P (constant after warmup)
                = decay(s - W - P, T)       for s >= W+P     (T = total - W - P)

``decay(t, T)`` starts at 1 when t = 0. The run trains ``total_steps`` updates:
``max_train_steps``, or ``max_train_steps + warmup_steps`` with
``extend_max_train_steps`` (the playbook: a 10,000-step baseline plus 1,000 warmup steps
trains 11,000 steps). Each schedule is a small object of plain numbers, rebuilt from the
config: the module hands ``LambdaLR`` a function of it, so a checkpoint holds no schedule
state and a resumed run follows its own config.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Annotated

from stablelab.constraints import NonNegFloat, NonNegInt, PosFloat, PosInt, Range, raise_problems

Fraction = Annotated[float, Range(ge=0, le=1)]


class WarmupScheduleWarning(UserWarning):
    """warmup_steps is long relative to max_train_steps (playbook: 5% and 10% rules)."""


class Schedule:
    """Warmup (0 -> 1 over ``warmup_steps``), hold for ``post_warmup_steps``, then decay."""

    name = "schedule"

    def __init__(
        self,
        max_train_steps: PosInt,
        warmup_steps: NonNegInt = 0,
        post_warmup_steps: NonNegInt = 0,
        extend_max_train_steps: bool = False,
    ) -> None:
        self.max_train_steps = int(max_train_steps)
        self.warmup_steps = int(warmup_steps)
        self.post_warmup_steps = int(post_warmup_steps)
        self.extend_max_train_steps = bool(extend_max_train_steps)
        raise_problems(self.config_problems(vars(self)), "schedule")

    @staticmethod
    def config_problems(c: dict) -> list[str]:
        total = c["max_train_steps"] + (c["warmup_steps"] if c["extend_max_train_steps"] else 0)
        if c["warmup_steps"] + c["post_warmup_steps"] > total:
            return [
                f"warmup_steps + post_warmup_steps = {c['warmup_steps'] + c['post_warmup_steps']}"
                f": must be <= the run's {total} steps"
            ]
        return []

    @property
    def total_steps(self) -> int:
        """Optimizer updates the run trains."""
        extra = self.warmup_steps if self.extend_max_train_steps else 0
        return self.max_train_steps + extra

    def warn_if_long_warmup(self) -> str | None:
        """The playbook's rules: warmup above 10% of max_train_steps is beyond the feasible
        range of a warmup sweep; above 5%, max_train_steps should grow to make room."""
        frac = self.warmup_steps / self.max_train_steps
        msg = None
        if frac > 0.10:
            msg = (
                f"warmup_steps={self.warmup_steps} is {frac:.0%} of max_train_steps="
                f"{self.max_train_steps}: above the playbook's 10% maximum; "
                "increase max_train_steps (or use extend_max_train_steps=true)."
            )
        elif frac > 0.05:
            msg = (
                f"warmup_steps={self.warmup_steps} is {frac:.0%} of max_train_steps="
                f"{self.max_train_steps}: above 5%, the playbook advises increasing "
                "max_train_steps to account for the warmup (extend_max_train_steps=true)."
            )
        if msg and not self.extend_max_train_steps:
            warnings.warn(msg, WarmupScheduleWarning, stacklevel=2)
            return msg
        return None

    def decay(self, t: int, T: int) -> float:
        """Multiplier ``t`` steps into the decay phase of length ``T`` (1 at t = 0)."""
        return 1.0

    def __call__(self, step: int) -> float:
        W, P = self.warmup_steps, self.post_warmup_steps
        if step < W:
            return step / W
        if step < W + P:
            return 1.0
        T = max(self.total_steps - W - P, 1)
        return self.decay(min(step - W - P, T), T)


class Constant(Schedule):
    """decay(t, T) = 1."""

    name = "constant"


class _ToFinalFraction(Schedule):
    """A decay from 1 to ``final_lr_fraction`` (f) of the base LR over the decay phase."""

    def __init__(self, *args, final_lr_fraction: Fraction = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.final_lr_fraction = float(final_lr_fraction)


class Cosine(_ToFinalFraction):
    """decay(t, T) = f + (1 - f) * (1 + cos(pi t / T)) / 2, f = ``final_lr_fraction``."""

    name = "cosine"

    def decay(self, t: int, T: int) -> float:
        f = self.final_lr_fraction
        return f + (1 - f) * 0.5 * (1 + math.cos(math.pi * t / T))


class Linear(_ToFinalFraction):
    """decay(t, T) = 1 - (1 - f) t / T, f = ``final_lr_fraction``."""

    name = "linear"

    def decay(self, t: int, T: int) -> float:
        return 1 - (1 - self.final_lr_fraction) * t / T


class RSqrt(Schedule):
    """decay(t, T) = 1 / sqrt(1 + t / ``timescale``) (inverse square root)."""

    name = "rsqrt"

    def __init__(self, *args, timescale: PosFloat = 1000.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.timescale = float(timescale)

    def decay(self, t: int, T: int) -> float:
        return 1 / math.sqrt(1 + t / self.timescale)


class Step(Schedule):
    """decay(t, T) = gamma ** (number of milestones m with t >= m * T).

    ``milestones`` are fractions of the decay phase (default: x0.1 at 50% and 75%).
    """

    name = "step"

    def __init__(
        self,
        *args,
        milestones: Sequence[Fraction] = (0.5, 0.75),
        gamma: NonNegFloat = 0.1,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.milestones = [float(m) for m in milestones]
        self.gamma = float(gamma)

    def decay(self, t: int, T: int) -> float:
        return self.gamma ** sum(t >= m * T for m in self.milestones)
