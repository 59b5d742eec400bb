"""The vocabulary of config schemas, free of Hydra and OmegaConf: constraint types for
annotations (``Annotated[float, Range(gt=0)]``, ``PosInt``, ``Prob``, ...), the residual
spec, and :class:`ConfigError`. Models, update rules, schedules, clippers, datamodules and
callbacks annotate their parameters with these; :mod:`stablelab.config` checks configs
against them. Importing this module imports nothing but the standard library, so
``import stablelab.optim`` and ``import stablelab.models`` need torch alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal


@dataclass(frozen=True)
class Range:
    """Allowed interval for a number: ``Annotated[float, Range(gt=0)]`` means > 0."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def check(self, v: float) -> str | None:
        if self.gt is not None and not v > self.gt:
            return f"must be > {self.gt}"
        if self.ge is not None and not v >= self.ge:
            return f"must be >= {self.ge}"
        if self.lt is not None and not v < self.lt:
            return f"must be < {self.lt}"
        if self.le is not None and not v <= self.le:
            return f"must be <= {self.le}"
        return None


PosInt = Annotated[int, Range(gt=0)]
NonNegInt = Annotated[int, Range(ge=0)]
PosFloat = Annotated[float, Range(gt=0)]
NonNegFloat = Annotated[float, Range(ge=0)]
Prob = Annotated[float, Range(ge=0, lt=1)]  # dropout, momentum-like coefficients
OpenUnit = Annotated[float, Range(gt=0, lt=1)]  # a fraction strictly inside (0, 1)

Layout = Literal["post_norm", "branch_norm", "pre_norm", "none"]
BranchInit = Literal["default", "zero", "rezero"]
NormKind = Literal["layernorm", "batchnorm", "rmsnorm", "none"]
Activation = Literal["relu", "gelu", "silu", "tanh"]


@dataclass
class ResidualSpec:
    """How a residual block combines its input x with its branch f.

    layout: ``post_norm`` = Norm(x + f(x)); ``branch_norm`` = x + Norm(f(x)) (the
    playbook's recommendation); ``pre_norm`` = x + f(Norm(x)); ``none`` = x + f(x).
    branch_init: ``default``; ``zero`` (the branch's last layer starts at 0); ``rezero``
    (x + a*f(x) with a learnable scalar a = 0 at initialisation).
    """

    layout: Layout = "branch_norm"
    branch_init: BranchInit = "default"


class ConfigError(ValueError):
    """A config value is invalid. The message lists every problem, one per line."""

    def __init__(self, problems: list[str], headline: str = "Invalid config (nothing was started)"):
        self.problems = problems
        super().__init__(f"{headline}:\n" + "\n".join(f"  - {p}" for p in problems))


def first_line(e: BaseException) -> str:
    """``Type: the first line of the message`` (for one-line error reports)."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def raise_problems(problems: list[str], prefix: str) -> None:
    """For constructors: raise the same problems ``config_problems`` reports."""
    if problems:
        raise ConfigError([f"{prefix}.{p}" for p in problems])
