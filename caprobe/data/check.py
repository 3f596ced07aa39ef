"""``caprobe data check``: what was found, counts per split and class, checksum, bad files."""

from __future__ import annotations

from pathlib import Path

import torch

from caprobe.data.base import UnreadableImages
from caprobe.data.registry import load_dataset


def _split_report(labels: torch.Tensor, classes: list[str]) -> dict:
    counts = torch.bincount(labels, minlength=len(classes)).tolist()
    return {"count": int(labels.numel()), "per_class": dict(zip(classes, counts, strict=True))}


def check_dataset(name: str, *, data_dir: str | Path | None = None,
                  cache_dir: str | Path | None = None, image_size: int | None = None,
                  download: bool = False, seed: int = 0, progress: bool = False,
                  **options) -> dict:
    """A JSON-ready report. Unreadable images are listed under ``unreadable`` (then
    ``checksum`` is None and nothing is cached); layout problems raise DataError."""
    try:
        dataset = load_dataset(name, data_dir=data_dir, cache_dir=cache_dir,
                               download=download, image_size=image_size, seed=seed,
                               progress=progress, **options)
        unreadable = []
    except UnreadableImages as exc:
        dataset, unreadable = exc.dataset, exc.unreadable
    classes = dataset.classes
    report = {"data": dataset.name, "found": dataset.source,
              "layout": dataset.info.get("layout"), "image_size": dataset.image_size,
              "augment": dataset.augment, "classes": classes, "num_classes": len(classes),
              "splits": {"train": _split_report(dataset.train.labels, classes),
                         "test": _split_report(dataset.test.labels, classes)}}
    if unreadable:
        report.update({
            "checksum": None, "mean": None, "std": None, "cache": "not written (bad images)",
            "unreadable": [{"file": f, "reason": r} for f, r in unreadable]})
        return report
    report.update({
        "checksum": dataset.checksum, "mean": list(dataset.mean), "std": list(dataset.std),
        "cache": dataset.info.get("cache"), "cache_file": dataset.info.get("cache_file"),
        "unreadable": []})
    if "wnids" in dataset.info:
        report["wnids"] = dataset.info["wnids"]
    return report
