"""``caprobe compare``: the ablation end to end, saved as a run folder.

Python API::

    from caprobe.compare import CompareOptions, run_compare
    outcome = run_compare(CompareOptions(attn=["se", "cbam", "ca"]), out="runs/x")
    outcome.results["aggregates"]          # one dict per variant (also results.json / .csv)
    run_compare(out="runs/x", resume=True)  # finish what is missing

See :mod:`caprobe.compare.layout` for the folder layout.
"""

from caprobe.compare.layout import Layout, slug
from caprobe.compare.plan import BASELINE, CompareOptions, Plan, load_plan
from caprobe.compare.results import build_results, load_results, write_results
from caprobe.compare.run import CompareOutcome, run_compare

__all__ = [
    "BASELINE", "CompareOptions", "CompareOutcome", "Layout", "Plan", "build_results",
    "load_plan", "load_results", "run_compare", "slug", "write_results",
]
