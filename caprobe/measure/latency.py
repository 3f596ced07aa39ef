"""Latency you can trust: interleaved, paired timing of model variants on CPU or CUDA.

Method
------
1. Every model is put in eval mode, moved to the device / dtype / memory format once, made
   into its deployed form (:func:`caprobe.deploy`, ``form="deployed"``, the default) or kept
   as built (``form="paper"``: the trainable form, the papers' math), and (optionally)
   compiled; the first compiled call is timed apart as ``compile_time_s``.
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

import dataclasses
import gc
import math
import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from caprobe import stats
from caprobe.errors import CaprobeError, error_line, input_hw, require_positive
from caprobe.runtime import keep_freed_memory, resolve_device, torch_threads
from caprobe.runtimes import INT8_RUNTIMES, backend, check_runtime, graph_target

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "DTYPES",
    "FORMS",
    "LatencyResult",
    "block_iters",
    "resolve_device",
    "resolve_dtype",
    "time_variants",
]

DTYPES = ("fp32", "bf16", "fp16")
#: What is timed: the deployed form (:func:`caprobe.deploy`) or the model as built.
FORMS = ("deployed", "paper")
_DTYPE_ALIASES = {
    "fp32": "fp32", "float32": "fp32", "float": "fp32",
    "bf16": "bf16", "bfloat16": "bf16",
    "fp16": "fp16", "float16": "fp16", "half": "fp16",
}

TARGET_BLOCK_MS = 5.0
#: random batches that calibrate int8 timing runs (scales only; the kernels are the same)
INT8_TIMING_CALIBRATION = 4
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
    form: str = "deployed"  # "deployed" (caprobe.deploy(model)) or "paper" (trainable form)
    #: where it ran: "eager" (PyTorch) or an exported runtime (``caprobe.runtimes``); for an
    #: exported one, ``env["runtime"]`` holds the export and load times, the first call, the
    #: settings the runtime reports it applied, and its op coverage
    runtime: str = "eager"


# --------------------------------------------------------------------------- validation


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
        raise CaprobeError(f"torch.compile failed for {label!r} ({error_line(exc, 200)}); "
                           "drop --compile or install a working compiler toolchain") from exc


@dataclass(frozen=True)
class TimingOptions:
    """How :func:`time_variants` times, checked once by :meth:`validated` (device and dtype
    resolved, the input size as (H, W))."""

    batch: int
    input_size: tuple[int, int] | int
    device: str = "auto"
    dtype: str = "fp32"
    channels_last: bool = False
    threads: int | None = None
    min_time: float = 1.0
    compile: bool = False
    form: str = "deployed"
    runtime: str = "eager"
    int8: bool = False
    baseline: str | None = "none"
    in_channels: int = 3
    min_rounds: int = MIN_ROUNDS
    target_block_ms: float = TARGET_BLOCK_MS
    seed: int = 0

    def validated(self) -> TimingOptions:
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1:
            raise CaprobeError(f"batch size {self.batch!r} is invalid; use an integer >= 1")
        hw = input_hw(self.input_size)
        require_positive(self.min_time, "min time (seconds)")
        threads = self.threads
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                    or threads < 1):
            raise CaprobeError(f"thread count {threads!r} is invalid; use an integer >= 1")
        if self.form not in FORMS:
            raise CaprobeError(f"unknown form {self.form!r}; choose one of {', '.join(FORMS)}")
        if self.in_channels < 1 or self.min_rounds < 1 or self.target_block_ms <= 0:
            raise CaprobeError("in_channels, min_rounds and target_block_ms must be positive")
        device = resolve_device(self.device)
        dtype = resolve_dtype(self.dtype, device)
        runtime = check_runtime(self.runtime)
        if runtime != "eager":
            if device != "cpu" or dtype != "fp32" or self.channels_last or self.compile:
                raise CaprobeError(f"runtime {runtime} is timed on the CPU in fp32 with its own "
                                   "memory layout; drop --device/--dtype/--channels-last/"
                                   "--compile for it (or time --runtime eager)")
            backend(runtime)  # a missing extra fails here, before any model is touched
        if self.int8 and runtime == "eager":
            raise CaprobeError("int8 timing is for the exported runtimes; add --runtime "
                               f"{' or '.join(INT8_RUNTIMES)}")
        return dataclasses.replace(self, input_size=hw, device=device, dtype=dtype,
                                   runtime=runtime)


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
    form: str = "deployed",
    runtime: str = "eager",
    int8: bool = False,
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
    clock (tests); it runs ``fn`` ``iters`` times and returns seconds. ``form``: time
    ``caprobe.deploy(model)`` ("deployed") or the model as given ("paper"); every record says
    which form it timed (a model deployed beforehand counts as deployed). ``runtime``: time
    in PyTorch eager or in an exported runtime (``caprobe.runtimes``; CPU, fp32): each variant
    is exported in its graph form (``caprobe.deploy(model, target=graph_target(runtime,
    int8))``: for ONNX Runtime in fp32 on x86 the NCHWc form, see
    :func:`caprobe.runtimes.graph_target`; the record's ``deploy_target`` says which; None for
    models timed as given) or, with
    ``form="paper"``, in its papers' equations as plain operators (what the official code
    exports; :func:`caprobe.attention.reference.reference_form`), loaded with the same thread
    count, and its export, load and first call are timed apart. ``int8``: each variant is
    quantised statically first, calibrated on :data:`INT8_TIMING_CALIBRATION` random batches
    (latency only: the scales do not change the kernels; accuracy needs trained models and
    real images, ``caprobe export RUN --int8``).

    The phases, each its own function: prepare (device, dtype, memory format, deploy,
    compile), calibrate, warm up, measure rounds, build records. The modules are changed in
    place (eval mode, device, dtype, memory format); the deployed forms are copies.
    """
    import torch

    if not models:
        raise CaprobeError("no models to time; pass at least one model variant")
    for label, m in models.items():
        if not isinstance(m, torch.nn.Module):
            raise CaprobeError(f"variant {label!r} is a {type(m).__name__}, not a "
                               "torch.nn.Module; pass built models")
    opts = TimingOptions(batch=batch, input_size=input_size, device=device, dtype=dtype,
                         channels_last=channels_last, threads=threads, min_time=min_time,
                         compile=compile, form=form, runtime=runtime, int8=int8,
                         baseline=baseline,
                         in_channels=in_channels, min_rounds=min_rounds,
                         target_block_ms=target_block_ms, seed=seed).validated()
    timer = timer or _default_timer(opts.device)
    keep_freed_memory()
    say = progress or (lambda stage, fraction: None)

    from caprobe.measure.environment import collect_env, load_average, other_runnable

    load_start = load_average()
    others_start = other_runnable() if opts.device == "cpu" else None
    timed = _prepare_all(models, opts)
    with torch_threads(opts.threads), _gc_paused(), torch.inference_mode():
        if opts.runtime == "eager":
            fns, compile_s = _calls(timed, opts, timer, say)
            loaded: dict[str, dict[str, Any]] = {}
        else:
            fns, loaded = _runtime_calls(timed, opts, say)
            compile_s = dict.fromkeys(fns)
        per_iter = _calibrate(fns, timer)
        iters, warm = _warm_up(fns, per_iter, opts, timer, say)
        samples, rounds = _measure(fns, iters, opts, timer, say)
        threads_used = torch.get_num_threads() if opts.device == "cpu" else opts.threads
        env = collect_env(opts.device, threads=threads_used)
    env.update(_session_env(opts, timer, list(models), rounds, warm, load_start, others_start,
                            env))
    return _records(models, timed, opts, samples, iters, per_iter, compile_s, env,
                    threads_used, meta or {}, loaded)


