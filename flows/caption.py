"""The `caption_missing` flow: generate the captions a table lacks, in resumable chunks."""

from __future__ import annotations

from typing import Any

from prefect import flow

from mmindex.flows.reporting import FlowProgress, publish_report
from mmindex.ingest.backfill import run_caption
from mmindex.jobs.prepare import CaptionJob, job_fields, prepare_caption
from mmindex.progress import TerminalProgress
from mmindex.tasks.index import CAPTION_STEPS
from mmindex.tasks.models import load_captioner, load_embedder


@flow(name="mmindex-caption-missing")
def caption_missing(
    db: str | None = None,
    table: str | None = None,
    caption_model: str | None = None,
    limit: int | None = None,
    where: str | None = None,
    recaption: bool = False,
    retry_failed: bool = False,
    batch_size: int | None = None,
    device: str | None = None,
    precision: str = "auto",
    max_new_tokens: int = 30,
    num_beams: int = 1,
    prompt: str | None = None,
    lock_timeout: float | None = None,
    progress_bar: bool = False,
) -> dict[str, Any]:
    """Caption rows that have no caption (with `recaption`, also rows captioned by another model).
    Human captions are never touched. Returns counts, with integer `captioned` and `failed`."""
    job = CaptionJob(**job_fields(CaptionJob, dict(locals())))
    prepared = prepare_caption(job)
    models = prepared.models
    assert models.caption_model is not None
    embedder = load_embedder(models.embed_model, models.device, models.precision)
    captioner = load_captioner(models.caption_model, models.device, models.precision, models.generation)
    with TerminalProgress("captioning", enabled=progress_bar) as terminal:
        report = run_caption(
            prepared.store,
            captioner,
            embedder,
            prepared.options,
            reader=prepared.reader,
            steps=CAPTION_STEPS,
            progress=FlowProgress(terminal if progress_bar else None),
        )
    publish_report(report, "caption")
    return report.to_dict()


def caption_flow_for_cli(job: CaptionJob, *, progress_bar: bool = False) -> dict[str, Any]:
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        counts: dict[str, Any] = caption_missing(**job.to_params(), progress_bar=progress_bar)
        return counts
