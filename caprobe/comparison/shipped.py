"""Step 5 of ``caprobe compare --runtime R [--int8]``: the trained models as they ship.

For each runtime R (``caprobe.runtimes``):

- **latency**: every variant's trained model (the seed that drew its attention maps: the
  first that learned) is timed in R, the variants interleaved as in step 2
  (:func:`caprobe.measure.latency.time_variants` with ``runtime=R``; int8 with ``--int8``)
  → ``variants/<v>/latency-<R>[-int8].json``;
- **int8 accuracy** (``--int8``): every finished seed's trained model is quantised
  statically in R, calibrated on the first
  :data:`caprobe.runtimes.CALIBRATION_IMAGES` training images (the
  same images for every variant and seed), and the whole test set is run through it
  → ``variants/<v>/seed-<s>/int8-<R>.json``: int8 top-1, the fp32 top-1 of the training
  (eager PyTorch, the deployed form: the exported fp32 graphs equal it to 1e-5, see
  ``caprobe export``), their difference, and the runtime's op coverage;
- **per-gate error** (``--int8``, once per variant, its drawing seed): the SQNR of every
  gate, int8 against fp32 (:func:`gate_record`) → ``variants/<v>/gate_error.json``.

Each record is written atomically as soon as it is computed; ``--resume`` computes only the
missing ones. :func:`summary` gathers them per (runtime, variant), with the paired interval
of Δ int8 over the seeds, for ``results.json``'s neighbour ``runtimes.json``.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from caprobe.comparison.layout import Layout
from caprobe.comparison.results import mean_known
from caprobe.io import read_json, to_jsonable, write_json
from caprobe.runtimes import CALIBRATION_IMAGES
from caprobe.stats import mean_ci

if TYPE_CHECKING:
    import torch

    from caprobe.data import Dataset

#: Batch of the exported evaluation graph (the shapes are static; the last batch is padded
#: with zeros and its padding dropped).
EVAL_BATCH = 32


def time_in_runtime(models: Mapping[str, torch.nn.Module], layout: Layout, *, runtime: str,
                    int8: bool, input_size: tuple[int, int], batch: int, threads: int | None,
                    min_time: float, meta: Mapping[str, Mapping[str, Any]],
                    failure: Callable[[str, BaseException], dict[str, Any]]) -> None:
    """Time ``models`` interleaved in ``runtime``; one record per variant (a failure is
    recorded for every variant, as in step 2)."""
    from caprobe.measure.latency import time_variants

    try:
        results = time_variants(models, batch=batch, input_size=input_size, device="cpu",
                                threads=threads, min_time=min_time, runtime=runtime,
                                int8=int8, baseline="none", meta=meta)
    except Exception as exc:  # noqa: BLE001 - recorded, the rest of the plan goes on
        for variant in models:
            write_json(layout.runtime_latency(variant, runtime, int8), failure(variant, exc))
        return
    for res in results:
        write_json(layout.runtime_latency(res.label, runtime, int8),
                   {"variant": res.label, **to_jsonable(res)})


def calibration_batches(dataset: Dataset, count: int = CALIBRATION_IMAGES,
                        batch: int = EVAL_BATCH) -> list[torch.Tensor]:
    """The first ``count`` training images (rounded down to whole batches), normalised."""
    from caprobe.data.augment import to_input

    images = dataset.train.images[: min(count, len(dataset.train)) // batch * batch]
    return list(to_input(images, dataset.mean, dataset.std).split(batch))


def runtime_top1(session: Any, dataset: Dataset, batch: int = EVAL_BATCH) -> float:
    """Top-1 (percent) of a loaded runtime session (exported at ``batch``) on the test set."""
    import torch

    from caprobe.data.augment import to_input

    images, labels = dataset.test.images, dataset.test.labels
    correct = 0
    for start in range(0, len(labels), batch):
        x = to_input(images[start:start + batch], dataset.mean, dataset.std)
        n = x.shape[0]
        if n < batch:
            x = torch.cat([x, x.new_zeros(batch - n, *x.shape[1:])])
        pred = session.run(x)[:n].argmax(1)
        correct += int((pred == labels[start:start + n]).sum())
    return 100.0 * correct / max(1, len(labels))


def int8_record(model: torch.nn.Module, dataset: Dataset, *, runtime: str, threads: int,
                calibration: list[torch.Tensor], fp32_top1: float | None,
                learned: bool | None) -> dict[str, Any]:
    """Quantise ``model``'s graph form statically for ``runtime``, run the test set through
    it and return the record (top-1 int8, the given fp32 top-1 of its training, their
    difference, and whether that training learned)."""
    import torch

    from caprobe.deployment import deploy
    from caprobe.runtimes import backend, export, load

    graph = deploy(model.eval(), target="graph")
    with tempfile.TemporaryDirectory(prefix="caprobe-int8-") as tmp:
        path = Path(tmp) / f"model{backend(runtime).SUFFIX}"
        exported = export(graph, calibration[0], path, runtime, calibration)
        session = load(exported.path, runtime, threads)
        t0 = time.perf_counter()
        with torch.no_grad():
            top1 = runtime_top1(session, dataset, batch=calibration[0].shape[0])
        eval_s = time.perf_counter() - t0
        settings = session.settings
    return {
        "runtime": runtime, "precision": "int8", "top1": top1, "fp32_top1": fp32_top1,
        "learned": learned,
        "delta_top1": None if fp32_top1 is None else top1 - fp32_top1,
        "test_images": len(dataset.test), "calibration_images": exported.calibration_images,
        "export_s": exported.export_s, "eval_s": eval_s, "coverage": exported.coverage,
        "settings": settings,
    }


#: test images the per-gate error is measured on (the first ones; two evaluation batches)
GATE_IMAGES = 64


def gate_record(model: torch.nn.Module, dataset: Dataset,
                calibration: list[torch.Tensor]) -> dict[str, Any]:
    """The int8 error of every gate of ``model`` (:func:`caprobe.runtimes.gate_error.gate_sqnr`:
    XNNPACK's pt2e quantizer simulated in PyTorch), on the first :data:`GATE_IMAGES` test
    images (whole batches; the first calibration batch when the test set holds less than
    one), calibrated as the int8 models are; per gate name, the median and the lowest SQNR
    over the blocks."""
    from caprobe.data.augment import to_input
    from caprobe.runtimes.gate_error import gate_sqnr

    batch = calibration[0].shape[0]
    images = dataset.test.images[: min(GATE_IMAGES, len(dataset.test)) // batch * batch]
    inputs = list(to_input(images, dataset.mean, dataset.std).split(batch)) or calibration[:1]
    blocks = gate_sqnr(model, calibration, inputs)
    by_gate: dict[str, list[float]] = {}
    for row in blocks:
        by_gate.setdefault(row["gate"], []).append(row["sqnr_db"])
    return {"quantizer": "pt2e XNNPACKQuantizer (symmetric, per-channel), simulated in PyTorch",
            "images": sum(x.shape[0] for x in inputs), "blocks": blocks,
            "gates": {g: {"median_db": _median(v), "min_db": min(v), "blocks": len(v)}
                      for g, v in by_gate.items()}}


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def summary(layout: Layout, variants: list[str], seeds: list[int], runtimes: list[str],
            int8: bool) -> dict[str, Any]:
    """Every runtime record of a run folder, gathered: latency rows per (runtime, precision,
    variant) and int8 accuracy rows per (runtime, variant) with the mean Δ int8 − fp32 over
    the seeds and its 95 % interval (paired by construction: each seed's int8 model is that
    seed's fp32 model quantised)."""
    latency, accuracy = [], []
    for runtime in runtimes:
        for precision in ("fp32", "int8") if int8 else ("fp32",):
            for variant in variants:
                path = layout.runtime_latency(variant, runtime, precision == "int8")
                record = read_json(path) if path.is_file() else {}
                info = (record.get("env") or {}).get("runtime") or {}
                latency.append({
                    "runtime": runtime, "precision": precision, "variant": variant,
                    "median_ms": record.get("median_ms"), "iqr_ms": record.get("iqr_ms"),
                    "overhead": record.get("overhead"),
                    "overhead_ci": record.get("overhead_ci"),
                    "coverage": info.get("coverage"), "settings": info.get("settings"),
                    "deploy_target": info.get("deploy_target"), "error": record.get("error")})
        if not int8:
            continue
        for variant in variants:
            saved = [read_json(p) for s in seeds
                     if (p := layout.int8(variant, s, runtime)).is_file()]
            # a training that did not learn is no evidence of what int8 does to a model
            records = [r for r in saved if r.get("learned") is not False and not r.get("error")]
            deltas = [r["delta_top1"] for r in records if r.get("delta_top1") is not None]
            ci = mean_ci(deltas) if len(deltas) > 1 else None
            accuracy.append({
                "runtime": runtime, "variant": variant, "n": len(records),
                "n_not_learned": sum(r.get("learned") is False for r in saved),
                "top1_int8_mean": mean_known([r["top1"] for r in records]),
                "top1_fp32_mean": mean_known([r["fp32_top1"] for r in records
                                         if r.get("fp32_top1") is not None]),
                "delta_mean": mean_known(deltas),
                "delta_ci_low": ci[0] if ci else None, "delta_ci_high": ci[1] if ci else None,
                "errors": [r["error"] for r in saved if r.get("error")]})
    gates = {}
    for variant in variants if int8 else []:
        path = layout.gate_error(variant)
        if path.is_file():
            gates[variant] = read_json(path)
    return {"schema": 1, "kind": "caprobe-runtimes", "runtimes": runtimes, "int8": int8,
            "calibration_images": CALIBRATION_IMAGES, "latency": latency,
            "int8_accuracy": accuracy, "gate_error": gates}
