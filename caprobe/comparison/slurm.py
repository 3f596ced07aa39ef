"""``compare --executor slurm``: the trainings of a plan as one submitit job array.

Counts and latency run where the command runs, before submission (alone on that machine, as
with the local executor; a login node that cannot be timed on should use ``--no-train`` on
a compute node for the cost side). Each array task trains one piece in the shared run folder
(:func:`caprobe.comparison.run.train_piece`: the same code, records and atomic writes as a
local worker). The submitting command follows the run folder and the queue and can be
stopped at any time: the jobs go on, ``caprobe status RUN`` shows them and
``caprobe compare --resume RUN`` follows them again, submitting only the pieces that are
neither finished nor still queued or running.

Time limits: Slurm's warning signal (``USR2``, ``signal_delay_s`` before the limit, or
``scancel --signal=USR2``) makes submitit call :meth:`PieceTask.checkpoint`; the task
requeues itself (up to :data:`MAX_REQUEUES` times) and, once it runs again, continues from
the training's last epoch checkpoint (``train(resume=True)``), so the final weights equal an
uninterrupted run's. A preemption that Slurm requeues (``PreemptMode=REQUEUE``) restarts the
task, which resumes from that checkpoint the same way.
Every try is a line of ``attempts.jsonl`` in the piece's folder.

``slurm.json`` in the run folder maps each submitted piece to its job id.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caprobe.comparison.layout import Layout
from caprobe.comparison.results import piece_done
from caprobe.errors import CaprobeError
from caprobe.io import atomic_write_text, read_json, write_json

JOBS = "slurm.json"
ATTEMPTS = "attempts.jsonl"
#: Slurm job states after which a job will not run again; a job still in the queue in any
#: other state (pending, running, requeued, preempted, suspended, held, ...) is live: its
#: piece is not submitted again
DONE_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY",
                         "NODE_FAIL", "BOOT_FAIL", "DEADLINE"})
#: A submitit job may requeue itself on Slurm's warning at most this many times (submitit's
#: default, 3, would end a long training that meets its time limit a fourth time)
MAX_REQUEUES = 1000
#: seconds between two looks at the run folder and the queue while following
POLL_S = 1.0
#: consecutive looks a piece's job must be missing before it counts as lost (about a minute):
#: a job that requeues itself passes out of the live states for a while. Seen in CI on the
#: one-node cluster: the requeue test's follow read it as ended with no grace, and again on
#: 2026-12-04 with 10 looks; a job really lost is reported a minute later
LOST_POLLS = 60


@dataclass(frozen=True, kw_only=True)
class SlurmOptions:
    """Where and how the pieces run on the cluster (they say how to run, not what is
    computed: ``--resume`` may change them)."""

    partition: str | None = None  # None: the cluster's default partition
    time_min: int = 60  # each piece's time limit; a piece past it requeues itself
    gpus_per_piece: int = 0
    cpus_per_piece: int | None = None  # None: the plan's threads per training
    #: seconds before the time limit at which Slurm warns the piece (USR2), so that it can
    #: requeue itself: submitit's default
    signal_delay_s: int = 90

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_available() -> None:
    """One line when submitit or Slurm is missing."""
    try:
        import submitit  # noqa: F401
    except ImportError as exc:
        raise CaprobeError("--executor slurm needs the slurm extra (submitit is not "
                           "installed); pip install 'caprobe[slurm]'") from exc
    if shutil.which("sbatch") is None or shutil.which("squeue") is None:
        raise CaprobeError("--executor slurm: there is no Slurm on this machine (sbatch and "
                           "squeue not found); run on the cluster's login node, or use "
                           "--executor local")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def _log_attempt(run_dir: Path, **fields: Any) -> None:
    """Append one line to the piece's attempt log (written whole: read, extend, rename)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / ATTEMPTS
    old = path.read_text() if path.is_file() else ""
    atomic_write_text(path, old + json.dumps({"at": _now(), **fields}) + "\n")


