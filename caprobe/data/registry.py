"""``load_dataset(name, ...)``: one entry point for every data set, with the decode cache."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from caprobe.data import cache
from caprobe.data import download as dl
from caprobe.data.base import Built, Plan, check_labels
from caprobe.data.types import Dataset, Split, channel_stats
from caprobe.errors import DataError

DATASETS: tuple[str, ...] = ("positional", "cifar10", "cifar100", "imagenette")
OPTIONS: dict[str, dict[str, str]] = {
    "positional": {"difficulty": "0..1 or easy/medium/hard", "grid": "cells per side, 2..10",
                   "n_train": "train images", "n_test": "test images",
                   "shuffle_labels": "1 = permuted training labels (control)"},
    "cifar10": {},
    "cifar100": {"label": "fine (100 classes) or coarse (20 superclasses)"},
    "imagenette": {},
}
DEFAULT_SUBDIR = {"cifar10": "cifar10", "cifar100": "cifar100", "imagenette": "imagenette"}


def canonical_name(name: str) -> str:
    key = str(name).strip().lower().replace("-", "").replace("_", "")
    if key not in DATASETS:
        raise DataError(f"unknown data set {name!r}; valid: {', '.join(DATASETS)}")
    return key


def default_data_dir(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """``$CAPROBE_DATA/<name>``, else ``<cache dir>/data/<name>``."""
    env = os.environ.get("CAPROBE_DATA")
    if env:
        return Path(env).expanduser() / DEFAULT_SUBDIR[name]
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache.default_cache_dir()
    return root / "data" / DEFAULT_SUBDIR[name]


def _check_options(name: str, options: dict) -> None:
    unknown = sorted(set(options) - set(OPTIONS[name]))
    if unknown:
        valid = ", ".join(f"{k} ({v})" for k, v in OPTIONS[name].items()) or "none"
        raise DataError(f"unknown option{'s' if len(unknown) > 1 else ''} "
                        f"{', '.join(unknown)} for data set {name}; valid options: {valid}")


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


def plan_dataset(name: str, *, data_dir=None, cache_dir=None, download: bool = False,
                 image_size: int | None = None, seed: int = 0, **options) -> Plan:
    """Locate a data set and work out its cache key without decoding anything."""
    name = canonical_name(name)
    _check_options(name, options)
    if image_size is not None and (int(image_size) != image_size or image_size < 8):
        raise DataError(f"image size {image_size} is not valid; give an integer >= 8")
    if name == "positional":
        from caprobe.data.positional_set import plan_positional

        return plan_positional(image_size=image_size, seed=seed, **options)
    if data_dir is not None:
        path = Path(data_dir).expanduser()
    else:
        path = default_data_dir(name, cache_dir)
    if download:
        try:
            return _locate(name, path, image_size, options, "")
        except DataError:
            if path.is_file():
                raise
            dl.fetch(dl.REMOTES[name], path)
    return _locate(name, path, image_size, options,
                   "" if download else " (or add --download to fetch it)")


def _locate(name: str, path: Path, image_size: int | None, options: dict, hint: str) -> Plan:
    if name in ("cifar10", "cifar100"):
        from caprobe.data import cifar

        label = str(options.get("label", "fine")).lower()
        if label not in ("fine", "coarse"):
            raise DataError(f"cifar100 label {label!r} is not valid; use fine or coarse")
        return cifar.locate(name, path, image_size=image_size, label=label, download_hint=hint)
    from caprobe.data import imagenette

    return imagenette.locate(path, image_size=image_size, download_hint=hint)


def materialize(plan: Plan, *, cache_dir=None, progress: bool = False,
                allow_errors: bool = False) -> tuple[Dataset | None, Built | None, str]:
    """Load ``plan`` from the cache or build (and cache) it.

    Returns ``(dataset, built, cache status)``; ``built`` is set when the data were decoded now.
    Unreadable images raise :class:`DataError` unless ``allow_errors`` (then ``dataset`` is None
    and ``built.errors`` lists them; nothing is cached).
    """
    path = cache.cache_file(cache_dir, plan.name, plan.key)
    cached = plan.name != "positional"     # the generator is faster than a cache round trip
    payload, status = cache.load(path, plan.key) if cached else (None, "generated")
    built = None
    if payload is not None:
        t, meta = payload["tensors"], payload["meta"]
    else:
        built = plan.build(_progress_printer(progress, plan.name))
        if built.errors:
            if allow_errors:
                return None, built, status
            first, reason = built.errors[0]
            more = (f" and {len(built.errors) - 1} more (run `caprobe data check` to list them)"
                    if len(built.errors) > 1 else "")
            raise DataError(f"{first}: {reason}{more}; replace or delete the file")
        check_labels(built.train_labels, len(built.classes), plan.source)
        check_labels(built.test_labels, len(built.classes), plan.source)
        mean, std = channel_stats(built.train_images)
        t = {"train_images": built.train_images, "train_labels": built.train_labels,
             "test_images": built.test_images, "test_labels": built.test_labels}
        meta = {"classes": built.classes, "checksum": built.checksum, "mean": list(mean),
                "std": list(std), "source": built.info.get("root", plan.source),
                "info": built.info}
        if cached:
            try:
                cache.save(path, plan.key, t, meta)
            except OSError as exc:
                print(f"caprobe: warning: could not write the data cache {path} ({exc})",
                      file=sys.stderr)
            status = "built" if status == "missing" else f"rebuilt ({status})"
    info = dict(meta.get("info", {}))
    info.update(plan.info)
    info.update({"cache": status, "cache_file": str(path) if cached else None})
    dataset = Dataset(
        name=plan.name,
        train=Split(t["train_images"], t["train_labels"]),
        test=Split(t["test_images"], t["test_labels"]),
        classes=list(meta["classes"]), image_size=plan.image_size,
        checksum=meta["checksum"], mean=tuple(meta["mean"]), std=tuple(meta["std"]),
        augment=plan.augment, source=meta["source"], info=info)
    return dataset, built, status


def load_dataset(name: str, *, data_dir: str | Path | None = None,
                 cache_dir: str | Path | None = None, download: bool = False,
                 image_size: int | None = None, seed: int = 0, progress: bool = False,
                 **options) -> Dataset:
    """Load a data set by name: ``positional`` (built in), ``cifar10``, ``cifar100``,
    ``imagenette``. See the package docstring for layouts, options and caching."""
    plan = plan_dataset(name, data_dir=data_dir, cache_dir=cache_dir, download=download,
                        image_size=image_size, seed=seed, **options)
    dataset, _, _ = materialize(plan, cache_dir=cache_dir, progress=progress)
    assert dataset is not None
    return dataset


def check_num_classes(dataset: Dataset, num_classes: int) -> None:
    """Raise :class:`DataError` when a model's class count does not match the data set's."""
    if int(num_classes) != dataset.num_classes:
        raise DataError(f"the model has {num_classes} outputs but data set {dataset.name} "
                        f"({dataset.source}) has {dataset.num_classes} classes; build the model "
                        f"with num_classes={dataset.num_classes}")

