"""Coordinate Attention (Hou, Zhou, Feng, CVPR 2021) and its one-direction ablations.

Paper form (training, or whenever autograd is on)::

    z^h = mean over W  (N×C×H×1)        z^w = mean over H  (N×C×1×W)
    f   = δ(BN(F1([z^h, z^w])))          shared 1×1 conv C→mip over the concatenated strips
    g^h = σ(F_h(f^h))   g^w = σ(F_w(f^w))  1×1 convs mip→C
    y   = x · g^h · g^w

Means replace the official code's ``AdaptiveAvgPool2d((None, 1))`` (identical values; exports
to ONNX). In eval mode with autograd off, outside graph building, an inference path gives the
same output with less work: BN folded into F1 once, both strips pooled by one small matrix
product on small maps (sums elsewhere), the 1×1 convs as two batched GEMMs on the strips, both
gates read as views of one buffer, no copy of the feature map but the output itself. Tracing,
export and ``torch.compile`` see the paper form, which they can fuse themselves.

Inside a network every kernel launch and Python step of this path costs several times its
stand-alone time (cold caches after the big convolutions), so the path is kept short: measured
in ``benchmarks/attention_latency.py``.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn

from caprobe.attention.base import (
    ACTIVATIONS,
    GATES,
    AttentionModule,
    WeightCache,
    apply_gates,
    batch_norm,
    fold_bn,
    inference_fast_path,
    make_act,
    make_gate,
    multiply_gates,
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
        self._act_inplace = ACTIVATIONS[act].inplace
        self.conv_h = nn.Conv2d(mip, channels, 1, bias=True) if "h" in branches else None
        self.conv_w = nn.Conv2d(mip, channels, 1, bias=True) if "w" in branches else None
        self.gate = make_gate(gate)
        self._gate_inplace = GATES[gate].inplace
        self._weights = WeightCache()

    def gates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"h": N×C×H×1, "w": N×C×1×W}`` (only the branches this module has)."""
        if inference_fast_path(self):
            return dict(zip(self.branches, self._inference_gates(x), strict=True))
        return self._paper_gates(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if inference_fast_path(self):  # the lean route: no dict, no second check
            return multiply_gates(x, self._inference_gates(x), inference=True,
                                  overwrite=self.inplace)
        return apply_gates(self, x, self._paper_gates(x).values())

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

    def _strip_sums(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        """``(z, scale)`` with ``scale * z`` = [z^h, z^w] as N×C×(H+W) (or the one strip this
        module uses), from sums: a mean is a sum plus a division kernel, and the factor rides
        free on the next GEMM's ``alpha``. A non-square map rescales its W strip to share the
        H strip's factor."""
        height, width = x.shape[2], x.shape[3]
        if self.branches == "h":
            return x.sum(dim=3), 1.0 / width
        if self.branches == "w":
            return x.sum(dim=2), 1.0 / height
        z = torch.cat([x.sum(dim=3), x.sum(dim=2)], dim=2)
        if height != width:
            z[:, :, height:] *= width / height
        return z, 1.0 / width

    def _inference_weights(self) -> tuple[torch.Tensor, ...]:
        """F1 with BN folded in as (mip×C, mip×1); the gate convs stacked as (kC×mip, kC×1)."""
        weight, bias = fold_bn(self.conv1, self.bn1)
        convs = [conv for conv in (self.conv_h, self.conv_w) if conv is not None]
        gate_weight = torch.cat([conv.weight.flatten(1) for conv in convs])
        gate_bias = torch.cat([conv.bias for conv in convs])
        return weight.flatten(1), bias[:, None], gate_weight, gate_bias[:, None]

    def _inference_gates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The gates in ``branches`` order (eager mode only). F1 (BN folded) and both gate
        convs run as two batched GEMMs on the strips; the gate GEMM covers all H+W positions
        for both convs and each gate reads its own block (the unused blocks cost less than a
        second GEMM call). GEMMs, not conv1d: a 1×1 conv1d on strips takes a slow im2col path
        on CPU."""
        n, channels, height, width = x.shape
        w1, b1, wg, bg = self._weights.get(self, self._inference_weights)
        if height + width <= MATMUL_POOL_MAX and x.is_contiguous():
            pool = _pooling_matrix(height, width, self.branches, x.dtype, x.device)
            z, scale = torch.mm(x.view(n * channels, height * width), pool), 1.0
            z = z.view(n, channels, -1)
        else:
            z, scale = self._strip_sums(x)
        f = self._act_inplace(torch.baddbmm(b1, w1.expand(n, -1, -1), z, alpha=scale))
        g = self._gate_inplace(torch.baddbmm(bg, wg.expand(n, -1, -1), f))  # N×kC×L
        if self.branches == "h":
            return [g.view(n, channels, height, 1)]
        if self.branches == "w":
            return [g.view(n, channels, 1, width)]
        length, stride = height + width, g.stride(0)
        return [g.as_strided((n, channels, height, 1), (stride, length, 1, 1)),
                g.as_strided((n, channels, 1, width), (stride, length, 1, 1),
                             channels * length + height)]
