"""Decoded-tensor cache: decode once, then load 60k CIFAR images in well under a second.

One ``.pt`` file per (data set, source fingerprint, preprocessing) key under
``<cache dir>/datasets/``. The file holds a header (format version, the full key, metadata)
and the uint8 tensors, plus a sha256 over the tensors' bytes. On load everything is checked;
a file that fails to load, carries another key, or whose tensors do not hash to the stored
digest is reported as stale/corrupt and rebuilt, never trusted. Writes go to a temporary
file in the same folder followed by a rename, so readers never see half a file.

:func:`load_or_decode` is the one path from a located :class:`~caprobe.data.base.Loader` to a
:class:`Dataset`; the cache status lands in ``info["cache"]`` (``hit``, ``built``,
``rebuilt (why)``, or ``generated`` for a set that is never cached).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from caprobe.data.types import Dataset, Split
from caprobe.io import atomic_writer

if TYPE_CHECKING:
    from caprobe.data.base import Loader, Progress

CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    env = os.environ.get("CAPROBE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "caprobe"


def cache_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def cache_file(cache_dir: str | os.PathLike | None, name: str, key: str) -> Path:
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / "datasets" / f"{name}-{key[:24]}.pt"


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        h.update(memoryview(t.numpy()).cast("B"))
    return h.hexdigest()


def load(path: Path, key: str) -> tuple[dict | None, str]:
    """``(payload, status)``: status is ``hit``, ``missing``, or why the file was rejected."""
    if not path.exists():
        return None, "missing"
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means a corrupt cache file
        return None, f"corrupt ({type(exc).__name__})"
    if not isinstance(obj, dict) or obj.get("format") != CACHE_FORMAT:
        return None, "stale (format)"
    if obj.get("key") != key:
        return None, "stale (key)"
    tensors = obj.get("tensors")
    if not isinstance(tensors, dict) or any(not isinstance(t, torch.Tensor)
                                            for t in tensors.values()):
        return None, "corrupt (tensors)"
    if tensor_digest(tensors) != obj.get("digest"):
        return None, "corrupt (checksum)"
    return obj, "hit"


def save(path: Path, key: str, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    payload = {"format": CACHE_FORMAT, "key": key, "meta": meta, "tensors": tensors,
               "digest": tensor_digest(tensors)}
    with atomic_writer(path) as f:
        torch.save(payload, f)


def load_or_decode(loader: Loader, cache_dir: str | os.PathLike | None,
                   progress: Progress | None = None) -> Dataset:
    """``loader``'s data set from its cache file, else decoded now (and cached)."""
    if loader.key is None:
        dataset, status, path = loader.decode(progress), "generated", None
    else:
        path = cache_file(cache_dir, loader.name, loader.key)
        payload, status = load(path, loader.key)
        if payload is not None:
            t, meta = payload["tensors"], payload["meta"]
            dataset = Dataset(
                name=loader.name, train=Split(t["train_images"], t["train_labels"]),
                test=Split(t["test_images"], t["test_labels"]), classes=list(meta["classes"]),
                image_size=loader.image_size, checksum=meta["checksum"],
                mean=tuple(meta["mean"]), std=tuple(meta["std"]), augment=loader.augment,
                source=meta["source"], info=meta.get("info", {}))
        else:
            dataset = loader.decode(progress)
            tensors = {"train_images": dataset.train.images, "train_labels": dataset.train.labels,
                       "test_images": dataset.test.images, "test_labels": dataset.test.labels}
            meta = {"classes": dataset.classes, "checksum": dataset.checksum,
                    "mean": list(dataset.mean), "std": list(dataset.std),
                    "source": dataset.source, "info": dataset.info}
            try:
                save(path, loader.key, tensors, meta)
            except OSError as exc:
                print(f"caprobe: warning: could not write the data cache {path} ({exc})",
                      file=sys.stderr)
            status = "built" if status == "missing" else f"rebuilt ({status})"
    info = {**dataset.info, "cache": status, "cache_file": None if path is None else str(path)}
    return dataclasses.replace(dataset, info=info)
