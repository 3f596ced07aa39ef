"""caprobe.measure.latency with an injected clock and toy modules: no wall-clock thresholds."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from caprobe.errors import CaprobeError
from caprobe.io import to_jsonable
from caprobe.measure import latency
from caprobe.measure.latency import (
    LatencyResult,
    _settled,
    block_iters,
    cuda_event_timer,
    resolve_device,
    resolve_dtype,
    time_variants,
)


class Tagged(nn.Module):
    """A tiny module that logs its tag on every forward call."""

    def __init__(self, tag: str, log: list[str]):
        super().__init__()
        self.tag = tag
        self.log = log
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        self.log.append(self.tag)
        return self.conv(x)


class FakeTimer:
    """Runs ``fn`` once (to learn which variant it is) and returns a scripted duration.

    ``cost(tag, call_index)`` gives seconds per iteration; ``calls`` records (tag, iters).
    """

    kind = "fake"

    def __init__(self, log: list[str], cost):
        self.log = log
        self.cost = cost
        self.calls: list[tuple[str, int]] = []

    def __call__(self, fn, iters):
        fn()
        tag = self.log[-1]
        self.calls.append((tag, iters))
        return iters * self.cost(tag, len(self.calls))


def toy(*tags):
    log: list[str] = []
    return {t: Tagged(t, log) for t in tags}, log


def run(models, log, cost, **kw):
    timer = FakeTimer(log, cost)
    kw.setdefault("batch", 1)
    kw.setdefault("input_size", 8)
    kw.setdefault("device", "cpu")
    kw.setdefault("min_time", 0.1)
    return time_variants(models, timer=timer, **kw), timer


# --------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("per_iter", "expected"),
    [(0.1e-3, 50), (1e-3, 5), (4e-3, 2), (5e-3, 1), (0.2, 1), (1e-9, 10_000), (0.0, 10_000)],
)
def test_block_iters(per_iter, expected):
    assert block_iters(per_iter, 5e-3) == expected


def test_balanced_iters_equalise_block_duration():
    got = latency._balanced_iters({"a": 0.1e-3, "b": 1e-3, "c": 2e-3}, 5e-3)
    assert got == {"a": 50, "b": 5, "c": 3}
    got = latency._balanced_iters({"a": 1e-3, "b": 30e-3}, 5e-3)
    assert got == {"a": 30, "b": 1}


def test_settled_needs_two_windows_and_small_change():
    assert not _settled([1.0] * 5)
    assert _settled([1.0] * 6)
    assert not _settled([2.0, 2.0, 2.0, 1.0, 1.0, 1.0])  # still getting faster
    assert _settled([5.0, 2.0, 1.0, 1.0, 1.02, 0.99, 1.01])


# --------------------------------------------------------------------------- method


def test_variants_are_interleaved_round_by_round():
    models, log = toy("none", "se", "ca")
    results, timer = run(models, log, lambda tag, i: 1e-3)
    rounds = results[0].env["rounds"]
    warm = results[0].env["warmup_rounds"]
    measured = [tag for tag, _ in timer.calls[-3 * rounds:]]
    assert measured == ["none", "se", "ca"] * rounds
    warmup = [tag for tag, _ in timer.calls[-3 * (rounds + warm):-3 * rounds]]
    assert warmup == ["none", "se", "ca"] * warm
    assert [r.label for r in results] == ["none", "se", "ca"]
    assert all(r.n == rounds for r in results)


def test_block_sizing_and_per_iteration_ms():
    models, log = toy("none", "slow")
    cost = {"none": 0.25e-3, "slow": 20e-3}
    results, timer = run(models, log, lambda tag, i: cost[tag], min_time=0.2)
    by = {r.label: r for r in results}
    # blocks last as long as the slowest single call: 80 x 0.25 ms = 1 x 20 ms
    assert by["none"].env["block_iters"] == 80
    assert by["slow"].env["block_iters"] == 1
    assert by["none"].median_ms == pytest.approx(0.25)
    assert by["slow"].median_ms == pytest.approx(20.0)
    assert by["none"].images_per_s == pytest.approx(4000.0)
    # the budget is per variant: 0.2 s of 20 ms blocks = 10 rounds, for both
    assert by["slow"].n == by["none"].n == by["slow"].env["rounds"] == 10


def test_min_rounds_when_budget_is_spent_early():
    models, log = toy("none", "x")
    results, _ = run(models, log, lambda tag, i: 0.5, min_time=0.01, min_rounds=7)
    assert all(r.n == 7 for r in results)


def test_budget_counts_timed_seconds():
    models, log = toy("none")
    results, _ = run(models, log, lambda tag, i: 1e-3, min_time=0.1)
    # blocks of 5 x 1 ms: 0.1 s needs 20 rounds
    assert results[0].n == 20


def test_overhead_is_paired_and_cancels_drift():
    models, log = toy("none", "ca")

    def cost(tag, i):  # the machine slows down steadily; ca always costs 1.5x
        drift = 1.0 + 0.01 * i
        return 1e-3 * drift * (1.5 if tag == "ca" else 1.0)

    results, _ = run(models, log, cost, min_time=0.2)
    base, ca = results
    assert base.overhead is None and base.overhead_ci is None
    # pairs are taken back to back: drift between the two calls of a round is 1 call
    assert ca.overhead == pytest.approx(1.5, rel=0.02)
    lo, hi = ca.overhead_ci
    assert lo <= ca.overhead <= hi
    assert hi - lo < 0.02


def test_clock_reporting_no_time_does_not_hang(monkeypatch):
    monkeypatch.setattr(latency, "MAX_ROUNDS", 50)
    models, log = toy("none")
    with pytest.raises(CaprobeError, match="no time passing"):
        run(models, log, lambda tag, i: 0.0)


def test_no_baseline_means_no_overhead():
    models, log = toy("a", "b")
    results, _ = run(models, log, lambda tag, i: 1e-3)  # default baseline "none" is absent
    assert all(r.overhead is None for r in results)
    models, log = toy("a", "b")
    results, _ = run(models, log, lambda tag, i: 1e-3 * (2 if tag == "b" else 1), baseline="a")
    assert results[1].overhead == pytest.approx(2.0)


def test_warmup_waits_for_timings_to_settle():
    models, log = toy("none")
    # first 20 calls are slow and getting faster, then flat
    results, _ = run(models, log, lambda tag, i: 1e-3 * (1 + max(0, 20 - i)), min_time=1.0)
    env = results[0].env
    assert env["warmup_settled"] is True
    assert env["warmup_rounds"] > 6
    assert results[0].median_ms == pytest.approx(1.0)


def test_gc_paused_while_timing_and_restored():
    import gc

    states = []
    models, log = toy("none")
    timer = FakeTimer(log, lambda tag, i: states.append(gc.isenabled()) or 1e-3)
    assert gc.isenabled()
    time_variants(models, batch=1, input_size=4, device="cpu", min_time=0.01, timer=timer)
    assert states and not any(states)
    assert gc.isenabled()


def test_threads_set_recorded_and_restored():
    before = torch.get_num_threads()
    seen = []
    models, log = toy("none")
    timer = FakeTimer(log, lambda tag, i: seen.append(torch.get_num_threads()) or 1e-3)
    results = time_variants(models, batch=2, input_size=(8, 6), device="cpu", threads=1,
                            min_time=0.05, timer=timer)
    assert set(seen) == {1}
    assert torch.get_num_threads() == before
    r = results[0]
    assert r.threads == 1 and r.env["threads"] == 1
    assert r.batch == 2 and r.input_size == (8, 6)


def test_record_fields_env_meta_and_json():
    models, log = toy("none", "ca")
    meta = {"none": {"model": "mobilenetv2", "attn": "none"},
            "ca": {"model": "mobilenetv2", "attn": "ca(r=32)", "width": 0.5}}
    results, _ = run(models, log, lambda tag, i: 1e-3, meta=meta)
    r = results[1]
    assert isinstance(r, LatencyResult)
    assert (r.label, r.model, r.attn) == ("ca", "mobilenetv2", "ca(r=32)")
    assert r.env["meta"] == {"width": 0.5}
    assert "meta" not in results[0].env
    assert r.device == "cpu" and r.dtype == "fp32" and r.channels_last is False
    assert r.compile_time_s is None and len(r.samples_ms) == r.n
    for key in ("torch", "caprobe", "cpu_model", "threads", "dtype", "memory_format",
                "timer", "rounds", "device_name", "python", "order"):
        assert key in r.env, key
    assert r.env["timer"] == "fake" and r.env["order"] == ["none", "ca"]
    data = json.loads(json.dumps(to_jsonable(results)))
    assert data[1]["overhead_ci"] == [pytest.approx(1.0), pytest.approx(1.0)]
    assert data[0]["input_size"] == [8, 8]


def test_default_model_and_attn_names():
    models, log = toy("x")
    results, _ = run(models, log, lambda tag, i: 1e-3)
    assert (results[0].model, results[0].attn) == ("Tagged", "x")


def test_progress_stages():
    models, log = toy("none")
    stages = []
    run(models, log, lambda tag, i: 1e-3, progress=lambda s, f: stages.append((s, f)))
    names = [s for s, _ in stages]
    assert names[0] == "warmup" and names[-1] == "measure"
    assert stages[-1][1] == pytest.approx(1.0)
    assert all(0.0 <= f <= 1.0 for _, f in stages)


def test_inputs_made_once_eval_mode_no_grad():
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append((id(x), self.training, torch.is_inference_mode_enabled(), x.shape))
            return x

    m = Probe().train()
    time_variants({"none": m}, batch=3, input_size=5, device="cpu", min_time=0.01,
                  in_channels=7)
    assert len({s[0] for s in seen}) == 1
    assert all(not s[1] and s[2] for s in seen)
    assert seen[0][3] == (3, 7, 5, 5)


# --------------------------------------------------------------------------- real clock, tiny


def test_real_clock_bf16_channels_last_smoke():
    models = {"none": nn.Conv2d(3, 4, 3), "more": nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())}
    results = time_variants(models, batch=1, input_size=8, device="cpu", dtype="bf16",
                            channels_last=True, min_time=0.02, min_rounds=6)
    for r in results:
        assert r.dtype == "bf16" and r.channels_last and r.env["memory_format"] == "channels_last"
        assert r.n >= 6 and all(s > 0 for s in r.samples_ms)
        assert r.env["timer"] == "perf_counter"
    assert results[1].overhead is not None and results[1].overhead_ci is not None
    assert models["none"].weight.dtype == torch.bfloat16


class VersionCached(nn.Module):
    """Reads ``weight._version``, which inference tensors lack: the caller's model must stay
    usable outside inference mode (say, for more training) after it was timed."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        _ = self.conv.weight._version  # fails on inference tensors
        return self.conv(x)


