"""MobileNeXt (Zhou et al., ECCV 2020), the official layout, with attention after the first dw.

Sandglass block: dw 3×3 → attention → pw reduce (linear) → pw expand → dw 3×3 (linear, carries
the stride). ``t`` is a *reduction*: hidden = inp // t, raised to make_divisible(ceil(oup/6), 16)
when below oup/6. Transition blocks follow the official code (see :func:`_depthwise_convs`).

Documented choice: attention sits only in blocks that have the first dw conv (on its inp
channels); the five width-changing transition blocks without it get none. This is the layout
whose counts the reference figures give (MobileNeXt+CA 3,971,626, +SE 3,913,557 parameters).
"""

from __future__ import annotations

import math
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

#: (t, c, n, s): reduction ratio, output channels, repeats, stride of the first repeat.
ROWS: list[Row] = [
    (2, 96, 1, 2),
    (6, 144, 1, 1),
    (6, 192, 3, 2),
    (6, 288, 3, 2),
    (6, 384, 4, 1),
    (6, 576, 4, 2),
    (6, 960, 3, 1),
    (6, 1280, 1, 1),
]


def _depthwise_convs(inp: int, oup: int, stride: int, reduction: int,
                     lone: bool) -> tuple[bool, bool]:
    """(first dw, last dw) as in the official ``mnext.py``.

    Full sandglass for the first block (t=2), a stage of one stride-1 block (``lone``) and
    blocks with inp == oup; a width-changing block drops the first dw when it strides and
    both when it does not.
    """
    full = reduction == 2 or inp == oup or lone
    return full, full or stride == 2


class SandGlass(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, reduction: int, lone: bool,
                 attn: str | None) -> None:
        super().__init__()
        hidden = inp // reduction
        if hidden < oup / 6:
            hidden = make_divisible(math.ceil(oup / 6), 16)
        first_dw, last_dw = _depthwise_convs(inp, oup, stride, reduction, lone)
        self.use_residual = stride == 1 and inp == oup
        self.dw1 = conv_bn(inp, inp, 3, groups=inp) if first_dw else nn.Identity()
        self.attn = attention.build(attn, inp, inplace=True) if first_dw else nn.Identity()
        self.reduce = conv_bn(inp, hidden, act=False)
        self.expand = conv_bn(hidden, oup)
        self.dw2 = conv_bn(oup, oup, 3, stride, groups=oup, act=False) if last_dw else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dw2(self.expand(unit_then_attention(self.dw1, self.attn, self.reduce, x)))
        return x + y if self.use_residual else y


def mobilenext(attn: str | None = None, width: float = 1.0, num_classes: int = 1000,
               profile: str = "imagenet") -> Backbone:
    stem_stride, strides = profile_strides(ROWS, profile)
    channels = make_divisible(32 * width)
    layers: OrderedDict[str, nn.Module] = OrderedDict(stem=conv_bn(3, channels, 3, stem_stride))
    for index, ((t, c, n, s), stride) in enumerate(zip(ROWS, strides, strict=True), start=1):
        out = make_divisible(c * width)
        blocks = []
        for i in range(n):
            lone = n == 1 and s == 1
            blocks.append(SandGlass(channels, out, stride if i == 0 else 1, t, lone, attn))
            channels = out
        layers[f"stage{index}"] = nn.Sequential(*blocks)
    return Backbone(nn.Sequential(layers), channels, num_classes)
