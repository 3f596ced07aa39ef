"""``load_dataset(name, ...)``: one entry point for every data set, with the decode cache.

Every kind is a :class:`~caprobe.data.base.Loader` in :data:`LOADERS`; loading is always
``open`` (cheap: options, files, cache key) then :func:`caprobe.data.cache.load_or_decode`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from caprobe.data.base import Loader, default_data_dir
from caprobe.data.cache import load_or_decode
from caprobe.data.cifar import Cifar10, Cifar100
from caprobe.data.imagenette import Imagenette
from caprobe.data.positional import Positional
from caprobe.data.types import Dataset
from caprobe.errors import DataError

LOADERS: dict[str, type[Loader]] = {k.name: k for k in (Positional, Cifar10, Cifar100, Imagenette)}
DATASETS: tuple[str, ...] = tuple(LOADERS)

__all__ = ["DATASETS", "LOADERS", "canonical_name", "check_num_classes", "default_data_dir",
           "load_dataset"]


def canonical_name(name: str) -> str:
    key = str(name).strip().lower().replace("-", "").replace("_", "")
    if key not in DATASETS:
        raise DataError(f"unknown data set {name!r}; valid: {', '.join(DATASETS)}")
    return key


def _progress_printer(enabled: bool, what: str) -> Callable[[int, int], None] | None:
    if not enabled:
        return None
    state = {"last": -1}

    def report(done: int, total: int) -> None:
        pct = int(100 * done / max(total, 1))
        if pct // 10 != state["last"] // 10 or done == total:
            state["last"] = pct
            print(f"\rdecoding {what}: {done}/{total} images ({pct}%)", end="",
                  file=sys.stderr, flush=True)
            if done == total:
                print(file=sys.stderr)

    return report


def load_dataset(name: str, *, data_dir: str | Path | None = None,
                 cache_dir: str | Path | None = None, download: bool = False,
                 image_size: int | None = None, seed: int = 0, progress: bool = False,
                 **options) -> Dataset:
    """Load a data set by name: ``positional`` (built in), ``cifar10``, ``cifar100``,
    ``imagenette``. See the package docstring for layouts, options and caching."""
    kind = LOADERS[canonical_name(name)]
    unknown = sorted(set(options) - set(kind.options))
    if unknown:
        valid = ", ".join(f"{k} ({v})" for k, v in kind.options.items()) or "none"
        raise DataError(f"unknown option{'s' if len(unknown) > 1 else ''} "
                        f"{', '.join(unknown)} for data set {kind.name}; valid options: {valid}")
    if image_size is not None and (int(image_size) != image_size or image_size < 8):
        raise DataError(f"image size {image_size} is not valid; give an integer >= 8")
    loader = kind.open(data_dir=data_dir, cache_dir=cache_dir, download=download,
                       image_size=image_size, seed=seed, **options)
    return load_or_decode(loader, cache_dir, _progress_printer(progress, kind.name))


def check_num_classes(dataset: Dataset, num_classes: int) -> None:
    """Raise :class:`DataError` when a model's class count does not match the data set's."""
    if int(num_classes) != dataset.num_classes:
        raise DataError(f"the model has {num_classes} outputs but data set {dataset.name} "
                        f"({dataset.source}) has {dataset.num_classes} classes; build the model "
                        f"with num_classes={dataset.num_classes}")
