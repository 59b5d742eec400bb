"""Lightning callbacks: evaluation history, gradient-norm telemetry, the divergence guard
and instability detection, dense early evaluation and update-to-weight ratios."""

from stablelab.callbacks.dense_eval import DenseEval
from stablelab.callbacks.grad_norm import GradNormMonitor
from stablelab.callbacks.history import EvalHistory
from stablelab.callbacks.stability import StabilityMonitor
from stablelab.callbacks.update_ratio import UpdateRatioMonitor

__all__ = ["DenseEval", "EvalHistory", "GradNormMonitor", "StabilityMonitor", "UpdateRatioMonitor"]
