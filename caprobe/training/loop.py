"""The training loop: :func:`train`, plus :func:`load_run` / :func:`load_model` for readers.

Reproducibility: every random draw comes from a stream of its own, derived from
``config.seed`` and a purpose name: initialisation (``build_model(seed=...)``), the class-
balanced subset, the per-epoch order, the batch augmentation, and dropout (torch's global
generator, forked so the caller's state is untouched). All of them are saved in every
checkpoint, so an interrupted and resumed run ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
import traceback
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from caprobe.errors import CaprobeError
from caprobe.io import atomic_write_text, read_json, read_jsonl, to_jsonable, write_json
from caprobe.runtime import torch_threads
from caprobe.stats import chance_top1, did_learn
from caprobe.training.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from caprobe.training.config import (
    TrainConfig,
    check_batch_split,
    differences,
    resolve,
    validate,
)
from caprobe.training.distributed import IN_TRAINING, JOB_DIR

if TYPE_CHECKING:
    from caprobe.data import Dataset
    from caprobe.training.distributed import Rank

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
RESULT_FILE = "result.json"
ERROR_FILE = "traceback.txt"


@dataclass
class RunResult:
    """The outcome of one training run (``result.json``). Accuracies are percentages."""

    status: str  # "finished" | "diverged" | "failed" | "interrupted"
    top1: float | None = None
    top5: float | None = None  # None when the data set has 5 classes or fewer
    test_loss: float | None = None
    train_loss: float | None = None
    per_class_acc: dict[str, float] = field(default_factory=dict)
    epochs_done: int = 0
    steps_done: int = 0
    wall_time_s: float = 0.0
    images_per_s: float | None = None
    data_checksum: str | None = None
    env: dict[str, Any] = field(default_factory=dict)
    run_dir: str | None = None
    error: str | None = None
    train_acc: float | None = None
    data_wait_share: float | None = None  # share of training-step time spent preparing data
    chance_top1: float | None = None  # top-1 of guessing: 100 / number of classes
    learned: bool | None = None  # caprobe.stats.did_learn; None unless finished

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunResult:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})


def _stream_seed(seed: int, purpose: str) -> int:
    return zlib.crc32(f"caprobe-train:{seed}:{purpose}".encode())


def _data_api():
    """The data layer (a function so tests can substitute a tiny stand-in)."""
    import caprobe.data as data

    return data


# --------------------------------------------------------------------------- device


def training_device(device: str, amp: str | None) -> str:
    """The device a training runs on (:func:`caprobe.runtime.resolve_device`), checked against
    the mixed-precision choice."""
    from caprobe.runtime import resolve_device

    resolved = resolve_device(device)
    if amp == "fp16" and not resolved.startswith("cuda"):
        raise CaprobeError("--amp fp16 needs a CUDA device; on CPU use --amp bf16 or leave "
                           "--amp off")
    return resolved


def _autocast(device: str, amp: str | None):
    import torch

    if amp is None:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=dtype)


def _environment(device: str, threads: int) -> dict[str, Any]:
    try:
        from caprobe.measure.environment import collect_env

        return collect_env(device, threads=threads)
    except Exception:  # noqa: BLE001 - a missing detail never stops a training
        import platform

        import torch

        from caprobe._version import __version__

        return {"caprobe": __version__, "torch": torch.__version__,
                "python": platform.python_version(), "threads": threads, "device": device}


def _fits_on_gpu(train_images, test_images, device: str) -> bool:
    """Whether both uint8 splits fit in a quarter of the GPU's free memory."""
    import torch

    try:
        free, _ = torch.cuda.mem_get_info(torch.device(device))
    except Exception:  # noqa: BLE001
        return False
    need = train_images.numel() + test_images.numel()
    return need < free // 4


# --------------------------------------------------------------------------- evaluation


