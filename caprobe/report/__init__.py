"""HTML reports rendered from saved compare run folders only (never from live state).

Python API (the module is callable: ``caprobe.report(...)`` is :func:`render_report`)::

    import caprobe
    caprobe.report(["runs/a"])                          # runs/a/report.html
    caprobe.report(["runs/a", "runs/b"], "page.html")   # merged (same data set)
    from caprobe.report import render_index
    render_index("reports")                             # history page of nightlies
"""

from __future__ import annotations

import sys
import types
from typing import Any

__all__ = ["render_index", "render_report"]


def render_report(roots, out=None):
    """Render ``report.html`` from saved run folder(s); see :mod:`caprobe.report.render`."""
    from caprobe.report.render import render_report as _render

    return _render(roots, out)


def render_index(reports_dir="reports", out=None):
    """Write the nightly history page; see :mod:`caprobe.report.history`."""
    from caprobe.report.history import render_index as _index

    return _index(reports_dir, out)


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any):
        return render_report(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
