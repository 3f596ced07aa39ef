"""Where every record of a comparison lives inside its run folder.

::

    OUT/
      plan.json                      options + the list of variants x seeds (written first)
      provenance.json                command lines, versions, machine, start/end of each session
      variants/<slug>/counts.json    parameters and multiply-adds of one variant
      variants/<slug>/latency.json   its latency (all variants are timed interleaved)
      variants/<slug>/seed-<s>/      the training run folder of (variant, seed)
      variants/<slug>/seed-<s>/error.json   that piece failed outside training (final), or
                                     the machine failed it ("retry": true)
      variants/<slug>/latency-<R>[-int8].json  with --runtime R: its latency in runtime R
      variants/<slug>/seed-<s>/int8-<R>.json   with --int8: that trained model's int8 top-1
      variants/<slug>/gate_error.json          with --int8: each gate's int8 SQNR
      attention_maps.json            gates of a few fixed test images, for the report
      runtimes.json                  with --runtime: the runtime records gathered
      slurm.json, slurm/             with --executor slurm: each piece's job id; submitit's
                                     job files and logs (variants/<slug>/seed-<s>/attempts.jsonl:
                                     every try of the piece)
      results.csv / results.json     one row per variant x seed, plus aggregates
      report.html                    rendered from the records above only

Every file is written atomically (:mod:`caprobe.io`) as soon as its piece is finished.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

PLAN = "plan.json"
PROVENANCE = "provenance.json"
RESULTS_CSV = "results.csv"
RESULTS_JSON = "results.json"
MAPS = "attention_maps.json"
REPORT = "report.html"
RUNTIMES = "runtimes.json"
COUNTS = "counts.json"
LATENCY = "latency.json"
ERROR = "error.json"

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def slug(variant: str) -> str:
    """A folder name for a canonical spec: readable, and unique (hash when characters were
    replaced, so ``ca:r=8`` and ``ca-r-8`` never collide)."""
    safe = _UNSAFE.sub("-", variant).strip("-.") or "variant"
    if safe != variant:
        safe = f"{safe}-{hashlib.sha1(variant.encode('utf-8')).hexdigest()[:6]}"
    return safe


class Layout:
    """Paths of one run folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def plan(self) -> Path:
        return self.root / PLAN

    @property
    def provenance(self) -> Path:
        return self.root / PROVENANCE

    @property
    def results_csv(self) -> Path:
        return self.root / RESULTS_CSV

    @property
    def results_json(self) -> Path:
        return self.root / RESULTS_JSON

    @property
    def maps(self) -> Path:
        return self.root / MAPS

    @property
    def report(self) -> Path:
        return self.root / REPORT

    def variant_dir(self, variant: str) -> Path:
        return self.root / "variants" / slug(variant)

    def counts(self, variant: str) -> Path:
        return self.variant_dir(variant) / COUNTS

    def latency(self, variant: str) -> Path:
        return self.variant_dir(variant) / LATENCY

    def runtime_latency(self, variant: str, runtime: str, int8: bool) -> Path:
        return self.variant_dir(variant) / f"latency-{runtime}{'-int8' if int8 else ''}.json"

    def int8(self, variant: str, seed: int, runtime: str) -> Path:
        return self.run_dir(variant, seed) / f"int8-{runtime}.json"

    def gate_error(self, variant: str) -> Path:
        return self.variant_dir(variant) / "gate_error.json"

    @property
    def runtimes(self) -> Path:
        return self.root / RUNTIMES

    def run_dir(self, variant: str, seed: int) -> Path:
        return self.variant_dir(variant) / f"seed-{seed}"

    def error(self, variant: str, seed: int) -> Path:
        return self.run_dir(variant, seed) / ERROR