def evaluate(model, images, labels, *, num_classes: int, mean, std, device: str,
             batch_size: int, amp: str | None = None, channels_last: bool = False,
             to_input: Callable | None = None) -> dict[str, Any]:
    """Loss (plain cross-entropy), top-1, top-5 (more than 5 classes) and per-class
    accuracy (percent) of ``model`` on uint8 ``images``, evaluated in its deployed form
    (:func:`caprobe.deploy`, a copy: the model as it ships, and the faster one); ``model``
    itself is left as it was."""
    import torch
    import torch.nn.functional as F

    from caprobe.deployment import deploy

    to_input = to_input or _data_api().to_input
    with torch.no_grad():
        model = deploy(model)
    n = int(labels.shape[0])
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct1 = torch.zeros((), dtype=torch.int64, device=device)
    correct5 = torch.zeros((), dtype=torch.int64, device=device)
    per_class_correct = torch.zeros(num_classes, dtype=torch.int64, device=device)
    per_class_total = torch.bincount(labels.cpu(), minlength=num_classes)[:num_classes]
    cuda = device.startswith("cuda")
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            x = to_input(images[start:start + batch_size], mean, std)
            y = labels[start:start + batch_size]
            if cuda and x.device.type == "cpu":
                x = x.pin_memory().to(device, non_blocking=True)
            y = y.to(x.device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(device, amp):
                logits = model(x)
            logits = logits.float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
            pred = logits.argmax(1)
            hit = pred == y
            correct1 += hit.sum()
            per_class_correct += torch.bincount(y[hit], minlength=num_classes)[:num_classes]
            if num_classes > 5:
                top5 = logits.topk(5, dim=1).indices
                correct5 += (top5 == y[:, None]).any(1).sum()
    denom = max(n, 1)
    totals = per_class_total.tolist()
    return {
        "test_loss": float(loss_sum) / denom,
        "test_top1": 100.0 * int(correct1) / denom,
        "test_top5": 100.0 * int(correct5) / denom if num_classes > 5 else None,
        "per_class": [100.0 * c / t if t else None
                      for c, t in zip(per_class_correct.tolist(), totals, strict=True)],
    }


# --------------------------------------------------------------------------- records


def _write_metrics(run_dir: Path, rows: list[dict]) -> None:
    text = "".join(json.dumps(to_jsonable(r)) + "\n" for r in rows)
    atomic_write_text(run_dir / METRICS_FILE, text)


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def load_run(run_dir: str | Path) -> tuple[TrainConfig, list[dict], RunResult | None]:
    """``(config, metrics rows, result)`` of a run folder; result None while unfinished."""
    run_dir = Path(run_dir)
    if not is_run_dir(run_dir):
        raise CaprobeError(f"{run_dir} is not a caprobe training run (no {CONFIG_FILE})")
    try:
        config = TrainConfig.from_dict(read_json(run_dir / CONFIG_FILE))
    except (OSError, json.JSONDecodeError, TypeError) as exc:
        raise CaprobeError(f"{run_dir / CONFIG_FILE} is unreadable: {exc}") from exc
    result = None
    if (run_dir / RESULT_FILE).is_file():
        try:
            result = RunResult.from_dict(read_json(run_dir / RESULT_FILE))
        except (OSError, json.JSONDecodeError, TypeError):
            result = None
    return config, read_jsonl(run_dir / METRICS_FILE), result


def load_model(run_dir: str | Path):
    """The model of a run folder with its last checkpoint's weights, in eval mode."""
    from caprobe.models import build_model

    run_dir = Path(run_dir)
    config, _, _ = load_run(run_dir)
    if not (run_dir / CHECKPOINT).is_file():
        raise CaprobeError(f"{run_dir} has no {CHECKPOINT} yet (no epoch finished)")
    state = load_checkpoint(run_dir / CHECKPOINT)
    model = build_model(config.model, attn=config.attn, width=config.width,
                        num_classes=int(state["num_classes"]), profile=config.profile,
                        seed=config.seed, coords=config.coords)
    model.load_state_dict(state["model"])
    return model.eval()


# --------------------------------------------------------------------------- training


class _Diverged(Exception):
    pass


def train(config: TrainConfig, *, out: str | Path | None = None, resume: bool = False,
          progress: Any = None, dataset: Dataset | None = None,
          on_epoch: Callable[[dict[str, Any]], None] | None = None,
          on_start: Callable[[TrainConfig], None] | None = None,
          rank: Rank | None = None) -> RunResult:
    """Train one model as ``config`` says; write the run folder ``out`` (if given).

    ``resume``: continue the run in ``out`` from its last checkpoint (a missing or empty
    ``out`` starts afresh); the saved config must equal ``config`` once resolved.
    ``progress``: None → own bar when stderr is a terminal, False → silent, a
    ``rich.progress.Progress`` → a task on it, removed when done. ``on_epoch(row)`` is called
    after each epoch's checkpoint with that epoch's metrics row; ``on_start(resolved_config)``
    once everything is checked, before the first step. ``dataset``: the data set ``config``
    names, already loaded (a comparison loads it once for all its trainings); None loads it.

    Returns the :class:`RunResult` (status finished / diverged / failed). Ctrl-C saves the
    status "interrupted" (the last epoch's checkpoint stays valid) and re-raises.
    User mistakes (bad names, sizes, a conflicting resume) raise :class:`CaprobeError`
    before anything is written.

    ``config.nproc_per_node > 1``: the training runs as DDP under torchrun
    (:mod:`caprobe.training.distributed`), whose ranks call this function with their
    ``rank``: rank 0 writes, every rank reads.
    """
    import torch

    from caprobe.attention.native import prepare as prepare_kernels
    from caprobe.runtime import keep_freed_memory

    config = validate(dataclasses.replace(config))
    keep_freed_memory()
    run_dir = Path(out).expanduser() if out is not None else None
    saved_config = None
    if run_dir is not None:
        if is_run_dir(run_dir):
            if not resume:
                raise CaprobeError(f"{run_dir} already holds a training run; resume it with "
                                   "--resume or choose another --out")
            try:
                saved_config = read_json(run_dir / CONFIG_FILE)
            except (OSError, json.JSONDecodeError) as exc:
                raise CaprobeError(f"{run_dir / CONFIG_FILE} is unreadable: {exc}") from exc
        elif run_dir.exists() and not run_dir.is_dir():
            raise CaprobeError(f"--out {run_dir} is a file, not a folder")
        elif resume and run_dir.is_dir() and any(p.name != JOB_DIR for p in run_dir.iterdir()):
            # (a DDP launcher's side channel ddp/ alone is no content: a fresh start)
            raise CaprobeError(f"{run_dir} is not a caprobe training run (no {CONFIG_FILE}); "
                               "nothing to resume")
        if saved_config is not None and \
                int(saved_config.get("nproc_per_node", 1)) != config.nproc_per_node:
            # told before any process starts (the full comparison below needs the data set)
            raise CaprobeError(f"cannot resume {run_dir}: it trained over "
                               f"{saved_config.get('nproc_per_node', 1)} process(es), not "
                               f"{config.nproc_per_node} (a DDP run is its own experiment); "
                               "resume with the same --nproc-per-node")

    device = training_device(config.device, config.amp)
    # a first build (about 25 s) before the clock starts, and before DDP ranks would race to it
    prepare_kernels(device)
    if config.nproc_per_node > 1 and rank is None:
        if device.startswith("cuda") and config.nproc_per_node > torch.cuda.device_count():
            raise CaprobeError(f"--nproc-per-node {config.nproc_per_node} needs as many GPUs; "
                               f"this machine has {torch.cuda.device_count()}")
        return _launch(config, run_dir, resume, progress, on_epoch, on_start)
    data_api = _data_api()
    if dataset is None:
        dataset = data_api.load_dataset(config.data, **config.dataset_kwargs())
    cfg = resolve(config, image_size=int(dataset.image_size), device=device)
    if saved_config is not None:
        diffs = differences(saved_config, cfg.to_dict())
        if diffs:
            raise CaprobeError(f"cannot resume {run_dir}: the saved config differs ("
                               + "; ".join(diffs) + "); resume without changing options, or "
                               "start a new run with another --out")
    if cfg.train_subset is not None and cfg.train_subset > len(dataset.train.labels):
        raise CaprobeError(f"--train-subset {cfg.train_subset} is larger than the training "
                           f"split ({len(dataset.train.labels)} images)")
    check_batch_split(cfg.batch_size, cfg.nproc_per_node,
                      cfg.train_subset or len(dataset.train.labels))

    from caprobe.models import build_model

    model = build_model(cfg.model, attn=cfg.attn, width=cfg.width,
                        num_classes=dataset.num_classes, profile=cfg.profile, seed=cfg.seed,
                        coords=cfg.coords)

    state = None
    if run_dir is not None and saved_config is not None and (run_dir / CHECKPOINT).is_file():
        state = load_checkpoint(run_dir / CHECKPOINT)
        if state.get("data_checksum") != dataset.checksum:
            raise CaprobeError(f"cannot resume {run_dir}: the data set changed (checksum "
                               f"{state.get('data_checksum')} → {dataset.checksum})")
    if rank is not None:
        rank.barrier()  # every rank has checked the folder and read its checkpoint
        device = rank.device(device)
        if not rank.is_main:
            run_dir = None  # rank 0 writes every record
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        if saved_config is None:
            write_json(run_dir / CONFIG_FILE, cfg.to_dict())

    if on_start is not None:
        on_start(cfg)
    fork_devices = [torch.device(device).index or 0] if device.startswith("cuda") else []
    threads = cfg.threads if rank is None else None  # a rank's threads are set at its start
    with torch_threads(threads), torch.random.fork_rng(devices=fork_devices):
        return _run(cfg, model, dataset, data_api, device, run_dir, state, progress, on_epoch,
                    rank)


def _launch(config: TrainConfig, run_dir: Path | None, resume: bool, progress: Any,
            on_epoch, on_start) -> RunResult:  # noqa: ANN001
    """``train`` of a DDP config, from outside torchrun: the ranks need a run folder to
    write (a temporary one when ``out`` is None)."""
    import tempfile

    from caprobe.training.distributed import launch

    if run_dir is not None:
        return launch(config, run_dir, resume=resume, progress=progress, on_epoch=on_epoch,
                      on_start=on_start)
    with tempfile.TemporaryDirectory(prefix="caprobe-ddp-") as tmp:
        result = launch(config, Path(tmp), resume=False, progress=progress,
                        on_epoch=on_epoch, on_start=on_start)
    return dataclasses.replace(result, run_dir=None)


@dataclass
class _Training:
    """What one training works with, fixed once set up: the resolved config, the data in
    memory (uint8, on the GPU when it fits), the sizes of the schedule, the model and its
    optimiser, and the seeded random streams."""

    cfg: TrainConfig
    model: Any  # the module itself: evaluated, checkpointed
    net: Any  # what trains: the model, or its DistributedDataParallel wrapper
    rank: Rank | None  # None: a single process
    dataset: Any
    data_api: Any
    device: str
    run_dir: Path | None
    env: dict[str, Any]
    train_images: Any
    train_labels: Any
    test: tuple[Any, Any]  # images, labels: the whole test set (the last epoch's evaluation)
    curve: tuple[Any, Any]  # the slice the epochs before the last evaluate (--curve-subset)
    resident: bool
    batch: int
    steps_per_epoch: int
    total_steps: int
    n_epochs: int
    optimizer: Any
    scheduler: Any
    scaler: Any
    criterion: Any
    g_order: Any
    g_aug: Any
    eval_kwargs: dict[str, Any]

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def classes(self) -> list[str]:
        return list(self.dataset.classes)


@dataclass
class TrainState:
    """Where a training stands. With the model, optimiser, scheduler, scaler and random
    streams of its :class:`_Training` this is what a checkpoint holds: one schema, written by
    :meth:`to_checkpoint` and read by :meth:`from_checkpoint`."""

    epoch: int = 0
    step: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl, one per epoch
    wall_before_s: float = 0.0  # wall time of the sessions before this one
    train_time_s: float = 0.0
    data_time_s: float = 0.0
    images_seen: int = 0
    last_eval: dict[str, Any] = field(default_factory=dict)  # the latest evaluation (not saved)

    def to_checkpoint(self, t: _Training, wall_time_s: float) -> dict[str, Any]:
        import torch

        return {
            "epoch": self.epoch, "step": self.step, "model": t.model.state_dict(),
            "optimizer": t.optimizer.state_dict(), "scheduler": t.scheduler.state_dict(),
            "scaler": t.scaler.state_dict() if t.scaler is not None else None,
            "rng": {"order": t.g_order.get_state(), "augment": t.g_aug.get_state(),
                    "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state(torch.device(t.device)) if t.cuda
                    else None},
            "metrics": to_jsonable(self.rows),
            "wall_time_s": wall_time_s, "train_time_s": self.train_time_s,
            "data_time_s": self.data_time_s, "images_seen": self.images_seen,
            "data_checksum": t.dataset.checksum, "num_classes": len(t.classes),
            "classes": t.classes,
        }

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any], t: _Training) -> TrainState:
        """The state a checkpoint holds; the model, optimiser, scheduler, scaler and random
        streams of ``t`` are restored in place."""
        import torch

        t.model.load_state_dict(saved["model"])
        t.optimizer.load_state_dict(saved["optimizer"])
        t.scheduler.load_state_dict(saved["scheduler"])
        if t.scaler is not None and saved.get("scaler") is not None:
            t.scaler.load_state_dict(saved["scaler"])
        rng = saved["rng"]
        t.g_order.set_state(rng["order"])
        t.g_aug.set_state(rng["augment"])
        torch.set_rng_state(rng["torch"])
        if t.cuda and rng.get("cuda") is not None:
            torch.cuda.set_rng_state(rng["cuda"], torch.device(t.device))
        rows = list(saved["metrics"])
        return cls(epoch=int(saved["epoch"]), step=int(saved["step"]), rows=rows,
                   wall_before_s=float(saved["wall_time_s"]),
                   train_time_s=float(saved["train_time_s"]),
                   data_time_s=float(saved["data_time_s"]),
                   images_seen=int(saved["images_seen"]),
                   last_eval={k: rows[-1].get(k) for k in ("test_loss", "test_top1",
                                                           "test_top5")} if rows else {})


