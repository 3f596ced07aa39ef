"""ECA (Wang et al., CVPR 2020): a 1-D conv across the pooled channel vector, no reduction.

The kernel size adapts to the width: k = |log2(C)/γ + b/γ| rounded up to odd (γ=2, b=1),
unless ``kernel`` is given.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from caprobe.attention.base import (
    ChannelGateAttention,
    DeployedAttention,
    GraphAttention,
    conv_from,
    graph_nonlinearity,
    inplace_form,
    make_gate,
)


def eca_kernel_size(channels: int, gamma: int = 2, beta: int = 1) -> int:
    t = int(abs((math.log2(channels) + beta) / gamma))
    return t if t % 2 else t + 1


class ECA(ChannelGateAttention):
    gate_layers = ("conv",)

    def __init__(self, channels: int, kernel: int | None = None, gate: str = "sigmoid",
                 inplace: bool = False) -> None:
        super().__init__(inplace)
        k = kernel or eca_kernel_size(channels)
        self.conv = nn.Conv1d(1, 1, k, padding=k // 2, bias=False)
        self.gate = make_gate(gate)

    def _channel_gate(self, mean: torch.Tensor) -> torch.Tensor:
        """N×C: the 1-D conv across the pooled vector."""
        return self.gate(self.conv(mean.unsqueeze(1))).squeeze(1)

    def fuse(self) -> DeployedECA:
        return DeployedECA(self.conv.weight, gate=inplace_form(self.gate), spec=self.spec,
                           overwrite=self.inplace)

    def graph_form(self) -> GraphECA:
        k = self.conv.weight.shape[-1]
        return GraphECA(conv_from(self.conv.weight[:, :, None, :], None, padding=(0, k // 2)),
                        graph_nonlinearity(self.gate), self.spec)


class GraphECA(GraphAttention):
    """ECA's graph form: the pooled channel vector laid out along W (N×1×1×C) so that the
    k-tap conv across channels is a 1×k conv2d (zero padding k // 2), then back to N×C×1×1."""

    gates = ("channel",)

    def __init__(self, conv: nn.Conv2d, gate: nn.Module, spec: str = "eca") -> None:
        super().__init__(spec)
        self.conv, self.gate = conv, gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.mean((2, 3), keepdim=True).permute(0, 3, 2, 1)  # N×1×1×C
        return x * self.gate(self.conv(z)).permute(0, 3, 2, 1)


class DeployedECA(DeployedAttention):
    """ECA's deployed form: the 1×1×k ``weight`` (zero padding k // 2), in-place ``gate``."""

    def __init__(self, weight: torch.Tensor, *, gate, spec: str = "eca",
                 overwrite: bool = False) -> None:
        super().__init__(spec, overwrite)
        self.register_buffer("weight", weight.detach().clone())
        self.gate_fn = gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.conv1d(x.mean((2, 3)).unsqueeze(1), self.weight, padding=self.weight.shape[-1] // 2)
        g = self.gate_fn(z).squeeze(1)[:, :, None, None]
        return x.mul_(g) if self.overwrite else x * g
