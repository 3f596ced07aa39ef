"""Runs that did not learn: the flag, its place in results, verdicts, report and CLI lines.

Synthetic run folders from :func:`test_report_support.make_run` (no training): 10 classes, so
chance is 10% and the top-1 floor 30%.
"""

from __future__ import annotations

import csv
import json
import math
import types

import pytest
from test_report_support import make_run

from caprobe.cli.compare import _print_summary
from caprobe.cli.train import summary_line
from caprobe.comparison.layout import Layout
from caprobe.comparison.results import DID_NOT_LEARN, RESULTS_SCHEMA, load_results, write_results
from caprobe.io import read_json, write_json
from caprobe.reporting import render_report
from caprobe.reporting.records import load_runs
from caprobe.reporting.render import _rows, verdict
from caprobe.stats import CHANCE_FACTOR, LOSS_FACTOR, did_learn, loss_fell, top1_floor
from caprobe.training import RunResult

T_975_1 = 12.70620473617472  # Student t, 97.5% quantile, 1 degree of freedom
T_975_2 = 4.302652729911275  # and 2 degrees of freedom
BASE = {("none", 0): 60.0, ("none", 1): 62.0, ("none", 2): 61.0}
COST_SE = "+2.0% params, +2.0% MAdds, +10.0% CPU latency"  # make_run's second variant
COST_3RD = "+3.0% params, +3.0% MAdds, +20.0% CPU latency"  # its third


def _aggs(root) -> dict[str, dict]:
    return {r["variant"]: r for r in load_results(root)["aggregates"]}


def _verdicts(root) -> dict[str, dict]:
    return {r.variant: verdict(r) for r in _rows(load_runs([root])) if r.variant != "none"}


# --------------------------------------------------------------------------- the flag


def test_thresholds():
    assert (CHANCE_FACTOR, LOSS_FACTOR) == (3.0, 0.9)
    assert top1_floor(10.0) == 30.0 and top1_floor(20.0) == 60.0  # 3 x chance from 5 classes
    assert top1_floor(25.0) == 62.5 and top1_floor(50.0) == 75.0  # capped halfway to 100%


GUESS_10 = math.log(10)  # 2.3026: the training loss of a uniform guess over 10 classes


@pytest.mark.parametrize("top1, classes, losses, expected", [
    (30.0, 10, [2.0, 1.0], True),        # exactly 3 x chance learned
    (29.99, 10, [2.0, 1.0], False),      # just below
    (90.0, 10, [3.0, 0.9 * GUESS_10], False),          # final loss exactly 90% of ln 10
    (90.0, 10, [3.0, 0.9 * GUESS_10 - 1e-9], True),
    (90.0, 10, [0.7, 0.65], True),       # learned within epoch 1: no fall needed
    (90.0, 10, [2.0, 0.5, 2.2], False),  # the last epoch counts, not the ones between
    (30.0, 10, [2.0], True),             # one epoch: its loss is the last
    (30.0, 10, [2.3], False),
    (40.0, 10, [], True),                # no losses: only the top-1 criterion
    (75.0, 2, [1.0, 0.5], True),         # 2 classes: floor 75%, 0.9 ln 2 = 0.62
    (75.0, 2, [1.0, 0.65], False),
    (74.9, 2, [1.0, 0.5], False),
    (None, 10, [2.0, 1.0], None),        # not finished
    (float("nan"), 10, [2.0, 1.0], None),
    (50.0, None, [2.0, 1.0], None),      # class count unknown
    (50.0, 0, [2.0, 1.0], None),
])
def test_did_learn(top1, classes, losses, expected):
    assert did_learn(top1, classes, losses) is expected


def test_loss_fell_reads_the_last_finite_epoch():
    assert loss_fell([2.0, None, float("nan")], 10) is True       # 2.0 < 2.07
    assert loss_fell([None, float("inf")], 10) is None
    assert loss_fell([1.0, 2.2, None], 10) is False                # 2.2 >= 2.07
    assert loss_fell([0.1], 1) is None                             # one class: no guess loss


# --------------------------------------------------------------------------- aggregates


