"""The attention modules' equations as their papers write them, in plain autograd operators.

This is the oracle: the trainable forms (:mod:`caprobe.attention.functional`) are tested
against it for outputs and gradients, and ``benchmarks/train_throughput.py`` times it as the
"before" of the fast training forms. It reads a module's own parameters, so a reference and
a module never drift apart in weights. Max pooling is ``max_pool2d`` / ``max(dim)`` as in the
official CBAM code (the gradient goes to one arg-max element).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from caprobe.attention.base import AttentionModule, batch_norm
from caprobe.attention.cbam import CBAM
from caprobe.attention.coord import CoordAttention
from caprobe.attention.eca import ECA
from caprobe.attention.se import SqueezeExcite


def _se(m: SqueezeExcite, x: torch.Tensor) -> torch.Tensor:
    z = x.mean(dim=(2, 3), keepdim=True)
    return x * m.gate(m.fc2(m.act(m.fc1(z))))


def _eca(m: ECA, x: torch.Tensor) -> torch.Tensor:
    z = x.mean(dim=(2, 3))
    return x * m.gate(m.conv(z.unsqueeze(1))).squeeze(1)[:, :, None, None]


def _cbam(m: CBAM, x: torch.Tensor) -> torch.Tensor:
    avg = x.mean(dim=(2, 3), keepdim=True)
    peak = F.max_pool2d(x, x.shape[2:])
    x = x * m.gate(m.mlp(avg) + m.mlp(peak))
    pooled = torch.cat([x.max(dim=1, keepdim=True)[0], x.mean(dim=1, keepdim=True)], dim=1)
    return x * m.gate(batch_norm(m.spatial_bn, m.spatial(pooled)))


def _ca(m: CoordAttention, x: torch.Tensor) -> torch.Tensor:
    height = x.shape[2]
    strips = []
    if m.conv_h is not None:
        strips.append(x.mean(dim=3, keepdim=True))  # z^h: N×C×H×1
    if m.conv_w is not None:
        strips.append(x.mean(dim=2, keepdim=True).transpose(2, 3))  # z^w: N×C×W×1
    y = torch.cat(strips, dim=2)
    y = m.act(batch_norm(m.bn1, m.conv1(y)))  # f = δ(BN(F1([z^h, z^w])))
    if m.conv_h is not None:
        x = x * m.gate(m.conv_h(y[:, :, :height]))  # g^h
        y = y[:, :, height:]
    if m.conv_w is not None:
        x = x * m.gate(m.conv_w(y.transpose(2, 3)))  # g^w
    return x


_FORWARDS: dict[type, Callable[..., torch.Tensor]] = {
    SqueezeExcite: _se, ECA: _eca, CBAM: _cbam, CoordAttention: _ca}


def forward(module: AttentionModule, x: torch.Tensor) -> torch.Tensor:
    """``module``'s output for ``x`` by its paper's equations (training semantics for BN when
    the module is in training mode)."""
    return _FORWARDS[type(module)](module, x)


class Reference(nn.Module):
    """Runs a wrapped attention module by :func:`forward` (same parameters, same buffers)."""

    def __init__(self, module: AttentionModule) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return forward(self.module, x)


def reference_form(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose attention modules run the reference equations (those
    already wrapped are left as they are)."""
    model = copy.deepcopy(model)
    wrapped = {id(m.module) for m in model.modules() if isinstance(m, Reference)}
    for name, module in list(model.named_modules()):
        if isinstance(module, AttentionModule) and id(module) not in wrapped:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, Reference(module))
    return model
