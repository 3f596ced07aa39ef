"""``caprobe compare``: the ablation end to end, saved as a run folder.

Python API (the module is callable: ``caprobe.compare(...)`` is :func:`run_compare`)::

    import caprobe
    from caprobe.compare import CompareOptions
    outcome = caprobe.compare(CompareOptions(attn=["se", "cbam", "ca"]), out="runs/x")
    outcome.results["aggregates"]                  # one dict per variant (results.json)
    caprobe.compare(out="runs/x", resume=True)     # finish what is missing

See :mod:`caprobe.compare.layout` for the folder layout.
"""

from __future__ import annotations

import sys
import types

from caprobe.compare.layout import Layout, slug
from caprobe.compare.plan import BASELINE, CompareOptions, Plan, load_plan
from caprobe.compare.results import build_results, load_results, write_results
from caprobe.compare.run import CompareOutcome, run_compare


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return run_compare(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = [
    "BASELINE", "CompareOptions", "CompareOutcome", "Layout", "Plan", "build_results",
    "load_plan", "load_results", "run_compare", "slug", "write_results",
]
