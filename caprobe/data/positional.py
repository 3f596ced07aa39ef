"""``positional``: a built-in synthetic 32×32 set whose label is *where* one mark lies
relative to another.

Generator v2 (deterministic from ``seed``; numpy PCG64 streams ``(seed, split, 2)``: split 0
train, 1 test, so the two splits never share images).

* **Marks**: a red "plus" (the reference, colour (0.95, 0.25, 0.2)) and a blue "plus" (colour
  (0.25, 0.45, 1.0)), 3×3 each, intensities scaled by U(1 - ``jitter``, 1). Centres ``(y, x)``
  lie in 1..30; the two marks never touch (Chebyshev distance >= 4) and never share a row or a
  column.
* **Label**: the quadrant of the blue mark as seen from the red one, 4 balanced classes::

      label = 2 * (y_blue > y_red) + (x_blue > x_red)
      0 above_left   1 above_right   2 below_left   3 below_right

* **Near misses**: in a share ``near`` of the images one coordinate of the blue mark differs
  from the red one by only 1..``max_offset`` px (the other at least 4 px), so the class hinges
  on a one- or two-pixel relative offset between marks that may be far apart.
* **Distractors**: ``n_distractors`` pluses in other colours (green, yellow, white), never
  touching each other or the two marks.
* **Background**: a dark, nearly grey base (grey level U(0.15, 0.45) plus a per-channel tint
  U(-0.04, 0.04)), a linear gradient in a random direction (amplitude U(0, 0.15)),
  ``n_clutter`` grey 1-px line segments of length 1–5 (brightness ±0.08–0.25 from the base),
  and i.i.d. Gaussian pixel noise of std ``noise`` over everything. Only the marks are
  saturated, so finding them is easy and the position relation is what is learned.

``difficulty`` (0..1, or ``easy``/``medium``/``hard``) sets every knob at once:
``near = 0.7 d``, ``max_offset = 2`` (1 from d >= 2/3), ``n_distractors = round(1 + 2 d)``,
``n_clutter = round(2 + 6 d)``, ``noise = 0.03 + 0.04 d``, ``jitter = 0.3 d``.

Why this task (calibration, MobileNetV2 width 0.35, CIFAR profile, 2,500 images × 4 epochs,
SGD lr 0.1): "which 3×3 cell holds the red mark" is solved at 99.9 % even when a fifth of the
targets sit on a cell boundary pixel (absolute position leaks in through zero padding), and
"do two identical marks share a row / column / neither" stayed at chance (33 %) for the same
budget, so neither can rank modules. The quadrant task is learnable but not saturated: the
plain network reaches about 83 % with no near misses and about 65 % with 60 % near misses.

The training augmentation policy is ``"none"``: flips change the label.
:func:`label_from_positions` recomputes the labels from the metadata returned by
``generate_positional(..., return_meta=True)``.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np

from caprobe.errors import DataError

GENERATOR_VERSION = 2
SIZE = 32
CLASSES = ["above_left", "above_right", "below_left", "below_right"]
LEVELS = {"easy": 0.2, "medium": 0.5, "hard": 0.8}
DEFAULT_DIFFICULTY = 0.5
DEFAULT_N_TRAIN = 2500
DEFAULT_N_TEST = 1000
RED = (0.95, 0.25, 0.2)
BLUE = (0.25, 0.45, 1.0)
OTHER_COLOURS = ((0.25, 0.85, 0.3), (0.95, 0.9, 0.2), (0.9, 0.9, 0.9))
PLUS = ((-1, 0), (0, -1), (0, 0), (0, 1), (1, 0))


@dataclass(frozen=True)
class PositionalParams:
    difficulty: float
    near: float
    max_offset: int
    n_distractors: int
    n_clutter: int
    noise: float
    jitter: float
    gradient: float = 0.15


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
        near=round(0.7 * d, 6),
        max_offset=2 if d < 2 / 3 else 1,
        n_distractors=int(round(1 + 2 * d)),
        n_clutter=int(round(2 + 6 * d)),
        noise=round(0.03 + 0.04 * d, 6),
        jitter=round(0.3 * d, 6),
    )


def describe(difficulty: float | str | None = None, n_train: int = DEFAULT_N_TRAIN,
             n_test: int = DEFAULT_N_TEST, seed: int = 0) -> str:
    """One line naming the generator, its version and every parameter (stored as ``source``)."""
    p = params_for(difficulty)
    knobs = ", ".join(f"{k}={v}" for k, v in asdict(p).items())
    return (f"built-in generator v{GENERATOR_VERSION} (positional: quadrant of a blue plus "
            f"relative to a red plus; {knobs}; n_train={n_train}, n_test={n_test}, seed={seed})")


def label_from_positions(red: np.ndarray, blue: np.ndarray) -> np.ndarray:
    """Labels from mark centres ``(..., (y, x))``: ``2 * (y_blue > y_red) + (x_blue > x_red)``."""
    r, b = np.asarray(red), np.asarray(blue)
    return (2 * (b[..., 0] > r[..., 0]) + (b[..., 1] > r[..., 1])).astype(np.int64)


def _mark_positions(rng: np.random.Generator, labels: np.ndarray,
                    p: PositionalParams) -> tuple[np.ndarray, np.ndarray]:
    n = len(labels)
    sign = np.stack([np.where(labels >= 2, 1, -1), np.where(labels % 2 == 1, 1, -1)], axis=1)
    near = rng.random(n) < p.near
    near_axis = rng.integers(0, 2, size=n)
    red = np.zeros((n, 2), dtype=np.int64)
    blue = np.zeros((n, 2), dtype=np.int64)
    todo = np.ones(n, dtype=bool)
    while todo.any():
        k = int(todo.sum())
        r = rng.integers(1, SIZE - 1, size=(k, 2))
        mag = rng.integers(1, SIZE - 2, size=(k, 2))                       # 1..29
        small = rng.integers(1, p.max_offset + 1, size=k)
        far = rng.integers(4, SIZE - 2, size=k)
        ax = near_axis[todo]
        rows = np.arange(k)
        nr = near[todo]
        mag[rows[nr], ax[nr]] = small[nr]
        mag[rows[nr], 1 - ax[nr]] = far[nr]
        b = r + sign[todo] * mag
        ok = ((b >= 1) & (b <= SIZE - 2)).all(axis=1) & (mag.max(axis=1) >= 4)
        if not nr.all():                        # plain pairs: no near miss on either axis
            ok &= nr | (mag.min(axis=1) > p.max_offset)
        idx = np.flatnonzero(todo)[ok]
        red[idx], blue[idx] = r[ok], b[ok]
        todo[idx] = False
    return red, blue


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
                        split: int = 0, return_meta: bool = False,
                        params: PositionalParams | None = None):
    """``n`` images (uint8 N×3×32×32, numpy) and labels (int64 N) of the positional task.

    ``split`` selects the random stream (0 train, 1 test). With ``return_meta`` a third value
    is returned: ``{"red": (N, 2) and "blue": (N, 2) centres (y, x), "distractors": (N, k, 2)
    centres, "params": dict}``. ``params`` overrides the knobs ``difficulty`` would set.
    """
    if n < 0:
        raise DataError(f"positional set size {n} is negative; give n_train/n_test >= 0")
    p = params if params is not None else params_for(difficulty)
    rng = np.random.default_rng([int(seed), int(split), GENERATOR_VERSION])
    labels = (np.arange(n, dtype=np.int64) % len(CLASSES))[rng.permutation(n)]
    rows = np.arange(n)

    base = rng.uniform(0.15, 0.45, size=(n, 1)) + rng.uniform(-0.04, 0.04, size=(n, 3))
    angle = rng.uniform(0, 2 * np.pi, size=n)
    amp = rng.uniform(0, p.gradient, size=n)
    coords = (np.arange(SIZE) - (SIZE - 1) / 2) / (SIZE - 1)
    ramp = (np.cos(angle)[:, None, None] * coords[None, :, None]
            + np.sin(angle)[:, None, None] * coords[None, None, :])
    img = base[:, None, None, :] + (amp[:, None, None] * ramp)[..., None]      # N×H×W×3

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

    red, blue = _mark_positions(rng, labels, p)
    distractors = _place_distractors(rng, [red, blue], p.n_distractors)
    palette = np.array(OTHER_COLOURS)
    for j in range(p.n_distractors):
        colour = palette[rng.integers(0, len(OTHER_COLOURS), size=n)]
        colour = colour * rng.uniform(1 - p.jitter, 1.0, size=(n, 1))
        _stamp(img, distractors[:, j], PLUS, colour, rows)
    for centre, colour in ((red, RED), (blue, BLUE)):
        scale = rng.uniform(1 - p.jitter, 1.0, size=(n, 1))
        _stamp(img, centre, PLUS, np.array(colour)[None, :] * scale, rows)

    img = img + rng.normal(0.0, p.noise, size=img.shape)
    images = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    images = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    assert (label_from_positions(red, blue) == labels).all()
    if return_meta:
        meta = {"red": red, "blue": blue, "distractors": distractors, "params": asdict(p)}
        return images, labels, meta
    return images, labels


def generated_digest(description: str, *arrays: np.ndarray) -> str:
    h = hashlib.sha256(description.encode())
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()
