"""A model of your own: plain torch, no stablelab imports.

The contract (stablelab.contract): the constructor takes ``input_spec`` and ``num_classes``
(stablelab passes them from the datamodule); ``forward`` returns ``(batch, num_classes)``
logits. Everything else is yours and comes from the config file beside it.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn


class TinyConvNet(nn.Module):
    """Conv1d stem, ``depth`` residual conv blocks ``x + f(x)`` (or plain ``f(x)`` with
    ``residual: false``), global average pooling, a linear head. Inputs (B, length) or
    (B, channels, length)."""

    def __init__(
        self,
        input_spec: dict[str, Any],
        num_classes: int,
        width: int = 32,
        depth: int = 2,
        kernel_size: int = 5,
        residual: bool = True,
        norm: Literal["batchnorm", "none"] = "batchnorm",
    ) -> None:
        super().__init__()
        if input_spec["kind"] != "real":
            raise ValueError("TinyConvNet takes real-valued inputs")
        self.residual = residual
        pad = kernel_size // 2

        def norm_layer() -> nn.Module:
            return nn.BatchNorm1d(width) if norm == "batchnorm" else nn.Identity()

        self.stem = nn.Sequential(
            nn.Conv1d(input_spec["channels"], width, kernel_size, padding=pad), norm_layer()
        )
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.ReLU(),
                nn.Conv1d(width, width, kernel_size, padding=pad),
                norm_layer(),
                nn.ReLU(),
                nn.Conv1d(width, width, kernel_size, padding=pad),
                norm_layer(),
            )
            for _ in range(depth)
        )
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x.unsqueeze(1) if x.dim() == 2 else x)
        for block in self.blocks:
            h = h + block(h) if self.residual else block(h)
        return self.head(torch.relu(h).mean(-1))
