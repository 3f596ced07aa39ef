"""Whole-batch, seeded augmentation and normalisation on uint8 tensors; class-balanced subsets.

Policies (every random draw comes from the caller's ``torch.Generator``, one batched draw per
quantity, so the result is a pure function of the generator state):

* ``crop_flip``: zero-pad 4 px, random 32×32 (H×W) crop, horizontal flip with p = 0.5 —
  done as one gather with per-image row/column indices (flip folded into the indices).
* ``rrc_flip``: random-resized crop (area 25–100 %, aspect 3/4–4/3, bilinear via one
  ``affine_grid``/``grid_sample`` call) plus horizontal flip.
* ``none``: normalisation only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from caprobe.data.types import AUGMENT_POLICIES
from caprobe.errors import DataError

CROP_PAD = 4
RRC_SCALE = (0.25, 1.0)
RRC_RATIO = (3 / 4, 4 / 3)


def _normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1) * 255.0
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1) * 255.0
    return (x.to(torch.float32) - m) / s


def to_input(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 N×3×H×W → normalised float32, no augmentation (evaluation)."""
    _check_batch(images)
    return _normalize(images, mean, std)


def _check_batch(images: torch.Tensor) -> None:
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise DataError(f"expected a uint8 N×C×H×W image batch, got {images.dtype} with shape "
                        f"{tuple(images.shape)}")


def _crop_flip(images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    n, c, h, w = images.shape
    padded = F.pad(images, (CROP_PAD, CROP_PAD, CROP_PAD, CROP_PAD))
    oy = torch.randint(0, 2 * CROP_PAD + 1, (n,), generator=g)
    ox = torch.randint(0, 2 * CROP_PAD + 1, (n,), generator=g)
    flip = torch.rand(n, generator=g) < 0.5
    ar_h, ar_w = torch.arange(h), torch.arange(w)
    rows = oy[:, None] + ar_h[None, :]                                   # N×H
    cols = ox[:, None] + torch.where(flip[:, None], w - 1 - ar_w[None, :], ar_w[None, :])
    rows, cols = rows.to(images.device), cols.to(images.device)
    # gather rows then columns: N×C×(H+2p)×(W+2p) → N×C×H×(W+2p) → N×C×H×W
    wp = w + 2 * CROP_PAD
    out = padded.gather(2, rows[:, None, :, None].expand(n, c, h, wp))
    return out.gather(3, cols[:, None, None, :].expand(n, c, h, w))


def _rrc_flip(images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    n, c, h, w = images.shape
    area = torch.empty(n).uniform_(*RRC_SCALE, generator=g)
    log_r = torch.empty(n).uniform_(math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1]), generator=g)
    ratio = torch.exp(log_r)
    # crop width/height as fractions of the image (square-pixel aspect w/h = ratio)
    cw = torch.sqrt(area * ratio).clamp(max=1.0)
    ch = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (torch.rand(n, generator=g) * 2 - 1) * (1 - cw)                 # centre in [-1+cw, 1-cw]
    cy = (torch.rand(n, generator=g) * 2 - 1) * (1 - ch)
    flip = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = cw * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = ch
    theta[:, 1, 2] = cy
    theta = theta.to(images.device)
    grid = F.affine_grid(theta, [n, c, h, w], align_corners=False)
    return F.grid_sample(images.to(torch.float32), grid, mode="bilinear",
                         padding_mode="border", align_corners=False)


def augment_batch(images: torch.Tensor, *, policy: str, generator: torch.Generator,
                  mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 N×3×H×W → augmented, normalised float32 N×3×H×W (same size), deterministic
    given ``generator``'s state (a CPU generator; the batch may live on any device)."""
    _check_batch(images)
    if policy == "crop_flip":
        x = _crop_flip(images, generator)
    elif policy == "rrc_flip":
        x = _rrc_flip(images, generator)
    elif policy == "none":
        x = images
    else:
        raise DataError(f"unknown augmentation policy {policy!r}; valid: "
                        f"{', '.join(AUGMENT_POLICIES)}")
    return _normalize(x, mean, std)


def balanced_subset(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Sorted indices of ``n`` examples, as equal per class as the data allow, chosen by ``seed``.

    Each class gets ``n // K`` (the ``n % K`` extra slots go to classes picked by the seed);
    a class with too few examples gives all it has and its shortfall is spread over the rest.
    """
    labels = torch.as_tensor(labels).to(torch.int64).cpu()
    total = labels.numel()
    if n < 0 or n > total:
        raise DataError(f"subset size {n} is out of range; the split has {total} examples")
    if n == total:
        return torch.arange(total)
    g = torch.Generator().manual_seed(int(seed))
    classes = torch.unique(labels)
    k = len(classes)
    pools = [torch.nonzero(labels == c).flatten() for c in classes.tolist()]
    pools = [p[torch.randperm(len(p), generator=g)] for p in pools]
    sizes = torch.tensor([len(p) for p in pools])
    quota = torch.full((k,), n // k, dtype=torch.int64)
    quota[torch.randperm(k, generator=g)[: n % k]] += 1
    quota = torch.minimum(quota, sizes)
    short = n - int(quota.sum())
    order = torch.randperm(k, generator=g).tolist()
    while short > 0:                       # spread the shortfall one at a time, fairly
        for i in order:
            if short and quota[i] < sizes[i]:
                quota[i] += 1
                short -= 1
    picked = torch.cat([p[: int(q)] for p, q in zip(pools, quota.tolist(), strict=True)])
    return torch.sort(picked).values
