"""ImageNette: ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG`` (folder or tar, any depth).

JPEGs of any size and mode (grayscale included) are converted to RGB, resized once so the
shorter side is ``image_size`` (default 128) and centre-cropped; class names come from the
WordNet ids (the ten ImageNette synsets are named, any other id is kept as is).
"""

from __future__ import annotations

from pathlib import Path

from caprobe.data.base import Built, Plan
from caprobe.data.cache import cache_key
from caprobe.data.sources import Source, is_archive, open_source, quick_fingerprint
from caprobe.data.tree import build_tree, find_tree_root, scan_tree, top_entries
from caprobe.errors import DataError

LOADER_VERSION = 1
DEFAULT_IMAGE_SIZE = 128
NUM_CLASSES = 10
WNID_NAMES = {
    "n01440764": "tench", "n02102040": "English springer", "n02979186": "cassette player",
    "n03000684": "chain saw", "n03028079": "church", "n03394916": "French horn",
    "n03417042": "garbage truck", "n03425413": "gas pump", "n03445777": "golf ball",
    "n03888605": "parachute",
}
TEST_NAMES = ("val", "test")


def describe_layout(where: str) -> str:
    return (f"{where}/train/<wnid>/*.JPEG and {where}/val/<wnid>/*.JPEG (the imagenette2 "
            "layout, 10 classes), or a .tar/.tgz of it")


def locate(data_dir: Path, *, image_size: int | None, download_hint: str) -> Plan:
    """Cheap: the cache key comes from file stats; ``build`` detects the layout and decodes."""
    if not data_dir.exists():
        raise DataError(f"ImageNette not found: {data_dir} does not exist; put "
                        f"{describe_layout(str(data_dir))} there{download_hint}")
    size = int(image_size or DEFAULT_IMAGE_SIZE)
    fingerprint, source = quick_fingerprint(data_dir)
    key = cache_key("imagenette", LOADER_VERSION, fingerprint, size)

    def build(progress=None) -> Built:
        return _build(source or open_source(data_dir), size, progress)

    return Plan("imagenette", str(data_dir), key, size, "rrc_flip", build)


def _build(source: Source, size: int, progress) -> Built:
    data_dir = source.path
    found = find_tree_root(source, TEST_NAMES)
    if found is None and data_dir.is_dir():
        for f in source.files:              # a downloaded archive lying in the folder
            if "/" not in f and is_archive(data_dir / f):
                inner = open_source(data_dir / f)
                if find_tree_root(inner, TEST_NAMES):
                    return _build(inner, size, progress)
    if found is None:
        raise DataError(f"no ImageNette layout found in {data_dir} (it holds: "
                        f"{top_entries(source)}); expected {describe_layout(str(data_dir))}")
    root, test_name = found
    layout = scan_tree(source, root, test_name)
    if len(layout.classes) != NUM_CLASSES:
        raise DataError(f"ImageNette expects {NUM_CLASSES} class folders but "
                        f"{source.display((root + '/' if root else '') + 'train')} has "
                        f"{len(layout.classes)}; check the folder is ImageNette")
    wnids = list(layout.classes)
    built = build_tree(layout, size, f"imagenette-v{LOADER_VERSION}", progress)
    built.classes = [WNID_NAMES.get(w, w) for w in wnids]
    built.info["wnids"] = wnids
    built.info["layout"] = "imagenette folders"
    return built