def _setup(cfg: TrainConfig, model, dataset, data_api, device: str,
           run_dir: Path | None, rank: Rank | None) -> _Training:
    """Data (a seeded class-balanced subset, kept in memory as uint8), schedule sizes, the
    model on its device and memory format, optimiser, scaler, loss and random streams."""
    import torch

    from caprobe.training.optim import build_optimizer

    cuda = device.startswith("cuda")
    env = _environment(device, torch.get_num_threads())
    env["data_source"] = getattr(dataset, "source", None)
    env["ddp_processes"] = rank.world_size if rank is not None else 1
    train_images, train_labels = dataset.train.images, dataset.train.labels
    if cfg.train_subset is not None and cfg.train_subset < len(train_labels):
        idx = data_api.balanced_subset(train_labels, cfg.train_subset,
                                       _stream_seed(cfg.seed, "subset"))
        train_images, train_labels = train_images[idx], train_labels[idx]
    n_train = int(train_labels.shape[0])
    if n_train == 0:
        raise CaprobeError(f"the training split of {dataset.name} is empty")
    batch = min(cfg.batch_size, n_train)
    steps_per_epoch = max(1, n_train // batch)  # drop the last partial batch
    total_steps = cfg.steps if cfg.steps is not None else cfg.epochs * steps_per_epoch
    test = (dataset.test.images, dataset.test.labels)
    curve = test
    if cfg.curve_subset is not None and cfg.curve_subset < len(test[1]):
        idx = data_api.balanced_subset(test[1], cfg.curve_subset, _stream_seed(0, "curve"))
        curve = (test[0][idx], test[1][idx])
    resident = cuda and _fits_on_gpu(train_images, test[0], device)
    if resident:  # uint8 sets live on the GPU: indexing and augmentation run there too
        train_images, train_labels = train_images.to(device), train_labels.to(device)
        whole = curve is test
        test = tuple(x.to(device) for x in test)
        curve = test if whole else tuple(x.to(device) for x in curve)

    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer, scheduler = build_optimizer(
        model, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay, total_steps=total_steps,
        warmup_steps=round(cfg.warmup_epochs * steps_per_epoch))
    net = model
    if rank is not None:  # the same seeded init on every rank; DDP checks it
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[torch.device(device).index] if cuda else None)
    g_order = torch.Generator().manual_seed(_stream_seed(cfg.seed, "order"))
    g_aug = torch.Generator().manual_seed(_stream_seed(cfg.seed, "augment"))
    torch.manual_seed(_stream_seed(cfg.seed, "dropout"))  # inside fork_rng: caller unaffected
    return _Training(
        cfg=cfg, model=model, net=net, rank=rank, dataset=dataset, data_api=data_api,
        device=device,
        run_dir=run_dir, env=env, train_images=train_images, train_labels=train_labels,
        test=test, curve=curve, resident=resident, batch=batch,
        steps_per_epoch=steps_per_epoch, total_steps=total_steps,
        n_epochs=math.ceil(total_steps / steps_per_epoch), optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler("cuda") if cfg.amp == "fp16" else None,
        criterion=torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
        g_order=g_order, g_aug=g_aug,
        eval_kwargs=dict(num_classes=len(dataset.classes), mean=dataset.mean, std=dataset.std,
                         device=device, batch_size=cfg.eval_batch_size, amp=cfg.amp,
                         channels_last=cfg.channels_last, to_input=data_api.to_input))


