"""ImageNette: ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG`` (folder or tar, any depth).

JPEGs of any size and mode (grayscale included) are converted to RGB, resized once so the
shorter side is ``image_size`` (default 128) and centre-cropped; class names come from the
WordNet ids (the ten ImageNette synsets are named, any other id is kept as is).
"""

from __future__ import annotations

from caprobe.data.base import FileLoader

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


class Imagenette(FileLoader):
    name, title, num_classes = "imagenette", "ImageNette", NUM_CLASSES
    augment = "rrc_flip"
    default_size = DEFAULT_IMAGE_SIZE
    test_names = TEST_NAMES
    tree_layout = "imagenette folders"
    tree_tag = f"imagenette-v{LOADER_VERSION}"

    def describe_layout(self, where: str) -> str:
        return (f"{where}/train/<wnid>/*.JPEG and {where}/val/<wnid>/*.JPEG (the imagenette2 "
                "layout, 10 classes), or a .tar/.tgz of it")

    def _key_parts(self, fingerprint: str) -> tuple:
        return ("imagenette", LOADER_VERSION, fingerprint, self.image_size)

    def _class_names(self, folders: list[str]) -> tuple[list[str], dict]:
        return [WNID_NAMES.get(w, w) for w in folders], {"wnids": list(folders)}
