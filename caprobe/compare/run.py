"""Run a comparison: counts, interleaved latency, training per (variant, seed), attention maps,
results and the report; every piece saved atomically as soon as it is finished.

Order of work (so that a crash keeps the most useful part):

1. ``plan.json`` and ``provenance.json``;
2. counts of every variant (``variants/<v>/counts.json``);
3. latency of every variant, timed interleaved in one session (``variants/<v>/latency.json``);
4. training, seed-major (every variant of seed 0, then of seed 1, ...);
5. attention maps from the first finished checkpoint of each variant;
6. ``results.csv`` / ``results.json`` and ``report.html``.

``resume=True`` skips every finished piece (a failed or diverged piece is finished: it is
recorded, not retried) and resumes an interrupted training from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from caprobe.compare import maps as _maps
from caprobe.compare.layout import Layout
from caprobe.compare.plan import (
    BASELINE,
    CompareOptions,
    Plan,
    load_plan,
    merge_for_resume,
    validate,
)
from caprobe.compare.results import piece_done, piece_state, write_results
from caprobe.errors import CaprobeError
from caprobe.io import read_json, to_jsonable, write_json
from caprobe.runtime import torch_threads


@dataclass
class CompareOutcome:
    """What :func:`run_compare` produced: the run folder, its results and file paths."""

    out: Path
    results: dict[str, Any]
    report: Path | None
    results_csv: Path
    results_json: Path
    ran: list[str] = field(default_factory=list)  # pieces computed by this call
    skipped: list[str] = field(default_factory=list)  # pieces found finished on disk


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def default_out() -> Path:
    return Path("runs") / f"compare-{_dt.datetime.now():%Y%m%d-%H%M%S}"


def _error_text(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, CaprobeError) else f"{type(exc).__name__}: {text}"


# --------------------------------------------------------------------------- adapters


def train_config(options: CompareOptions, variant: str, seed: int):
    """The :class:`caprobe.train.TrainConfig` of one piece (unset fields keep their defaults)."""
    from caprobe.train import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {
        "model": options.model, "attn": variant, "width": options.width,
        "profile": options.profile, "data": options.data, "data_dir": options.data_dir,
        "data_options": dict(options.data_options) or None,
        "train_subset": options.train_subset, "epochs": options.epochs, "steps": options.steps,
        "batch_size": options.batch_size, "lr": options.lr, "seed": seed,
        "device": options.device, "threads": options.threads,
    }
    kwargs = {k: v for k, v in given.items() if v is not None and k in names}
    for k, v in (options.train_options or {}).items():
        if k not in names:
            raise CaprobeError(f"unknown training option {k!r}; valid: {', '.join(sorted(names))}")
        kwargs[k] = v
    return TrainConfig(**kwargs)


@dataclass
class _DataInfo:
    name: str
    checksum: str | None
    classes: list[str]
    input_size: tuple[int, int]
    mean: Any
    std: Any
    images: Any  # the fixed test images for the attention maps (uint8 N×3×H×W)
    indices: list[int]
    labels: Any
    image_size: int


def _load_data(options: CompareOptions, config) -> _DataInfo:
    """The data set exactly as training loads it: size, classes, checksum, map images."""
    from caprobe.data import load_dataset

    ds = load_dataset(config.data, data_dir=config.data_dir, cache_dir=config.cache_dir,
                      download=False, **(config.data_options or {}))
    test = ds.test
    images = test.images
    labels = getattr(test, "labels", None)
    idx = _maps.pick_images(labels, options.map_images, len(images))
    hw = tuple(int(v) for v in images.shape[-2:])
    if options.input_size:
        hw = (options.input_size, options.input_size)
    return _DataInfo(name=config.data, checksum=getattr(ds, "checksum", None),
                     classes=list(ds.classes), input_size=hw, mean=ds.mean, std=ds.std,
                     images=images[idx] if idx else images[:0], indices=idx, labels=labels,
                     image_size=int(getattr(ds, "image_size", hw[0])))


def _resolved(options: CompareOptions, data: _DataInfo, variant: str, seed: int):
    """The piece's TrainConfig with recipe defaults filled in (width, profile, ...)."""
    from caprobe.train.config import resolve
    from caprobe.train.loop import resolve_device

    config = train_config(options, variant, seed)
    return resolve(config, image_size=data.image_size,
                   device=resolve_device(config.device, config.amp))


def _build(options: CompareOptions, config, variant: str, num_classes: int):
    import caprobe

    return caprobe.build_model(options.model, attn=variant, width=config.width,
                               num_classes=num_classes, profile=config.profile,
                               seed=options.seed)


# --------------------------------------------------------------------------- progress


