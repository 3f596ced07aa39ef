"""CBAM (Woo et al., ECCV 2018): a channel gate, then a spatial gate on the gated map.

Channel: average- and max-pooled vectors through one shared MLP (C→C//r→C, biased as in the
official code; hidden width floored at ``min_hidden``), summed, σ; the max's gradient goes to
the arg-max element, as with the official code's ``max_pool2d``. Spatial: [max, mean] over
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
    linear,
    make_act,
    make_gate,
)
from caprobe.attention.functional import (
    channel_max,
    channel_mean,
    gate_product,
    nhwc,
    spatial_max_mean,
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
        """N×C: the shared MLP (1×1 convs as GEMMs) on the mean- and max-pooled vectors."""
        def mlp(z: torch.Tensor) -> torch.Tensor:
            return linear(self.mlp[2], self.mlp[1](linear(self.mlp[0], z)))
        return self.gate(mlp(channel_mean(x)) + mlp(channel_max(x)))

    def _spatial_gate(self, x: torch.Tensor) -> torch.Tensor:
        """N×1×H×W from the channel-gated map."""
        pooled = spatial_max_mean(x)
        if inference_fast_path(self):
            weight, bias = self._weights.get(self, lambda: fold_bn(self.spatial, self.spatial_bn))
            return self.gate(F.conv2d(pooled, weight, bias, padding=self.spatial.padding))
        return self.gate(batch_norm(self.spatial_bn, self.spatial(pooled)))

    def gates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"channel": N×C×1×1, "spatial": N×1×H×W}``; the spatial gate sees the
        channel-gated map, as in the forward pass."""
        channel = self._channel_gate(x)[:, :, None, None]
        return {"channel": channel, "spatial": self._spatial_gate(x * channel)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channel = self._channel_gate(x)
        if inference_fast_path(self):
            gated = apply_gates(self, x, [channel[:, :, None, None]])
            return gated.mul_(self._spatial_gate(gated))
        gated = gate_product(x, channel[:, None, None])
        return gate_product(gated, nhwc(self._spatial_gate(gated)))
