"""Calibrate the built-in positional probe at the default budget (also ``nox -s calibrate``).

One table: per variant (``none se cbam eca ca ca_h ca_w``), over seeds 0..9 of the default
``train`` recipe, the mean, sd, min and max top-1 and the runs that did not learn
(:func:`caprobe.stats.did_learn`: final top-1 below 3 × chance, or a last training loss not
below 90 % of ln C, a uniform guess's); then two controls at the same budget:

* **shuffled labels** (``shuffle_labels=1``): the training labels permuted, the test labels
  true; top-1 must stay within 2 points of chance, or the probe leaks something;
* **coordinates** (``TrainConfig(coords=True)``, CoordConv): the stem also sees each pixel's
  row and column; it must score clearly above the plain baseline, or the probe does not
  measure position.

Targets (issue "verdicts you can trust"), all at once: 0 runs that did not learn; the
baseline's mean in [55, 85] %; sd <= 2.5 points for every variant; the controls as above.
The 70 trainings run as one ``caprobe compare`` (``--jobs`` workers, paired seeds) into
``--out``, so the run folder is a normal comparison (report, results.csv) and ``--resume``
finishes an interrupted calibration. Run it alone on the machine.

    python benchmarks/probe_calibration.py                       # ~15 min on 2 cores
    python benchmarks/probe_calibration.py --seeds 3 --control-seeds 2   # a quick look
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path

VARIANTS = ("se", "cbam", "eca", "ca", "ca_h", "ca_w")
MAX_SD = 2.5
BAND = (55.0, 85.0)
SHUFFLED_SLACK = 2.0  # points from chance
#: "clearly above": the CoordConv control's mean beats the baseline's by more than this
COORDS_MARGIN = 5.0


def _summary(name: str, runs: list[dict]) -> dict:
    top = [r["top1"] for r in runs if r.get("top1") is not None]
    return {
        "variant": name, "n": len(runs),
        "mean": statistics.fmean(top) if top else None,
        "sd": statistics.stdev(top) if len(top) > 1 else None,
        "min": min(top) if top else None, "max": max(top) if top else None,
        "not_learned": sum(r.get("learned") is False or r.get("status") != "finished"
                           for r in runs),
    }


def _controls(seeds: list[int], threads: int | None) -> dict[str, list[dict]]:
    from caprobe.training import TrainConfig, train

    out: dict[str, list[dict]] = {"shuffled labels": [], "coordinates (CoordConv)": []}
    for seed in seeds:
        for name, config in (
                ("shuffled labels", TrainConfig(seed=seed, threads=threads,
                                                data_options={"shuffle_labels": 1})),
                ("coordinates (CoordConv)", TrainConfig(seed=seed, threads=threads,
                                                        coords=True))):
            res = train(config, progress=False)
            out[name].append({"seed": seed, "top1": res.top1, "learned": res.learned,
                              "status": res.status, "chance": res.chance_top1})
            print(f"  control {name}, seed {seed}: {res.status}, top-1 {_fmt(res.top1)}",
                  file=sys.stderr)
    return out


def _fmt(v: float | None, spec: str = ".1f") -> str:
    return "–" if v is None else format(v, spec)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 per variant")
    ap.add_argument("--control-seeds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=None, help="trainings at once (compare's)")
    ap.add_argument("--out", type=Path, default=None,
                    help="run folder (default runs/calibration-<date>); resumed if it exists")
    ap.add_argument("--json", type=Path, default=None, help="also write the table as JSON")
    args = ap.parse_args(argv)

    from caprobe.comparison import CompareOptions, run_compare
    from caprobe.comparison.plan import load_plan
    from caprobe.reporting import render_report

    out = args.out or Path("runs") / f"calibration-{dt.date.today():%Y-%m-%d}"
    started = time.perf_counter()
    options = CompareOptions(attn=list(VARIANTS), seeds=args.seeds, jobs=args.jobs,
                             latency_min_time=0.1, map_images=0)
    resume = (out / "plan.json").is_file()  # finish an interrupted calibration
    given = {"seeds", "jobs"} if args.jobs else {"seeds"}
    outcome = run_compare(options, out, resume=resume, given=given if resume else None)
    render_report([out], out / "report.html")
    runs = outcome.results["runs"]
    rows = [_summary(v, [r for r in runs if r["variant"] == v]) for v in ["none", *VARIANTS]]
    chance = next((r["chance_top1"] for r in runs if r.get("chance_top1")), None)
    # the controls train with the threads the compare's pieces had
    threads = load_plan(out).get("train_threads")
    controls = _controls(list(range(args.control_seeds)), threads)
    ctrl_rows = [_summary(name, rs) for name, rs in controls.items()]
    wall = time.perf_counter() - started

    base = rows[0]["mean"]
    shuffled, coords = ctrl_rows
    checks = [
        ("runs that did not learn", sum(r["not_learned"] for r in rows), "== 0",
         sum(r["not_learned"] for r in rows) == 0),
        ("none mean top-1", base, f"in [{BAND[0]:.0f}, {BAND[1]:.0f}]",
         base is not None and BAND[0] <= base <= BAND[1]),
        ("largest sd", max((r["sd"] or 0.0) for r in rows), f"<= {MAX_SD}",
         all(r["sd"] is not None and r["sd"] <= MAX_SD for r in rows)),
        ("shuffled labels - chance", None if shuffled["mean"] is None or chance is None
         else shuffled["mean"] - chance, f"within ±{SHUFFLED_SLACK:.0f}",
         shuffled["mean"] is not None and chance is not None
         and abs(shuffled["mean"] - chance) <= SHUFFLED_SLACK),
        ("coordinates - none", None if coords["mean"] is None or base is None
         else coords["mean"] - base, f"> +{COORDS_MARGIN:.0f}",
         coords["mean"] is not None and base is not None
         and coords["mean"] - base > COORDS_MARGIN),
    ]

    from caprobe.measure.environment import collect_env

    env = collect_env("cpu")
    print(f"\npositional probe calibration, {dt.date.today()}, {env.get('cpu_model', '?')}, "
          f"torch {env.get('torch')}, {outcome.out}, {wall / 60:.1f} min")
    print(f"chance {_fmt(chance)} %; a run did not learn: top-1 < 3 x chance or its last "
          "training loss not below 0.9 ln C")
    head = f"{'variant':<26}{'runs':>5}{'mean':>7}{'sd':>6}{'min':>7}{'max':>7}{'not learned':>13}"
    print(head)
    print("-" * len(head))
    for r in rows + ctrl_rows:
        print(f"{r['variant']:<26}{r['n']:>5}{_fmt(r['mean']):>7}{_fmt(r['sd'], '.2f'):>6}"
              f"{_fmt(r['min']):>7}{_fmt(r['max']):>7}{r['not_learned']:>13}")
    print()
    for name, value, target, ok in checks:
        shown = _fmt(value, "+.2f" if name.endswith(("chance", "none")) else ".2f")
        print(f"{'PASS' if ok else 'MISS'}  {name}: {shown} (target {target})")
    if args.json:
        args.json.write_text(json.dumps({"date": str(dt.date.today()), "env": env,
                                         "rows": rows, "controls": ctrl_rows,
                                         "checks": [list(c) for c in checks],
                                         "wall_s": wall}, indent=2))
    return 0 if all(c[3] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