class _Progress:
    """One rich display: the plan's overall bar (with ETA) plus the current training's bar."""

    def __init__(self, enabled: bool, total: int, done: int = 0, console=None) -> None:
        self.enabled = enabled
        self.progress = None
        self.task = None
        if enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=console or Console(stderr=True), transient=False,
            )
            # pieces found finished on disk start as completed, so they do not skew the ETA
            self.task = self.progress.add_task("plan", total=total, completed=done)

    def __enter__(self):
        if self.progress is not None:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def say(self, text: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, description=text)

    def advance(self, n: int = 1) -> None:
        if self.progress is not None:
            self.progress.advance(self.task, n)

    def for_train(self):
        return self.progress if self.progress is not None else False


# --------------------------------------------------------------------------- main entry


def run_compare(options: CompareOptions | None = None, out: str | Path | None = None, *,
                resume: bool = False, given: dict[str, Any] | None = None,
                progress: bool = True, console=None, argv: list[str] | None = None,
                report: bool = True) -> CompareOutcome:
    """Run (or resume) a comparison and return its outcome.

    ``options``: what to compare (see :class:`CompareOptions`). ``resume=True`` continues the
    run in ``out``: ``given`` holds the options the user set explicitly (all of ``options``
    when omitted); they must equal ``plan.json``'s, others are taken from it.
    """
    if resume:
        if out is None:
            raise CaprobeError("--resume needs the run folder to continue")
        saved = load_plan(out)
        if given is None:
            given = options.to_dict() if options is not None else {}
        options = merge_for_resume(saved, given)
        plan = Plan(options=validate(options), variants=list(saved["variants"]),
                    seeds=list(saved["seeds"]))
        layout = Layout(out)
    else:
        if options is None:
            raise CaprobeError("no options given; pass CompareOptions(attn=[...])")
        plan = Plan.from_options(options)
        out = Path(out) if out is not None else default_out()
        layout = Layout(out)
        if layout.plan.exists():
            raise CaprobeError(f"{out} already holds a comparison; continue it with --resume "
                               f"{out} or pass another --out")
        if out.exists() and any(out.iterdir()):
            raise CaprobeError(f"{out} exists and is not empty; pass a new or empty --out")
        plan.save(layout)
    return _execute(plan, layout, progress=progress, console=console,
                    argv=argv if argv is not None else list(sys.argv), report=report)


def _session_start(layout: Layout, argv: list[str], resume: bool) -> dict[str, Any]:
    prov = {}
    if layout.provenance.exists():
        try:
            prov = read_json(layout.provenance)
        except (OSError, ValueError):
            prov = {}
    prov.setdefault("sessions", [])
    prov["sessions"].append({"argv": argv, "cwd": os.getcwd(), "started_at": _now(),
                             "finished_at": None, "resumed": resume})
    prov.setdefault("started_at", prov["sessions"][0]["started_at"])
    prov["finished_at"] = None
    write_json(layout.provenance, prov)
    return prov


def _execute(plan: Plan, layout: Layout, *, progress: bool, console, argv: list[str],
             report: bool) -> CompareOutcome:
    options = plan.options
    prov = _session_start(layout, argv, resume=len(_read_sessions(layout)) > 1)
    ran: list[str] = []
    skipped: list[str] = []
    data = _load_data(options, train_config(options, BASELINE, plan.seeds[0]))
    config0 = _resolved(options, data, BASELINE, plan.seeds[0])
    env = _collect_env(options)
    prov.update(data=data.name, data_checksum=data.checksum, env=env,
                input_size=list(data.input_size), num_classes=len(data.classes),
                profile=config0.profile, width=config0.width)
    write_json(layout.provenance, prov)

    pieces = plan.pieces if options.train else []
    # the overall bar counts variant x seed trainings (variants with --no-train); counts,
    # latency and maps show in its description
    if pieces:
        total, done = len(pieces), sum(piece_done(layout, v, s) for v, s in pieces)
    else:
        total = len(plan.variants)
        done = sum(layout.counts(v).exists() for v in plan.variants)
    with torch_threads(options.threads), _Progress(progress, total, done, console) as bar:
        # 1. counts
        for variant in plan.variants:
            bar.say(f"counting {variant}")
            if layout.counts(variant).exists():
                skipped.append(f"counts:{variant}")
            else:
                _do_counts(options, config0, data, layout, variant)
                ran.append(f"counts:{variant}")
                if not pieces:
                    bar.advance()
        # 2. latency (interleaved over all variants, one piece)
        bar.say("timing latency (interleaved)")
        if all(layout.latency(v).exists() for v in plan.variants):
            skipped.append("latency")
        else:
            _do_latency(options, config0, data, layout, plan.variants)
            ran.append("latency")
        # 3. training, seed-major
        for i, (variant, seed) in enumerate(pieces, 1):
            bar.say(f"training {variant} seed {seed} ({i}/{len(pieces)})")
            if piece_done(layout, variant, seed):
                skipped.append(f"train:{variant}:{seed}")
            else:
                _do_train(options, layout, variant, seed, bar)
                ran.append(f"train:{variant}:{seed}")
                bar.advance()
        # 4. attention maps
        if options.train:
            bar.say("attention maps")
            if layout.maps.exists():
                skipped.append("maps")
            else:
                _do_maps(options, config0, data, layout, plan)
                ran.append("maps")
        bar.say("done")

    results = write_results(layout.root)
    prov = read_json(layout.provenance)
    prov["sessions"][-1]["finished_at"] = prov["finished_at"] = _now()
    prov["sessions"][-1]["ran"] = ran
    write_json(layout.provenance, prov)
    report_path = None
    if report and not ran and layout.report.is_file():
        report_path = layout.report  # nothing new: the saved report is current
    elif report:
        from caprobe.report import render_report

        report_path = render_report([layout.root], layout.report)
    return CompareOutcome(out=layout.root, results=results, report=report_path,
                          results_csv=layout.results_csv, results_json=layout.results_json,
                          ran=ran, skipped=skipped)


