"""A terminal progress bar for indexing runs (stderr, only when it is a terminal)."""

from __future__ import annotations

import sys
from typing import Any

from mmindex.report import ProgressUpdate


class TerminalProgress:
    """Callable progress sink for `run_index`: a rich bar whose total grows while the listing runs."""

    def __init__(self, description: str = "indexing", *, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.description = description
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> TerminalProgress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.description, total=None, rate="")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def __call__(self, update: ProgressUpdate) -> None:
        if self._progress is None:
            return
        task = self._progress.tasks[0]
        elapsed = task.elapsed or 0.0
        rate = f"{update.done / elapsed:.1f} items/s" if elapsed > 0 else ""
        rate = f"{rate}  {update.note}" if update.note else rate
        suffix = "" if update.listing_done else " (listing…)"
        self._progress.update(
            self._task,
            completed=update.done,
            total=max(update.planned, update.done),
            description=self.description + suffix,
            rate=rate,
        )
