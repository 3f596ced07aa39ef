"""``--nproc-per-node``: one training as DDP under a real torchrun (gloo on 127.0.0.1).

What is checked against the real thing: a 2-process training killed mid-run resumes to the
weights of an uninterrupted 2-process run; only rank 0 writes the run folder (every write is
seen by an audit hook the ranks import); the world size is part of the config and of a
compare's plan (a resume with another one is refused); a mistake the ranks catch is one line
and leaves nothing behind. The pieces of the launcher (environment, threads, failures, the
replay of rank 0's events) are tested on their own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import BrokenExecutor
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from caprobe.cli import app
from caprobe.errors import CaprobeError
from caprobe.training import TrainConfig
from caprobe.training.config import validate
from caprobe.training.distributed import (
    EVENTS_FILE,
    STOP_GRACE_S,
    EventLog,
    Rank,
    _error_record,
    _failed_result,
    _failure,
    _Relay,
    _root_cause,
    rank_from_environ,
    rank_threads,
)

#: one worker runs every test that starts ranks or Slurm jobs (a look for live ranks must not
#: see another test's)
pytestmark = pytest.mark.xdist_group("processes")
runner = CliRunner()
CLI = [sys.executable, "-c", "from caprobe.cli import main; main()"]
#: 512 images in batches of 16 (32 steps an epoch, about 2-3 s on one thread a rank): long
#: enough that a kill lands inside the run, short enough for CI
TINY = ["--width", "0.25", "--data-option", "n_train=512", "--data-option", "n_test=64",
        "--batch-size", "16", "--threads", "2", "--epochs", "3", "-q"]

HOOK = '''
import os, sys
_log, _root = os.environ.get("CAPROBE_TEST_WRITES"), os.environ.get("CAPROBE_TEST_ROOT")
if _log and _root:
    def _hook(event, args):
        if event == "open":
            path, mode, flags = args
            writing = (mode is not None and any(c in str(mode) for c in "wax+")) or (
                mode is None and isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR))
        elif event == "os.rename":
            path, writing = args[1], True
        else:
            return
        if not writing or not isinstance(path, (str, os.PathLike)):
            return
        path = os.path.abspath(os.fspath(path))
        if path.startswith(_root):
            with open(_log, "a") as f:
                f.write(os.environ.get("RANK", "-") + " " + path + "\\n")
    sys.addaudithook(_hook)
'''


def _writes_env(tmp_path: Path, root: Path) -> tuple[dict[str, str], Path]:
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(HOOK)
    log = tmp_path / "writes.log"
    path = os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "CAPROBE_CACHE": str(tmp_path / "cache"), "PYTHONPATH": path,
           "CAPROBE_TEST_WRITES": str(log), "CAPROBE_TEST_ROOT": str(root)}
    return env, log


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


def _ranks_alive(run_dir: Path) -> int:
    out = subprocess.run(["pgrep", "-fc", f"caprobe.training.distributed {run_dir}"],
                         capture_output=True, text=True)
    return int(out.stdout.strip() or 0)


# --------------------------------------------------------------------------- the parts


def test_the_rank_comes_from_torchrun_environment() -> None:
    assert rank_from_environ({}) is None
    assert rank_from_environ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == Rank(
        rank=1, world_size=2, local_rank=1)
    rank = Rank(rank=1, world_size=2, local_rank=1)
    assert not rank.is_main and rank.device("cuda") == "cuda:1" and rank.device("cpu") == "cpu"
    assert torch.equal(rank.shard(torch.arange(6)), torch.tensor([3, 4, 5]))


def test_ranks_share_the_threads_of_a_training() -> None:
    assert rank_threads(4, 2, {}) == 2
    assert rank_threads(1, 2, {}) == 1  # at least one each
    assert rank_threads(None, 2, {"SLURM_CPUS_PER_TASK": "8"}) == 4  # Slurm's CPUs first
    assert rank_threads(None, 1, {}) == torch.get_num_threads()


def test_a_batch_that_does_not_split_over_the_processes_is_refused() -> None:
    with pytest.raises(CaprobeError, match="the batch of 32 images does not split over "
                       "--nproc-per-node 3"):
        validate(TrainConfig(nproc_per_node=3))  # 32: the positional recipe's batch
    with pytest.raises(CaprobeError, match="the batch of 21 images does not split"):
        validate(TrainConfig(nproc_per_node=2, train_subset=21))  # a step draws all 21
    assert validate(TrainConfig(nproc_per_node=2, train_subset=22)).train_subset == 22
    with pytest.raises(CaprobeError, match="--nproc-per-node must be a positive integer"):
        validate(TrainConfig(nproc_per_node=0))
    assert validate(TrainConfig(nproc_per_node=4, batch_size=64)).nproc_per_node == 4


def test_rank_failures_are_raised_as_what_they_were(tmp_path: Path) -> None:
    def failure(*records: dict) -> BaseException:
        for old in tmp_path.glob("error-*.json"):
            old.unlink()
        for i, record in enumerate(records):
            (tmp_path / f"error-{i}.json").write_text(json.dumps(record))
        return _failure(tmp_path, 2, 1)

    peer = {"kind": "peer", "type": "RuntimeError", "message": "Connection reset by peer"}
    caprobe = {"kind": "caprobe", "type": "CaprobeError", "message": "unknown attention 'x'"}
    disk = {"kind": "os", "type": "OSError", "errno": 28, "strerror": "No space left on device",
            "filename": "/r/checkpoint.pt", "message": "..."}
    bug = {"kind": "bug", "type": "ZeroDivisionError", "message": "division by zero",
           "traceback": "Traceback ...\nZeroDivisionError: division by zero\n"}
    assert str(failure(peer, caprobe)) == "unknown attention 'x'"  # the user's mistake first
    error = failure(peer, disk, bug)
    assert isinstance(error, OSError) and error.errno == 28 and error.filename == "/r/checkpoint.pt"
    assert failure(peer, bug) == bug  # a rank's own error outranks the peers it took down
    setup = {**bug, "kind": "setup"}  # before the first step: raised as one process would
    error = failure(setup, peer)
    assert type(error) is RuntimeError and str(error).startswith(
        "ZeroDivisionError: division by zero (a DDP rank, before training")
    lost = failure(peer)  # a peer lost: the machine's failure, the run stays resumable
    assert isinstance(lost, BrokenExecutor) and "Connection reset by peer" in str(lost)
    assert "ended without a word (torchrun exit 1" in str(failure())


ROOT_CAUSE = """[rank0]: ...
============================================================
caprobe.training.distributed FAILED
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-02_18:20:01
  host      : ci
  rank      : 1 (local_rank: 1)
  exitcode  : {code} (pid: 2834)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 2834
