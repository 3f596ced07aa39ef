"""The positional generator, balanced subsets and batch augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from caprobe.data import (
    augment_batch,
    balanced_subset,
    generate_positional,
    label_from_positions,
    load_dataset,
    to_input,
)
from caprobe.data import positional as pos
from caprobe.errors import DataError


# ---------------------------------------------------------------------------------- positional
@pytest.mark.parametrize("difficulty", [0.0, "medium", 1.0])
def test_positional_deterministic_per_seed(difficulty):
    a = generate_positional(100, seed=3, difficulty=difficulty)
    b = generate_positional(100, seed=3, difficulty=difficulty)
    c = generate_positional(100, seed=4, difficulty=difficulty)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert a[0].dtype == np.uint8 and a[0].shape == (100, 3, 16, 16)
    assert np.bincount(a[1], minlength=36).tolist() == [3] * 28 + [2] * 8  # 6 x 6 default


@pytest.mark.parametrize(("difficulty", "grid"), [(0.0, 5), (0.5, 3), (1.0, 5), (0.8, 7)])
def test_positional_labels_are_the_grid_cell_of_the_red_mark(difficulty, grid):
    images, labels, meta = generate_positional(700, seed=1, difficulty=difficulty, grid=grid,
                                               return_meta=True)
    red, blue = meta["red"], meta["blue"]
    assert np.array_equal(label_from_positions(red, grid), labels)
    assert (blue is not None) == (difficulty > 0.5)  # v4: no blue mark up to the default
    if blue is None:
        blue = red
    # recomputed independently from the generator's description: 14 centre positions (1..14)
    # cut into `grid` equal-as-possible bands per axis, label = row * grid + col
    edges = np.linspace(0, 14, grid + 1)
    row = np.searchsorted(edges, red[:, 0] - 1, side="right") - 1
    col = np.searchsorted(edges, red[:, 1] - 1, side="right") - 1
    assert np.array_equal(row * grid + col, labels)
    assert [pos.class_names(grid)[i] for i in labels[:3]] == [
        f"r{r}c{c}" for r, c in zip(row[:3], col[:3], strict=True)]
    assert ((red >= 1) & (red <= 14) & (blue >= 1) & (blue <= 14)).all()
    p = pos.params_for(difficulty, grid)
    # near misses: within max_offset px of an interior boundary on some axis
    lo, hi = edges[:-1], edges[1:]
    inner = [np.minimum(red[:, k] - 1 - lo[(row, col)[k]], hi[(row, col)[k]] - (red[:, k] - 1) - 1)
             + np.where(((row, col)[k] == 0) | ((row, col)[k] == grid - 1), 99, 0)
             for k in range(2)]
    hugging = np.minimum(*inner) < p.max_offset
    assert hugging.mean() >= p.near - 0.06
    dist = meta["distractors"]
    assert dist.shape == (700, p.n_distractors, 2)
    for mark in (red, blue):
        assert (np.abs(dist - mark[:, None, :]).max(axis=2) >= 4).all()
    if difficulty > 0.5:
        assert (np.abs(red - blue).max(axis=1) >= 4).all()                  # never touch


def test_positional_marks_drawn_where_meta_says():
    """Without noise, clutter or distractors the red and blue plus sit at the recorded centres."""
    import dataclasses

    quiet = dataclasses.replace(pos.params_for(0.0), noise=0.0, n_clutter=0, n_distractors=0,
                                jitter=0.0, blue=True)
    images, _, meta = generate_positional(30, seed=2, params=quiet, return_meta=True)
    for i, img in enumerate(images.astype(int)):
        for colour, centre in ((pos.RED, meta["red"][i]), (pos.BLUE, meta["blue"][i])):
            rgb = np.rint(np.array(colour) * 255)
            ys, xs = np.nonzero(np.abs(img - rgb[:, None, None]).sum(axis=0) == 0)
            y, x = centre
            assert sorted(zip(ys.tolist(), xs.tolist(), strict=True)) == sorted(
                (y + dy, x + dx) for dy, dx in pos.PLUS)


def test_positional_dataset_api():
    ds = load_dataset("positional", n_train=50, n_test=25, difficulty="hard", seed=5)
    assert ds.name == "positional" and ds.num_classes == 36
    assert ds.classes == pos.class_names(6) and ds.classes[8] == "r1c2"
    assert ds.train.images.shape == (50, 3, 16, 16) and ds.test.labels.shape == (25,)
    assert ds.augment == "none" and ds.image_size == 16
    assert ds.source.startswith("built-in generator v4") and "difficulty=0.8" in ds.source
    again = load_dataset("positional", n_train=50, n_test=25, difficulty=0.8, seed=5)
    assert again.checksum == ds.checksum and torch.equal(again.train.images, ds.train.images)
    other = load_dataset("positional", n_train=50, n_test=25, difficulty=0.8, seed=6)
    assert other.checksum != ds.checksum
    coarse = load_dataset("positional", n_train=50, n_test=25, difficulty=0.8, seed=5, grid=3)
    assert coarse.num_classes == 9 and coarse.checksum != ds.checksum
    assert not torch.equal(ds.train.images[:25], ds.test.images)       # splits differ


@pytest.mark.parametrize("bad", [{"difficulty": 1.5}, {"difficulty": "extreme"},
                                 {"n_train": 0}, {"n_test": "many"}, {"image_size": 64},
                                 {"grid": 1}, {"grid": 11}, {"grid": "2.5"},
                                 {"grid": "x"}, {"grid": 2.5}, {"shuffle_labels": "maybe"}])
def test_positional_bad_options(bad):
    with pytest.raises(DataError):
        load_dataset("positional", **bad)


def test_default_difficulty_has_no_distractors_and_harder_levels_add_them():
    """v4: up to the default only the red mark; distractors, near misses and clutter above."""
    p = pos.params_for()
    assert (p.grid, p.blue, p.n_distractors, p.n_clutter, p.jitter) == (6, False, 0, 0, 0.0)
    assert (p.near, p.noise, p.ramp) == (0.2, 0.08, 0.15)
    hard = pos.params_for(1.0)
    assert (hard.blue, hard.n_distractors, hard.n_clutter, hard.near) == (True, 2, 4, 0.4)
    assert hard.ramp == pytest.approx(0.05) and hard.noise == pytest.approx(0.12)
    _, _, meta = generate_positional(20, seed=0, return_meta=True)
    assert meta["blue"] is None and meta["distractors"].shape == (20, 0, 2)


def test_background_ramp_encodes_the_pixel_position():
    """Without noise or marks, green rises left to right and blue top to bottom by ``ramp``,
    the same in every image (up to the per-image grey level): the probe's "where" cue."""
    import dataclasses

    p = dataclasses.replace(pos.params_for(), noise=0.0, near=0.0, ramp=0.2)
    images, _, meta = generate_positional(8, seed=1, params=p, return_meta=True)
    x = images.astype(float) / 255.0
    keep = np.ones(x.shape, dtype=bool)
    for i, (y0, x0) in enumerate(meta["red"]):         # ignore the red plus
        for dy, dx in pos.PLUS:
            keep[i, :, y0 + dy, x0 + dx] = False
    green = np.where(keep[:, 1], x[:, 1], np.nan)
    blue = np.where(keep[:, 2], x[:, 2], np.nan)
    ramp = 0.2 * (np.arange(16) - 7.5) / 15
    level = np.nanmean(green, axis=(1, 2))
    assert np.nanmax(np.abs(green - level[:, None, None] - ramp[None, None, :])) < 1 / 255 + 1e-9
    assert np.nanmax(np.abs(blue - level[:, None, None] - ramp[None, :, None])) < 1 / 255 + 1e-9
    red = np.where(keep[:, 0], x[:, 0], np.nan)
    assert np.nanstd(red, axis=(1, 2)).max() < 1 / 255


