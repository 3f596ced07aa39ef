"""One training as DDP over ``nproc_per_node`` processes on one node, under torchrun.

``train(config)`` with ``config.nproc_per_node > 1`` calls :func:`launch`, which starts
``python -m torch.distributed.run --standalone --nproc-per-node N -m caprobe.training.distributed
JOB`` and follows it; each rank runs :func:`main`: it joins the process group (gloo on CPU, nccl
on CUDA, one GPU a rank) and calls ``train(config, rank=...)``. What the ranks do (see
``caprobe.training.loop``):

* every rank draws the same global batch from the same seeded streams (order, augmentation,
  dropout), trains on its contiguous ``1/N`` of it, and DDP averages the gradients: the update
  is that of the whole batch, except that batch norm sees each rank's share (plain DDP, no
  SyncBatchNorm), so a DDP run is its own experiment: ``nproc_per_node`` is part of the config
  and a resume with another value is refused;
* rank 0 alone evaluates (the others wait) and writes every record and checkpoint; every rank
  resumes from that checkpoint, which holds the streams all ranks share;
* the training loss and accuracy are summed over the ranks at each check, so every rank sees
  the same numbers and stops together when the loss stops being finite.

The launcher's side channel lives in ``RUN/ddp/``: ``job.json`` (what to train),
``events.jsonl`` (rank 0's start, epochs and progress-bar calls, replayed by the launcher on
the caller's display), ``error-<rank>.json`` (a rank's failure) and ``torchrun.log`` (the
launcher's and the ranks' output). A failure mid-training (a rank killed, a peer lost) is not
an outcome of the experiment: the run stays resumable from its last checkpoint. A rank's own
error in a training step (an exception that is not a lost collective) is: the launcher records
the run as failed with it, as one process does (``result.json``, ``traceback.txt``); an error
before the first step is raised again, as one process raises it.

Threads: each rank gets ``threads // N`` torch threads (at least 1), ``threads`` being the
training's (``--threads``, else ``SLURM_CPUS_PER_TASK`` inside a Slurm job, else torch's own
count). Inside a Slurm job the ranks run on the job's node (``--standalone``); Slurm's
``CUDA_VISIBLE_DEVICES`` bounds the GPUs. The nccl (CUDA) path has not been run yet: no GPU was
available to this project when it was written.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as _dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from caprobe.errors import CaprobeError
from caprobe.io import read_json, write_json

if TYPE_CHECKING:
    from caprobe.training.config import TrainConfig
    from caprobe.training.loop import RunResult

JOB_DIR = "ddp"
JOB_FILE = "job.json"
EVENTS_FILE = "events.jsonl"
LOG_FILE = "torchrun.log"
#: how long a rank waits in a collective before giving up: rank 0's evaluation of a whole
#: test set happens while the others wait, so far longer than gloo's 30 min default is kept
COLLECTIVE_TIMEOUT = _dt.timedelta(hours=6)
#: statuses that are the experiment's outcome (a finished or diverged run)
OUTCOMES = ("finished", "diverged")
#: how often the launcher reads rank 0's events
POLL_S = 0.2
#: at most one progress update a second travels through the events file (the rest dropped)
UPDATE_EVERY_S = 1.0
#: seconds torchrun gets to stop its ranks after the launcher is interrupted: less than the
#: compare pool's grace (``caprobe.comparison.pool.STOP_GRACE_S``, 10 s) for the worker that
#: runs this launcher, so the launcher ends torchrun itself before the pool kills it (a
#: stopped rank records "interrupted" within a second here)
STOP_GRACE_S = 8.0


@dataclass(frozen=True)
class Rank:
    """This process's place in a DDP training: the collectives the loop needs."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: str) -> str:
        """The device of this rank: its own GPU (``cuda:LOCAL_RANK``) or the CPU."""
        return f"cuda:{self.local_rank}" if device.startswith("cuda") else device

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def sum(self, tensor: Any) -> Any:
        """``tensor`` summed over every rank (a new tensor; the argument is left alone)."""
        import torch.distributed as dist

        total = tensor.clone()
        dist.all_reduce(total)
        return total

    def from_main(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (a picklable object)."""
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def shard(self, batch: Any) -> Any:
        """This rank's contiguous share of a global batch (its size divides evenly)."""
        return batch.chunk(self.world_size)[self.rank]


def rank_from_environ(environ: dict[str, str] | None = None) -> Rank | None:
    """The rank torchrun gave this process (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), or None
    outside a DDP launch."""
    env = os.environ if environ is None else environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    return Rank(rank=int(env["RANK"]), world_size=int(env["WORLD_SIZE"]),
                local_rank=int(env.get("LOCAL_RANK", env["RANK"])))


def rank_threads(threads: int | None, nproc: int,
                 environ: dict[str, str] | None = None) -> int:
    """Torch threads of each of ``nproc`` ranks sharing a training's ``threads`` (None: the
    CPUs Slurm gave the job, else torch's count)."""
    env = os.environ if environ is None else environ
    if threads is None:
        slurm = env.get("SLURM_CPUS_PER_TASK", "")
        if slurm.isdigit():
            threads = int(slurm)
        else:
            import torch

            threads = torch.get_num_threads()
    return max(1, threads // nproc)


def _die_with_parent() -> None:
    """SIGTERM this process when its parent dies, even by SIGKILL (Linux; elsewhere
    nothing): set in torchrun (parent: the launcher) and in each rank (parent: torchrun,
    which starts them in sessions of their own), so that no orphaned rank goes on writing a
    run folder that a resume writes too."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


# --------------------------------------------------------------------------- rank side


class EventLog:
    """Rank 0's events for the launcher, one JSON line each, appended (the launcher reads
    whole lines only). Also what :class:`caprobe.training.display.Bar` uses of
    ``rich.progress.Progress``: each call becomes an event."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sent = 0.0

    def send(self, kind: str, fields: dict[str, Any]) -> None:
        from caprobe.io import to_jsonable

        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"kind": kind, "fields": to_jsonable(fields)}) + "\n")

    def add_task(self, description: str, **fields: Any) -> str:
        self.send("add", {"description": description, **fields})
        return "train"

    def update(self, task: str, **fields: Any) -> None:
        now = time.monotonic()
        if now - self.sent >= UPDATE_EVERY_S:
            self.sent = now
            self.send("update", fields)

    def remove_task(self, task: str) -> None:
        self.send("remove", {})


