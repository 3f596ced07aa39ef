"""Coordinate Attention (Hou, Zhou, Feng, CVPR 2021) and its one-direction ablations.

Paper form (training, or whenever autograd is on)::

    z^h = mean over W  (N×C×H×1)        z^w = mean over H  (N×C×1×W)
    f   = δ(BN(F1([z^h, z^w])))          shared 1×1 conv C→mip over the concatenated strips
    g^h = σ(F_h(f^h))   g^w = σ(F_w(f^w))  1×1 convs mip→C
    y   = x · g^h · g^w

Means replace the official code's ``AdaptiveAvgPool2d((None, 1))`` (identical values; exports
to ONNX). In eval mode with autograd off an inference path gives the same output with less
work: BN folded into F1 once, both strips pooled by one small matrix product on small maps,
1-D convs on the pooled strips, no copies of the feature map but the output itself, the second
gate applied in place.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from caprobe.attention.base import (
    AttentionModule,
    FoldedConvBN,
    batch_norm,
    building_graph,
    inference_fast_path,
    make_act,
    make_gate,
)

#: Up to this H + W, pooling both strips as one (C, H·W) × (H·W, H+W) product beats two means
#: (reduction over a short axis is slow on CPU): 7× faster at 7×7, 2× at 14×14; at 28×28 the
#: (H+W) multiply-adds per element cost as much as the means save (1 thread, batch 1).
MATMUL_POOL_MAX = 32


@lru_cache(maxsize=32)
def _pooling_matrix(height: int, width: int, branches: str, dtype: torch.dtype,
                    device: torch.device) -> torch.Tensor:
    """(H·W, H+W) matrix whose product with a flattened map gives [z^h, z^w] (or one of them)."""
    with torch.inference_mode(False), torch.no_grad():
        rows = torch.arange(height * width, device=device)
        cols = []
        if "h" in branches:
            cols.append(torch.nn.functional.one_hot(rows // width, height) / width)
        if "w" in branches:
            cols.append(torch.nn.functional.one_hot(rows % width, width) / height)
        return torch.cat(cols, dim=1).to(dtype)


class CoordAttention(AttentionModule):
    """CA with both gates (``branches="hw"``) or only the height (``"h"``) or width (``"w"``) gate.

    ``mip = max(min_mip, channels // reduction)``; official defaults r=32, floor 8, h-swish.
    """

    def __init__(self, channels: int, reduction: int = 32, min_mip: int = 8,
                 act: str = "hswish", gate: str = "sigmoid", branches: str = "hw") -> None:
        super().__init__()
        self.branches = branches
        mip = max(min_mip, channels // reduction)
        self.conv1 = nn.Conv2d(channels, mip, 1, bias=True)
        self.bn1 = nn.BatchNorm2d(mip)
        self.act = make_act(act)
        self.conv_h = nn.Conv2d(mip, channels, 1, bias=True) if "h" in branches else None
        self.conv_w = nn.Conv2d(mip, channels, 1, bias=True) if "w" in branches else None
        self.gate = make_gate(gate)
        self._folded = FoldedConvBN()

    def gates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"h": N×C×H×1, "w": N×C×1×W}`` (only the branches this module has)."""
        if inference_fast_path(self):
            return self._inference_gates(x)
        return self._paper_gates(x)

    def _paper_gates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        height = x.shape[2]
        strips = []
        if self.conv_h is not None:
            strips.append(x.mean(dim=3, keepdim=True))  # N×C×H×1
        if self.conv_w is not None:
            strips.append(x.mean(dim=2, keepdim=True).transpose(2, 3))  # N×C×W×1
        y = torch.cat(strips, dim=2) if len(strips) > 1 else strips[0]
        y = self.act(batch_norm(self.bn1, self.conv1(y)))
        out = {}
        if self.conv_h is not None:
            out["h"] = self.gate(self.conv_h(y[:, :, :height]))
            y = y[:, :, height:]
        if self.conv_w is not None:
            out["w"] = self.gate(self.conv_w(y.transpose(2, 3)))
        return out

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        """[z^h, z^w] as N×C×(H+W) (or the one strip this module uses)."""
        n, c, height, width = x.shape
        if height + width <= MATMUL_POOL_MAX and x.is_contiguous() and not building_graph():
            pool = _pooling_matrix(height, width, self.branches, x.dtype, x.device)
            return torch.matmul(x.reshape(n * c, height * width), pool).view(n, c, -1)
        strips = []
        if self.conv_h is not None:
            strips.append(x.mean(dim=3))  # N×C×H
        if self.conv_w is not None:
            strips.append(x.mean(dim=2))  # N×C×W
        return torch.cat(strips, dim=2) if len(strips) > 1 else strips[0]

    def _inference_gates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        height = x.shape[2]
        weight, bias = self._folded(self.conv1, self.bn1)
        z = self._pooled(x)
        f = self.act(F.conv1d(z, weight.flatten(2), bias))  # N×mip×(H+W)
        out = {}
        if self.conv_h is not None:
            g = F.conv1d(f[:, :, :height], self.conv_h.weight.flatten(2), self.conv_h.bias)
            out["h"] = self.gate(g).unsqueeze(3)
            f = f[:, :, height:]
        if self.conv_w is not None:
            g = F.conv1d(f, self.conv_w.weight.flatten(2), self.conv_w.bias)
            out["w"] = self.gate(g).unsqueeze(2)
        return out
