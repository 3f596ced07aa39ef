"""Render the self-contained HTML report from saved run folders.

One file: inline CSS, inline SVG plots, no scripts, no fonts or images from the network.
jinja2 autoescapes every string (specs, paths, names, errors); only the SVG produced by
matplotlib here is marked safe (matplotlib escapes the text it writes).
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from caprobe.comparison.plan import BASELINE, plan_training
from caprobe.comparison.results import DID_NOT_LEARN
from caprobe.comparison.rows import AggregateRow, MetricsRow, RunRow
from caprobe.formatting import (
    finite,
    fmt_acc,
    fmt_count,
    fmt_delta,
    fmt_ms,
    fmt_number,
    fmt_pct,
    fmt_ratio_pct,
)
from caprobe.io import atomic_write_text
from caprobe.reporting import plots
from caprobe.reporting.records import RunRecords, VariantRow, load_runs
from caprobe.stats import at_chance

#: the training curves: panel title and the metrics.jsonl column it plots
CURVES: tuple[tuple[str, Callable[[MetricsRow], float | None]], ...] = (
    ("train loss", lambda m: m.train_loss),
    ("test top-1 (%)", lambda m: m.test_top1),
)


# --------------------------------------------------------------------------- templates


def templates_dir() -> Path:
    """``caprobe/templates`` inside an installed wheel, else the repository's ``templates/``."""
    import caprobe

    packaged = Path(caprobe.__file__).resolve().parent / "templates"
    if packaged.is_dir():
        return packaged
    return Path(caprobe.__file__).resolve().parent.parent / "templates"


def environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env


# --------------------------------------------------------------------------- formatting




def _interval(lo: Any, hi: Any, fmt) -> str:
    return f"[{fmt(lo)}, {fmt(hi)}]" if finite(lo) and finite(hi) else ""


def _device_word(device: Any) -> str:
    if not device:
        return ""
    d = str(device).lower()
    return "CPU" if d == "cpu" else "GPU" if d.startswith("cuda") else str(device)


# --------------------------------------------------------------------------- rows


def _rows(runs: list[RunRecords]) -> list[VariantRow]:
    """Aggregate rows of every run with their page label, colour and run."""
    out = []
    i = 0
    for k, run in enumerate(runs):
        grey = plots.BASELINE_GREYS[k % len(plots.BASELINE_GREYS)]
        for agg in run.aggregates:
            color = grey if agg.variant == BASELINE else plots.color(i + 1)
            out.append(VariantRow(agg=agg, label=run.labels.get(agg.variant, agg.variant),
                                  color=color, run=run))
            if agg.variant != BASELINE:
                i += 1
    return out


def _cell(key: str, text: str, value: Any = None, extra: str = "") -> dict[str, Any]:
    return {"key": key, "text": text, "value": _value_attr(value), "extra": extra}


