"""Update rules, LR schedules and gradient clipping (plain torch, no Lightning)."""

from stablelab.optim.rules import (
    SGD,
    Adam,
    Momentum,
    NAdam,
    Nesterov,
    RMSProp,
    weight_decay_groups,
)

__all__ = ["SGD", "Adam", "Momentum", "NAdam", "Nesterov", "RMSProp", "weight_decay_groups"]
