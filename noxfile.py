"""nox sessions: tests, lint, benchmarks and report artefacts.

Every session installs ``torch==2.13.0`` first (a CPU build from local disk here; an
unpinned torch would pull a multi-GB CUDA build), then the project.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True

TORCH = "torch==2.13.0"


def install(session: nox.Session, extras: str | None = "test") -> None:
    """torch first (the CPU build), then the project with ``extras`` (None: none)."""
    session.install(TORCH)
    session.install("-e", f".[{extras}]" if extras else ".")


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
def bench_runtimes(session: nox.Session) -> None:
    """Latency overhead of each attention module in ONNX Runtime, ExecuTorch-XNNPACK and
    OpenVINO against eager PyTorch (benchmarks/runtime_latency.py; about 10 minutes, most of it
    ExecuTorch's lowering; run it alone). Options pass through: ``-- --runtime executorch``."""
    install(session, "runtimes")
    session.run("python", "benchmarks/runtime_latency.py", *session.posargs)


@nox.session
def calibrate(session: nox.Session) -> None:
    """The positional probe's calibration (benchmarks/probe_calibration.py): 7 variants x 10
    seeds at the default budget plus the shuffled-label and coordinate controls, one table
    with PASS/MISS per target (about 15 minutes on 2 cores; run it alone)."""
    install(session)
    session.run("python", "benchmarks/probe_calibration.py", *session.posargs)


# --------------------------------------------------------------------------- compare reports

#: The smoke run's ablation plan (the baseline none is implied): both backbones, six variants.
ABLATION_BACKBONES = ("mobilenetv2", "mobilenext")
ABLATION_ATTN = ("se", "cbam", "ca", "ca_h", "ca_w")
#: Smoke budget on the built-in positional set: the same pipeline in a few minutes, with
#: runs that learn (96 steps; 2 x 512 images left every run at chance) so that deltas, maps
#: and verdicts are exercised.
#: The smoke run checks the pipeline, not the probe: 768 images (was 1,536: 8 minutes of CI on
#: an AVX2-only EPYC for 24 trainings)
SMOKE_BUDGET = ("--seeds", "2", "--epochs", "2", "--train-subset", "768", "--width", "0.35",
                "--min-time", "0.2")
#: The nightly asks the question users run caprobe for, on real CIFAR-10, within 75 minutes
#: on 2 cores: does CA beat the plain network and SE? One backbone (MobileNetV2, the paper's
#: headline) and three variants (none, se, ca), deltas against none and against se.
#:
#: Steps (sized 2026-12-01): the earlier budget, 3 epochs over 5,000 images (35 % top-1,
#: paired intervals of +-6 to +-9 points), measured how fast a network starts learning;
#: 1,300 steps of 64 (83,200 images, 1.66 epochs of the full set, cosine to zero) bring none
#: past 60 %. The full test set is evaluated once at the end, the curve on a fixed 1,000-image
#: slice (--curve-subset).
#:
#: Seeds: the paired 95 % half-width is t(0.975, n - 1) / sqrt(n) times the sd of the paired
#: differences: 2.48 at 3 seeds, 1.59 at 4, 1.24 at 5. Measured sds: 0.18-0.46 on 2026-12-01
#: (AMD VM), 1.07-1.36 on 2026-12-03 (Xeon VM, 3 seeds), 0.87-1.74 on 2026-12-04 (Xeon VM,
#: 4 seeds). At an sd of about 1.1, 1.5 points needs 5 seeds; each training takes 590-750 s on
#: one of 2 jobs, so 15 trainings need about 84 minutes, over the 75-minute limit. 4 seeds
#: (12 trainings, 6 full rounds of 2 jobs) come closest within it: measured 2026-12-04,
#: 70 min 02 s; half-widths 2.71 (ca vs none, missed) and 1.39 (ca vs se, met); README.
NIGHTLY_MODEL = "mobilenetv2"
NIGHTLY_ATTN = ("se", "ca")
NIGHTLY_BUDGET = ("--seeds", "4", "--steps", "1300", "--width", "0.5", "--min-time", "1.0",
                  "--reference", "se", "--curve-subset", "1000")
#: On a CUDA machine the nightly trains on the whole training set until none is past 90 %:
#: 30 epochs of this recipe, an estimate extrapolated from the CPU curve (77.8 % after 4.35
#: epochs, benchmarks/cifar_budget.py), not a measurement; 5 seeds narrow the paired
#: intervals (t(0.975, 4) / sqrt(5) = 1.24 times the sd of the paired differences). Written
#: for a GPU and not yet run on one: no GPU was lent to this project.
NIGHTLY_BUDGET_CUDA = ("--seeds", "5", "--epochs", "30", "--width", "0.5", "--min-time", "1.0",
                       "--reference", "se", "--curve-subset", "1000", "--device", "cuda")

#: ImageNette at 128 px (ImageNet profile: maps from 64 x 64 down to 4 x 4), MobileNetV2-0.5,
#: none / se / ca, 3 paired seeds of 5 epochs over the full 9,469 training images (the
#: standard 128 px / 5 epoch ImageNette setting), recipe of RECIPES (batch 64, lr 0.1, one
#: warm-up epoch, cosine), the 3,925 validation images at the end and a fixed 1,000-image
#: slice for the curves before it.
#:
#: Sizing (2026-12-02, the project's 2-core machine): one thread alone, none trained at 147
#: images/s and ca at 90 (40 steps); with two jobs sharing the memory bus about 0.85 of that
#: each, so one seed of none + se + ca was estimated at 47,345 * (1/125 + 1/105 + 1/77) =
#: 1,440 s of one job and 3 seeds on 2 jobs at 36 minutes. Measured the first night: each
#: training took 400-600 s (evaluation included), the session 42 minutes. The sd of the
#: paired differences was 2.2-2.7 points (runs still climbing after 5 epochs): a half-width
#: of 1.5 points would need about 13 seeds (t(0.975, 12) * 2.5 / sqrt(13) = 1.51), some 3
#: hours here, so the night reports the costs exactly and the accuracy as not resolved.
NIGHTLY_IMAGENETTE_BUDGET = ("--seeds", "3", "--epochs", "5", "--width", "0.5",
                             "--min-time", "1.0", "--reference", "se",
                             "--curve-subset", "1000")


def _ablation(session: nox.Session, out, data_args, budget, backbones=ABLATION_BACKBONES,
              attn=ABLATION_ATTN) -> None:
    """compare each backbone into ``out/<backbone>`` (resuming a run already there), then
    one merged ``out/report.html``."""
    runs = []
    for backbone in backbones:
        run = out / backbone
        where = ("--resume", str(run)) if (run / "plan.json").is_file() else ("--out", str(run))
        session.run("caprobe", "compare", "--model", backbone, "--attn", *attn,
                    *data_args, *budget, *where)
        runs.append(str(run))
    session.run("caprobe", "report", *runs, "--out", str(out / "report.html"))


def _shared_data_args(session: nox.Session, data: str, archive: str) -> list[str]:
    """Real data: ``$CAPROBE_DATA`` (its ``data``/ folder, or ``archive`` inside it, or
    itself), else ``../shared/data/<archive>``."""
    import os
    from pathlib import Path

    env = os.environ.get("CAPROBE_DATA")
    candidates = []
    if env:
        root = Path(env).expanduser()
        if (root / data).exists():
            return ["--data", data]  # the data layer looks in $CAPROBE_DATA/<data>
        candidates += [root / archive, root]
    candidates.append(Path("..") / "shared" / "data" / archive)
    for path in candidates:
        if path.exists():
            return ["--data", data, "--data-dir", str(path.resolve())]
    session.error(f"no {data} found: set CAPROBE_DATA or put {archive} in ../shared/data/")
    return []


def _nightly(session: nox.Session, data: str, archive: str, suffix: str,
             budget: tuple[str, ...]) -> None:
    """One nightly, the project installed: ``data`` from ``archive`` into
    ``reports/nightly-YYYY-MM-DD<suffix>/`` (resumed when it exists), then the history page."""
    import datetime
    from pathlib import Path

    data_args = _shared_data_args(session, data, archive)
    out = Path("reports") / f"nightly-{datetime.date.today():%Y-%m-%d}{suffix}"
    session.log(f"{session.name} budget: {' '.join(budget)}")
    _ablation(session, out, data_args, budget, (NIGHTLY_MODEL,), NIGHTLY_ATTN)
    session.run("python", "-m", "caprobe.reporting.history", "reports")


@nox.session
def nightly(session: nox.Session) -> None:
    """The nightly on real CIFAR-10 (about 70 minutes on 2 cores, NIGHTLY_BUDGET; on a CUDA
    machine the full-data NIGHTLY_BUDGET_CUDA):
    ``reports/nightly-YYYY-MM-DD/`` (the run + report.html) and the history page
    ``reports/index.html``. Rerunning on the same day resumes."""
    install(session, None)
    cuda = session.run("python", "-c", "import torch; print(torch.cuda.is_available())",
                       silent=True).strip() == "True"
    _nightly(session, "cifar10", "cifar10-jpg.tar", "",
             NIGHTLY_BUDGET_CUDA if cuda else NIGHTLY_BUDGET)


@nox.session
def nightly_imagenette(session: nox.Session) -> None:
    """The same question at 128 px, where CA's strips have more than CIFAR's few pixels to act
    on (about 45 minutes on 2 cores, NIGHTLY_IMAGENETTE_BUDGET): the full ImageNette
    (``$CAPROBE_DATA`` or ``../shared/data/imagenette-128.tar``) into
    ``reports/nightly-YYYY-MM-DD-imagenette/``, then the history page. Rerunning on the same
    day resumes."""
    install(session, None)
    _nightly(session, "imagenette", "imagenette-128.tar", "-imagenette",
             NIGHTLY_IMAGENETTE_BUDGET)


@nox.session
def report_smoke(session: nox.Session) -> None:
    """The nightly pipeline on the built-in positional set in a few minutes (CI runs it):
    ``reports/smoke/`` with one run per backbone, the merged report and a history page."""
    import shutil
    from pathlib import Path

    install(session, None)  # compare and report need no extra
    out = Path("reports") / "smoke"
    shutil.rmtree(out, ignore_errors=True)
    _ablation(session, out, ["--data", "positional"], SMOKE_BUDGET)
    session.run("python", "-m", "caprobe.reporting.history", "reports", str(out / "index.html"))
