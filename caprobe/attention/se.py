"""Squeeze-and-Excitation (Hu et al., CVPR 2018), as the CA author's baseline.

Global average pool → 1×1 conv C→C//r (bias) → δ → 1×1 conv C//r→C (bias) → σ; the default
r=24, δ=ReLU6, σ=sigmoid is the baseline of the CA paper. The hidden width is floored at
``min_hidden`` (1) so that narrow networks build (MobileNeXt-0.5 has 16-channel blocks).
MobileNetV3/timm's form is ``se:reduction=4,act=relu,gate=hsigmoid``.
"""

from __future__ import annotations

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
    linear,
    make_act,
    make_gate,
)


class SqueezeExcite(ChannelGateAttention):
    gate_layers = ("fc2",)

    def __init__(self, channels: int, reduction: int = 24, min_hidden: int = 1,
                 act: str = "relu6", gate: str = "sigmoid", inplace: bool = False) -> None:
        super().__init__(inplace)
        hidden = max(min_hidden, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=True)
        self.act = make_act(act)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=True)
        self.gate = make_gate(gate)

    def _channel_gate(self, mean: torch.Tensor) -> torch.Tensor:
        """N×C: the FCs as GEMMs on the pooled vectors."""
        return self.gate(linear(self.fc2, self.act(linear(self.fc1, mean))))

    def fuse(self) -> DeployedSqueezeExcite:
        return DeployedSqueezeExcite(
            self.fc1.weight.flatten(1), self.fc1.bias, self.fc2.weight.flatten(1),
            self.fc2.bias, act=inplace_form(self.act), gate=inplace_form(self.gate),
            spec=self.spec, overwrite=self.inplace)

    def graph_form(self) -> GraphSqueezeExcite:
        return GraphSqueezeExcite(conv_from(self.fc1.weight, self.fc1.bias),
                                  conv_from(self.fc2.weight, self.fc2.bias),
                                  graph_nonlinearity(self.act),
                                  graph_nonlinearity(self.gate), self.spec)


class GraphSqueezeExcite(GraphAttention):
    """SE's graph form: a mean over H and W together (kept 4-D: a global average pool in every
    runtime), the FCs as 1×1 convs, ``x · g``."""

    gates = ("channel",)

    def __init__(self, fc1: nn.Conv2d, fc2: nn.Conv2d, act: nn.Module, gate: nn.Module,
                 spec: str = "se") -> None:
        super().__init__(spec)
        self.fc1, self.fc2, self.act, self.gate = fc1, fc2, act, gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))))


class DeployedSqueezeExcite(DeployedAttention):
    """SE's deployed form: ``w1``/``b1`` (hidden×C, hidden), ``w2``/``b2`` (C×hidden, C),
    in-place ``act`` and ``gate``; ``overwrite`` writes the output into the input."""

    def __init__(self, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
                 *, act, gate, spec: str = "se", overwrite: bool = False) -> None:
        super().__init__(spec, overwrite)
        for name, value in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)):
            self.register_buffer(name, value.detach().clone())
        self.act, self.gate_fn = act, gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.act(F.linear(x.mean((2, 3)), self.w1, self.b1))
        g = self.gate_fn(F.linear(z, self.w2, self.b2))[:, :, None, None]
        return x.mul_(g) if self.overwrite else x * g