def attempts(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / ATTEMPTS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _job_id() -> str:
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID", "?")


class PieceTask:
    """One array task: train one piece; requeued (with its checkpoint) on Slurm's warning."""

    def __init__(self, piece: Any) -> None:
        self.piece = piece
        self.requeued = False  # set by checkpoint(): the exit that follows is no failure

    def __call__(self) -> str:
        from caprobe.comparison.run import train_piece
        from caprobe.training.loop import is_run_dir

        piece = dataclasses.replace(self.piece, resume=is_run_dir(self.piece.run_dir))
        _log_attempt(piece.run_dir, event="start", job=_job_id(), host=socket.gethostname(),
                     resume=piece.resume)
        try:
            train_piece(piece, False)
        except BaseException as exc:
            if not self.requeued:
                _log_attempt(piece.run_dir, event="failed", job=_job_id(),
                             error=f"{type(exc).__name__}: {exc}")
            raise
        _log_attempt(piece.run_dir, event="end", job=_job_id())
        return self.piece.key

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's checkpointing protocol: requeue this task; it resumes from the run
        folder's last checkpoint when it runs again."""
        import submitit

        self.requeued = True
        _log_attempt(self.piece.run_dir, event="requeued", job=_job_id())
        return submitit.helpers.DelayedSubmission(PieceTask(self.piece))


def load_jobs(layout: Layout) -> dict[str, dict[str, Any]]:
    path = layout.root / JOBS
    return read_json(path).get("pieces", {}) if path.is_file() else {}


def is_live(state: str | None) -> bool:
    return state is not None and state not in DONE_STATES


def job_states(job_ids: list[str]) -> dict[str, str]:
    """``{job id: state}`` of the given jobs that are still in the queue (``squeue``; a job
    that left it is absent; array tasks as ``JOB_TASK``). A queue that cannot be read is one
    line (never "every job is gone": that would submit live pieces again)."""
    if not job_ids:
        return {}
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(job_ids)],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CaprobeError(f"squeue cannot be read ({exc}); check the Slurm controller, then "
                           "run the command again") from exc
    if out.returncode != 0:
        if "invalid job id" in out.stderr.lower():
            return {}  # none of them is known any more: all left the queue
        raise CaprobeError(f"squeue failed ({' '.join(out.stderr.split())[:200]}); check the "
                           "Slurm controller, then run the command again")
    states = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states


def submit(pieces: list[Any], layout: Layout, options: SlurmOptions, threads: int) -> None:
    """Submit ``pieces`` as one job array; record their job ids in ``slurm.json``."""
    import submitit

    folder = layout.root / "slurm"
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=MAX_REQUEUES)
    executor.update_parameters(
        job_name=f"caprobe-{layout.root.name}", time=options.time_min,
        cpus_per_task=options.cpus_per_piece or threads, partition=options.partition,
        gpus_per_node=options.gpus_per_piece or None, signal_delay_s=options.signal_delay_s,
        array_parallelism=len(pieces))
    try:
        jobs = executor.submit_array([PieceTask(p) for p in pieces])
    except Exception as exc:  # noqa: BLE001 - sbatch's own message, on one line
        raise CaprobeError(f"sbatch refused the job array ({' '.join(str(exc).split())[:300]});"
                           " check --slurm-partition and --slurm-time, then continue with "
                           f"caprobe compare --resume {layout.root}") from exc
    recorded = load_jobs(layout)
    for piece, job in zip(pieces, jobs, strict=True):
        recorded[piece.key] = {"job_id": str(job.job_id), "submitted_at": _now()}
    write_json(layout.root / JOBS, {"schema": 1, "pieces": recorded})