#: words of a collective's failure (gloo raises a plain RuntimeError naming its transport,
#: e.g. "[.../gloo/transport/tcp/pair.cc:553] Connection closed by peer", seen with torch
#: 2.13 when a peer exits mid all-reduce): a lost peer, not a bug of this rank
_PEER_WORDS = ("gloo", "nccl", "connection closed by peer", "connection reset by peer")


#: the attribute the training loop sets on an exception it raises from a rank's steps (see
#: ``caprobe.training.loop``): only such an error is the run's outcome. Its value is the
#: failed run's record as that rank saw it (a ``RunResult`` dict: counters, losses, env)
IN_TRAINING = "caprobe_in_training"


def _error_record(exc: BaseException) -> dict[str, Any]:
    """A rank's failure as the launcher raises it again (see :func:`_failure`): ``kind`` is
    ``caprobe`` (a mistake), ``os`` / ``memory`` (the machine), ``peer`` (a collective lost
    another rank), ``bug`` (this rank's own error in a training step: the run's outcome, as
    in one process) or ``setup`` (its own error before the first step: raised again)."""
    import traceback

    from caprobe.runtime import is_environmental

    message = " ".join(str(exc).split())
    record = {"type": type(exc).__name__, "message": message}
    if isinstance(exc, CaprobeError):
        record["kind"] = "caprobe"
    elif isinstance(exc, OSError) and is_environmental(exc):
        record.update(kind="os", errno=exc.errno, strerror=exc.strerror,
                      filename=None if exc.filename is None else str(exc.filename))
    elif is_environmental(exc):
        record["kind"] = "memory"
    elif _is_collective_failure(exc):
        record["kind"] = "peer"
    else:  # in the training loop: the run's outcome; before it (setup): raised as it was
        in_training = getattr(exc, IN_TRAINING, None)
        record.update(kind="bug" if in_training else "setup",
                      traceback="".join(traceback.format_exception(exc)))
        if isinstance(in_training, dict):
            record["result"] = in_training
    return record


def _is_collective_failure(exc: BaseException) -> bool:
    from torch.distributed import DistError

    text = str(exc).lower()
    return isinstance(exc, DistError) or (
        isinstance(exc, RuntimeError) and any(word in text for word in _PEER_WORDS))


