"""Run a comparison: counts, interleaved latency, training per (variant, seed), attention maps
and results; every piece saved atomically as soon as it is finished. (The HTML report is
rendered from the saved folder afterwards: ``caprobe compare`` calls :mod:`caprobe.reporting`.)

Order of work (so that a crash keeps the most useful part):

1. ``plan.json`` and ``provenance.json``;
2. counts of every variant (``variants/<v>/counts.json``);
3. latency of every variant, timed interleaved in one session (``variants/<v>/latency.json``);
   counts and latency run alone on the machine, before any training starts;
4. training, seed-major (every variant of seed 0, then of seed 1, ...): ``jobs`` trainings at
   once in worker processes (:mod:`caprobe.comparison.pool`), or in this process for one job;
5. attention maps from the first finished checkpoint of each variant (one that learned when
   there is one);
6. ``results.csv`` / ``results.json``.

``resume=True`` skips every finished piece (a failed or diverged piece is finished: it is
recorded, not retried) and resumes an interrupted training from its checkpoint.

A failure of the machine (:func:`caprobe.runtime.is_environmental`: a full disk, no memory, a
killed worker) is no result: it stops the plan with one :class:`CaprobeError` naming the cause
and the fix, and the piece it hit is left to retry (its ``error.json`` is marked ``retry``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import functools
import json
import os
import sys
import traceback
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from caprobe.comparison import maps as _maps
from caprobe.comparison import shipped, slurm
from caprobe.comparison.layout import Layout
from caprobe.comparison.plan import (
    BASELINE,
    CompareOptions,
    Plan,
    load_plan,
    merge_for_resume,
    validate,
)
from caprobe.comparison.pool import WorkerDied, WorkerPool
from caprobe.comparison.results import piece_done, piece_state, write_results
from caprobe.errors import CaprobeError
from caprobe.io import read_json, to_jsonable, write_json
from caprobe.measure.environment import usable_cpus
from caprobe.runtime import (
    death_cause,
    environmental_cause,
    failure_line,
    is_environmental,
    sigterm_as_interrupt,
    torch_threads,
)

if TYPE_CHECKING:
    from caprobe.data import Dataset
    from caprobe.training import TrainConfig

#: Trainings at once when --jobs is not given, on a machine with at least 2 cores and more
#: than one training left: two 1-thread processes outrun one 2-thread process on these small
#: models. Measured (2-core AMD EPYC VM, 2026-12-01, the default `caprobe compare --attn se cbam
#: ca`, 12 trainings): --jobs 2 100 s for the whole command, --jobs 1 (2 threads) 171 s; one
#: 2-thread training took about as long as one of two 1-thread ones side by side.
#: (The --jobs help in caprobe/cli/compare.py names this value.)
DEFAULT_JOBS = 2


@dataclass
class CompareOutcome:
    """What :func:`run_compare` produced: the run folder, its results and file paths."""

    out: Path
    results: dict[str, Any]
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


def default_jobs(pieces: int) -> int:
    """``--jobs`` when not given, for ``pieces`` trainings left to run."""
    return max(1, min(DEFAULT_JOBS, usable_cpus(), pieces))


def threads_per_job(jobs: int) -> int:
    """``--threads`` when not given: the cores shared out among the jobs."""
    return max(1, usable_cpus() // jobs)


# --------------------------------------------------------------------------- adapters


@dataclass
class _Data:
    """The comparison's data set, loaded once: the trainings in this process train on it, the
    counts and latency take their input size from it, the maps their fixed test images."""

    dataset: Dataset
    input_size: tuple[int, int]
    indices: list[int]  # the test images drawn in the attention-map section

    @property
    def map_images(self) -> Any:
        return self.dataset.test.images[self.indices]


def _load_data(options: CompareOptions, config: TrainConfig) -> _Data:
    """The data set exactly as training loads it."""
    from caprobe.data import load_dataset

    ds = load_dataset(config.data, **config.dataset_kwargs())
    test = ds.test
    idx = _maps.pick_images(test.labels, options.map_images, len(test.images))
    side = options.input_size
    hw = (side, side) if side else tuple(int(v) for v in test.images.shape[-2:])
    return _Data(dataset=ds, input_size=hw, indices=idx)


def _resolved(options: CompareOptions, data: _Data, variant: str, seed: int):
    """The piece's TrainConfig with recipe defaults filled in (width, profile, ...)."""
    from caprobe.training.config import resolve
    from caprobe.training.loop import training_device

    config = options.piece(variant, seed)
    return resolve(config, image_size=data.dataset.image_size,
                   device=training_device(config.device, config.amp))