def run_pieces(todo: list[Any], layout: Layout, options: SlurmOptions, threads: int,
               say: Callable[[str], None], trained: Callable[[Any], None]) -> None:
    """Submit what is neither finished nor queued, then follow every piece of ``todo`` until
    it is finished; a piece whose job left the queue without a result stops the follow with
    one line (the other jobs go on)."""
    check_available()
    waiting = set(live_pieces(layout, todo))
    # a piece may have finished since the plan listed what is left
    submit_now = [p for p in todo if p.key not in waiting
                  and not piece_done(layout, p.variant, p.seed)]
    if submit_now:
        submit(submit_now, layout, options, threads)
    follow(todo, layout, say, trained)


def live_pieces(layout: Layout, pieces: list[Any]) -> list[str]:
    """Keys of ``pieces`` whose recorded Slurm job is still queued or running."""
    recorded = load_jobs(layout)
    ids = [recorded[p.key]["job_id"] for p in pieces if p.key in recorded]
    if not ids:
        return []
    states = job_states(ids)
    return [p.key for p in pieces if is_live(states.get(recorded.get(p.key, {}).get("job_id")))]


def follow(todo: list[Any], layout: Layout, say: Callable[[str], None],
           trained: Callable[[Any], None], poll_s: float = POLL_S) -> None:
    pending = {p.key: p for p in todo}
    jobs = load_jobs(layout)
    misses: dict[str, int] = {}  # consecutive polls a piece's job was not seen live
    while pending:
        for key, piece in list(pending.items()):
            if piece_done(layout, piece.variant, piece.seed):
                trained(pending.pop(key))
        if not pending:
            break
        states = job_states([jobs[k]["job_id"] for k in pending if k in jobs])
        for k, p in pending.items():  # a requeued job leaves the queue for a moment
            gone = not is_live(states.get(jobs.get(k, {}).get("job_id"))) \
                and not piece_done(layout, p.variant, p.seed)
            misses[k] = misses.get(k, 0) + 1 if gone else 0
        lost = [p for k, p in pending.items() if misses[k] >= LOST_POLLS]
        if lost:
            piece = lost[0]
            job = jobs.get(piece.key, {}).get("job_id", "?")
            raise CaprobeError(
                f"the Slurm job {job} of {piece.where} ended without a result (see "
                f"{layout.root / 'slurm'}/{job}_0_log.err and its error.json); continue with "
                f"caprobe compare --resume {layout.root}, which submits it again")
        running = sum(states.get(jobs[k]["job_id"]) == "RUNNING" for k in pending)
        say(f"slurm: {running} running, {len(pending) - running} queued, "
            f"{len(todo) - len(pending)}/{len(todo)} done")
        time.sleep(poll_s)


def status_rows(layout: Layout, pieces: list[tuple[str, int]]) -> list[dict[str, Any]]:
    """One row per training piece: done (or its final status), running, queued, failed (its
    job left the queue without a result), or for a piece never submitted its own state
    (pending, partial, interrupted); with its job id and number of tries."""
    from caprobe.comparison.results import is_final, piece_state

    jobs = load_jobs(layout)
    readable = shutil.which("squeue") is not None
    states = job_states([j["job_id"] for j in jobs.values()]) if jobs and readable else {}
    rows = []
    for variant, seed in pieces:
        key = f"train:{variant}:{seed}"
        job = jobs.get(key, {}).get("job_id")
        state = piece_state(layout, variant, seed)["status"]  # read once per piece
        queue = states.get(job)
        if is_final(state):
            status = "done" if state == "finished" else state
        elif job is None:
            status = state  # never submitted: pending, partial or interrupted
        elif not readable:
            status = "unknown (no squeue here)"
        elif queue == "RUNNING":
            status = "running"
        elif is_live(queue):
            status = "queued"
        else:
            status = "failed"
        rows.append({"variant": variant, "seed": seed, "status": status, "job_id": job,
                     "queue_state": queue,
                     "attempts": sum(a["event"] == "start"
                                     for a in attempts(layout.run_dir(variant, seed)))})
    return rows