def _train_epoch(t: _Training, state: TrainState, bar) -> dict[str, Any]:  # noqa: ANN001
    """One pass over a fresh permutation (or what is left of the schedule): ``state.step``
    advances per step; the epoch's counters are added to ``state`` at its end. Raises
    :class:`_Diverged` when the running loss stops being finite."""
    import torch

    cfg, device = t.cfg, t.device
    check_every = 1 if not t.cuda else 25  # a host sync per check: rare on CUDA
    epoch_start = time.perf_counter()
    order = torch.randperm(int(t.train_labels.shape[0]), generator=t.g_order)
    steps_now = min(t.steps_per_epoch, t.total_steps - state.step)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen, ep_data, lr_used = 0, 0.0, None
    for i in range(steps_now):
        t0 = time.perf_counter()
        idx = order[i * t.batch:(i + 1) * t.batch]
        if t.resident:
            idx = idx.to(device, non_blocking=True)
        x = t.data_api.augment_batch(t.train_images[idx], policy=t.dataset.augment,
                                     generator=t.g_aug, mean=t.dataset.mean,
                                     std=t.dataset.std)
        y = t.train_labels[idx]
        if t.rank is not None:  # every rank drew the same global batch: take its share
            x, y = t.rank.shard(x), t.rank.shard(y)
        if t.cuda and not t.resident:  # pinned staging, copy overlapped with compute
            x = x.pin_memory().to(device, non_blocking=True)
            y = y.pin_memory().to(device, non_blocking=True)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        t1 = time.perf_counter()
        with _autocast(device, cfg.amp):
            logits = t.net(x)
        loss = t.criterion(logits.float(), y)
        t.optimizer.zero_grad(set_to_none=True)
        if t.scaler is not None:
            t.scaler.scale(loss).backward()
            t.scaler.step(t.optimizer)
            t.scaler.update()
        else:
            loss.backward()
            t.optimizer.step()
        lr_used = t.optimizer.param_groups[0]["lr"]
        t.scheduler.step()
        state.step += 1
        seen += int(y.shape[0])
        loss_sum += loss.detach().double() * y.shape[0]
        correct += (logits.detach().argmax(1) == y).sum()
        ep_data += t1 - t0
        if (i + 1) % check_every == 0 or i + 1 == steps_now:
            total_loss, total_correct, total_seen = _over_ranks(t, loss_sum, correct, seen)
            running = total_loss / total_seen
            if not math.isfinite(running):
                raise _Diverged(f"the training loss became {running} at epoch "
                                f"{state.epoch + 1} step {state.step}; lower --lr (was "
                                f"{cfg.lr})")
            bar.update(step=state.step, epoch=state.epoch + 1, epochs=t.n_epochs, loss=running,
                       acc=100.0 * total_correct / total_seen,
                       ips=total_seen / max(time.perf_counter() - epoch_start, 1e-9))
    if t.cuda:
        torch.cuda.synchronize()
    ep_train = time.perf_counter() - epoch_start
    loss_total, correct_total, seen = _over_ranks(t, loss_sum, correct, seen)
    state.train_time_s += ep_train
    state.data_time_s += ep_data
    state.images_seen += seen
    state.epoch += 1
    return {"start": epoch_start, "train_loss": loss_total / seen,
            "train_acc": 100.0 * correct_total / seen, "lr": lr_used, "seen": seen,
            "train_time_s": ep_train, "data_time_s": ep_data}


