"""Caption backfill: generate the captions an indexed table is missing, in resumable chunks.

Targets are rows without a caption (and, with `recaption`, rows whose generated caption came from
another model); human captions are never touched. Each chunk is read by uri, decoded, captioned,
its captions embedded with the table's CLIP model, and written through the single writer as a
partial update. A finished row no longer matches the target query, so a run killed half-way
resumes where it stopped without redoing finished chunks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from mmindex.config import CAPTION_WRITE_ROWS, CPU_CAPTION_BATCH_SIZE, WRITE_SECONDS
from mmindex.errors import TableError, engine_message
from mmindex.ingest.pipeline import Writer, load_pools, overlapped
from mmindex.ingest.sources.base import SourceItem
from mmindex.ingest.sources.uri import UriReader
from mmindex.ingest.steps import (
    CaptionModel,
    EmbeddedBatch,
    Embedder,
    LoadedBatch,
    Reader,
    caption_batch,
    embed_captions,
    load_batch,
    vector_column,
)
from mmindex.report import ProgressUpdate, RunReport, UnexpectedErrors
from mmindex.schema import CAPTION_GENERATED, SEVERITY_ERROR, FailureRecord
from mmindex.store.reader import Store
from mmindex.store.sql import sql_string
from mmindex.store.upkeep import finish_run
from mmindex.store.writer import open_writer

CAPTION_STAGES = ("caption",)
_TARGET_COLUMNS = ["id", "uri", "key", "size", "version", "modified_at"]


@dataclass
class CaptionOptions:
    batch_size: int = CPU_CAPTION_BATCH_SIZE
    limit: int | None = None
    where: str | None = None
    recaption: bool = False
    retry_failed: bool = False
    uri_prefix: str | None = None  # only rows under this source root
    indexed_before: datetime | None = None  # only rows written before this moment
    workers: int = 1
    prefetch: int = 2
    write_rows: int = CAPTION_WRITE_ROWS
    write_seconds: float = WRITE_SECONDS
    lock_timeout: float | None = None


def target_filter(model_id: str, options: CaptionOptions) -> str:
    """The SQL filter selecting rows to caption: missing captions, plus other models' generated ones."""
    condition = "caption IS NULL"
    if options.recaption:
        condition = (
            f"(caption IS NULL OR (caption_source = '{CAPTION_GENERATED}' "
            f"AND (caption_model IS NULL OR caption_model != {sql_string(model_id)})))"
        )
    if options.uri_prefix:
        condition += f" AND starts_with(uri, {sql_string(options.uri_prefix)})"
    if options.indexed_before:
        moment = options.indexed_before.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        condition += f" AND indexed_at < TIMESTAMP '{moment}'"
    return f"{condition} AND ({options.where})" if options.where else condition


def caption_targets(store: Store, model_id: str, options: CaptionOptions) -> Iterator[list[SourceItem]]:
    """Batches of items to caption, streamed (see `backfill_targets`)."""
    return backfill_targets(
        store,
        target_filter(model_id, options),
        "caption",
        batch_size=options.batch_size,
        limit=options.limit,
        where=options.where,
        retry_failed=options.retry_failed,
    )


def indexed_item(row: dict[str, Any]) -> SourceItem:
    """An indexed row (uri, key, size, version, modified_at) as an item to read again."""
    return SourceItem(
        uri=row["uri"],
        key=row["key"],
        size=row["size"] or 0,
        version=row["version"] or "",
        modified_at=row["modified_at"],
    )


def backfill_targets(
    store: Store,
    condition: str,
    stage: str,
    *,
    batch_size: int,
    limit: int | None = None,
    where: str | None = None,
    retry_failed: bool = False,
) -> Iterator[list[SourceItem]]:
    """Batches of the rows matching `condition`, as items to read again, streamed. Permanent `stage`
    failures of unchanged images are skipped unless `retry_failed`; rows that failed before for a
    passing reason come last, so they cannot crowd out the rest under `limit`."""
    permanent, earlier = stage_failures(store, stage)
    if retry_failed:
        permanent = {}
    query = store.lancedb_table().search().where(condition).select(_TARGET_COLUMNS).limit(None)
    later: list[SourceItem] = []

    def candidates() -> Iterator[SourceItem]:
        try:
            for record_batch in query.to_batches(1024):
                for row in record_batch.to_pylist():
                    item = indexed_item(row)
                    if permanent.get(item.id) == item.fingerprint:
                        continue
                    if item.id in earlier:
                        later.append(item)
                    else:
                        yield item
        except (ValueError, RuntimeError) as exc:
            if where:
                raise TableError(f"check the --where filter {where!r}: {engine_message(exc)}") from exc
            raise
        yield from later

    batch: list[SourceItem] = []
    for taken, item in enumerate(candidates(), start=1):
        batch.append(item)
        if len(batch) >= batch_size or taken == limit:
            yield batch
            batch = []
        if taken == limit:
            return
    if batch:
        yield batch


def stage_failures(store: Store, stage: str) -> tuple[dict[str, int | None], set[str]]:
    """(permanent failures at `stage`: id -> fingerprint, ids with any other failure at `stage`)."""
    permanent: dict[str, int | None] = {}
    earlier: set[str] = set()
    for batch in store.load_failures():
        for row in batch.to_pylist():
            if row["stage"] != stage:
                continue
            if row["severity"] == SEVERITY_ERROR and not row["retryable"]:
                permanent[row["id"]] = row["fingerprint"]
            else:
                earlier.add(row["id"])
    return permanent, earlier


