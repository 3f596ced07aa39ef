"""The history page ``reports/index.html``: every nightly, with trends of top-1 and latency.

A nightly is a folder ``nightly-YYYY-MM-DD`` holding one or more compare run folders (or being
one) and usually a merged ``report.html``. Only saved ``results.json`` records are read.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from caprobe.comparison.layout import PLAN
from caprobe.comparison.results import load_results
from caprobe.comparison.rows import AggregateRow
from caprobe.errors import CaprobeError
from caprobe.io import atomic_write_text
from caprobe.reporting import plots

NIGHTLY = re.compile(r"^nightly-(\d{4}-\d{2}-\d{2})(?:[-_].*)?$")


def find_runs(folder: Path) -> list[Path]:
    """Run folders inside ``folder`` (itself, or its direct children), sorted."""
    if (folder / PLAN).is_file():
        return [folder]
    return sorted(p for p in folder.iterdir() if p.is_dir() and (p / PLAN).is_file())


def collect(reports_dir: str | Path) -> list[dict[str, Any]]:
    """One entry per nightly folder (oldest first) with its runs' aggregate rows."""
    reports_dir = Path(reports_dir)
    if not reports_dir.is_dir():
        raise CaprobeError(f"{reports_dir} is not a folder; pass the reports folder")
    nightlies = []
    for folder in sorted(reports_dir.iterdir()):
        m = NIGHTLY.match(folder.name)
        if not folder.is_dir() or not m:
            continue
        rows, data = [], set()
        for run in find_runs(folder):
            try:
                res = load_results(run)
            except CaprobeError:
                continue
            data.add(str(res.get("data")))
            for agg in map(AggregateRow.from_dict, res["aggregates"]):
                # one trend per model, variant and data set: the CIFAR-10 and ImageNette
                # nightlies share the page
                rows.append({"label": f"{res.get('model')} {agg.variant} · {res.get('data')}",
                             "top1": agg.top1_mean, "latency": agg.latency_median_ms,
                             "status": agg.status})
        report = folder / "report.html"
        nightlies.append({
            "name": folder.name, "date": m.group(1), "rows": rows,
            "data": ", ".join(sorted(data)) or "–",
            "report": f"{folder.name}/report.html" if report.is_file() else None,
            "failed": sum(1 for r in rows if r["status"] != "ok"),
        })
    return nightlies


def _series(nightlies: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    labels: list[str] = []
    for n in nightlies:
        for r in n["rows"]:
            if r["label"] not in labels:
                labels.append(r["label"])
    out = []
    for i, label in enumerate(labels):
        ys = []
        for n in nightlies:
            vals = [r[key] for r in n["rows"] if r["label"] == label]
            ys.append(vals[0] if vals else None)
        out.append({"label": label, "color": plots.color(i + 1),
                    "x": [n["date"] for n in nightlies], "y": ys})
    return out


def render_index(reports_dir: str | Path = "reports", out: str | Path | None = None) -> Path:
    """Write the history page (default ``<reports_dir>/index.html``) and return its path."""
    from markupsafe import Markup

    from caprobe.reporting.render import environment

    reports_dir = Path(reports_dir)
    nightlies = collect(reports_dir)
    top1 = plots.trend(_series(nightlies, "top1"), ylabel="top-1 accuracy (%)", prefix="trtop1")
    lat = plots.trend(_series(nightlies, "latency"), ylabel="median latency (ms)",
                      prefix="trlat")
    html = environment().get_template("index.html.j2").render(
        nightlies=list(reversed(nightlies)),
        top1_svg=Markup(top1) if top1 else None,  # noqa: S704 - matplotlib output
        latency_svg=Markup(lat) if lat else None,  # noqa: S704
    )
    out = Path(out) if out is not None else reports_dir / "index.html"
    atomic_write_text(out, html)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m caprobe.reporting.history [REPORTS_DIR [OUT_HTML]]``"""
    args = sys.argv[1:] if argv is None else argv
    path = render_index(args[0] if args else "reports", args[1] if len(args) > 1 else None)
    print(path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