def test_cast_parameters_are_not_inference_tensors():
    m = VersionCached()
    time_variants({"none": m}, batch=1, input_size=4, device="cpu", dtype="bf16",
                  channels_last=True, min_time=0.01, min_rounds=2)
    assert all(not p.is_inference() for p in m.parameters())
    assert m.conv.weight.dtype == torch.bfloat16


def test_compile_time_reported_apart(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda m: m)
    models, log = toy("none")
    results, timer = run(models, log, lambda tag, i: 1e-3, compile=True)
    assert results[0].compile_time_s is not None and results[0].compile_time_s >= 0


def test_compile_failure_is_a_clear_error(monkeypatch):
    def broken(m):
        raise RuntimeError("no C compiler found\nmore details")

    monkeypatch.setattr(torch, "compile", broken)
    models, log = toy("none")
    with pytest.raises(CaprobeError, match="torch.compile failed.*no C compiler found"):
        run(models, log, lambda tag, i: 1e-3, compile=True)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch": 0}, "batch size"),
        ({"batch": 2.0}, "batch size"),
        ({"device": "tpu"}, "unknown device"),
        ({"device": "cuda"}, "no CUDA GPU"),
        ({"device": "cuda:x"}, "malformed"),
        ({"dtype": "fp16"}, "only supported on CUDA"),
        ({"dtype": "int8"}, "unsupported dtype"),
        ({"input_size": 0}, "input size"),
        ({"input_size": (1, 2, 3)}, "input size"),
        ({"min_time": 0}, "min time"),
        ({"threads": 0}, "thread count"),
    ],
)
def test_bad_input(monkeypatch, kwargs, match):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = {"batch": 1, "input_size": 8, "device": "cpu", "min_time": 0.01, **kwargs}
    with pytest.raises(CaprobeError, match=match):
        time_variants({"none": nn.Identity()}, **args)


