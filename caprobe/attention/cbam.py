"""CBAM (Woo et al., ECCV 2018): a channel gate, then a spatial gate on the gated map.

Channel: average- and max-pooled vectors through one shared MLP (C→C//r→C, biased as in the
official code; hidden width floored at ``min_hidden``), summed, σ. Spatial: [max, mean] over
channels → k×k conv without bias → BN → σ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from caprobe.attention.base import (
    AttentionModule,
    WeightCache,
    apply_gates,
    batch_norm,
    fold_bn,
    inference_fast_path,
    make_act,
    make_gate,
)


class CBAM(AttentionModule):
    gate_layers = ("mlp.2", "spatial_bn")

    def __init__(self, channels: int, reduction: int = 24, min_hidden: int = 1, kernel: int = 7,
                 act: str = "relu", gate: str = "sigmoid") -> None:
        super().__init__()
        hidden = max(min_hidden, channels // reduction)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=True),
            make_act(act),
            nn.Conv2d(hidden, channels, 1, bias=True),
        )
        self.spatial = nn.Conv2d(2, 1, kernel, padding=kernel // 2, bias=False)
        self.spatial_bn = nn.BatchNorm2d(1)
        self.gate = make_gate(gate)
        self._weights = WeightCache()

    def _channel_gate(self, x: torch.Tensor) -> torch.Tensor:
        avg = x.mean(dim=(2, 3), keepdim=True)
        peak = x.amax(dim=(2, 3), keepdim=True)
        return self.gate(self.mlp(avg) + self.mlp(peak))

    def _spatial_gate(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        if inference_fast_path(self):
            weight, bias = self._weights.get(self, lambda: fold_bn(self.spatial, self.spatial_bn))
            return self.gate(F.conv2d(pooled, weight, bias, padding=self.spatial.padding))
        return self.gate(batch_norm(self.spatial_bn, self.spatial(pooled)))

    def gates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"channel": N×C×1×1, "spatial": N×1×H×W}``; the spatial gate sees the
        channel-gated map, as in the forward pass."""
        channel = self._channel_gate(x)
        return {"channel": channel, "spatial": self._spatial_gate(x * channel)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gated = apply_gates(self, x, [self._channel_gate(x)])
        spatial = self._spatial_gate(gated)
        return gated.mul_(spatial) if inference_fast_path(self) else gated * spatial