def test_shuffled_labels_control_permutes_only_the_training_labels():
    plain = load_dataset("positional", n_train=64, n_test=32, seed=2)
    shuffled = load_dataset("positional", n_train=64, n_test=32, seed=2, shuffle_labels=1)
    assert torch.equal(plain.train.images, shuffled.train.images)
    assert torch.equal(plain.test.labels, shuffled.test.labels)
    perm = torch.from_numpy(pos.label_permutation(64, 2))
    assert torch.equal(shuffled.train.labels, plain.train.labels[perm])
    assert not torch.equal(shuffled.train.labels, plain.train.labels)
    assert shuffled.checksum != plain.checksum and "shuffled" in shuffled.source
    same = load_dataset("positional", n_train=64, n_test=32, seed=2, shuffle_labels="false")
    assert same.checksum == plain.checksum


# -------------------------------------------------------------------------------------- subset
def test_balanced_subset_balance_and_determinism():
    labels = torch.arange(1000) % 10
    idx = balanced_subset(labels, 95, seed=0)
    assert idx.shape == (95,) and torch.equal(idx, torch.sort(idx).values)
    assert len(set(idx.tolist())) == 95
    counts = torch.bincount(labels[idx], minlength=10)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 95
    assert torch.equal(idx, balanced_subset(labels, 95, seed=0))
    assert not torch.equal(idx, balanced_subset(labels, 95, seed=1))
    assert torch.equal(balanced_subset(labels, 1000, seed=3), torch.arange(1000))