def _prepare_all(models: Mapping[str, Any], opts: TimingOptions) -> dict[str, Any]:
    """Every model on the device, dtype and memory format, in eval mode; then the form to
    time: ``caprobe.deploy(model)`` (a copy) or the model itself. Outside inference mode, so
    the caller's parameters never become inference tensors."""
    import torch

    from caprobe.attention import AttentionModule
    from caprobe.attention.reference import reference_form
    from caprobe.deployment import deploy

    with torch.no_grad():
        for m in models.values():
            _prepare(m, opts.device, _torch_dtype(opts.dtype), opts.channels_last)
        if opts.runtime != "eager":
            target = _deploy_target(opts)
            return {label: deploy(m, target=target) if target is not None
                    else reference_form(m) for label, m in models.items()}
        # a model without attention modules is its own deployed form: timed as it is
        return {label: deploy(m) if opts.form == "deployed" and any(
            isinstance(sub, AttentionModule) for sub in m.modules()) else m
            for label, m in models.items()}


def _calls(timed: Mapping[str, Any], opts: TimingOptions, timer: Timer,
           say: Progress) -> tuple[dict[str, Callable[[], Any]], dict[str, float | None]]:
    """One input (fixed seed) and a call per variant (compiled first with ``compile``, its
    first call timed apart)."""
    import torch

    gen = torch.Generator().manual_seed(opts.seed)
    x = torch.randn(opts.batch, opts.in_channels, *opts.input_size, generator=gen).to(
        device=opts.device, dtype=_torch_dtype(opts.dtype))
    if opts.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    fns: dict[str, Callable[[], Any]] = {}
    compile_s: dict[str, float | None] = {}
    for i, (label, m) in enumerate(timed.items()):
        compile_s[label] = None
        if opts.compile:
            say("compile", i / len(timed))
            m, compile_s[label] = _compile(label, m, x, timer)
        fns[label] = (lambda mod: lambda: mod(x))(m)
    return fns, compile_s


