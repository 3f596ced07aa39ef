"""caprobe's training step rate against a bare PyTorch loop, side by side in one process.

Both train the same model (same build, seed, memory format, AMP, optimiser) on the same
in-memory data for the same number of steps; rounds alternate (bare, caprobe, bare, ...)
so machine load hits both alike; the median rounds (and the best rounds, less sensitive to
load spikes on a shared machine) are compared.

* bare: a pre-normalised float batch already in memory, ``model(x)``, loss, backward, step:
  the floor any training loop pays.
* caprobe: :func:`caprobe.train.train` (one epoch of exactly ``--steps`` steps, progress off),
  timed from its own ``train_time_s`` (evaluation excluded), which includes indexing,
  batch augmentation, bookkeeping and the NaN guard. Its ``data_wait_share`` is the share of
  step time spent preparing the batch (indexing + augmentation + copies).

    python benchmarks/train_throughput.py                      # positional, 32 px
    python benchmarks/train_throughput.py --data cifar10 --data-dir ../shared/data/cifar10-jpg.tar

Target: caprobe / bare ≥ 0.95.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
import types


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    from caprobe.train import TrainConfig, loop, train
    from caprobe.train.optim import build_optimizer

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
    device = loop.resolve_device(args.device, args.amp)
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


if __name__ == "__main__":
    sys.exit(main())
