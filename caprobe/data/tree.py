"""Image-folder trees: ``<root>/train/<class>/*.png|jpg`` and ``<root>/test|val/<class>/...``.

Works the same on a folder and inside a tar archive (see :mod:`caprobe.data.sources`). The root
may be the given path itself or a folder below it (e.g. ``cifar10-jpg/`` inside the tar).
Class index = sorted folder-name order (torchvision ``ImageFolder`` order).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from caprobe.data.decode import RESIZE_TAG, decode_images
from caprobe.data.sources import Source, is_image_name
from caprobe.data.types import Split
from caprobe.errors import DataError


def _ignored(part: str) -> bool:
    return part.startswith(".") or part == "__MACOSX"


def find_tree_root(source: Source, test_names: tuple[str, ...]) -> tuple[str, str] | None:
    """``(root, test split folder name)`` of the shallowest tree in ``source``, or None."""
    candidates = [""] + sorted(source.dirs, key=lambda d: (d.count("/"), d))
    for root in candidates:
        if any(_ignored(p) for p in root.split("/") if p):
            continue
        prefix = f"{root}/" if root else ""
        if f"{prefix}train" not in source.dirs:
            continue
        for test in test_names:
            if f"{prefix}{test}" in source.dirs:
                return root, test
    return None


@dataclass
class TreeLayout:
    source: Source
    root: str
    splits: dict[str, str]                      # "train"/"test" -> folder name
    classes: list[str]
    items: dict[str, list[tuple[str, int]]]     # split -> [(file name in source, label)]


def scan_tree(source: Source, root: str, test_name: str) -> TreeLayout:
    prefix = f"{root}/" if root else ""
    splits = {"train": "train", "test": test_name}
    per_split: dict[str, dict[str, list[str]]] = {"train": {}, "test": {}}
    folder_to_split = {v: k for k, v in splits.items()}
    for d in source.dirs:
        if not d.startswith(prefix):
            continue
        parts = d[len(prefix):].split("/")
        if len(parts) == 2 and parts[0] in folder_to_split and not _ignored(parts[1]):
            per_split[folder_to_split[parts[0]]].setdefault(parts[1], [])
    stray: dict[str, str] = {}
    for f in source.files:
        if not f.startswith(prefix):
            continue
        parts = f[len(prefix):].split("/")
        if parts[0] not in folder_to_split or any(_ignored(p) for p in parts):
            continue
        split = folder_to_split[parts[0]]
        if len(parts) == 2:
            if is_image_name(f):
                stray.setdefault(split, f)
            continue
        if is_image_name(f):
            per_split[split].setdefault(parts[1], []).append(f)
    for split, folder in splits.items():
        where = source.display(prefix + folder)
        if split in stray:
            example = stray[split].rsplit("/", 1)[-1]
            raise DataError(f"{where} holds images directly (e.g. {example}); put them in "
                            f"{folder}/<class>/ subfolders, one per class")
        if not per_split[split]:
            raise DataError(f"{where} has no class folders; expected {folder}/<class>/*.png|jpg")
        for cls, files in per_split[split].items():
            if not files:
                raise DataError(f"class folder {source.display(f'{prefix}{folder}/{cls}')} has no "
                                "images (.png/.jpg); add images or remove the folder")
    train_classes, test_classes = sorted(per_split["train"]), sorted(per_split["test"])
    if train_classes != test_classes:
        only_train = sorted(set(train_classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(train_classes))
        raise DataError(
            f"class folders differ between {source.display(prefix + 'train')} and "
            f"{source.display(prefix + test_name)} (only in train: "
            f"{', '.join(only_train) or '-'}; only in {test_name}: {', '.join(only_test) or '-'});"
            " make both hold the same classes")
    index = {c: i for i, c in enumerate(train_classes)}
    items = {split: [(f, index[c]) for c in train_classes for f in sorted(per_split[split][c])]
             for split in splits}
    return TreeLayout(source, root, splits, train_classes, items)


def decode_tree(layout: TreeLayout, size: int, tag: str,
                progress: Callable[[int, int], None] | None = None
                ) -> tuple[Split, Split, str, list[tuple[str, str]]]:
    """Decode both splits at ``size``: ``(train, test, checksum, unreadable (file, reason))``.

    checksum = sha256 over (tag, relative names, file hashes).
    """
    source = layout.source
    prefix = f"{layout.root}/" if layout.root else ""
    names = layout.items["train"] + layout.items["test"]
    locators = [source.locator(f) for f, _ in names]
    images, digests, errors = decode_images(locators, size, progress=progress)
    h = hashlib.sha256(f"{tag}\n{RESIZE_TAG}\nsize={size}\nclasses={layout.classes}\n".encode())
    for (f, label), digest in zip(names, digests, strict=True):
        h.update(f"{f[len(prefix):]}\0{label}\0".encode())
        h.update(digest)
    labels = torch.tensor([label for _, label in names], dtype=torch.int64)
    n_train = len(layout.items["train"])
    # N×H×W×3 → N×3×H×W
    tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    del images
    # separate storages, so saving one split never drags the other along
    return (Split(tensor[:n_train].clone(), labels[:n_train].clone()),
            Split(tensor[n_train:].clone(), labels[n_train:].clone()),
            h.hexdigest(), [(source.display(names[i][0]), reason) for i, reason in errors])


def top_entries(source: Source, limit: int = 8) -> str:
    dirs, files = source.children("")
    entries = [d + "/" for d in dirs] + files
    shown = ", ".join(entries[:limit]) + (", ..." if len(entries) > limit else "")
    return shown or "nothing"