def main(job_path: str) -> int:
    """A rank's entry: join the group, train, leave. Exit 0 once the run recorded an outcome,
    2 after a failure written to ``error-<rank>.json``, 130 when stopped."""
    import torch
    import torch.distributed as dist

    from caprobe.runtime import sigterm_as_interrupt
    from caprobe.training.config import TrainConfig
    from caprobe.training.loop import train

    _die_with_parent()
    job = read_json(job_path)
    job_dir = Path(job_path).parent
    rank = rank_from_environ()
    if rank is None:
        raise SystemExit("caprobe.training.distributed is started by torchrun; use "
                         "caprobe train --nproc-per-node N")
    torch.set_num_threads(int(job["threads_per_rank"]))
    config = TrainConfig.from_dict(job["config"])
    cuda = str(config.device).startswith("cuda")
    if cuda:
        torch.cuda.set_device(rank.local_rank)
    events = EventLog(job_dir / EVENTS_FILE) if rank.is_main else None
    dist.init_process_group("nccl" if cuda else "gloo", timeout=COLLECTIVE_TIMEOUT)
    try:
        with sigterm_as_interrupt():
            result = train(config, out=job["out"], resume=bool(job["resume"]),
                           progress=events if events is not None else False, rank=rank,
                           on_start=None if events is None else
                           (lambda cfg: events.send("start", cfg.to_dict())),
                           on_epoch=None if events is None else
                           (lambda row: events.send("epoch", row)))
        if events is not None:  # this launch's outcome (the events file starts empty)
            events.send("outcome", result.to_dict())
        return 0
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:  # noqa: BLE001 - written for the launcher, which says it
        write_json(job_dir / f"error-{rank.rank}.json", _error_record(exc))
        import traceback

        traceback.print_exc()
        return 2
    finally:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


# --------------------------------------------------------------------------- launcher side


class _Relay:
    """Replays rank 0's events: ``start`` → ``on_start``, ``epoch`` → ``on_epoch``, the bar's
    calls → ``progress`` (None: caprobe's own bar when stderr is a terminal; False: none)."""

    def __init__(self, path: Path, progress: Any, on_start, on_epoch) -> None:  # noqa: ANN001
        self.path = path
        self.offset = 0
        self.outcome: dict[str, Any] | None = None  # rank 0's RunResult, once it has one
        self.progress = progress
        self.own = False
        self.task = None
        self.on_start, self.on_epoch = on_start, on_epoch

    def pump(self) -> None:
        if not self.path.is_file():
            return
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1  # whole lines only: rank 0 may be writing the last
        self.offset += end
        for line in chunk[:end].splitlines():
            event = json.loads(line)
            self._show(event["kind"], event["fields"])

    def _show(self, kind: str, fields: dict[str, Any]) -> None:
        from caprobe.training.config import TrainConfig
        from caprobe.training.display import _own_progress

        if kind == "outcome":
            self.outcome = fields
        elif kind == "start":
            if self.on_start is not None:
                self.on_start(TrainConfig.from_dict(fields))
        elif kind == "epoch":
            if self.on_epoch is not None:
                self.on_epoch(fields)
        elif kind == "add":
            if self.progress is None:
                self.progress = _own_progress() or False
                self.own = self.progress is not False
                if self.own:
                    self.progress.start()
            if self.progress is not False:
                self.task = self.progress.add_task(fields.pop("description"), **fields)
        elif self.task is not None:
            if kind == "update":
                self.progress.update(self.task, **fields)
            else:
                self.close()

    def close(self) -> None:
        if self.task is None:
            return
        with contextlib.suppress(Exception):  # a display problem never hides the outcome
            if self.own:
                self.progress.stop()
            else:
                self.progress.remove_task(self.task)
        self.task = None


def _failure(job_dir: Path, nproc: int, code: int, log_from: int = 0
             ) -> BaseException | dict[str, Any]:
    """What the ranks recorded: a CaprobeError as it was, a failure of the machine as that
    failure (the callers' rules for those apply), the error of the rank torchrun saw fail
    first as its record when it is a training step's (the run failed, as it would in one
    process), a rank's setup error as a RuntimeError, anything else (a rank killed, peers
    lost) as a lost training. ``log_from``: where this launch's part of torchrun's log
    starts."""
    from concurrent.futures import BrokenExecutor

    records = {int(p.stem.split("-")[1]): read_json(p) for p in job_dir.glob("error-*.json")}
    ordered = [records[r] for r in sorted(records)]
    log = job_dir / LOG_FILE
    for kind in ("caprobe", "os", "memory"):
        for record in ordered:
            if record["kind"] == kind:
                if kind == "caprobe":
                    return CaprobeError(record["message"])
                if kind == "os":
                    return OSError(record["errno"], record["strerror"], record["filename"])
                return MemoryError(record["message"])
    cause = _root_cause(log, log_from)
    if cause is not None:  # the rank torchrun saw fail first
        first = records.get(cause[0])
    else:  # no word from torchrun: the lowest rank's own error, if any
        first = next((r for r in ordered if r["kind"] in ("bug", "setup")), None)
    if first is not None and first["kind"] == "bug":
        return first
    if first is not None and first["kind"] == "setup":
        return RuntimeError(f"{first['type']}: {first['message']} (a DDP rank, before "
                            f"training; see {log})")
    if cause is not None and first is None:
        what = _rank_death(*cause)
    elif ordered:
        what = f"{ordered[0]['type']}: {ordered[0]['message'][:200]}"
    else:
        what = f"a rank ended without a word (torchrun exit {code})"
    return BrokenExecutor(f"the DDP training over {nproc} processes stopped ({what}); see {log}")