def _build(options: CompareOptions, config, variant: str, num_classes: int):
    import caprobe

    return caprobe.build_model(options.training.model, attn=variant, width=config.width,
                               num_classes=num_classes, profile=config.profile,
                               seed=options.training.seed)


# --------------------------------------------------------------------------- progress


class _Progress:
    """One rich display: the plan's overall bar (with ETA) plus a bar per running training."""

    def __init__(self, enabled: bool, total: int, done: int = 0, console=None) -> None:
        self.enabled = enabled
        self.progress = None
        self.task = None
        self.trainings: dict[str, Any] = {}  # piece key -> task of a worker's training
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

    def show(self, key: str, kind: str, fields: dict[str, Any]) -> None:
        """Replay a worker's training-bar call (``add`` / ``update`` / ``remove``)."""
        if kind == "add":
            self.trainings[key] = self.progress.add_task(fields.pop("description"), **fields)
        elif kind == "update":
            self.progress.update(self.trainings[key], **fields)
        else:
            self.progress.remove_task(self.trainings.pop(key))


# --------------------------------------------------------------------------- main entry


def run_compare(options: CompareOptions | None = None, out: str | Path | None = None, *,
                resume: bool = False, given: Collection[str] | None = None,
                progress: bool = True, console=None,
                argv: list[str] | None = None) -> CompareOutcome:
    """Run (or resume) a comparison and return its outcome.

    ``options``: what to compare (see :class:`CompareOptions`). ``resume=True`` continues the
    run in ``out``: ``given`` holds the options the user set explicitly (all of ``options``
    when omitted); they must equal ``plan.json``'s, others are taken from it.
    """
    if resume:
        if out is None:
            raise CaprobeError("--resume needs the run folder to continue")
        saved = load_plan(out)
        options = merge_for_resume(saved, options, given)
        plan = Plan(options=validate(options), variants=list(saved["variants"]),
                    seeds=list(saved["seeds"]), train_threads=saved.get("train_threads"))
        layout = Layout(out)
    else:
        if options is None:
            raise CaprobeError("no options given; pass CompareOptions(attn=[...])")
        plan = Plan.from_options(options)
        out = Path(out) if out is not None else default_out()
        if out.exists() and not out.is_dir():
            raise CaprobeError(f"--out {out} is a file, not a folder; pass a new folder path")
        layout = Layout(out)
        if layout.plan.exists():
            raise CaprobeError(f"{out} already holds a comparison; continue it with --resume "
                               f"{out} or pass another --out")
        if out.exists() and any(out.iterdir()):
            raise CaprobeError(f"{out} exists and is not empty; pass a new or empty --out")
    with _machine_failures(layout), sigterm_as_interrupt():
        if not resume:
            plan.save(layout)
        return _execute(plan, layout, progress=progress, console=console,
                        argv=argv if argv is not None else list(sys.argv))


def _stop_error(cause: str, fix: str, where: str, root: Path) -> CaprobeError:
    """One line for a failure of the machine: what happened where, the fix, how to go on."""
    then = (f"continue with caprobe compare --resume {root}" if Layout(root).plan.is_file()
            else "run the command again")
    return CaprobeError(failure_line(cause, fix, where, then))


