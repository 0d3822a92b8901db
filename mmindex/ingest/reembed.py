"""Re-embedding a table with another model, as a new generation beside the active one
(mmindex.store.generations).

Rows whose generation column is still empty are streamed, read again (by uri from their source, or
from the stored thumbnail with `from_="thumbnails"`), embedded with the new model (the image, and the
stored caption), and written as an update of the generation's two columns alone. The table's lock is
taken only for each write, every few seconds, so scheduled ingestion keeps running meanwhile and
the active generation keeps answering queries. A write applies only to rows whose fingerprint is
still the one that was read: a row that ingestion changed meanwhile (and emptied in the other
generations) is not given the old image's vector. Rows added or changed during the build are caught
up at the end: passes repeat until no row is left to embed. A killed run leaves whole chunks written
and resumes with the rest; no row is embedded twice into the final columns.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from mmindex.config import CAPTION_WRITE_ROWS, WRITE_SECONDS
from mmindex.errors import ConfigError, FetchError, TableError
from mmindex.ingest.backfill import indexed_item, stage_failures
from mmindex.ingest.pipeline import load_pools, overlapped
from mmindex.ingest.sources.base import SourceItem
from mmindex.ingest.sources.uri import UriReader
from mmindex.ingest.steps import Embedder, LoadedBatch, Reader, embed_batch, load_batch
from mmindex.report import ProgressUpdate, RunReport
from mmindex.schema import FailureRecord
from mmindex.store.generations import (
    Generation,
    add_generation,
    generations,
    name_for,
    set_state,
)
from mmindex.store.reader import Store
from mmindex.store.upkeep import refresh_indices
from mmindex.store.writer import open_writer

REEMBED_STAGE = "reembed"
SAME_FINGERPRINT = "target.fingerprint = source.fingerprint"  # not a row ingestion changed since it was read
FROM_CHOICES = ("source", "thumbnails")
TARGET_COLUMNS = ["id", "uri", "key", "size", "version", "modified_at", "fingerprint", "caption"]


@dataclass
class ReembedOptions:
    name: str | None = None  # the generation's name (default: derived from the model)
    from_: str = "source"  # read the images from their source, or from the stored "thumbnails"
    batch_size: int = 64
    limit: int | None = None  # embed at most this many rows in this run
    workers: int = 1
    prefetch: int = 2
    write_rows: int = CAPTION_WRITE_ROWS
    write_seconds: float = WRITE_SECONDS
    lock_timeout: float | None = None


def run_reembed(
    store: Store,
    embedder: Embedder,
    options: ReembedOptions | None = None,
    *,
    reader: Reader | None = None,
    progress: Callable[[ProgressUpdate], None] | None = None,
) -> tuple[RunReport, Generation]:
    """Build (or finish) a generation of `embedder`'s vectors; the report counts this run's rows, and
    the generation comes back with its state: `ready` once every row that can be embedded is."""
    options = options or ReembedOptions()
    if options.from_ not in FROM_CHOICES:
        raise ConfigError(f"--from must be one of {', '.join(FROM_CHOICES)}, got {options.from_!r}")
    report = RunReport(kind="reembed", source=f"{store.describe()} ({options.from_})", table=store.describe())
    started = time.perf_counter()
    generation = start_generation(store, embedder.model_id, embedder.dim, options)
    preprocessors = {"embed": embedder.preprocess}
    skipped: set[str] = set()  # rows that failed: tried once per run (a set of failures, not of rows)
    done = 0
    with load_pools(options.workers, 8 if options.from_ == "source" else 1) as pools:
        while options.limit is None or done < options.limit:
            before = done
            pending = _Writes(store, generation, options)
            left = None if options.limit is None else options.limit - done
            chunks = targets(store, generation, options, skipped, left)
            for chunk, loaded in overlapped(
                chunks,
                lambda chunk: load_batch(
                    reader_for(chunk, reader, options.from_),
                    [item for item, _ in chunk],
                    preprocessors,  # type: ignore[arg-type]
                    report,
                    *pools,
                ),
                options.prefetch,
            ):
                report.scanned += len(chunk)
                rows, failures = embedded_rows(embedder, chunk, loaded, generation, report)
                pending.add(rows, failures, [item.id for item, _ in chunk])
                report.indexed += 0 if rows is None else rows.num_rows
                for failure in failures:
                    report.record_failure(failure.key, failure.stage, failure.error)
                done += len(chunk)
                if progress is not None:
                    progress(ProgressUpdate(done, done, done, False))
            pending.flush()
            if done == before:  # a pass found nothing left: rows added meanwhile are caught up
                break
            skipped = failed_ids(store)
    generation, actions = finish_generation(store, generation, embedder.embed_mode)
    report.notes += actions
    report.seconds = time.perf_counter() - started
    return report, generation


def coverage(store: Store, generation: Generation) -> tuple[int, int]:
    """(rows holding the generation's vectors, rows in the table)."""
    table = store.lancedb_table()
    return table.count_rows(f"{generation.image_column} IS NOT NULL"), table.count_rows()


def start_generation(store: Store, model_id: str, dim: int, options: ReembedOptions) -> Generation:
    """The generation to build: the one named (resumed), or a new one of `model_id`'s `dim`-d vectors."""
    with open_writer(store, options.lock_timeout) as writer:
        info = store.info()
        writer.prepare(info.model or "", info.dim or 0)  # migrates an older table
        table = writer.images
        known = {g.name: g for g in generations(table.schema)}
        name = generation_name(known, model_id, options.name)
        existing = known.get(name)
        if existing is not None and existing.state != "retired":
            if existing.model != model_id:
                raise ConfigError(
                    f"generation {name!r} holds vectors of {existing.model}, not {model_id}; "
                    "give another --name"
                )
            if existing.state == "active":
                raise ConfigError(f"generation {name!r} is the active one: nothing to build")
            return existing
        return add_generation(table, name, model_id, dim)


def generation_name(known: dict[str, Generation], model_id: str, asked: str | None) -> str:
    """The name a run builds under: the one asked for, else an unfinished generation of the same model
    (which the run continues), else one derived from the model."""
    return asked or _resumable(known, model_id) or name_for(model_id, set(known))


def _resumable(known: dict[str, Generation], model: str) -> str | None:
    """An unfinished or finished generation of the same model, which a new run continues."""
    return next(
        (g.name for g in known.values() if g.model == model and g.state in ("building", "ready")), None
    )


def finish_generation(store: Store, generation: Generation, mode: str) -> tuple[Generation, list[str]]:
    """The generation's state (`ready` when every row holds its vectors) and its vector indices,
    built now so that activating it is instant."""
    embedded, rows = coverage(store, generation)
    state = "ready" if embedded == rows else "building"
    with open_writer(store) as writer:
        set_state(writer.images, generation.name, state, mode=mode)
        actions = refresh_indices(writer)
    finished = next(g for g in generations(store.lancedb_table().schema) if g.name == generation.name)
    return finished, actions


def failed_ids(store: Store) -> set[str]:
    """The rows a re-embedding could not embed (failure rows at stage reembed)."""
    permanent, earlier = stage_failures(store, REEMBED_STAGE)
    return set(permanent) | earlier


def targets(
    store: Store, generation: Generation, options: ReembedOptions, skipped: set[str], limit: int | None
) -> Iterator[list[tuple[SourceItem, dict[str, Any]]]]:
    """Chunks of (item, stored row) still lacking the generation's vectors, streamed; rows embedded
    meanwhile no longer match, and `skipped` ones are left out. Memory: one chunk and `skipped`."""
    columns = TARGET_COLUMNS + (["thumbnail"] if options.from_ == "thumbnails" else [])
    if generation.image_column not in store.lancedb_table().schema.names:
        raise TableError(f"generation {generation.name!r} has no columns in {store.describe()}")
    query = (
        store.lancedb_table().search().where(f"{generation.image_column} IS NULL").select(columns).limit(None)
    )
    chunk: list[tuple[SourceItem, dict[str, Any]]] = []
    taken = 0
    for record_batch in query.to_batches(1024):
        for row in record_batch.to_pylist():
            if row["id"] in skipped:
                continue
            item = indexed_item(row)
            chunk.append((item, row))
            taken += 1
            if len(chunk) >= options.batch_size or taken == limit:
                yield chunk
                chunk = []
            if taken == limit:
                return
    if chunk:
        yield chunk


class _StoredThumbnails:
    """Reads an item's stored preview instead of its source (`--from thumbnails`)."""

    def __init__(self, thumbnails: dict[str, bytes | None]) -> None:
        self.thumbnails = thumbnails

    def read(self, item: SourceItem) -> bytes:
        data = self.thumbnails.get(item.id)
        if not data:
            raise FetchError("the row has no stored thumbnail", retryable=False)
        return data

    def read_sidecar(self, item: SourceItem) -> bytes:
        raise FetchError("rows read again have no sidecar")


def reader_for(chunk: list[tuple[SourceItem, dict[str, Any]]], reader: Reader | None, from_: str) -> Reader:
    if from_ == "thumbnails":
        return _StoredThumbnails({item.id: row.get("thumbnail") for item, row in chunk})
    return reader or UriReader()


def embedded_rows(
    embedder: Embedder,
    chunk: list[tuple[SourceItem, dict[str, Any]]],
    loaded: LoadedBatch,
    generation: Generation,
    report: RunReport,
) -> tuple[pa.Table | None, list[FailureRecord]]:
    """The generation's columns for the rows that loaded (with the fingerprint they were read at),
    and the failures of the others, at stage reembed."""
    stored = {item.id: row for item, row in chunk}
    for one in loaded.items:
        one.caption = stored[one.item.id]["caption"]  # the caption embedded is the stored one
    embedded = embed_batch(embedder, loaded, report)
    failures = [_as_reembed_failure(failure) for failure in embedded.failures]
    if embedded.rows is None:
        return None, failures
    ids = embedded.rows.column("id").to_pylist()
    rows = pa.table(
        {
            "id": ids,
            "fingerprint": pa.array([stored[row_id]["fingerprint"] for row_id in ids], pa.int64()),
            generation.image_column: embedded.rows.column("image_embedding"),
            generation.text_column: embedded.rows.column("text_embedding"),
        }
    )
    return rows, failures


def _as_reembed_failure(failure: FailureRecord) -> FailureRecord:
    error = failure.error if failure.stage == REEMBED_STAGE else f"{failure.stage}: {failure.error}"
    return FailureRecord(
        failure.id,
        failure.uri,
        failure.key,
        REEMBED_STAGE,
        error,
        retryable=failure.retryable,
        fingerprint=failure.fingerprint,
        severity=failure.severity,
    )


class _Writes:
    """The embedded rows of a pass, written every `write_rows` rows or `write_seconds`, each write
    under the table's lock for as long as it takes."""

    def __init__(self, store: Store, generation: Generation, options: ReembedOptions) -> None:
        self.store, self.generation, self.options = store, generation, options
        self.rows: list[pa.Table] = []
        self.count = 0
        self.failures: list[FailureRecord] = []
        self.done: list[str] = []
        self.last = time.monotonic()

    def add(self, rows: pa.Table | None, failures: list[FailureRecord], done: list[str]) -> None:
        if rows is not None:
            self.rows.append(rows)
            self.count += rows.num_rows
        self.failures += failures
        self.done += done
        if (
            self.count >= self.options.write_rows
            or time.monotonic() - self.last >= self.options.write_seconds
        ):
            self.flush()

    def flush(self) -> None:
        if self.done or self.failures:
            with open_writer(self.store, self.options.lock_timeout) as writer:
                writer.replace_failures(self.done, (REEMBED_STAGE,), self.failures)
                if self.rows:
                    rows = pa.concat_tables(self.rows)
                    writer.update_columns(rows, where=SAME_FINGERPRINT)  # no stale vector for a changed row
        self.rows, self.count, self.failures, self.done = [], 0, [], []
        self.last = time.monotonic()
