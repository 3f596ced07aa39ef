"""``compare --executor slurm`` against a real one-node Slurm cluster on 127.0.0.1 (`.ci/slurm`,
Debian's slurm-wlm and munge): the results equal the local executor's, a killed submitter is
resumed without running any piece twice, a requeued piece continues from its checkpoint to
the weights of an uninterrupted run. Without Slurm (or as a non-root user, who cannot start
the daemons) the cluster tests skip with the reason; the one-line errors are tested anyway."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import caprobe.comparison.slurm as slurm_module
from caprobe.cli import app
from caprobe.comparison import Layout
from caprobe.comparison.slurm import attempts, load_jobs
from caprobe.errors import CaprobeError

#: one worker runs every test that starts ranks or Slurm jobs (a look for live ranks must not
#: see another test's)
pytestmark = pytest.mark.xdist_group("processes")
runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".ci" / "slurm"
CLI = [sys.executable, "-c", "from caprobe.cli import main; main()"]
TINY = ["--width", "0.25", "--data-option", "n_train=32", "--data-option", "n_test=32",
        "--batch-size", "16", "--threads", "1", "--min-time", "0.02"]


def _can_run_slurm() -> str | None:
    if shutil.which("slurmctld") is None or shutil.which("munged") is None:
        return "Slurm is not installed (apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "starting the Slurm daemons needs root"
    try:
        import submitit  # noqa: F401
    except ImportError:
        return "the slurm extra (submitit) is not installed"
    return None


@pytest.fixture(scope="module")
def cluster():
    """The one-node cluster: started by this module unless it was up, and then stopped."""
    reason = _can_run_slurm()
    if reason:
        pytest.skip(reason)
    was_up = subprocess.run([str(SCRIPT), "status"], capture_output=True).returncode == 0
    if not was_up:
        subprocess.run([str(SCRIPT), "start"], check=True, capture_output=True, timeout=120)
    yield
    if not was_up:
        subprocess.run([str(SCRIPT), "stop"], check=True, capture_output=True, timeout=60)


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "CAPROBE_CACHE": str(tmp_path / "cache")}


def _compare(tmp_path: Path, out: Path, *args: str, timeout: int = 300):
    return subprocess.run([*CLI, "compare", "--attn", "ca", "--out", str(out), "--json",
                           *TINY, *args], capture_output=True, text=True, timeout=timeout,
                          env=_env(tmp_path))


def _runs(results: dict) -> list[tuple]:
    return [(r["variant"], r["seed"], r["status"], r["top1"], r["train_loss"], r["steps_done"])
            for r in results["runs"]]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoint.pt", weights_only=False)["model"]


@pytest.mark.slow
def test_slurm_gives_the_results_of_the_local_executor(cluster, tmp_path):
    local = _compare(tmp_path, tmp_path / "local", "--seeds", "2", "--steps", "4",
                     "--jobs", "1")
    assert local.returncode == 0, local.stderr
    remote = _compare(tmp_path, tmp_path / "slurm", "--seeds", "2", "--steps", "4",
                      "--executor", "slurm")
    assert remote.returncode == 0, remote.stderr
    assert _runs(json.loads(remote.stdout)) == _runs(json.loads(local.stdout))
    layout = Layout(tmp_path / "slurm")
    jobs = load_jobs(layout)
    assert sorted(jobs) == sorted(f"train:{v}:{s}" for v in ("none", "ca") for s in (0, 1))
    assert len({j["job_id"].split("_")[0] for j in jobs.values()}) == 1  # one job array
    status = runner.invoke(app, ["status", str(tmp_path / "slurm"), "--json"])
    assert status.exit_code == 0, status.output
    rows = json.loads(status.stdout)
    assert [r["status"] for r in rows] == ["done"] * 4
    assert all(r["attempts"] == 1 and r["job_id"] == jobs[f"train:{r['variant']}:{r['seed']}"]
               ["job_id"] for r in rows)


@pytest.mark.slow
def test_a_killed_submitter_resumes_without_running_a_piece_twice(cluster, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([*CLI, "compare", "--attn", "ca", "--out", str(out), "--json",
                             *TINY, "--seeds", "2", "--epochs", "8", "--executor", "slurm"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(tmp_path))
    deadline = time.monotonic() + 120
    while not (out / "slurm.json").is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.kill()  # the submitting shell dies; its jobs go on
    proc.wait(timeout=30)
    submitted = load_jobs(Layout(out))
    assert len(submitted) == 4
    resumed = subprocess.run([*CLI, "compare", "--resume", str(out), "--json"],
                             capture_output=True, text=True, timeout=300, env=_env(tmp_path))
    assert resumed.returncode == 0, resumed.stderr
    results = json.loads(resumed.stdout)
    assert [r["status"] for r in results["runs"]] == ["finished"] * 4
    assert load_jobs(Layout(out)) == submitted  # nothing submitted again
    for variant in ("none", "ca"):
        for seed in (0, 1):
            starts = [a for a in attempts(Layout(out).run_dir(variant, seed))
                      if a["event"] == "start"]
            assert len(starts) == 1, (variant, seed, starts)


@pytest.mark.slow
def test_a_requeued_piece_continues_to_the_weights_of_an_uninterrupted_run(cluster, tmp_path):
    args = ["--seeds", "1", "--epochs", "6", "--data-option", "n_train=256"]
    out = tmp_path / "run"
    layout = Layout(out)
    proc = subprocess.Popen([*CLI, "compare", "--attn", "ca", "--out", str(out), "--json",
                             *TINY, *args, "--executor", "slurm"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(tmp_path))
    piece = layout.run_dir("ca", 0)
    deadline = time.monotonic() + 180
    while not (piece / "checkpoint.pt").is_file() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (piece / "checkpoint.pt").is_file(), proc.stderr.read() if proc.poll() else ""
    job = load_jobs(layout)["train:ca:0"]["job_id"]
    # Slurm's warning signal, as before a time limit or a preemption
    subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)
    while not any(a["event"] == "requeued" for a in attempts(piece)) \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    # a requeued job waits for its begin time (about two minutes): once it is pending
    # again, let it start now
    while slurm_module.job_states([job]).get(job) != "PENDING" and time.monotonic() < deadline:
        time.sleep(0.2)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True,
                   capture_output=True, timeout=30)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    events = [a["event"] for a in attempts(piece)]
    assert events == ["start", "requeued", "start", "end"], events
    assert [a["resume"] for a in attempts(piece) if a["event"] == "start"] == [False, True]
    assert json.loads((piece / "result.json").read_text())["status"] == "finished"

    local = _compare(tmp_path, tmp_path / "local", *args, "--jobs", "1")
    assert local.returncode == 0, local.stderr
    mine, theirs = _weights(piece), _weights(Layout(tmp_path / "local").run_dir("ca", 0))
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_slurm_without_submitit_or_sbatch_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    result = runner.invoke(app, ["compare", "--attn", "ca", "--executor", "slurm",
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert "\n" not in line
    assert "no Slurm on this machine" in line or "caprobe[slurm]" in line
    assert not (tmp_path / "o").exists()
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit fails
    with pytest.raises(CaprobeError, match=r"pip install 'caprobe\[slurm\]'"):
        slurm_module.check_available()


def test_unknown_executor_is_one_line(tmp_path):
    result = runner.invoke(app, ["compare", "--attn", "ca", "--executor", "lsf",
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "unknown --executor 'lsf'" in result.stderr


def test_status_of_a_local_run_and_of_a_non_run(tmp_path):
    from test_report_support import make_run

    root = make_run(tmp_path / "r", variants=("none", "ca"), seeds=(0,))
    result = runner.invoke(app, ["status", str(root), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["variant"], r["status"], r["job_id"]) for r in rows] == [
        ("none", "done", None), ("ca", "done", None)]
    bad = runner.invoke(app, ["status", str(tmp_path)])
    assert bad.exit_code == 2 and "not a caprobe compare run" in bad.stderr


def test_a_queue_that_cannot_be_read_is_one_line_not_every_job_gone(monkeypatch):
    """If squeue fails, the jobs are not taken for gone (which would submit live pieces a
    second time); squeue's "invalid job id" does mean they all left the queue."""
    replies = {"error": (1, "slurm_load_jobs error: Socket timed out on send/recv operation"),
               "gone": (1, "slurm_load_jobs error: Invalid job id specified"),
               "live": (0, "")}
    answer = {}

    def fake(cmd, **kw):
        code, err = replies[answer["kind"]]
        out = "7_0 PREEMPTED\n7_1 COMPLETED\n" if code == 0 else ""
        return subprocess.CompletedProcess(cmd, code, out, err)

    monkeypatch.setattr(subprocess, "run", fake)
    answer["kind"] = "error"
    with pytest.raises(CaprobeError, match="squeue failed .*Socket timed out"):
        slurm_module.job_states(["7_0"])
    answer["kind"] = "gone"
    assert slurm_module.job_states(["7_0"]) == {}
    answer["kind"] = "live"
    states = slurm_module.job_states(["7_0", "7_1"])
    assert slurm_module.is_live(states["7_0"])  # preempted, to be requeued: still live
    assert not slurm_module.is_live(states["7_1"]) and not slurm_module.is_live(None)


@pytest.mark.slow
def test_a_ddp_piece_runs_torchrun_inside_its_slurm_job(cluster, tmp_path):
    out = tmp_path / "run"
    done = _compare(tmp_path, out, "--seeds", "1", "--steps", "4", "--nproc-per-node", "2",
                    "--executor", "slurm", "--slurm-cpus-per-piece", "2")
    assert done.returncode == 0, done.stderr
    runs = json.loads(done.stdout)["runs"]
    assert [r["status"] for r in runs] == ["finished", "finished"]
    for variant in ("none", "ca"):
        piece = Layout(out).run_dir(variant, 0)
        result = json.loads((piece / "result.json").read_text())
        assert result["env"]["ddp_processes"] == 2 and result["steps_done"] == 4
        job = json.loads((piece / "ddp" / "job.json").read_text())
        assert job["threads_per_rank"] == 1  # the plan's --threads 1, shared by 2 ranks
        assert [a["event"] for a in attempts(piece)] == ["start", "end"]