def _value_attr(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    return str(value)


def reference_of(rows: list[VariantRow]) -> str | None:
    """The variant the ``ref_delta_*`` columns compare with (``compare --reference``): its
    name when every run that has one agrees, "reference" when they differ, None without."""
    refs = {r.agg.reference for r in rows} - {None, BASELINE}
    return refs.pop() if len(refs) == 1 else ("reference" if refs else None)


def _delta_extra(mean: float | None, lo: float | None, hi: float | None) -> str:
    d_ci = _interval(lo, hi, fmt_delta)
    return d_ci or ("no CI: 1 pair" if finite(mean) else "")


def table_rows(rows: list[VariantRow]) -> list[dict[str, Any]]:
    """The summary table: display text plus the raw number from results.json per cell."""
    reference = reference_of(rows)
    out = []
    for r in rows:
        a = r.agg
        train = r.run.trained
        seeds = f"{a.n_finished}/{a.n_seeds}" if train else "–"
        learned = f"{a.n_learned}/{a.n_finished} learned" if a.n_not_learned else ""
        lat = fmt_ms(a.latency_median_ms)
        if finite(a.latency_iqr_ms):
            lat += f" ± {fmt_ms(a.latency_iqr_ms)}"
        over = fmt_ratio_pct(a.latency_overhead)
        over_ci = _interval(a.latency_overhead_ci_low, a.latency_overhead_ci_high, fmt_ratio_pct)
        top_ci = _interval(a.top1_ci_low, a.top1_ci_high, fmt_acc)
        if finite(a.top1_mean) and not top_ci:
            top_ci = "no CI: 1 seed" if a.n_learned == 1 else ""
        cells = [
            _cell("params", fmt_count(a.params), a.params),
            _cell("params_delta_pct", fmt_pct(a.params_delta_pct), a.params_delta_pct),
            _cell("madds", fmt_count(a.madds), a.madds),
            _cell("madds_delta_pct", fmt_pct(a.madds_delta_pct), a.madds_delta_pct),
            _cell("latency_median_ms", lat, a.latency_median_ms),
            _cell("latency_overhead", over, a.latency_overhead, over_ci),
            _cell("top1_mean", fmt_acc(a.top1_mean), a.top1_mean, top_ci),
            _cell("delta_top1_mean", fmt_delta(a.delta_top1_mean), a.delta_top1_mean,
                  _delta_extra(a.delta_top1_mean, a.delta_top1_ci_low, a.delta_top1_ci_high)),
            *([_cell("ref_delta_top1_mean", fmt_delta(a.ref_delta_top1_mean),
                     a.ref_delta_top1_mean,
                     _delta_extra(a.ref_delta_top1_mean, a.ref_delta_top1_ci_low,
                                  a.ref_delta_top1_ci_high))]
              if reference else []),
            _cell("seeds", seeds, a.n_finished if train else None, learned),
        ]
        out.append({"label": r.label, "variant": a.variant, "color": r.color,
                    "long": len(r.label) > 22,
                    "cells": cells, "status": a.status, "error": a.error,
                    "failed": a.status != "ok",
                    "not_learned": bool(a.n_not_learned)})
    return out


def _baseline_of(run: RunRecords) -> AggregateRow | None:
    """The baseline's aggregate row in ``run`` (None when there is none)."""
    return next((a for a in run.aggregates if a.variant == BASELINE), None)


def _why_not_learned(runs: list[RunRow]) -> str:
    """Why the flagged runs did not learn: top-1 at chance, a flat loss, or both."""
    flags = [at_chance(x.top1, x.chance_top1) for x in runs if x.learned is False]
    reasons = (["final top-1 at chance"] if any(flags) else []) \
        + (["training loss did not fall"] if not all(flags) else [])
    return " or ".join(reasons)


def _none_learned(a: AggregateRow, run: RunRecords) -> str:
    """For a did-not-learn row: did not learn in any of its 3 runs (final top-1 at chance)."""
    n = a.n_not_learned
    what = "run" if n == a.n_seeds else "finished run"
    runs = f"its one {what}" if n == 1 else f"any of its {n} {what}s"
    return f"did not learn in {runs} ({_why_not_learned(run.seed_runs(a.variant))})"


def _left_out(a: AggregateRow, who: str = "") -> list[str]:
    """["1 of 3 runs did not learn and is left out"] when some, not all, runs were left out."""
    k, n = a.n_not_learned, a.n_finished
    if not k or k == n:
        return []
    return [f"{who}{k} of {n} runs did not learn and {'is' if k == 1 else 'are'} left out"]


#: top-1 (%) from which a variant and its baseline both count as at the task's ceiling: the
#: positional probe converges to 99.4-100 % for every variant (README's calibration table)
CEILING_TOP1 = 99.5


def _at_ceiling(a: AggregateRow, base: AggregateRow) -> list[str]:
    """["both at the ceiling ..."] when neither the variant nor the baseline has room above."""
    tops = (a.top1_mean, base.top1_mean)
    if all(finite(t) and t >= CEILING_TOP1 for t in tops):
        return [f"both at the task's ceiling (≥ {CEILING_TOP1:g} % top-1): this data set "
                "cannot separate them"]
    return []


def _cost(a: AggregateRow) -> str:
    dev = _device_word(a.latency_device)
    costs = []
    if finite(a.params_delta_pct):
        costs.append(f"{fmt_pct(a.params_delta_pct)} params")
    if finite(a.madds_delta_pct):
        costs.append(f"{fmt_pct(a.madds_delta_pct)} MAdds")
    if finite(a.latency_overhead):
        costs.append(f"{fmt_ratio_pct(a.latency_overhead)} {dev} latency".replace("  ", " "))
    return ", ".join(costs) if costs else "unknown cost"


def _delta_claim(a: AggregateRow, cost: str) -> tuple[str, str]:
    """The paired top-1 claim (no final full stop) and its tone."""
    d, n = a.delta_top1_mean, a.delta_n
    lo, hi = a.delta_top1_ci_low, a.delta_top1_ci_high
    if not (finite(lo) and finite(hi)):
        return f"{d:+.1f} top-1 for {cost} (one seed: no interval can be given)", "neutral"
    if lo <= 0 <= hi:
        return (f"no detectable difference in top-1 (Δ {d:+.1f}, 95% CI [{lo:+.1f}, {hi:+.1f}], "
                f"paired over {n} seeds) for {cost}", "neutral")
    return (f"{d:+.1f} ± {(hi - lo) / 2:.1f} top-1 for {cost} (paired over {n} seeds, 95% CI)",
            "good" if lo > 0 else "bad")


def _ref_claim(a: AggregateRow) -> str:
    """The paired top-1 delta against the chosen reference, in the words of :func:`_delta_claim`."""
    d, n = a.ref_delta_top1_mean, a.ref_delta_n
    lo, hi = a.ref_delta_top1_ci_low, a.ref_delta_top1_ci_high
    if not (finite(lo) and finite(hi)):
        return f"Δ {d:+.1f} top-1 (one seed: no interval can be given)"
    if lo <= 0 <= hi:
        return (f"no detectable difference (Δ {d:+.1f}, 95% CI [{lo:+.1f}, {hi:+.1f}], paired "
                f"over {n} seeds)")
    return f"Δ {d:+.1f} ± {(hi - lo) / 2:.1f} top-1 (paired over {n} seeds, 95% CI)"


def verdict(r: VariantRow) -> dict[str, str]:
    """One sentence: what a module buys and what it costs against the baseline.

    Only runs that learned count: a variant none of whose runs learned gets no accuracy
    verdict, and a baseline that did not learn leaves nothing to pair with.
    """
    a, label, cost = r.agg, r.label, _cost(r.agg)
    base = _baseline_of(r.run)
    tone = "bad"
    if not r.run.trained:
        text, tone = f"{label}: costs {cost}; accuracy not measured (--no-train).", "neutral"
    elif a.status.startswith(DID_NOT_LEARN):
        text = f"{label}: {_none_learned(a, r.run)}; no accuracy verdict; costs {cost}."
    elif finite(a.delta_top1_mean):
        claim, tone = _delta_claim(a, cost)
        notes = _left_out(a)
        if base is not None:
            notes += _left_out(base, "baseline: ") + _at_ceiling(a, base)
        text = f"{label}: {claim}" + (f" ({'; '.join(notes)})" if notes else "") + "."
        if finite(a.ref_delta_top1_mean):
            text += f" {label} vs {a.reference}: {_ref_claim(a)}."
    elif base is not None and base.status.startswith(DID_NOT_LEARN):
        text = (f"{label}: no top-1 delta: the baseline {_none_learned(base, r.run)}, so there is "
                f"nothing to pair with; costs {cost}.")
    else:
        status = a.status
        if status == "ok" and a.n_finished:
            status = "no seed where both it and the baseline finished and learned"
        text = f"{label}: no paired top-1 ({status}); costs {cost}."
        tone = "bad" if status not in ("ok", "pending") else "neutral"
    if a.error:
        text += f" Error: {a.error}"
    return {"label": label, "text": text, "tone": tone}


def _learned_text(run: RunRow) -> str:
    if run.status != "finished":
        return "–"
    return {True: "yes", False: "did not learn"}.get(run.learned, "unknown")


def seed_rows(rows: list[VariantRow]) -> list[dict[str, Any]]:
    """Every training run (variant × seed) with its top-1, chance level and learned flag."""
    return [{"label": r.label, "color": r.color, "seed": x.seed,
             "status": x.status, "top1": fmt_acc(x.top1),
             "top1_value": _value_attr(x.top1), "chance": fmt_acc(x.chance_top1),
             "learned": _learned_text(x), "not_learned": x.learned is False}
            for r in rows for x in r.run.seed_runs(r.variant)]


# --------------------------------------------------------------------------- series


def curve_series(rows: list[VariantRow]) -> list[dict]:
    """Per variant, every :data:`CURVES` metric per epoch: mean, lowest and highest seed."""
    series = []
    for r in rows:
        per_seed = [m for m in r.run.metrics.get(r.variant, {}).values() if m]
        if not per_seed:
            continue
        metrics = {}
        for title, value in CURVES:
            by_epoch: dict[float, list[float]] = {}
            for m in per_seed:
                for i, row in enumerate(m):
                    x = i + 1 if row.epoch is None else row.epoch
                    y = value(row)
                    if finite(y) and finite(x):
                        by_epoch.setdefault(float(x), []).append(float(y))
            if not by_epoch:
                continue
            xs = sorted(by_epoch)
            metrics[title] = {
                "x": xs,
                "mean": [sum(by_epoch[x]) / len(by_epoch[x]) for x in xs],
                "lo": [min(by_epoch[x]) for x in xs],
                "hi": [max(by_epoch[x]) for x in xs],
            }
        if metrics:
            series.append({"label": r.label, "color": r.color, "metrics": metrics})
    return series


def latency_rows(rows: list[VariantRow]) -> list[dict]:
    out = []
    for r in rows:
        rec = r.run.latency.get(r.variant) or {}
        samples = [s for s in rec.get("samples_ms") or [] if finite(s)]
        if samples:
            out.append({"_label": r.label, "_color": r.color, "samples": samples})
    return out


def stage_table(rows: list[VariantRow]) -> tuple[list[str], list[dict]]:
    """Stages in model order and, per variant, its attention MAdds and share per stage."""
    stages: list[str] = []
    per: list[dict] = []
    for r in rows:
        c = r.run.counts.get(r.variant) or {}
        by = c.get("by_stage") or []
        for s in by:
            if s.get("stage") not in stages:
                stages.append(s.get("stage"))
        per.append({"r": r, "by": {s.get("stage"): s for s in by}})
    out = []
    for p in per:
        r = p["r"]
        if r.variant == BASELINE or not p["by"]:
            continue
        values, cells = [], []
        for st in stages:
            s = p["by"].get(st) or {}
            am, m = s.get("attention_madds") or 0, s.get("madds") or 0
            values.append(am)
            share = f" ({100 * am / m:.1f}%)" if am and m else ""
            cells.append({"text": (fmt_count(am) + share) if am else "0", "value": am})
        total = (r.run.counts.get(r.variant) or {}).get("attention_madds")
        out.append({"_label": r.label, "_color": r.color, "values": values,
                    "cells": cells, "total": fmt_count(total), "total_value": total})
    return stages, out


def runtime_tables(runs: list[RunRecords]) -> dict[str, list[dict[str, Any]]]:
    """The runtime section's three tables from each run's ``runtimes.json``: latency per
    (runtime, precision, variant) with the overhead over ``none`` and what the runtime did
    with the graph; int8 top-1 against fp32 per (runtime, variant); each gate's int8 SQNR."""
    from caprobe.runtimes import coverage_note

    latency, accuracy, gates = [], [], []
    for run in runs:
        saved = run.runtimes or {}
        for r in saved.get("latency", []):
            ci = r.get("overhead_ci")
            latency.append({
                "runtime": r["runtime"], "precision": r["precision"],
                "label": run.labels.get(r["variant"], r["variant"]),
                "median": fmt_ms(r.get("median_ms")), "median_value": _value_attr(
                    r.get("median_ms")),
                "overhead": fmt_ratio_pct(r.get("overhead"), missing=""),
                "ci": (f"[{fmt_ratio_pct(ci[0])}, {fmt_ratio_pct(ci[1])}]" if ci else ""),
                "note": (r["error"] if r.get("error") else (
                    f"deploy target {r['deploy_target']}; " if r.get("deploy_target") else "")
                    + coverage_note(r["runtime"], r.get("coverage") or {},
                                    r.get("settings") or {}))})
        for r in saved.get("int8_accuracy", []):
            accuracy.append({
                "runtime": r["runtime"], "label": run.labels.get(r["variant"], r["variant"]),
                "n": r["n"], "not_learned": r.get("n_not_learned", 0),
                "fp32": fmt_acc(r.get("top1_fp32_mean")),
                "int8": fmt_acc(r.get("top1_int8_mean")),
                "delta": fmt_delta(r.get("delta_mean")),
                "delta_value": _value_attr(r.get("delta_mean")),
                "ci": _interval(r.get("delta_ci_low"), r.get("delta_ci_high"), fmt_delta),
                "errors": "; ".join(r.get("errors") or [])})
        for variant, record in (saved.get("gate_error") or {}).items():
            label = run.labels.get(variant, variant)
            if record.get("error"):
                gates.append({"label": label, "gate": "–", "median": "–", "min": "–",
                              "blocks": "", "error": record["error"]})
            for gate, g in (record.get("gates") or {}).items():
                gates.append({"label": label, "gate": gate, "blocks": g["blocks"],
                              "median": fmt_number(g.get("median_db"), ".1f"),
                              "min": fmt_number(g.get("min_db"), ".1f"), "error": ""})
    return {"latency": latency, "accuracy": accuracy, "gates": gates}


def map_figures(runs: list[RunRecords]) -> list[dict]:
    figs = []
    n = 0
    for run in runs:
        rec = run.maps or {}
        imgs = rec.get("images") or {}
        for variant, vrec in (rec.get("variants") or {}).items():
            label = run.labels.get(variant, variant)
            if not isinstance(vrec, dict) or not vrec.get("blocks"):
                figs.append({"label": label, "svg": None, "seed": None, "blocks": "", "width": 0,
                             "note": (vrec or {}).get("error") or "no maps saved"})
                continue
            n += 1
            svg = plots.attention_maps(imgs.get("pixels") or [], imgs.get("classes") or [],
                                       vrec["blocks"], prefix=f"map{n}")
            blocks = ", ".join(f"{b.get('name')} ({b.get('channels')} ch, "
                               f"{'×'.join(map(str, b.get('size', [])))})"
                               for b in vrec["blocks"])
            width = 190 * (len(vrec["blocks"]) + 1)
            figs.append({"label": label, "svg": _safe(svg), "seed": vrec.get("seed"),
                         "width": width,
                         "blocks": blocks, "note": None if svg else "nothing to draw"})
    return figs


def _safe(svg: str | None):
    if svg is None:
        return None
    from markupsafe import Markup

    return Markup(svg)  # noqa: S704 - produced by matplotlib, text escaped by it


# --------------------------------------------------------------------------- provenance


def provenance(run: RunRecords) -> list[tuple[str, str]]:
    prov = run.provenance or {}
    env = prov.get("env") or {}
    opts = run.plan.get("options", {})
    training = plan_training(run.plan)
    sessions = prov.get("sessions") or []
    items: list[tuple[str, str]] = [("run folder", str(run.root))]
    for i, s in enumerate(sessions):
        argv = s.get("argv") or []
        cmd = shlex.join(["caprobe" if i == 0 and j == 0 and str(a).endswith("caprobe")
                          else str(a) for j, a in enumerate(argv)]) if argv else "–"
        name = "command" if len(sessions) == 1 else f"command ({i + 1}/{len(sessions)})"
        items.append((name, cmd))
    items += [
        ("started", str(prov.get("started_at") or "–")),
        ("finished", str(prov.get("finished_at") or "not finished")),
        ("caprobe", str(env.get("caprobe") or "–")),
        ("torch", str(env.get("torch") or "–")),
        ("python", str(env.get("python") or "–")),
        ("machine", " · ".join(str(env[k]) for k in ("platform", "cpu_model") if env.get(k))
         or "–"),
        ("device", str(env.get("device_name") or env.get("device") or "–")),
        ("threads", f"{env.get('threads', '–')} of {env.get('cpu_count', '–')} CPUs"),
        ("git commit", str(env.get("git_commit") or "none (not a git checkout)")),
        ("data", f"{run.data} (checksum {run.data_checksum or 'unknown'})"),
        ("model", f"{training.get('model')} · width {prov.get('width', training.get('width'))}"
                  f" · profile {prov.get('profile', training.get('profile'))} · input "
                  f"{'×'.join(map(str, prov.get('input_size') or [])) or '–'}"),
        ("seeds", ", ".join(map(str, run.plan.get("seeds", [])))),
        ("options", json.dumps(opts, sort_keys=True)),
    ]
    return items


# --------------------------------------------------------------------------- page


def build_context(runs: list[RunRecords]) -> dict[str, Any]:
    rows = _rows(runs)
    any_train = any(r.trained for r in runs)
    one_seed = all(len(r.plan.get("seeds", [])) == 1 for r in runs)
    fig: list[dict[str, Any]] = []

    def add(pid: str, title: str, svg: str | None, note: str, caption: str = "") -> None:
        fig.append({"id": pid, "title": title, "svg": _safe(svg), "note": note,
                    "caption": caption})

    not_trained = "no accuracy: the comparison ran with --no-train"
    add("acc-latency", "Accuracy vs latency",
        plots.accuracy_vs_cost(rows, cost=lambda a: a.latency_median_ms,
                               xlabel="median latency (ms)", prefix="acclat",
                               xerr=lambda a: a.latency_iqr_ms),
        not_trained if not any_train else "no variant has both top-1 and latency",
        "Filled markers lie on the Pareto front (no other variant is both faster and more "
        "accurate); bars: 95% CI of top-1 over seeds and the latency IQR.")
    add("acc-madds", "Accuracy vs multiply-adds",
        plots.accuracy_vs_cost(rows, cost=lambda a: a.madds, xlabel="MAdds (millions)",
                               xscale=1e-6, prefix="accmadds"),
        not_trained if not any_train else "no variant has both top-1 and counts",
        "Dashed line: the Pareto front of accuracy against multiply-adds.")
    add("curves", "Training curves", plots.training_curves(curve_series(rows), prefix="curves"),
        not_trained if not any_train else "no metrics.jsonl rows were saved",
        "Mean over seeds per epoch; the band spans the lowest and highest seed.")
    add("latency", "Latency distributions",
        plots.latency_distributions(latency_rows(rows), prefix="latdist"),
        "no latency samples were saved",
        "Every timed sample (one block, interleaved across variants).")
    stages, stage_rows = stage_table(rows)
    add("stages", "Multiply-adds of the attention modules per stage",
        plots.stage_madds(stages, stage_rows, prefix="stages"),
        "no per-stage counts were saved")
    first = runs[0]
    variants = [r for r in rows if r.variant != BASELINE]
    models = ", ".join(dict.fromkeys(str(r.model) for r in runs))
    names = ", ".join(r.label for r in variants) or "none"
    title = f"Does attention pay for itself in {models} on {first.data}?"
    return {
        "title": title,
        "question": (f"What does each attention module ({names}) cost against the baseline "
                     "without attention (parameters, multiply-adds, latency) and what does it "
                     "buy (top-1 accuracy), with how much confidence?"),
        "data": first.data,
        "runs": runs,
        "multi": len(runs) > 1,
        "verdicts": [verdict(r) for r in variants],
        "one_seed": any_train and one_seed,
        "any_train": any_train,
        "table": table_rows(rows),
        "reference": reference_of(rows),
        "latency_forms": sorted({str(r.agg.latency_form) for r in rows if r.agg.latency_form}),
        "seed_rows": seed_rows(rows),
        "figures": fig,
        "stages": stages,
        "stage_rows": stage_rows,
        "maps": map_figures(runs),
        "runtimes": runtime_tables(runs) if any(r.runtimes for r in runs) else None,
        "provenance": [{"name": r.name, "entries": provenance(r)} for r in runs],
    }


def render_html(runs: list[RunRecords]) -> str:
    return environment().get_template("report.html.j2").render(**build_context(runs))


def render_report(roots: list[str | Path] | str | Path, out: str | Path | None = None) -> Path:
    """Render ``report.html`` from one or more saved run folders; returns its path.

    Several folders are merged into one page; they must use the same data set.
    """
    if isinstance(roots, (str, Path)):
        roots = [roots]
    runs = load_runs(list(roots))
    out = Path(out) if out is not None else runs[0].root / "report.html"
    atomic_write_text(out, render_html(runs))
    return out
