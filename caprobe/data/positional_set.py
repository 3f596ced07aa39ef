"""The positional generator wrapped as a :class:`~caprobe.data.base.Plan` (no files, no cache)."""

from __future__ import annotations

import torch

from caprobe.data import positional as pos
from caprobe.data.base import Built, Plan
from caprobe.errors import DataError


def _count(value, what: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = -1
    if n < 1 or n != float(value):
        raise DataError(f"positional {what}={value!r} is not valid; give a positive integer")
    return n


def _flag(value, what: str) -> bool:
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise DataError(f"positional {what}={value!r} is not valid; give 1 or 0")


def plan_positional(*, image_size: int | None = None, seed: int = 0, difficulty=None,
                    grid=None, n_train=pos.DEFAULT_N_TRAIN, n_test=pos.DEFAULT_N_TEST,
                    shuffle_labels=False) -> Plan:
    """``shuffle_labels=1``: the negative control; the training labels are permuted (a fixed
    stream of its own), the test labels stay true, so a model can only guess."""
    if image_size not in (None, pos.SIZE):
        raise DataError(f"the positional set is generated at {pos.SIZE}×{pos.SIZE}; drop "
                        f"--image-size {image_size} or set it to {pos.SIZE}")
    params = pos.params_for(difficulty, grid)
    n_train, n_test = _count(n_train, "n_train"), _count(n_test, "n_test")
    shuffled = _flag(shuffle_labels, "shuffle_labels")
    description = pos.describe(params, n_train, n_test, seed)
    if shuffled:
        description += " with shuffled training labels"

    def build(progress=None) -> Built:
        xtr, ytr = pos.generate_positional(n_train, seed, split=0, params=params)
        if shuffled:
            ytr = ytr[pos.label_permutation(n_train, seed)]
        xte, yte = pos.generate_positional(n_test, seed, split=1, params=params)
        checksum = pos.generated_digest(description, xtr, ytr, xte, yte)
        return Built(torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte),
                     torch.from_numpy(yte), pos.class_names(params.grid), checksum,
                     info={"layout": "generated", "params": params.__dict__})

    return Plan("positional", description, f"positional:{description}", pos.SIZE, "none", build,
                info={"layout": "generated"})
