"""Trainings in worker processes: at most ``jobs`` at once, each with its own torch threads.

Workers are spawned (a fresh interpreter: no inherited torch state, threads or locks). The
parent owns the display and every decision:

* a worker ignores Ctrl-C; the parent stops it with SIGTERM, which unwinds the training like
  Ctrl-C (``train()`` records the piece as interrupted, its last checkpoint stays), and the
  worker exits at once with :data:`STOPPED`;
* progress travels as events on a manager queue: a worker's training bar is drawn on a
  :class:`QueueProgress`, whose calls become ``add`` / ``update`` / ``remove`` events that the
  parent replays on its own rich display; ``start`` and ``end`` events name the worker's pid,
  so that a worker killed from outside (SIGKILL, the out-of-memory killer) is traced to the
  piece it was training.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.managers import SyncManager
from typing import Any

#: exit code of a worker the parent stopped
STOPPED = 128 + signal.SIGTERM
#: seconds a stopped worker gets to record its piece before it is killed
STOP_GRACE_S = 10.0
#: how often the parent looks at finished pieces and progress events
POLL_S = 0.1
#: at most one progress update per piece this often (the rest are dropped)
UPDATE_EVERY_S = 0.1

OnProgress = Callable[[str, str, dict[str, Any]], None]  # (piece key, event kind, fields)


class WorkerDied(BrokenProcessPool):
    """Worker processes ended abruptly: ``deaths`` holds ``(key of the piece it was training
    or None, exit code)`` for each (a negative code is the signal that killed it)."""

    def __init__(self, deaths: list[tuple[str | None, int]]) -> None:
        super().__init__(f"worker processes died: {deaths}")
        self.deaths = deaths


def _send(events: Any, event: tuple) -> None:
    """Put an event on the manager's queue; a manager that died (killed with the parent's
    display) costs the display, never the training."""
    with contextlib.suppress(EOFError, OSError):
        events.put(event)


class QueueProgress:
    """What :class:`caprobe.training.display.Bar` uses of ``rich.progress.Progress``, inside a
    worker: every call becomes an event for the parent's display."""

    def __init__(self, events: Any, key: str) -> None:
        self.events = events
        self.key = key
        self.sent = 0.0

    def add_task(self, description: str, **fields: Any) -> str:
        _send(self.events, (self.key, "add", {"description": description, **fields}))
        return self.key

    def update(self, task: str, **fields: Any) -> None:
        now = time.monotonic()
        if now - self.sent >= UPDATE_EVERY_S:
            self.sent = now
            _send(self.events, (self.key, "update", fields))

    def remove_task(self, task: str) -> None:
        _send(self.events, (self.key, "remove", {}))


# --------------------------------------------------------------------------- worker side

_busy = False  # whether this worker is inside a piece (SIGTERM then unwinds it)
_stopping = False  # whether the parent asked this worker to stop


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _on_stop(signum, frame) -> None:  # noqa: ANN001 - the signal module's handler signature
    global _stopping
    _stopping = True
    if _busy:
        raise KeyboardInterrupt  # caught in _work once the training has recorded itself
    os._exit(STOPPED)


def _init_worker(threads: int) -> None:
    _ignore_sigint()  # before the slow torch import: a Ctrl-C then is the parent's alone
    signal.signal(signal.SIGTERM, _on_stop)
    import torch

    torch.set_num_threads(threads)


def _work(fn: Callable[[Any, Any], None], key: str, item: Any, events: Any,
          show: bool) -> None:
    global _busy
    try:
        _busy = True
        _send(events, (key, "start", {"pid": os.getpid()}))
        fn(item, QueueProgress(events, key) if show else False)
        _send(events, (key, "end", {"pid": os.getpid()}))
    except KeyboardInterrupt:  # stopped by the parent: leave now, take no further piece
        os._exit(STOPPED)
    finally:
        _busy = False
        if _stopping:  # stopped, though another error replaced the interrupt while unwinding
            os._exit(STOPPED)


# --------------------------------------------------------------------------- parent side


class WorkerPool:
    """``jobs`` spawned workers with ``threads`` torch threads each; ``on_progress`` receives
    the workers' progress events (None: workers draw nothing). Use as a context manager:
    leaving it stops every worker (a training still running records itself as interrupted)."""

    def __init__(self, jobs: int, threads: int, on_progress: OnProgress | None = None) -> None:
        context = multiprocessing.get_context("spawn")
        self._manager = SyncManager(ctx=context)
        self._manager.start(_ignore_sigint)  # Ctrl-C is the parent's to handle
        self._events = self._manager.Queue()
        self._executor = ProcessPoolExecutor(jobs, mp_context=context,
                                             initializer=_init_worker, initargs=(threads,))
        self._on_progress = on_progress
        self._pieces: dict[int, str] = {}  # worker pid -> key of the piece it is training

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()  # idle workers leave at once (an orderly shutdown takes a second)
            self._executor.shutdown(wait=True, cancel_futures=True)
        finally:
            self._manager.shutdown()

    def run(self, fn: Callable[[Any, Any], None], items: list[tuple[str, Any]]) -> Iterator[str]:
        """Run ``fn(item, progress)`` for every ``(key, item)``, in this order as workers free
        up; yield each key once its item is done. The first failure stops every worker and is
        raised here (:class:`WorkerDied` for workers that died)."""
        show = self._on_progress is not None
        futures = {self._executor.submit(_work, fn, key, item, self._events, show): key
                   for key, item in items}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=POLL_S, return_when=FIRST_COMPLETED)
            self._pump()
            for future in [f for f in futures if f in done]:  # in submission order
                error = future.exception()
                if error is not None:
                    raise self._failure(error)
                yield futures[future]

    def stop(self) -> None:
        """Stop every worker now: SIGTERM (a training records itself as interrupted), SIGKILL
        for any still alive after :data:`STOP_GRACE_S`."""
        workers = self._workers()
        for process in workers.values():
            if process.exitcode is None:
                process.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for process in workers.values():
            process.join(max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                process.kill()
                process.join()

    def _workers(self) -> dict[int, multiprocessing.Process]:
        # the executor's own table of its processes: Python < 3.14 has no public way to
        # stop the workers or to read their exit codes
        return dict(self._executor._processes or {})

    def _pump(self) -> None:
        while True:
            try:
                key, kind, fields = self._events.get_nowait()
            except (queue.Empty, EOFError, OSError):  # none left, or the manager is gone
                return
            if kind == "start":
                self._pieces[fields["pid"]] = key
            elif kind == "end":
                self._pieces.pop(fields["pid"], None)
            elif self._on_progress is not None:
                self._on_progress(key, kind, fields)

    def _failure(self, error: BaseException) -> BaseException:
        if not isinstance(error, BrokenProcessPool):
            self.stop()
            return error
        # The executor's manager thread reaps every worker after a break (it terminates the
        # rest and joins them all): read the exit codes once it is done. Polling them
        # beside it races its waitpid() and reads None for a worker it has just reaped (a
        # CI flake); stopping first would count a killed worker among the ones stop() killed.
        workers = self._workers()
        manager = self._executor._executor_manager_thread
        if manager is not None:
            manager.join(STOP_GRACE_S)
        codes = {pid: process.exitcode for pid, process in workers.items()}
        self.stop()
        self._pump()  # a start event may still be on its way
        stopped = (None, 0, STOPPED, -signal.SIGTERM)
        return WorkerDied([(self._pieces.get(pid), code) for pid, code in codes.items()
                           if code not in stopped])
