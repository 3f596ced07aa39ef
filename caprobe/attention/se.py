"""Squeeze-and-Excitation (Hu et al., CVPR 2018), as the CA author's baseline.

Global average pool → 1×1 conv C→C//r (bias) → δ → 1×1 conv C//r→C (bias) → σ; the default
r=24, δ=ReLU6, σ=sigmoid is the baseline of the CA paper. The hidden width is floored at
``min_hidden`` (1) so that narrow networks build (MobileNeXt-0.5 has 16-channel blocks).
MobileNetV3/timm's form is ``se:reduction=4,act=relu,gate=hsigmoid``.
"""

from __future__ import annotations

import torch
from torch import nn

from caprobe.attention.base import AttentionModule, make_act, make_gate


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

    def gates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"channel": N×C×1×1}``."""
        z = x.mean(dim=(2, 3), keepdim=True)
        return {"channel": self.gate(self.fc2(self.act(self.fc1(z))))}