def test_a_run_that_did_not_learn_is_left_out(tmp_path):
    top1 = {**BASE, ("se", 0): 64.0, ("se", 1): 5.0, ("se", 2): 62.0}
    root = make_run(tmp_path / "r", variants=("none", "se"), top1=top1)
    runs = {(r["variant"], r["seed"]): r for r in load_results(root)["runs"]}
    assert runs["se", 1]["learned"] is False and runs["se", 0]["learned"] is True
    assert runs["se", 1]["chance_top1"] == 10.0
    se = _aggs(root)["se"]
    assert se["status"] == "ok"
    assert (se["n_finished"], se["n_learned"], se["n_not_learned"]) == (3, 2, 1)
    assert se["top1_mean"] == 63.0 and se["top1_std"] == pytest.approx(math.sqrt(2))
    assert se["top5_mean"] == 93.0  # (94 + 92) / 2: the left-out run's 35 is not in it
    assert se["top1_ci_low"] == pytest.approx(63.0 - T_975_1)  # t * sqrt(2) / sqrt(2)
    # paired over seeds 0 and 2 only: deltas 64 - 60 = 4 and 62 - 61 = 1
    assert se["delta_n"] == 2 and se["delta_top1_mean"] == 2.5
    assert se["delta_top1_std"] == pytest.approx(math.sqrt(4.5))
    assert se["delta_top1_ci_high"] == pytest.approx(2.5 + 1.5 * T_975_1)  # sd / sqrt(2) = 1.5
    with (root / "results.csv").open() as f:
        table = list(csv.DictReader(f))
    assert "learned" in table[0] and "n_not_learned" in table[0]
    assert [r["learned"] for r in table if r["row"] == "run" and r["variant"] == "se"] == \
        ["True", "False", "True"]
    assert [float(r["n_not_learned"]) for r in table if r["row"] == "aggregate"] == [0, 1]
    assert _verdicts(root)["se"]["text"] == (
        "se: no detectable difference in top-1 (Δ +2.5, 95% CI [-16.6, +21.6], paired over 2 "
        f"seeds) for {COST_SE} (1 of 3 runs did not learn and is left out).")


def test_a_variant_with_no_learned_run(tmp_path):
    top1 = {**BASE, ("cbam", 0): 5.0, ("cbam", 1): 12.0, ("cbam", 2): 29.9}
    root = make_run(tmp_path / "r", variants=("none", "se", "cbam"), top1=top1)
    cbam = _aggs(root)["cbam"]
    assert cbam["status"] == DID_NOT_LEARN
    assert (cbam["n_finished"], cbam["n_learned"], cbam["n_not_learned"]) == (3, 0, 3)
    for key in ("top1_mean", "top1_std", "top1_ci_low", "top5_mean", "test_loss_mean",
                "delta_top1_mean", "delta_top1_ci_low"):
        assert cbam[key] is None, key
    assert cbam["delta_n"] == 0 and cbam["params"] is not None
    v = _verdicts(root)["cbam"]
    assert v == {"label": "cbam", "tone": "bad", "text": (
        "cbam: did not learn in any of its 3 runs (final top-1 at chance); no accuracy "
        f"verdict; costs {COST_3RD}.")}


def test_a_flat_training_loss_is_named_as_the_reason(tmp_path):
    flat = {("se", s): [3.6, 3.5, 3.4] for s in (0, 1)}  # 0.9 ln 10 = 2.07
    root = make_run(tmp_path / "r", variants=("none", "se"), seeds=(0, 1), losses=flat)
    assert _aggs(root)["se"]["status"] == DID_NOT_LEARN
    assert _verdicts(root)["se"]["text"].startswith(
        "se: did not learn in any of its 2 runs (training loss did not fall); no accuracy")


def test_the_baseline_not_learning_is_stated(tmp_path):
    top1 = {("none", 0): 8.0, ("none", 1): 9.0, ("none", 2): 10.0}
    root = make_run(tmp_path / "r", variants=("none", "se"), top1=top1)
    aggs = _aggs(root)
    assert aggs["none"]["status"] == DID_NOT_LEARN
    assert aggs["se"]["status"] == "ok" and aggs["se"]["top1_mean"] == 63.0
    assert aggs["se"]["delta_top1_mean"] is None and aggs["se"]["delta_n"] == 0
    assert _verdicts(root)["se"] == {"label": "se", "tone": "bad", "text": (
        "se: no top-1 delta: the baseline did not learn in any of its 3 runs (final top-1 at "
        f"chance), so there is nothing to pair with; costs {COST_SE}.")}


# --------------------------------------------------------------------------- verdicts


def test_verdict_when_the_interval_excludes_zero(tmp_path):
    top1 = {**BASE, ("se", 0): 62.0, ("se", 1): 64.5, ("se", 2): 64.0,   # +2, +2.5, +3
            ("ca", 0): 58.0, ("ca", 1): 59.5, ("ca", 2): 58.0}          # -2, -2.5, -3
    root = make_run(tmp_path / "r", variants=("none", "se", "ca"), top1=top1)
    v = _verdicts(root)
    half = T_975_2 * 0.5 / math.sqrt(3)
    assert f"{half:.1f}" == "1.2"
    assert v["se"] == {"label": "se", "tone": "good", "text": (
        f"se: +2.5 ± 1.2 top-1 for {COST_SE} (paired over 3 seeds, 95% CI).")}
    assert v["ca"]["tone"] == "bad"
    assert v["ca"]["text"] == f"ca: -2.5 ± 1.2 top-1 for {COST_3RD} (paired over 3 seeds, 95% CI)."


