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
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from caprobe.data.base import Built, Plan, check_labels
from caprobe.data.cache import cache_key
from caprobe.data.sources import Source, is_archive, open_source, quick_fingerprint
from caprobe.data.tree import build_tree, find_tree_root, scan_tree, top_entries
from caprobe.errors import DataError

LOADER_VERSION = 1
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
TITLE = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
PICKLE_FILES = {
    "cifar10": {"dir": "cifar-10-batches-py", "train": [f"data_batch_{i}" for i in range(1, 6)],
                "test": ["test_batch"], "meta": "batches.meta"},
    "cifar100": {"dir": "cifar-100-python", "train": ["train"], "test": ["test"], "meta": "meta"},
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


def _find_pickle_root(source: Source, name: str) -> str | None:
    spec = PICKLE_FILES[name]
    needed = spec["train"][:1] + spec["test"]
    files = set(source.files)
    roots = [""] + sorted(source.dirs, key=lambda d: (d.count("/"), d))
    for root in roots:
        prefix = f"{root}/" if root else ""
        if all(prefix + f in files for f in needed):
            return root
    return None


def describe_layout(name: str, where: str) -> str:
    spec = PICKLE_FILES[name]
    return (f"{where}/{spec['dir']}/ ({', '.join(spec['train'][:1] + spec['test'])}, "
            f"{spec['meta']}, ...) or an image tree {where}/train/<class>/*.png and "
            f"{where}/test/<class>/*.png, or a .tar of either")


def locate(name: str, data_dir: Path, *, image_size: int | None, label: str,
           download_hint: str) -> Plan:
    """Cheap: checks the path exists and derives the cache key from a fast fingerprint
    (file stats); the layout is detected by ``build`` only when the cache misses."""
    title = TITLE[name]
    if not data_dir.exists():
        raise DataError(f"{title} not found: {data_dir} does not exist; put "
                        f"{describe_layout(name, str(data_dir))} there{download_hint}")
    size = int(image_size or 32)
    fingerprint, source = quick_fingerprint(data_dir)
    key = cache_key("cifar", LOADER_VERSION, name, fingerprint, size, label)

    def build(progress=None) -> Built:
        return _build(name, source or open_source(data_dir), size, label, progress)

    return Plan(name, str(data_dir), key, size, "crop_flip", build)


def _build(name: str, source: Source, size: int, label: str, progress) -> Built:
    title = TITLE[name]
    data_dir = source.path
    pickle_root = _find_pickle_root(source, name)
    tree = None if pickle_root is not None else find_tree_root(source, ("test",))
    if pickle_root is None and tree is None and data_dir.is_dir():
        for f in source.files:              # a downloaded archive lying in the folder
            if "/" not in f and is_archive(data_dir / f):
                inner = open_source(data_dir / f)
                if _find_pickle_root(inner, name) is not None or find_tree_root(inner, ("test",)):
                    return _build(name, inner, size, label, progress)
    if pickle_root is None and tree is None:
        raise DataError(f"no {title} layout found in {data_dir} (it holds: "
                        f"{top_entries(source)}); expected {describe_layout(name, str(data_dir))}")
    if label != "fine" and (name != "cifar100" or pickle_root is None):
        raise DataError(f"label={label!r} needs the CIFAR-100 python batches in {data_dir} "
                        "(coarse labels are not in a folder tree); use label='fine'")
    if pickle_root is not None:
        built = _build_pickle(source, pickle_root, name, size, label)
        built.info["root"] = source.display(pickle_root)
        return built
    root, test_name = tree
    layout = scan_tree(source, root, test_name)
    if len(layout.classes) != NUM_CLASSES[name]:
        raise DataError(f"{title} expects {NUM_CLASSES[name]} class folders but "
                        f"{source.display((root + '/' if root else '') + 'train')} has "
                        f"{len(layout.classes)}; check the folder is {title}")
    return build_tree(layout, size, f"{name}-tree-v{LOADER_VERSION}", progress)


def _build_pickle(source: Source, root: str, name: str, size: int, label: str) -> Built:
    spec = PICKLE_FILES[name]
    prefix = f"{root}/" if root else ""
    h = hashlib.sha256(f"{name}-pickle-v{LOADER_VERSION}\nsize={size}\nlabel={label}\n".encode())
    meta_name = prefix + spec["meta"]
    if meta_name not in set(source.files):
        raise DataError(f"{source.display(meta_name)} is missing; the {TITLE[name]} batches "
                        "folder is incomplete, re-download it")
    meta_bytes = source.read(meta_name)
    h.update(meta_bytes)
    meta = _unpickle(meta_bytes, source.display(meta_name))
    names_key = {"cifar10": "label_names", "cifar100": f"{label}_label_names"}[name]
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta.get(names_key, [])]
    if not classes:
        raise DataError(f"{source.display(meta_name)} has no {names_key}; re-download the batches")
    expected = {"cifar10": 10, "cifar100": 100 if label == "fine" else 20}[name]
    if len(classes) != expected:
        raise DataError(f"{source.display(meta_name)} lists {len(classes)} classes, "
                        f"{TITLE[name]} ({label}) has {expected}; check the data set")
    labels_key = "labels" if name == "cifar10" else f"{label}_labels"
    out = {}
    files = set(source.files)
    for split in ("train", "test"):
        xs, ys = [], []
        for fn in spec[split]:
            full = prefix + fn
            where = source.display(full)
            if full not in files:
                raise DataError(f"{where} is missing; the {TITLE[name]} batches folder is "
                                "incomplete, re-download it")
            data = source.read(full)
            h.update(fn.encode() + b"\0")
            h.update(data)
            batch = _unpickle(data, where)
            x, y = batch.get("data"), batch.get(labels_key)
            if not isinstance(x, np.ndarray) or x.ndim != 2 or x.shape[1] != 3072 or y is None:
                raise DataError(f"{where} is not a {TITLE[name]} batch (needs 'data' N×3072 "
                                f"uint8 and '{labels_key}'); re-download it")
            y = np.asarray(y, dtype=np.int64)
            if len(y) != len(x):
                raise DataError(f"{where} has {len(x)} images but {len(y)} labels; re-download it")
            check_labels(torch.from_numpy(y), len(classes), where)
            xs.append(x.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32))
            ys.append(y)
        images = torch.from_numpy(np.concatenate(xs)).contiguous()
        if size != 32:
            images = _resize(images, size)
        out[split] = (images, torch.from_numpy(np.concatenate(ys)))
    return Built(out["train"][0], out["train"][1], out["test"][0], out["test"][1], classes,
                 h.hexdigest(), info={"layout": "python pickle batches", "label": label})


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    parts = []
    for start in range(0, images.shape[0], 4096):
        x = images[start:start + 4096].float()
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)
        parts.append(x.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(parts).contiguous()