def test_empty_and_non_module():
    with pytest.raises(CaprobeError, match="no models"):
        time_variants({}, batch=1, input_size=8)
    with pytest.raises(CaprobeError, match="not a torch.nn.Module"):
        time_variants({"x": lambda t: t}, batch=1, input_size=8)


# --------------------------------------------------------------------------- CUDA branching


def test_auto_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == "cuda"
    assert resolve_device("CUDA:0") == "cuda:0"
    with pytest.raises(CaprobeError, match="does not exist"):
        resolve_device("cuda:1")


def test_dtype_rules(monkeypatch):
    assert resolve_dtype("float32", "cpu") == "fp32"
    assert resolve_dtype("bf16", "cpu") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_dtype("fp16", "cuda") == "fp16"
    assert resolve_dtype("bf16", "cuda:0") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    with pytest.raises(CaprobeError, match="bf16"):
        resolve_dtype("bf16", "cuda")


def test_default_timer_branches(monkeypatch):
    assert latency._default_timer("cpu").kind == "perf_counter"
    assert latency._default_timer("cuda:0").kind == "cuda_events"


def test_cuda_event_timer_synchronises(monkeypatch):
    events = []

    class FakeEvent:
        def __init__(self, enable_timing=False):
            assert enable_timing
            self.name = f"e{len([e for e in events if e[0] == 'new'])}"
            events.append(("new", self.name))

        def record(self):
            events.append(("record", self.name))

        def synchronize(self):
            events.append(("sync", self.name))

        def elapsed_time(self, other):
            return 12.5  # milliseconds, like torch

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize",
                        lambda device=None: events.append(("device_sync", device)))
    timer = cuda_event_timer("cuda:0")
    seconds = timer(lambda: events.append(("call", None)), 3)
    assert seconds == pytest.approx(0.0125)
    assert events == [("device_sync", "cuda:0"), ("new", "e0"), ("new", "e1"),
                      ("record", "e0"), ("call", None), ("call", None), ("call", None),
                      ("record", "e1"), ("sync", "e1")]