def _read_sessions(layout: Layout) -> list:
    try:
        return read_json(layout.provenance).get("sessions", [])
    except (OSError, ValueError):
        return []


def _collect_env(options: CompareOptions) -> dict[str, Any]:
    try:
        from caprobe.measure.environment import collect_env
        from caprobe.measure.latency import resolve_device

        return collect_env(resolve_device(options.latency_device), threads=options.threads)
    except CaprobeError:
        raise
    except Exception as exc:  # noqa: BLE001 - provenance must never stop a run
        return {"error": _error_text(exc)}


def _failure(variant: str, exc: BaseException) -> dict[str, Any]:
    return {"variant": variant, "status": "failed", "error": _error_text(exc),
            "traceback": traceback.format_exc(limit=6)}


def _do_counts(options, config, data: _DataInfo, layout: Layout, variant: str) -> None:
    import caprobe

    try:
        model = _build(options, config, variant, len(data.classes))
        counts = caprobe.count(model, data.input_size)
        record = {"variant": variant, **to_jsonable(counts), "input_size": list(data.input_size)}
    except Exception as exc:  # noqa: BLE001 - a failing variant is recorded, the rest go on
        record = _failure(variant, exc)
    write_json(layout.counts(variant), record)


def _do_latency(options, config, data: _DataInfo, layout: Layout, variants: list[str]) -> None:
    from caprobe.measure.latency import time_variants

    models, failed = {}, {}
    for variant in variants:
        try:
            models[variant] = _build(options, config, variant, len(data.classes))
        except Exception as exc:  # noqa: BLE001
            failed[variant] = _failure(variant, exc)
    try:
        if models:
            meta = {v: {"model": options.model, "attn": v} for v in models}
            results = time_variants(models, batch=options.latency_batch,
                                    input_size=data.input_size, device=options.latency_device,
                                    threads=options.threads, min_time=options.latency_min_time,
                                    baseline=BASELINE, meta=meta)
        else:
            results = []
    except Exception as exc:  # noqa: BLE001
        for variant in models:
            failed[variant] = _failure(variant, exc)
        results = []
    for res in results:
        write_json(layout.latency(res.label), {"variant": res.label, **to_jsonable(res)})
    for variant, record in failed.items():
        write_json(layout.latency(variant), record)


def _do_train(options, layout: Layout, variant: str, seed: int, bar: _Progress) -> None:
    from caprobe.train import train

    run_dir = layout.run_dir(variant, seed)
    state = piece_state(layout, variant, seed)
    resume = state["status"] in ("partial", "interrupted")
    try:
        config = train_config(options, variant, seed)
        train(config, out=run_dir, resume=resume, progress=bar.for_train())
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - recorded; the other pieces go on
        if not (run_dir / "result.json").exists():
            write_json(layout.error(variant, seed), {**_failure(variant, exc), "seed": seed})


def _load_trained(layout: Layout, variant: str, seed: int):
    """The model of a finished run, from its checkpoint."""
    from caprobe.train import load_model

    return load_model(layout.run_dir(variant, seed))


def _do_maps(options, config, data: _DataInfo, layout: Layout, plan: Plan) -> None:
    record: dict[str, Any] = {
        "schema": 1, "data": data.name,
        "images": _maps.images_record(data.images, data.indices, data.labels, data.classes),
        "variants": {},
    }
    for variant in plan.variants:
        if variant == BASELINE:
            continue
        seed = next((s for s in plan.seeds
                     if piece_state(layout, variant, s)["status"] == "finished"), None)
        if seed is None:
            record["variants"][variant] = {"error": "no finished training to draw maps from"}
            continue
        try:
            model = _load_trained(layout, variant, seed)
            blocks = _maps.compute_maps(model, data.images, data.mean, data.std)
            record["variants"][variant] = {"seed": seed, "blocks": blocks}
        except Exception as exc:  # noqa: BLE001
            record["variants"][variant] = {"error": _error_text(exc)}
    write_json(layout.maps, record)
