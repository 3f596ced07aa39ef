"""Latency you can trust: interleaved, paired timing of model variants on CPU or CUDA.

Method
------
1. Every model is put in eval mode, moved to the device / dtype / memory format once, and
   (optionally) compiled; the first compiled call is timed apart as ``compile_time_s``.
   One input tensor is made once (fixed seed) and reused. Everything runs under
   ``torch.inference_mode()``.
2. Calibration: a few single calls per variant give a rough per-iteration time, from which
   the *block* size is chosen: ``iters`` back-to-back calls so that one timed block lasts at
   least ``target_block_ms`` (default 5 ms) and about as long as the slowest variant's single
   call, so every variant spends the same time per round. One sample = block time / iters,
   in ms per iteration. Small inputs therefore get several iterations per sample, so the
   clock's resolution and the Python loop's overhead do not dominate.
3. Warm-up, interleaved: rounds of one block per variant (A B C, A B C, ...) until, for every
   variant, the median of the last 3 blocks is within 5% of the median of the 3 before
   (timings have settled) or the warm-up budget (half of ``min_time`` per variant) is spent.
   Block sizes are then re-derived from the settled timings.
4. Measurement, interleaved the same way, until every variant has accumulated ``min_time``
   seconds of timed blocks and at least ``min_rounds`` rounds are done. Because each round
   holds one sample of every variant taken back to back, drift of a shared machine (other
   jobs, thermal throttling, frequency scaling) hits all variants alike; the overhead versus
   the baseline is the median of the per-round ratios with an order-statistics confidence
   interval (:func:`caprobe.stats.ratio_ci`).

Python's garbage collector is paused while timing. CPU blocks are timed with
:func:`time.perf_counter`; CUDA blocks with CUDA events after a
device synchronise, and the end event is synchronised before reading, so queued kernels are
never mistaken for speed.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from caprobe import stats
from caprobe.errors import CaprobeError
from caprobe.runtime import torch_threads

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "DTYPES",
    "LatencyResult",
    "block_iters",
    "resolve_device",
    "resolve_dtype",
    "time_variants",
]

DTYPES = ("fp32", "bf16", "fp16")
_DTYPE_ALIASES = {
    "fp32": "fp32", "float32": "fp32", "float": "fp32",
    "bf16": "bf16", "bfloat16": "bf16",
    "fp16": "fp16", "float16": "fp16", "half": "fp16",
}

TARGET_BLOCK_MS = 5.0
MAX_BLOCK_ITERS = 10_000
MIN_ROUNDS = 10
MAX_ROUNDS = 100_000  # guard against a clock that reports no time passing
SETTLE_WINDOW = 3
SETTLE_TOL = 0.05

# A timer takes (fn, iters), runs fn() iters times back to back, and returns elapsed seconds.
Timer = Callable[[Callable[[], Any], int], float]
Progress = Callable[[str, float], None]


@dataclass
class LatencyResult:
    """One variant's timing: per-iteration milliseconds plus how and where it was measured."""

    label: str
    model: str
    attn: str
    batch: int
    input_size: tuple[int, int]
    device: str
    dtype: str
    channels_last: bool
    threads: int | None
    median_ms: float
    iqr_ms: float
    p90_ms: float
    cv: float
    n: int
    images_per_s: float
    overhead: float | None  # median of per-round ratios variant / baseline; None for baseline
    overhead_ci: tuple[float, float] | None
    samples_ms: list[float] = field(repr=False)
    compile_time_s: float | None
    env: dict = field(repr=False)