def test_cuda_env_is_recorded(monkeypatch):
    from caprobe.measure import environment

    class Props:
        total_memory = 80 * 2**30
        major, minor = 9, 0

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: Props())
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "Fake H100")
    env = environment.collect_env("cuda", threads=None)
    assert env["device_name"] == "Fake H100" and env["gpu_capability"] == "9.0"
    assert env["gpu_memory_gib"] == 80.0 and env["cpu_model"]


# --------------------------------------------------------------------------- contention


def test_contention_warnings(monkeypatch):
    from caprobe.measure import environment

    monkeypatch.setattr(environment, "usable_cpus", lambda: 2)
    assert environment.contention_warnings("cpu", 2, 0.0) == []
    assert environment.contention_warnings("cpu", 1, 1.0) == []
    assert environment.contention_warnings("cuda", 8, 9.0) == []
    (busy,) = environment.contention_warnings("cpu", 2, 1.0)
    assert "busy" in busy and "1 other runnable" in busy
    (over,) = environment.contention_warnings("cpu", 4, 0.0)
    assert "4 threads on 2 usable CPUs" in over


def test_busy_machine_is_flagged_in_env(monkeypatch):
    from caprobe.measure import environment

    monkeypatch.setattr(environment, "usable_cpus", lambda: 2)
    monkeypatch.setattr(environment, "other_runnable", lambda: 3.0)
    models, log = toy("none")
    results, _ = run(models, log, lambda tag, i: 1e-3, threads=1)
    env = results[0].env
    assert env["other_runnable_start"] == 3.0 and len(env["warnings"]) == 1
    monkeypatch.setattr(environment, "other_runnable", lambda: 0.0)
    models, log = toy("none")
    results, _ = run(models, log, lambda tag, i: 1e-3, threads=1)
    assert results[0].env["warnings"] == []


def test_other_runnable_reads_proc_loadavg():
    from caprobe.measure import environment

    value = environment.other_runnable(samples=2, interval_s=0.0)
    assert value is None or value >= 0


def test_the_deployed_form_is_timed_by_default_and_every_record_says_which():
    import caprobe
    from caprobe.attention import AttentionModule

    seen = []

    def spy(module, args, out):
        seen.append(any(isinstance(m, AttentionModule) for m in module.modules()))

    models = {f: caprobe.build_model("mobilenetv2", attn="ca", width=0.25, num_classes=3,
                                     profile="cifar", seed=0) for f in ("deployed", "paper")}
    for form, model in models.items():
        hook = model.register_forward_hook(spy)
        seen.clear()
        (result,) = time_variants({"ca": model}, batch=1, input_size=8, device="cpu",
                                  min_time=0.01, min_rounds=2, form=form)
        hook.remove()
        assert result.form == form
        assert to_jsonable(result)["form"] == form
        # what ran: the model as built, or a deployed copy without attention modules (the
        # copy carries the hook along)
        assert seen and all(seen) if form == "paper" else seen and not any(seen)
        assert any(isinstance(m, AttentionModule) for m in model.modules())  # untouched
    with pytest.raises(CaprobeError, match="unknown form 'fast'"):
        time_variants({"ca": models["paper"]}, batch=1, input_size=8, device="cpu",
                      min_time=0.01, form="fast")
