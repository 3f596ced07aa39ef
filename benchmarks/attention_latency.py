"""Is caprobe's Coordinate Attention fast, and can caprobe's timer be trusted? One run, one process.

    python benchmarks/attention_latency.py            # 2 threads, batch 1, fp32
    python benchmarks/attention_latency.py --min-time 3 --threads 2

Prints, with PASS/MISS per target (issue 3):

1. caprobe's CA module (eval, inference path) against a paper-form CA written here as in the
   official code (AdaptiveAvgPool2d((None, 1)) / ((1, None)), cat, conv1+BN+h-swish, split,
   conv_h / conv_w, sigmoid, two multiplies), same weights, at 1x144x56x56 and 1x960x7x7.
   Target: ours <= 0.6x the paper form's latency.
2. MobileNetV2+CA's latency overhead over MobileNetV2 at 224x224, against the same network
   with the paper-form CA swapped into every CA position. Target: ours <= half the overhead.
3. caprobe's median against ``torch.utils.benchmark.Timer(...).blocked_autorange()`` on the
   same model in the same process. Target: within 10%.

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
from caprobe.attention import CoordAttention, build
from caprobe.measure.environment import (
    collect_env,
    contention_warnings,
    load_average,
    other_runnable,
)
from caprobe.measure.latency import time_variants
from caprobe.stats import median_ci_indices


class PaperCoordAtt(nn.Module):
    """Coordinate Attention as in the official code (Hou et al., CVPR 2021), h-swish, sigmoid."""

    def __init__(self, inp: int, oup: int, reduction: int = 32, min_mip: int = 8):
        super().__init__()
        self.pool_h = nn.AdaptiveAvgPool2d((None, 1))
        self.pool_w = nn.AdaptiveAvgPool2d((1, None))
        mip = max(min_mip, inp // reduction)
        self.conv1 = nn.Conv2d(inp, mip, kernel_size=1, stride=1, padding=0)
        self.bn1 = nn.BatchNorm2d(mip)
        self.act = nn.Hardswish()
        self.conv_h = nn.Conv2d(mip, oup, kernel_size=1, stride=1, padding=0)
        self.conv_w = nn.Conv2d(mip, oup, kernel_size=1, stride=1, padding=0)

    def forward(self, x):
        identity = x
        _, _, h, w = x.size()
        x_h = self.pool_h(x)
        x_w = self.pool_w(x).permute(0, 1, 3, 2)
        y = torch.cat([x_h, x_w], dim=2)
        y = self.act(self.bn1(self.conv1(y)))
        x_h, x_w = torch.split(y, [h, w], dim=2)
        x_w = x_w.permute(0, 1, 3, 2)
        a_h = self.conv_h(x_h).sigmoid()
        a_w = self.conv_w(x_w).sigmoid()
        return identity * a_w * a_h


def paper_from(ours: CoordAttention) -> PaperCoordAtt:
    """A paper-form CA holding exactly the weights and BN statistics of ``ours``."""
    channels = ours.conv1.in_channels
    mip = ours.conv1.out_channels
    paper = PaperCoordAtt(channels, channels, reduction=max(1, channels // mip), min_mip=mip)
    if paper.conv1.out_channels != mip:  # pragma: no cover - reduction rounding guard
        paper = PaperCoordAtt(channels, channels, reduction=10**9, min_mip=mip)
    for name in ("conv1", "bn1", "conv_h", "conv_w"):
        getattr(paper, name).load_state_dict(getattr(ours, name).state_dict())
    if not (isinstance(ours.act, nn.Hardswish) and isinstance(ours.gate, nn.Sigmoid)):
        raise SystemExit("caprobe's default CA is expected to use h-swish and sigmoid")
    return paper.eval()


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


def swap_in_paper_ca(model: nn.Module) -> int:
    """Replace every caprobe CA in ``model`` by a paper-form CA with the same weights."""
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, CoordAttention)]
    for name, m in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, paper_from(m))
    return len(targets)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def ci_text(ci) -> str:
    return "n/a" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def section_module(args) -> list[bool]:
    print("\n1) CA module: caprobe (eval, inference path) vs paper form, same weights")
    oks = []
    for channels, side in ((144, 56), (960, 7)):
        torch.manual_seed(channels)
        ours = build("ca", channels)
        randomise_bn(ours, channels)
        ours.eval()
        paper = paper_from(ours)
        x = torch.randn(1, channels, side, side)
        with torch.inference_mode():
            same = torch.allclose(ours(x), paper(x), atol=1e-5, rtol=1e-5)
        res = time_variants({"paper": paper, "ours": ours}, batch=1, input_size=side,
                            in_channels=channels, device="cpu", threads=args.threads,
                            min_time=args.min_time, baseline="paper")
        p, o = res
        ok = o.overhead <= 0.6
        oks.append(ok)
        print(f"   1x{channels}x{side}x{side}: paper {p.median_ms * 1000:8.1f} us "
              f"(IQR {p.iqr_ms * 1000:.1f}), ours {o.median_ms * 1000:8.1f} us "
              f"(IQR {o.iqr_ms * 1000:.1f}), n={o.n}, outputs allclose: {same}")
        print(f"      ours/paper = {o.overhead:.3f}x  95% CI {ci_text(o.overhead_ci)}  "
              f"target <= 0.60x  {verdict(ok)}")
    return oks


def section_network(args) -> tuple[list[bool], nn.Module]:
    print("\n2) MobileNetV2 224x224: latency overhead of CA over no attention")
    base = caprobe.build_model("mobilenetv2", seed=0)
    ours = caprobe.build_model("mobilenetv2", attn="ca", seed=0)
    randomise_bn(ours, 1)
    paper = caprobe.build_model("mobilenetv2", attn="ca", seed=0)
    randomise_bn(paper, 1)
    swapped = swap_in_paper_ca(paper)
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        ours.eval()
        paper.eval()
        same = torch.allclose(ours(x), paper(x), atol=1e-4, rtol=1e-4)
    res = time_variants({"none": base, "ca": ours, "ca_paper": paper}, batch=1,
                        input_size=224, device="cpu", threads=args.threads,
                        min_time=args.min_time_model, baseline="none")
    b, o, p = res
    over_o, over_p = o.overhead - 1.0, p.overhead - 1.0
    # per round: (ours/none - 1) / (paper/none - 1), median with an order-statistics CI
    per_round = sorted((so / sb - 1.0) / (sp / sb - 1.0)
                       for sb, so, sp in zip(b.samples_ms, o.samples_ms, p.samples_ms,
                                             strict=True)
                       if sp / sb - 1.0 > 0)
    frac = statistics.median(per_round) if per_round else math.nan
    idx = median_ci_indices(len(per_round)) if per_round else None
    frac_ci = None if idx is None else (per_round[idx[0]], per_round[idx[1]])
    ok = over_p > 0 and over_o <= 0.5 * over_p
    print(f"   {swapped} CA blocks swapped; outputs allclose: {same}")
    for r in res:
        print(f"   {r.label:9s} median {r.median_ms:7.2f} ms  IQR {r.iqr_ms:5.2f}  "
              f"p90 {r.p90_ms:6.2f}  CV {100 * r.cv:4.1f}%  n={r.n}  "
              f"vs none {'-' if r.overhead is None else f'{r.overhead:.3f}x'} "
              f"{'' if r.overhead is None else ci_text(r.overhead_ci)}")
    print(f"   overhead: ours {100 * over_o:+.1f}%, paper form {100 * over_p:+.1f}%; "
          f"ours / paper = {over_o / over_p if over_p else math.nan:.2f} "
          f"(per-round median {frac:.2f}, 95% CI {ci_text(frac_ci)})  "
          f"target <= 0.50  {verdict(ok)}")
    return [ok], ours


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
            model = caprobe.build_model("mobilenetv2", attn="ca", seed=0).eval()
        oks += section_agreement(args, model)
    print(f"\nload avg (1 min) at the end: {load_average()}, other runnable tasks "
          f"{other_runnable()}")
    print(f"targets met: {sum(oks)}/{len(oks)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
