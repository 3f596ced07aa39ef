"""caprobe: does this attention module pay for itself?

The public API is imported lazily so that ``import caprobe`` (and ``caprobe --help``)
does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from caprobe._version import __version__

_LAZY = {
    "build_model": "caprobe.models",
    "list_models": "caprobe.models",
    "count": "caprobe.measure.counting",
    "Counts": "caprobe.measure.counting",
    "attention": "caprobe.attention",
    "deploy": "caprobe.deployment",
    "train": "caprobe.train",  # the module is callable: caprobe.train(config)
    "TrainConfig": "caprobe.train",
    "compare": "caprobe.compare",  # callable: caprobe.compare(CompareOptions(...), out=...)
    "report": "caprobe.report",  # callable: caprobe.report([run_dir, ...], out)
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        return module if module.__name__.endswith(name) else getattr(module, name)
    raise AttributeError(f"module 'caprobe' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
