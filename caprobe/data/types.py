"""The in-memory form of every data set: uint8 image tensors plus labels and provenance."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

AUGMENT_POLICIES = ("crop_flip", "rrc_flip", "none")


@dataclass(frozen=True)
class Split:
    """One split: ``images`` uint8 N×3×H×W (contiguous), ``labels`` int64 N."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def class_counts(self, num_classes: int) -> list[int]:
        return torch.bincount(self.labels, minlength=num_classes).tolist()


@dataclass(frozen=True)
class Dataset:
    """A decoded data set ready for training.

    ``checksum`` is the sha256 of the source content and the preprocessing (what a training
    run records); ``mean``/``std`` are per-channel statistics of the train split on the 0..1
    scale; ``augment`` names the training augmentation policy that suits the set.
    """

    name: str
    train: Split
    test: Split
    classes: list[str]
    image_size: int
    checksum: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    augment: str
    source: str
    info: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple, tuple]:
    """Per-channel mean and std (0..1 scale) of a uint8 N×3×H×W tensor, rounded to 4 digits."""
    n = images.shape[0]
    if n == 0:
        return (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    for start in range(0, n, chunk):
        x = images[start:start + chunk].to(torch.float64)
        total += x.sum(dim=(0, 2, 3))
        total_sq += (x * x).sum(dim=(0, 2, 3))
    count = n * images.shape[2] * images.shape[3]
    mean = total / count
    var = (total_sq / count - mean * mean).clamp_min(1e-12)
    mean_t = tuple(round(float(v) / 255.0, 4) for v in mean)
    std_t = tuple(round(max(float(v) ** 0.5 / 255.0, 1e-3), 4) for v in var)
    return mean_t, std_t
