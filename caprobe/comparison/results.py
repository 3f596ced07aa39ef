"""Aggregate the records of a run folder into ``results.csv`` / ``results.json`` (pandas).

Reads only saved files (plan, counts, latency, training run folders), so the report and a
resumed run get the same numbers as the run that wrote them. Statistics come from
:mod:`caprobe.stats`:

* only runs that finished **and learned** (:func:`caprobe.stats.did_learn`; a record too old to
  tell counts as learned) enter the accuracy statistics; the others are counted
  (``n_not_learned``) and left out, and a variant none of whose finished runs learned gets the
  status ``did not learn`` and no top-1 numbers;
* top-1 per variant: mean, standard deviation (ddof=1) and a 95% Student-t interval over those
  runs (no interval with one seed);
* deltas against the baseline are paired by seed (``paired_delta(baseline, variant)`` over the
  seeds where both finished and learned), with a paired 95% interval (none with one pair);
  the same against the plan's ``reference`` variant (``ref_delta_*``) when it is not the
  baseline (``compare --reference se``: "does CA beat SE?");
* cost deltas: ``100 * (variant / baseline - 1)`` percent of params and MAdds; latency overhead
  is the interleaved ratio measured by the bench library.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from caprobe.comparison.layout import Layout
from caprobe.comparison.plan import BASELINE, load_plan, plan_training
from caprobe.comparison.rows import AggregateRow, MetricsRow, RunRow
from caprobe.io import atomic_write_text, read_json, read_jsonl, write_json
from caprobe.stats import chance_top1, did_learn

RESULTS_SCHEMA = 2  # 2: runs carry learned / chance_top1, aggregates n_learned / n_not_learned
FINISHED = "finished"
DID_NOT_LEARN = "did not learn"  # aggregate status: no finished run of the variant learned

RUN_COLUMNS = RunRow.columns()


def _read(path: Path) -> Any | None:
    try:
        return read_json(path)
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError):
        return None


def read_metrics(run_dir: Path) -> list[MetricsRow]:
    """Rows of a training's ``metrics.jsonl`` (one per epoch); a torn last line is ignored."""
    return [MetricsRow.from_dict(row) for row in read_jsonl(run_dir / "metrics.jsonl")]


def piece_state(layout: Layout, variant: str, seed: int) -> dict[str, Any]:
    """What is saved for one (variant, seed) training piece.

    ``status`` is the training's own status (finished, diverged, failed, interrupted), ``failed``
    when the piece failed outside training (``error.json``), ``partial`` when a run folder
    exists without a result, or ``pending``. An ``error.json`` marked ``retry`` (the machine
    failed: full disk, no memory, a killed worker) is no outcome: only its error is reported.
    """
    run_dir = layout.run_dir(variant, seed)
    err = _read(layout.error(variant, seed))
    if err is not None and not err.get("retry"):
        return {"status": err.get("status", "failed"), "error": err.get("error"), "result": None}
    result = _read(run_dir / "result.json")
    if result is not None:
        return {"status": result.get("status", "failed"), "error": result.get("error"),
                "result": result}
    if run_dir.exists():
        return {"status": "partial", "error": (err or {}).get("error"), "result": None}
    return {"status": "pending", "error": None, "result": None}


def piece_done(layout: Layout, variant: str, seed: int) -> bool:
    """Finished pieces (finished, diverged, failed) are never run again; interrupted and
    partial ones (a piece the machine failed is one) resume from their checkpoint."""
    return is_final(piece_state(layout, variant, seed)["status"])


def is_final(status: str) -> bool:
    """Whether a piece of this :func:`piece_state` status is finished (never run again)."""
    return status not in ("pending", "partial", "interrupted")


