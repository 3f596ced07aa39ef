"""What static int8 does to trained models: top-1 before and after, per variant and runtime,
and the int8 latency overhead, on the models of a finished compare run folder.

    python benchmarks/int8_accuracy.py reports/nightly-2026-12-01/mobilenetv2 \\
        --runtime onnxruntime executorch openvino

For each (runtime, variant, finished seed that learned): the trained model's graph form is
quantised statically (:func:`caprobe.comparison.shipped.int8_record`: the first 256
training images calibrate every variant) and the whole test set runs through it. Printed per
(runtime, variant): mean int8 and fp32 top-1 over the seeds and the mean Δ with its 95 %
interval (paired: each seed's int8 model is that seed's model quantised). With ``--latency``,
each runtime then times the variants' int8 graphs interleaved at batch 1 (the first seed's
weights), overhead vs ``none`` with its interval. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path


def _training(plan: dict):
    """The run's TrainConfig (plans of schema 1 kept its fields flat among the options)."""
    from caprobe.comparison.plan import plan_training
    from caprobe.training import TrainConfig

    raw = plan_training(plan)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in raw.items() if k in names and k != "attn"})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a finished caprobe compare run folder")
    ap.add_argument("--runtime", nargs="+", default=["onnxruntime"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--latency", action="store_true", help="also time the int8 graphs")
    ap.add_argument("--no-accuracy", action="store_true", help="time only (with --latency)")
    ap.add_argument("--min-time", type=float, default=2.0)
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = ap.parse_args(argv)

    import torch

    from caprobe.comparison import Layout, load_plan
    from caprobe.comparison.shipped import calibration_batches, int8_record
    from caprobe.data import load_dataset
    from caprobe.formatting import fmt_ratio_pct
    from caprobe.stats import mean_ci
    from caprobe.training import load_model

    torch.set_num_threads(args.threads)
    plan = load_plan(args.run)
    layout = Layout(args.run)
    config = _training(plan)
    dataset = load_dataset(config.data, **config.dataset_kwargs())
    calibration = calibration_batches(dataset)
    rows = []
    print(f"{args.run}: {config.model} on {config.data}, {len(dataset.test)} test images, "
          f"{sum(b.shape[0] for b in calibration)} calibration images, "
          f"{args.threads} threads")
    for runtime in [] if args.no_accuracy else args.runtime:
        for variant in plan["variants"]:
            records = []
            for seed in plan["seeds"]:
                result = json.loads((layout.run_dir(variant, seed) / "result.json").read_text())
                if result.get("status") != "finished" or result.get("learned") is False:
                    continue
                t0 = time.perf_counter()
                rec = int8_record(load_model(layout.run_dir(variant, seed)), dataset,
                                  runtime=runtime, threads=args.threads,
                                  calibration=calibration, fp32_top1=result["top1"],
                                  learned=result.get("learned"))
                records.append(rec)
                print(f"  {runtime:11s} {variant:6s} seed {seed}: int8 {rec['top1']:6.2f} "
                      f"fp32 {rec['fp32_top1']:6.2f} Δ {rec['delta_top1']:+.2f} "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
            if not records:
                print(f"  {runtime:11s} {variant:6s}: no finished seed that learned")
                continue
            deltas = [r["delta_top1"] for r in records]
            ci = mean_ci(deltas) if len(deltas) > 1 else None
            rows.append({
                "runtime": runtime, "variant": variant, "n": len(records),
                "int8": sum(r["top1"] for r in records) / len(records),
                "fp32": sum(r["fp32_top1"] for r in records) / len(records),
                "delta": sum(deltas) / len(deltas), "ci": ci})
    print(f"\n{'runtime':11s} {'variant':7s} {'n':>2s} {'fp32':>7s} {'int8':>7s} "
          f"{'Δ int8':>7s}  95 % CI" if rows else "")
    for r in rows:
        ci = f"[{r['ci'][0]:+.2f}, {r['ci'][1]:+.2f}]" if r["ci"] else "–"
        print(f"{r['runtime']:11s} {r['variant']:7s} {r['n']:2d} {r['fp32']:7.2f} "
              f"{r['int8']:7.2f} {r['delta']:+7.2f}  {ci}")
    latency = []
    if args.latency:
        from caprobe.measure.latency import time_variants

        models = {v: load_model(layout.run_dir(v, plan["seeds"][0])) for v in plan["variants"]}
        side = int(dataset.test.images.shape[-1])
        print(f"\nint8 latency, batch 1, {side}×{side}, {args.threads} threads "
              "(variants interleaved)")
        for runtime in args.runtime:
            for res in time_variants(models, batch=1, input_size=side, device="cpu",
                                     threads=args.threads, min_time=args.min_time,
                                     runtime=runtime, int8=True, baseline="none"):
                ci = res.overhead_ci
                over = (f"{fmt_ratio_pct(res.overhead)} [{fmt_ratio_pct(ci[0])}, "
                        f"{fmt_ratio_pct(ci[1])}]" if res.overhead is not None else "–")
                print(f"  {runtime:11s} {res.label:6s} {res.median_ms:7.3f} ms  {over}",
                      flush=True)
                latency.append({"runtime": runtime, "variant": res.label,
                                "median_ms": res.median_ms, "overhead": res.overhead,
                                "overhead_ci": ci})
    if args.json:
        args.json.write_text(json.dumps({"accuracy": rows, "latency": latency}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