def inherit_captions(donor: Store, batch: LoadedBatch, report: RunReport) -> LoadedBatch:
    """Reuse the generated captions an older table (built with another embedding model) holds for the
    same, unchanged images, so re-embedding a corpus does not mean captioning it again."""
    missing = {loaded.item.id: loaded for loaded in batch.items if loaded.caption is None}
    for row_id, row in donor.generated_captions(list(missing)).items():
        loaded = missing[row_id]
        if row["fingerprint"] == loaded.item.fingerprint and row["caption"]:
            loaded.caption, loaded.caption_source = row["caption"], CAPTION_GENERATED
            loaded.caption_model, loaded.captioned_at = row["caption_model"], row["captioned_at"]
            report.notes_count("captions reused from the old table")
    return batch


def embed_caption_rows(embedder: Embedder, batch: LoadedBatch, report: RunReport) -> EmbeddedBatch:
    """Partial rows (caption, provenance, text embedding) for the items that got a caption."""
    captioned = [loaded for loaded in batch.items if loaded.caption is not None]
    failures = [_as_caption_failure(f) for f in batch.failures]
    for loaded in batch.items:
        failures.extend(loaded.problems)
    done = [loaded.item.id for loaded in batch.items] + [f.id for f in batch.failures]
    if not captioned:
        return EmbeddedBatch(None, failures, done)
    with report.timed("embed", len(captioned)):
        vectors = embed_captions(embedder, [loaded.caption for loaded in captioned])
    rows = pa.table(
        {
            "id": [loaded.item.id for loaded in captioned],
            "caption": [loaded.caption for loaded in captioned],
            "caption_source": [CAPTION_GENERATED] * len(captioned),
            "caption_model": [loaded.caption_model for loaded in captioned],
            "captioned_at": pa.array(
                [loaded.captioned_at for loaded in captioned], pa.timestamp("us", tz="UTC")
            ),
            "text_embedding": vector_column(vectors, embedder.dim),
        }
    )
    return EmbeddedBatch(rows, failures, done)


def _as_caption_failure(failure: FailureRecord) -> FailureRecord:
    """An image that cannot be read for captioning is a caption failure of that row (it stays indexed)."""
    return FailureRecord(
        failure.id,
        failure.uri,
        failure.key,
        "caption",
        f"{failure.stage}: {failure.error}",
        retryable=failure.retryable,
        fingerprint=failure.fingerprint,
    )


def write_caption_rows(writer: Writer, batch: EmbeddedBatch, report: RunReport) -> None:
    with report.timed("write", len(batch.done_ids)):
        writer.write(batch.rows, batch.failures, batch.done_ids)
    for failure in batch.failures:
        report.record_failure(failure.key, failure.stage, failure.error)


@dataclass
class CaptionSteps:
    """The stage callables `run_caption` chains; the Prefect flow passes task-wrapped versions."""

    load: Callable[..., LoadedBatch] = load_batch
    caption: Callable[..., LoadedBatch] = caption_batch
    embed: Callable[..., EmbeddedBatch] = embed_caption_rows
    write: Callable[..., None] = write_caption_rows


def run_caption(
    store: Store,
    captioner: CaptionModel,
    embedder: Embedder,
    options: CaptionOptions | None = None,
    *,
    reader: Reader | None = None,
    steps: CaptionSteps | None = None,
    progress: Callable[[ProgressUpdate], None] | None = None,
    report: RunReport | None = None,
) -> RunReport:
    """Caption the table's rows that need it; returns a report whose `captioned` and `failed` count
    this run's captions and caption failures."""
    options = options or CaptionOptions()
    steps = steps or CaptionSteps()
    reader = reader or UriReader()
    report = report or RunReport(kind="caption", source=store.describe(), table=store.describe())
    report.models = f"{captioner.compute}; {embedder.compute}"
    with open_writer(store, options.lock_timeout) as writer:
        started = time.perf_counter()
        if store.info().model != embedder.model_id:
            raise TableError(
                f"table {store.describe()} was built with {store.info().model!r}, not {embedder.model_id!r}"
            )
        preprocessors = {"caption": captioner.preprocess}
        done = 0
        targets = caption_targets(store, captioner.model_id, options)
        guard = UnexpectedErrors(stage_failures(store, "caption")[1])
        with (
            writer.buffer(
                flush_rows=options.write_rows,
                flush_seconds=options.write_seconds,
                stages=CAPTION_STAGES,
                partial="captions",
            ) as rows,
            load_pools(options.workers, getattr(reader, "fetch_concurrency", 1)) as pools,
        ):
            for items, loaded in overlapped(
                targets,
                lambda batch: steps.load(reader, batch, preprocessors, report, *pools),
                options.prefetch,
            ):
                report.scanned += len(items)
                captioned = steps.caption(captioner, loaded, report)
                embedded = steps.embed(embedder, captioned, report)
                steps.write(rows, embedded, report)
                guard.judge(embedded.done_ids, embedded.failures)
                done += len(items)
                if progress is not None:
                    progress(ProgressUpdate(done, done, done, False))
        finish_run(writer, report)
        report.seconds = time.perf_counter() - started
        report.notes.append(f"captions by {captioner.model_id} at {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
        return report
