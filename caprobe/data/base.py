"""What a loader hands to the registry: a :class:`Plan` (cheap: where, what key) that can
``build`` a :class:`Built` (expensive: decoded tensors, checksum, unreadable files)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from caprobe.errors import DataError


@dataclass
class Built:
    train_images: torch.Tensor      # uint8 N×3×H×W
    train_labels: torch.Tensor      # int64 N
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    checksum: str
    errors: list[tuple[str, str]] = field(default_factory=list)   # (file, reason)
    info: dict = field(default_factory=dict)


@dataclass
class Plan:
    name: str
    source: str                      # human-readable origin
    key: str                         # cache key: source fingerprint + preprocessing
    image_size: int
    augment: str
    build: Callable[[Callable[[int, int], None] | None], Built]
    info: dict = field(default_factory=dict)


def nhwc_to_tensor(arr: np.ndarray) -> torch.Tensor:
    """N×H×W×3 uint8 numpy → contiguous N×3×H×W uint8 tensor."""
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).contiguous()


def check_labels(labels: torch.Tensor, num_classes: int, where: str) -> None:
    if labels.numel() == 0:
        return
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        raise DataError(f"label {bad} in {where} is out of range for {num_classes} classes "
                        f"(valid 0..{num_classes - 1}); the file is corrupt or from another "
                        "data set")
