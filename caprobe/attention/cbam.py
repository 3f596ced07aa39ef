"""CBAM (Woo et al., ECCV 2018): a channel gate, then a spatial gate on the gated map.

Channel: average- and max-pooled vectors through one shared MLP (C→C//r→C, biased as in the
official code; hidden width floored at ``min_hidden``), summed, σ; the max's gradient goes to
the arg-max element, as with the official code's ``max_pool2d``. Spatial: [max, mean] over
channels → k×k conv without bias → BN → σ.

On a channels-last CPU map the map-sized steps run in caprobe's native kernels
(:func:`caprobe.attention.functional.cbam_attention`: the channel-gated map is never formed)
and, in training, the spatial gate too (:func:`caprobe.attention.functional.
native_spatial_gate`: the k×k conv, BN, the gate); the MLP runs in PyTorch; elsewhere the
eager functions.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from caprobe.attention.base import (
    AttentionModule,
    DeployedAttention,
    GraphAttention,
    batch_norm,
    conv_from,
    fold_bn,
    graph_nonlinearity,
    inplace_form,
    linear,
    make_act,
    make_gate,
)
from caprobe.attention.functional import (
    cbam_attention,
    channel_max,
    channel_mean,
    gate_product,
    native_spatial_gate,
    nhwc,
    spatial_max_mean,
)


class CBAM(AttentionModule):
    gate_layers = ("mlp.2", "spatial_bn")

    def __init__(self, channels: int, reduction: int = 24, min_hidden: int = 1, kernel: int = 7,
                 act: str = "relu", gate: str = "sigmoid", inplace: bool = False) -> None:
        super().__init__(inplace)
        hidden = max(min_hidden, channels // reduction)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=True),
            make_act(act),
            nn.Conv2d(hidden, channels, 1, bias=True),
        )
        self.spatial = nn.Conv2d(2, 1, kernel, padding=kernel // 2, bias=False)
        self.spatial_bn = nn.BatchNorm2d(1)
        self.gate = make_gate(gate)

    def _channel_gate(self, mean: torch.Tensor, peak: torch.Tensor) -> torch.Tensor:
        """N×C: the shared MLP (1×1 convs as GEMMs) on the mean- and max-pooled vectors, both
        as the rows of one matrix (half the small operators of two MLP calls)."""
        both = linear(self.mlp[2], self.mlp[1](linear(self.mlp[0], torch.cat([mean, peak]))))
        return self.gate(both[:mean.shape[0]] + both[mean.shape[0]:])

    def _spatial_gate(self, descriptor: torch.Tensor) -> torch.Tensor:
        """N×1×H×W from the channel-gated map's descriptor [max, mean over C] (N×2×H×W): in
        training, on the CPU, one native call each way (:func:`caprobe.attention.functional.
        native_spatial_gate`), else the module's operators."""
        native = native_spatial_gate(descriptor, self.spatial, self.spatial_bn, self.gate)
        if native is not None:
            return native
        return self.gate(batch_norm(self.spatial_bn, self.spatial(descriptor)))

    def gates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"channel": N×C×1×1, "spatial": N×1×H×W}``; the spatial gate sees the
        channel-gated map, as in the forward pass."""
        channel = self._channel_gate(channel_mean(x), channel_max(x))[:, :, None, None]
        return {"channel": channel,
                "spatial": self._spatial_gate(spatial_max_mean(x * channel))}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = cbam_attention(x, self._channel_gate, self._spatial_gate)
        if out is not None:  # the native kernels (channels-last CPU maps, float32/64)
            return out
        gated = gate_product(x, self._channel_gate(channel_mean(x), channel_max(x))[:, None, None])
        return gate_product(gated, nhwc(self._spatial_gate(spatial_max_mean(gated))))

    def fuse(self) -> DeployedCBAM:
        """The MLP's weights; the spatial conv with its BN folded in."""
        with torch.no_grad():
            spatial_weight, spatial_bias = fold_bn(self.spatial, self.spatial_bn)
        first, act, second = self.mlp
        return DeployedCBAM(first.weight.flatten(1), first.bias, second.weight.flatten(1),
                            second.bias, spatial_weight, spatial_bias, act=inplace_form(act),
                            gate=inplace_form(self.gate), spec=self.spec,
                            overwrite=self.inplace)

    def graph_form(self) -> GraphCBAM:
        """The MLP as constant 1×1 convs, the spatial conv with its BN folded in."""
        with torch.no_grad():
            spatial_weight, spatial_bias = fold_bn(self.spatial, self.spatial_bn)
        first, act, second = self.mlp
        mlp = nn.Sequential(conv_from(first.weight, first.bias), graph_nonlinearity(act),
                            conv_from(second.weight, second.bias))
        spatial = conv_from(spatial_weight, spatial_bias, padding=self.spatial.padding)
        return GraphCBAM(mlp, spatial, graph_nonlinearity(self.gate), self.spec)


class GraphCBAM(GraphAttention):
    """CBAM's graph form: the channel gate from a mean and a max over H and W together (global
    pools), the shared MLP as 1×1 convs, one copy for each pool; the spatial gate's k×k conv
    (BN folded) on the channel max and mean."""

    gates = ("channel", "spatial")

    def __init__(self, mlp: nn.Sequential, spatial: nn.Conv2d, gate: nn.Module,
                 spec: str = "cbam") -> None:
        super().__init__(spec)
        # a weight shared by two convs does not compile in XNNPACK once quantised (pt2e int8:
        # "Failed to create convolution node ... xnn_status_invalid_parameter"), as CA's F1
        self.mlp_mean, self.mlp_max = mlp, copy.deepcopy(mlp)
        self.spatial, self.gate = spatial, gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[2], x.shape[3]
        peak = F.max_pool2d(x, (height, width), (height, width))
        gated = x * self.gate(self.mlp_mean(x.mean((2, 3), keepdim=True)) + self.mlp_max(peak))
        pooled = torch.cat([gated.amax(1, keepdim=True), gated.mean(1, keepdim=True)], dim=1)
        return gated * self.gate(self.spatial(pooled))


class DeployedCBAM(DeployedAttention):
    """CBAM's deployed form: the MLP (``w1``/``b1``, ``w2``/``b2``), the spatial k×k conv with
    BN folded (``ws``/``bs``, zero padding k // 2), in-place ``act`` and ``gate``."""

    def __init__(self, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
                 ws: torch.Tensor, bs: torch.Tensor, *, act, gate, spec: str = "cbam",
                 overwrite: bool = False) -> None:
        super().__init__(spec, overwrite)
        for name, value in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2), ("ws", ws),
                            ("bs", bs)):
            self.register_buffer(name, value.detach().clone())
        self.act, self.gate_fn = act, gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def mlp(z: torch.Tensor) -> torch.Tensor:
            return F.linear(self.act(F.linear(z, self.w1, self.b1)), self.w2, self.b2)
        channel = self.gate_fn(mlp(channel_mean(x)) + mlp(channel_max(x)))[:, :, None, None]
        gated = x.mul_(channel) if self.overwrite else x * channel
        spatial = F.conv2d(spatial_max_mean(gated), self.ws, self.bs,
                           padding=self.ws.shape[-1] // 2)
        return gated.mul_(self.gate_fn(spatial))