def _deploy_target(opts: TimingOptions) -> str | None:
    """The :func:`caprobe.deploy` target of an exported runtime's variants when their deployed
    forms are timed (:func:`caprobe.runtimes.graph_target`); None when they are timed as
    given (``form="paper"``) or in eager."""
    if opts.runtime == "eager" or opts.form != "deployed":
        return None
    return graph_target(opts.runtime, opts.int8)


def _runtime_calls(timed: Mapping[str, Any], opts: TimingOptions, say: Progress
                   ) -> tuple[dict[str, Callable[[], Any]], dict[str, dict[str, Any]]]:
    """Each variant exported for ``opts.runtime`` into a temporary folder and loaded with the
    thread count (the torch default when none is given), one call bound to one input (fixed
    seed); ``{label: export record, load time, first call, settings}`` beside."""
    import tempfile

    import torch

    from caprobe.runtimes import export, load

    threads = opts.threads or torch.get_num_threads()
    gen = torch.Generator().manual_seed(opts.seed)
    x = torch.randn(opts.batch, opts.in_channels, *opts.input_size, generator=gen)
    calibration = [torch.randn(x.shape, generator=gen) for _ in range(
        INT8_TIMING_CALIBRATION)] if opts.int8 else None
    fns: dict[str, Callable[[], Any]] = {}
    loaded: dict[str, dict[str, Any]] = {}
    suffix = backend(opts.runtime).SUFFIX
    target = _deploy_target(opts)  # what _prepare_all deployed, for the records
    with tempfile.TemporaryDirectory(prefix="caprobe-runtime-") as tmp:
        for i, (label, m) in enumerate(timed.items()):
            say("export", i / len(timed))
            with torch.inference_mode(False):
                exported = export(m, x, f"{tmp}/{i}{suffix}", opts.runtime, calibration)
            t0 = time.perf_counter()
            session = load(exported.path, opts.runtime, threads)
            load_s = time.perf_counter() - t0
            fns[label] = session.bind(x)
            t0 = time.perf_counter()
            fns[label]()
            loaded[label] = {"export_s": exported.export_s, "load_s": load_s,
                             "first_call_ms": 1000 * (time.perf_counter() - t0),
                             "bytes": exported.bytes, "coverage": exported.coverage,
                             "precision": exported.precision,
                             "deploy_target": target,
                             "settings": session.settings, "session": session}
    return fns, loaded


def _calibrate(fns: Mapping[str, Callable[[], Any]], timer: Timer) -> dict[str, float]:
    """Seconds per call of each variant: two untimed calls, then the best of three single
    timed calls."""
    per_iter: dict[str, float] = {}
    for label, fn in fns.items():
        fn()
        fn()
        per_iter[label] = min(timer(fn, 1) for _ in range(3))
    return per_iter


@dataclass
class _WarmUp:
    rounds: int
    settled: bool


