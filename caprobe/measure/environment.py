"""What machine a measurement came from: recorded with every latency result.

Torch is imported inside :func:`collect_env` only.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from caprobe._version import __version__
from caprobe.runtime import malloc_policy


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux), falling back to :func:`platform.processor`."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "Processor", "cpu model"):
                    value = " ".join(value.split())
                    if value:
                        return value
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def usable_cpus() -> int:
    """CPUs this process may run on (cgroup/affinity aware where the OS tells us)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """Commit of the caprobe checkout in use (with ``-dirty``), or None outside a git tree."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"],
                             cwd=here, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else None


def load_average() -> float | None:
    """One-minute load average (how busy the machine was), None where unsupported."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def other_runnable(samples: int = 3, interval_s: float = 0.005) -> float | None:
    """Runnable tasks besides the caller, from /proc/loadavg (median of a few reads).

    Read before timing starts, while this process's own worker threads are idle; None where
    /proc/loadavg does not exist.
    """
    import statistics
    import time

    counts = []
    for i in range(samples):
        try:
            with open("/proc/loadavg", encoding="ascii") as f:
                running = int(f.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return None
        counts.append(max(0, running - 1))
        if i + 1 < samples:
            time.sleep(interval_s)
    return float(statistics.median(counts))


def contention_warnings(device: str, threads: int, others: float | None) -> list[str]:
    """Why CPU timings may be unreliable: more threads than CPUs, or CPUs busy elsewhere."""
    if device != "cpu":
        return []
    cpus = usable_cpus()
    out = []
    if threads > cpus:
        out.append(f"{threads} threads on {cpus} usable CPUs: threads wait for each other; "
                   f"use --threads {cpus} or fewer")
    elif others is not None and others + threads > cpus:
        out.append(f"the machine is busy ({others:g} other runnable tasks on {cpus} CPUs, "
                   f"{threads} threads here): timings include waiting for other processes; "
                   "rerun on a quiet machine or with fewer --threads")
    return out


def collect_env(device: str = "cpu", *, threads: int | None = None) -> dict[str, Any]:
    """Environment record: versions, device name, CPU model, threads, git commit, load, and
    the attention kernels trained with (:func:`caprobe.attention.native.kernels_state`)."""
    import torch

    from caprobe.attention.native import kernels_state

    env: dict[str, Any] = {
        "caprobe": __version__,
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": usable_cpus(),
        "threads": threads if threads is not None else torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "load_avg_1m": load_average(),
        "malloc": malloc_policy(),
        "kernels": kernels_state(),
        "device": device,
        "device_name": cpu_model(),
    }
    if device.startswith("cuda"):
        index = torch.device(device).index
        index = torch.cuda.current_device() if index is None else index
        props = torch.cuda.get_device_properties(index)
        env.update(
            device_name=torch.cuda.get_device_name(index),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            cudnn_benchmark=bool(torch.backends.cudnn.benchmark),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            gpu_capability=f"{props.major}.{props.minor}",
        )
    return env
