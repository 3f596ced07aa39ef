"""``caprobe compare --runtime R --int8``: the trained models timed in an exported runtime,
quantised there and evaluated on the test set; records on disk, resumable, bad requests one
line (exit 2). ONNX Runtime stands for the three (its export is the quickest); the export
round trips of every runtime are tested in test_runtimes.py."""

from __future__ import annotations

import json

import pytest
import torch
from test_report_support import make_run
from test_runtimes import _available
from typer.testing import CliRunner

import caprobe
from caprobe.cli import app
from caprobe.comparison import Layout
from caprobe.comparison.shipped import calibration_batches, runtime_top1, summary
from caprobe.data import load_dataset
from caprobe.training import evaluate

runner = CliRunner()

TINY = ["--width", "0.25", "--data-option", "n_train=48", "--data-option", "n_test=40",
        "--steps", "4", "--batch-size", "16", "--seeds", "1", "--threads", "1",
        "--min-time", "0.02"]


class _Oracle:
    """A session that knows each test image's label: 100 % exactly, unless runtime_top1 pairs
    an output row with the wrong label or feeds a padding row into the count."""

    def __init__(self, dataset) -> None:
        from caprobe.data.augment import to_input

        x = to_input(dataset.test.images, dataset.mean, dataset.std)
        self.labels = {row.numpy().tobytes(): int(y)
                       for row, y in zip(x, dataset.test.labels, strict=True)}
        self.classes = dataset.num_classes
        self.padding = 0

    def run(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], self.classes)
        for i, row in enumerate(x):
            if not row.any():
                self.padding += 1
                continue
            out[i, self.labels[row.numpy().tobytes()]] = 1.0
        return out


