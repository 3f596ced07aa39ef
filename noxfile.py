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
