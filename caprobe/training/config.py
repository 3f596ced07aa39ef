"""Every training default in one place: :class:`TrainConfig` and the per-data-set recipe table.

A field left at ``None`` means "the recipe default for this data set" (:data:`RECIPES`);
:func:`resolve` fills them in once the data set is known, and the resolved config is what is
printed and saved as ``config.json``. Kept free of torch imports.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from caprobe.errors import CaprobeError, require_positive
from caprobe.io import to_jsonable

#: Fields a recipe may fill in, per data set. The paper's ImageNet recipe (SGD Nesterov,
#: cosine, label smoothing 0.1, weight decay 4e-5) scaled down to minutes on 2 CPU cores.
#: ``train_subset`` None = the whole training split. Measured on 2 cores (see README).
RECIPES: dict[str, dict[str, Any]] = {
    # positional v4 (16 px): 2 epochs x 2,560 images in batches of 32 (160 steps, 10-20 s a
    # run on one thread: the default 3-seed compare fits 3 minutes with 2 jobs). Measured on
    # v4 prototypes (seeds 0-7): at 32 px, 80-128 steps left runs at chance or far behind
    # (none 10.7-92.0 %, cbam 13.9-91.0 % over 6 seeds); at 16 px every run learned by epoch 1.
    # Batch 64 (half the steps) left runs at chance; lr 0.02 never left it, 0.1 was unstable.
    "positional": {"width": 0.35, "epochs": 2, "batch_size": 32, "lr": 0.05,
                   "weight_decay": 5e-4, "warmup_epochs": 0.5, "train_subset": None},
    # batch 64: 35% more images/s than 128 on CPU (cache-resident activations), fp32 (bf16
    # autocast measured slower at this size even with AMX), channels-last (1.5x over NCHW).
    "cifar10": {"width": 0.5, "epochs": 5, "batch_size": 64, "lr": 0.1,
                "weight_decay": 5e-4, "warmup_epochs": 0.3, "train_subset": None},
    "cifar100": {"width": 0.5, "epochs": 5, "batch_size": 64, "lr": 0.1,
                 "weight_decay": 5e-4, "warmup_epochs": 0.3, "train_subset": None},
    "imagenette": {"width": 0.5, "epochs": 10, "batch_size": 64, "lr": 0.1,
                   "weight_decay": 5e-5, "warmup_epochs": 1.0, "train_subset": None},
}
#: Any other data set name (the data layer decides whether it exists).
FALLBACK_RECIPE: dict[str, Any] = RECIPES["cifar10"]

#: Images at most this many pixels on a side get the "cifar" model profile when profile=None.
CIFAR_PROFILE_MAX_SIDE = 64

STATUSES = ("finished", "diverged", "failed", "interrupted")
AMP_MODES = (None, "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")

#: Fields that only say where things are; a resumed run may change them (the data checksum
#: is checked instead).
NOT_COMPARED_ON_RESUME = frozenset({"data_dir", "cache_dir"})


@dataclass
class TrainConfig:
    """One training run. ``None`` = recipe default for the data set (see :data:`RECIPES`)."""

    # model
    model: str = "mobilenetv2"
    attn: str | None = None
    width: float | None = None
    profile: str | None = None  # None: "cifar" for images ≤ 64 px, else "imagenet"
    coords: bool = False  # CoordConv input channels (the positional probe's control)
    # data
    data: str = "positional"
    data_dir: str | None = None
    cache_dir: str | None = None
    data_options: dict[str, Any] = field(default_factory=dict)
    image_size: int | None = None  # None: the data set's own size (imagenette: 128)
    train_subset: int | None = None
    #: test images of the per-epoch evaluations before the last (a fixed class-balanced
    #: slice, the same for every seed and variant: curves only); the last epoch always
    #: evaluates the whole test set. None: every epoch on the whole test set
    curve_subset: int | None = None
    # schedule
    epochs: int | None = None
    steps: int | None = None  # total optimiser steps; overrides epochs when given
    batch_size: int | None = None
    lr: float | None = None  # peak learning rate, reached after the warm-up
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float | None = None  # not applied to norms and biases
    label_smoothing: float = 0.1
    warmup_epochs: float | None = None  # linear warm-up (per step), then cosine to zero
    # reproducibility and speed
    seed: int = 0
    device: str = "auto"
    threads: int | None = None  # None: torch's current setting
    amp: str | None = None  # None (fp32), "bf16", "fp16" (CUDA only)
    channels_last: bool | None = None  # None: on (much faster for depthwise convs on CPU)
    eval_batch_size: int | None = None  # None: 2 × batch_size
    #: DDP processes of this training (torchrun on one node; caprobe.training.distributed):
    #: each trains on its share of every batch, so the batch size must split evenly
    nproc_per_node: int = 1

    def dataset_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``caprobe.data.load_dataset(self.data, ...)`` for this run."""
        return {"data_dir": self.data_dir, "cache_dir": self.cache_dir, "download": False,
                "image_size": self.image_size, **(self.data_options or {})}

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise CaprobeError(f"unknown training option(s) {', '.join(unknown)}; valid: "
                               f"{', '.join(sorted(names))}")
        return cls(**raw)


