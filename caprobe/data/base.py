"""One kind of data set = one :class:`Loader` subclass; ``registry.LOADERS`` lists them.

``open`` is cheap (checks the options, finds the files, derives the cache key); ``decode``
is expensive (reads and decodes the source into a :class:`Dataset`). The cache
(:func:`caprobe.data.cache.load_or_decode`) sits between the two, once for every kind.
:class:`FileLoader` is the shared part of the kinds read from a folder or archive.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

from caprobe.data import download as dl
from caprobe.data.cache import cache_key, default_cache_dir
from caprobe.data.sources import Source, is_archive, open_source, quick_fingerprint
from caprobe.data.tree import decode_tree, find_tree_root, scan_tree, top_entries
from caprobe.data.types import Dataset, Split, channel_stats
from caprobe.errors import DataError

Progress = Callable[[int, int], None]


class UnreadableImages(DataError):
    """Some images could not be read; ``dataset`` holds what was decoded (those rows black)."""

    def __init__(self, dataset: Dataset, unreadable: Sequence[tuple[str, str]]):
        first, reason = unreadable[0]
        more = (f" and {len(unreadable) - 1} more (run `caprobe data check` to list them)"
                if len(unreadable) > 1 else "")
        super().__init__(f"{first}: {reason}{more}; replace or delete the file")
        self.dataset = dataset
        self.unreadable = list(unreadable)      # (file, reason)


class Loader(ABC):
    """One data set, located: ``key`` and ``image_size`` are known, nothing is decoded yet."""

    name: ClassVar[str]
    augment: ClassVar[str]                      # the training augmentation policy that suits it
    options: ClassVar[dict[str, str]] = {}      # option -> what it means
    image_size: int
    key: str | None                             # cache key; None: never cached

    @classmethod
    @abstractmethod
    def open(cls, *, data_dir: str | os.PathLike | None, cache_dir: str | os.PathLike | None,
             download: bool, image_size: int | None, seed: int, **options) -> Loader:
        """Check ``options`` and find the source, without decoding anything."""

    @abstractmethod
    def decode(self, progress: Progress | None = None) -> Dataset:
        """Read and decode the source; unreadable images raise :class:`UnreadableImages`."""

    def dataset(self, train: Split, test: Split, *, classes: list[str], checksum: str,
                source: str, info: dict,
                unreadable: Sequence[tuple[str, str]] = ()) -> Dataset:
        """The decoded splits as this kind's :class:`Dataset` (train statistics computed)."""
        mean, std = channel_stats(train.images)
        dataset = Dataset(name=self.name, train=train, test=test, classes=classes,
                          image_size=self.image_size, checksum=checksum, mean=mean, std=std,
                          augment=self.augment, source=source, info=info)
        if unreadable:
            raise UnreadableImages(dataset, unreadable)
        return dataset


def default_data_dir(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """``$CAPROBE_DATA/<name>``, else ``<cache dir>/data/<name>``."""
    env = os.environ.get("CAPROBE_DATA")
    if env:
        return Path(env).expanduser() / name
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / "data" / name


class FileLoader(Loader):
    """A data set read from a folder or tar archive (``data_dir``, else the default folder,
    where ``download`` fetches the official archive), cached by a fast fingerprint of it.

    Accepted layouts are found by ``_find`` (an image-folder tree here); ``decode`` also
    looks inside an archive lying in the folder.
    """

    title: ClassVar[str]                        # the name in messages
    num_classes: ClassVar[int]
    default_size: ClassVar[int]
    tree_tag: ClassVar[str]                     # what a decoded tree's checksum starts with
    test_names: ClassVar[tuple[str, ...]] = ("test",)
    tree_layout: ClassVar[str] = "image-folder tree"

    @classmethod
    def open(cls, *, data_dir: str | os.PathLike | None, cache_dir: str | os.PathLike | None,
             download: bool, image_size: int | None, seed: int, **options) -> FileLoader:
        path = (Path(data_dir).expanduser() if data_dir is not None
                else default_data_dir(cls.name, cache_dir))
        if download:
            try:
                return cls(path, image_size, "", **options)
            except DataError:
                if path.is_file():
                    raise
                dl.fetch(dl.REMOTES[cls.name], path)
        return cls(path, image_size, "" if download else " (or add --download to fetch it)",
                   **options)

    def __init__(self, path: Path, image_size: int | None, download_hint: str):
        """Cheap: checks the path exists and derives the cache key from file stats."""
        if not path.exists():
            raise DataError(f"{self.title} not found: {path} does not exist; put "
                            f"{self.describe_layout(str(path))} there{download_hint}")
        self.path = path
        self.image_size = int(image_size or self.default_size)
        fingerprint, self._source = quick_fingerprint(path)
        self.key = cache_key(*self._key_parts(fingerprint))

    @abstractmethod
    def describe_layout(self, where: str) -> str:
        """The accepted layouts under ``where``, for messages."""

    @abstractmethod
    def _key_parts(self, fingerprint: str) -> tuple:
        """What the cache key hashes: the source fingerprint and the preprocessing."""

    def _find(self, source: Source) -> Callable[[Progress | None], Dataset] | None:
        """How to decode ``source``, or None when it holds no accepted layout."""
        found = find_tree_root(source, self.test_names)
        if found is None:
            return None
        return lambda progress: self._decode_tree(source, *found, progress)

    def decode(self, progress: Progress | None = None) -> Dataset:
        source = self._source or open_source(self.path)
        found = self._find(source)
        if found is None and self.path.is_dir():
            for f in source.files:              # a downloaded archive lying in the folder
                if "/" not in f and is_archive(self.path / f):
                    found = self._find(open_source(self.path / f))
                    if found is not None:
                        break
        if found is None:
            raise DataError(f"no {self.title} layout found in {self.path} (it holds: "
                            f"{top_entries(source)}); expected "
                            f"{self.describe_layout(str(self.path))}")
        return found(progress)

    def _class_names(self, folders: list[str]) -> tuple[list[str], dict]:
        """Class names for the tree's class folders, and what that adds to ``info``."""
        return list(folders), {}

    def _decode_tree(self, source: Source, root: str, test_name: str,
                     progress: Progress | None) -> Dataset:
        layout = scan_tree(source, root, test_name)
        if len(layout.classes) != self.num_classes:
            raise DataError(f"{self.title} expects {self.num_classes} class folders but "
                            f"{source.display((root + '/' if root else '') + 'train')} has "
                            f"{len(layout.classes)}; check the folder is {self.title}")
        train, test, checksum, unreadable = decode_tree(layout, self.image_size, self.tree_tag,
                                                        progress)
        classes, extra = self._class_names(layout.classes)
        where = source.display(root)
        info = {"layout": self.tree_layout, "root": where, "splits": dict(layout.splits), **extra}
        return self.dataset(train, test, classes=classes, checksum=checksum, source=where,
                            info=info, unreadable=unreadable)