def test_verdict_says_when_both_sit_at_the_ceiling(tmp_path):
    """At the task's ceiling no interval can separate anything: the verdict says so."""
    top1 = {("none", 0): 100.0, ("none", 1): 99.9, ("none", 2): 100.0,
            ("se", 0): 100.0, ("se", 1): 100.0, ("se", 2): 99.6,
            ("ca", 0): 99.6, ("ca", 1): 99.2, ("ca", 2): 99.5}
    root = make_run(tmp_path / "r", variants=("none", "se", "ca"), top1=top1)
    v = _verdicts(root)
    assert v["se"]["tone"] == "neutral"
    assert v["se"]["text"].startswith("se: no detectable difference in top-1 (Δ -0.1, 95% CI")
    assert v["se"]["text"].endswith("(both at the task's ceiling (≥ 99.5 % top-1): this data "
                                    "set cannot separate them).")
    assert "ceiling" not in v["ca"]["text"]                   # ca's mean 99.43 % is below it


def test_verdict_with_one_seed_and_a_left_out_baseline_run(tmp_path):
    root = make_run(tmp_path / "one", variants=("none", "se"), seeds=(0,))
    assert _verdicts(root)["se"]["text"] == (
        f"se: +2.0 top-1 for {COST_SE} (one seed: no interval can be given).")
    top1 = {**BASE, ("none", 1): 3.0}
    root = make_run(tmp_path / "three", variants=("none", "se"), top1=top1)
    assert _aggs(root)["se"]["delta_n"] == 2
    assert _verdicts(root)["se"]["text"].endswith(
        "(baseline: 1 of 3 runs did not learn and is left out).")


# --------------------------------------------------------------------------- records


def test_results_older_than_the_flag(tmp_path):
    top1 = {**BASE, ("se", 0): 5.0}
    root = make_run(tmp_path / "r", variants=("none", "se"), top1=top1)
    layout = Layout(root)
    for (variant, seed), classes in ((("se", 0), 10), (("se", 1), 10), (("se", 2), None)):
        path = layout.run_dir(variant, seed) / "result.json"
        rec = read_json(path)
        del rec["learned"], rec["chance_top1"]
        if classes:
            rec["per_class_acc"] = {f"c{i}": rec["top1"] for i in range(classes)}
        write_json(path, rec)
    saved = read_json(layout.results_json)
    write_json(layout.results_json, {**saved, "schema": 1})  # stale: rebuilt on load
    res = load_results(root)
    assert res["schema"] == RESULTS_SCHEMA == 2
    runs = {(r["variant"], r["seed"]): r for r in res["runs"]}
    assert runs["se", 0]["learned"] is False and runs["se", 1]["learned"] is True
    assert runs["se", 0]["chance_top1"] == 10.0
    assert runs["se", 2]["learned"] is None and runs["se", 2]["chance_top1"] is None
    se = _aggs(root)["se"]
    assert (se["n_learned"], se["n_not_learned"]) == (2, 1)  # unknown counts as learned
    assert se["top1_mean"] == 63.5


def test_report_marks_runs_that_did_not_learn(tmp_path):
    top1 = {**BASE, ("se", 0): 64.0, ("se", 1): 5.0, ("se", 2): 62.0,
            ("ca", 0): 5.0, ("ca", 1): 6.0, ("ca", 2): 4.0}
    root = make_run(tmp_path / "r", variants=("none", "se", "ca"), top1=top1)
    html = render_report(root).read_text()
    assert '<span class="ci">2/3 learned</span>' in html
    assert html.count('<tr class="not-learned">') == 4  # per-seed rows
    assert 'class="variant failed not-learned" data-variant="ca"' in html
    assert 'class="variant not-learned" data-variant="se"' in html
    assert "ca: did not learn in any of its 3 runs" in html
    assert "Such runs are left out of every accuracy number" in html


def test_terminal_summary_and_warnings(tmp_path, capsys):
    top1 = {**BASE, ("se", 0): 64.0, ("se", 1): 5.0, ("se", 2): 62.0,
            ("ca", 0): 5.0, ("ca", 1): 6.0, ("ca", 2): 4.0}
    root = make_run(tmp_path / "r", variants=("none", "se", "ca"), top1=top1)
    results = write_results(root)
    outcome = types.SimpleNamespace(out=root, results=results,
                                    results_csv=root / "results.csv",
                                    results_json=root / "results.json")
    _print_summary(outcome, None)
    out, err = capsys.readouterr()
    assert "did not learn" in out and "2/3 learned" in out
    assert "not every piece finished" not in err
    assert "left out of top-1 and deltas: se (1/3), ca (3/3)" in " ".join(err.split())


def test_train_summary_line_warns():
    common = dict(status="finished", test_loss=2.3, epochs_done=2, steps_done=4,
                  wall_time_s=1.0, chance_top1=25.0)
    at_chance = RunResult(top1=20.0, learned=False, **common)
    assert "test loss 2.300, warning: did not learn (top-1 at chance: 25.0% by guessing), " \
        "2 epochs" in summary_line(at_chance, "x")
    flat = RunResult(top1=90.0, learned=False, **common)
    assert "warning: did not learn (training loss did not fall)" in summary_line(flat, "x")
    assert "did not learn" not in summary_line(RunResult(top1=90.0, learned=True, **common), "x")


def test_result_json_round_trips_the_flag():
    r = RunResult(status="finished", top1=50.0, chance_top1=10.0, learned=True)
    assert RunResult.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    assert RunResult.from_dict({"status": "finished", "top1": 50.0}).learned is None
