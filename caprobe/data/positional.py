"""``positional``: a built-in synthetic 32×32 set whose label is *where* two marks are.

Generator v1 (deterministic from ``seed``; numpy PCG64 streams ``(seed, 0)`` for train and
``(seed, 1)`` for test, so the two splits never share images):

* **Background**: a random mid-range base colour (each channel U(0.25, 0.75)), a linear
  gradient in a random direction (amplitude U(0, 0.2)), ``n_clutter`` low-contrast 1-px
  line segments (horizontal, vertical or single pixels, length 1–5) and, last of all, i.i.d.
  Gaussian pixel noise of std ``noise``.
* **Distractors**: ``n_distractors`` 3×3 marks of other shapes (×, filled square, ring,
  corner) in random colours, never overlapping each other or the targets.
* **Targets**: two 3×3 "plus" marks of one colour (a random signed offset from the
  background colour with contrast U(``min_contrast``, 0.9); each mark's intensity is further
  scaled by U(1 - ``jitter``, 1)). Centres ``(y, x)`` lie in 1..30 so marks may touch the border.
* **Label** (3 balanced classes) is a function of the two target centres only::

      0 same_row     if y1 == y2
      1 same_column  if x1 == x2
      2 neither      otherwise

  Aligned pairs keep the other coordinate at least 4 px apart (marks never touch). A share
  ``near_miss`` of the "neither" images are *near misses*: one coordinate differs by only
  1..``max_offset`` px, so the task needs fine relative position, not "is there a mark in
  cell k" (which a plain CNN solves from zero padding alone).

``difficulty`` (0..1, or a named level ``easy``/``medium``/``hard``) sets every knob at once:
``near_miss = 0.2 + 0.6 d``, ``max_offset = 3, 2, 1`` for d in [0, ⅓), [⅓, ⅔), [⅔, 1],
``n_distractors = round(1 + 5 d)``, ``n_clutter = round(2 + 10 d)``,
``noise = 0.02 + 0.08 d``, ``min_contrast = 0.55 - 0.35 d``, ``jitter = 0.3 d``.

Flips and crops are not used for training (augment policy ``"none"``): a vertical flip keeps the
labels but a crop can push a mark out of the picture, and the set exists to test position.
:func:`label_from_positions` recomputes the labels from the metadata returned by
``generate_positional(..., return_meta=True)``.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np

from caprobe.errors import DataError

GENERATOR_VERSION = 1
SIZE = 32
CLASSES = ["same_row", "same_column", "neither"]
LEVELS = {"easy": 0.2, "medium": 0.5, "hard": 0.8}
DEFAULT_DIFFICULTY = 0.5
DEFAULT_N_TRAIN = 3000
DEFAULT_N_TEST = 1000

_PLUS = ((-1, 0), (0, -1), (0, 0), (0, 1), (1, 0))
_DISTRACTOR_SHAPES = (
    ((-1, -1), (-1, 1), (0, 0), (1, -1), (1, 1)),                       # ×
    tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)),           # filled square
    tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)),  # ring
    ((-1, -1), (0, -1), (1, -1), (1, 0), (1, 1)),                       # corner (L)
)
DISTRACTOR_NAMES = ("x", "square", "ring", "corner")


@dataclass(frozen=True)
class PositionalParams:
    difficulty: float
    near_miss: float
    max_offset: int
    n_distractors: int
    n_clutter: int
    noise: float
    min_contrast: float
    jitter: float


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


def params_for(difficulty: float | str | None = None) -> PositionalParams:
    d = parse_difficulty(difficulty)
    return PositionalParams(
        difficulty=d,
        near_miss=round(0.2 + 0.6 * d, 6),
        max_offset=3 if d < 1 / 3 else (2 if d < 2 / 3 else 1),
        n_distractors=int(round(1 + 5 * d)),
        n_clutter=int(round(2 + 10 * d)),
        noise=round(0.02 + 0.08 * d, 6),
        min_contrast=round(0.55 - 0.35 * d, 6),
        jitter=round(0.3 * d, 6),
    )


def describe(difficulty: float | str | None = None, n_train: int = DEFAULT_N_TRAIN,
             n_test: int = DEFAULT_N_TEST, seed: int = 0) -> str:
    """One line naming the generator, its version and every parameter (stored as ``source``)."""
    p = params_for(difficulty)
    knobs = ", ".join(f"{k}={v}" for k, v in asdict(p).items())
    return (f"built-in generator v{GENERATOR_VERSION} (positional: same_row/same_column/neither "
            f"of two plus marks; {knobs}; n_train={n_train}, n_test={n_test}, seed={seed})")


def label_from_positions(targets: np.ndarray) -> np.ndarray:
    """Labels from target centres ``(..., 2, (y, x))``: 0 same row, 1 same column, 2 neither."""
    t = np.asarray(targets)
    same_row = t[..., 0, 0] == t[..., 1, 0]
    same_col = t[..., 0, 1] == t[..., 1, 1]
    return np.where(same_row, 0, np.where(same_col, 1, 2)).astype(np.int64)


def _far_pair(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Two coordinates in 1..30 at least 4 apart."""
    a = rng.integers(1, SIZE - 1, size=n)
    gap = rng.integers(4, SIZE - 2, size=n)             # 4..29
    b = a + gap * rng.choice([-1, 1], size=n)
    bad = (b < 1) | (b > SIZE - 2)
    while bad.any():
        k = int(bad.sum())
        a[bad] = rng.integers(1, SIZE - 1, size=k)
        gap_k = rng.integers(4, SIZE - 2, size=k)
        b[bad] = a[bad] + gap_k * rng.choice([-1, 1], size=k)
        bad = (b < 1) | (b > SIZE - 2)
    return a, b