# --------------------------------------------------------------------------- validation


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when available else ``cpu``; check that CUDA is really there."""
    import torch

    name = str(device).strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return "cpu"
    if name == "cuda" or name.startswith("cuda:"):
        index_text = name.partition(":")[2]
        if index_text and not index_text.isdigit():
            raise CaprobeError(f"device {device!r} is malformed; use cuda, cuda:0, cpu or auto")
        if not torch.cuda.is_available():
            raise CaprobeError(f"device {device!r} was asked for but no CUDA GPU is available "
                               "to torch; use --device cpu (or auto)")
        if index_text and int(index_text) >= torch.cuda.device_count():
            raise CaprobeError(f"device {device!r} does not exist (this machine has "
                               f"{torch.cuda.device_count()} CUDA device(s)); use cuda:0")
        return name
    raise CaprobeError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto")


def resolve_dtype(dtype: str, device: str) -> str:
    """Canonical dtype name (fp32|bf16|fp16), checked against the device."""
    import torch

    key = _DTYPE_ALIASES.get(str(dtype).strip().lower())
    if key is None:
        raise CaprobeError(f"unsupported dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    if key == "fp16" and not device.startswith("cuda"):
        raise CaprobeError("fp16 is only supported on CUDA (CPU half-precision convolutions are "
                           "slow or missing); use --dtype bf16 or fp32 on the CPU")
    if key == "bf16" and device.startswith("cuda") and not torch.cuda.is_bf16_supported():
        raise CaprobeError("this GPU does not support bf16; use --dtype fp16 or fp32")
    return key


def _torch_dtype(key: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[key]


def _input_hw(input_size: tuple[int, int] | int | list) -> tuple[int, int]:
    if isinstance(input_size, int):
        hw = (input_size, input_size)
    else:
        try:
            hw = tuple(int(v) for v in input_size)
        except (TypeError, ValueError) as exc:
            raise CaprobeError(f"input size {input_size!r} is not a number or (H, W) pair; "
                               "pass e.g. 224 or (224, 224)") from exc
        if len(hw) == 1:
            hw = (hw[0], hw[0])
    if len(hw) != 2 or min(hw) < 1:
        raise CaprobeError(f"input size {input_size!r} is invalid; pass a positive size like "
                           "224 or (H, W)")
    return hw  # type: ignore[return-value]


def block_iters(seconds_per_iter: float, target_block_s: float = TARGET_BLOCK_MS / 1000,
                max_iters: int = MAX_BLOCK_ITERS) -> int:
    """Iterations per timed block so that a block lasts at least ``target_block_s``."""
    if not math.isfinite(seconds_per_iter) or seconds_per_iter <= 0:
        return max_iters
    return int(min(max_iters, max(1, math.ceil(target_block_s / seconds_per_iter))))


def _balanced_iters(per_iter: Mapping[str, float], target_s: float) -> dict[str, int]:
    """Block sizes: every block lasts >= ``target_s`` and about as long as the slowest
    variant's single call, so all variants spend the same time per round (equal exposure to
    drift within a pair, and every variant reaches its time budget in the same round)."""
    finite = [v for v in per_iter.values() if math.isfinite(v) and v > 0]
    target = max([target_s, *finite])
    return {k: block_iters(v, target) for k, v in per_iter.items()}


def _settled(history: list[float], window: int = SETTLE_WINDOW, tol: float = SETTLE_TOL) -> bool:
    """True when the median of the last ``window`` values is within ``tol`` of the window before."""
    if len(history) < 2 * window:
        return False
    last = sorted(history[-window:])[window // 2]
    prev = sorted(history[-2 * window:-window])[window // 2]
    return abs(last - prev) <= tol * prev


# --------------------------------------------------------------------------- timers


def perf_counter_timer(clock: Callable[[], float] = time.perf_counter) -> Timer:
    """CPU timer: wall-clock time of ``iters`` back-to-back calls."""

    def timer(fn: Callable[[], Any], iters: int) -> float:
        t0 = clock()
        for _ in range(iters):
            fn()
        return clock() - t0

    timer.kind = "perf_counter"  # type: ignore[attr-defined]
    return timer


def cuda_event_timer(device: str) -> Timer:
    """CUDA timer: events recorded around the block, device synchronised before and after."""
    import torch

    def timer(fn: Callable[[], Any], iters: int) -> float:
        torch.cuda.synchronize(device)  # nothing queued from before leaks into this block
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()  # wait for the queued kernels: their time is the latency
        return start.elapsed_time(end) / 1000.0

    timer.kind = "cuda_events"  # type: ignore[attr-defined]
    return timer


def _default_timer(device: str) -> Timer:
    return cuda_event_timer(device) if device.startswith("cuda") else perf_counter_timer()


@contextmanager
def _gc_paused():
    """No garbage-collector pauses inside timed blocks (as :mod:`timeit` does)."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# --------------------------------------------------------------------------- main entry