def _root_cause(log: Path, start: int = 0) -> tuple[int, int] | None:
    """``(rank, exit code)`` of the first failure torchrun reported in its "Root Cause" lines
    (``rank : 1 (local_rank: 1)``, ``exitcode : -9 (pid: 123)``) after byte ``start`` of its
    log; None when there are none."""
    import re

    try:
        with open(log, "rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    if "Root Cause" not in text:
        return None
    cause = text[text.rfind("Root Cause"):]
    rank = re.search(r"^\s*rank\s*:\s*(\d+)", cause, re.M)
    code = re.search(r"^\s*exitcode\s*:\s*(-?\d+)", cause, re.M)
    if rank is None or code is None:
        return None
    return int(rank.group(1)), int(code.group(1))


def _rank_death(rank: int, code: int) -> str:
    """A rank's end without a record, as a phrase."""
    from caprobe.runtime import death_cause

    what, fix = death_cause(code, f"rank {rank}", memory_fix="free memory or train fewer at once")
    return f"{what}: {fix}" if code == -signal.SIGKILL else what


def _failed_result(run_dir: Path, record: dict[str, Any]) -> RunResult:
    """A rank's error in a training step as the run's outcome: ``result.json`` with status
    failed, the counters, losses and environment that rank recorded (``record["result"]``),
    and its traceback in ``traceback.txt``, as one process records it."""
    from caprobe.io import atomic_write_text
    from caprobe.training.loop import ERROR_FILE, RESULT_FILE, RunResult

    result = RunResult.from_dict({**record.get("result", {}), "status": "failed",
                                  "run_dir": str(run_dir),
                                  "error": f"{record['type']}: {record['message']}"})
    atomic_write_text(run_dir / ERROR_FILE, record.get("traceback", ""))
    write_json(run_dir / RESULT_FILE, result.to_dict())
    return result


def launch(config: TrainConfig, run_dir: Path, *, resume: bool, progress: Any,
           on_epoch: Callable[[dict[str, Any]], None] | None,
           on_start: Callable[[TrainConfig], None] | None) -> RunResult:
    """Train ``config`` as DDP over ``config.nproc_per_node`` local processes under torchrun
    and return rank 0's :class:`~caprobe.training.loop.RunResult` (``train``'s contract)."""
    from caprobe.models import resolve_name
    from caprobe.training.loop import RunResult, is_run_dir

    resolve_name(config.model, config.attn)  # a bad name: one line before anything starts
    nproc = int(config.nproc_per_node)
    fresh = not run_dir.exists()
    job_dir = run_dir / JOB_DIR
    job_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*job_dir.glob("error-*.json"), job_dir / EVENTS_FILE]:
        stale.unlink(missing_ok=True)
    threads = rank_threads(config.threads, nproc)
    write_json(job_dir / JOB_FILE, {"config": config.to_dict(), "out": str(run_dir),
                                    "resume": resume, "threads_per_rank": threads})
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", "--module", __name__, str(job_dir / JOB_FILE)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    relay = _Relay(job_dir / EVENTS_FILE, progress, on_start, on_epoch)
    with open(job_dir / LOG_FILE, "ab") as log:
        log_from = log.tell()
        # a session of its own: a Ctrl-C at the terminal reaches this process alone, which
        # stops torchrun once (torchrun stops its ranks on the first signal it gets)
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True,
                                preexec_fn=_die_with_parent)  # noqa: PLW1509
        try:
            while proc.poll() is None:
                relay.pump()
                time.sleep(POLL_S)
            relay.pump()
        except BaseException:  # Ctrl-C or a stop request: stop the ranks, keep the checkpoint
            _stop(proc)
            raise
        finally:
            relay.close()
    outcome = relay.outcome
    if outcome is not None and (proc.returncode == 0 or outcome["status"] in OUTCOMES):
        # rank 0's outcome stands, even when a rank failed after it (at teardown)
        return RunResult.from_dict(outcome)
    failure = _failure(job_dir, nproc, proc.returncode, log_from)
    if isinstance(failure, dict):
        if not is_run_dir(run_dir):  # rank 0 had not written the run's config yet
            raise RuntimeError(f"{failure['type']}: {failure['message']} (a DDP rank; see "
                               f"{job_dir / LOG_FILE})")
        return _failed_result(run_dir, failure)
    if isinstance(failure, CaprobeError) and fresh and not is_run_dir(run_dir):
        shutil.rmtree(run_dir, ignore_errors=True)  # a mistake caught by the ranks: no trace
    raise failure


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM torchrun, SIGKILL after :data:`STOP_GRACE_S` or at a second Ctrl-C."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_GRACE_S)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
