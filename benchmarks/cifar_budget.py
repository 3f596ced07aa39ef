"""Test accuracy against wall time on the real CIFAR-10 under a fixed training-time budget.

MobileNetV2 width 0.5, CIFAR profile, attention none vs ca (``--attn``), each trained with
:func:`caprobe.training.train` for as many steps as the budget allows: the step rate is
measured first (40 steps of the real loop), the number of steps follows from it, and the cosine
schedule spans exactly those steps. Every epoch ends with an evaluation on the full 10,000
test images; the table lists top-1 against training time (evaluation excluded; total wall
time is reported too).

    python benchmarks/cifar_budget.py                          # 2 × 20 minutes on 2 cores
    python benchmarks/cifar_budget.py --budget-min 1 --eval-subset 2000   # a quick check

Target: ≥ 75 % top-1 on the full test set within 20 minutes of training on 2 cores.
Results (JSON and a markdown table) go to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_TAR = HERE.parent.parent / "shared" / "data" / "cifar10-jpg.tar"


def measure_step_time(cfg, steps: int = 40) -> float:
    """Seconds per training step of ``cfg``, measured with the real loop (:func:`caprobe.training.
    train` for ``steps`` steps into a throw-away folder; evaluation time excluded)."""
    import dataclasses
    import tempfile

    from caprobe.training import loop, train

    with tempfile.TemporaryDirectory() as tmp:
        train(dataclasses.replace(cfg, steps=steps), out=Path(tmp) / "calibrate",
              progress=False)
        _, rows, _ = loop.load_run(Path(tmp) / "calibrate")
    return sum(r["train_time_s"] for r in rows) / rows[-1]["step"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=str(DEFAULT_TAR))
    p.add_argument("--budget-min", type=float, default=20.0, help="training minutes per variant")
    p.add_argument("--attn", nargs="+", default=["none", "ca"])
    p.add_argument("--model", default="mobilenetv2")
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=None, help="default: the cifar10 recipe's")
    p.add_argument("--warmup-epochs", type=float, default=None)
    p.add_argument("--amp", default="none",
                   help="none (default: bf16 autocast measured slower at batch 64 on CPU) or bf16")
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None,
                   help="train exactly this many steps (skips the calibration), e.g. the budget "
                        "divided by the step time of an earlier full run")
    p.add_argument("--slack", type=float, default=1.15,
                   help="plan with the calibrated step time times this: on a shared machine "
                        "the 40-step calibration was off by up to 15%% either way, so the "
                        "default keeps the run inside the budget")
    p.add_argument("--eval-subset", type=int, default=None,
                   help="evaluate on a class-balanced N of the test images (quick checks; "
                        "the target is on all 10,000)")
    p.add_argument("--out", default="runs/cifar-budget")
    args = p.parse_args(argv)

    import torch

    from caprobe.data import load_dataset
    from caprobe.training import TrainConfig, loop, train
    from caprobe.training.config import recipe_for

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    amp = None if str(args.amp).lower() in ("none", "off", "fp32") else args.amp
    t = time.perf_counter()
    ds = load_dataset("cifar10", data_dir=args.data_dir)
    load_s = time.perf_counter() - t
    print(f"cifar10: {len(ds.train.labels)} train / {len(ds.test.labels)} test images, loaded "
          f"in {load_s:.1f} s, checksum {ds.checksum[:12]}", flush=True)
    if args.eval_subset:
        import dataclasses

        from caprobe.data import Split, balanced_subset

        keep = balanced_subset(ds.test.labels, min(args.eval_subset, len(ds.test.labels)), 0)
        ds = dataclasses.replace(ds, test=Split(ds.test.images[keep].contiguous(),
                                                ds.test.labels[keep].contiguous()))
    real_api = loop._data_api()

    class _Api:  # the loaded set is handed to train() as is: no second load per variant
        load_dataset = staticmethod(lambda *a, **k: ds)
        augment_batch = staticmethod(real_api.augment_batch)
        to_input = staticmethod(real_api.to_input)
        balanced_subset = staticmethod(real_api.balanced_subset)

    loop._data_api = lambda: _Api
    recipe = recipe_for("cifar10")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = []
    for attn in args.attn:
        cfg = TrainConfig(model=args.model, attn=attn, width=args.width, profile="cifar",
                          data="cifar10", data_dir=args.data_dir, batch_size=args.batch_size,
                          lr=args.lr or recipe["lr"], warmup_epochs=args.warmup_epochs,
                          amp=amp, channels_last=not args.no_channels_last, threads=threads,
                          seed=args.seed, device="cpu", steps=1)
        spe = len(ds.train.labels) // args.batch_size
        if args.steps:
            steps = args.steps
            print(f"[{attn}] {steps} steps ({steps / spe:.2f} epochs) as given", flush=True)
        else:
            step_s = measure_step_time(cfg)
            steps = max(1, math.floor(args.budget_min * 60 / (step_s * args.slack)))
            print(f"[{attn}] {step_s * 1000:.0f} ms/step measured → {steps} steps "
                  f"({steps / spe:.2f} epochs) for {args.budget_min:g} min", flush=True)
        cfg.steps = steps
        run_dir = out_dir / f"{args.model}-{attn}-w{args.width}-s{args.seed}"
        if loop.is_run_dir(run_dir):
            import shutil

            shutil.rmtree(run_dir)
        t = time.perf_counter()
        res = train(cfg, out=run_dir, progress=None if sys.stderr.isatty() else False,
                    on_epoch=lambda r, a=attn: print(
                        f"[{a}] epoch {r['epoch']}: train {r['train_time_s']:.0f} s, "
                        f"top-1 {r['test_top1']:.2f}%", flush=True))
        wall = time.perf_counter() - t
        _, rows, _ = loop.load_run(run_dir)
        curve, cum = [], 0.0
        for r in rows:
            cum += r["train_time_s"]
            curve.append({"epoch": r["epoch"], "step": r["step"], "train_min": round(cum / 60, 2),
                          "top1": round(r["test_top1"], 2), "test_loss": round(r["test_loss"], 4)})
        summary.append({"attn": attn, "status": res.status, "top1": res.top1,
                        "train_min": round(cum / 60, 2), "wall_min": round(wall / 60, 2),
                        "steps": res.steps_done, "images_per_s": res.images_per_s,
                        "data_wait_share": res.data_wait_share, "curve": curve,
                        "run_dir": str(run_dir)})
        print(f"[{attn}] {res.status}: top-1 {res.top1}% after {cum / 60:.1f} min training "
              f"({wall / 60:.1f} min wall), {res.images_per_s} img/s", flush=True)

    env = loop._environment("cpu", threads)
    record = {"budget_min": args.budget_min, "model": args.model, "width": args.width,
              "batch_size": args.batch_size, "lr": args.lr or recipe["lr"], "amp": amp,
              "channels_last": not args.no_channels_last, "threads": threads,
              "eval_images": len(ds.test.labels), "load_s": round(load_s, 2),
              "machine": env.get("cpu_model"), "torch": env.get("torch"),
              "cpus": env.get("cpu_count", os.cpu_count()), "variants": summary}
    (out_dir / "cifar_budget.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [f"CIFAR-10, {args.model} w{args.width} (CIFAR profile), batch {args.batch_size}, "
             f"amp {amp}, {threads} threads on {record['machine']}, budget "
             f"{args.budget_min:g} min, eval on {record['eval_images']} test images", "",
             "| attention | epoch | training min | top-1 % |", "|---|---:|---:|---:|"]
    for v in summary:
        for c in v["curve"]:
            lines.append(f"| {v['attn']} | {c['epoch']} | {c['train_min']} | {c['top1']} |")
    table = "\n".join(lines) + "\n"
    (out_dir / "cifar_budget.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
