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
from typing import Any

from caprobe.errors import CaprobeError
from caprobe.io import atomic_write_text, read_json, read_jsonl, write_json
from caprobe.runtime import torch_threads
from caprobe.stats import chance_top1, did_learn
from caprobe.train.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from caprobe.train.config import TrainConfig, differences, resolve, validate

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
        return {f.name: _finite(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunResult:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})


def _finite(value: Any) -> Any:
    """NaN / inf → None so every record is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _stream_seed(seed: int, purpose: str) -> int:
    return zlib.crc32(f"caprobe-train:{seed}:{purpose}".encode())


def _data_api():
    """The data layer (a function so tests can substitute a tiny stand-in)."""
    import caprobe.data as data

    return data


# --------------------------------------------------------------------------- device


def resolve_device(device: str, amp: str | None) -> str:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CaprobeError("--device cuda was asked for but no CUDA GPU is available; use "
                           "--device cpu or auto")
    if amp == "fp16" and not device.startswith("cuda"):
        raise CaprobeError("--amp fp16 needs a CUDA device; on CPU use --amp bf16 or leave "
                           "--amp off")
    return device


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
    accuracy (percent) of ``model`` on uint8 ``images``."""
    import torch
    import torch.nn.functional as F

    to_input = to_input or _data_api().to_input
    was_training = model.training
    model.eval()
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
    model.train(was_training)
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
    text = "".join(json.dumps(_finite(r)) + "\n" for r in rows)
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
          progress: Any = None,
          on_epoch: Callable[[dict[str, Any]], None] | None = None,
          on_start: Callable[[TrainConfig], None] | None = None) -> RunResult:
    """Train one model as ``config`` says; write the run folder ``out`` (if given).

    ``resume``: continue the run in ``out`` from its last checkpoint (a missing or empty
    ``out`` starts afresh); the saved config must equal ``config`` once resolved.
    ``progress``: None → own bar when stderr is a terminal, False → silent, a
    ``rich.progress.Progress`` → a task on it, removed when done. ``on_epoch(row)`` is called
    after each epoch's checkpoint with that epoch's metrics row; ``on_start(resolved_config)``
    once everything is checked, before the first step.

    Returns the :class:`RunResult` (status finished / diverged / failed). Ctrl-C saves the
    status "interrupted" (the last epoch's checkpoint stays valid) and re-raises.
    User mistakes (bad names, sizes, a conflicting resume) raise :class:`CaprobeError`
    before anything is written.
    """
    import torch

    config = validate(dataclasses.replace(config))
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
        elif resume and run_dir.is_dir() and any(run_dir.iterdir()):
            raise CaprobeError(f"{run_dir} is not a caprobe training run (no {CONFIG_FILE}); "
                               "nothing to resume")

    device = resolve_device(config.device, config.amp)
    data_api = _data_api()
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
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        if saved_config is None:
            write_json(run_dir / CONFIG_FILE, cfg.to_dict())

    if on_start is not None:
        on_start(cfg)
    fork_devices = [torch.device(device).index or 0] if device.startswith("cuda") else []
    with torch_threads(cfg.threads), torch.random.fork_rng(devices=fork_devices):
        return _run(cfg, model, dataset, data_api, device, run_dir, state, progress, on_epoch)


