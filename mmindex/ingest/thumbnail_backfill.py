"""Thumbnail backfill: make the previews a table's rows lack (rows indexed before thumbnails existed,
or with --no-thumbnails), in resumable chunks.

Each chunk is read by uri, decoded (JPEGs at reduced scale: only a preview is needed), made into
thumbnails and written through the single writer as an update of the `thumbnail` column alone. A
finished row no longer matches `thumbnail IS NULL`, so a run killed half-way resumes where it stopped.
An image that cannot be read is recorded at stage `thumbnail`; it stays indexed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import pyarrow as pa

from mmindex.config import CAPTION_WRITE_ROWS, WRITE_SECONDS
from mmindex.errors import TableError
from mmindex.ingest.backfill import backfill_targets, stage_failures
from mmindex.ingest.pipeline import load_pools, overlapped
from mmindex.ingest.sources.uri import UriReader
from mmindex.ingest.steps import LoadedBatch, Reader, load_batch
from mmindex.ingest.thumbnail import THUMBNAIL_ROLE, Thumbnailer
from mmindex.report import ProgressUpdate, RunReport, UnexpectedErrors
from mmindex.schema import FailureRecord
from mmindex.store.reader import Store
from mmindex.store.upkeep import finish_run
from mmindex.store.writer import open_writer

THUMBNAIL_STAGES = ("thumbnail",)


@dataclass
class ThumbnailOptions:
    thumbnailer: Thumbnailer = field(default_factory=Thumbnailer)
    batch_size: int = 64
    limit: int | None = None
    where: str | None = None
    retry_failed: bool = False
    workers: int = 1
    prefetch: int = 2
    write_rows: int = CAPTION_WRITE_ROWS
    write_seconds: float = WRITE_SECONDS
    lock_timeout: float | None = None


def run_thumbnails(
    store: Store,
    options: ThumbnailOptions | None = None,
    *,
    reader: Reader | None = None,
    progress: Callable[[ProgressUpdate], None] | None = None,
    report: RunReport | None = None,
) -> RunReport:
    """Make the missing thumbnails; the report's `thumbnails` and `failed` count this run's."""
    options = options or ThumbnailOptions()
    reader = reader or UriReader()
    report = report or RunReport(kind="thumbnails", source=store.describe(), table=store.describe())
    # decode at reduced scale, as long as the preview keeps its full size
    thumbnailer = replace(options.thumbnailer, draft_side=options.thumbnailer.size)
    preprocessors = {THUMBNAIL_ROLE: thumbnailer}
    with open_writer(store, options.lock_timeout) as writer:
        started = time.perf_counter()
        info = store.info()
        writer.prepare(info.model or "", info.dim or 0)  # migrates an older table
        if "thumbnail" not in writer.images.schema.names:
            raise TableError(f"table {store.describe()} has no thumbnail column")
        condition = "thumbnail IS NULL" + (f" AND ({options.where})" if options.where else "")
        targets = backfill_targets(
            store,
            condition,
            "thumbnail",
            batch_size=options.batch_size,
            limit=options.limit,
            where=options.where,
            retry_failed=options.retry_failed,
        )
        guard = UnexpectedErrors(stage_failures(store, "thumbnail")[1])
        done = 0
        with (
            writer.buffer(
                flush_rows=options.write_rows,
                flush_seconds=options.write_seconds,
                stages=THUMBNAIL_STAGES,
                partial="columns",
            ) as rows,
            load_pools(options.workers, getattr(reader, "fetch_concurrency", 1)) as pools,
        ):
            for items, loaded in overlapped(
                targets,
                lambda batch: load_batch(reader, batch, preprocessors, report, *pools),  # type: ignore[arg-type]
                options.prefetch,
            ):
                report.scanned += len(items)
                table, failures = thumbnail_rows(loaded)
                with report.timed("write", len(items)):
                    rows.write(table, failures, [item.id for item in items])
                for failure in failures:
                    report.record_failure(failure.key, failure.stage, failure.error)
                report.thumbnails += 0 if table is None else table.num_rows
                guard.judge([item.id for item in items], failures)
                done += len(items)
                if progress is not None:
                    progress(ProgressUpdate(done, done, done, False))
        finish_run(writer, report)
        report.seconds = time.perf_counter() - started
        return report


def thumbnail_rows(batch: LoadedBatch) -> tuple[pa.Table | None, list[FailureRecord]]:
    """Partial rows (id, thumbnail) of the loaded items, and the failures, all at stage thumbnail."""
    failures = [_as_thumbnail_failure(failure) for failure in batch.failures]
    made = [loaded for loaded in batch.items if loaded.thumbnail is not None]
    for loaded in batch.items:
        failures += [
            _as_thumbnail_failure(problem) for problem in loaded.problems if problem.stage == "thumbnail"
        ]
    if not made:
        return None, failures
    table = pa.table(
        {
            "id": [loaded.item.id for loaded in made],
            "thumbnail": pa.array([loaded.thumbnail for loaded in made], pa.binary()),
        }
    )
    return table, failures


def _as_thumbnail_failure(failure: FailureRecord) -> FailureRecord:
    """A preview that cannot be made is a thumbnail failure of that row (the row stays indexed)."""
    error = failure.error if failure.stage == "thumbnail" else f"{failure.stage}: {failure.error}"
    return FailureRecord(
        failure.id,
        failure.uri,
        failure.key,
        "thumbnail",
        error,
        retryable=failure.retryable,
        fingerprint=failure.fingerprint,
    )