def _warm_up(fns: Mapping[str, Callable[[], Any]], per_iter: Mapping[str, float],
             opts: TimingOptions, timer: Timer, say: Progress) -> tuple[dict[str, int], _WarmUp]:
    """Interleaved rounds until every variant's block timings settle (or half of
    ``min_time`` per variant is spent); returns the block sizes re-derived from the settled
    timings."""
    target_s = opts.target_block_ms / 1000.0
    iters = _balanced_iters(per_iter, target_s)
    history: dict[str, list[float]] = {k: [] for k in fns}
    spent_s = dict.fromkeys(fns, 0.0)
    budget = 0.5 * opts.min_time
    rounds, settled = 0, False
    while True:
        for label, fn in fns.items():
            s = timer(fn, iters[label])
            spent_s[label] += s
            history[label].append(s / iters[label])
        rounds += 1
        settled = all(_settled(h) for h in history.values())
        spent = min(spent_s.values())
        say("warmup", min(1.0, spent / budget))
        if settled or spent >= budget or rounds >= MAX_ROUNDS:
            break
    settled_per_iter = {}
    for label, h in history.items():
        tail = sorted(h[-SETTLE_WINDOW:])
        settled_per_iter[label] = tail[len(tail) // 2]
    return _balanced_iters(settled_per_iter, target_s), _WarmUp(rounds, settled)


def _measure(fns: Mapping[str, Callable[[], Any]], iters: Mapping[str, int],
             opts: TimingOptions, timer: Timer,
             say: Progress) -> tuple[dict[str, list[float]], int]:
    """Interleaved rounds, one block per variant each, until every variant has ``min_time``
    seconds of timed blocks and ``min_rounds`` rounds are done; samples in ms per call."""
    samples: dict[str, list[float]] = {k: [] for k in fns}
    spent_s = dict.fromkeys(fns, 0.0)
    rounds = 0
    while True:
        for label, fn in fns.items():
            s = timer(fn, iters[label])
            spent_s[label] += s
            samples[label].append(1000.0 * s / iters[label])
        rounds += 1
        spent = min(spent_s.values())
        say("measure", min(1.0, spent / opts.min_time, rounds / opts.min_rounds))
        if (spent >= opts.min_time * (1 - 1e-9) and rounds >= opts.min_rounds) \
                or rounds >= MAX_ROUNDS:
            break
    for label, values in samples.items():
        if min(values) <= 0:
            raise CaprobeError(f"the clock reported no time passing for {label!r}; it is too "
                               "coarse for these blocks, so raise target_block_ms")
    return samples, rounds


def _session_env(opts: TimingOptions, timer: Timer, labels: list[str], rounds: int,
                 warm: _WarmUp, load_start: float | None, others_start: float | None,
                 env: dict[str, Any]) -> dict[str, Any]:
    """How this timing session ran, for every record's ``env``."""
    from caprobe.measure.environment import contention_warnings

    return dict(
        dtype="int8" if opts.int8 else opts.dtype,
        memory_format="channels_last" if opts.channels_last else "contiguous",
        timer=getattr(timer, "kind", "custom"),
        order=labels,
        rounds=rounds,
        warmup_rounds=warm.rounds,
        warmup_settled=warm.settled,
        target_block_ms=opts.target_block_ms,
        min_time_s=float(opts.min_time),
        load_avg_1m_start=load_start,
        load_avg_1m_end=env.get("load_avg_1m"),
        other_runnable_start=others_start,
        warnings=contention_warnings(opts.device, env["threads"], others_start),
    )


def _records(models: Mapping[str, Any], timed: Mapping[str, Any], opts: TimingOptions,
             samples: Mapping[str, list[float]], iters: Mapping[str, int],
             per_iter: Mapping[str, float], compile_s: Mapping[str, float | None],
             env: dict[str, Any], threads: int | None,
             meta: Mapping[str, Mapping[str, Any]],
             loaded: Mapping[str, dict[str, Any]]) -> list[LatencyResult]:
    """One :class:`LatencyResult` per label: summary statistics, the paired overhead against
    the baseline with its interval, and the environment."""
    has_base = opts.baseline is not None and opts.baseline in samples
    results = []
    for label in models:
        summ = stats.summarize(samples[label])
        overhead = overhead_ci = None
        if has_base and label != opts.baseline:
            point, lo, hi = stats.ratio_ci(samples[opts.baseline], samples[label])
            overhead = point
            overhead_ci = None if math.isnan(lo) else (lo, hi)
        info = dict(meta.get(label, {}))
        rec_env = dict(env, block_iters=iters[label],
                       per_iter_calibration_ms=1000 * per_iter[label])
        extra = {k: v for k, v in info.items() if k not in ("model", "attn")}
        if extra:
            rec_env["meta"] = extra
        if label in loaded:
            rec_env["runtime"] = {k: v for k, v in loaded[label].items() if k != "session"}
        deployed = opts.form == "deployed" or getattr(timed[label], "deployed", False)
        results.append(LatencyResult(
            label=label,
            model=str(info.get("model", type(models[label]).__name__)),
            attn=str(info.get("attn", label)),
            batch=opts.batch,
            input_size=opts.input_size,
            device=opts.device,
            dtype="int8" if opts.int8 else opts.dtype,
            channels_last=bool(opts.channels_last),
            threads=threads,
            median_ms=summ.median,
            iqr_ms=summ.iqr,
            p90_ms=summ.p90,
            cv=summ.cv,
            n=summ.n,
            images_per_s=opts.batch / (summ.median / 1000.0),
            overhead=overhead,
            overhead_ci=overhead_ci,
            samples_ms=[float(v) for v in samples[label]],
            compile_time_s=compile_s[label],
            env=rec_env,
            form="deployed" if deployed else "paper",
            runtime=opts.runtime,
        ))
    return results