def _num(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _pct_delta(value: Any, base: Any) -> float | None:
    value, base = _num(value), _num(base)
    if value is None or base is None or base == 0:
        return None
    return 100.0 * (value / base - 1.0)


def _record_classes(result: dict[str, Any]) -> int | None:
    """The class count behind a ``result.json``: from its ``chance_top1`` or, in records older
    than that field, from its per-class accuracies."""
    chance = _num(result.get("chance_top1"))
    if chance:
        return round(100.0 / chance)
    return len(result.get("per_class_acc") or {}) or None


def _record_learned(result: dict[str, Any], run_dir: Path) -> bool | None:
    """``learned`` of a ``result.json``; for a record older than the field, computed from its
    top-1, class count and the run's ``metrics.jsonl`` (None when that is impossible)."""
    if "learned" in result or result.get("status") != FINISHED:
        return result.get("learned")
    losses = [row.train_loss for row in read_metrics(run_dir)]
    return did_learn(result.get("top1"), _record_classes(result), losses)


def run_rows(root: str | Path, plan: dict[str, Any] | None = None) -> list[RunRow]:
    """One row per planned (variant, seed) training piece; ``learned`` is None unless the
    training finished (or when its record cannot tell)."""
    layout = Layout(root)
    plan = plan or load_plan(root)
    if not plan["options"].get("train", True):
        return []
    rows = []
    for piece in plan["pieces"]:
        variant, seed = piece["variant"], piece["seed"]
        state = piece_state(layout, variant, seed)
        result = state["result"] or {}
        rows.append(RunRow(
            variant=variant, seed=seed, status=state["status"],
            learned=_record_learned(result, layout.run_dir(variant, seed)),
            error=state["error"], top1=_num(result.get("top1")),
            chance_top1=_num(chance_top1(_record_classes(result))),
            top5=_num(result.get("top5")),
            test_loss=_num(result.get("test_loss")),
            train_loss=_num(result.get("train_loss")),
            epochs_done=result.get("epochs_done"), steps_done=result.get("steps_done"),
            wall_time_s=_num(result.get("wall_time_s")),
            images_per_s=_num(result.get("images_per_s")),
            data_checksum=result.get("data_checksum"),
            run_dir=piece["run_dir"],
        ))
    return rows


def _finished(row: RunRow) -> bool:
    return row.status == FINISHED and row.top1 is not None


def _learned(row: RunRow) -> bool:
    """Finished and not flagged as not learned (unknown, in older records, counts as learned)."""
    return _finished(row) and row.learned is not False


def mean_known(values: list[float | None]) -> float | None:
    """The mean of the known values; None when none is known."""
    import numpy as np

    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def _status(variant_rows: list[RunRow], train: bool, counts: dict | None,
            latency: dict | None) -> tuple[str, str | None]:
    errors = [r.error for r in variant_rows if r.error]
    for rec in (counts, latency):
        if rec and rec.get("error"):
            errors.append(rec["error"])
    error = errors[0] if errors else None
    if not train:
        if (counts and counts.get("error")) or (latency and latency.get("error")):
            return "failed", error
        return ("ok" if counts and latency else "incomplete"), error
    finished = [r for r in variant_rows if _finished(r)]
    statuses = [r.status for r in variant_rows]
    n = len(statuses)
    done = statuses.count(FINISHED)
    if finished and not any(map(_learned, finished)):
        # every finished run failed to learn; unfinished pieces are said too
        return (DID_NOT_LEARN if done == n else
                f"{DID_NOT_LEARN} ({done}/{n} finished)"), error
    if done == n and n:
        return "ok", error
    if done == 0:
        for bad in ("failed", "diverged", "interrupted", "partial"):
            if bad in statuses:
                return bad, error
        return "pending", error
    others = sorted({s for s in statuses if s != FINISHED})
    return f"{done}/{n} finished ({', '.join(others)})", error


def aggregate_rows(root: str | Path, plan: dict[str, Any] | None = None,
                   runs: list[RunRow] | None = None) -> list[AggregateRow]:
    """One row per variant: costs, latency, top-1 statistics and paired deltas.

    ``n_finished`` counts the finished runs; ``n_learned`` those of them that enter the
    accuracy columns; ``n_not_learned`` those left out because they did not learn.
    """
    from caprobe.stats import mean_ci, paired_delta

    layout = Layout(root)
    plan = plan or load_plan(root)
    runs = run_rows(root, plan) if runs is None else runs
    train = plan["options"].get("train", True)
    counts = {v: _read(layout.counts(v)) for v in plan["variants"]}
    latency = {v: _read(layout.latency(v)) for v in plan["variants"]}
    base_counts = counts.get(BASELINE) or {}
    learned = {v: {r.seed: r for r in runs if r.variant == v and _learned(r)}
               for v in plan["variants"]}
    reference = plan["options"].get("reference") or BASELINE

    def paired(against: str, variant: str, prefix: str) -> dict[str, Any]:
        seeds = sorted(set(learned.get(against, {})) & set(learned[variant]))
        if variant == against or not seeds:
            return {}
        d = paired_delta([learned[against][s].top1 for s in seeds],
                         [learned[variant][s].top1 for s in seeds])
        return {f"{prefix}_mean": d.mean, f"{prefix}_std": _num(d.std),
                f"{prefix}_ci_low": d.ci_low, f"{prefix}_ci_high": d.ci_high,
                f"{prefix.removesuffix('_top1')}_n": d.n}
    out = []
    for variant in plan["variants"]:
        c = counts[variant] or {}
        lat = latency[variant] or {}
        vrows = [r for r in runs if r.variant == variant]
        status, error = _status(vrows, train, counts[variant], latency[variant])
        used = list(learned[variant].values())
        top = [r.top1 for r in used]
        n_finished = sum(map(_finished, vrows))
        row: dict[str, Any] = {  # AggregateRow's fields; those not set keep their defaults
            "variant": variant, "model": plan_training(plan).get("model"),
            "status": status, "error": error,
            "n_seeds": len(vrows), "n_finished": n_finished,
            "n_learned": len(top), "n_not_learned": n_finished - len(top),
            "params": _num(c.get("params")), "madds": _num(c.get("madds")),
            "attention_params": _num(c.get("attention_params")),
            "attention_madds": _num(c.get("attention_madds")),
            "params_delta_pct": _pct_delta(c.get("params"), base_counts.get("params")),
            "madds_delta_pct": _pct_delta(c.get("madds"), base_counts.get("madds")),
            "latency_median_ms": _num(lat.get("median_ms")),
            "latency_iqr_ms": _num(lat.get("iqr_ms")),
            "latency_p90_ms": _num(lat.get("p90_ms")),
            "latency_n": lat.get("n"),
            "latency_device": lat.get("device"),
            "latency_form": lat.get("form"),
            "latency_overhead": _num(lat.get("overhead")),
            "images_per_s": _num(lat.get("images_per_s")),
            "reference": reference,
        }
        ci = lat.get("overhead_ci")
        if isinstance(ci, (list, tuple)) and len(ci) == 2:
            row["latency_overhead_ci_low"], row["latency_overhead_ci_high"] = map(_num, ci)
        if top:
            import numpy as np

            row["top1_mean"] = mean_known(top)
            row["top1_std"] = float(np.std(top, ddof=1)) if len(top) > 1 else None
            interval = mean_ci(top)
            if interval is not None:
                row["top1_ci_low"], row["top1_ci_high"] = interval
            row["top5_mean"] = mean_known([r.top5 for r in used])
            row["test_loss_mean"] = mean_known([r.test_loss for r in used])
        walls = [r.wall_time_s for r in vrows if r.wall_time_s is not None]
        if n_finished and walls:
            row["train_wall_time_s"] = float(sum(walls))
        row.update(paired(BASELINE, variant, "delta_top1"))
        if reference != BASELINE:
            row.update(paired(reference, variant, "ref_delta_top1"))
        if variant == BASELINE:
            row.update(params_delta_pct=None, madds_delta_pct=None)
        out.append(AggregateRow(**{k: (_num(v) if isinstance(v, float) else v)
                                   for k, v in row.items()}))
    return out


def build_results(root: str | Path) -> dict[str, Any]:
    """The content of ``results.json`` computed from the records of a run folder."""
    layout = Layout(root)
    plan = load_plan(root)
    runs = run_rows(root, plan)
    aggs = aggregate_rows(root, plan, runs)
    prov = _read(layout.provenance) or {}
    checksums = sorted({r.data_checksum for r in runs if r.data_checksum})
    return {
        "schema": RESULTS_SCHEMA, "kind": "caprobe-results",
        "model": plan_training(plan).get("model"), "data": plan_training(plan).get("data"),
        "data_checksum": prov.get("data_checksum") or (checksums[0] if checksums else None),
        "variants": plan["variants"], "seeds": plan["seeds"],
        "reference": plan["options"].get("reference") or BASELINE,
        "train": plan["options"].get("train", True),
        "runs": [r.to_dict() for r in runs], "aggregates": [a.to_dict() for a in aggs],
    }


def results_frame(results: dict[str, Any]):
    """runs and aggregates as one pandas DataFrame (column ``row`` tells them apart)."""
    import pandas as pd

    runs = pd.DataFrame(results["runs"], columns=RUN_COLUMNS)
    aggs = pd.DataFrame(results["aggregates"])
    frames = [f for f in (runs, aggs) if not f.empty]
    if not frames:
        return pd.DataFrame(columns=RUN_COLUMNS)
    return pd.concat(frames, ignore_index=True, sort=False)


def write_results(root: str | Path) -> dict[str, Any]:
    """Aggregate the run folder and write ``results.json`` and ``results.csv`` atomically."""
    layout = Layout(root)
    results = build_results(root)
    write_json(layout.results_json, results)
    atomic_write_text(layout.results_csv, results_frame(results).to_csv(index=False))
    return results


def load_results(root: str | Path) -> dict[str, Any]:
    """``results.json`` when present and current, else aggregated from the records on disk."""
    layout = Layout(root)
    load_plan(root)  # raises CaprobeError for a folder that is not a run
    saved = _read(layout.results_json)
    if isinstance(saved, dict) and saved.get("schema") == RESULTS_SCHEMA:
        return saved
    return build_results(root)
