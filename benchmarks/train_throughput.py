"""Training step cost, side by side in one process: attention against the plain network, and
caprobe's training loop against a bare PyTorch loop.

    python benchmarks/train_throughput.py                  # attention: the issue-11 targets
    python benchmarks/train_throughput.py attention --width 1.0
    python benchmarks/train_throughput.py attention --profile imagenet --batch-size 32
    python benchmarks/train_throughput.py loop             # caprobe.train vs a bare loop
    python benchmarks/train_throughput.py decompose        # where CA's training cost goes

``attention`` (default): MobileNetV2 (width 0.5, CIFAR profile, batch 64, fp32, channels-last,
2 threads, SGD with momentum) trains one step at a time on a fixed random batch, for ``none``
and every variant in two forms: *after*, the modules as caprobe builds them (the fast
training forms of :mod:`caprobe.attention.functional`), and *before*, the same weights run by
the papers' equations in plain autograd (:func:`caprobe.attention.reference.reference_form`).
Rounds interleave every (variant, form) in a rotating order, so load hits all alike; each
ratio is the median over rounds of the round's step time over ``none``'s in the same round,
with a 95 % order-statistics interval. Peak memory of one training step (forward, backward,
optimiser step) is read from the profiler's allocator events, for each (variant, form).
Targets: step time relative to ``none`` of ca <= 1.20x, se <= 1.15x, cbam <= 1.30x; peak
memory of a CA step <= 1.15x of ``none``'s.

``decompose``: MobileNetV2-0.5 + CA with every CA module replaced by a copy of its input
(one map-sized pass), by its gate computation alone (strip means, F1, BN, activation, both
gate convs and sigmoids, forward and backward, the product never formed), and as built,
against ``none``, interleaved: which part of CA's training cost is map traffic and which is
the small operators of the gates.

``loop``: both train the same model (same build, seed, memory format, AMP, optimiser) on the
same in-memory data for the same number of steps; rounds alternate (bare, caprobe, bare, ...)
so machine load hits both alike; the median rounds (and the best rounds, less sensitive to
load spikes on a shared machine) are compared.

* bare: a pre-normalised float batch already in memory, ``model(x)``, loss, backward, step:
  the floor any training loop pays.
* caprobe: :func:`caprobe.training.train` (one epoch of exactly ``--steps`` steps, progress off),
  timed from its own ``train_time_s`` (evaluation excluded), which includes indexing,
  batch augmentation, bookkeeping and the NaN guard. Its ``data_wait_share`` is the share of
  step time spent preparing the batch (indexing + augmentation + copies).
  Target: caprobe / bare >= 0.95.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
import types


def loop_main(argv: list[str]) -> int:
    """``loop``: caprobe's training loop against a bare PyTorch loop (see the module doc)."""
    p = argparse.ArgumentParser(prog="train_throughput.py loop",
                                description="caprobe.train against a bare loop")
    p.add_argument("--model", default="mobilenetv2")
    p.add_argument("--attn", default="ca")
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--data", default="positional")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=8, help="steps per round")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds of each (after a warm-up)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--amp", default=None, choices=[None, "bf16", "fp16"])
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    import torch

    from caprobe.data import load_dataset
    from caprobe.models import build_model
    from caprobe.training import TrainConfig, loop, train
    from caprobe.training.optim import build_optimizer

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    channels_last = not args.no_channels_last
    kw = {"data_dir": args.data_dir} if args.data_dir else {}
    ds = load_dataset(args.data, **kw)
    n = args.steps * args.batch_size
    if len(ds.train.labels) < n:
        sys.exit(f"the training split has {len(ds.train.labels)} images; need {n}")
    # one epoch = exactly --steps steps; a small test split keeps the (untimed) eval short
    small = types.SimpleNamespace(**{f.name: getattr(ds, f.name) for f in dataclasses.fields(ds)})
    small.train = types.SimpleNamespace(images=ds.train.images[:n], labels=ds.train.labels[:n])
    small.test = types.SimpleNamespace(images=ds.test.images[:64], labels=ds.test.labels[:64])
    small.num_classes = ds.num_classes
    real_api = loop._data_api()
    api = types.SimpleNamespace(load_dataset=lambda *a, **k: small,
                                augment_batch=real_api.augment_batch,
                                to_input=real_api.to_input,
                                balanced_subset=real_api.balanced_subset)
    loop._data_api = lambda: api

    cfg = TrainConfig(model=args.model, attn=args.attn, width=args.width, data=args.data,
                      batch_size=args.batch_size, epochs=1, lr=0.05, device=args.device,
                      amp=args.amp, channels_last=channels_last, threads=threads)
    device = loop.training_device(args.device, args.amp)
    profile = "cifar" if ds.image_size <= 64 else "imagenet"

    # the bare loop's data: normalised float batches, in memory (and on the device)
    xs = [real_api.to_input(small.train.images[i * args.batch_size:(i + 1) * args.batch_size],
                            ds.mean, ds.std) for i in range(args.steps)]
    ys = [small.train.labels[i * args.batch_size:(i + 1) * args.batch_size]
          for i in range(args.steps)]
    mf = torch.channels_last if channels_last else torch.contiguous_format
    xs = [x.to(device).contiguous(memory_format=mf) for x in xs]
    ys = [y.to(device) for y in ys]

    def bare_round() -> float:
        model = build_model(args.model, attn=args.attn, width=args.width,
                            num_classes=ds.num_classes, profile=profile, seed=0).to(device)
        model = model.to(memory_format=mf).train()
        opt, sched = build_optimizer(model, lr=0.05, momentum=0.9, nesterov=True,
                                     weight_decay=5e-4, total_steps=args.steps, warmup_steps=0)
        crit = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
        amp = loop._autocast(device, args.amp)
        t = time.perf_counter()
        for x, y in zip(xs, ys, strict=True):
            with amp:
                out = model(x)
            loss = crit(out.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t

    def caprobe_round() -> tuple[float, float]:
        res = train(cfg, progress=False)
        if res.status != "finished":
            sys.exit(f"caprobe run {res.status}: {res.error}")
        return args.steps * args.batch_size / res.images_per_s, res.data_wait_share

    bare_round()  # warm-up: allocator, kernels, first-touch
    caprobe_round()
    bare_t, cap_t, waits = [], [], []
    for _ in range(args.rounds):
        bare_t.append(bare_round())
        t, w = caprobe_round()
        cap_t.append(t)
        waits.append(w)
    b, c = statistics.median(bare_t), statistics.median(cap_t)
    imgs = args.steps * args.batch_size
    out = {
        "model": args.model, "attn": args.attn, "width": args.width, "data": args.data,
        "image_size": ds.image_size, "batch_size": args.batch_size, "steps": args.steps,
        "rounds": args.rounds, "threads": threads, "device": device, "amp": args.amp,
        "channels_last": channels_last, "augment": ds.augment,
        "bare_images_per_s": round(imgs / b, 1), "caprobe_images_per_s": round(imgs / c, 1),
        "ratio": round(b / c, 4), "ratio_best": round(min(bare_t) / min(cap_t), 4),
        "data_wait_share": round(statistics.median(waits), 5),
        "bare_round_s": [round(t, 3) for t in bare_t],
        "caprobe_round_s": [round(t, 3) for t in cap_t],
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{args.model}+{args.attn} w{args.width} {args.data} {ds.image_size}px "
              f"batch {args.batch_size}, {threads} threads, {device}, amp {args.amp}, "
              f"channels-last {channels_last}")
        print(f"  bare PyTorch loop : {out['bare_images_per_s']:8.1f} img/s")
        print(f"  caprobe.train     : {out['caprobe_images_per_s']:8.1f} img/s")
        print(f"  ratio             : {out['ratio']:.3f} of medians, {out['ratio_best']:.3f} of "
              "best rounds  (target >= 0.95)")
        print(f"  data wait share   : {100 * out['data_wait_share']:.2f}% of step time")
    return 0


#: Step-time targets relative to ``none`` (issue 11) and the CA memory target.
TIME_TARGETS = {"se": 1.15, "cbam": 1.30, "ca": 1.20}
CA_MEMORY_TARGET = 1.15


def sgd_step(model, x, y):
    """One SGD-with-momentum training step of ``model`` (channels-last, train mode) on the
    fixed batch ``(x, y)``, as a function of no arguments."""
    import torch

    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def peak_step_bytes(step) -> int:
    """Peak bytes allocated above the starting level during one call of ``step``, from the
    profiler's allocator events (CPU has no allocator statistics of its own)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    level = peak = 0
    for event in events:
        level += event.nbytes()
        peak = max(peak, level)
    return peak


def attention_main(argv: list[str]) -> int:
    """``attention``: every variant's training step against ``none``'s, before and after."""
    p = argparse.ArgumentParser(prog="train_throughput.py attention",
                                description="attention training step cost against none")
    p.add_argument("--variants", nargs="+", default=["se", "cbam", "eca", "ca", "ca_h", "ca_w"])
    p.add_argument("--model", default="mobilenetv2")
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--profile", default="cifar", choices=["cifar", "imagenet"])
    p.add_argument("--image-size", type=int, default=None, help="default: 32 cifar, 224 imagenet")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=3, help="timed steps per entry and round")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--no-before", action="store_true", help="time only the fast forms")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    import torch

    from caprobe.attention.reference import reference_form
    from caprobe.measure.environment import collect_env, contention_warnings, other_runnable
    from caprobe.models import build_model
    from caprobe.runtime import keep_freed_memory
    from caprobe.stats import median_ci_indices

    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as caprobe.train does (CAPROBE_MALLOC=system: glibc's default)
    size = args.image_size or (32 if args.profile == "cifar" else 224)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, size, size, generator=gen).contiguous(
        memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch_size,), generator=gen)

    entries: dict[tuple[str, str], object] = {}

    for variant in ["none", *args.variants]:
        model = build_model(args.model, attn=variant, width=args.width, num_classes=10,
                            profile=args.profile, seed=0)
        entries[variant, "after"] = sgd_step(model, x, y)
        if variant != "none" and not args.no_before:
            entries[variant, "before"] = sgd_step(reference_form(model), x, y)
    keys = list(entries)
    others = other_runnable()
    for step in entries.values():  # warm-up: allocator, kernels, first touch
        step()
        step()
    times: dict[tuple[str, str], list[float]] = {k: [] for k in keys}
    for r in range(args.rounds):
        order = keys[r % len(keys):] + keys[:r % len(keys)]
        for key in order:
            t = time.perf_counter()
            for _ in range(args.steps):
                entries[key]()
            times[key].append((time.perf_counter() - t) / args.steps)
    peaks = {k: peak_step_bytes(entries[k]) for k in keys}

    base = times["none", "after"]
    rows = []
    for key in keys:
        ratios = sorted(t / b for t, b in zip(times[key], base, strict=True))
        ci = median_ci_indices(len(ratios))
        rows.append({
            "variant": key[0], "form": key[1],
            "step_ms": round(1e3 * statistics.median(times[key]), 2),
            "images_per_s": round(args.batch_size / statistics.median(times[key]), 1),
            "ratio": round(statistics.median(ratios), 4),
            "ratio_ci": None if ci is None else [round(ratios[ci[0]], 4), round(ratios[ci[1]], 4)],
            "peak_mb": round(peaks[key] / 2**20, 1),
            "peak_ratio": round(peaks[key] / peaks["none", "after"], 4),
        })
    env = collect_env("cpu", threads=args.threads)
    checks = []
    for row in rows:
        if row["form"] == "after" and row["variant"] in TIME_TARGETS:
            target = TIME_TARGETS[row["variant"]]
            checks.append({"what": f"{row['variant']} step time / none", "value": row["ratio"],
                           "target": target, "met": row["ratio"] <= target})
        if row["form"] == "after" and row["variant"] == "ca":
            checks.append({"what": "ca peak step memory / none", "value": row["peak_ratio"],
                           "target": CA_MEMORY_TARGET,
                           "met": row["peak_ratio"] <= CA_MEMORY_TARGET})
    out = {"model": args.model, "width": args.width, "profile": args.profile,
           "image_size": size, "batch_size": args.batch_size, "threads": args.threads,
           "steps": args.steps, "rounds": args.rounds, "cpu": env["cpu_model"],
           "torch": env["torch"], "git_commit": env["git_commit"], "malloc": env["malloc"],
           "rows": rows,
           "checks": checks}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{args.model} w{args.width} {args.profile} {size}px, batch {args.batch_size}, fp32, "
          f"channels-last, {args.threads} threads, {args.rounds} rounds x {args.steps} steps; "
          f"{env['cpu_model']}, torch {env['torch']}, caprobe {env['git_commit'] or 'no git'}, "
          f"malloc {env['malloc']}")
    for warning in contention_warnings("cpu", args.threads, others):
        print(f"warning: {warning}")
    print(f"{'variant':8s} {'form':6s} {'ms/step':>8s} {'img/s':>7s} {'x none':>7s} "
          f"{'95% CI':>17s} {'peak MB':>8s} {'x none':>7s}")
    for row in rows:
        lo_hi = row["ratio_ci"]
        ci = "" if lo_hi is None else f"[{lo_hi[0]:.3f}, {lo_hi[1]:.3f}]"
        print(f"{row['variant']:8s} {row['form']:6s} {row['step_ms']:8.1f} "
              f"{row['images_per_s']:7.1f} {row['ratio']:7.3f} {ci:>17s} "
              f"{row['peak_mb']:8.1f} {row['peak_ratio']:7.3f}")
    for check in checks:
        print(f"{'PASS' if check['met'] else 'MISS'}  {check['what']}: {check['value']:.3f} "
              f"(target <= {check['target']:.2f})")
    return 0


def _decomposed(model, mode: str):
    """A copy of a CA ``model`` whose every CoordAttention is replaced (``decompose``):
    ``"map pass"`` returns a copy of its input (one map-sized pass forward and backward);
    ``"gates only"`` computes the gates (strip means, F1, BN, the activation, both gate convs
    and sigmoids) and returns a copy of its input that depends on them, so their backward runs
    in full (with zero gradients) but the gate product is never formed."""
    import copy

    import torch
    from torch import nn

    from caprobe.attention.coord import CoordAttention

    class Through(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, *gates):
            ctx.gates = [(g.shape, g.dtype) for g in gates]
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            return (grad.clone(), *(grad.new_zeros(shape, dtype=dtype)
                                    for shape, dtype in ctx.gates))

    class Part(nn.Module):
        def __init__(self, ca: CoordAttention) -> None:
            super().__init__()
            self.ca = ca

        def forward(self, x):
            gates = self.ca._gates_nhwc(x) if mode == "gates only" else []
            return Through.apply(x, *gates)

    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, CoordAttention):
                setattr(parent, name, Part(child))
    return model


def decompose_main(argv: list[str]) -> int:
    """``decompose``: where CA's training cost goes (see :func:`_decomposed`)."""
    p = argparse.ArgumentParser(prog="train_throughput.py decompose",
                                description="CA's training step cost, part by part")
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=12)
    args = p.parse_args(argv)

    import torch

    from caprobe.measure.environment import collect_env
    from caprobe.models import build_model
    from caprobe.runtime import keep_freed_memory
    from caprobe.stats import median_ci_indices

    torch.set_num_threads(args.threads)
    keep_freed_memory()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, 32, 32, generator=gen).contiguous(
        memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch_size,), generator=gen)
    ca = build_model("mobilenetv2", attn="ca", width=args.width, num_classes=10,
                     profile="cifar", seed=0)
    entries = {
        "none": sgd_step(build_model("mobilenetv2", attn="none", width=args.width,
                                     num_classes=10, profile="cifar", seed=0), x, y),
        "map pass": sgd_step(_decomposed(ca, "map pass"), x, y),
        "gates only": sgd_step(_decomposed(ca, "gates only"), x, y),
        "ca": sgd_step(ca, x, y),
    }
    keys = list(entries)
    for step in entries.values():
        step()
        step()
    times: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(args.rounds):
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            t = time.perf_counter()
            for _ in range(args.steps):
                entries[key]()
            times[key].append((time.perf_counter() - t) / args.steps)
    env = collect_env("cpu", threads=args.threads)
    print(f"mobilenetv2 w{args.width} cifar 32px, batch {args.batch_size}, {args.threads} "
          f"threads, {args.rounds} rounds x {args.steps} steps; {env['cpu_model']}, torch "
          f"{env['torch']}, malloc {env['malloc']}")
    print("each CoordAttention replaced by: map pass = a copy of its input; gates only = the "
          "gates computed (and their backward run) but not applied; ca = the module")
    for key in keys:
        ratios = sorted(t / b for t, b in zip(times[key], times["none"], strict=True))
        ci = median_ci_indices(len(ratios))
        span = "" if ci is None else f"[{ratios[ci[0]]:.3f}, {ratios[ci[1]]:.3f}]"
        print(f"{key:11s} {1e3 * statistics.median(times[key]):8.1f} ms/step  x none "
              f"{statistics.median(ratios):.3f} {span}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "loop":
        return loop_main(argv[1:])
    if argv and argv[0] == "decompose":
        return decompose_main(argv[1:])
    return attention_main(argv[1:] if argv and argv[0] == "attention" else argv)


if __name__ == "__main__":
    sys.exit(main())
