"""The process and the machine around a command: which device runs it, torch settings that
commands change for a while and then put back, a stop request (SIGTERM) handled like Ctrl-C,
and which failures are the machine's (a full disk, no memory, a killed process) rather than
results of an experiment.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import BrokenExecutor
from contextlib import contextmanager

from caprobe.errors import CaprobeError


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when available else ``cpu``; check that CUDA is really there (the
    one rule for training, timing and every command's ``--device``)."""
    import torch

    name = str(device).strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return "cpu"
    if name == "cuda" or name.startswith("cuda:"):
        index_text = name.partition(":")[2]
        if index_text and not index_text.isdigit():
            raise CaprobeError(f"device {device!r} is malformed; use cuda, cuda:0, cpu or auto")
        if not torch.cuda.is_available():
            raise CaprobeError(f"device {device!r} was asked for but no CUDA GPU is available "
                               "to torch; use --device cpu (or auto)")
        if index_text and int(index_text) >= torch.cuda.device_count():
            raise CaprobeError(f"device {device!r} does not exist (this machine has "
                               f"{torch.cuda.device_count()} CUDA device(s)); use cuda:0")
        return name
    raise CaprobeError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto")


#: the message of torch's CPU allocator when a tensor cannot be allocated (a RuntimeError)
_CPU_ALLOCATOR_FAILED = "DefaultCPUAllocator: can't allocate memory"


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` inside the block, the previous count after it;
    ``None`` leaves the setting alone."""
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


#: ``mallopt`` parameters (glibc's malloc.h): how many blocks may be mmap'ed, and how much
#: free memory at the heap's top is kept before it goes back to the kernel
_M_MMAP_MAX, _M_TRIM_THRESHOLD = -4, -1
#: the trim threshold asked for: 2 GiB, the largest value mallopt takes (an int)
_KEEP_UP_TO = 2**31 - 1
_malloc_policy: str | None = None
#: the values ``CAPROBE_MALLOC`` takes ("" = unset = kept)
_MALLOC_CHOICES = ("", "kept", "system")


def keep_freed_memory() -> str:
    """Have glibc's malloc keep freed memory in the process instead of handing it back to
    the kernel; returns the policy now in force (``"kept"`` or ``"system"``), also recorded
    in every environment record (``malloc``).

    glibc serves every block above its mmap threshold (a map-sized tensor) from a fresh
    mmap and unmaps it on free, and trims the heap's top, so each new activation or gradient
    is a run of page faults on first touch. On this project's 2-core VM (2026-12-03, README
    *Memory*): one MobileNetV2-0.5 training step on CIFAR shapes (batch 64) took 57,000 minor
    faults before, 770 after, and peak RSS grew 4-13 %; eager MobileNetV2 at 224², batch 1,
    three alternating runs: 16.9, 15.7, 20.1 -> 10.8, 13.3, 17.4 ms, and CA's overhead
    +18-19 -> +30-31 % (the faults had added the same time to every variant). Training and
    timing call this (:func:`caprobe.train`, :func:`caprobe.measure.latency.time_variants`);
    idempotent. ``CAPROBE_MALLOC=system`` in the environment leaves malloc as it is (``kept``
    or unset: the default; any other value is an error); so does any C library other than
    glibc.
    """
    global _malloc_policy
    if _malloc_policy is not None:
        return _malloc_policy
    asked = malloc_setting()
    _malloc_policy = "system"
    if asked != "system" and platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        libc = ctypes.CDLL(None)
        if libc.mallopt(_M_MMAP_MAX, 0) == 1 and \
                libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_UP_TO) == 1:
            _malloc_policy = "kept"
    return _malloc_policy


def malloc_setting() -> str:
    """``CAPROBE_MALLOC`` as asked (``""`` when unset), checked: any other value than
    ``kept`` or ``system`` is a :class:`CaprobeError`. Every command checks it first (the
    CLI's error policy), so a typo stops it before any work, not in each piece of a plan."""
    return _env_choice("CAPROBE_MALLOC", _MALLOC_CHOICES, "a malloc policy",
                       "'system' (glibc's default) or 'kept' (the default)")


def kernel_setting() -> str:
    """``CAPROBE_KERNELS`` as asked (``""`` when unset), checked: any value other than
    ``native`` (the default) or ``eager`` is a :class:`CaprobeError`; every command checks it
    first (:mod:`caprobe.attention.native` uses it)."""
    return _env_choice("CAPROBE_KERNELS", ("", "native", "eager"), "a kernel choice",
                       "'native' (the default) or 'eager'")


def _env_choice(name: str, choices: tuple[str, ...], what: str, allowed: str) -> str:
    """Environment variable ``name`` lower-cased and stripped, one of ``choices``, or a
    :class:`CaprobeError` naming the allowed values."""
    raw = os.environ.get(name, "")
    asked = raw.strip().lower()
    if asked not in choices:
        raise CaprobeError(f"{name}={raw!r} is not {what}; set it to {allowed}, or unset it")
    return asked


def malloc_policy() -> str:
    """The malloc policy of this process so far: ``"kept"`` once :func:`keep_freed_memory`
    applied, else ``"system"``."""
    return _malloc_policy or "system"


def _interrupt(signum, frame) -> None:  # noqa: ANN001 - the signal module's handler signature
    raise KeyboardInterrupt


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Inside the block SIGTERM raises :class:`KeyboardInterrupt`, so a stop request unwinds
    like Ctrl-C (records closed, workers stopped). Only the main thread can set handlers;
    elsewhere the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


#: errnos of a machine that cannot go on now but can once fixed: full disk or quota, I/O
#: error, read-only file system, no memory, no permission. A vanished file (ENOENT) is not
#: among them: resuming would meet it again, so it is recorded with its piece.
_MACHINE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.ENOMEM,
                             errno.EACCES, errno.EPERM})


def _out_of_memory(exc: BaseException) -> bool:
    return (isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"
            or (isinstance(exc, RuntimeError) and _CPU_ALLOCATOR_FAILED in str(exc)))


def is_environmental(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure of the machine, not an outcome of the experiment: an
    OSError with one of :data:`_MACHINE_ERRNOS` (a full disk, an I/O error, ...), no memory
    (MemoryError, torch's CPU allocator, ``torch.OutOfMemoryError``), a killed worker process
    (BrokenProcessPool). Such a failure is no result: the work is retried once the machine is
    fixed."""
    if isinstance(exc, OSError):
        return exc.errno in _MACHINE_ERRNOS
    return isinstance(exc, BrokenExecutor) or _out_of_memory(exc)


def environmental_cause(exc: BaseException) -> tuple[str, str]:
    """``(what happened, what to do)`` for an environmental failure, as short phrases, e.g.
    ``("no space left on device", "free space")``."""
    if isinstance(exc, OSError):
        if exc.errno == errno.ENOSPC:
            return "no space left on device", "free space"
        if exc.errno == errno.EIO:
            return "an input/output error on the disk", "check the disk"
        text = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{text}{where}", "fix that"
    if _out_of_memory(exc):
        return "out of memory", "free memory or run fewer trainings at once"
    return " ".join(str(exc).split()) or type(exc).__name__, "check the machine"


def failure_line(cause: str, fix: str, where: str, then: str) -> str:
    """The one line for a failure of the machine: ``"<cause> while <where>; <fix>, then
    <then>"``, e.g. ``no space left on device while training ca seed 0 (...); free space,
    then continue with caprobe compare --resume runs/x``."""
    return f"{cause} while {where}; {fix}, then {then}"


def death_cause(code: int | None, who: str = "the worker process",
                memory_fix: str = "free memory or lower --jobs") -> tuple[str, str]:
    """``(what happened, what to do)`` for a process (``who``) that ended with exit ``code``
    without recording why (negative: killed by that signal)."""
    if code is None:
        return f"{who} ended abruptly", "check the machine"
    if code >= 0:
        return f"{who} exited with code {code}", "check the machine"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    if -code == signal.SIGKILL:
        return f"{who} was killed by {name} (often the out-of-memory killer)", memory_fix
    return f"{who} was killed by {name}", "check the machine"
