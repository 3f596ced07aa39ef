"""HTML reports rendered from saved compare run folders only (never from live state).

Python API (``caprobe.report`` is :func:`render_report`)::

    import caprobe
    caprobe.report(["runs/a"])                          # runs/a/report.html
    caprobe.report(["runs/a", "runs/b"], "page.html")   # merged (same data set)
    from caprobe.reporting import render_index
    render_index("reports")                             # history page of nightlies
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["render_index", "render_report"]


def render_report(roots: list[str | Path] | str | Path, out: str | Path | None = None) -> Path:
    """Render ``report.html`` from saved run folder(s); see :mod:`caprobe.reporting.render`."""
    from caprobe.reporting.render import render_report as _render

    return _render(roots, out)


def render_index(reports_dir: str | Path = "reports", out: str | Path | None = None) -> Path:
    """Write the nightly history page; see :mod:`caprobe.reporting.history`."""
    from caprobe.reporting.history import render_index as _index

    return _index(reports_dir, out)

