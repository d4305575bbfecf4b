"""Live progress displays: ``wait()`` (trials finished of the budget, status, best so far) and
``upload_dataset()`` (bytes sent, rate, time left)."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from nas.client._base import objective_metric
from nas.metrics import format_value, selection_metric
from nas.specs import Job, Trial


class JobProgress:
    """A rich progress bar on stderr (by default) for one job; a context manager."""

    def __init__(self, console: Console | None = None) -> None:
        self._progress = Progress(
            TextColumn("{task.description}", style="bold", markup=False),  # job names are not markup
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("trials"),
            TextColumn("{task.fields[best]}", markup=False),
            TimeElapsedColumn(),
            console=console or Console(stderr=True),
        )
        self._task: TaskID | None = None

    def __enter__(self) -> JobProgress:
        self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._progress.stop()

    def update(self, job: Job, best: Trial | None = None) -> None:
        total = (job.spec.get("budget") or {}).get("max_trials")
        description = f"{job.name} [{job.status.value}]"
        if self._task is None:
            self._task = self._progress.add_task(description, total=total, best="")
        self._progress.update(
            self._task, description=description, total=total, completed=job.n_finished, best=best_text(job, best)
        )


def best_text(job: Job, best: Trial | None) -> str:
    """``best val_accuracy 0.9704 (accuracy 0.9644)`` for the job's first objective: the value the best
    trial was chosen on, then its test value beside it; nothing before a trial completes."""
    metric = objective_metric(job.spec)
    if best is None or metric is None:
        return ""
    shown = [f"{name} {format_value(name, best.metrics[name])}"
             for name in dict.fromkeys((selection_metric(metric), metric)) if name in best.metrics]
    if not shown:
        return ""
    return f"best {shown[0]}" + (f" ({shown[1]})" if len(shown) > 1 else "")


class UploadBar:
    """A rich progress bar on stderr (by default) of one file being sent; a context manager that
    gives the callable to report the bytes sent so far. Once the last byte is sent, the bar says
    the server is reading the file, which it does before it answers."""

    def __init__(self, label: str, total: int, console: Console | None = None) -> None:
        self._label = label
        self._total = total
        self._progress = Progress(
            TextColumn("{task.description}", style="bold", markup=False),  # file names are not markup
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console or Console(stderr=True),
        )
        self._task = self._progress.add_task(label, total=total)

    def __enter__(self) -> UploadBar:
        self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._progress.stop()

    def __call__(self, sent: int) -> None:
        done = sent >= self._total
        description = f"{self._label} (sent; the server is reading it)" if done else self._label
        self._progress.update(self._task, completed=sent, description=description)
