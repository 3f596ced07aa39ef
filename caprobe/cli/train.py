"""``caprobe train``: one training run with a progress bar, a run folder and a one-line summary.

Thin over :func:`caprobe.training.train`; torch is imported inside the command body only.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from caprobe.cli.app import app
from caprobe.cli.options import parse_key_values
from caprobe.errors import CaprobeError
from caprobe.formatting import fmt_number

_PANEL_DATA = "Data"
_PANEL_RECIPE = "Recipe"
_PANEL_RUN = "Run"


_T = TypeVar("_T")


def _given(value: _T | None, current: _T) -> _T:
    """An option's value where it was given (not None), else ``current``: the default of a
    fresh run, the saved value of a resumed one."""
    return current if value is None else value


def _default_out(model: str, attn: str | None) -> Path:
    name = model if not attn else f"{model}-{attn.replace(':', '_').replace(',', '_')}"
    return Path("runs") / f"train-{name}-{_dt.datetime.now():%Y%m%d-%H%M%S}"


def _fmt(value: float | None, digits: int = 1, unit: str = "") -> str:
    return fmt_number(value, f".{digits}f", missing="-", unit=unit)


def summary_line(result, label: str) -> str:
    """``<label>: finished, top-1 81.2% (top-5 -), test loss 0.61, 4 epochs / 188 steps in
    41.0 s, 312 img/s, data wait 0.8% → runs/x``; a run that did not learn says so after its
    test loss (``warning: did not learn (top-1 at chance: 25.0% by guessing)``)."""
    from caprobe.stats import at_chance

    parts = [f"{label}: {result.status}"]
    if result.status == "finished":
        top = f"top-1 {_fmt(result.top1, 2, '%')}"
        if result.top5 is not None:
            top += f", top-5 {_fmt(result.top5, 2, '%')}"
        parts.append(top)
        parts.append(f"test loss {_fmt(result.test_loss, 3)}")
        if result.learned is False:
            why = (f"top-1 at chance: {result.chance_top1:.1f}% by guessing"
                   if at_chance(result.top1, result.chance_top1)
                   else "training loss did not fall")
            parts.append(f"warning: did not learn ({why})")
    parts.append(f"{result.epochs_done} epochs / {result.steps_done} steps in "
                 f"{result.wall_time_s:.1f} s")
    if result.images_per_s:
        parts.append(f"{result.images_per_s:.0f} img/s")
    if result.data_wait_share is not None:
        parts.append(f"data wait {100 * result.data_wait_share:.1f}%")
    text = ", ".join(parts)
    if result.error and result.status != "finished":
        text += f" ({' '.join(result.error.split())})"
    if result.run_dir:
        text += f" → {result.run_dir}"
    return text


@app.command("train")
def train_command(
    model: Annotated[str | None, typer.Option("--model", "-m", help="Backbone or shorthand "
                     "(mobilenetv2, mobilenext, mobilenetv2_ca, ...). (default: mobilenetv2)",
                     show_default=False)] = None,
    attn: Annotated[str | None, typer.Option("--attn", "-a", help="Attention spec (se, cbam, "
                    "eca, ca, ca:act=relu, ...); overrides the model's shorthand.")] = None,
    width: Annotated[float | None, typer.Option(help="Width multiplier. (default: per data "
                     "set, e.g. 0.35 positional, 0.5 CIFAR)", show_default=False)] = None,
    profile: Annotated[str | None, typer.Option(help="imagenet or cifar. (default: cifar for "
                       "images ≤ 64 px)", show_default=False)] = None,
    data: Annotated[str | None, typer.Option("--data", "-d", help="positional, cifar10, "
                    "cifar100 or imagenette. (default: positional)", show_default=False,
                    rich_help_panel=_PANEL_DATA)] = None,
    data_dir: Annotated[str | None, typer.Option(help="Where the data set lies.",
                        rich_help_panel=_PANEL_DATA)] = None,
    cache_dir: Annotated[str | None, typer.Option(help="Where decoded tensors are cached.",
                         rich_help_panel=_PANEL_DATA)] = None,
    data_option: Annotated[list[str] | None, typer.Option(
        "--data-option", help="KEY=VALUE for the data set (repeatable), e.g. difficulty=0.7.",
        rich_help_panel=_PANEL_DATA)] = None,
    image_size: Annotated[int | None, typer.Option(help="Image size of the data set (resized "
                          "once). (default: its own, imagenette 128)", show_default=False,
                          rich_help_panel=_PANEL_DATA)] = None,
    train_subset: Annotated[int | None, typer.Option(help="Class-balanced, seeded subset of "
                            "N training images.", rich_help_panel=_PANEL_DATA)] = None,
    curve_subset: Annotated[int | None, typer.Option(help="Evaluate the epochs before the "
                            "last on a fixed slice of N test images (curves); the last epoch "
                            "always on the whole test set.", rich_help_panel=_PANEL_DATA)] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs. (default: per data set)",
                      show_default=False, rich_help_panel=_PANEL_RECIPE)] = None,
    steps: Annotated[int | None, typer.Option(help="Total optimiser steps (overrides "
                     "--epochs).", rich_help_panel=_PANEL_RECIPE)] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", "-b", help="Batch size. "
                          "(default: per data set)", show_default=False,
                          rich_help_panel=_PANEL_RECIPE)] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (SGD Nesterov, cosine, "
                  "linear warm-up). (default: per data set)", show_default=False,
                  rich_help_panel=_PANEL_RECIPE)] = None,
    weight_decay: Annotated[float | None, typer.Option(help="Weight decay (not on norms and "
                            "biases). (default: per data set)", show_default=False,
                            rich_help_panel=_PANEL_RECIPE)] = None,
    warmup_epochs: Annotated[float | None, typer.Option(help="Linear warm-up length in "
                             "epochs. (default: per data set)", show_default=False,
                             rich_help_panel=_PANEL_RECIPE)] = None,
    label_smoothing: Annotated[float | None, typer.Option(help="Label smoothing. (default: "
                               "0.1)", show_default=False,
                               rich_help_panel=_PANEL_RECIPE)] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of init, subset, order and "
                    "augmentation. (default: 0)", show_default=False,
                    rich_help_panel=_PANEL_RECIPE)] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda. (default: auto)",
                      show_default=False, rich_help_panel=_PANEL_RUN)] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch.",
                       rich_help_panel=_PANEL_RUN)] = None,
    nproc_per_node: Annotated[int | None, typer.Option(
        "--nproc-per-node", help="Train as DDP over N processes on this node under torchrun "
        "(gloo on CPU, one GPU each on CUDA); --threads are shared among them. (default: 1)",
        show_default=False, rich_help_panel=_PANEL_RUN)] = None,
    amp: Annotated[str | None, typer.Option(help="Mixed precision: bf16, or fp16 (CUDA only).",
                   rich_help_panel=_PANEL_RUN)] = None,
    channels_last: Annotated[bool | None, typer.Option(
        "--channels-last/--no-channels-last", help="Channels-last memory format. (default: "
        "on; about 1.5x faster for depthwise convs on CPU)", show_default=False,
        rich_help_panel=_PANEL_RUN)] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run folder. (default: "
                   "runs/train-<model>-<time>)", show_default=False,
                   rich_help_panel=_PANEL_RUN)] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue the run in RUN_DIR from its "
                      "last checkpoint (options given must match the saved ones).",
                      metavar="RUN_DIR", rich_help_panel=_PANEL_RUN)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.",
                       rich_help_panel=_PANEL_RUN)] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.",
                     rich_help_panel=_PANEL_RUN)] = False,
) -> None:
    """Train one model on a data set; write config, metrics, result and checkpoints."""
    data_options = (parse_key_values(data_option, "--data-option", "difficulty=0.7")
                    if data_option else None)

    from caprobe.runtime import (
        environmental_cause,
        failure_line,
        is_environmental,
        sigterm_as_interrupt,
    )
    from caprobe.training import TrainConfig, is_run_dir, train

    base = TrainConfig()  # a fresh run: the options given over the defaults
    if resume is not None:
        if not is_run_dir(resume):
            raise CaprobeError(f"{resume} is not a caprobe training run (no config.json); "
                               "pass the folder a previous `caprobe train` wrote")
        if out is not None and Path(out).resolve() != Path(resume).resolve():
            raise CaprobeError("--out and --resume name different folders; --resume continues "
                               "the run in its own folder")
        from caprobe.io import read_json

        base = TrainConfig.from_dict(read_json(Path(resume) / "config.json"))
    config = dataclasses.replace(
        base, model=_given(model, base.model), attn=_given(attn, base.attn),
        width=_given(width, base.width), profile=_given(profile, base.profile),
        data=_given(data, base.data), data_dir=_given(data_dir, base.data_dir),
        cache_dir=_given(cache_dir, base.cache_dir),
        data_options=_given(data_options, base.data_options),
        image_size=_given(image_size, base.image_size),
        train_subset=_given(train_subset, base.train_subset),
        curve_subset=_given(curve_subset, base.curve_subset),
        epochs=_given(epochs, base.epochs), steps=_given(steps, base.steps),
        batch_size=_given(batch_size, base.batch_size), lr=_given(lr, base.lr),
        weight_decay=_given(weight_decay, base.weight_decay),
        warmup_epochs=_given(warmup_epochs, base.warmup_epochs),
        label_smoothing=_given(label_smoothing, base.label_smoothing),
        seed=_given(seed, base.seed), device=_given(device, base.device),
        threads=_given(threads, base.threads),
        nproc_per_node=_given(nproc_per_node, base.nproc_per_node), amp=_given(amp, base.amp),
        channels_last=_given(channels_last, base.channels_last))
    if resume is not None:
        run_dir = Path(resume)
    elif out is not None:
        run_dir = out
    else:
        run_dir = _default_out(config.model, config.attn)

    import sys

    from rich.console import Console

    err = Console(stderr=True, highlight=False)
    interactive = err.is_terminal and not quiet

    resolved: dict[str, Any] = {}

    def on_start(cfg) -> None:
        resolved["label"] = cfg.model if cfg.attn in (None, "none") else f"{cfg.model}_{cfg.attn}"
        if quiet:
            return
        items = ", ".join(f"{k}={v}" for k, v in cfg.to_dict().items()
                          if k not in ("data_dir", "cache_dir") or v is not None)
        typer.echo(f"caprobe train: {'resuming' if resume else 'config'}: {items}", err=True)
        typer.echo(f"caprobe train: run folder {run_dir}", err=True)

    def on_epoch(row: dict) -> None:
        if quiet or interactive:
            return
        top5 = f" top-5 {row['test_top5']:.2f}%" if row.get("test_top5") is not None else ""
        typer.echo(f"epoch {row['epoch']}: train loss {row['train_loss']:.4f} acc "
                   f"{row['train_acc']:.2f}%, test loss {row['test_loss']:.4f} top-1 "
                   f"{row['test_top1']:.2f}%{top5}, {row['epoch_time_s']:.1f} s, "
                   f"{_fmt(row['images_per_s'], 0)} img/s", err=True)

    try:
        with sigterm_as_interrupt():  # a stopped job records "interrupted", like Ctrl-C
            result = train(config, out=run_dir, resume=resume is not None,
                           progress=None if interactive else False, on_epoch=on_epoch,
                           on_start=on_start)
    except KeyboardInterrupt:
        typer.echo(f"caprobe: interrupted; the last finished epoch is saved in {run_dir}. "
                   f"Continue with: caprobe train --resume {run_dir}", err=True)
        raise typer.Exit(130) from None
    except Exception as exc:
        if not is_environmental(exc):
            raise
        then = (f"continue with caprobe train --resume {run_dir}" if is_run_dir(run_dir)
                else "run the command again")
        raise CaprobeError(failure_line(*environmental_cause(exc), f"training in {run_dir}",
                                        then)) from exc

    label = resolved.get("label", config.model)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        typer.echo(summary_line(result, f"{label} seed {config.seed}"))
    sys.stdout.flush()
    if result.status != "finished":
        raise typer.Exit(1)
