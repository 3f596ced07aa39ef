"""Data sets for short, reproducible trainings: decoded once to uint8 tensors and cached.

``load_dataset(name, ...)`` returns a :class:`Dataset` (train/test :class:`Split` of uint8
N×3×H×W images and int64 labels, classes, checksum, mean/std, augmentation policy, source).

* ``positional`` — built in, offline: a seeded 16×16 set whose label is the grid cell that
  holds a red mark over a fixed position map (see :mod:`caprobe.data.positional`). Options:
  ``difficulty``, ``grid``, ``n_train``, ``n_test``, ``shuffle_labels``.
* ``cifar10`` / ``cifar100`` — python-pickle batches or an image-folder tree, from a folder or
  straight from a ``.tar`` (see :mod:`caprobe.data.cifar`). cifar100 option: ``label``.
* ``imagenette`` — ``train|val/<wnid>/*.JPEG``, resized once to ``image_size`` (default 128).

Decoded tensors are cached under ``cache_dir`` (default ``$CAPROBE_CACHE`` or
``~/.cache/caprobe``) keyed by the source's fingerprint and the preprocessing; a stale or
corrupt cache file is rebuilt. Without ``data_dir`` the files are looked for in
``$CAPROBE_DATA/<name>`` or ``<cache dir>/data/<name>``; ``download=True`` fetches and verifies
the official archive there. Bad data raise :class:`caprobe.errors.DataError` (one sentence
naming the file or folder and the fix).

Each kind is one :class:`~caprobe.data.base.Loader` in ``registry.LOADERS`` (``open``: cheap,
finds the files and the cache key; ``decode``: builds the :class:`Dataset`);
:func:`caprobe.data.cache.load_or_decode` is the one path from a loader to a data set.
"""

from caprobe.data.augment import augment_batch, balanced_subset, to_input
from caprobe.data.check import check_dataset
from caprobe.data.positional import generate_positional, label_from_positions
from caprobe.data.registry import DATASETS, check_num_classes, default_data_dir, load_dataset
from caprobe.data.types import Dataset, Split

__all__ = [
    "DATASETS", "Dataset", "Split", "augment_batch", "balanced_subset", "check_dataset",
    "check_num_classes", "default_data_dir", "generate_positional", "label_from_positions",
    "load_dataset", "to_input",
]
