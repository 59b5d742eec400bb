"""Models (plain torch, no Lightning): residual blocks and the MLP / ResNet1D / Transformer."""

from stablelab.models.blocks import Norm, ResidualBlock
from stablelab.models.nets import MLP, ResNet1D, SelfAttention, Transformer

__all__ = ["MLP", "Norm", "ResNet1D", "ResidualBlock", "SelfAttention", "Transformer"]
