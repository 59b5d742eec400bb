"""Lightning callbacks: evaluation history (more stability callbacks follow)."""

from stablelab.callbacks.history import EvalHistory

__all__ = ["EvalHistory"]