============================================================
"""


def test_the_rank_torchrun_saw_fail_first_decides(tmp_path: Path) -> None:
    log = tmp_path / "torchrun.log"
    assert _root_cause(log) is None  # no log yet
    log.write_text("starting\n")
    assert _root_cause(log) is None
    log.write_text(ROOT_CAUSE.format(code=3))
    assert _root_cause(log) == (1, 3)
    assert _root_cause(log, start=log.stat().st_size) is None  # an earlier launch's cause
    peer = {"kind": "peer", "type": "RuntimeError", "message": "Connection closed by peer"}
    bug = {"kind": "bug", "type": "ValueError", "message": "rank 1's own", "traceback": ""}
    (tmp_path / "error-0.json").write_text(json.dumps({**bug, "message": "rank 0's symptom"}))
    (tmp_path / "error-1.json").write_text(json.dumps(bug))
    assert _failure(tmp_path, 2, 1)["message"] == "rank 1's own"  # the cause, not rank 0's
    # rank 1 killed (out of memory, typically) while rank 0 lost its peer: not a result
    (tmp_path / "error-0.json").write_text(json.dumps(peer))
    (tmp_path / "error-1.json").unlink()
    log.write_text(ROOT_CAUSE.format(code=-9))
    lost = _failure(tmp_path, 2, 1)
    assert isinstance(lost, BrokenExecutor) and (
        "(rank 1 was killed by SIGKILL (often the out-of-memory killer): free memory or train "
        "fewer at once)" in str(lost)), lost
    log.write_text(ROOT_CAUSE.format(code=-15))
    assert "(rank 1 was killed by SIGTERM)" in str(_failure(tmp_path, 2, 1))


def test_a_rank_tells_a_lost_peer_from_its_own_error() -> None:
    import errno

    gloo = RuntimeError("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553]"
                        " Connection closed by peer [127.0.0.1]:664")  # torch 2.13, seen
    assert _error_record(gloo)["kind"] == "peer"
    assert _error_record(torch.distributed.DistBackendError("nccl watchdog"))["kind"] == "peer"
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError as exc:
        setup = _error_record(exc)
        exc.caprobe_in_training = {"status": "failed", "steps_done": 7}  # the loop's mark
        own = _error_record(exc)
    assert setup["kind"] == "setup" and own["kind"] == "bug" and own["type"] == "ZeroDivisionError"
    assert own["result"] == {"status": "failed", "steps_done": 7} and "result" not in setup
    assert own["traceback"].startswith("Traceback") and "1 / 0" in own["traceback"]
    assert _error_record(RuntimeError("shape mismatch"))["kind"] == "setup"
    assert _error_record(CaprobeError("bad"))["kind"] == "caprobe"
    full = _error_record(OSError(errno.ENOSPC, "No space left on device", "/r/x"))
    assert full["kind"] == "os" and full["errno"] == errno.ENOSPC
    assert _error_record(MemoryError())["kind"] == "memory"


def test_a_rank_error_is_the_runs_failed_outcome(tmp_path: Path) -> None:
    (tmp_path / "result.json").write_text(json.dumps({  # from an earlier launch: replaced
        "status": "interrupted", "epochs_done": 1, "steps_done": 32, "test_loss": 0.5}))
    bug = {"kind": "bug", "type": "ZeroDivisionError", "message": "division by zero",
           "traceback": "Traceback ...\nZeroDivisionError: division by zero\n",
           "result": {"status": "failed", "epochs_done": 2, "steps_done": 40,
                      "train_loss": 1.25, "run_dir": None, "chance_top1": 2.78,
                      "env": {"torch": "2.13.0"}, "error": "ZeroDivisionError: division by zero"}}
    result = _failed_result(tmp_path, bug)
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved == result.to_dict()
    assert (result.status, result.error, result.test_loss, result.top1) == (
        "failed", "ZeroDivisionError: division by zero", None, None)
    assert (result.epochs_done, result.steps_done, result.train_loss) == (2, 40, 1.25)
    assert result.run_dir == str(tmp_path) and result.env == {"torch": "2.13.0"}
    assert (tmp_path / "traceback.txt").read_text() == bug["traceback"]


def test_the_launcher_stops_torchrun_before_a_compare_worker_is_killed() -> None:
    from caprobe.comparison import pool

    assert STOP_GRACE_S < pool.STOP_GRACE_S


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def add_task(self, description: str, **fields) -> int:
        self.calls.append(("add", description, fields))
        return 7

    def update(self, task: int, **fields) -> None:
        self.calls.append(("update", task, fields))

    def remove_task(self, task: int) -> None:
        self.calls.append(("remove", task))


def test_rank_zero_events_are_replayed_on_the_callers_display(tmp_path: Path) -> None:
    log = EventLog(tmp_path / EVENTS_FILE)
    log.send("start", TrainConfig(seed=3).to_dict())
    log.add_task("mobilenetv2 s3", total=10, completed=0, ips="-")
    log.update("train", completed=4)
    log.update("train", completed=5)  # within a second of the last: dropped
    log.send("epoch", {"epoch": 1, "test_top1": 50.0})
    started, epochs, progress = [], [], _Recorder()
    relay = _Relay(tmp_path / EVENTS_FILE, progress, started.append, epochs.append)
    with open(tmp_path / EVENTS_FILE, "a") as f:
        f.write('{"kind": "remove"')  # rank 0 is still writing this line: not read yet
    relay.pump()
    assert [c.seed for c in started] == [3] and epochs == [{"epoch": 1, "test_top1": 50.0}]
    assert progress.calls == [("add", "mobilenetv2 s3", {"total": 10, "completed": 0,
                                                          "ips": "-"}),
                              ("update", 7, {"completed": 4})]
    with open(tmp_path / EVENTS_FILE, "a") as f:
        f.write(', "fields": {}}\n')
    relay.pump()
    assert progress.calls[-1] == ("remove", 7) and relay.outcome is None
    log.send("outcome", {"status": "finished", "top1": 50.0})  # what the launcher returns
    relay.pump()
    assert relay.outcome == {"status": "finished", "top1": 50.0}


# --------------------------------------------------------------------------- real torchrun


@pytest.mark.slow
def test_a_killed_ddp_training_resumes_to_the_weights_of_an_uninterrupted_one(
        tmp_path: Path) -> None:
    root = tmp_path / "runs"  # every write under it is logged, by the process that made it
    whole, killed = root / "whole", root / "killed"
    env, writes = _writes_env(tmp_path, root)
    args = [*CLI, "train", "--nproc-per-node", "2", *TINY]
    done = subprocess.run([*args, "--out", str(whole), "--json"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "finished" and result["epochs_done"] == 3
    assert result["steps_done"] == 3 * 512 // 16 and result["env"]["ddp_processes"] == 2

    proc = subprocess.Popen([*args, "--out", str(killed)], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    metrics = killed / "metrics.jsonl"  # rewritten just after each epoch's checkpoint
    while not (metrics.is_file() and metrics.read_text().strip()):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                              text=True).stdout.split()  # torchrun, in a session of its own
    assert children, "no torchrun under the launcher"
    for group in (proc.pid, *map(int, children)):  # the launcher and torchrun, at once
        os.killpg(group, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while _ranks_alive(killed):  # the ranks follow their parent (PR_SET_PDEATHSIG)
        assert time.monotonic() < deadline, "ranks outlived the killed launcher"
        time.sleep(0.2)
    rows = (killed / "metrics.jsonl").read_text().splitlines()
    assert 1 <= len(rows) < 3, "the kill landed after the run finished"

    resumed = subprocess.run([*CLI, "train", "--resume", str(killed), "-q"],
                             capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    a, b = _weights(whole), _weights(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [json.loads(r)["epoch"] for r in
            (killed / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]

    # every write into the run folders: rank 0's records, the launcher's side channel
    # (ddp/), nothing from rank 1
    seen = [line.split(" ", 1) for line in writes.read_text().splitlines()]
    by_rank: dict[str, set[str]] = {}
    for rank, path in seen:
        by_rank.setdefault(rank, set()).add(Path(path).name.lstrip("."))
    assert set(by_rank) == {"-", "0"}, by_rank
    assert all(Path(path).parent.name == "ddp" for rank, path in seen if rank == "-")
    assert {"config.json", "result.json"} <= {n.split(".tmp")[0].rsplit(".", 1)[0] + ".json"
                                              for n in by_rank["0"] if ".json" in n}
    assert any(n.startswith("checkpoint.pt") for n in by_rank["0"])
    assert sorted(p.name for p in whole.iterdir()) == [
        "checkpoint.pt", "config.json", "ddp", "metrics.jsonl", "result.json"]


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "CAPROBE_CACHE": str(tmp_path / "cache")}


BUG = '''
import os
if os.environ.get("CAPROBE_TEST_BUG_RANK") == os.environ.get("RANK"):
    import caprobe.training.loop as _loop

    def _bug(*args, **kwargs):
        raise ZeroDivisionError("a bug on rank " + os.environ["RANK"])

    _loop._train_epoch = _bug
if os.environ.get("CAPROBE_TEST_TEARDOWN_CRASH") and os.environ.get("RANK") == "1":
    import json, time
    import torch.distributed as _dist

    def _crash(*args, **kwargs):  # once rank 0 has recorded the outcome
        path = os.environ["CAPROBE_TEST_TEARDOWN_CRASH"]
        while True:
            try:
                if json.load(open(path))["status"] == "finished":
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        os._exit(3)

    _dist.destroy_process_group = _crash
'''


def _hook_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(BUG)
    return {**_env(tmp_path), **extra,
            "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")])}


@pytest.mark.slow
def test_a_bug_on_one_rank_fails_the_run_as_in_one_process(tmp_path: Path) -> None:
    env = _hook_env(tmp_path, CAPROBE_TEST_BUG_RANK="1")
    out = tmp_path / "run"
    done = subprocess.run([*CLI, "train", "--nproc-per-node", "2", *TINY, "--out", str(out),
                           "--json"], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 1, done.stderr  # a failed run, as one process reports it
    result = json.loads(done.stdout)
    assert result["status"] == "failed" and result["top1"] is None
    assert result["error"] == "ZeroDivisionError: a bug on rank 1"
    # what one process records of a failed run: its counters (the bug hit the first epoch),
    # environment and data set, here from rank 1, which failed
    assert (result["epochs_done"], result["steps_done"]) == (0, 0)
    assert result["env"]["torch"] == torch.__version__ and result["data_checksum"]
    assert result["chance_top1"] == pytest.approx(100 / 36)
    assert json.loads((out / "result.json").read_text())["status"] == "failed"
    assert "ZeroDivisionError: a bug on rank 1" in (out / "traceback.txt").read_text()
    assert _ranks_alive(out) == 0


@pytest.mark.slow
def test_a_rank_that_crashes_after_the_outcome_was_recorded_loses_nothing(
        tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = _hook_env(tmp_path, CAPROBE_TEST_TEARDOWN_CRASH=str(out / "result.json"))
    done = subprocess.run([*CLI, "train", "--nproc-per-node", "2", *TINY, "--epochs", "1",
                           "--out", str(out), "--json"], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "finished"
    assert "exitcode  : 3" in (out / "ddp" / "torchrun.log").read_text()  # it did crash


def test_a_resume_into_a_folder_holding_only_the_launchers_side_channel_starts_afresh(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from caprobe.training import train

    monkeypatch.setenv("CAPROBE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    (out / "ddp").mkdir(parents=True)  # a DDP launcher makes it before its ranks look
    (out / "ddp" / "job.json").write_text("{}")
    config = TrainConfig(width=0.25, data_options={"n_train": 64, "n_test": 32},
                         batch_size=16, epochs=1, threads=1)
    result = train(config, out=out, resume=True, progress=False)
    assert result.status == "finished" and (out / "config.json").is_file()


@pytest.mark.slow
def test_a_mistake_the_ranks_catch_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = subprocess.run([*CLI, "train", "--nproc-per-node", "2", *TINY, "--data-option",
                           "grid=99", "--out", str(out)], capture_output=True, text=True,
                          timeout=300, env=_env(tmp_path))
    assert done.returncode == 2
    assert done.stderr.startswith("caprobe: error: ") and len(done.stderr.splitlines()) == 1
    assert "grid" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()


@pytest.mark.slow
def test_the_world_size_is_part_of_a_training_and_of_a_plan(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPROBE_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    first = runner.invoke(app, ["train", *TINY, "--epochs", "1", "--out", str(run)])
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, ["train", "--resume", str(run), "--nproc-per-node", "2"])
    assert again.exit_code == 2
    assert (f"cannot resume {run}: it trained over 1 process(es), not 2"
            in " ".join(again.output.split()))

    plan_dir = tmp_path / "cmp"
    compare = subprocess.run([*CLI, "compare", "--attn", "ca", "--seeds", "1", "--jobs", "1",
                              "--nproc-per-node", "2", "--min-time", "0.02", *TINY[:-3],
                              "--epochs", "1", "--out", str(plan_dir), "--json"],
                             capture_output=True, text=True, timeout=600,
                             env=_env(tmp_path))
    assert compare.returncode == 0, compare.stderr
    runs = json.loads(compare.stdout)["runs"]
    assert {r["variant"] for r in runs} == {"none", "ca"}
    assert all(r["status"] == "finished" for r in runs)
    plan = json.loads((plan_dir / "plan.json").read_text())
    assert plan["options"]["training"]["nproc_per_node"] == 2
    for variant in ("none", "ca"):
        piece = json.loads((plan_dir / "variants" / variant / "seed-0" / "result.json").read_text())
        assert piece["env"]["ddp_processes"] == 2
    refused = runner.invoke(app, ["compare", "--resume", str(plan_dir), "--nproc-per-node", "1"])
    assert refused.exit_code == 2 and "nproc_per_node" in refused.output
