"""ECA (Wang et al., CVPR 2020): a 1-D conv across the pooled channel vector, no reduction.

The kernel size adapts to the width: k = |log2(C)/γ + b/γ| rounded up to odd (γ=2, b=1),
unless ``kernel`` is given.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from caprobe.attention.base import AttentionModule, apply_gates, inference_fast_path, make_gate
from caprobe.attention.functional import channel_mean, gate_product


def eca_kernel_size(channels: int, gamma: int = 2, beta: int = 1) -> int:
    t = int(abs((math.log2(channels) + beta) / gamma))
    return t if t % 2 else t + 1


class ECA(AttentionModule):
    gate_layers = ("conv",)

    def __init__(self, channels: int, kernel: int | None = None, gate: str = "sigmoid") -> None:
        super().__init__()
        k = kernel or eca_kernel_size(channels)
        self.conv = nn.Conv1d(1, 1, k, padding=k // 2, bias=False)
        self.gate = make_gate(gate)

    def _gate(self, x: torch.Tensor) -> torch.Tensor:
        """N×C."""
        return self.gate(self.conv(channel_mean(x).unsqueeze(1))).squeeze(1)

    def gates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"channel": N×C×1×1}``."""
        return {"channel": self._gate(x)[:, :, None, None]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if inference_fast_path(self):
            return apply_gates(self, x, [self._gate(x)[:, :, None, None]])
        return gate_product(x, self._gate(x)[:, None, None])
