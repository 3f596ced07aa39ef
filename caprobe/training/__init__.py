"""Short, reproducible trainings: ``caprobe.train(TrainConfig(...)) -> RunResult``
(``caprobe.train`` is :func:`caprobe.training.train`)."""

from __future__ import annotations

from caprobe.training.config import RECIPES, TrainConfig, recipe_for
from caprobe.training.loop import RunResult, evaluate, is_run_dir, load_model, load_run, train

__all__ = ["RECIPES", "RunResult", "TrainConfig", "evaluate", "is_run_dir", "load_model",
           "load_run", "recipe_for", "train"]
