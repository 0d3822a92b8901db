"""Run reporting for flows: progress in the Prefect UI and the run's summary artifacts."""

from __future__ import annotations

import time
from typing import Any
from uuid import UUID

from prefect import get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from mmindex.finetuning.report import FinetuneReport
from mmindex.progress import TerminalProgress
from mmindex.report import ProgressUpdate, RunReport
from mmindex.store.upkeep import MaintenanceReport


class FlowProgress:
    """Updates a Prefect progress artifact and logs a line now and then; drives a terminal bar too."""

    def __init__(
        self, terminal: TerminalProgress | None = None, *, every: float = 2.0, log_every: float = 30.0
    ):
        self.terminal = terminal
        self.every = every
        self.log_every = log_every
        artifact_id = create_progress_artifact(0.0, description="items done of those known to need work")
        assert isinstance(artifact_id, UUID)  # called from sync code: the id, not a coroutine
        self._artifact_id = artifact_id
        self._last_update = self._last_log = time.monotonic()
        self._logger = get_run_logger()

    def __call__(self, update: ProgressUpdate) -> None:
        if self.terminal is not None:
            self.terminal(update)
        now = time.monotonic()
        if now - self._last_update >= self.every or (update.listing_done and update.done >= update.planned):
            percent = 100.0 * update.done / update.planned if update.planned else 100.0
            update_progress_artifact(self._artifact_id, min(percent, 100.0))
            self._last_update = now
        if now - self._last_log >= self.log_every:
            self._logger.info(
                "%d of %d items done (%d listed so far)", update.done, update.planned, update.scanned
            )
            self._last_log = now


def publish_report(report: RunReport | MaintenanceReport | FinetuneReport, key_prefix: str) -> None:
    """The run summary (markdown) and this run's failures (table) as artifacts, and a log line."""
    logger = get_run_logger()
    for line in report.summary_lines():
        logger.info(line)
    if isinstance(report, FinetuneReport):
        key = artifact_key(f"{key_prefix}-{report.table}")
        create_markdown_artifact(report.to_markdown(), key=key, description="mmindex fine-tune")
        create_table_artifact(
            report.metric_rows("holdout"),
            key=f"{key}-holdout",
            description="held-out retrieval, before and after",
        )
        return
    if isinstance(report, MaintenanceReport):
        key = artifact_key(f"{key_prefix}-{report.table}")
        create_markdown_artifact(report.to_markdown(), key=key, description="mmindex maintenance")
        return
    key = artifact_key(f"{key_prefix}-{report.table}")
    create_markdown_artifact(report.to_markdown(), key=key, description=f"mmindex {report.kind} summary")
    rows: list[dict[str, Any]] = [
        {"key": e.key, "stage": e.stage, "error": e.error} for e in report.failure_examples
    ]
    description = "items that failed in this run" if rows else "no item failed in this run"
    create_table_artifact(
        rows or [{"key": "", "stage": "", "error": ""}], key=f"{key}-failures", description=description
    )


def artifact_key(text: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    cleaned = "".join(c if c.isalnum() else "-" for c in text.lower())
    return "-".join(part for part in cleaned.split("-") if part)[:100] or "mmindex"
