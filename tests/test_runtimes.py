"""Exported runtimes (ONNX Runtime, ExecuTorch-XNNPACK, OpenVINO): round trips equal eager
PyTorch for every spec and both backbones, the op coverage is recorded (every op of the graph
forms delegated to XNNPACK but CBAM's channel pools), the thread settings are read back, and
bad requests fail with one line. A runtime whose extra is missing skips with the reason."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest
import torch
from test_deploy import SPECS, _randomize
from torch import nn

import caprobe
from caprobe import attention, runtimes
from caprobe.errors import CaprobeError


def _available(name: str) -> bool:
    try:
        importlib.import_module(runtimes.RUNTIMES[name][2])
    except ImportError:
        return False
    return True


RUNTIMES = [pytest.param(name, marks=pytest.mark.skipif(
    not _available(name), reason=f"the {runtimes.RUNTIMES[name][1]} extra is not installed"))
    for name in runtimes.RUNTIMES]


class _Block(nn.Module):
    """One attention module as a model: export its graph form alone."""

    def __init__(self, spec: str, channels: int) -> None:
        super().__init__()
        self.attn = attention.build(spec, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x)


def _round_trip(model: nn.Module, x: torch.Tensor, runtime: str, tmp_path, **kw):
    suffix = runtimes.backend(runtime).SUFFIX
    return runtimes.export_checked(model, tmp_path / f"m{suffix}", runtime, {"x": x}, **kw)


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("spec", SPECS)
def test_every_spec_round_trips_on_a_non_square_map(runtime, spec, tmp_path):
    model = _randomize(_Block(spec, 24)).eval()
    report = _round_trip(model, torch.randn(1, 24, 7, 11), runtime, tmp_path)
    assert report.errors["x"]["max_rel"] < 1e-5, report.errors
    assert report.exported.bytes == (tmp_path / f"m{runtimes.backend(runtime).SUFFIX}"
                                     ).stat().st_size or runtime == "openvino"


#: Networks exported whole: ExecuTorch's lowering takes about 30 s per network here, so it
#: gets the baseline, the costliest graph (CBAM) and CA; the others get every pair.
NETWORKS = [(b, s) for b in ("mobilenetv2", "mobilenext") for s in ("none", "se", "cbam", "ca")]
XNNPACK_NETWORKS = [("mobilenetv2", "none"), ("mobilenetv2", "cbam"), ("mobilenetv2", "ca"),
                    ("mobilenext", "ca")]


def _network(backbone: str, spec: str) -> nn.Module:
    return _randomize(caprobe.build_model(backbone, attn=spec, width=0.25, num_classes=10,
                                          profile="cifar", seed=0)).eval()


def _n_attention(model: nn.Module) -> int:
    return sum(isinstance(m, attention.AttentionModule) for m in model.modules())


@pytest.mark.parametrize("runtime", [r for r in RUNTIMES if r.values[0] != "executorch"])
@pytest.mark.parametrize("backbone,spec", NETWORKS)
def test_networks_round_trip(runtime, backbone, spec, tmp_path):
    report = _round_trip(_network(backbone, spec), torch.randn(1, 3, 32, 40), runtime, tmp_path,
                         threads=2)
    assert report.errors["x"]["max_rel"] < 1e-4, report.errors
    assert report.input_shape == [1, 3, 32, 40] and report.form == runtimes.graph_target(runtime)


@pytest.mark.skipif(not _available("onnxruntime"), reason="the onnx extra is not installed")
@pytest.mark.parametrize("blocked", [True, False])
def test_graph_target_is_nchwc_only_for_onnx_runtime_fp32_on_a_blocked_cpu(blocked,
                                                                          monkeypatch):
    from caprobe.runtimes import onnx_runtime

    monkeypatch.setattr(onnx_runtime, "uses_nchwc", lambda: blocked)
    assert runtimes.graph_target("onnxruntime") == ("nchwc" if blocked else "graph")
    assert runtimes.graph_target("onnxruntime", int8=True) == "graph"
    for other in ("executorch", "openvino"):  # decided by name: no extra needed
        assert runtimes.graph_target(other) == "graph"
        assert runtimes.graph_target(other, int8=True) == "graph"


@pytest.mark.skipif(not _available("onnxruntime"), reason="the onnx extra is not installed")
def test_onnx_runtime_uses_nchwc_exactly_on_x86_with_avx2():
    """MLAS blocks channels (8 with AVX2, 16 with AVX-512F) on x86 only, read back from ORT."""
    import platform

    from caprobe.runtimes import _cpu_flags
    from caprobe.runtimes.onnx_runtime import uses_nchwc

    flags = _cpu_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo to read the CPU's vector extensions from")
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    assert uses_nchwc() == (x86 and bool({"avx2", "avx512f"} & flags))


def _optimised_ops(model: nn.Module, x: torch.Tensor, tmp_path) -> dict[str, int]:
    """Op counts of the graph ONNX Runtime runs (all optimisations on)."""
    import collections

    from caprobe.runtimes.onnx_runtime import optimised_graph

    path = tmp_path / "m.onnx"
    runtimes.export(model, x, path, "onnxruntime")
    return collections.Counter(node.op_type for node in optimised_graph(path).graph.node)


@pytest.mark.skipif(not _available("onnxruntime"), reason="the onnx extra is not installed")
@pytest.mark.parametrize("backbone", ["mobilenetv2", "mobilenext"])
def test_nchwc_form_keeps_the_map_in_onnx_runtimes_blocked_layout(backbone, tmp_path):
    """The graph form's broadcast gate products send the map out of NCHWc and back around
    every CA block; the NCHWc form leaves exactly the reorders of the plain network."""
    from caprobe.runtimes.onnx_runtime import uses_nchwc

    if not uses_nchwc():
        pytest.skip("ONNX Runtime does not use its NCHWc layout on this CPU")
    x = torch.randn(1, 3, 32, 32)
    plain, ca = (caprobe.build_model(backbone, attn=a, width=1.0, num_classes=10,
                                     profile="cifar", seed=0).eval() for a in ("none", "ca"))
    reorders = {}
    for name, model in (("none", plain), ("graph", caprobe.deploy(ca, target="graph")),
                        ("nchwc", caprobe.deploy(ca, target="nchwc"))):
        ops = _optimised_ops(model, x, tmp_path)
        reorders[name] = ops["ReorderInput"] + ops["ReorderOutput"]
        if name == "nchwc":
            assert ops["Upsample"] == 2 * _n_attention(ca)  # both gates, in the layout
    assert reorders["nchwc"] == reorders["none"] < reorders["graph"] - _n_attention(ca)


@pytest.mark.skipif(not _available("executorch"), reason="the executorch extra is not installed")
@pytest.mark.parametrize("backbone,spec", XNNPACK_NETWORKS)
def test_networks_round_trip_in_xnnpack_with_every_op_delegated_but_cbams_channel_pools(
        backbone, spec, tmp_path):
    model = _network(backbone, spec)
    report = _round_trip(model, torch.randn(1, 3, 32, 40), "executorch", tmp_path, threads=2)
    assert report.errors["x"]["max_rel"] < 1e-4, report.errors
    cov = report.exported.coverage
    n_attn = _n_attention(model)
    if spec == "cbam":  # the channel max and mean of every spatial gate, one graph break each
        assert cov["outside"] == {"amax": n_attn, "mean": n_attn}
        assert cov["partitions"] == n_attn + 1
    else:
        assert cov["outside"] == {} and cov["outside_nodes"] == 0 and cov["partitions"] == 1
    if spec == "ca":
        assert cov["delegated"]["avg_pool2d"] == 2 * n_attn


@pytest.mark.skipif(not _available("executorch"), reason="the executorch extra is not installed")
@pytest.mark.parametrize("spec", ["se", "eca", "ca", "ca_h", "ca_w", "ca:act=relu6,gate=hsigmoid",
                                  "ca:act=silu"])
def test_xnnpack_takes_every_op_of_a_graph_form(spec, tmp_path):
    model = _randomize(_Block(spec, 24)).eval()
    exported = runtimes.export(caprobe.deploy(model, target="graph"), torch.randn(1, 24, 7, 11),
                               tmp_path / "m.pte", "executorch")
    assert exported.coverage["outside"] == {} and exported.coverage["partitions"] == 1


@pytest.mark.skipif(not _available("executorch"), reason="the executorch extra is not installed")
def test_the_papers_one_axis_means_stay_outside_xnnpack(tmp_path):
    model = _randomize(_Block("ca", 24)).eval()
    report = _round_trip(model, torch.randn(1, 24, 7, 11), "executorch", tmp_path, form="paper")
    assert report.exported.coverage["outside"] == {"mean": 2}
    assert report.errors["x"]["max_rel"] < 1e-5


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_the_thread_count_is_applied_and_read_back(runtime, tmp_path):
    model = _Block("ca", 16).eval()
    x = torch.randn(1, 16, 5, 6)
    exported = runtimes.export(caprobe.deploy(model, target="graph"), x,
                               tmp_path / f"m{runtimes.backend(runtime).SUFFIX}", runtime)
    for threads in (1, 2):
        settings = runtimes.load(exported.path, runtime, threads).settings
        if runtime == "onnxruntime":
            assert settings["intra_op_num_threads"] == threads
            assert settings["inter_op_num_threads"] == 1 and settings["allow_spinning"] == "0"
            assert settings["providers"] == ["CPUExecutionProvider"]
        elif runtime == "executorch":
            assert settings["threadpool_threads"] == threads
        else:
            assert settings["inference_num_threads"] == threads
            assert settings["num_streams"] == 1 and settings["performance_hint"] == "LATENCY"
            assert settings["inference_precision"] == "f32"  # not the silent bf16 of AMX CPUs
            assert set(settings["runtime_precisions"]) <= {"f32", "i32", "i64", "undefined",
                                                            "boolean", "u8", "dynamic"}, settings


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_bound_calls_run_the_model_on_the_bound_input(runtime, tmp_path):
    model = _randomize(_Block("se", 8)).eval()
    x = torch.randn(1, 8, 4, 4)
    exported = runtimes.export(caprobe.deploy(model, target="graph"), x,
                               tmp_path / f"m{runtimes.backend(runtime).SUFFIX}", runtime)
    session = runtimes.load(exported.path, runtime, 1)
    call = session.bind(x)
    for _ in range(3):
        call()
    torch.testing.assert_close(session.run(x), model(x).detach(), atol=1e-5, rtol=1e-5)


def test_unknown_runtime_and_a_missing_extra_are_one_line_errors(monkeypatch):
    with pytest.raises(CaprobeError, match="unknown runtime 'tflite'; choose from eager, "
                                           "onnxruntime, executorch, openvino"):
        runtimes.check_runtime("tflite")
    real = importlib.import_module

    def fake(name, *a, **kw):
        if name == "openvino":
            raise ModuleNotFoundError("No module named 'openvino'", name="openvino")
        return real(name, *a, **kw)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(CaprobeError, match=r"runtime openvino needs the openvino extra "
                                           r"\(openvino is not installed\); pip install "
                                           r"'caprobe\[openvino\]'"):
        runtimes.backend("openvino")
    with pytest.raises(CaprobeError, match="eager is PyTorch itself"):
        runtimes.backend("eager")


def test_loading_a_missing_or_corrupt_file_is_a_one_line_error(tmp_path):
    with pytest.raises(CaprobeError, match="does not exist; export it first"):
        runtimes.load(tmp_path / "none.onnx", "onnxruntime", 1)
    if _available("onnxruntime"):
        bad = tmp_path / "bad.onnx"
        bad.write_bytes(b"not a model")
        with pytest.raises(CaprobeError, match="ONNX Runtime cannot load .*export it again"):
            runtimes.load(bad, "onnxruntime", 1)


# --------------------------------------------------------------------------- the CLI


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    code = "import sys; from caprobe.cli import main; sys.argv[0] = 'caprobe'; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.skipif(not _available("onnxruntime"), reason="the onnx extra is not installed")
def test_cli_export_writes_the_file_and_prints_its_check(tmp_path):
    out = tmp_path / "m.onnx"
    done = _cli("export", "--model", "mobilenetv2_ca", "--width", "0.25", "--profile", "cifar",
                "--seed", "3", "--format", "onnx", "--out", str(out), "--data", "positional")
    assert done.returncode == 0, done.stderr
    assert out.is_file() and out.stat().st_size > 100_000
    form = runtimes.graph_target("onnxruntime")
    assert f"exported mobilenetv2 ca (seed 3) ({form} form, fp32, input 1x3x32x32)" in done.stdout
    assert done.stdout.count("max abs error") == 3  # two random batches, one of real images
    assert "positional test images" in done.stdout and "intra-op threads 1" in done.stdout
    # the file holds the weights build_model(seed=3) gives
    import onnxruntime as ort

    x = torch.randn(1, 3, 32, 32)
    model = caprobe.build_model("mobilenetv2", attn="ca", width=0.25, num_classes=10,
                                profile="cifar", seed=3).eval()
    got = ort.InferenceSession(str(out)).run(None, {"x": x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), model(x).detach(), atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(not _available("onnxruntime"), reason="the onnx extra is not installed")
def test_cli_export_of_a_training_run_uses_its_weights_and_data(tmp_path):
    run = tmp_path / "run"
    done = _cli("train", "--model", "mobilenetv2", "--attn", "se", "--width", "0.25", "--data",
                "positional", "--data-option", "n_train=32", "--data-option", "n_test=16",
                "--epochs", "1", "--batch-size", "16", "--out", str(run))
    assert done.returncode == 0, done.stderr
    done = _cli("export", str(run), "--format", "onnx", "--out", str(tmp_path / "m.onnx"),
                "--json")
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert set(record["errors"]) == {"random 0", "random 1", "positional test images"}
    assert all(e["max_rel"] < 1e-4 for e in record["errors"].values())
    assert record["exported"]["runtime"] == "onnxruntime"
    assert record["form"] == runtimes.graph_target("onnxruntime")


@pytest.mark.skipif(not _available("onnxruntime"), reason="the onnx extra is not installed")
def test_cli_export_writes_the_portable_graph_form_when_asked(tmp_path):
    """A file for another machine (ARM, a phone): the graph form, whatever this CPU is."""
    out = tmp_path / "m.onnx"
    done = _cli("export", "--model", "mobilenetv2_ca", "--width", "0.25", "--profile", "cifar",
                "--format", "onnx", "--deploy-target", "graph", "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["form"] == "graph"
    import onnx

    assert "Resize" not in {n.op_type for n in onnx.load(str(out)).graph.node}


@pytest.mark.parametrize("args,message", [
    (["--format", "tflite", "--out", "m.tflite", "--model", "mobilenetv2"],
     "unknown format 'tflite'; choose from onnx, executorch, openvino"),
    (["--format", "onnx", "--out", "m.onnx"], "nothing to export; pass a run folder"),
    (["/no/such/run", "--format", "onnx", "--out", "m.onnx"],
     "run folder /no/such/run does not exist"),
    (["--format", "onnx", "--out", "m.pte", "--model", "mobilenetv2"],
     "a onnx model is written as .onnx; got --out m.pte"),
    (["--format", "onnx", "--out", "m.onnx", "--model", "mobilenetv2", "--checkpoint",
      "/no/ckpt.pt"], "checkpoint /no/ckpt.pt does not exist"),
    (["--format", "onnx", "--out", "m.onnx", "--model", "mobilenetv2", "--deploy-target",
      "nhwc"], "unknown --deploy-target 'nhwc'; choose auto, graph or nchwc"),
    (["--format", "onnx", "--out", "m.onnx", "--model", "mobilenetv2", "--paper-form",
      "--deploy-target", "graph"], "--paper-form exports no deployed form"),
])
def test_cli_export_bad_input_is_one_line_exit_2(args, message, tmp_path):
    if "onnx" in args and not _available("onnxruntime"):
        pytest.skip("the onnx extra is not installed")
    done = _cli("export", *args)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"caprobe: error: {message}")
    assert len(done.stderr.strip().splitlines()) == 1


def _tiny_bench(out, attn: str, *runtime_args: str) -> subprocess.CompletedProcess:
    """``caprobe bench`` of a tiny MobileNetV2 with ``attn`` (and none), results to ``out``."""
    done = _cli("bench", "--model", "mobilenetv2", "--attn", attn, "--width", "0.25",
                "--profile", "cifar", *runtime_args, "--min-time", "0.05", "--threads", "1",
                "--out", str(out))
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.skipif(not _available("onnxruntime"), reason="the onnx extra is not installed")
def test_cli_bench_times_variants_in_a_runtime(tmp_path):
    out = tmp_path / "bench.json"
    done = _tiny_bench(out, "ca", "--runtime", "eager", "onnxruntime")
    assert "mobilenetv2 · onnxruntime · batch 1" in done.stdout
    form = runtimes.graph_target("onnxruntime")
    assert f"onnxruntime ca: deploy target {form}, export" in done.stdout
    assert "intra-op threads 1" in done.stdout
    rows = json.loads(out.read_text())
    assert [(r["runtime"], r["label"]) for r in rows] == [
        ("eager", "none"), ("eager", "ca"), ("onnxruntime", "none"), ("onnxruntime", "ca")]
    ort_ca = rows[3]
    assert ort_ca["overhead"] > 0 and ort_ca["env"]["runtime"]["settings"][
        "intra_op_num_threads"] == 1
    assert ort_ca["env"]["runtime"]["coverage"]["nodes"] > 0
    assert ort_ca["form"] == "deployed"
    assert ort_ca["env"]["runtime"]["deploy_target"] == runtimes.graph_target("onnxruntime")


@pytest.mark.parametrize("args,message", [
    (["--runtime", "tflite"], "unknown runtime 'tflite'; choose from eager, onnxruntime, "
                              "executorch, openvino"),
    (["--runtime", "onnxruntime", "--dtype", "bf16"],
     "runtime onnxruntime is timed on the CPU in fp32 with its own memory layout"),
    (["--runtime", "executorch", "--channels-last"],
     "runtime executorch is timed on the CPU in fp32 with its own memory layout"),
])
def test_cli_bench_runtime_bad_input_is_one_line_exit_2(args, message):
    done = _cli("bench", "--model", "mobilenetv2", *args)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"caprobe: error: {message}")
    assert len(done.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------- int8


def _calibration(shape, n: int = 8) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(shape, generator=gen) for _ in range(n)]


@pytest.mark.skipif(not _available("onnxruntime"), reason="the onnx extra is not installed")
@pytest.mark.parametrize("spec", ["none", "se", "cbam", "ca"])
def test_int8_onnx_is_a_qdq_graph_close_to_fp32(spec, tmp_path):
    import onnx

    model = _network("mobilenetv2", spec)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # see below
    report = _round_trip(model, x, "onnxruntime", tmp_path, calibration=_calibration(x.shape))
    assert report.exported.precision == "int8" and report.exported.calibration_images == 8
    # int8, not fp32 in disguise, and not garbage: random weights, 8 random calibration
    # batches, one seeded input (one draw's error varies); CBAM's gated maps quantise worst
    # (0.17 of the largest logit measured, 0.02-0.04 for the others)
    bound = 0.3 if spec == "cbam" else 0.1
    assert 1e-4 < report.errors["x"]["max_rel"] < bound, report.errors
    ops = {n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert report.exported.coverage["fp32_ops"] == {}
    assert report.exported.coverage["int8_weights"] == runtimes.int8_weight_bits()
    # the weights are what the record says: 7-bit ones stay within [-64, 63]
    from onnx import numpy_helper

    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    weights = [numpy_helper.to_array(t) for t in graph.initializer
               if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    widest = max(int(abs(w.astype(int)).max()) for w in weights)
    assert widest <= 64 if runtimes.int8_saturates() else widest > 64, widest


def test_int8_weights_drop_to_7_bits_only_on_x86_without_vnni(monkeypatch):
    import platform

    def saturates(machine: str, flags: set[str]) -> tuple[bool, str]:
        monkeypatch.setattr(platform, "machine", lambda: machine)
        monkeypatch.setattr(runtimes, "_cpu_flags", lambda: flags)
        runtimes.int8_saturates.cache_clear()
        return runtimes.int8_saturates(), runtimes.int8_weight_bits()

    try:
        assert saturates("x86_64", {"avx2", "avx512f", "avx512bw"}) == (
            True, "7-bit (no VNNI on this CPU: 16-bit accumulation would saturate)")
        for vnni in ("avx512_vnni", "avx_vnni", "amx_int8"):
            assert saturates("x86_64", {"avx2", vnni}) == (False, "8-bit")
        assert saturates("aarch64", {"asimd"}) == (False, "8-bit")  # ARM's dot products
        assert saturates("x86_64", set()) == (False, "8-bit")  # no cpuinfo: unknown, default
    finally:
        runtimes.int8_saturates.cache_clear()


@pytest.mark.parametrize("runtime", [r for r in RUNTIMES if r.values[0] != "onnxruntime"])
@pytest.mark.parametrize("spec", ["se", "cbam", "ca"])
def test_int8_block_runs_in_int8_close_to_fp32(runtime, spec, tmp_path):
    """XNNPACK takes the quantised block whole (CBAM but its channel max and mean, which it
    does not delegate; its MLP compiles because each pool has its own copy); OpenVINO records
    each op's precision (its convolutions in u8, or i8 on a CPU with AMX, under the f32 hint
    that governs only the float ops). The input is seeded: the error of one random 7×11 input
    ranges widely (OpenVINO, CA, Intel Xeon with AMX: 0.05-0.14 over unseeded draws)."""
    model = _randomize(nn.Sequential(nn.Conv2d(3, 24, 3, padding=1), _Block(spec, 24))).eval()
    x = torch.randn(1, 3, 7, 11, generator=torch.Generator().manual_seed(0))
    report = _round_trip(model, x, runtime, tmp_path, calibration=_calibration(x.shape))
    assert report.exported.precision == "int8"
    bound = 0.3 if spec == "cbam" else 0.1  # CBAM's gated maps quantise worst (as in ORT)
    assert 1e-4 < report.errors["x"]["max_rel"] < bound, report.errors
    if runtime == "executorch" and spec == "cbam":
        assert report.exported.coverage["outside"] == {"amax": 1, "mean": 1}
    elif runtime == "executorch":
        assert report.exported.coverage["outside"] == {}
        assert report.exported.coverage["partitions"] == 1
    else:
        precisions = report.settings["runtime_precisions"]
        assert sum(precisions.get(p, {}).get("Convolution", 0) for p in ("u8", "i8")) >= 1
        assert report.settings["inference_precision"] == "f32"
        assert report.exported.coverage["int8_weights"] == (
            runtimes.int8_weight_bits() if runtimes.int8_saturates()
            else "8-bit (7-bit first layer, NNCF's default)")


def test_int8_requests_that_cannot_be_met_are_one_line_errors(tmp_path):
    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(CaprobeError, match="int8 needs calibration images"):
        runtimes.export(nn.Identity(), x, tmp_path / "m.onnx", "onnxruntime", [])
    with pytest.raises(CaprobeError, match=r"calibration batch of shape \(2, 3, 4, 4\) does not "
                                           r"match the export shape \(1, 3, 4, 4\)"):
        runtimes.export(nn.Identity(), x, tmp_path / "m.onnx", "onnxruntime",
                        [torch.randn(2, 3, 4, 4)])


@pytest.mark.skipif(not _available("onnxruntime"), reason="the onnx extra is not installed")
def test_cli_export_int8(tmp_path):
    out = tmp_path / "q.onnx"
    base = ["export", "--model", "mobilenetv2_se", "--width", "0.25", "--profile", "cifar",
            "--format", "onnx", "--out", str(out), "--int8"]
    done = _cli(*base)
    assert done.returncode == 2
    assert done.stderr.startswith("caprobe: error: --int8 needs calibration images; pass "
                                  "--calib-data NAME")
    done = _cli(*base, "--calib-data", "positional", "--calib-images", "5")
    assert done.returncode == 0, done.stderr
    assert "int8, calibrated on 5 positional training images" in done.stdout
    assert "ops left in fp32: none" in done.stdout and out.is_file()


@pytest.mark.skipif(not _available("onnxruntime"), reason="the onnx extra is not installed")
def test_cli_bench_int8_times_quantised_graphs(tmp_path):
    out = tmp_path / "bench.json"
    _tiny_bench(out, "se", "--runtime", "onnxruntime", "--int8")
    rows = json.loads(out.read_text())
    assert [(r["dtype"], r["env"]["runtime"]["precision"]) for r in rows] == [("int8", "int8")] * 2
    done = _cli("bench", "--model", "mobilenetv2", "--int8")
    assert done.returncode == 2
    assert done.stderr.startswith("caprobe: error: --int8 times the exported runtimes; add "
                                  "--runtime onnxruntime, executorch or openvino")