def _over_ranks(t: _Training, loss_sum, correct, seen: int) -> tuple[float, int, int]:  # noqa: ANN001
    """``(loss sum, correct, images)`` of the steps so far, over every rank (one all-reduce)."""
    if t.rank is None:
        return float(loss_sum), int(correct), seen
    import torch

    totals = t.rank.sum(torch.stack([loss_sum.double(), correct.double(),
                                     torch.tensor(float(seen), dtype=torch.float64,
                                                  device=loss_sum.device)]))
    loss_total, correct_total, seen_total = totals.tolist()
    return loss_total, round(correct_total), round(seen_total)


def _evaluate_epoch(t: _Training, state: TrainState) -> tuple[dict[str, Any], int]:
    """The epoch's evaluation (the curve slice; the whole test set after the last step),
    kept as ``state.last_eval``; returns it and the number of images evaluated."""
    images, labels = t.test if state.step >= t.total_steps else t.curve
    if t.rank is None or t.rank.is_main:
        state.last_eval = evaluate(t.model, images, labels, **t.eval_kwargs)
    if t.rank is not None:  # rank 0 evaluates, the others wait for its numbers
        state.last_eval = t.rank.from_main(state.last_eval if t.rank.is_main else None)
    return state.last_eval, int(labels.shape[0])


