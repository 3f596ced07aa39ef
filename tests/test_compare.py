"""``caprobe compare`` end to end on the positional set with a tiny plan.

Run, crash mid-training and between two variants, resume, and check that nothing ran twice
and that the final results equal those of an uninterrupted run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import caprobe.training
from caprobe.cli import app
from caprobe.comparison import CompareOptions, Layout, run_compare
from caprobe.training import TrainConfig

runner = CliRunner()

DATA_OPTIONS = {"n_train": 32, "n_test": 32}
# 32 images / batch 16 = 2 steps per epoch; 4 steps = 2 epochs (so a run can stop halfway)
CLI_ARGS = ["--width", "0.25", "--data-option", "n_train=32", "--data-option", "n_test=32",
            "--steps", "4", "--batch-size", "16", "--seeds", "1", "--threads", "1",
            "--min-time", "0.02"]


def _options(cache: Path, *, training: dict | None = None, **kw) -> CompareOptions:
    template = TrainConfig(width=0.25, data_options=dict(DATA_OPTIONS), steps=4, batch_size=16,
                           threads=1, cache_dir=str(cache), **(training or {}))
    base = dict(attn=["ca"], seeds=1, jobs=1, latency_min_time=0.02, map_images=2)
    base.update(kw)
    return CompareOptions(training=template, **base)


class _Crash(BaseException):
    """A simulated process death (not an Exception, so nothing records it as a failure)."""


class _Spy:
    """Wraps caprobe.training.train: records calls and epochs, injects interruptions."""

    def __init__(self, real) -> None:
        self.real = real
        self.calls: list[tuple[str, int, bool]] = []
        self.epochs: list[tuple[str, int, int]] = []
        self.interrupt_after_epoch: tuple[str, int] | None = None
        self.crash_before: tuple[str, int] | None = None

    def __call__(self, config, *, out=None, resume=False, progress=None, **kw):
        piece = (config.attn, config.seed)
        if piece == self.crash_before:
            raise _Crash(f"simulated crash before {piece}")
        self.calls.append((config.attn, config.seed, resume))

        def on_epoch(row):
            self.epochs.append((config.attn, config.seed, row["epoch"]))
            if piece == self.interrupt_after_epoch:
                raise KeyboardInterrupt

        return self.real(config, out=out, resume=resume, progress=progress, on_epoch=on_epoch)


def _comparable(results: dict) -> dict:
    """Everything that must not depend on interruptions (timings excluded)."""
    runs = [{k: r[k] for k in ("variant", "seed", "status", "top1", "top5", "test_loss",
                               "train_loss", "epochs_done", "steps_done", "data_checksum")}
            for r in results["runs"]]
    aggs = [{k: v for k, v in r.items() if not k.startswith("latency") and k not in (
        "images_per_s", "train_wall_time_s")} for r in results["aggregates"]]
    return {"runs": runs, "aggregates": aggs}


def test_crash_resume_equals_uninterrupted(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    ref = run_compare(_options(cache), tmp_path / "ref", progress=False)
    assert [r["status"] for r in ref.results["runs"]] == ["finished", "finished"]
    # 4 steps on 36 classes stay at chance: both are flagged, with no top-1 to report
    assert [r["status"] for r in ref.results["aggregates"]] == ["did not learn"] * 2
    assert [r["learned"] for r in ref.results["runs"]] == [False, False]
    assert len(ref.results["runs"]) == 2

    spy = _Spy(caprobe.training.train)
    monkeypatch.setattr(caprobe.training, "train", spy)
    out = tmp_path / "run"
    layout = Layout(out)

    # session 1: the baseline's training is interrupted after its first epoch (Ctrl-C)
    spy.interrupt_after_epoch = ("none", 0)
    with pytest.raises(KeyboardInterrupt):
        run_compare(_options(cache), out, progress=False)
    assert spy.calls == [("none", 0, False)]
    assert json.loads((layout.run_dir("none", 0) / "result.json").read_text())["status"] == \
        "interrupted"
    # a hard kill (SIGKILL, power loss) leaves no result at all, only the last checkpoint
    (layout.run_dir("none", 0) / "result.json").unlink()
    stamps = {p: p.stat().st_mtime_ns for v in ("none", "ca")
              for p in (layout.counts(v), layout.latency(v))}

    # session 2: resume; the baseline continues from its checkpoint, then a crash between
    # two variants (before ca starts)
    spy.interrupt_after_epoch = None
    spy.crash_before = ("ca", 0)
    with pytest.raises(_Crash):
        run_compare(None, out, resume=True, given={}, progress=False)
    assert spy.calls[1:] == [("none", 0, True)]
    assert not layout.run_dir("ca", 0).exists()

    # session 3: resume from the command line; options given must match plan.json
    spy.crash_before = None
    result = runner.invoke(app, ["compare", "--resume", str(out), "--attn", "ca", "--json",
                                 *CLI_ARGS])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert spy.calls[2:] == [("ca", 0, False)]
    assert {"counts:none", "counts:ca", "latency", "train:none:0"} <= set(payload["skipped"])

    # nothing ran twice: every epoch of every piece exactly once, counts/latency untouched
    assert sorted(spy.epochs) == sorted((v, 0, e) for v in ("none", "ca") for e in (1, 2))
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}
    prov = json.loads(layout.provenance.read_text())
    assert len(prov["sessions"]) == 3

    final = json.loads(layout.results_json.read_text())
    assert _comparable(final) == _comparable(ref.results)
    for v in ("none", "ca"):
        assert json.loads(layout.counts(v).read_text()) == \
            json.loads(Layout(ref.out).counts(v).read_text())
    assert (out / "report.html").is_file() and (out / "results.csv").is_file()
    maps = json.loads(layout.maps.read_text())
    ca_blocks = maps["variants"]["ca"]["blocks"]
    assert ca_blocks and {"h", "w", "hw"} <= set(ca_blocks[0]["gates"])
    assert len(maps["images"]["pixels"]) == 2

    # a finished run resumes to a no-op; changed options are refused with exit 2
    again = runner.invoke(app, ["compare", "--resume", str(out), "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout)["ran"] == []
    bad = runner.invoke(app, ["compare", "--resume", str(out), "--steps", "8"])
    assert bad.exit_code == 2 and "steps=8 (plan.json has 4)" in bad.stderr


def test_no_train_and_a_failing_variant(tmp_path, monkeypatch):
    import caprobe.comparison.run as run_mod

    real_build = run_mod._build

    def build(options, config, variant, num_classes):
        if variant == "se":
            raise RuntimeError("out of memory (simulated)")
        return real_build(options, config, variant, num_classes)

    monkeypatch.setattr(run_mod, "_build", build)
    out = tmp_path / "nt"
    result = runner.invoke(app, ["compare", "--attn", "se", "ca", "--no-train", "--json",
                                 "--out", str(out), "--width", "0.25", "--threads", "1",
                                 "--min-time", "0.02", "--data-option", "n_train=32",
                                 "--data-option", "n_test=32"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    agg = {r["variant"]: r for r in payload["aggregates"]}
    assert payload["runs"] == []
    assert agg["se"]["status"] == "failed" and "out of memory" in agg["se"]["error"]
    assert agg["ca"]["status"] == "ok" and agg["ca"]["latency_overhead"] > 0
    assert agg["ca"]["params_delta_pct"] > 0 and agg["ca"]["top1_mean"] is None
    html = (out / "report.html").read_text()
    assert "out of memory (simulated)" in html and "--no-train" in html


def test_reference_gives_paired_deltas_against_the_chosen_variant(tmp_path, monkeypatch):
    """``--reference se``: se is added to the variants, every other variant gets paired deltas
    against it (ref_delta_*), computed from the per-seed top-1 exactly as the deltas against
    none; the CLI table, results and report say "vs se". (Four steps learn nothing: every
    finished run is let into the statistics here, the arithmetic is what is tested.)"""
    import caprobe.comparison.results as results_module

    monkeypatch.setattr(results_module, "_learned", results_module._finished)
    out = tmp_path / "run"
    result = runner.invoke(app, ["compare", "--attn", "ca", "--reference", "se", *[
        "2" if a == "1" and CLI_ARGS[i - 1] == "--seeds" else a
        for i, a in enumerate(CLI_ARGS)], "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Δ vs se" in result.output
    results = json.loads((out / "results.json").read_text())
    assert results["reference"] == "se" and results["variants"] == ["none", "ca", "se"]
    top = {(r["variant"], r["seed"]): r["top1"] for r in results["runs"]}
    aggs = {r["variant"]: r for r in results["aggregates"]}
    for variant, against, prefix in (("ca", "se", "ref_delta_top1"), ("none", "se",
                                     "ref_delta_top1"), ("ca", "none", "delta_top1")):
        diffs = [top[variant, s] - top[against, s] for s in (0, 1)]
        row = aggs[variant]
        assert row[f"{prefix}_mean"] == pytest.approx(sum(diffs) / 2)
        assert row[f"{prefix.removesuffix('_top1')}_n"] == 2
        assert row[f"{prefix}_ci_low"] <= row[f"{prefix}_mean"] <= row[f"{prefix}_ci_high"]
    assert "ca vs se: " in html_verdicts(out)
    assert aggs["se"]["ref_delta_top1_mean"] is None  # not against itself
    html = (out / "report.html").read_text()
    assert "paired Δ top-1 vs se" in html


def html_verdicts(out: Path) -> str:
    return (out / "report.html").read_text().split('id="summary"')[0]


def test_reference_must_be_a_known_variant(tmp_path):
    result = runner.invoke(app, ["compare", "--attn", "ca", "--reference", "sse", *CLI_ARGS,
                                 "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "unknown attention 'sse'" in result.output
    assert not (tmp_path / "run").exists()


def test_an_unknown_latency_device_is_refused_before_anything_is_written(tmp_path):
    result = runner.invoke(app, ["compare", "--attn", "ca", "--latency-device", "tpu",
                                 *CLI_ARGS, "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "unknown device 'tpu'" in result.output
    assert not (tmp_path / "run").exists()


def test_the_data_set_is_loaded_once_and_handed_to_the_trainings(tmp_path, monkeypatch):
    import caprobe.data as data_module

    calls = []
    real = data_module.load_dataset

    def counting(name, **kwargs):
        calls.append(name)
        return real(name, **kwargs)

    monkeypatch.setattr(data_module, "load_dataset", counting)
    outcome = run_compare(_options(tmp_path / "cache", seeds=2), tmp_path / "run",
                          progress=False)
    assert [r["status"] for r in outcome.results["runs"]] == ["finished"] * 4
    assert calls == ["positional"]  # once for the plan, none for its four trainings
