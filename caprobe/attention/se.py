"""Squeeze-and-Excitation (Hu et al., CVPR 2018), as the CA author's baseline.

Global average pool → 1×1 conv C→C//r (bias) → δ → 1×1 conv C//r→C (bias) → σ; the default
r=24, δ=ReLU6, σ=sigmoid is the baseline of the CA paper. The hidden width is floored at
``min_hidden`` (1) so that narrow networks build (MobileNeXt-0.5 has 16-channel blocks).
MobileNetV3/timm's form is ``se:reduction=4,act=relu,gate=hsigmoid``.
"""

from __future__ import annotations

import torch
from torch import nn

from caprobe.attention.base import (
    AttentionModule,
    apply_gates,
    inference_fast_path,
    linear,
    make_act,
    make_gate,
)
from caprobe.attention.functional import channel_mean, gate_product


class SqueezeExcite(AttentionModule):
    gate_layers = ("fc2",)

    def __init__(self, channels: int, reduction: int = 24, min_hidden: int = 1,
                 act: str = "relu6", gate: str = "sigmoid") -> None:
        super().__init__()
        hidden = max(min_hidden, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=True)
        self.act = make_act(act)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=True)
        self.gate = make_gate(gate)

    def _gate(self, x: torch.Tensor) -> torch.Tensor:
        """N×C: the FCs as GEMMs on the pooled vectors."""
        return self.gate(linear(self.fc2, self.act(linear(self.fc1, channel_mean(x)))))

    def gates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"channel": N×C×1×1}``."""
        return {"channel": self._gate(x)[:, :, None, None]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if inference_fast_path(self):
            return apply_gates(self, x, [self._gate(x)[:, :, None, None]])
        return gate_product(x, self._gate(x)[:, None, None])