def _epoch_row(state: TrainState, ep: dict[str, Any], ev: dict[str, Any], n_eval: int,
               started: float) -> dict[str, Any]:
    """The epoch's line of ``metrics.jsonl``."""
    ep_train = ep["train_time_s"]
    return {
        "epoch": state.epoch, "step": state.step,
        "train_loss": ep["train_loss"], "train_acc": ep["train_acc"],
        "test_loss": ev["test_loss"], "test_top1": ev["test_top1"],
        "test_top5": ev["test_top5"], "eval_images": n_eval,
        "lr": ep["lr"],  # of the epoch's last step
        "epoch_time_s": round(time.perf_counter() - ep["start"], 4),
        "train_time_s": round(ep_train, 4),
        "images_per_s": round(ep["seen"] / ep_train, 2) if ep_train > 0 else None,
        "data_wait_share": round(ep["data_time_s"] / ep_train, 5) if ep_train > 0 else None,
        "elapsed_s": round(state.wall_before_s + time.perf_counter() - started, 3),
    }


def _result(t: _Training, state: TrainState, started: float, status: str,
            error: str | None = None, train_loss: float | None = None,
            train_acc: float | None = None, per_class=None,  # noqa: ANN001
            write: bool = True) -> RunResult:
    """The run's :class:`RunResult`, also written as ``result.json`` in its folder (unless
    ``write`` is false)."""
    rows, last = state.rows, state.last_eval
    finished = status == "finished"
    top1 = last.get("test_top1") if finished else None
    num_classes = len(t.classes)
    res = RunResult(
        status=status,
        top1=top1,
        top5=last.get("test_top5") if finished else None,
        test_loss=last.get("test_loss") if finished else None,
        train_loss=train_loss if train_loss is not None else
        (rows[-1]["train_loss"] if rows else None),
        train_acc=train_acc if train_acc is not None else
        (rows[-1]["train_acc"] if rows else None),
        per_class_acc=dict(zip(t.classes, per_class, strict=True)) if per_class else {},
        epochs_done=state.epoch, steps_done=state.step,
        wall_time_s=round(state.wall_before_s + time.perf_counter() - started, 3),
        images_per_s=(round(state.images_seen / state.train_time_s, 2)
                      if state.train_time_s > 0 else None),
        data_checksum=t.dataset.checksum, env=t.env,
        run_dir=str(t.run_dir) if t.run_dir is not None else None, error=error,
        data_wait_share=(round(state.data_time_s / state.train_time_s, 5)
                         if state.train_time_s > 0 else None),
        chance_top1=chance_top1(num_classes),
        learned=did_learn(top1, num_classes, [r["train_loss"] for r in rows]),
    )
    if write and t.run_dir is not None:
        write_json(t.run_dir / RESULT_FILE, res.to_dict())
    return res


