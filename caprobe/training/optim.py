"""The optimiser recipe: SGD Nesterov, no weight decay on norms and biases, and a per-step
linear warm-up followed by a cosine decay to zero."""

from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: conv / linear weights with ``weight_decay``; norms and biases without.

    Every parameter with fewer than two dimensions is a bias or a norm's affine parameter.
    """
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


class WarmupCosine:
    """LR multiplier for step ``k``: linear from ``1/warmup`` to 1 over ``warmup`` steps, then
    half a cosine down to 0 at ``total`` steps. A plain object so the scheduler's state is
    saved with the checkpoint."""

    def __init__(self, total: int, warmup: int) -> None:
        self.total = max(1, int(total))
        self.warmup = max(0, min(int(warmup), self.total - 1))

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        span = max(1, self.total - self.warmup)
        progress = min(1.0, (step - self.warmup) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, *, lr: float, momentum: float, nesterov: bool,
                    weight_decay: float, total_steps: int, warmup_steps: int):
    """``(optimizer, scheduler)``; call ``scheduler.step()`` after every optimiser step."""
    optimizer = torch.optim.SGD(param_groups(model, weight_decay), lr=lr, momentum=momentum,
                                nesterov=nesterov and momentum > 0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(total_steps,
                                                                          warmup_steps))
    return optimizer, scheduler
