"""``positional``: a built-in synthetic 16×16 set whose label is *where* a red mark lies.

Generator v4 (deterministic from ``seed``; numpy PCG64 streams ``(seed, split, 4)``: split 0
train, 1 test, so the two splits never share images; stream ``(seed, 2, 4)`` permutes the
training labels of the ``shuffle_labels`` control).

* **Label**: the cell of a ``grid`` × ``grid`` partition of the image (default 6 × 6, 36
  balanced classes, named ``r<row>c<col>``) that holds the centre of a red "plus" (3×3, colour
  (0.95, 0.25, 0.2))::

      row = (y - 1) * grid // 14,  col = (x - 1) * grid // 14,  label = row * grid + col

  for the centre ``(y, x)`` in 1..14. Within its cell the centre is uniform.
* **The "where" cue**: the background is a grey level (0.3 ± 0.03 per image) plus a fixed
  "map" that is the same in every image: the green channel rises from left to right and the
  blue one from top to bottom, by ``ramp`` over the image, under i.i.d. Gaussian pixel noise of
  std ``noise``. Where the mark is can be read from the background around it, like sky above
  and ground below in a photograph; how precisely depends on how well a network averages the
  noise away (pooling along rows and columns helps), and the image border (zero padding) is a
  second, weaker cue.
* **Near misses**: in a share ``near`` of the images one coordinate of the centre lies only
  0..``max_offset - 1`` px inside an interior cell boundary, so the class hinges on the mark's
  position to a pixel or two.
* **Harder levels** (d > 0.5): a blue plus (0.25, 0.45, 1.0) and ``n_distractors`` pluses in
  other colours (green, yellow, white), never touching each other or the red mark;
  ``n_clutter`` grey 1-px line segments of length 1–5 (±0.08–0.25 from the base); mark
  intensities scaled by U(1 - ``jitter``, 1).

``difficulty`` (0..1, or ``easy``/``medium``/``hard``) sets the knobs at once:
``noise = 0.04 + 0.08 d``, ``ramp = 0.25 - 0.2 d``, ``near = 0.4 d``, ``max_offset = 2``
(1 from d >= 0.75), and above the default ``blue``, ``n_distractors = round(4 (d - 0.5))``,
``n_clutter = round(8 (d - 0.5))``, ``jitter = 0.4 (d - 0.5)``. ``grid`` is the other lever.

Why this task and these defaults (this project's 2-core machine, 2026-12-01; MobileNetV2-0.35,
CIFAR profile, batch 32, SGD Nesterov lr 0.05, 2 epochs; top-1 on 1,000 test images):

* v3 (32 px, no map: the label could only be inferred from the zero padding, among coloured
  distractors) was bimodal: a run either left a plateau at chance or stayed there, by seed.
* v4 prototypes at 32 px, 1,280 training images: without the map, 5 of 17 runs stayed at
  chance on a 4 × 4 grid; a frame round the image did not help, a larger mark a little (1 of 4
  baseline runs at chance); with the map every run started learning, but 80 steps left them
  mid-way (6 × 6 grid, 6 seeds: none 10.7–92.0 %, cbam 13.9–91.0 %).
* at 16 px a step costs 2.3× less (none 61 vs 141 ms, batch 32, one thread), so 2 × 2,560
  images fit the 3-minute compare, and there every run converges (99.4–100 % for every
  variant, the README's calibration table). Each setting that put the baseline inside
  55–85 % was mid-way and spread widely: 2 × 1,280 images, 10 × 10 grid, 69.9 ± 14.1 %;
  8 × 8, 91.2 ± 3.4 % (6 seeds each); 2 × 960 images, 6 × 6, 83.0 ± 18.8 %. The CoordConv
  control was no faster there (85.1 % over 3 seeds at 2 × 960; 98.9 vs 98.5 % on 7 × 7 at
  2 × 1,280): a short run is not limited by access to the position.
* a sweep on 2026-12-03 (4 seeds each, 4,000 test images, one thread a run) found no setting
  where the CoordConv control learns faster. Without the map (``ramp=0``) the baseline still
  converges on 6 × 6 and 8 × 8 grids (99.8-100 %): the zero padding alone gives the position at
  16 px; a flat grey frame of random width 0..2 or 0..4 px a side, which hides where the image
  ends from the first layer, changed nothing (none 99.8-100 %, CoordConv 99.9-100 %). On a
  14 × 14 grid (a cell per centre position), 2 epochs: none 95.9 ± 2.5, CoordConv 91.7 ± 1.7
  (no map), 93.8 ± 3.6 and 92.8 ± 3.4 (map); 1 epoch: 33.9 ± 5.1 and 23.8 ± 13.1. The slow part
  is learning the cells, not finding the position. Mid-band settings spread widely: with
  ``difficulty=1``, 8 × 8 52.5 ± 52.4, 10 × 10 57.7 ± 22.4, 14 × 14 54.4 ± 33.6 %.
* batch 64 (half the steps) left runs at chance; peak lr 0.02 never left it, 0.1 was
  unstable. Attention gates start constant (``models.common.init_weights``): with
  Kaiming-initialised gate layers CBAM stayed at chance in most short runs.

The training augmentation policy is ``"none"``: flips and crops change the label.
:func:`label_from_positions` recomputes the labels from the metadata of
``generate_positional(..., return_meta=True)``. :class:`Positional` is the generator as a
data set (one of ``registry.LOADERS``).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass

import numpy as np
import torch

from caprobe.data.base import Loader, Progress
from caprobe.data.types import Dataset, Split
from caprobe.errors import DataError

GENERATOR_VERSION = 4
SIZE = 16
LEVELS = {"easy": 0.2, "medium": 0.5, "hard": 0.8}
DEFAULT_DIFFICULTY = 0.5
DEFAULT_N_TRAIN = 2560
DEFAULT_GRID = 6
MAX_GRID = 10
SPAN = SIZE - 2  # centre coordinates 1..14: a 3×3 mark stays inside the image
DEFAULT_N_TEST = 1000
RED = (0.95, 0.25, 0.2)
BLUE = (0.25, 0.45, 1.0)
OTHER_COLOURS = ((0.25, 0.85, 0.3), (0.95, 0.9, 0.2), (0.9, 0.9, 0.9))
PLUS = ((-1, 0), (0, -1), (0, 0), (0, 1), (1, 0))
BASE_GREY = 0.3
BASE_JITTER = 0.03


@dataclass(frozen=True)
class PositionalParams:
    difficulty: float
    near: float
    max_offset: int
    blue: bool
    n_distractors: int
    n_clutter: int
    noise: float
    jitter: float
    ramp: float = 0.15
    grid: int = DEFAULT_GRID


def class_names(grid: int = DEFAULT_GRID) -> list[str]:
    """``r<row>c<col>`` for each cell, row-major (the label order)."""
    return [f"r{r}c{c}" for r in range(grid) for c in range(grid)]


def parse_grid(value: int | str | None) -> int:
    if value is None:
        return DEFAULT_GRID
    try:
        g = int(value)
        whole = g == float(value)
    except (TypeError, ValueError):
        g, whole = -1, False
    if not whole or not 2 <= g <= MAX_GRID:
        raise DataError(f"positional grid={value!r} is not valid; give an integer in "
                        f"2..{MAX_GRID} (cells per side)")
    return g


def parse_difficulty(value: float | str | None) -> float:
    """A float in [0, 1] or a named level (``easy``, ``medium``, ``hard``)."""
    if value is None:
        return DEFAULT_DIFFICULTY
    if isinstance(value, str):
        key = value.strip().lower()
        if key in LEVELS:
            return LEVELS[key]
        try:
            value = float(key)
        except ValueError:
            raise DataError(f"positional difficulty {value!r} is not valid; give a number in "
                            f"0..1 or one of {', '.join(LEVELS)}") from None
    d = float(value)
    if not 0.0 <= d <= 1.0:
        raise DataError(f"positional difficulty {d} is out of range; give a number in 0..1 "
                        f"or one of {', '.join(LEVELS)}")
    return d


def params_for(difficulty: float | str | None = None,
               grid: int | str | None = None) -> PositionalParams:
    d = parse_difficulty(difficulty)
    hard = max(0.0, d - 0.5)  # the knobs that slow the start of learning wait for d > 0.5
    return PositionalParams(
        difficulty=d,
        near=round(0.4 * d, 6),
        max_offset=2 if d < 0.75 else 1,
        blue=d > 0.5,
        n_distractors=int(round(4 * hard)),
        n_clutter=int(round(8 * hard)),
        noise=round(0.04 + 0.08 * d, 6),
        jitter=round(0.4 * hard, 6),
        ramp=round(0.25 - 0.2 * d, 6),
        grid=parse_grid(grid),
    )


def describe(params: PositionalParams, n_train: int = DEFAULT_N_TRAIN,
             n_test: int = DEFAULT_N_TEST, seed: int = 0) -> str:
    """One line naming the generator, its version and every parameter (stored as ``source``)."""
    knobs = ", ".join(f"{k}={v}" for k, v in asdict(params).items())
    return (f"built-in generator v{GENERATOR_VERSION} (positional: grid cell of a red plus "
            f"over a position map; {knobs}; n_train={n_train}, n_test={n_test}, seed={seed})")


def _cell_bounds(grid: int) -> tuple[np.ndarray, np.ndarray]:
    """First and last centre coordinate of each of the ``grid`` cells along one axis."""
    coords = np.arange(1, SPAN + 1)
    cell = (coords - 1) * grid // SPAN
    lo = np.array([coords[cell == k].min() for k in range(grid)])
    hi = np.array([coords[cell == k].max() for k in range(grid)])
    return lo, hi


def label_from_positions(red: np.ndarray, grid: int = DEFAULT_GRID) -> np.ndarray:
    """Labels from red-mark centres ``(..., (y, x))``: ``row * grid + col`` of its cell."""
    cell = (np.asarray(red) - 1) * grid // SPAN
    return (cell[..., 0] * grid + cell[..., 1]).astype(np.int64)


def _red_positions(rng: np.random.Generator, labels: np.ndarray,
                   p: PositionalParams) -> np.ndarray:
    """Centres uniform within each label's cell; a share ``near`` hugs an interior boundary."""
    n = len(labels)
    lo, hi = _cell_bounds(p.grid)
    cells = np.stack([labels // p.grid, labels % p.grid], axis=1)
    red = lo[cells] + np.floor(rng.random((n, 2)) * (hi - lo + 1)[cells]).astype(np.int64)
    near = rng.random(n) < p.near
    axis = rng.integers(0, 2, size=n)
    inset = rng.integers(0, p.max_offset, size=n)
    k = cells[np.arange(n), axis]
    inset = np.minimum(inset, (hi - lo)[k])  # a cell narrower than max_offset: stay inside
    # the side towards another cell: upper boundary unless the cell is the last one
    upper = np.where(k == 0, True, np.where(k == p.grid - 1, False, rng.random(n) < 0.5))
    hug = np.where(upper, hi[k] - inset, lo[k] + inset)
    red[near, axis[near]] = hug[near]
    return red


def _place_distractors(rng: np.random.Generator, taken: list[np.ndarray], k: int) -> np.ndarray:
    n = taken[0].shape[0]
    placed = list(taken)
    out = np.zeros((n, k, 2), dtype=np.int64)
    for j in range(k):
        cand = rng.integers(1, SIZE - 1, size=(n, 2))
        while True:
            bad = np.zeros(n, dtype=bool)
            for q in placed:
                d = np.abs(cand - q)
                bad |= (d[:, 0] < 4) & (d[:, 1] < 4)
            if not bad.any():
                break
            cand[bad] = rng.integers(1, SIZE - 1, size=(int(bad.sum()), 2))
        out[:, j] = cand
        placed.append(cand)
    return out


def _stamp(img: np.ndarray, yx: np.ndarray, shape_pixels, colour: np.ndarray,
           rows: np.ndarray) -> None:
    for dy, dx in shape_pixels:
        img[rows, yx[:, 0] + dy, yx[:, 1] + dx] = colour


def generate_positional(n: int, seed: int = 0, difficulty: float | str | None = None, *,
                        grid: int | str | None = None, split: int = 0,
                        return_meta: bool = False, params: PositionalParams | None = None):
    """``n`` images (uint8 N×3×16×16, numpy) and labels (int64 N) of the positional task.

    ``split`` selects the random stream (0 train, 1 test). With ``return_meta`` a third value
    is returned: ``{"red": (N, 2) and "blue": (N, 2) centres (y, x), "distractors": (N, k, 2)
    centres, "params": dict}``. ``params`` overrides the knobs ``difficulty`` and ``grid`` set.
    """
    if n < 0:
        raise DataError(f"positional set size {n} is negative; give n_train/n_test >= 0")
    p = params if params is not None else params_for(difficulty, grid)
    if split not in (0, 1):  # stream 2 belongs to label_permutation
        raise DataError(f"positional split {split!r} is not valid; use 0 (train) or 1 (test)")
    rng = np.random.default_rng([int(seed), int(split), GENERATOR_VERSION])
    labels = (np.arange(n, dtype=np.int64) % (p.grid * p.grid))[rng.permutation(n)]
    rows = np.arange(n)

    # grey base, then the fixed "map": green grows to the right, blue downwards (±ramp / 2)
    base = BASE_GREY + rng.uniform(-BASE_JITTER, BASE_JITTER, size=(n, 1)) * np.ones((1, 3))
    coords = (np.arange(SIZE) - (SIZE - 1) / 2) / (SIZE - 1)
    img = np.broadcast_to(base[:, None, None, :], (n, SIZE, SIZE, 3)).copy()   # N×H×W×3
    img[..., 1] += p.ramp * coords[None, None, :]
    img[..., 2] += p.ramp * coords[None, :, None]

    for _ in range(p.n_clutter):                    # short low-contrast lines
        orient = rng.integers(0, 2, size=n)
        length = rng.integers(1, 6, size=n)
        y0 = rng.integers(0, SIZE, size=n)
        x0 = rng.integers(0, SIZE, size=n)
        colour = base + rng.choice([-1.0, 1.0], size=(n, 1)) * rng.uniform(0.08, 0.25, (n, 1))
        for k in range(5):
            on = k < length
            y = np.clip(y0 + k * (orient == 1), 0, SIZE - 1)
            x = np.clip(x0 + k * (orient == 0), 0, SIZE - 1)
            img[rows[on], y[on], x[on]] = colour[on]

    red = _red_positions(rng, labels, p)
    blue = _place_distractors(rng, [red], 1)[:, 0] if p.blue else None
    distractors = _place_distractors(rng, [red] if blue is None else [red, blue],
                                     p.n_distractors)
    palette = np.array(OTHER_COLOURS)
    for j in range(p.n_distractors):
        colour = palette[rng.integers(0, len(OTHER_COLOURS), size=n)]
        colour = colour * rng.uniform(1 - p.jitter, 1.0, size=(n, 1))
        _stamp(img, distractors[:, j], PLUS, colour, rows)
    for centre, colour in ((red, RED), (blue, BLUE)):
        if centre is None:
            continue
        scale = rng.uniform(1 - p.jitter, 1.0, size=(n, 1))
        _stamp(img, centre, PLUS, np.array(colour)[None, :] * scale, rows)

    img = img + rng.normal(0.0, p.noise, size=img.shape)
    images = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    images = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    assert (label_from_positions(red, p.grid) == labels).all()
    if return_meta:
        meta = {"red": red, "blue": blue, "distractors": distractors, "params": asdict(p)}
        return images, labels, meta
    return images, labels


def label_permutation(n: int, seed: int = 0) -> np.ndarray:
    """The fixed permutation of the shuffled-label control (stream ``(seed, 2, version)``)."""
    return np.random.default_rng([int(seed), 2, GENERATOR_VERSION]).permutation(n)


def generated_digest(description: str, *arrays: np.ndarray) -> str:
    h = hashlib.sha256(description.encode())
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _count(value: object, what: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = -1
    if n < 1 or n != float(value):
        raise DataError(f"positional {what}={value!r} is not valid; give a positive integer")
    return n


def _flag(value: object, what: str) -> bool:
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise DataError(f"positional {what}={value!r} is not valid; give 1 or 0")


class Positional(Loader):
    """The generator as a data set: no files, and never cached (the generator is faster than a
    cache round trip). ``shuffle_labels=1``: the negative control; the training labels are
    permuted (a fixed stream of its own), the test labels stay true, so a model can only guess.
    """

    name = "positional"
    augment = "none"
    options = {"difficulty": "0..1 or easy/medium/hard", "grid": "cells per side, 2..10",
               "n_train": "train images", "n_test": "test images",
               "shuffle_labels": "1 = permuted training labels (control)"}
    key = None
    image_size = SIZE

    @classmethod
    def open(cls, *, data_dir: str | os.PathLike | None, cache_dir: str | os.PathLike | None,
             download: bool, image_size: int | None, seed: int, **options) -> Positional:
        # no files: data_dir, cache_dir and download do not apply
        return cls(image_size=image_size, seed=seed, **options)

    def __init__(self, *, image_size: int | None = None, seed: int = 0,
                 difficulty: float | str | None = None, grid: int | str | None = None,
                 n_train: int | str = DEFAULT_N_TRAIN, n_test: int | str = DEFAULT_N_TEST,
                 shuffle_labels: bool | int | str = False):
        if image_size not in (None, SIZE):
            raise DataError(f"the positional set is generated at {SIZE}×{SIZE}; drop "
                            f"--image-size {image_size} or set it to {SIZE}")
        self.params = params_for(difficulty, grid)
        self.seed = seed
        self.n_train, self.n_test = _count(n_train, "n_train"), _count(n_test, "n_test")
        self.shuffled = _flag(shuffle_labels, "shuffle_labels")
        self.description = describe(self.params, self.n_train, self.n_test, seed)
        if self.shuffled:
            self.description += " with shuffled training labels"

    def decode(self, progress: Progress | None = None) -> Dataset:
        p, seed = self.params, self.seed
        xtr, ytr = generate_positional(self.n_train, seed, split=0, params=p)
        if self.shuffled:
            ytr = ytr[label_permutation(self.n_train, seed)]
        xte, yte = generate_positional(self.n_test, seed, split=1, params=p)
        return self.dataset(
            Split(torch.from_numpy(xtr), torch.from_numpy(ytr)),
            Split(torch.from_numpy(xte), torch.from_numpy(yte)),
            classes=class_names(p.grid),
            checksum=generated_digest(self.description, xtr, ytr, xte, yte),
            source=self.description, info={"layout": "generated", "params": p.__dict__})
