"""One-call entry points for notebooks: index a source, open a searcher. No Prefect involved."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from mmindex.jobs import IndexJob, prepare_index
from mmindex.pipeline import run_index
from mmindex.progress import TerminalProgress
from mmindex.report import RunReport
from mmindex.search import Searcher
from mmindex.store import Store


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
    prefix, captions, precision, quantize, retry_failed, ...). Returns the run's report.
    """
    job = IndexJob(
        source=source, db=db, table=table, model=model, prune=prune, since=since, until=until, **options
    )
    prepared = prepare_index(job)
    embedder = prepared.load_embedder()
    with TerminalProgress(enabled=progress) as bar:
        return run_index(prepared.source, embedder, prepared.store, prepared.options, progress=bar)


def open_searcher(db: str | None = None, table: str | None = None, *, device: str = "auto") -> Searcher:
    """A Searcher over a table; the table's own embedding model is loaded on the first query."""
    from mmindex.config import Settings

    settings = Settings.from_env(db=db, table=table)
    return Searcher(Store(settings.db, settings.table), device=device)