def _run(cfg: TrainConfig, model, dataset, data_api, device: str, run_dir: Path | None,
         state: dict | None, progress: Any, on_epoch) -> RunResult:
    import torch

    from caprobe.train.display import Bar
    from caprobe.train.optim import build_optimizer

    cuda = device.startswith("cuda")
    threads = torch.get_num_threads()
    env = _environment(device, threads)
    env["data_source"] = getattr(dataset, "source", None)

    # --- data: a class-balanced subset (seeded), kept in memory as uint8
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
    n_epochs = math.ceil(total_steps / steps_per_epoch)
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    test_images, test_labels = dataset.test.images, dataset.test.labels
    resident = cuda and _fits_on_gpu(train_images, test_images, device)
    if resident:  # uint8 sets live on the GPU: indexing and augmentation run there too
        train_images, train_labels = train_images.to(device), train_labels.to(device)
        test_images, test_labels = test_images.to(device), test_labels.to(device)
    mean, std = dataset.mean, dataset.std
    policy = dataset.augment
    classes = list(dataset.classes)
    num_classes = len(classes)

    # --- model, optimiser, RNG streams
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer, scheduler = build_optimizer(
        model, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay, total_steps=total_steps, warmup_steps=warmup_steps)
    scaler = torch.amp.GradScaler("cuda") if cfg.amp == "fp16" else None
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    g_order = torch.Generator().manual_seed(_stream_seed(cfg.seed, "order"))
    g_aug = torch.Generator().manual_seed(_stream_seed(cfg.seed, "augment"))
    torch.manual_seed(_stream_seed(cfg.seed, "dropout"))  # inside fork_rng: caller unaffected

    epoch, step = 0, 0
    rows: list[dict] = []
    wall_before, train_time, data_time, images_seen = 0.0, 0.0, 0.0, 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
        rng = state["rng"]
        g_order.set_state(rng["order"])
        g_aug.set_state(rng["augment"])
        torch.set_rng_state(rng["torch"])
        if cuda and rng.get("cuda") is not None:
            torch.cuda.set_rng_state(rng["cuda"], torch.device(device))
        epoch, step = int(state["epoch"]), int(state["step"])
        rows = list(state["metrics"])
        wall_before = float(state["wall_time_s"])
        train_time = float(state["train_time_s"])
        data_time = float(state["data_time_s"])
        images_seen = int(state["images_seen"])
    if state is not None and step >= total_steps and run_dir is not None:
        try:  # resuming a run that already finished: nothing to train, keep its record
            done = RunResult.from_dict(read_json(run_dir / RESULT_FILE))
            if done.status == "finished":
                return done
        except (OSError, json.JSONDecodeError, TypeError):
            pass
    if run_dir is not None:
        _write_metrics(run_dir, rows)  # drop rows of epochs after the checkpoint

    last_eval: dict[str, Any] = {}
    if rows:
        last_eval = {k: rows[-1].get(k) for k in ("test_loss", "test_top1", "test_top5")}
    started = time.perf_counter()

    def result(status: str, error: str | None = None, train_loss=None, train_acc=None,
               per_class=None) -> RunResult:
        top1 = last_eval.get("test_top1") if status == "finished" else None
        res = RunResult(
            status=status,
            top1=top1,
            top5=last_eval.get("test_top5") if status == "finished" else None,
            test_loss=last_eval.get("test_loss") if status == "finished" else None,
            train_loss=train_loss if train_loss is not None else
            (rows[-1]["train_loss"] if rows else None),
            train_acc=train_acc if train_acc is not None else
            (rows[-1]["train_acc"] if rows else None),
            per_class_acc=dict(zip(classes, per_class, strict=True)) if per_class else {},
            epochs_done=epoch, steps_done=step,
            wall_time_s=round(wall_before + time.perf_counter() - started, 3),
            images_per_s=round(images_seen / train_time, 2) if train_time > 0 else None,
            data_checksum=dataset.checksum, env=env,
            run_dir=str(run_dir) if run_dir is not None else None, error=error,
            data_wait_share=round(data_time / train_time, 5) if train_time > 0 else None,
            chance_top1=chance_top1(num_classes),
            learned=did_learn(top1, num_classes, [r["train_loss"] for r in rows]),
        )
        if run_dir is not None:
            write_json(run_dir / RESULT_FILE, res.to_dict())
        return res

    label = model.name if hasattr(model, "name") else cfg.model
    bar = Bar(progress, f"{label} s{cfg.seed}", total_steps, step)
    eval_kwargs = dict(num_classes=num_classes, mean=mean, std=std, device=device,
                       batch_size=cfg.eval_batch_size, amp=cfg.amp,
                       channels_last=cfg.channels_last, to_input=data_api.to_input)
    check_every = 1 if not cuda else 25  # a host sync per check: rare on CUDA
    saved = (epoch, step)  # what the checkpoint on disk holds
    try:
        model.train()
        while step < total_steps:
            epoch_start = time.perf_counter()
            order = torch.randperm(n_train, generator=g_order)
            steps_now = min(steps_per_epoch, total_steps - step)
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            correct = torch.zeros((), dtype=torch.int64, device=device)
            seen = 0
            ep_data = 0.0
            for i in range(steps_now):
                t0 = time.perf_counter()
                idx = order[i * batch:(i + 1) * batch]
                if resident:
                    idx = idx.to(device, non_blocking=True)
                x = data_api.augment_batch(train_images[idx], policy=policy, generator=g_aug,
                                           mean=mean, std=std)
                y = train_labels[idx]
                if cuda and not resident:  # pinned staging, copy overlapped with compute
                    x = x.pin_memory().to(device, non_blocking=True)
                    y = y.pin_memory().to(device, non_blocking=True)
                if cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                t1 = time.perf_counter()
                with _autocast(device, cfg.amp):
                    logits = model(x)
                loss = criterion(logits.float(), y)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                lr_used = optimizer.param_groups[0]["lr"]
                scheduler.step()
                step += 1
                seen += int(y.shape[0])
                loss_sum += loss.detach().double() * y.shape[0]
                correct += (logits.detach().argmax(1) == y).sum()
                ep_data += t1 - t0
                if (i + 1) % check_every == 0 or i + 1 == steps_now:
                    running = float(loss_sum) / seen
                    if not math.isfinite(running):
                        raise _Diverged(f"the training loss became {running} at epoch "
                                        f"{epoch + 1} step {step}; lower --lr (was {cfg.lr})")
                    bar.update(step=step, epoch=epoch + 1, epochs=n_epochs, loss=running,
                               acc=100.0 * int(correct) / seen,
                               ips=seen / max(time.perf_counter() - epoch_start, 1e-9))
            if cuda:
                torch.cuda.synchronize()
            ep_train = time.perf_counter() - epoch_start
            train_time += ep_train
            data_time += ep_data
            images_seen += seen
            epoch += 1
            ev = evaluate(model, test_images, test_labels, **eval_kwargs)
            last_eval = ev
            row = {
                "epoch": epoch, "step": step,
                "train_loss": float(loss_sum) / seen, "train_acc": 100.0 * int(correct) / seen,
                "test_loss": ev["test_loss"], "test_top1": ev["test_top1"],
                "test_top5": ev["test_top5"], "lr": lr_used,  # of the epoch's last step
                "epoch_time_s": round(time.perf_counter() - epoch_start, 4),
                "train_time_s": round(ep_train, 4),
                "images_per_s": round(seen / ep_train, 2) if ep_train > 0 else None,
                "data_wait_share": round(ep_data / ep_train, 5) if ep_train > 0 else None,
                "elapsed_s": round(wall_before + time.perf_counter() - started, 3),
            }
            rows.append(row)
            if run_dir is not None:
                save_checkpoint(run_dir / CHECKPOINT, {
                    "epoch": epoch, "step": step, "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "rng": {"order": g_order.get_state(), "augment": g_aug.get_state(),
                            "torch": torch.get_rng_state(),
                            "cuda": torch.cuda.get_rng_state(torch.device(device))
                            if cuda else None},
                    "metrics": _finite(rows),
                    "wall_time_s": wall_before + time.perf_counter() - started,
                    "train_time_s": train_time, "data_time_s": data_time,
                    "images_seen": images_seen, "data_checksum": dataset.checksum,
                    "num_classes": num_classes, "classes": classes,
                })
                _write_metrics(run_dir, rows)
            saved = (epoch, step)
            bar.update(step=step, epoch=epoch, epochs=n_epochs, loss=row["train_loss"],
                       acc=row["train_acc"], ips=row["images_per_s"],
                       test_top1=ev["test_top1"])
            if on_epoch is not None:
                on_epoch(dict(row))
        return result("finished", per_class=last_eval.get("per_class"))
    except _Diverged as exc:
        return result("diverged", error=str(exc), train_loss=float("nan"))
    except KeyboardInterrupt:
        # the checkpoint of the last finished epoch stays; the counters say where it is
        epoch, step = saved
        with contextlib.suppress(Exception):
            result("interrupted", error="interrupted by the user; resume with --resume")
        raise
    except CaprobeError:
        raise
    except Exception as exc:  # noqa: BLE001 - recorded in the run folder, not a traceback
        from caprobe.runtime import is_environmental

        if is_environmental(exc):
            raise  # the machine failed (full disk, no memory): no result; the caller says so
        if run_dir is not None:
            with contextlib.suppress(Exception):
                atomic_write_text(run_dir / ERROR_FILE, traceback.format_exc())
        return result("failed", error=f"{type(exc).__name__}: {' '.join(str(exc).split())}")
    finally:
        bar.close()
