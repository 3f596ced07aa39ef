"""HTML reports rendered from saved compare run folders only (never from live state).

Python API::

    from caprobe.report import render_report, render_index
    render_report(["runs/a"], "runs/a/report.html")        # one run
    render_report(["runs/a", "runs/b"], "page.html")       # merged (same data set)
    render_index("reports")                                # history page of nightlies
"""

from __future__ import annotations

from typing import Any

__all__ = ["render_index", "render_report"]


def __getattr__(name: str) -> Any:  # keep ``import caprobe.report`` light
    if name == "render_report":
        from caprobe.report.render import render_report

        return render_report
    if name == "render_index":
        from caprobe.report.history import render_index

        return render_index
    raise AttributeError(f"module 'caprobe.report' has no attribute {name!r}")