def _run(cfg: TrainConfig, model, dataset, data_api, device: str, run_dir: Path | None,
         saved: dict | None, progress: Any, on_epoch, rank: Rank | None) -> RunResult:
    from caprobe.training.display import Bar

    t = _setup(cfg, model, dataset, data_api, device, run_dir, rank)
    state = TrainState.from_checkpoint(saved, t) if saved is not None else TrainState()
    if saved is not None and state.step >= t.total_steps and run_dir is not None:
        try:  # resuming a run that already finished: nothing to train, keep its record
            done = RunResult.from_dict(read_json(run_dir / RESULT_FILE))
            if done.status == "finished":
                return done
        except (OSError, json.JSONDecodeError, TypeError):
            pass
    if run_dir is not None:
        _write_metrics(run_dir, state.rows)  # drop rows of epochs after the checkpoint
    started = time.perf_counter()
    label = t.model.name if hasattr(t.model, "name") else cfg.model
    bar = Bar(progress, f"{label} s{cfg.seed}", t.total_steps, state.step)
    checkpointed = (state.epoch, state.step)  # what the checkpoint on disk holds
    try:
        t.model.train()
        while state.step < t.total_steps:
            ep = _train_epoch(t, state, bar)
            ev, n_eval = _evaluate_epoch(t, state)
            row = _epoch_row(state, ep, ev, n_eval, started)
            state.rows.append(row)
            if run_dir is not None:
                wall = state.wall_before_s + time.perf_counter() - started
                save_checkpoint(run_dir / CHECKPOINT, state.to_checkpoint(t, wall))
                _write_metrics(run_dir, state.rows)
            checkpointed = (state.epoch, state.step)
            bar.update(step=state.step, epoch=state.epoch, epochs=t.n_epochs,
                       loss=row["train_loss"], acc=row["train_acc"], ips=row["images_per_s"],
                       test_top1=ev["test_top1"])
            if on_epoch is not None:
                on_epoch(dict(row))
        return _result(t, state, started, "finished", per_class=state.last_eval.get("per_class"))
    except _Diverged as exc:
        return _result(t, state, started, "diverged", error=str(exc), train_loss=float("nan"))
    except KeyboardInterrupt:
        # the checkpoint of the last finished epoch stays; the counters say where it is
        state.epoch, state.step = checkpointed
        with contextlib.suppress(Exception):
            _result(t, state, started, "interrupted",
                    error="interrupted by the user; resume with --resume")
        raise
    except CaprobeError:
        raise
    except Exception as exc:  # noqa: BLE001 - recorded in the run folder, not a traceback
        from caprobe.runtime import is_environmental

        error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        if rank is not None:
            # a DDP rank: the launcher decides (a lost peer leaves the run resumable, an
            # error of this rank's own steps fails it); mark it as a training step's, with
            # the record the run gets if it fails (written by the launcher, not here)
            try:
                record: dict | bool = _result(t, state, started, "failed", error=error,
                                              write=False).to_dict()
            except Exception:  # noqa: BLE001 - the mark matters more than the counters
                record = True
            with contextlib.suppress(AttributeError, TypeError):
                setattr(exc, IN_TRAINING, record)
            raise
        if is_environmental(exc):  # the machine failed (full disk, no memory): no result
            raise
        if run_dir is not None:
            with contextlib.suppress(Exception):
                atomic_write_text(run_dir / ERROR_FILE, traceback.format_exc())
        return _result(t, state, started, "failed", error=error)
    finally:
        bar.close()
