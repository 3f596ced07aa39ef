"""``caprobe compare --jobs``: trainings in worker processes, the same results as one job,
Ctrl-C and killed workers, failures of the machine (full disk) that are retried instead of
recorded, and ``--image-size`` for ``compare`` and ``train``."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest
from typer.testing import CliRunner

import caprobe.comparison.run as run_mod
import caprobe.training
from caprobe.cli import app
from caprobe.comparison import CompareOptions, Layout, run_compare
from caprobe.comparison.pool import WorkerDied
from caprobe.comparison.results import piece_done, piece_state
from caprobe.errors import CaprobeError
from caprobe.runtime import environmental_cause, is_environmental
from caprobe.training import TrainConfig

runner = CliRunner()



def _tiny(steps: int = 4, n_train: int = 32, seeds: int = 1) -> list[str]:
    """A tiny plan: 32 images / batch 16 = 2 steps per epoch, so 4 steps are 2 epochs."""
    return ["--width", "0.25", "--data-option", f"n_train={n_train}", "--data-option",
            "n_test=32", "--steps", str(steps), "--batch-size", "16", "--threads", "1",
            "--min-time", "0.02", "--seeds", str(seeds)]

CLI = [sys.executable, "-c", "from caprobe.cli import main; main()"]

# spawned workers import the main script again, so this patch reaches them (test code only)
DRIVER = '''
import os, signal, sys
import caprobe.training

_real = caprobe.training.train


def _train(config, **kw):
    if f"{config.attn}:{config.seed}" == os.environ.get("KILL_PIECE"):
        os.kill(os.getpid(), signal.SIGKILL)
    return _real(config, **kw)


caprobe.training.train = _train
if __name__ == "__main__":
    from caprobe.cli import main
    main()
'''


def _options(cache: Path, *, training: dict | None = None, **kw) -> CompareOptions:
    template = TrainConfig(width=0.25, data_options={"n_train": 32, "n_test": 32}, steps=4,
                           batch_size=16, threads=1, cache_dir=str(cache), **(training or {}))
    base = dict(attn=["ca"], seeds=1, latency_min_time=0.02, map_images=0)
    base.update(kw)
    return CompareOptions(training=template, **base)


def _runs(results: dict) -> list[dict]:
    keys = ("variant", "seed", "status", "error", "top1", "top5", "test_loss", "train_loss",
            "epochs_done", "steps_done", "data_checksum")
    return [{k: r[k] for k in keys} for r in results["runs"]]


def _one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("caprobe: error: "), stderr
    return lines[0]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "CAPROBE_CACHE": str(tmp_path / "cache"), **extra}


def _results_of_pieces(out: Path) -> dict[Path, int]:
    """result.json of every finished piece -> its modification time."""
    return {p: p.stat().st_mtime_ns for p in out.glob("variants/*/seed-*/result.json")
            if json.loads(p.read_text())["status"] == "finished"}


# --------------------------------------------------------------------------- classification


@pytest.mark.parametrize("exc", [
    OSError(errno.ENOSPC, "No space left on device"), OSError(errno.EIO, "I/O error"),
    OSError(errno.EROFS, "Read-only file system"), PermissionError(errno.EACCES, "denied"),
    MemoryError(), type("OutOfMemoryError", (RuntimeError,), {})("CUDA out of memory"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't "
                 "allocate memory: you tried to allocate 123 bytes"),
    BrokenProcessPool("a worker died"), WorkerDied([("train:ca:0", -9)]),
])
def test_failures_of_the_machine_are_environmental(exc):
    assert is_environmental(exc)
    cause, fix = environmental_cause(exc)
    assert cause and fix


@pytest.mark.parametrize("exc", [
    RuntimeError("mat1 and mat2 shapes cannot be multiplied"), ValueError("bad"),
    FileNotFoundError(errno.ENOENT, "No such file or directory"),  # resuming meets it again
    CaprobeError("unknown attention 'x'"), KeyboardInterrupt(), ZeroDivisionError(),
])
def test_outcomes_of_the_experiment_are_not(exc):
    assert not is_environmental(exc)


def test_causes_name_the_fix():
    assert environmental_cause(OSError(errno.ENOSPC, "No space left on device", "/x")) == (
        "no space left on device", "free space")
    assert environmental_cause(OSError(errno.EIO, "Input/output error"))[1] == "check the disk"
    assert environmental_cause(MemoryError())[0] == "out of memory"


def test_default_jobs_and_threads(monkeypatch):
    monkeypatch.setattr(run_mod, "usable_cpus", lambda: 2)  # affinity-aware, not cpu_count
    assert run_mod.default_jobs(4) == 2 and run_mod.default_jobs(1) == 1
    assert run_mod.default_jobs(0) == 1
    assert run_mod.threads_per_job(2) == 1 and run_mod.threads_per_job(1) == 2
    monkeypatch.setattr(run_mod, "usable_cpus", lambda: 1)
    assert run_mod.default_jobs(4) == 1 and run_mod.threads_per_job(2) == 1
    monkeypatch.setattr(run_mod, "usable_cpus", lambda: 16)
    assert run_mod.default_jobs(4) == run_mod.DEFAULT_JOBS
    assert run_mod.threads_per_job(2) == 8


def test_a_retry_note_is_not_final(tmp_path):
    layout = Layout(tmp_path)
    note = layout.error("ca", 0)
    note.parent.mkdir(parents=True)
    note.write_text(json.dumps({"status": "failed", "retry": True, "error": "no space"}))
    assert piece_state(layout, "ca", 0) == {"status": "partial", "error": "no space",
                                            "result": None}
    assert not piece_done(layout, "ca", 0)
    note.write_text(json.dumps({"status": "failed", "error": "cannot build"}))
    assert piece_state(layout, "ca", 0)["status"] == "failed" and piece_done(layout, "ca", 0)


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"),
                                 MemoryError()])
def test_train_raises_failures_of_the_machine_instead_of_recording(tmp_path, monkeypatch, exc):
    import caprobe.training.loop as loop

    def fail(path, state):
        raise exc

    monkeypatch.setattr(loop, "save_checkpoint", fail)
    config = TrainConfig(width=0.25, data_options={"n_train": 32, "n_test": 16}, steps=2,
                         batch_size=16, threads=1, device="cpu", cache_dir=str(tmp_path / "c"))
    with pytest.raises(type(exc)):
        caprobe.training.train(config, out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "result.json").exists()


def test_train_cli_says_what_the_machine_lacks(tmp_path, monkeypatch):
    def full(config, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(caprobe.training, "train", full)
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "run"), "--steps", "1"])
    assert result.exit_code == 2
    line = _one_error_line(result.stderr)
    assert "no space left on device while training in" in line and "free space" in line


def test_help_names_jobs_and_threads_per_job():
    text = " ".join(runner.invoke(app, ["compare", "--help"], terminal_width=200).output.split())
    assert "--jobs" in text and "threads per job" in text and "--image-size" in text
    assert "--image-size" in runner.invoke(app, ["train", "--help"]).output


# --------------------------------------------------------------------------- worker pool


@pytest.mark.slow
def test_jobs_2_gives_the_results_of_jobs_1(tmp_path):
    cache = tmp_path / "cache"
    one = run_compare(_options(cache, jobs=1), tmp_path / "one", progress=False)
    two = run_compare(_options(cache, jobs=2), tmp_path / "two", progress=False)
    assert [r["status"] for r in two.results["runs"]] == ["finished", "finished"]
    assert _runs(two.results) == _runs(one.results)
    sessions = json.loads(Layout(two.out).provenance.read_text())["sessions"]
    assert sessions[-1]["jobs"] == 2 and sessions[-1]["threads_per_job"] == 1
    assert json.loads(Layout(two.out).plan.read_text())["options"]["jobs"] == 2


@pytest.mark.slow
def test_ctrl_c_stops_the_workers_and_resume_finishes_the_rest(tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = ["compare", "--attn", "ca", "--jobs", "2", "--out", str(out), "--json",
            *_tiny(seeds=2)]
    # a command started in the background by a non-interactive shell inherits SIGINT as
    # ignored (POSIX), and Python then installs no KeyboardInterrupt handler: restore the
    # default so that the signal means Ctrl-C however the test suite itself was started
    proc = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env(tmp_path),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not _results_of_pieces(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    finished = _results_of_pieces(out)
    assert 1 <= len(finished) < 4
    assert not list(out.glob("variants/*/seed-*/error.json"))

    monkeypatch.setenv("CAPROBE_CACHE", str(tmp_path / "cache"))
    outcome = run_compare(CompareOptions(jobs=1), out, resume=True, given={"jobs"},
                          progress=False)
    assert [r["status"] for r in outcome.results["runs"]] == ["finished"] * 4
    trained = {k for k in outcome.ran if k.startswith("train:")}
    before = {f"train:{p.parent.parent.name}:{p.parent.name[5:]}" for p in finished}
    assert trained.isdisjoint(before) and len(trained | before) == 4  # nothing trained twice
    assert all(p.stat().st_mtime_ns == t for p, t in finished.items())


@pytest.mark.slow
def test_a_killed_worker_stops_the_plan_and_its_piece_is_retried(tmp_path, monkeypatch):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(driver), "compare", "--attn", "ca", "--jobs", "2", "--out",
         str(out), "--json", *_tiny()], capture_output=True, text=True, timeout=180,
        env=_env(tmp_path, KILL_PIECE="ca:0"))
    assert proc.returncode == 2, proc.stderr
    line = _one_error_line(proc.stderr)
    assert "killed by SIGKILL" in line and "while training ca seed 0" in line
    assert f"caprobe compare --resume {out}" in line
    layout = Layout(out)
    assert json.loads(layout.error("ca", 0).read_text())["retry"] is True
    assert not piece_done(layout, "ca", 0)

    monkeypatch.setenv("CAPROBE_CACHE", str(tmp_path / "cache"))
    outcome = run_compare(CompareOptions(jobs=1), out, resume=True, given={"jobs"},
                          progress=False)
    assert "train:ca:0" in outcome.ran
    assert [r["status"] for r in outcome.results["runs"]] == ["finished", "finished"]
    assert not layout.error("ca", 0).exists()


# --------------------------------------------------------------------------- a full disk


@pytest.fixture
def tiny_disk(tmp_path):
    """A 3 MiB tmpfs: the run's records fit, the second checkpoint does not."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path) -> None:
    with open(folder / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def _records_intact(out: Path) -> None:
    for path in out.rglob("*.json"):
        json.loads(path.read_text())  # no torn record
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_a_full_disk_stops_the_plan_and_resume_retries(tmp_path, tiny_disk):
    out = tiny_disk / "run"
    env = {"CAPROBE_CACHE": str(tmp_path / "cache")}
    args = ["compare", "--attn", "ca", "--jobs", "1", "--json", *_tiny()]
    result = runner.invoke(app, [*args, "--out", str(out)], env=env)
    assert result.exit_code == 2, result.output
    line = _one_error_line(result.stderr)
    assert "no space left on device while training" in line
    assert f"free space, then continue with caprobe compare --resume {out}" in line
    layout = Layout(out)
    states = {(v, 0): piece_state(layout, v, 0)["status"] for v in ("none", "ca")}
    assert "failed" not in states.values(), states  # the machine failed: no result recorded
    assert not all(piece_done(layout, v, s) for v, s in states)
    _records_intact(out)

    # a disk so full that not even the records fit: still one line, nothing torn
    _fill(tiny_disk)
    result = runner.invoke(app, ["compare", "--resume", str(out), "--json"], env=env)
    assert result.exit_code == 2, result.output
    assert "no space left on device" in _one_error_line(result.stderr)
    (tiny_disk / "filler").unlink()
    _records_intact(out)

    subprocess.run(["mount", "-o", "remount,size=64m", str(tiny_disk)], check=True)
    result = runner.invoke(app, ["compare", "--resume", str(out), "--json"], env=env)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert [r["status"] for r in payload["runs"]] == ["finished", "finished"]
    retried = {f"train:{v}:{s}" for (v, s), state in states.items() if state != "finished"}
    assert retried <= set(payload["ran"])


# --------------------------------------------------------------------------- --image-size


def test_compare_image_size_reaches_the_data(tmp_path):
    result = runner.invoke(app, ["compare", "--attn", "se", "--no-train", "--image-size",
                                 "40", "--out", str(tmp_path / "o"), *_tiny()])
    assert result.exit_code == 2
    assert "drop --image-size 40" in _one_error_line(result.stderr)


@pytest.mark.slow
def test_image_size_resizes_for_compare_and_train(tmp_path, monkeypatch):
    from test_data_helpers import write_imagenette

    root = write_imagenette(tmp_path / "imagenette2")
    monkeypatch.setenv("CAPROBE_CACHE", str(tmp_path / "cache"))
    common = ["--data", "imagenette", "--data-dir", str(root), "--image-size", "16",
              "--width", "0.25", "--steps", "1", "--batch-size", "10", "--threads", "1"]
    out = tmp_path / "cmp"
    result = runner.invoke(app, ["compare", "--attn", "se", "--jobs", "1", "--min-time",
                                 "0.02", "--out", str(out), "--json", *common])
    assert result.exit_code == 0, result.output
    layout = Layout(out)
    assert json.loads(layout.counts("se").read_text())["input_size"] == [16, 16]
    config = json.loads((layout.run_dir("se", 0) / "config.json").read_text())
    assert config["image_size"] == 16 and config["profile"] == "cifar"

    result = runner.invoke(app, ["train", "--out", str(tmp_path / "t"), "--json", *common])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "t" / "config.json").read_text())["image_size"] == 16
