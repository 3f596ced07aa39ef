"""CIFAR-10 / CIFAR-100: the official python-pickle batches or an image-folder tree.

Accepted under ``data_dir`` (a folder or a tar archive, read in place):

* pickle batches: ``cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`` or
  ``cifar-100-python/{train,test,meta}`` (fine and coarse labels), at any depth, also inside
  the downloaded ``cifar-10-python.tar.gz``;
* an image tree: ``train/<class>/*.png|jpg`` and ``test/<class>/...`` (e.g. the shared
  ``cifar10-jpg.tar``).

Pickles are read with a restricted unpickler that only accepts numpy arrays and plain types.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from caprobe.data.base import FileLoader, Progress
from caprobe.data.sources import Source
from caprobe.data.types import Dataset, Split
from caprobe.errors import DataError

LOADER_VERSION = 1
# per set: batch files; meta keys of the class names and the labels ({label}: fine or coarse);
# class count per label
PICKLE_FILES = {
    "cifar10": {"dir": "cifar-10-batches-py", "train": [f"data_batch_{i}" for i in range(1, 6)],
                "test": ["test_batch"], "meta": "batches.meta", "names": "label_names",
                "labels": "labels", "classes": {"fine": 10}},
    "cifar100": {"dir": "cifar-100-python", "train": ["train"], "test": ["test"], "meta": "meta",
                 "names": "{label}_label_names", "labels": "{label}_labels",
                 "classes": {"fine": 100, "coarse": 20}},
}


class _SafeUnpickler(pickle.Unpickler):
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")


def _unpickle(data: bytes, where: str) -> dict:
    try:
        obj = _SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001 - any failure means a bad batch file
        raise DataError(f"cannot read CIFAR batch {where} ({type(exc).__name__}: {exc}); the "
                        "file is truncated or not a CIFAR python batch, re-download it") from None
    if not isinstance(obj, dict):
        raise DataError(f"CIFAR batch {where} does not hold a dict; re-download it")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _find_pickle_root(source: Source, spec: dict) -> str | None:
    needed = spec["train"][:1] + spec["test"]
    files = set(source.files)
    roots = [""] + sorted(source.dirs, key=lambda d: (d.count("/"), d))
    for root in roots:
        prefix = f"{root}/" if root else ""
        if all(prefix + f in files for f in needed):
            return root
    return None


def _check_labels(labels: torch.Tensor, num_classes: int, where: str) -> None:
    if labels.numel() == 0:
        return
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        raise DataError(f"label {bad} in {where} is out of range for {num_classes} classes "
                        f"(valid 0..{num_classes - 1}); the file is corrupt or from another "
                        "data set")


class Cifar(FileLoader):
    """The pickle batches or an image tree; ``label`` picks CIFAR-100's fine or coarse labels."""

    augment = "crop_flip"
    default_size = 32

    def __init__(self, path: Path, image_size: int | None, download_hint: str,
                 label: str = "fine"):
        self.label = str(label).lower()
        if self.label not in ("fine", "coarse"):
            raise DataError(f"cifar100 label {self.label!r} is not valid; use fine or coarse")
        self.pickles = PICKLE_FILES[self.name]
        self.tree_tag = f"{self.name}-tree-v{LOADER_VERSION}"
        super().__init__(path, image_size, download_hint)

    def describe_layout(self, where: str) -> str:
        spec = self.pickles
        return (f"{where}/{spec['dir']}/ ({', '.join(spec['train'][:1] + spec['test'])}, "
                f"{spec['meta']}, ...) or an image tree {where}/train/<class>/*.png and "
                f"{where}/test/<class>/*.png, or a .tar of either")

    def _key_parts(self, fingerprint: str) -> tuple:
        return ("cifar", LOADER_VERSION, self.name, fingerprint, self.image_size, self.label)

    def _find(self, source: Source) -> Callable[[Progress | None], Dataset] | None:
        root = _find_pickle_root(source, self.pickles)
        if root is None:
            return super()._find(source)
        return lambda progress: self._decode_pickles(source, root)

    def _decode_tree(self, source: Source, root: str, test_name: str,
                     progress: Progress | None) -> Dataset:
        if self.label != "fine":
            raise DataError(f"label={self.label!r} needs the CIFAR-100 python batches in "
                            f"{source.path} (coarse labels are not in a folder tree); use "
                            "label='fine'")
        return super()._decode_tree(source, root, test_name, progress)

    def _decode_pickles(self, source: Source, root: str) -> Dataset:
        spec, label, title = self.pickles, self.label, self.title
        prefix = f"{root}/" if root else ""
        h = hashlib.sha256(
            f"{self.name}-pickle-v{LOADER_VERSION}\nsize={self.image_size}\nlabel={label}\n"
            .encode())
        meta_name = prefix + spec["meta"]
        if meta_name not in set(source.files):
            raise DataError(f"{source.display(meta_name)} is missing; the {title} batches "
                            "folder is incomplete, re-download it")
        meta_bytes = source.read(meta_name)
        h.update(meta_bytes)
        meta = _unpickle(meta_bytes, source.display(meta_name))
        names_key = spec["names"].format(label=label)
        classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta.get(names_key, [])]
        if not classes:
            raise DataError(f"{source.display(meta_name)} has no {names_key}; re-download the "
                            "batches")
        expected = spec["classes"][label]
        if len(classes) != expected:
            raise DataError(f"{source.display(meta_name)} lists {len(classes)} classes, "
                            f"{title} ({label}) has {expected}; check the data set")
        labels_key = spec["labels"].format(label=label)
        splits = []
        files = set(source.files)
        for split in ("train", "test"):
            xs, ys = [], []
            for fn in spec[split]:
                full = prefix + fn
                where = source.display(full)
                if full not in files:
                    raise DataError(f"{where} is missing; the {title} batches folder is "
                                    "incomplete, re-download it")
                data = source.read(full)
                h.update(fn.encode() + b"\0")
                h.update(data)
                batch = _unpickle(data, where)
                x, y = batch.get("data"), batch.get(labels_key)
                if not isinstance(x, np.ndarray) or x.ndim != 2 or x.shape[1] != 3072 or y is None:
                    raise DataError(f"{where} is not a {title} batch (needs 'data' N×3072 "
                                    f"uint8 and '{labels_key}'); re-download it")
                y = np.asarray(y, dtype=np.int64)
                if len(y) != len(x):
                    raise DataError(f"{where} has {len(x)} images but {len(y)} labels; "
                                    "re-download it")
                _check_labels(torch.from_numpy(y), len(classes), where)
                xs.append(x.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32))
                ys.append(y)
            images = torch.from_numpy(np.concatenate(xs)).contiguous()
            if self.image_size != 32:
                images = _resize(images, self.image_size)
            splits.append(Split(images, torch.from_numpy(np.concatenate(ys))))
        where = source.display(root)
        return self.dataset(*splits, classes=classes, checksum=h.hexdigest(), source=where,
                            info={"layout": "python pickle batches", "label": label,
                                  "root": where})


class Cifar10(Cifar):
    name, title, num_classes = "cifar10", "CIFAR-10", 10


class Cifar100(Cifar):
    name, title, num_classes = "cifar100", "CIFAR-100", 100
    options = {"label": "fine (100 classes) or coarse (20 superclasses)"}


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    parts = []
    for start in range(0, images.shape[0], 4096):
        x = images[start:start + 4096].float()
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)
        parts.append(x.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(parts).contiguous()
