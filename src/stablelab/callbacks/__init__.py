"""Lightning callbacks: evaluation history, gradient-norm telemetry, the divergence guard
and instability detection, dense early evaluation, update-to-weight ratios, and the
checkpoint callbacks that make a resumed run end as an uninterrupted one."""

from stablelab.callbacks.checkpoint import MetricsFile, ModelCheckpoint
from stablelab.callbacks.curvature import NoiseScaleMonitor, SharpnessMonitor
from stablelab.callbacks.dense_eval import DenseEval
from stablelab.callbacks.faults import InjectSpikes
from stablelab.callbacks.grad_norm import GradNormMonitor
from stablelab.callbacks.history import EvalHistory
from stablelab.callbacks.interruption import Interruption
from stablelab.callbacks.lm_monitor import LMMonitor
from stablelab.callbacks.progress import RunProgress
from stablelab.callbacks.stability import StabilityMonitor
from stablelab.callbacks.update_ratio import UpdateRatioMonitor

__all__ = [
    "DenseEval",
    "EvalHistory",
    "GradNormMonitor",
    "InjectSpikes",
    "Interruption",
    "LMMonitor",
    "MetricsFile",
    "ModelCheckpoint",
    "NoiseScaleMonitor",
    "RunProgress",
    "SharpnessMonitor",
    "StabilityMonitor",
    "UpdateRatioMonitor",
]
