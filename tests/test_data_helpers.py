"""Tiny data sets written in the real on-disk formats, for the data tests."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]
WNIDS = ["n01440764", "n02102040", "n02979186", "n03000684", "n03028079", "n03394916",
         "n03417042", "n03425413", "n03445777", "n03888605"]


def _pickle(path: Path, obj: dict) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))


def write_cifar10_batches(root: Path, per_batch: int = 4, seed: int = 0) -> dict:
    """``root/cifar-10-batches-py`` with 5 train batches + test batch; returns the arrays."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    out = {"train_x": [], "train_y": [], "test_x": None, "test_y": None}
    for i in range(1, 7):
        x = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        name = f"data_batch_{i}" if i <= 5 else "test_batch"
        _pickle(folder / name, {b"batch_label": name.encode(), b"labels": y, b"data": x,
                                b"filenames": [b"f%d.png" % k for k in range(per_batch)]})
        if i <= 5:
            out["train_x"].append(x)
            out["train_y"].extend(y)
        else:
            out["test_x"], out["test_y"] = x, y
    _pickle(folder / "batches.meta", {b"label_names": [c.encode() for c in CIFAR10_CLASSES],
                                      b"num_cases_per_batch": per_batch, b"num_vis": 3072})
    out["train_x"] = np.concatenate(out["train_x"])
    return out


def write_cifar100_batches(root: Path, n: int = 8, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    out = {}
    for split in ("train", "test"):
        x = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine = [int(v) for v in rng.integers(0, 100, size=n)]
        coarse = [f // 5 for f in fine]
        _pickle(folder / split, {b"data": x, b"fine_labels": fine, b"coarse_labels": coarse,
                                 b"filenames": [b"x.png"] * n, b"batch_label": split.encode()})
        out[split] = (x, fine, coarse)
    _pickle(folder / "meta", {b"fine_label_names": [b"f%02d" % i for i in range(100)],
                              b"coarse_label_names": [b"c%02d" % i for i in range(20)]})
    return out


def image_bytes(arr: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


def write_tree(root: Path, classes=CIFAR10_CLASSES, n_train: int = 2, n_test: int = 1,
               ext: str = "png", size: int = 32, test_name: str = "test", seed: int = 0) -> Path:
    """``root/train/<class>/*.ext`` and ``root/<test_name>/<class>/*.ext``."""
    rng = np.random.default_rng(seed)
    fmt = {"png": "PNG", "jpg": "JPEG", "JPEG": "JPEG"}[ext]
    for split, n in (("train", n_train), (test_name, n_test)):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for k in range(n):
                arr = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
                (d / f"{k:04d}.{ext}").write_bytes(image_bytes(arr, fmt))
    return root


def make_tar(folder: Path, tar_path: Path, arcname: str) -> Path:
    with tarfile.open(tar_path, "w") as tf:
        tf.add(folder, arcname=arcname)
    return tar_path


def write_imagenette(root: Path, seed: int = 0) -> Path:
    """ImageNette layout: odd sizes, one grayscale JPEG, one PNG-with-alpha-free RGB."""
    rng = np.random.default_rng(seed)
    sizes = [(40, 30), (23, 57), (64, 64)]
    for split, n in (("train", 2), ("val", 1)):
        for i, w in enumerate(WNIDS):
            d = root / split / w
            d.mkdir(parents=True)
            for k in range(n):
                hw = sizes[(i + k) % len(sizes)]
                if i == 0 and k == 0:
                    arr = rng.integers(0, 256, size=hw, dtype=np.uint8)       # grayscale
                else:
                    arr = rng.integers(0, 256, size=(*hw, 3), dtype=np.uint8)
                (d / f"{w}_{k}.JPEG").write_bytes(image_bytes(arr, "JPEG"))
    return root