def _target_positions(rng: np.random.Generator, labels: np.ndarray,
                      p: PositionalParams) -> np.ndarray:
    n = len(labels)
    t = np.zeros((n, 2, 2), dtype=np.int64)            # [image, mark, (y, x)]
    # aligned: shared coordinate plus a far pair on the other axis
    for label, shared_axis in ((0, 0), (1, 1)):
        idx = np.flatnonzero(labels == label)
        c = rng.integers(1, SIZE - 1, size=len(idx))
        a, b = _far_pair(rng, len(idx))
        t[idx, 0, shared_axis] = c
        t[idx, 1, shared_axis] = c
        t[idx, 0, 1 - shared_axis] = a
        t[idx, 1, 1 - shared_axis] = b
    idx = np.flatnonzero(labels == 2)
    near = rng.random(len(idx)) < p.near_miss
    # near misses: one axis off by 1..max_offset, the other a far pair
    ni = idx[near]
    axis = rng.integers(0, 2, size=len(ni))
    c = rng.integers(1, SIZE - 1, size=len(ni))
    off = rng.integers(1, p.max_offset + 1, size=len(ni)) * rng.choice([-1, 1], size=len(ni))
    c2 = c + off
    c2 = np.where((c2 < 1) | (c2 > SIZE - 2), c - off, c2)
    a, b = _far_pair(rng, len(ni))
    rows = np.arange(len(ni))
    near_t = np.zeros((len(ni), 2, 2), dtype=np.int64)
    near_t[rows, 0, axis] = c
    near_t[rows, 1, axis] = c2
    near_t[rows, 0, 1 - axis] = a
    near_t[rows, 1, 1 - axis] = b
    t[ni] = near_t
    # the rest: anywhere, not aligned on either axis, not overlapping
    fi = idx[~near]
    pos = rng.integers(1, SIZE - 1, size=(len(fi), 2, 2))
    bad = _unaligned_bad(pos)
    while bad.any():
        pos[bad] = rng.integers(1, SIZE - 1, size=(int(bad.sum()), 2, 2))
        bad = _unaligned_bad(pos)
    t[fi] = pos
    return t


def _unaligned_bad(pos: np.ndarray) -> np.ndarray:
    d = np.abs(pos[:, 0] - pos[:, 1])
    return (d[:, 0] == 0) | (d[:, 1] == 0) | ((d[:, 0] < 4) & (d[:, 1] < 4))


def _place_distractors(rng: np.random.Generator, targets: np.ndarray, k: int) -> np.ndarray:
    n = targets.shape[0]
    placed = [targets[:, 0], targets[:, 1]]
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