def test_balanced_subset_small_class_gives_all():
    labels = torch.tensor([0] * 3 + [1] * 50 + [2] * 50)
    idx = balanced_subset(labels, 30, seed=0)
    assert torch.bincount(labels[idx]).tolist() == [3, 14, 13] or \
        torch.bincount(labels[idx]).tolist() == [3, 13, 14]
    with pytest.raises(DataError):
        balanced_subset(labels, 200, seed=0)


# ------------------------------------------------------------------------------------- augment
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _batch(n=6, size=32):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("policy", ["crop_flip", "rrc_flip", "none"])
def test_augment_shapes_and_determinism(policy):
    x = _batch()
    a = augment_batch(x, policy=policy, generator=torch.Generator().manual_seed(1),
                      mean=MEAN, std=STD)
    b = augment_batch(x, policy=policy, generator=torch.Generator().manual_seed(1),
                      mean=MEAN, std=STD)
    assert a.dtype == torch.float32 and a.shape == x.shape and torch.equal(a, b)
    if policy != "none":
        c = augment_batch(x, policy=policy, generator=torch.Generator().manual_seed(2),
                          mean=MEAN, std=STD)
        assert not torch.equal(a, c)
    else:
        assert torch.equal(a, to_input(x, MEAN, STD))


def test_crop_flip_matches_per_image_reference():
    x = _batch(8)
    g = torch.Generator().manual_seed(7)
    out = augment_batch(x, policy="crop_flip", generator=g, mean=(0, 0, 0), std=(1 / 255,) * 3)
    g = torch.Generator().manual_seed(7)
    oy = torch.randint(0, 9, (8,), generator=g)
    ox = torch.randint(0, 9, (8,), generator=g)
    flip = torch.rand(8, generator=g) < 0.5
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(8):
        ref = padded[i, :, oy[i]:oy[i] + 32, ox[i]:ox[i] + 32]
        if flip[i]:
            ref = ref.flip(-1)
        assert torch.equal(out[i], ref.float())


def test_rrc_full_crop_is_identity_or_flip():
    from caprobe.data import augment as aug

    x = _batch(4, 16)
    old = aug.RRC_SCALE, aug.RRC_RATIO
    try:
        aug.RRC_SCALE, aug.RRC_RATIO = (1.0, 1.0), (1.0, 1.0)
        out = augment_batch(x, policy="rrc_flip", generator=torch.Generator().manual_seed(0),
                            mean=(0, 0, 0), std=(1 / 255,) * 3)
    finally:
        aug.RRC_SCALE, aug.RRC_RATIO = old
    for i in range(4):
        assert torch.allclose(out[i], x[i].float(), atol=1e-3) or \
            torch.allclose(out[i], x[i].flip(-1).float(), atol=1e-3)


def test_to_input_normalises_and_rejects_floats():
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    y = to_input(x, MEAN, STD)
    expected = torch.tensor([(1 - m) / s for m, s in zip(MEAN, STD, strict=True)])
    assert torch.allclose(y[0, :, 0, 0], expected)
    with pytest.raises(DataError):
        to_input(x.float(), MEAN, STD)
    with pytest.raises(DataError, match="valid: crop_flip"):
        augment_batch(x, policy="mixup", generator=torch.Generator(), mean=MEAN, std=STD)
