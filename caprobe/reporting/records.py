"""Everything the report needs, read from saved run folders only (never from live state)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from caprobe.comparison.layout import Layout
from caprobe.comparison.plan import load_plan, plan_training
from caprobe.comparison.results import load_results, read_metrics
from caprobe.comparison.rows import AggregateRow, MetricsRow, RunRow
from caprobe.errors import CaprobeError
from caprobe.io import read_json


def _read(path: Path) -> Any | None:
    try:
        return read_json(path)
    except (OSError, json.JSONDecodeError):
        return None


@dataclass
class RunRecords:
    """The saved records of one compare run folder."""

    root: Path
    plan: dict[str, Any]
    results: dict[str, Any]
    runs: list[RunRow]  # results["runs"] as typed rows
    aggregates: list[AggregateRow]  # results["aggregates"] as typed rows
    provenance: dict[str, Any]
    counts: dict[str, dict | None]
    latency: dict[str, dict | None]
    metrics: dict[str, dict[int, list[MetricsRow]]]  # variant -> seed -> metrics rows
    maps: dict[str, Any] | None
    #: runtimes.json of a run with --runtime (caprobe.comparison.shipped.summary), else None
    runtimes: dict[str, Any] | None = None
    name: str = ""
    labels: dict[str, str] = field(default_factory=dict)  # variant -> label on the page

    @property
    def trained(self) -> bool:
        """Whether the comparison trained (not ``--no-train``)."""
        return self.plan["options"].get("train", True)

    def seed_runs(self, variant: str) -> list[RunRow]:
        """The per-seed run rows of ``variant``."""
        return [x for x in self.runs if x.variant == variant]

    @property
    def data(self) -> str | None:
        return self.results.get("data") or plan_training(self.plan).get("data")

    @property
    def data_checksum(self) -> str | None:
        return self.results.get("data_checksum") or self.provenance.get("data_checksum")

    @property
    def model(self) -> str | None:
        return plan_training(self.plan).get("model")


def load_run(root: str | Path) -> RunRecords:
    """Records of one run folder; :class:`CaprobeError` when it is not a compare run."""
    root = Path(root)
    plan = load_plan(root)
    layout = Layout(root)
    results = load_results(root)
    provenance = _read(layout.provenance) or {}
    counts = {v: _read(layout.counts(v)) for v in plan["variants"]}
    latency = {v: _read(layout.latency(v)) for v in plan["variants"]}
    metrics: dict[str, dict[int, list[MetricsRow]]] = {}
    if plan["options"].get("train", True):
        for v in plan["variants"]:
            metrics[v] = {s: read_metrics(layout.run_dir(v, s)) for s in plan["seeds"]}
    maps = _read(layout.maps)
    return RunRecords(root=root, plan=plan, results=results,
                      runs=[RunRow.from_dict(r) for r in results["runs"]],
                      aggregates=[AggregateRow.from_dict(a) for a in results["aggregates"]],
                      provenance=provenance, counts=counts, latency=latency, metrics=metrics,
                      maps=maps, runtimes=_read(layout.runtimes), name=root.resolve().name,
                      labels={v: v for v in plan["variants"]})


def load_runs(roots: list[str | Path]) -> list[RunRecords]:
    """Several run folders for one page: they must be on the same data set.

    With more than one run, labels become ``<model> <variant>`` (or ``<folder>/<variant>``
    when the models are the same) so rows stay distinct.
    """
    if not roots:
        raise CaprobeError("no run folder given; pass the folder written by caprobe compare")
    runs = [load_run(r) for r in roots]
    first = runs[0]
    for other in runs[1:]:
        if other.data != first.data:
            raise CaprobeError(f"cannot merge runs on different data sets: {first.root} used "
                               f"{first.data!r}, {other.root} used {other.data!r}")
        if first.data_checksum and other.data_checksum \
                and other.data_checksum != first.data_checksum:
            raise CaprobeError(f"cannot merge runs on different data: {first.root} and "
                               f"{other.root} both use {first.data!r} but their data checksums "
                               "differ (other files, subset or options)")
    if len(runs) > 1:
        models = [r.model for r in runs]
        by_model = len(set(models)) == len(models)
        names = [r.name for r in runs]
        if len(set(names)) != len(names):
            names = [f"{i + 1}:{n}" for i, n in enumerate(names)]
        for run, name in zip(runs, names, strict=True):
            prefix = run.model if by_model else name
            run.labels = {v: f"{prefix} {v}" for v in run.plan["variants"]}
    return runs


@dataclass(frozen=True)
class VariantRow:
    """One variant of one run on the page: its aggregate row, label, colour and run."""

    agg: AggregateRow
    label: str
    color: str
    run: RunRecords

    @property
    def variant(self) -> str:
        return self.agg.variant
