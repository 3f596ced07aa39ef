"""caprobe: does this attention module pay for itself?

The public API is imported lazily so that ``import caprobe`` (and ``caprobe --help``)
does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from caprobe._version import __version__

# public name -> (module, attribute); the module is imported on first use
_LAZY = {
    "build_model": ("caprobe.models", "build_model"),
    "list_models": ("caprobe.models", "list_models"),
    "count": ("caprobe.measure.counting", "count"),
    "Counts": ("caprobe.measure.counting", "Counts"),
    "attention": ("caprobe.attention", None),
    "deploy": ("caprobe.deployment", "deploy"),
    "train": ("caprobe.training", "train"),  # caprobe.train(TrainConfig(...), out=...)
    "TrainConfig": ("caprobe.training", "TrainConfig"),
    "compare": ("caprobe.comparison", "run_compare"),  # caprobe.compare(CompareOptions(), out=)
    "report": ("caprobe.reporting", "render_report"),  # caprobe.report([run_dir, ...], out)
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module_name, attribute = _LAZY[name]
        module = importlib.import_module(module_name)
        return module if attribute is None else getattr(module, attribute)
    raise AttributeError(f"module 'caprobe' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