@contextlib.contextmanager
def _machine_failures(layout: Layout) -> Iterator[None]:
    """A failure of the machine escaping the block (a record that cannot be written on a full
    disk, no memory) becomes one :class:`CaprobeError`."""
    try:
        yield
    except Exception as exc:
        if not is_environmental(exc):
            raise
        raise _stop_error(*environmental_cause(exc), f"running the comparison in {layout.root}",
                          layout.root) from exc


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


def _execute(plan: Plan, layout: Layout, *, progress: bool, console,
             argv: list[str]) -> CompareOutcome:
    from caprobe.attention.native import prepare as prepare_kernels

    options = plan.options
    prov = _session_start(layout, argv, resume=len(_read_sessions(layout)) > 1)
    ran: list[str] = []
    skipped: list[str] = []
    data = _load_data(options, options.piece(BASELINE, plan.seeds[0]))
    config0 = _resolved(options, data, BASELINE, plan.seeds[0])
    if options.train and any(not piece_done(layout, v, s) for v, s in plan.pieces):
        # built once here (about 25 s the first time on a machine), not beside the latency
        # timing or by racing workers, and before the environment record names them
        prepare_kernels(config0.device)
    env = _collect_env(options)
    prov.update(data=data.dataset.name, data_checksum=data.dataset.checksum, env=env,
                input_size=list(data.input_size), num_classes=data.dataset.num_classes,
                profile=config0.profile, width=config0.width)

    pieces = plan.pieces if options.train else []
    todo = [(v, s) for v, s in pieces if not piece_done(layout, v, s)]
    jobs = options.jobs or default_jobs(len(todo))
    if plan.train_threads is None:  # the first session decides for the whole plan
        plan.train_threads = options.training.threads or threads_per_job(
            options.jobs or default_jobs(len(pieces)))
        plan.save(layout)
    threads = plan.train_threads
    prov["sessions"][-1].update(jobs=jobs, threads_per_job=threads)
    write_json(layout.provenance, prov)
    # the overall bar counts variant x seed trainings (variants with --no-train); counts,
    # latency and maps show in its description
    if pieces:
        total, done = len(pieces), len(pieces) - len(todo)
    else:
        total = len(plan.variants)
        done = sum(layout.counts(v).exists() for v in plan.variants)
    with torch_threads(options.training.threads), _Progress(progress, total, done, console) as bar:
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
        skipped += [f"train:{v}:{s}" for v, s in pieces if (v, s) not in todo]

        def trained(piece: Piece) -> None:
            ran.append(piece.key)
            bar.advance()

        todo_pieces = [_piece(options, layout, v, s, threads) for v, s in todo]
        if options.executor == "slurm" and todo_pieces:
            slurm.run_pieces(todo_pieces, layout, options.slurm, threads, bar.say, trained)
        else:
            live = slurm.live_pieces(layout, todo_pieces) if todo_pieces else []
            if live:  # a piece trained here and on the cluster at once would publish twice
                raise CaprobeError(
                    f"{len(live)} piece(s) of {layout.root} still have queued or running Slurm "
                    f"jobs ({', '.join(live[:3])}); continue with --executor slurm, or cancel "
                    "them (caprobe status shows their job ids)")
            _train(todo_pieces, jobs, threads, bar, data.dataset, trained)
        # 4. attention maps
        if options.train:
            bar.say("attention maps")
            if layout.maps.exists():
                skipped.append("maps")
            else:
                _do_maps(data, layout, plan)
                ran.append("maps")
        # 5. the trained models in the exported runtimes (timed alone: no training is left)
        for runtime in options.runtimes:
            bar.say(f"{runtime}: latency{' and int8 accuracy' if options.int8 else ''}")
            _do_runtime(options, config0, data, layout, plan, runtime, ran, skipped)
        if options.int8:
            bar.say("int8 error of each gate")
            _do_gate_error(data, layout, plan, ran, skipped)
        if options.runtimes:
            write_json(layout.runtimes, shipped.summary(
                layout, plan.variants, plan.seeds, options.runtimes, options.int8))
        bar.say("done")

    results = write_results(layout.root)
    prov = read_json(layout.provenance)
    prov["sessions"][-1]["finished_at"] = prov["finished_at"] = _now()
    prov["sessions"][-1]["ran"] = ran
    write_json(layout.provenance, prov)
    return CompareOutcome(out=layout.root, results=results,
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
        from caprobe.runtime import resolve_device

        return collect_env(resolve_device(options.latency_device or options.training.device),
                           threads=options.training.threads)
    except CaprobeError:
        raise
    except Exception as exc:  # noqa: BLE001 - provenance must never stop a run
        return {"error": _error_text(exc)}


def _recordable(exc: BaseException) -> str:
    """The error text of a failure of the experiment; a failure of the machine is no result:
    it is raised again."""
    if is_environmental(exc):
        raise exc
    return _error_text(exc)


def _failure(variant: str, exc: BaseException) -> dict[str, Any]:
    return {"variant": variant, "status": "failed", "error": _recordable(exc),
            "traceback": traceback.format_exc(limit=6)}


def _do_counts(options, config, data: _Data, layout: Layout, variant: str) -> None:
    import caprobe

    try:
        model = _build(options, config, variant, data.dataset.num_classes)
        counts = caprobe.count(model, data.input_size)
        record = {"variant": variant, **to_jsonable(counts), "input_size": list(data.input_size)}
    except Exception as exc:  # noqa: BLE001 - a failing variant is recorded, the rest go on
        record = _failure(variant, exc)
    write_json(layout.counts(variant), record)


def _do_latency(options, config, data: _Data, layout: Layout, variants: list[str]) -> None:
    from caprobe.measure.latency import time_variants

    models, failed = {}, {}
    for variant in variants:
        try:
            models[variant] = _build(options, config, variant, data.dataset.num_classes)
        except Exception as exc:  # noqa: BLE001
            failed[variant] = _failure(variant, exc)
    try:
        if models:
            meta = {v: {"model": options.training.model, "attn": v} for v in models}
            results = time_variants(models, batch=options.latency_batch,
                                    input_size=data.input_size,
                                    device=options.latency_device or options.training.device,
                                    threads=options.training.threads,
                                    min_time=options.latency_min_time,
                                    form=options.latency_form, baseline=BASELINE, meta=meta)
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


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class Piece:
    """One training to run, with everything a worker process needs."""

    variant: str
    seed: int
    config: TrainConfig  # threads included
    root: Path  # the comparison's run folder
    resume: bool  # continue the training saved in its run folder

    @property
    def key(self) -> str:
        return f"train:{self.variant}:{self.seed}"

    @property
    def run_dir(self) -> Path:
        return Layout(self.root).run_dir(self.variant, self.seed)

    @property
    def where(self) -> str:
        return f"training {self.variant} seed {self.seed} ({self.run_dir})"


def _piece(options: CompareOptions, layout: Layout, variant: str, seed: int,
           threads: int) -> Piece:
    """A training continued from its folder keeps the thread count it began with (its result
    may depend on it; plans older than ``train_threads`` could differ); a new one gets the
    plan's ``threads``."""
    from caprobe.training.loop import CONFIG_FILE, is_run_dir

    run_dir = layout.run_dir(variant, seed)
    resume = is_run_dir(run_dir)
    if resume:
        threads = read_json(run_dir / CONFIG_FILE).get("threads")
    config = dataclasses.replace(options.piece(variant, seed), threads=threads)
    return Piece(variant, seed, config, layout.root, resume)


def _retry_later(piece: Piece, error: CaprobeError, cause: BaseException) -> CaprobeError:
    """Mark a piece the machine failed as one to retry (best effort: the disk may be full)."""
    note = {"variant": piece.variant, "seed": piece.seed, "status": "failed", "retry": True,
            "error": str(error),
            "traceback": "".join(traceback.format_exception(cause, limit=6))}
    with contextlib.suppress(OSError, MemoryError):
        write_json(Layout(piece.root).error(piece.variant, piece.seed), note)
    return error


def train_piece(piece: Piece, progress: Any, dataset: Dataset | None = None) -> None:
    """Train one piece on ``dataset`` (None: this worker's copy, loaded by its first piece).
    An outcome of the experiment (finished, diverged, a config that cannot be built) is
    recorded in its folder; a failure of the machine leaves the piece to retry and raises a
    :class:`CaprobeError` naming the cause and the fix."""
    from caprobe.training import train

    error = Layout(piece.root).error(piece.variant, piece.seed)
    error.unlink(missing_ok=True)  # the retry note of an earlier session
    try:
        if dataset is None:
            dataset = _worker_dataset(piece.config)
        train(piece.config, out=piece.run_dir, resume=piece.resume, progress=progress,
              dataset=dataset)
    except Exception as exc:  # noqa: BLE001 - recorded; the other pieces go on
        if is_environmental(exc):
            error = _stop_error(*environmental_cause(exc), piece.where, piece.root)
            raise _retry_later(piece, error, exc) from exc
        if not (piece.run_dir / "result.json").exists():
            write_json(error, {**_failure(piece.variant, exc), "seed": piece.seed})


def _killed(exc: WorkerDied, pieces: dict[str, Piece], root: Path) -> CaprobeError:
    """The error for workers that died; each piece they were training is left to retry."""
    dead = [(pieces[key], code) for key, code in exc.deaths if key in pieces]
    code = dead[0][1] if dead else next((c for _, c in exc.deaths), None)
    cause, fix = death_cause(code)
    error = _stop_error(cause, fix, dead[0][0].where if dead else f"training in {root}", root)
    for piece, _ in dead:
        _retry_later(piece, error, exc)
    return error


@functools.cache
def _load_once(name: str, kwargs: str) -> Dataset:
    from caprobe.data import load_dataset

    return load_dataset(name, **json.loads(kwargs))


def _worker_dataset(config: TrainConfig) -> Dataset:
    """A worker process's data set: every piece of a plan has the same, loaded once."""
    return _load_once(config.data, json.dumps(config.dataset_kwargs(), sort_keys=True))


def _train(todo: list[Piece], jobs: int, threads: int, bar: _Progress, dataset: Dataset,
           trained: Callable[[Piece], None]) -> None:
    """Train ``todo`` in this order: here on ``dataset`` when one job runs at a time, else in
    ``jobs`` worker processes of ``threads`` torch threads each; ``trained(piece)`` after
    each."""
    if min(jobs, len(todo)) <= 1:
        for i, piece in enumerate(todo, 1):
            bar.say(f"training {piece.variant} seed {piece.seed} ({i}/{len(todo)})")
            train_piece(piece, bar.for_train(), dataset)
            trained(piece)
        return
    bar.say(f"training, {jobs} at a time")
    pieces = {piece.key: piece for piece in todo}
    with WorkerPool(min(jobs, len(todo)), threads, bar.show if bar.enabled else None) as pool:
        try:
            for key in pool.run(train_piece, list(pieces.items())):
                trained(pieces[key])
        except WorkerDied as exc:
            raise _killed(exc, pieces, todo[0].root) from exc


def _load_trained(layout: Layout, variant: str, seed: int):
    """The model of a finished run, from its checkpoint."""
    from caprobe.training import load_model

    return load_model(layout.run_dir(variant, seed))


def _drawing_seed(layout: Layout, variant: str, seeds: list[int]) -> int | None:
    """The seed whose trained model stands for ``variant`` (its maps, its runtime latency):
    the first that learned, else the first finished, else None."""
    states = {s: piece_state(layout, variant, s) for s in seeds}
    finished = [s for s in seeds if states[s]["status"] == "finished"]
    learned = [s for s in finished if states[s]["result"].get("learned") is not False]
    return (learned or finished or [None])[0]


def _do_runtime(options: CompareOptions, config: TrainConfig, data: _Data, layout: Layout,
                plan: Plan, runtime: str, ran: list[str], skipped: list[str]) -> None:
    """Step 5 for one runtime (see :mod:`caprobe.comparison.shipped`)."""
    import torch

    for int8 in (False, True) if options.int8 else (False,):
        key = f"latency:{runtime}{'-int8' if int8 else ''}"
        if all(layout.runtime_latency(v, runtime, int8).is_file() for v in plan.variants):
            skipped.append(key)
            continue
        models, failed = {}, {}
        for variant in plan.variants:
            seed = _drawing_seed(layout, variant, plan.seeds) if options.train else None
            try:
                models[variant] = (_load_trained(layout, variant, seed) if seed is not None
                                   else _build(options, config, variant,
                                               data.dataset.num_classes))
            except Exception as exc:  # noqa: BLE001
                failed[variant] = _failure(variant, exc)
        shipped.time_in_runtime(
            models, layout, runtime=runtime, int8=int8, input_size=data.input_size,
            batch=options.latency_batch, threads=options.training.threads,
            min_time=options.latency_min_time, failure=_failure,
            meta={v: {"model": options.training.model, "attn": v} for v in models})
        for variant, record in failed.items():
            write_json(layout.runtime_latency(variant, runtime, int8), record)
        ran.append(key)
    if not options.int8:
        return
    calibration = shipped.calibration_batches(data.dataset)
    threads = options.training.threads or torch.get_num_threads()
    for variant in plan.variants:
        for seed in plan.seeds:
            path = layout.int8(variant, seed, runtime)
            state = piece_state(layout, variant, seed)
            if path.is_file() or state["status"] != "finished":
                continue
            try:
                record = shipped.int8_record(
                    _load_trained(layout, variant, seed), data.dataset, runtime=runtime,
                    threads=threads, calibration=calibration,
                    fp32_top1=state["result"].get("top1"),
                    learned=state["result"].get("learned"))
            except Exception as exc:  # noqa: BLE001 - recorded, the others go on
                record = {**_failure(variant, exc), "runtime": runtime}
            write_json(path, {"variant": variant, "seed": seed, **record})
            ran.append(f"int8:{runtime}:{variant}:{seed}")


def _do_gate_error(data: _Data, layout: Layout, plan: Plan, ran: list[str],
                   skipped: list[str]) -> None:
    """Each attention variant's per-gate int8 error, from its drawing seed's model."""
    calibration = shipped.calibration_batches(data.dataset)
    for variant in plan.variants:
        path = layout.gate_error(variant)
        seed = _drawing_seed(layout, variant, plan.seeds)
        if variant == BASELINE or seed is None:
            continue
        if path.is_file():
            skipped.append(f"gates:{variant}")
            continue
        try:
            record = {"variant": variant, "seed": seed, **shipped.gate_record(
                _load_trained(layout, variant, seed), data.dataset, calibration)}
        except Exception as exc:  # noqa: BLE001 - recorded (a missing extra included)
            record = _failure(variant, exc)
        write_json(path, record)
        ran.append(f"gates:{variant}")


def _do_maps(data: _Data, layout: Layout, plan: Plan) -> None:
    record: dict[str, Any] = {
        "schema": 1, "data": data.dataset.name,
        "images": _maps.images_record(data.map_images, data.indices, data.dataset.test.labels,
                                      data.dataset.classes),
        "variants": {},
    }
    for variant in plan.variants:
        if variant == BASELINE:
            continue
        seed = _drawing_seed(layout, variant, plan.seeds)
        if seed is None:
            record["variants"][variant] = {"error": "no finished training to draw maps from"}
            continue
        try:
            model = _load_trained(layout, variant, seed)
            blocks = _maps.compute_maps(model, data.map_images, data.dataset.mean,
                                        data.dataset.std)
            record["variants"][variant] = {"seed": seed, "blocks": blocks}
        except Exception as exc:  # noqa: BLE001
            record["variants"][variant] = {"error": _recordable(exc)}
    write_json(layout.maps, record)
