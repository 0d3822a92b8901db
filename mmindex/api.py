"""One-call entry points for notebooks: index a source, open a searcher. No Prefect involved."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from mmindex.ingest.backfill import run_caption
from mmindex.jobs.prepare import CaptionJob, IndexJob, prepare_caption, prepare_index, run_prepared_index
from mmindex.progress import TerminalProgress
from mmindex.query.search import Searcher
from mmindex.report import RunReport
from mmindex.store.reader import Store


def index(
    source: str,
    *,
    db: str | None = None,
    table: str | None = None,
    model: str | None = None,
    prune: bool = False,
    progress: bool | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    **options: Any,
) -> RunReport:
    """Index `source` (directory, manifest or s3:// prefix) into a table, in this process.

    Takes the same options as `mmindex index` (batch_size, device, workers, include, exclude,
    prefix, captions, precision, quantize, retry_failed, caption_missing, caption_model, ...).
    Returns the run's report.
    """
    job = IndexJob(
        source=source, db=db, table=table, model=model, prune=prune, since=since, until=until, **options
    )
    prepared = prepare_index(job)
    embedder = prepared.models.load_embedder()
    captioner = prepared.models.load_captioner() if prepared.caption is not None else None
    with TerminalProgress(enabled=progress) as bar:
        return run_prepared_index(job, prepared, embedder, captioner, progress=bar)


def caption(
    *, db: str | None = None, table: str | None = None, caption_model: str | None = None, **options: Any
) -> RunReport:
    """Generate the captions a table is missing (see `mmindex caption`), in this process."""
    prepared = prepare_caption(CaptionJob(db=db, table=table, caption_model=caption_model, **options))
    embedder = prepared.models.load_embedder()
    return run_caption(
        prepared.store, prepared.models.load_captioner(), embedder, prepared.options, reader=prepared.reader
    )


def open_searcher(db: str | None = None, table: str | None = None, *, device: str = "auto") -> Searcher:
    """A Searcher over a table; the table's own embedding model is loaded on the first query."""
    from mmindex.config import Settings

    settings = Settings.from_env(db=db, table=table)
    return Searcher(Store.from_settings(settings), device=device)
