"""Short, reproducible trainings: ``caprobe.train(TrainConfig(...)) -> RunResult``.

``caprobe.train`` is this module, and the module is callable: ``caprobe.train(config)`` is
``caprobe.train.train(config)``. (Importing a submodule always rebinds the package attribute
to the module, so a callable module is the only robust way to offer both.)
"""

from __future__ import annotations

import sys
import types

from caprobe.train.config import RECIPES, TrainConfig, recipe_for
from caprobe.train.loop import RunResult, evaluate, is_run_dir, load_model, load_run, train


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["RECIPES", "RunResult", "TrainConfig", "evaluate", "is_run_dir", "load_model",
           "load_run", "recipe_for", "train"]
