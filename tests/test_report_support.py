"""Synthetic compare run folders for the report and browser tests (no torch, no training).

``make_run`` writes every record ``caprobe compare`` writes (plan, provenance, counts,
latency, training run folders, attention maps) with known numbers, then aggregates them with
the real :func:`caprobe.comparison.results.write_results`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from caprobe.comparison.layout import Layout
from caprobe.comparison.results import write_results
from caprobe.io import write_json
from caprobe.stats import chance_top1, did_learn

STAGES = ["stem", "stage1", "stage2", "stage3", "head"]


def make_run(root: Path, *, variants=("none", "se", "ca"), seeds=(0, 1, 2), data="positional",
             checksum="abc123", model="mobilenetv2", top1=None, train=True, failed=(),
             maps=True, losses=None, classes=10) -> Path:
    """Write a complete synthetic run folder; ``top1[(variant, seed)]`` overrides accuracy,
    ``losses[(variant, seed)]`` the per-epoch training losses (``learned`` follows from both,
    with ``classes`` classes; top-5 is top-1 + 30, capped at 100)."""
    root = Path(root)
    layout = Layout(root)
    rng = random.Random(7)
    variants = list(variants)
    seeds = list(seeds)
    pieces = [(v, s) for s in seeds for v in variants]
    plan = {
        "schema": 2, "kind": "caprobe-compare",
        "options": {"attn": variants[1:], "seeds": len(seeds), "train": train,
                    "training": {"model": model, "data": data, "seed": seeds[0],
                                 "width": 0.25}},
        "variants": variants, "seeds": seeds,
        "folders": {v: str(layout.variant_dir(v).relative_to(root)) for v in variants},
        "pieces": [{"variant": v, "seed": s,
                    "run_dir": str(layout.run_dir(v, s).relative_to(root))} for v, s in pieces],
    }
    write_json(layout.plan, plan)
    write_json(layout.provenance, {
        "sessions": [{"argv": ["caprobe", "compare", "--attn", *variants[1:]],
                      "started_at": "2024-05-01T10:00:00+00:00",
                      "finished_at": "2024-05-01T10:02:00+00:00"}],
        "started_at": "2024-05-01T10:00:00+00:00", "finished_at": "2024-05-01T10:02:00+00:00",
        "data": data, "data_checksum": checksum, "input_size": [32, 32], "width": 0.25,
        "profile": "cifar",
        "env": {"caprobe": "0.1.0", "torch": "2.x", "python": "3.11", "platform": "Linux",
                "cpu_model": "Test CPU", "threads": 2, "cpu_count": 2, "device": "cpu",
                "device_name": "Test CPU", "git_commit": "deadbeef"},
    })
    base_params, base_madds = 1_000_000, 20_000_000
    base_lat = 2.0
    for i, v in enumerate(variants):
        extra = 0 if v == "none" else 10_000 * (i + 1)
        write_json(layout.counts(v), {
            "variant": v, "model": model, "attn": v, "input_size": [32, 32],
            "params": base_params + extra, "madds": base_madds + 20 * extra,
            "madds_total": base_madds + 25 * extra, "attention_params": extra,
            "attention_madds": 20 * extra, "attention_madds_total": 25 * extra,
            "by_stage": [{"stage": s, "params": 100, "madds": base_madds // len(STAGES),
                          "madds_total": base_madds // len(STAGES),
                          "attention_params": 0 if v == "none" or s == "stem" else extra // 4,
                          "attention_madds": 0 if v == "none" or s == "stem" else 5 * extra}
                         for s in STAGES],
            "by_module": [], "uncounted_ops": {},
        })
        med = base_lat * (1 + 0.1 * i)
        samples = [med * (1 + 0.05 * (rng.random() - 0.5)) for _ in range(20)]
        write_json(layout.latency(v), {
            "variant": v, "label": v, "model": model, "attn": v, "batch": 1,
            "input_size": [32, 32], "device": "cpu", "dtype": "fp32", "channels_last": False,
            "threads": 2, "median_ms": med, "iqr_ms": 0.05 * med, "p90_ms": 1.02 * med,
            "cv": 0.02, "n": 20, "images_per_s": 1000 / med,
            "overhead": None if v == "none" else 1 + 0.1 * i,
            "overhead_ci": None if v == "none" else [1 + 0.1 * i - 0.02, 1 + 0.1 * i + 0.02],
            "samples_ms": samples, "compile_time_s": None, "env": {},
        })
    if train:
        for v, s in pieces:
            run_dir = layout.run_dir(v, s)
            run_dir.mkdir(parents=True, exist_ok=True)
            if v in failed:
                write_json(run_dir / "result.json", {"status": "failed", "error": f"boom in {v}",
                                                     "top1": None})
                continue
            acc = (top1 or {}).get((v, s), 60.0 + 2.0 * variants.index(v) + s)
            loss = (losses or {}).get((v, s), [2.0 / e + 0.1 * s for e in (1, 2, 3)])
            rows = [{"epoch": e, "train_loss": x, "test_top1": acc - len(loss) + e}
                    for e, x in enumerate(loss, 1)]
            (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            write_json(run_dir / "result.json", {
                "status": "finished", "top1": acc, "top5": min(acc + 30.0, 100.0),
                "test_loss": 0.9, "train_loss": loss[-1], "epochs_done": len(loss),
                "steps_done": 10 * len(loss), "wall_time_s": 4.0, "images_per_s": 100.0,
                "data_checksum": checksum, "error": None,
                "chance_top1": chance_top1(classes), "learned": did_learn(acc, classes, loss),
            })
    if maps and train:
        h = w = 8
        blocks_ca = [{"name": f"features.{k}.attn", "index": k, "of": 10, "spec": "ca",
                      "channels": 16, "size": [h, w],
                      "gates": {"h": [[0.1 * r for r in range(h)]] * 2,
                                "w": [[0.5] * w] * 2,
                                "hw": [[[0.1 * r * 0.5] * w for r in range(h)]] * 2}}
                     for k in (0, 5, 9)]
        blocks_se = [{"name": "features.3.attn", "index": 3, "of": 10, "spec": "se",
                      "channels": 16, "size": [h, w],
                      "gates": {"channel": [[0.5 + 0.01 * c for c in range(16)]] * 2}}]
        maps_rec = {"schema": 1, "data": data,
                    "images": {"indices": [0, 1], "labels": [0, 1], "classes": ["a", "b"],
                               "pixels": [[[[r * 30 % 256, c * 30 % 256, 128]
                                            for c in range(h)] for r in range(w)]] * 2},
                    "variants": {}}
        for v in variants[1:]:
            maps_rec["variants"][v] = {"seed": seeds[0],
                                       "blocks": blocks_se if v.startswith("se") else blocks_ca}
        write_json(layout.maps, maps_rec)
    write_results(root)
    return root
