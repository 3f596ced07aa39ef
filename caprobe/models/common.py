"""Pieces both backbones share: channel rounding, conv-BN(-act) units, input profiles, init."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch
from torch import nn
from torch.autograd import Function
from torch.autograd.function import once_differentiable

from caprobe.attention.base import after_activation

Row = tuple[int, int, int, int]  # (t, c, n, s): ratio, output channels, repeats, first stride

#: Input profiles. "cifar" adapts a 224-px layout to 32-px inputs: stem stride 1 and the first
#: stride-2 stage at stride 1, so the last feature map is 4×4 instead of 1×1.
PROFILES = {"imagenet": 224, "cifar": 32}


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` without going 10% below it."""
    min_value = min_value or divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class _ReLU6InPlace(Function):
    """ReLU6 in place, its backward reading the output: ``y = clamp(x, 0, 6)`` lies strictly
    inside (0, 6) exactly where ``x`` does, so the gradient is autograd's bit for bit.
    Autograd's own in-place ReLU6 (``hardtanh_``, torch 2.13) first clones its input to keep
    it for the backward: a map-sized copy per activation, 35 ms of a 273 ms MobileNetV2-0.5
    CIFAR training step at batch 64 on 2 threads (2026-12-04, the profiler's
    ``aten::clone < aten::hardtanh_``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x.clamp_(0.0, 6.0)
        ctx.mark_dirty(x)
        ctx.save_for_backward(x)
        return x

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.hardtanh_backward(grad, y, 0.0, 6.0)


class ReLU6(nn.ReLU6):
    """:class:`torch.nn.ReLU6` whose in-place form keeps no copy of its input in training
    (:class:`_ReLU6InPlace`); traces and compiles record the plain operator."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace and x.requires_grad and torch.is_grad_enabled() and not (
                torch.jit.is_tracing() or torch.compiler.is_compiling()):
            return _ReLU6InPlace.apply(x)
        return super().forward(x)


def conv_bn(inp: int, oup: int, kernel: int = 1, stride: int = 1, groups: int = 1,
            act: bool = True) -> nn.Sequential:
    """Conv (no bias) → BN → ReLU6, or a linear conv-BN when ``act`` is False."""
    layers: list[nn.Module] = [
        nn.Conv2d(inp, oup, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(oup),
    ]
    if act:
        layers.append(ReLU6(inplace=True))
    return nn.Sequential(*layers)


def unit_then_attention(unit: nn.Module, attn: nn.Module, project: nn.Module,
                        x: torch.Tensor) -> torch.Tensor:
    """``project(attn(unit(x)))`` for a :func:`conv_bn` unit (or ``nn.Identity``) and a linear
    :func:`conv_bn` ``project``, letting the attention run the unit's activation and the
    projection's conv inside its own passes (:func:`caprobe.attention.base.after_activation`)."""
    if isinstance(unit, nn.Sequential) and len(unit) == 3 and \
            isinstance(project, nn.Sequential) and len(project) == 2:
        conv, bn, act = unit
        project_conv, project_bn = project
        return project_bn(after_activation(attn, act, bn(conv(x)), project_conv))
    return project(attn(unit(x)))


def profile_strides(rows: Sequence[Row], profile: str) -> tuple[int, list[int]]:
    """Stem stride and per-row first strides for an input profile."""
    strides = [s for _, _, _, s in rows]
    if profile == "imagenet":
        return 2, strides
    first_down = strides.index(2)
    strides[first_down] = 1
    return 1, strides


def init_weights(model: nn.Module, seed: int) -> None:
    """Initialise every layer from a random stream keyed by ``seed`` and the layer's name.

    Layers that two variants share (same name, same shape) thus start from identical weights,
    and an attention module draws from its own streams without shifting anyone else's:
    accuracy deltas between variants are paired, not confounded by initialisation.
    Convs: Kaiming normal (fan-out), zero bias; BN: 1, 0; linear: N(0, 0.01), zero bias.
    Then the layers an attention module names in ``gate_layers`` get zero weights, so its
    gates start constant (see :class:`caprobe.attention.base.AttentionModule`).
    """
    for name, module in model.named_modules():
        gen = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{name}".encode()))
        with torch.no_grad():
            if isinstance(module, (nn.Conv1d, nn.Conv2d)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", generator=gen)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01, generator=gen)
                nn.init.zeros_(module.bias)
    for module in model.modules():
        for name in getattr(module, "gate_layers", ()):
            if getattr(module, name.split(".")[0]) is None:  # an ablated branch (CA's conv_w
                continue                                     # with branches=h); typos raise
            with torch.no_grad():
                module.get_submodule(name).weight.zero_()


class Backbone(nn.Module):
    """``features`` (stem, stages, optional head conv) → global mean → dropout → linear.

    The top-level children of ``features`` and ``classifier`` are the stages that counts are
    broken down by.
    """

    def __init__(self, features: nn.Sequential, channels: int, num_classes: int,
                 dropout: float = 0.2) -> None:
        super().__init__()
        self.features = features
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3), keepdim=True).flatten(1))
