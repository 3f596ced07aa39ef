"""The HTML report and the results aggregation, from synthetic saved records (no training)."""

from __future__ import annotations

import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from test_report_support import make_run
from typer.testing import CliRunner

from caprobe.cli import app
from caprobe.comparison.results import load_results
from caprobe.errors import CaprobeError
from caprobe.reporting import render_index, render_report
from caprobe.reporting.history import collect
from caprobe.reporting.plots import pareto_front
from caprobe.reporting.render import fmt_acc, fmt_count, fmt_delta, fmt_pct, fmt_ratio_pct

runner = CliRunner()

# top-1 per (variant, seed): hand-computed statistics below
TOP1 = {("none", 0): 60.0, ("none", 1): 62.0, ("none", 2): 61.0,
        ("se", 0): 61.0, ("se", 1): 64.0, ("se", 2): 62.0,
        ("ca", 0): 63.0, ("ca", 1): 63.0, ("ca", 2): 63.0}
T_975_2 = 4.302652729911275  # Student t, 97.5% quantile, 2 degrees of freedom


class _Table(HTMLParser):
    """Rows of the summary table: variant -> {data-key: (data-value, text)}."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, dict[str, tuple[str, str]]] = {}
        self.labels: list[str] = []
        self._in_summary = False
        self._variant = None
        self._key = None
        self._text = ""
        self._label = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and "summary" in (a.get("class") or ""):
            self._in_summary = True
        if not self._in_summary:
            return
        if tag == "tr" and "data-variant" in a:
            self._variant = a["data-variant"]
            self.rows[self._variant] = {}
        if tag == "td" and self._variant is not None:
            if "data-key" in a:
                self._key = (a["data-key"], a.get("data-value", ""))
                self._text = ""
            elif "label" in (a.get("class") or ""):
                self._label = True
                self._text = ""
        if tag == "span" and self._key is not None:
            self._key = (*self._key[:2], "done")  # stop at the CI span

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_summary = False
        if tag == "td":
            if self._key is not None:
                self.rows[self._variant][self._key[0]] = (self._key[1], self._text.strip())
            if self._label:
                self.labels.append(self._text.strip())
            self._key = None
            self._label = False

    def handle_data(self, data):
        if (self._key is not None and len(self._key) == 2) or self._label:
            self._text += data


def _parse(html: str) -> _Table:
    p = _Table()
    p.feed(html)
    return p


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("run") / "r", variants=("none", "se", "ca"),
                    top1=TOP1)


def test_statistics_match_hand_computed_values(run_dir):
    res = json.loads((run_dir / "results.json").read_text())
    agg = {r["variant"]: r for r in res["aggregates"]}
    se = agg["se"]
    assert se["top1_mean"] == pytest.approx(187 / 3)
    sd = math.sqrt(((61 - 187 / 3) ** 2 + (64 - 187 / 3) ** 2 + (62 - 187 / 3) ** 2) / 2)
    assert se["top1_std"] == pytest.approx(sd)
    half = T_975_2 * sd / math.sqrt(3)
    assert se["top1_ci_low"] == pytest.approx(187 / 3 - half, abs=1e-9)
    assert se["top1_ci_high"] == pytest.approx(187 / 3 + half, abs=1e-9)
    # paired deltas by seed: 1, 2, 1 -> mean 4/3, sd sqrt(1/3)
    assert se["delta_top1_mean"] == pytest.approx(4 / 3)
    assert se["delta_n"] == 3
    half_d = T_975_2 * math.sqrt(1 / 3) / math.sqrt(3)
    assert se["delta_top1_ci_low"] == pytest.approx(4 / 3 - half_d, abs=1e-9)
    assert se["delta_top1_ci_high"] == pytest.approx(4 / 3 + half_d, abs=1e-9)
    # ca: constant 63 against 60, 62, 61 -> deltas 3, 1, 2
    assert agg["ca"]["delta_top1_mean"] == pytest.approx(2.0)
    assert agg["ca"]["delta_top1_ci_low"] == pytest.approx(2.0 - T_975_2 * 1 / math.sqrt(3))
    assert agg["ca"]["top1_ci_low"] == pytest.approx(63.0)  # no spread, zero-width interval
    # cost deltas in percent of the baseline
    assert se["params_delta_pct"] == pytest.approx(100 * 20_000 / 1_000_000)
    assert se["madds_delta_pct"] == pytest.approx(100 * 400_000 / 20_000_000)
    assert agg["none"]["delta_top1_mean"] is None
    assert [r["status"] for r in res["aggregates"]] == ["ok", "ok", "ok"]
    # one row per variant x seed plus one aggregate per variant, in the CSV too
    csv = (run_dir / "results.csv").read_text().splitlines()
    assert len(csv) == 1 + 9 + 3


def test_one_seed_gives_no_interval(tmp_path):
    root = make_run(tmp_path / "one", variants=("none", "ca"), seeds=(0,))
    agg = {r["variant"]: r for r in load_results(root)["aggregates"]}
    assert agg["ca"]["delta_top1_mean"] == pytest.approx(2.0)
    assert agg["ca"]["delta_top1_ci_low"] is None and agg["ca"]["top1_ci_low"] is None
    html = render_report(root).read_text()
    assert "no interval can be given" in html
    assert "[" not in _parse(html).rows["ca"]["delta_top1_mean"][1]


def test_table_numbers_equal_results_json(run_dir):
    html = render_report(run_dir).read_text()
    res = json.loads((run_dir / "results.json").read_text())
    table = _parse(html)
    assert list(table.rows) == ["none", "se", "ca"]  # one row per variant
    fmt = {"params": fmt_count, "madds": fmt_count, "params_delta_pct": fmt_pct,
           "madds_delta_pct": fmt_pct, "latency_overhead": fmt_ratio_pct,
           "top1_mean": fmt_acc, "delta_top1_mean": fmt_delta}
    for agg in res["aggregates"]:
        cells = table.rows[agg["variant"]]
        for key, f in fmt.items():
            value, text = cells[key]
            if agg[key] is None:
                assert value == "" and text == "–"
            else:
                assert float(value) == agg[key]  # exact: repr round-trips
                assert text == f(agg[key])
        assert cells["latency_median_ms"][0] == repr(agg["latency_median_ms"])
    assert ("se: no detectable difference in top-1 (Δ +1.3, 95% CI [-0.1, +2.8], paired over 3 "
            "seeds) for +2.0% params, +2.0% MAdds, +10.0% CPU latency.") in html


def test_page_is_self_contained_and_escaped(tmp_path):
    evil = '<script>alert("x")</script> $\\frac{' + "{$"  # HTML and matplotlib mathtext
    root = make_run(tmp_path / "evil", variants=("none", evil), seeds=(0, 1))
    html = render_report(root).read_text()
    assert "<script" not in html.lower()
    assert "&lt;script&gt;" in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # nothing from the net
    assert "@import" not in html and "url(http" not in html
    assert html.count("<svg") >= 6  # 5 plots + maps
    assert "@media print" in html


def test_failed_variant_is_shown_and_others_go_on(tmp_path):
    root = make_run(tmp_path / "f", variants=("none", "se", "ca"), seeds=(0, 1), failed=("se",))
    agg = {r["variant"]: r for r in load_results(root)["aggregates"]}
    assert agg["se"]["status"] == "failed" and "boom" in agg["se"]["error"]
    assert agg["ca"]["status"] == "ok" and agg["ca"]["delta_n"] == 2
    html = render_report(root).read_text()
    assert "boom in se" in html and 'class="variant failed"' in html


def test_no_train_report(tmp_path):
    root = make_run(tmp_path / "nt", variants=("none", "se"), train=False)
    res = load_results(root)
    assert res["runs"] == [] and res["aggregates"][1]["status"] == "ok"
    html = render_report(root).read_text()
    assert "accuracy not measured (--no-train)" in html


def test_merge_two_runs_same_data(tmp_path):
    a = make_run(tmp_path / "a", variants=("none", "ca"), seeds=(0,))
    b = make_run(tmp_path / "b", variants=("none", "se"), seeds=(0,), model="mobilenext")
    out = tmp_path / "merged.html"
    result = runner.invoke(app, ["report", str(a), str(b), "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = _parse(out.read_text())
    assert table.labels == ["mobilenetv2 none", "mobilenetv2 ca", "mobilenext none",
                            "mobilenext se"]


@pytest.mark.parametrize("case", ["not_a_run", "different_data", "different_checksum",
                                  "missing"])
def test_report_bad_inputs_exit_2_one_line(tmp_path, case):
    a = make_run(tmp_path / "a", variants=("none", "ca"), seeds=(0,), maps=False)
    if case == "not_a_run":
        (tmp_path / "empty").mkdir()
        args = [str(tmp_path / "empty")]
    elif case == "missing":
        args = [str(tmp_path / "nope")]
    else:
        other = make_run(tmp_path / "b", variants=("none", "ca"), seeds=(0,), maps=False,
                         **({"data": "cifar10"} if case == "different_data"
                            else {"checksum": "other"}))
        args = [str(a), str(other)]
    result = runner.invoke(app, ["report", *args, "--out", str(tmp_path / "x.html")])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("caprobe: error:")
    assert not (tmp_path / "x.html").exists()


def test_python_api_is_callable(run_dir, tmp_path):
    import caprobe

    out = caprobe.report([run_dir], tmp_path / "api.html")
    assert out == tmp_path / "api.html" and out.read_text().startswith("<!DOCTYPE html>")
    assert caprobe.compare is caprobe.comparison.run_compare and caprobe.report is render_report


def test_load_results_rejects_non_run(tmp_path):
    with pytest.raises(CaprobeError):
        load_results(tmp_path)


def test_pareto_front():
    pts = [(1.0, 60.0), (2.0, 65.0), (2.5, 64.0), (3.0, 66.0), (1.0, 59.0)]
    assert pareto_front(pts) == [0, 1, 3]


def test_history_index(tmp_path):
    reports = tmp_path / "reports"
    for day, acc in (("2024-05-01", 60.0), ("2024-05-02", 61.0)):
        night = reports / f"nightly-{day}"
        make_run(night / "mobilenetv2", variants=("none", "ca"), seeds=(0,), maps=False,
                 top1={("none", 0): acc, ("ca", 0): acc + 1})
        render_report([night / "mobilenetv2"], night / "report.html")
    other = reports / "nightly-2024-05-02-imagenette"
    make_run(other / "mobilenetv2", variants=("none", "ca"), seeds=(0,), maps=False,
             data="imagenette", top1={("none", 0): 70.0, ("ca", 0): 71.0})
    (reports / "README.md").parent.mkdir(exist_ok=True)
    nights = collect(reports)
    assert [n["name"] for n in nights] == ["nightly-2024-05-01", "nightly-2024-05-02",
                                           "nightly-2024-05-02-imagenette"]
    # a series per model, variant and data set: the two nightlies never share a line
    assert {r["label"] for n in nights for r in n["rows"]} == {
        "mobilenetv2 none · positional", "mobilenetv2 ca · positional",
        "mobilenetv2 none · imagenette", "mobilenetv2 ca · imagenette"}
    page = render_index(reports).read_text()
    assert 'href="nightly-2024-05-02/report.html"' in page
    listing = page[page.index('id="nightlies"'):]
    assert listing.index("2024-05-02") < listing.index("2024-05-01")  # newest first
    assert page.count("<svg") == 2 and "<script" not in page
