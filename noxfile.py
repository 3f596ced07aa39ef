"""nox sessions: tests, lint, benchmarks and report artefacts.

Every session installs ``torch==2.13.0`` first (a CPU build from local disk here; an
unpinned torch would pull a multi-GB CUDA build), then the project.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True

TORCH = "torch==2.13.0"


def install(session: nox.Session, extras: str = "test") -> None:
    session.install(TORCH)
    session.install("-e", f".[{extras}]")


@nox.session
def tests(session: nox.Session) -> None:
    """The unit and end-to-end test suite."""
    install(session)
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the package, tests, benchmarks and this file."""
    session.install("ruff>=0.5")
    session.run("ruff", "check", "caprobe", "tests", "benchmarks", "noxfile.py")


@nox.session
def bench(session: nox.Session) -> None:
    """Attention latency benchmark: fast CA vs paper form, overhead, agreement with torch's Timer.

    Pass options through, e.g. ``nox -s bench -- --threads 2 --min-time 3``.
    """
    install(session)
    session.run("python", "benchmarks/attention_latency.py", *session.posargs)


@nox.session
def calibrate(session: nox.Session) -> None:
    """The positional probe's calibration (benchmarks/probe_calibration.py): 7 variants x 10
    seeds at the default budget plus the shuffled-label and coordinate controls, one table
    with PASS/MISS per target (about 15 minutes on 2 cores; run it alone)."""
    install(session)
    session.run("python", "benchmarks/probe_calibration.py", *session.posargs)


# --------------------------------------------------------------------------- compare reports

#: The fixed ablation plan of the nightly and the smoke run (the baseline none is implied).
ABLATION_BACKBONES = ("mobilenetv2", "mobilenext")
ABLATION_ATTN = ("se", "cbam", "ca", "ca_h", "ca_w")
#: Nightly budget on real CIFAR-10: 2 backbones x 6 variants x 3 seeds = 36 trainings of
#: 3 epochs over a 5,000-image class-balanced subset (each epoch evaluated on the full
#: 10,000-image test set); sized for about an hour on 2 cores.
NIGHTLY_BUDGET = ("--seeds", "3", "--epochs", "3", "--train-subset", "5000", "--width", "0.5",
                  "--min-time", "1.0")
#: Smoke budget on the built-in positional set: the same pipeline in a few minutes, with
#: runs that learn (96 steps; 2 x 512 images left every run at chance) so that deltas, maps
#: and verdicts are exercised.
SMOKE_BUDGET = ("--seeds", "2", "--epochs", "2", "--train-subset", "1536", "--width", "0.35",
                "--min-time", "0.2")


def _ablation(session: nox.Session, out, data_args, budget) -> None:
    """compare each backbone into ``out/<backbone>`` (resuming a run already there), then
    one merged ``out/report.html``."""
    runs = []
    for backbone in ABLATION_BACKBONES:
        run = out / backbone
        where = ("--resume", str(run)) if (run / "plan.json").is_file() else ("--out", str(run))
        session.run("caprobe", "compare", "--model", backbone, "--attn", *ABLATION_ATTN,
                    *data_args, *budget, *where)
        runs.append(str(run))
    session.run("caprobe", "report", *runs, "--out", str(out / "report.html"))


def _cifar10_args(session: nox.Session) -> list[str]:
    """Real CIFAR-10: ``$CAPROBE_DATA`` (its cifar10/ folder or cifar10-jpg.tar, or itself),
    else ``../shared/data/cifar10-jpg.tar``."""
    import os
    from pathlib import Path

    env = os.environ.get("CAPROBE_DATA")
    candidates = []
    if env:
        root = Path(env).expanduser()
        if (root / "cifar10").exists():
            return ["--data", "cifar10"]  # the data layer looks in $CAPROBE_DATA/cifar10
        candidates += [root / "cifar10-jpg.tar", root]
    candidates.append(Path("..") / "shared" / "data" / "cifar10-jpg.tar")
    for path in candidates:
        if path.exists():
            return ["--data", "cifar10", "--data-dir", str(path.resolve())]
    session.error("no CIFAR-10 found: set CAPROBE_DATA or put cifar10-jpg.tar in "
                  "../shared/data/")
    return []


@nox.session
def nightly(session: nox.Session) -> None:
    """The fixed nightly ablation on real CIFAR-10 (about an hour on 2 cores):
    ``reports/nightly-YYYY-MM-DD/`` (one run per backbone + merged report.html) and the
    history page ``reports/index.html``. Rerunning on the same day resumes."""
    import datetime
    from pathlib import Path

    install(session)
    data_args = _cifar10_args(session)
    out = Path("reports") / f"nightly-{datetime.date.today():%Y-%m-%d}"
    _ablation(session, out, data_args, NIGHTLY_BUDGET)
    session.run("python", "-m", "caprobe.report.history", "reports")


@nox.session
def report_smoke(session: nox.Session) -> None:
    """The nightly pipeline on the built-in positional set in a few minutes (CI runs it):
    ``reports/smoke/`` with one run per backbone, the merged report and a history page."""
    import shutil
    from pathlib import Path

    install(session)
    out = Path("reports") / "smoke"
    shutil.rmtree(out, ignore_errors=True)
    _ablation(session, out, ["--data", "positional"], SMOKE_BUDGET)
    session.run("python", "-m", "caprobe.report.history", "reports", str(out / "index.html"))
