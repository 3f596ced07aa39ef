"""The rows caprobe writes, as typed records.

* :class:`RunRow`: one (variant, seed) training piece of ``results.json`` / ``results.csv``
  (``row`` = ``run``);
* :class:`AggregateRow`: one variant of ``results.json`` / ``results.csv`` (``row`` =
  ``aggregate``);
* :class:`MetricsRow`: one epoch of a training's ``metrics.jsonl``
  (written by :mod:`caprobe.training.loop`).

``from_dict`` takes caprobe's own column names: unknown keys are ignored, and an optional
field missing from an older saved record is None (a count is 0).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

_R = TypeVar("_R", bound="Record")


@dataclass(frozen=True)
class Record:
    """A row of a file caprobe writes, read by its column names."""

    @classmethod
    def from_dict(cls: type[_R], raw: Mapping[str, Any]) -> _R:
        """The record of one saved row: keys that are not fields are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})


@dataclass(frozen=True)
class ResultRow(Record):
    """A row of ``results.json`` / ``results.csv``; the column ``row`` names its kind."""

    ROW: ClassVar[str]

    @classmethod
    def columns(cls) -> list[str]:
        """The columns of this kind of row, in the order they are written."""
        return ["row", *(f.name for f in dataclasses.fields(cls))]

    def to_dict(self) -> dict[str, Any]:
        """The row as written: ``row`` first, then every field in order."""
        return {"row": self.ROW, **{f.name: getattr(self, f.name)
                                    for f in dataclasses.fields(self)}}


@dataclass(frozen=True, kw_only=True)
class RunRow(ResultRow):
    """One planned (variant, seed) training piece; ``learned`` is None unless the training
    finished (or when its record cannot tell). Accuracies are percentages."""

    ROW: ClassVar[str] = "run"

    variant: str
    seed: int
    status: str  # the training's status, or failed / partial / pending
    learned: bool | None = None
    error: str | None = None
    top1: float | None = None
    chance_top1: float | None = None
    top5: float | None = None
    test_loss: float | None = None
    train_loss: float | None = None
    epochs_done: int | None = None
    steps_done: int | None = None
    wall_time_s: float | None = None
    images_per_s: float | None = None
    data_checksum: str | None = None
    run_dir: str | None = None  # relative to the run folder


@dataclass(frozen=True, kw_only=True)
class AggregateRow(ResultRow):
    """One variant: costs, latency, top-1 statistics over the runs that learned, and top-1
    deltas paired by seed against the baseline (``delta_*``) and the plan's reference
    (``ref_delta_*``)."""

    ROW: ClassVar[str] = "aggregate"

    variant: str
    model: str | None = None
    status: str  # ok, did not learn, failed, pending, "1/3 finished (failed)", ...
    error: str | None = None
    n_seeds: int = 0
    n_finished: int = 0
    n_learned: int = 0
    n_not_learned: int = 0
    params: float | None = None
    madds: float | None = None
    attention_params: float | None = None
    attention_madds: float | None = None
    params_delta_pct: float | None = None
    madds_delta_pct: float | None = None
    latency_median_ms: float | None = None
    latency_iqr_ms: float | None = None
    latency_p90_ms: float | None = None
    latency_n: int | None = None
    latency_device: str | None = None
    latency_form: str | None = None
    latency_overhead: float | None = None
    latency_overhead_ci_low: float | None = None
    latency_overhead_ci_high: float | None = None
    images_per_s: float | None = None
    top1_mean: float | None = None
    top1_std: float | None = None
    top1_ci_low: float | None = None
    top1_ci_high: float | None = None
    delta_top1_mean: float | None = None
    delta_top1_std: float | None = None
    delta_top1_ci_low: float | None = None
    delta_top1_ci_high: float | None = None
    delta_n: int = 0
    reference: str | None = None
    ref_delta_top1_mean: float | None = None
    ref_delta_top1_std: float | None = None
    ref_delta_top1_ci_low: float | None = None
    ref_delta_top1_ci_high: float | None = None
    ref_delta_n: int = 0
    top5_mean: float | None = None
    test_loss_mean: float | None = None
    train_wall_time_s: float | None = None


@dataclass(frozen=True, kw_only=True)
class MetricsRow(Record):
    """One epoch of a training's ``metrics.jsonl``; accuracies are percentages, ``lr`` that
    of the epoch's last step."""

    epoch: int | None = None
    step: int | None = None
    train_loss: float | None = None
    train_acc: float | None = None
    test_loss: float | None = None
    test_top1: float | None = None
    test_top5: float | None = None
    eval_images: int | None = None
    lr: float | None = None
    epoch_time_s: float | None = None
    train_time_s: float | None = None
    images_per_s: float | None = None
    data_wait_share: float | None = None
    elapsed_s: float | None = None
