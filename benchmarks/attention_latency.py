"""Is caprobe's Coordinate Attention fast, and can caprobe's timer be trusted? One run, one process.

    python benchmarks/attention_latency.py            # 2 threads, batch 1, fp32
    python benchmarks/attention_latency.py --min-time 3 --threads 2

Prints, with PASS/MISS per target (issue 3):

1. caprobe's CA module deployed (``caprobe.deploy``: BN folded, the inference path) against
   the same module as built (the trainable form, the papers' math), same weights, at
   1x144x56x56 and 1x960x7x7. Target: deployed <= 0.6x the trainable form's latency.
2. MobileNetV2+CA's latency overhead over MobileNetV2 at 224x224: ``deploy(model)`` against
   ``model`` as built. Target: the deployed overhead <= half the trainable form's.
3. caprobe's median against ``torch.utils.benchmark.Timer(...).blocked_autorange()`` on the
   same (deployed) model in the same process. Target: within 10%.

Every comparison is timed interleaved (A B C A B C ...) by :func:`caprobe.measure.latency.
time_variants`; ratios are medians of per-round ratios with 95% order-statistics intervals.
Timings depend on the machine and on what else runs on it: quote them with the machine line.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys

import torch
import torch.utils.benchmark as tbench
from torch import nn

import caprobe
from caprobe.attention import build
from caprobe.measure.environment import (
    collect_env,
    contention_warnings,
    load_average,
    other_runnable,
)
from caprobe.measure.latency import time_variants
from caprobe.stats import median_ci_indices


def randomise_bn(module: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics so that folding BN is really exercised."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def ci_text(ci) -> str:
    return "n/a" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def section_module(args) -> list[bool]:
    print("\n1) CA module: deployed form vs the trainable (paper) form, same weights")
    oks = []
    for channels, side in ((144, 56), (960, 7)):
        torch.manual_seed(channels)
        paper = build("ca", channels)
        randomise_bn(paper, channels)
        paper.eval()
        deployed = caprobe.deploy(paper)
        x = torch.randn(1, channels, side, side)
        with torch.inference_mode():
            same = torch.allclose(deployed(x), paper(x), atol=1e-5, rtol=1e-5)
        res = time_variants({"paper": paper, "deployed": deployed}, batch=1, input_size=side,
                            in_channels=channels, device="cpu", threads=args.threads,
                            min_time=args.min_time, form="paper", baseline="paper")
        p, o = res
        ok = o.overhead <= 0.6
        oks.append(ok)
        print(f"   1x{channels}x{side}x{side}: paper {p.median_ms * 1000:8.1f} us "
              f"(IQR {p.iqr_ms * 1000:.1f}), deployed {o.median_ms * 1000:8.1f} us "
              f"(IQR {o.iqr_ms * 1000:.1f}), n={o.n}, outputs allclose: {same}")
        print(f"      deployed/paper = {o.overhead:.3f}x  95% CI {ci_text(o.overhead_ci)}  "
              f"target <= 0.60x  {verdict(ok)}")
    return oks


def section_network(args) -> tuple[list[bool], nn.Module]:
    print("\n2) MobileNetV2 224x224: latency overhead of CA over no attention")
    base = caprobe.build_model("mobilenetv2", seed=0).eval()
    paper = caprobe.build_model("mobilenetv2", attn="ca", seed=0)
    randomise_bn(paper, 1)
    paper.eval()
    deployed = caprobe.deploy(paper)
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        same = torch.allclose(deployed(x), paper(x), atol=1e-4, rtol=1e-4)
    res = time_variants({"none": base, "ca": deployed, "ca_paper": paper}, batch=1,
                        input_size=224, device="cpu", threads=args.threads,
                        min_time=args.min_time_model, form="paper", baseline="none")
    b, o, p = res
    over_o, over_p = o.overhead - 1.0, p.overhead - 1.0
    # per round: (deployed/none - 1) / (paper/none - 1), median with an order-statistics CI
    per_round = sorted((so / sb - 1.0) / (sp / sb - 1.0)
                       for sb, so, sp in zip(b.samples_ms, o.samples_ms, p.samples_ms,
                                             strict=True)
                       if sp / sb - 1.0 > 0)
    frac = statistics.median(per_round) if per_round else math.nan
    idx = median_ci_indices(len(per_round)) if per_round else None
    frac_ci = None if idx is None else (per_round[idx[0]], per_round[idx[1]])
    ok = over_p > 0 and over_o <= 0.5 * over_p
    print(f"   deployed vs trainable form; outputs allclose: {same}")
    for r in res:
        print(f"   {r.label:9s} ({r.form:8s}) median {r.median_ms:7.2f} ms  IQR {r.iqr_ms:5.2f}  "
              f"p90 {r.p90_ms:6.2f}  CV {100 * r.cv:4.1f}%  n={r.n}  "
              f"vs none {'-' if r.overhead is None else f'{r.overhead:.3f}x'} "
              f"{'' if r.overhead is None else ci_text(r.overhead_ci)}")
    print(f"   overhead: deployed {100 * over_o:+.1f}%, paper form {100 * over_p:+.1f}%; "
          f"deployed / paper = {over_o / over_p if over_p else math.nan:.2f} "
          f"(per-round median {frac:.2f}, 95% CI {ci_text(frac_ci)})  "
          f"target <= 0.50  {verdict(ok)}")
    return [ok], deployed


def section_agreement(args, model: nn.Module) -> list[bool]:
    reps = 5
    print("\n3) Agreement with torch.utils.benchmark.Timer.blocked_autorange "
          f"(MobileNetV2+CA, 224, batch 1), alternated {reps} times")
    x = torch.randn(1, 3, 224, 224)
    budget = args.min_time_model / 4
    ours_ms, torch_ms = [], []
    for _ in range(reps):
        (r,) = time_variants({"ca": model}, batch=1, input_size=224, device="cpu",
                             threads=args.threads, min_time=budget)
        ours_ms.append(r.median_ms)
        timer = tbench.Timer(stmt="model(x)", globals={"model": model, "x": x},
                             num_threads=args.threads)
        with torch.inference_mode():
            m = timer.blocked_autorange(min_run_time=budget)
        torch_ms.append(m.median * 1000)
    pair = sorted(a / t for a, t in zip(ours_ms, torch_ms, strict=True))
    ratio = statistics.median(pair)
    ok = abs(ratio - 1.0) <= 0.10
    print(f"   caprobe medians {', '.join(f'{v:.2f}' for v in ours_ms)} ms")
    print(f"   torch Timer     {', '.join(f'{v:.2f}' for v in torch_ms)} ms")
    print(f"   caprobe / torch per alternation {', '.join(f'{v:.3f}' for v in pair)}; "
          f"median {ratio:.3f}  target within 10%  {verdict(ok)}")
    return [ok]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-time", type=float, default=2.0,
                    help="timed seconds per variant for the module comparisons")
    ap.add_argument("--min-time-model", type=float, default=4.0,
                    help="timed seconds per variant for the network comparisons")
    ap.add_argument("--sections", default="123",
                    help="which comparisons to run, e.g. 1 or 23 (default: all)")
    args = ap.parse_args(argv)

    env = collect_env("cpu", threads=args.threads)
    print("caprobe attention latency benchmark (batch 1, fp32, CPU, interleaved)")
    print(f"machine: {env['cpu_model']}, {env['cpu_count']} usable CPUs, threads "
          f"{args.threads}, torch {env['torch']}, python {env['python']}, caprobe "
          f"{env['caprobe']} ({env['git_commit'] or 'no git'}), load avg {env['load_avg_1m']}, "
          f"other runnable tasks {other_runnable()}")
    for warning in contention_warnings("cpu", args.threads, other_runnable()):
        print(f"warning: {warning}")
    oks: list[bool] = []
    model = None
    if "1" in args.sections:
        oks += section_module(args)
    if "2" in args.sections:
        net_ok, model = section_network(args)
        oks += net_ok
    if "3" in args.sections:
        if model is None:
            model = caprobe.deploy(caprobe.build_model("mobilenetv2", attn="ca", seed=0))
        oks += section_agreement(args, model)
    print(f"\nload avg (1 min) at the end: {load_average()}, other runnable tasks "
          f"{other_runnable()}")
    print(f"targets met: {sum(oks)}/{len(oks)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
