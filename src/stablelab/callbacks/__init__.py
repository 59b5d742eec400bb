"""Lightning callbacks: evaluation history and gradient-norm telemetry."""

from stablelab.callbacks.grad_norm import GradNormMonitor
from stablelab.callbacks.history import EvalHistory

__all__ = ["EvalHistory", "GradNormMonitor"]
