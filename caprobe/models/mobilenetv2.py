"""MobileNetV2 (Sandler et al., 2018) with attention after the depthwise conv.

As in the CA paper's official ``mbv2_ca.py``: pw expand → dw 3×3 → attention → pw linear
projection, attention on the expanded (hidden) channels, only in blocks with expansion t ≠ 1.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from caprobe import attention
from caprobe.models.common import (
    Backbone,
    Row,
    conv_bn,
    make_divisible,
    profile_strides,
    unit_then_attention,
)

#: (t, c, n, s): expansion, output channels, repeats, stride of the first repeat.
ROWS: list[Row] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int,
                 attn: str | None) -> None:
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_residual = stride == 1 and inp == oup
        self.expand = conv_bn(inp, hidden) if expand_ratio != 1 else nn.Identity()
        self.dw = conv_bn(hidden, hidden, 3, stride, groups=hidden)
        self.attn = (attention.build(attn, hidden, inplace=True) if expand_ratio != 1
                     else nn.Identity())
        self.project = conv_bn(hidden, oup, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = unit_then_attention(self.dw, self.attn, self.project, self.expand(x))
        return x + y if self.use_residual else y


def mobilenetv2(attn: str | None = None, width: float = 1.0, num_classes: int = 1000,
                profile: str = "imagenet") -> Backbone:
    stem_stride, strides = profile_strides(ROWS, profile)
    channels = make_divisible(32 * width)
    last_channels = make_divisible(1280 * max(1.0, width))
    layers: OrderedDict[str, nn.Module] = OrderedDict(stem=conv_bn(3, channels, 3, stem_stride))
    for index, ((t, c, n, _), stride) in enumerate(zip(ROWS, strides, strict=True), start=1):
        out = make_divisible(c * width)
        blocks = []
        for i in range(n):
            blocks.append(InvertedResidual(channels, out, stride if i == 0 else 1, t, attn))
            channels = out
        layers[f"stage{index}"] = nn.Sequential(*blocks)
    layers["head"] = conv_bn(channels, last_channels)
    return Backbone(nn.Sequential(layers), last_channels, num_classes)