def _prepare(model, device: str, dtype, channels_last: bool):
    import torch

    model.eval()
    model.to(device=device, dtype=dtype)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def _compile(label: str, model, x, timer: Timer) -> tuple[Any, float]:
    import torch

    if not hasattr(torch, "compile"):
        raise CaprobeError(f"torch {torch.__version__} has no torch.compile; upgrade to "
                           "torch>=2.0 or drop --compile")
    try:
        compiled = torch.compile(model)
        t0 = time.perf_counter()
        timer(lambda: compiled(x), 1)  # first call compiles (and synchronises on CUDA)
        return compiled, time.perf_counter() - t0
    except CaprobeError:
        raise
    except Exception as exc:  # noqa: BLE001 - any backend failure becomes a user-facing message
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CaprobeError(f"torch.compile failed for {label!r} ({type(exc).__name__}: "
                           f"{first[:200]}); drop --compile or install a working compiler "
                           "toolchain") from exc


def time_variants(
    models: Mapping[str, torch.nn.Module],
    *,
    batch: int,
    input_size: tuple[int, int] | int,
    device: str = "auto",
    dtype: str = "fp32",
    channels_last: bool = False,
    threads: int | None = None,
    min_time: float = 1.0,
    compile: bool = False,
    baseline: str | None = "none",
    progress: Progress | None = None,
    meta: Mapping[str, Mapping[str, Any]] | None = None,
    in_channels: int = 3,
    min_rounds: int = MIN_ROUNDS,
    target_block_ms: float = TARGET_BLOCK_MS,
    timer: Timer | None = None,
    seed: int = 0,
) -> list[LatencyResult]:
    """Time ``models`` (label -> module) interleaved on one input; one result per label.

    ``min_time`` is the timed budget per variant in seconds (warm-up comes on top, at most
    half as much again). ``baseline`` names the label the others are compared with; when it
    is ``None`` or not among the labels, ``overhead`` stays ``None``. ``meta[label]`` may give
    ``model`` and ``attn`` names for the record (defaults: the module's class name and the
    label); other keys are stored under ``env["meta"]``. ``progress(stage, fraction)`` is
    called with stage ``"compile"``, ``"warmup"`` or ``"measure"``. ``in_channels`` sets the
    input's channels (3 for images; e.g. 144 to time a single block). ``timer`` replaces the
    clock (tests); it runs ``fn`` ``iters`` times and returns seconds.

    The modules are changed in place (eval mode, device, dtype, memory format).
    """
    import torch

    if not models:
        raise CaprobeError("no models to time; pass at least one model variant")
    for label, m in models.items():
        if not isinstance(m, torch.nn.Module):
            raise CaprobeError(f"variant {label!r} is a {type(m).__name__}, not a "
                               "torch.nn.Module; pass built models")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise CaprobeError(f"batch size {batch!r} is invalid; use an integer >= 1")
    hw = _input_hw(input_size)
    if not (isinstance(min_time, (int, float)) and math.isfinite(min_time) and min_time > 0):
        raise CaprobeError(f"min time {min_time!r} is invalid; use a positive number of seconds "
                           "such as 1.0")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise CaprobeError(f"thread count {threads!r} is invalid; use an integer >= 1")
    if in_channels < 1 or min_rounds < 1 or target_block_ms <= 0:
        raise CaprobeError("in_channels, min_rounds and target_block_ms must be positive")
    dev = resolve_device(device)
    dkey = resolve_dtype(dtype, dev)
    tdtype = _torch_dtype(dkey)
    meta = meta or {}
    timer = timer or _default_timer(dev)
    target_s = target_block_ms / 1000.0
    labels = list(models)
    say = progress or (lambda stage, fraction: None)

    from caprobe.measure.environment import (
        collect_env,
        contention_warnings,
        load_average,
        other_runnable,
    )

    load_start = load_average()
    others_start = other_runnable() if dev == "cpu" else None
    # Move / cast the models before inference mode: parameters made inside it would be
    # inference tensors, which modules caching on ``tensor._version`` cannot use.
    with torch.no_grad():
        for label in labels:
            _prepare(models[label], dev, tdtype, channels_last)

    with torch_threads(threads), _gc_paused(), torch.inference_mode():
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(batch, in_channels, *hw, generator=gen).to(device=dev, dtype=tdtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)

        fns: dict[str, Callable[[], Any]] = {}
        compile_s: dict[str, float | None] = {}
        for i, label in enumerate(labels):
            m = models[label]
            if compile:
                say("compile", i / len(labels))
                m, compile_s[label] = _compile(label, m, x, timer)
            else:
                compile_s[label] = None
            fns[label] = (lambda mod: lambda: mod(x))(m)

        # calibration: untimed first calls, then single timed calls
        per_iter: dict[str, float] = {}
        for label in labels:
            fns[label]()
            fns[label]()
            per_iter[label] = min(timer(fns[label], 1) for _ in range(3))
        iters = _balanced_iters(per_iter, target_s)

        # warm-up, interleaved, until the block timings settle
        warm_hist: dict[str, list[float]] = {k: [] for k in labels}
        warm_spent = dict.fromkeys(labels, 0.0)
        warm_budget = 0.5 * min_time
        warm_rounds = 0
        settled = False
        while True:
            for label in labels:
                s = timer(fns[label], iters[label])
                warm_spent[label] += s
                warm_hist[label].append(s / iters[label])
            warm_rounds += 1
            settled = all(_settled(h) for h in warm_hist.values())
            spent = min(warm_spent.values())
            say("warmup", min(1.0, spent / warm_budget))
            if settled or spent >= warm_budget or warm_rounds >= MAX_ROUNDS:
                break
        settled_per_iter = {}
        for label in labels:
            tail = sorted(warm_hist[label][-SETTLE_WINDOW:])
            settled_per_iter[label] = tail[len(tail) // 2]
        iters = _balanced_iters(settled_per_iter, target_s)

        # measurement, interleaved: one block per variant per round
        samples: dict[str, list[float]] = {k: [] for k in labels}
        spent_s = dict.fromkeys(labels, 0.0)
        rounds = 0
        while True:
            for label in labels:
                s = timer(fns[label], iters[label])
                spent_s[label] += s
                samples[label].append(1000.0 * s / iters[label])
            rounds += 1
            spent = min(spent_s.values())
            say("measure", min(1.0, spent / min_time, rounds / min_rounds))
            if (spent >= min_time * (1 - 1e-9) and rounds >= min_rounds) or rounds >= MAX_ROUNDS:
                break

        env = collect_env(dev, threads=torch.get_num_threads() if dev == "cpu" else threads)
        recorded_threads = torch.get_num_threads() if dev == "cpu" else threads

    env.update(
        dtype=dkey,
        memory_format="channels_last" if channels_last else "contiguous",
        timer=getattr(timer, "kind", "custom"),
        order=labels,
        rounds=rounds,
        warmup_rounds=warm_rounds,
        warmup_settled=settled,
        target_block_ms=target_block_ms,
        min_time_s=float(min_time),
        load_avg_1m_start=load_start,
        load_avg_1m_end=env.get("load_avg_1m"),
        other_runnable_start=others_start,
        warnings=contention_warnings(dev, env["threads"], others_start),
    )
    for label in labels:
        if min(samples[label]) <= 0:
            raise CaprobeError(f"the clock reported no time passing for {label!r}; it is too "
                               "coarse for these blocks, so raise target_block_ms")
    has_base = baseline is not None and baseline in samples
    results = []
    for label in labels:
        summ = stats.summarize(samples[label])
        overhead = overhead_ci = None
        if has_base and label != baseline:
            point, lo, hi = stats.ratio_ci(samples[baseline], samples[label])
            overhead = point
            overhead_ci = None if math.isnan(lo) else (lo, hi)
        info = dict(meta.get(label, {}))
        rec_env = dict(env, block_iters=iters[label],
                       per_iter_calibration_ms=1000 * per_iter[label])
        extra = {k: v for k, v in info.items() if k not in ("model", "attn")}
        if extra:
            rec_env["meta"] = extra
        results.append(LatencyResult(
            label=label,
            model=str(info.get("model", type(models[label]).__name__)),
            attn=str(info.get("attn", label)),
            batch=batch,
            input_size=hw,
            device=dev,
            dtype=dkey,
            channels_last=bool(channels_last),
            threads=recorded_threads,
            median_ms=summ.median,
            iqr_ms=summ.iqr,
            p90_ms=summ.p90,
            cv=summ.cv,
            n=summ.n,
            images_per_s=batch / (summ.median / 1000.0),
            overhead=overhead,
            overhead_ci=overhead_ci,
            samples_ms=[float(v) for v in samples[label]],
            compile_time_s=compile_s[label],
            env=rec_env,
        ))
    return results
