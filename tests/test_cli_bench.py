"""``caprobe bench`` via the Typer app: tiny inputs and budgets, parsed JSON, one-line errors."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import caprobe.cli
from caprobe.cli.options import split_commas, spread_multi_values

FAST = ["--input-size", "32", "--min-time", "0.02", "--width", "0.35", "--threads", "1"]


def invoke(*args: str):
    return CliRunner().invoke(caprobe.cli.app, ["bench", *args])


_GREEDY = ("--model", "-m", "--attn", "-a", "--batch", "-b")


def test_comma_separated_lists_split_but_a_spec_keeps_its_options():
    assert split_commas(["se,cbam,ca"], specs=True) == ["se", "cbam", "ca"]
    assert split_commas(["se,ca:act=relu,reduction=16,cbam", "ca_h"], specs=True) == [
        "se", "ca:act=relu,reduction=16", "cbam", "ca_h"]
    assert split_commas(["ca:act=relu", "reduction=16"], specs=True) == [
        "ca:act=relu", "reduction=16"]  # separate values stay separate
    assert split_commas(["onnxruntime,executorch"]) == ["onnxruntime", "executorch"]
    assert split_commas([""], specs=True) == [""] and split_commas(None) is None


def test_spread_multi_values():
    args = ["--model", "mobilenetv2", "--attn", "none", "se", "cbam", "ca",
            "--batch", "1", "32", "--threads", "2", "--json"]
    assert spread_multi_values(args, _GREEDY) == [
        "--model", "mobilenetv2", "--attn", "none", "--attn", "se", "--attn", "cbam",
        "--attn", "ca", "--batch", "1", "--batch", "32", "--threads", "2", "--json"]
    assert spread_multi_values(["--attn=ca", "se", "-b", "1", "4"], _GREEDY) == [
        "--attn=ca", "--attn", "se", "-b", "1", "-b", "4"]
    assert spread_multi_values(["--batch", "-1", "2"], _GREEDY) == ["--batch", "-1", "--batch", "2"]
    assert spread_multi_values(["--threads", "2", "--", "x"], _GREEDY) == [
        "--threads", "2", "--", "x"]
    assert spread_multi_values(["--attn", "--json"], _GREEDY) == ["--attn", "", "--json"]
    assert spread_multi_values(["--json", "-a"], _GREEDY) == ["--json", "-a", ""]


def test_json_results_for_every_variant_and_batch():
    res = invoke("--model", "mobilenetv2", "--attn", "se", "ca", "--batch", "1", "2",
                 "--json", *FAST)
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert [(d["label"], d["batch"]) for d in data] == [
        ("none", 1), ("se", 1), ("ca", 1), ("none", 2), ("se", 2), ("ca", 2)]
    for d in data:
        assert d["model"] == "mobilenetv2" and d["input_size"] == [32, 32]
        assert d["device"] == "cpu" and d["dtype"] == "fp32" and d["threads"] == 1
        assert d["n"] == len(d["samples_ms"]) >= 10
        assert d["median_ms"] > 0 and d["images_per_s"] > 0
        assert d["env"]["torch"] == torch.__version__ and d["env"]["threads"] == 1
        assert d["env"]["meta"]["width"] == 0.35
        if d["label"] == "none":
            assert d["overhead"] is None and d["overhead_ci"] is None
        else:
            lo, hi = d["overhead_ci"]
            assert lo <= d["overhead"] <= hi


def test_table_output_and_out_file(tmp_path: Path):
    out = tmp_path / "sub" / "bench.json"
    res = invoke("--attn", "none", "se", "--out", str(out), *FAST)
    assert res.exit_code == 0, res.output
    assert "baseline" in res.stdout and "vs none" in res.stdout and "se" in res.stdout
    assert "threads 1" in res.stdout
    saved = json.loads(out.read_text())
    assert [d["label"] for d in saved] == ["none", "se"]
    assert not list(out.parent.glob(".*.tmp"))


def test_model_shorthand_alone_and_cifar_profile():
    res = invoke("--model", "mobilenext_ca", "--profile", "cifar", "--json", *FAST)
    assert res.exit_code == 0, res.output
    (d,) = json.loads(res.stdout)
    assert (d["model"], d["attn"], d["label"]) == ("mobilenext", "ca", "ca")
    assert d["overhead"] is None and d["env"]["meta"]["num_classes"] == 10


def test_channels_last_bf16_and_compile(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda m: m)  # no compiler toolchain needed here
    res = invoke("--attn", "ca", "--dtype", "bf16", "--channels-last", "--compile", "--json",
                 *FAST)
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert all(d["dtype"] == "bf16" and d["channels_last"] for d in data)
    assert all(d["compile_time_s"] is not None for d in data)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--batch", "0"], "batch size 0"),
        (["--batch", "1", "-3"], "batch size -3"),
        (["--dtype", "fp16", "--device", "cpu"], "fp16"),
        (["--dtype", "int4"], "unsupported dtype"),
        (["--device", "cuda"], "no CUDA GPU"),
        (["--device", "tpu"], "unknown device"),
        (["--model", "resnet50"], "unknown model"),
        (["--attn", "nope"], "nope"),
        (["--profile", "coco"], "unknown profile"),
        (["--input-size", "0"], "input size"),
        (["--input-size", "abc"], "input size"),
        (["--threads", "0"], "--threads 0"),
        (["--min-time", "0"], "--min-time"),
        (["--width", "-1"], "--width"),
    ],
)
def test_errors_are_one_line_exit_2(monkeypatch, args, needle):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    res = invoke("--min-time", "0.01", *args)  # a later --min-time in args wins
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("caprobe: error:"), res.stderr
    assert needle in lines[0]
    assert res.stdout == ""


def test_command_module_does_not_import_torch_at_top_level():
    import caprobe.cli.bench as bench

    tree = ast.parse(Path(bench.__file__).read_text())
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            top.add(node.module or "")
    heavy = {"torch", "rich", "numpy", "caprobe.models", "caprobe.measure.latency",
             "caprobe.attention"}
    assert not {m for m in top if m.split(".")[0] in heavy or m in heavy}