class _Eager:
    """A session that runs the model itself: runtime_top1's batching, padding and labels."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def run(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(x)


def test_runtime_top1_equals_the_training_evaluation_on_a_padded_last_batch(tmp_path):
    dataset = load_dataset("positional", n_train=48, n_test=40, cache_dir=str(tmp_path))
    model = caprobe.build_model("mobilenetv2", attn="ca", width=0.25, profile="cifar",
                                num_classes=dataset.num_classes, seed=3).eval()
    for m in model.modules():  # a model that is not at chance: BN statistics of the data
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
    expected = evaluate(model, dataset.test.images, dataset.test.labels,
                        num_classes=dataset.num_classes, mean=dataset.mean, std=dataset.std,
                        device="cpu", batch_size=64)["test_top1"]
    # 40 test images in batches of 16: the last batch holds 8 and 8 zero images of padding
    assert runtime_top1(_Eager(caprobe.deploy(model)), dataset, batch=16) == \
        pytest.approx(expected, abs=1e-9)
    oracle = _Oracle(dataset)
    assert len(oracle.labels) == 40  # every test image distinct
    assert runtime_top1(oracle, dataset, batch=16) == 100.0 and oracle.padding == 8
    batches = calibration_batches(dataset, count=40, batch=16)
    assert [tuple(b.shape) for b in batches] == [(16, 3, 16, 16)] * 2  # whole batches only
    assert torch.equal(batches[0], calibration_batches(dataset, count=16, batch=16)[0])


@pytest.mark.slow
@pytest.mark.skipif(not _available("onnxruntime"), reason="the onnx extra is not installed")
def test_compare_times_quantises_and_evaluates_in_the_runtime(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["compare", "--attn", "ca", "--runtime", "onnxruntime",
                                 "--int8", "--out", str(out), "--json", *TINY])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert {"latency:onnxruntime", "latency:onnxruntime-int8", "int8:onnxruntime:none:0",
            "int8:onnxruntime:ca:0"} <= set(payload["ran"])
    layout = Layout(out)
    summary = json.loads(layout.runtimes.read_text())
    assert summary["runtimes"] == ["onnxruntime"] and summary["int8"] is True
    rows = {(r["precision"], r["variant"]): r for r in summary["latency"]}
    assert set(rows) == {(p, v) for p in ("fp32", "int8") for v in ("none", "ca")}
    for (precision, variant), row in rows.items():
        saved = json.loads(layout.runtime_latency(variant, "onnxruntime",
                                                  precision == "int8").read_text())
        assert saved["runtime"] == "onnxruntime" and saved["median_ms"] == row["median_ms"] > 0
        assert saved["env"]["runtime"]["precision"] == precision
        assert (row["overhead"] is None) == (variant == "none")
    from caprobe.runtimes import graph_target

    assert rows["fp32", "ca"]["deploy_target"] == graph_target("onnxruntime")
    assert rows["int8", "ca"]["deploy_target"] == "graph"
    assert "QuantizeLinear" in rows["int8", "ca"]["coverage"]["ops"]
    assert "QuantizeLinear" not in rows["fp32", "ca"]["coverage"]["ops"]
    for variant in ("none", "ca"):
        record = json.loads(layout.int8(variant, 0, "onnxruntime").read_text())
        trained = json.loads((layout.run_dir(variant, 0) / "result.json").read_text())
        assert record["fp32_top1"] == trained["top1"] and record["learned"] == trained["learned"]
        assert record["delta_top1"] == pytest.approx(record["top1"] - trained["top1"])
        assert 0 <= record["top1"] <= 100 and record["test_images"] == 40
        assert record["calibration_images"] == 32  # 48 training images: one whole batch of 32
    gates = json.loads(layout.gate_error("ca").read_text())
    assert not layout.gate_error("none").exists() and summary["gate_error"]["ca"] == gates
    if _available("executorch"):
        assert "gates:ca" in payload["ran"] and set(gates["gates"]) == {"h", "w"}
        assert all(g["blocks"] == 16 and g["min_db"] <= g["median_db"]
                   for g in gates["gates"].values())  # one CA block in each of 16 blocks
        assert len(gates["blocks"]) == 32 and all(b["quantized"] for b in gates["blocks"])
    else:  # recorded, not raised: the rest of the plan went on
        assert "executorch extra" in gates["error"]
    acc = {r["variant"]: r for r in summary["int8_accuracy"]}
    # four steps learn nothing: no int8 figure is read from a run that did not learn
    assert all(r["n"] + r["n_not_learned"] == 1 for r in acc.values())

    html = (out / "report.html").read_text()
    assert html.count('<tr data-runtime="onnxruntime" data-precision=') == 4
    assert html.count(f"deploy target {graph_target('onnxruntime')};") == 2  # fp32 rows
    assert html.count("deploy target graph;") == (2 if graph_target("onnxruntime") == "nchwc"
                                                  else 4)
    assert '<a href="#runtimes">' in html and "Gate error in int8" in html

    stamps = {p: p.stat().st_mtime_ns for p in out.glob("variants/*/**/*.json")}
    again = runner.invoke(app, ["compare", "--resume", str(out), "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["ran"] == []
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}


@pytest.mark.parametrize(("args", "needle"), [
    (["--runtime", "tflite"], "unknown runtime 'tflite'"),
    (["--runtime", "eager"], "compare times eager PyTorch already"),
    (["--int8"], "--int8 quantises the trained models in an exported runtime"),
    (["--runtime", "onnxruntime", "--int8", "--no-train"], "drop --no-train"),
])
def test_compare_runtime_bad_requests(tmp_path, args, needle):
    result = runner.invoke(app, ["compare", "--attn", "ca", *args,
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert not (tmp_path / "o").exists()


def _latency(variant: str, median: float, overhead: float | None) -> dict:
    return {"variant": variant, "runtime": "executorch", "median_ms": median, "iqr_ms": 0.1,
            "overhead": overhead, "overhead_ci": [overhead - 0.05, overhead + 0.1]
            if overhead else None,
            "env": {"runtime": {"coverage": {"delegated_nodes": 90, "partitions": 1,
                                             "outside": {}},
                                "settings": {"threadpool_threads": 2}}}}


def test_the_report_shows_the_saved_runtime_records(tmp_path):
    """runtimes.json gathers the per-piece records (the learned seeds only) and the report
    draws its three tables from it, with the numbers as saved."""
    root = make_run(tmp_path / "r", variants=("none", "ca"), seeds=(0, 1, 2))
    layout = Layout(root)
    for variant, median, overhead in (("none", 1.0, None), ("ca", 1.25, 1.25)):
        for int8 in (False, True):
            layout.runtime_latency(variant, "executorch", int8).write_text(
                json.dumps(_latency(variant, median / (2 if int8 else 1), overhead)))
    deltas = {("none", 0): -0.2, ("none", 1): -0.4, ("none", 2): -0.3,
              ("ca", 0): -1.0, ("ca", 1): -2.0, ("ca", 2): None}  # ca seed 2 did not learn
    for (variant, seed), delta in deltas.items():
        layout.int8(variant, seed, "executorch").write_text(json.dumps({
            "variant": variant, "seed": seed, "top1": 60.0 + (delta or 0), "fp32_top1": 60.0,
            "delta_top1": delta if delta is not None else 0.0,
            "learned": delta is not None}))
    layout.gate_error("ca").write_text(json.dumps({"variant": "ca", "seed": 0, "gates": {
        "h": {"median_db": 41.25, "min_db": 30.5, "blocks": 16},
        "w": {"median_db": 40.0, "min_db": 29.0, "blocks": 16}}}))
    layout.runtimes.write_text(json.dumps(summary(layout, ["none", "ca"], [0, 1, 2],
                                                  ["executorch"], int8=True)))
    saved = json.loads(layout.runtimes.read_text())
    acc = {r["variant"]: r for r in saved["int8_accuracy"]}
    assert acc["ca"]["n"] == 2 and acc["ca"]["n_not_learned"] == 1
    assert acc["ca"]["delta_mean"] == pytest.approx(-1.5)
    assert acc["none"]["delta_mean"] == pytest.approx(-0.3) and acc["none"]["n"] == 3
    lo, hi = acc["none"]["delta_ci_low"], acc["none"]["delta_ci_high"]
    assert lo < -0.3 < hi and (hi - lo) / 2 == pytest.approx(4.303 * 0.1 / 3 ** 0.5, rel=1e-3)

    result = runner.invoke(app, ["report", str(root)])
    assert result.exit_code == 0, result.output
    html = (root / "report.html").read_text()
    section = html[html.index('<section id="runtimes">'):]
    assert section.count('data-precision="int8"') == 2
    assert "+25.0%" in section and "[+20.0%, +35.0%]" in section  # ca's overhead and its CI
    assert "-1.50" in section and "(1 did not learn)" in section
    assert "41.2" in section and "29.0" in section  # gate h median, gate w lowest
    assert "XNNPACK took 90 nodes in 1 partition(s); nothing left out" in section


def test_a_run_without_runtimes_has_no_runtime_section(tmp_path):
    root = make_run(tmp_path / "r", variants=("none", "ca"))
    assert runner.invoke(app, ["report", str(root)]).exit_code == 0
    assert 'id="runtimes"' not in (root / "report.html").read_text()
