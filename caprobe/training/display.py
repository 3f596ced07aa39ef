"""The training progress bar: caprobe's own rich bar, a task on a caller's bar, or nothing."""

from __future__ import annotations

import sys
from typing import Any


def _own_progress():
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    if not console.is_terminal:
        return None
    return Progress(TextColumn("{task.description}"), BarColumn(bar_width=20),
                    MofNCompleteColumn(), TextColumn("{task.fields[ips]} img/s"),
                    TextColumn("ETA"), TimeRemainingColumn(), console=console,
                    transient=False)


class Bar:
    """``progress``: None → own bar when stderr is a terminal; False → silent; a
    ``rich.progress.Progress`` → a task is added to it and removed when done."""

    def __init__(self, progress: Any, label: str, total_steps: int, done_steps: int) -> None:
        self.own = False
        self.progress = None
        self.task = None
        if progress is None:
            progress = _own_progress()
            self.own = progress is not None
        if progress is False or progress is None:
            return
        self.progress = progress
        self.label = label
        if self.own:
            progress.start()
        self.task = progress.add_task(label, total=total_steps, completed=done_steps, ips="-")

    def update(self, *, step: int, epoch: int, epochs: int, loss: float | None,
               acc: float | None, ips: float | None, test_top1: float | None = None) -> None:
        if self.progress is None:
            return
        parts = [f"{self.label} ep {epoch}/{epochs}"]
        if loss is not None:
            parts.append(f"loss {loss:.3f}")
        if acc is not None:
            parts.append(f"acc {acc:.0f}%")
        if test_top1 is not None:
            parts.append(f"test {test_top1:.1f}%")
        self.progress.update(self.task, completed=step, description=" ".join(parts),
                             ips="-" if ips is None else f"{ips:.0f}")

    def close(self) -> None:
        if self.progress is None:
            return
        try:
            if self.own:
                self.progress.stop()
            else:
                self.progress.remove_task(self.task)
        except Exception:  # noqa: BLE001 - a display problem never hides the real outcome
            print("caprobe: could not close the progress bar", file=sys.stderr)
        self.progress = None
