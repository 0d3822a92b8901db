"""The `index` flow: list -> load/decode -> embed -> write, streamed in batches, with a summary artifact."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import flow

from flows.reporting import FlowProgress, publish_report
from mmindex.jobs import IndexJob, prepare_index
from mmindex.pipeline import run_index
from mmindex.progress import TerminalProgress
from mmindex.report import RunReport
from tasks.index import STAGES, load_embedder


@flow(name="mmindex-index")
def index(
    source: str,
    db: str | None = None,
    table: str | None = None,
    model: str | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    workers: int | None = None,
    prune: bool = False,
    retry_failed: bool = False,
    captions: str | None = None,
    path_column: str | None = None,
    caption_column: str | None = None,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    prefix: str = "",
    since: datetime | None = None,
    until: datetime | None = None,
    precision: str = "auto",
    quantize: str | None = None,
    progress_bar: bool = False,
) -> dict[str, Any]:
    """Index images from a directory, manifest or bucket into a LanceDB table of CLIP embeddings.

    Unchanged items are skipped, changed ones re-embedded in place; `prune` drops rows of items
    that are gone. Returns the run's counts (scanned, indexed, unchanged, failed, ...).
    """
    job = IndexJob(
        source=source,
        db=db,
        table=table,
        model=model,
        batch_size=batch_size,
        device=device,
        workers=workers,
        prune=prune,
        retry_failed=retry_failed,
        captions=captions,
        path_column=path_column,
        caption_column=caption_column,
        include=list(include or []),
        exclude=list(exclude or []),
        prefix=prefix,
        since=since,
        until=until,
        precision=precision,
        quantize=quantize,
    )
    report = index_job(job, progress_bar=progress_bar)
    return report.to_dict()


def index_flow_for_cli(job: IndexJob, *, progress_bar: bool = False) -> dict[str, Any]:
    """Run the index flow for the command line: without the 1 s heartbeat join at exit."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        counts: dict[str, Any] = index(**job.to_params(), progress_bar=progress_bar)
        return counts


def index_job(job: IndexJob, *, progress_bar: bool = False) -> RunReport:
    """The body of the index flow, for callers that already hold an IndexJob."""
    prepared = prepare_index(job)
    embedder = load_embedder(prepared)
    with TerminalProgress(enabled=progress_bar) as terminal:
        report = run_index(
            prepared.source,
            embedder,
            prepared.store,
            prepared.options,
            stages=STAGES,
            progress=FlowProgress(terminal if progress_bar else None),
        )
    publish_report(report, "index")
    return report
