"""The `index` flow: list -> load/decode -> [caption] -> embed -> write, streamed in batches, with a
progress artifact and a summary artifact."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import flow

from mmindex.flows.reporting import FlowProgress, publish_report
from mmindex.jobs.prepare import IndexJob, PreparedIndex, job_fields, prepare_index, run_prepared_index
from mmindex.progress import TerminalProgress
from mmindex.report import RunReport
from mmindex.tasks.index import CAPTION_STEPS, INDEX_STEPS
from mmindex.tasks.models import load_captioner, load_embedder


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
    caption_missing: bool = False,
    caption_model: str | None = None,
    max_new_tokens: int = 30,
    num_beams: int = 1,
    prompt: str | None = None,
    new_table: str | None = None,
    lock_timeout: float | None = None,
    progress_bar: bool = False,
) -> dict[str, Any]:
    """Index images from a directory, manifest or bucket into a LanceDB table of CLIP embeddings.

    Unchanged items are skipped, changed ones re-embedded in place; `prune` drops rows of items that
    are gone; `caption_missing` generates captions for images without one; `new_table` builds another
    table (with a new `model`) from the same source, leaving the current one untouched and reusing its
    generated captions. Only one run writes a table at a time: others wait (up to `lock_timeout`).
    Returns the run's counts (scanned, indexed, unchanged, failed, captioned, ...).
    """
    params = dict(locals())
    params.update(include=list(include or []), exclude=list(exclude or []))
    job = IndexJob(**job_fields(IndexJob, params))
    return index_job(job, progress_bar=progress_bar).to_dict()


def index_job(job: IndexJob, *, progress_bar: bool = False) -> RunReport:
    """The body of the index flow, for callers that already hold an IndexJob."""
    prepared = prepare_index(job)
    report = _index(job, prepared, progress_bar)
    publish_report(report, "index")
    return report


def _index(job: IndexJob, prepared: PreparedIndex, progress_bar: bool) -> RunReport:
    models = prepared.models
    embedder = load_embedder(models.embed_model, models.device, models.precision, models.quantize)
    captioner = None
    if prepared.caption is not None and models.caption_model is not None:
        captioner = load_captioner(models.caption_model, models.device, models.precision, models.generation)
    with TerminalProgress(enabled=progress_bar) as terminal:
        return run_prepared_index(
            job,
            prepared,
            embedder,
            captioner,
            steps=INDEX_STEPS,
            caption_steps=CAPTION_STEPS,
            progress=FlowProgress(terminal if progress_bar else None),
        )


def index_flow_for_cli(job: IndexJob, *, progress_bar: bool = False) -> dict[str, Any]:
    """Run the index flow for the command line: without the 1 s heartbeat join at exit."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        counts: dict[str, Any] = index(**job.to_params(), progress_bar=progress_bar)
        return counts
