"""``caprobe compare``: the ablation end to end, saved as a run folder.

Python API (``caprobe.compare`` is :func:`run_compare`)::

    import caprobe
    from caprobe.comparison import CompareOptions
    outcome = caprobe.compare(CompareOptions(attn=["se", "cbam", "ca"]), out="runs/x")
    outcome.results["aggregates"]                  # one dict per variant (results.json)
    caprobe.compare(out="runs/x", resume=True)     # finish what is missing

See :mod:`caprobe.comparison.layout` for the folder layout.
"""

from __future__ import annotations

from caprobe.comparison.layout import Layout, slug
from caprobe.comparison.plan import BASELINE, CompareOptions, Plan, load_plan
from caprobe.comparison.results import build_results, load_results, write_results
from caprobe.comparison.run import CompareOutcome, run_compare

__all__ = [
    "BASELINE", "CompareOptions", "CompareOutcome", "Layout", "Plan", "build_results",
    "load_plan", "load_results", "run_compare", "slug", "write_results",
]
