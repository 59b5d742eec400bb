"""Models (plain torch, no Lightning): residual blocks, the MLP / ResNet1D / Transformer
classifiers and the GPT decoder."""

from stablelab.models.blocks import Norm, ResidualBlock
from stablelab.models.gpt import GPT, CausalSelfAttention
from stablelab.models.nets import MLP, ResNet1D, SelfAttention, Transformer

__all__ = [
    "GPT",
    "MLP",
    "CausalSelfAttention",
    "Norm",
    "ResNet1D",
    "ResidualBlock",
    "SelfAttention",
    "Transformer",
]