def _mark_colour(rng: np.random.Generator, base: np.ndarray, p: PositionalParams) -> np.ndarray:
    n = base.shape[0]
    sign = rng.choice([-1.0, 1.0], size=(n, 3))
    contrast = rng.uniform(p.min_contrast, 0.9, size=(n, 1))
    direction = rng.uniform(0.6, 1.0, size=(n, 3))
    return sign * contrast * direction                  # offset from the background colour


def _stamp(img: np.ndarray, yx: np.ndarray, shape_pixels, colour: np.ndarray,
           rows: np.ndarray) -> None:
    for dy, dx in shape_pixels:
        img[rows, yx[:, 0] + dy, yx[:, 1] + dx] = colour


def generate_positional(n: int, seed: int = 0, difficulty: float | str | None = None, *,
                        split: int = 0, return_meta: bool = False,
                        params: PositionalParams | None = None):
    """``n`` images (uint8 N×3×32×32, numpy) and labels (int64 N) of the positional task.

    ``split`` selects the random stream (0 train, 1 test). With ``return_meta`` a third value
    is returned: ``{"targets": (N, 2, 2) centres (y, x), "distractors": (N, k, 2),
    "distractor_shapes": (N, k) indices into DISTRACTOR_NAMES, "params": dict}``.
    ``params`` overrides every knob that ``difficulty`` would set (for experiments).
    """
    if n < 0:
        raise DataError(f"positional set size {n} is negative; give n_train/n_test >= 0")
    p = params if params is not None else params_for(difficulty)
    rng = np.random.default_rng([int(seed), int(split), GENERATOR_VERSION])
    labels = np.arange(n, dtype=np.int64) % 3
    labels = labels[rng.permutation(n)]

    base = rng.uniform(0.25, 0.75, size=(n, 3))
    angle = rng.uniform(0, 2 * np.pi, size=n)
    amp = rng.uniform(0, 0.2, size=n)
    coords = (np.arange(SIZE) - (SIZE - 1) / 2) / (SIZE - 1)
    ramp = (np.cos(angle)[:, None, None] * coords[None, :, None]
            + np.sin(angle)[:, None, None] * coords[None, None, :])      # N×H×W in -0.7..0.7
    img = base[:, None, None, :] + (amp[:, None, None] * ramp)[..., None]  # N×H×W×3
    rows = np.arange(n)

    # clutter: short low-contrast lines
    for _ in range(p.n_clutter):
        orient = rng.integers(0, 2, size=n)
        length = rng.integers(1, 6, size=n)
        y0 = rng.integers(0, SIZE, size=n)
        x0 = rng.integers(0, SIZE, size=n)
        colour = base + rng.choice([-1.0, 1.0], size=(n, 3)) * rng.uniform(0.08, 0.25, size=(n, 3))
        for k in range(5):
            on = k < length
            y = np.clip(y0 + k * (orient == 1), 0, SIZE - 1)
            x = np.clip(x0 + k * (orient == 0), 0, SIZE - 1)
            img[rows[on], y[on], x[on]] = colour[on]

    targets = _target_positions(rng, labels, p)
    distractors = _place_distractors(rng, targets, p.n_distractors)
    shapes = rng.integers(0, len(_DISTRACTOR_SHAPES), size=(n, p.n_distractors))
    for j in range(p.n_distractors):
        colour = base + _mark_colour(rng, base, p)
        for s, pixels in enumerate(_DISTRACTOR_SHAPES):
            sel = rows[shapes[:, j] == s]
            _stamp(img, distractors[sel, j], pixels, colour[sel], sel)
    offset = _mark_colour(rng, base, p)
    for m in range(2):
        scale = rng.uniform(1 - p.jitter, 1.0, size=(n, 1))
        _stamp(img, targets[:, m], _PLUS, base + offset * scale, rows)

    img = img + rng.normal(0.0, p.noise, size=img.shape)
    images = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    images = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    assert (label_from_positions(targets) == labels).all()
    if return_meta:
        meta = {"targets": targets, "distractors": distractors, "distractor_shapes": shapes,
                "params": asdict(p)}
        return images, labels, meta
    return images, labels


def generated_digest(description: str, *arrays: np.ndarray) -> str:
    h = hashlib.sha256(description.encode())
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()