def recipe_for(data: str) -> dict[str, Any]:
    return dict(RECIPES.get(str(data).lower(), FALLBACK_RECIPE))


def check_batch_split(batch_size: int, nproc: int, n_train: int | None = None) -> None:
    """Refuse a batch that does not split evenly over ``nproc`` DDP processes: the batch a
    step draws is ``min(batch_size, n_train)`` (the last partial batch is dropped)."""
    batch = batch_size if n_train is None else min(batch_size, n_train)
    if batch % nproc:
        raise CaprobeError(f"the batch of {batch} images does not split over --nproc-per-node "
                           f"{nproc}; choose a --batch-size (or --train-subset) that is a "
                           "multiple of it")


def validate(config: TrainConfig) -> TrainConfig:
    """User-fixable mistakes, checked before anything is loaded or written."""
    c = config
    if c.data_options is None:
        c.data_options = {}
    if not isinstance(c.data_options, dict):
        raise CaprobeError("data_options must be a mapping of option name to value")
    if c.image_size is not None and "image_size" in c.data_options:
        raise CaprobeError("the image size is given twice; pass --image-size N only, not also "
                           "--data-option image_size=N")
    for name in ("epochs", "steps", "batch_size", "train_subset", "curve_subset", "threads",
                 "eval_batch_size", "image_size", "nproc_per_node"):
        value = getattr(c, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CaprobeError(f"--{name.replace('_', '-')} must be a positive integer, "
                               f"got {value!r}")
    for name in ("width", "lr"):
        if getattr(c, name) is not None:
            require_positive(getattr(c, name), f"--{name}")
    for name in ("weight_decay", "warmup_epochs", "momentum"):
        value = getattr(c, name)
        if value is not None and not (isinstance(value, (int, float)) and value >= 0):
            raise CaprobeError(f"{name.replace('_', '-')} must be >= 0, got {value!r}")
    batch = c.batch_size if c.batch_size is not None else recipe_for(c.data)["batch_size"]
    check_batch_split(batch, c.nproc_per_node, c.train_subset)
    if not 0 <= c.label_smoothing < 1:
        raise CaprobeError(f"label smoothing must be in [0, 1), got {c.label_smoothing!r}")
    if c.amp is not None:
        c.amp = str(c.amp).lower()
        if c.amp in ("none", "fp32", "off", ""):
            c.amp = None
    if c.amp not in AMP_MODES:
        raise CaprobeError(f"unknown --amp {c.amp!r}; valid: bf16, fp16 (CUDA only)")
    c.device = str(c.device).lower()
    if c.device not in DEVICES and not c.device.startswith("cuda:"):
        raise CaprobeError(f"unknown --device {c.device!r}; valid: auto, cpu, cuda, cuda:N")
    if c.profile is not None and c.profile not in ("imagenet", "cifar"):
        raise CaprobeError(f"unknown profile {c.profile!r}; valid profiles: imagenet, cifar")
    if isinstance(c.seed, bool) or not isinstance(c.seed, int) or c.seed < 0:
        raise CaprobeError(f"--seed must be a non-negative integer, got {c.seed!r}")
    return c


def resolve(config: TrainConfig, *, image_size: int, device: str) -> TrainConfig:
    """A copy with every ``None`` filled from the recipe / data set / device; canonical names."""
    from caprobe.models import resolve_name

    c = dataclasses.replace(validate(dataclasses.replace(config)))
    c.data_options = dict(c.data_options or {})
    backbone, spec = resolve_name(c.model, c.attn)
    c.model, c.attn = backbone, spec
    recipe = recipe_for(c.data)
    for name, value in recipe.items():
        if getattr(c, name) is None:
            setattr(c, name, value)
    if c.profile is None:
        c.profile = "cifar" if image_size <= CIFAR_PROFILE_MAX_SIDE else "imagenet"
    if c.eval_batch_size is None:
        c.eval_batch_size = 2 * c.batch_size
    if c.channels_last is None:
        c.channels_last = True
    c.device = device
    c.width = float(c.width)
    c.lr = float(c.lr)
    c.weight_decay = float(c.weight_decay)
    c.warmup_epochs = float(c.warmup_epochs)
    return c


def differences(saved: dict[str, Any], requested: dict[str, Any]) -> list[str]:
    """``"name: saved → requested"`` for each compared field that differs. A field the saved
    config lacks (written before the field existed) counts as its default."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)
                if f.default is not dataclasses.MISSING}
    out = []
    for name in sorted(set(saved) | set(requested)):
        if name in NOT_COMPARED_ON_RESUME:
            continue
        a, b = saved.get(name, defaults.get(name)), requested.get(name)
        if a != b:
            out.append(f"{name}: {a!r} → {b!r}")
    return out
