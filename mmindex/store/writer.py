"""The single writer of an images table and its failures table, and the order in which it commits.

A `TableWriter` exists only inside `open_writer(store)`, that is while the table's write lock is
held (LanceDB duplicates rows when two writers upsert the same new key at once). It opens its own
handles once the lock is taken, so a run that waited starts from the previous run's result.

Runs write through a `RowBuffer`, flushed every few seconds: first it deletes the old rows of items
that changed and now fail for good, then it replaces failure records, then it upserts images, so a
crash between any two steps can only make the next run redo work, never lose or duplicate it: an
item is skipped only if its row, or its permanent failure, is on record. The embedding model is
written into the table's schema metadata on creation, and a table is never filled from another model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from mmindex.config import WRITE_ROWS, WRITE_SECONDS
from mmindex.errors import TableError
from mmindex.schema import (
    CAPTION_HUMAN,
    FAILURES_SCHEMA,
    ITEM_STAGES,
    SEVERITY_ERROR,
    FailureRecord,
    failures_table,
    failures_table_name,
    images_schema,
)
from mmindex.store.connection import open_table
from mmindex.store.generations import record_active
from mmindex.store.lock import write_guard
from mmindex.store.migrate import migrate
from mmindex.store.sql import sql_in
from mmindex.store.state import SeenIds

if TYPE_CHECKING:
    from mmindex.store.reader import Store

log = logging.getLogger(__name__)

FLUSH_ROWS = WRITE_ROWS
FLUSH_SECONDS = WRITE_SECONDS
DELETE_CHUNK = 1000


class TableWriter:
    """Writes one table (and its failures table) while its lock is held; get one from
    `open_writer(store)`. `guard` says how the lock is held (file lock, orchestrator slot, unguarded)."""

    def __init__(self, store: Store, connection: Any, guard: str) -> None:
        self.store = store
        self.guard = guard
        self.wrote = False
        self._connection = connection
        self._images: Any = None
        self._failures: Any = None
        self._ids_with_failures: set[str] | None = None
        self.migrations: list[str] = []

    @property
    def images(self) -> Any:
        """This writer's LanceDB handle of the images table (TableError until it exists)."""
        if self._images is None:
            self._images = open_table(self._connection, self.store.db_uri, self.store.table_name)
            if self._images is None:
                raise TableError(f"no table {self.store.table_name!r} in {self.store.db_uri}")
            self.migrations += migrate(self._images, self.store.describe())
        return self._images

    @property
    def failures(self) -> Any:
        """The failures table, created on first use."""
        if self._failures is None:
            name = failures_table_name(self.store.table_name)
            self._failures = open_table(self._connection, self.store.db_uri, name)
            if self._failures is None:
                self._failures = self._connection.create_table(name, schema=FAILURES_SCHEMA, exist_ok=True)
        return self._failures

    def prepare(self, model_id: str, dim: int) -> None:
        """Create the tables if needed (at the current schema version), else bring an older table's
        schema up to date; refuse a table built with another model or dimension."""
        if self.store.exists():
            self.store.check_model(model_id)
            recorded_dim = self.store.info().dim
            if recorded_dim is not None and recorded_dim != dim:
                raise TableError(
                    f"table {self.store.table_name!r} holds {recorded_dim}-d vectors, the model makes {dim}-d"
                )
            _ = self.images  # opening it migrates an older schema
        else:
            table = self._connection.create_table(
                self.store.table_name, schema=images_schema(dim, model_id), exist_ok=True
            )
            self.store.check_model(model_id)  # someone else may have created it first
            record_active(table)
            try:
                table.set_unenforced_primary_key("id")
            except (ValueError, RuntimeError) as exc:  # already set by a concurrent creator
                log.debug("primary key not set: %s", exc)
            self._images = table
        _ = self.failures

    @contextmanager
    def buffer(
        self,
        *,
        flush_rows: int = FLUSH_ROWS,
        flush_seconds: float = FLUSH_SECONDS,
        stages: Sequence[str] | None = None,
        partial: str | None = None,
    ) -> Iterator[RowBuffer]:
        """A run's row buffer; whatever it still holds is flushed on exit, even on an error."""
        buffer = RowBuffer(
            self, flush_rows=flush_rows, flush_seconds=flush_seconds, stages=stages, partial=partial
        )
        try:
            yield buffer
        finally:
            buffer.flush()

    # -- the writes ------------------------------------------------------------------------------

    def upsert_rows(self, rows: pa.Table) -> None:
        ordered = conform_rows(_last_per_id(rows), self.images.schema)
        (
            self.images.merge_insert("id")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute(ordered, on_bad_vectors="null")
        )
        self.wrote = True

    def update_captions(self, rows: pa.Table) -> None:
        """Write generated captions into existing rows (matched by id). Rows whose caption is human are
        never updated, whatever selected them; ids no longer in the table are ignored."""
        not_human = f"target.caption_source IS NULL OR target.caption_source <> '{CAPTION_HUMAN}'"
        self.update_columns(rows, where=not_human)

    def update_columns(self, rows: pa.Table, where: str | None = None) -> None:
        """Write some columns of existing rows (matched by id; ids no longer in the table are ignored)."""
        schema = self.images.schema
        ordered = rows.select([n for n in schema.names if n in rows.column_names])
        ordered = ordered.cast(pa.schema([schema.field(n) for n in ordered.column_names]))
        builder = self.images.merge_insert("id").when_matched_update_all(where=where)
        builder.execute(ordered, on_bad_vectors="null")
        self.wrote = True

    def delete_rows(self, ids: Sequence[str]) -> None:
        """Remove image rows (an item that changed and now fails for good must not keep its old row)."""
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), DELETE_CHUNK):
            where = sql_in("id", unique[start : start + DELETE_CHUNK])
            if self.images.count_rows(where):  # most failing items never had a row: no empty commit
                self.images.delete(where)
                self.wrote = True

    def replace_failures(
        self, done_ids: Sequence[str], stages: Sequence[str] | None, records: Sequence[FailureRecord]
    ) -> None:
        """Drop the failure rows (of `stages`, or all) of items just processed, then add the new ones."""
        failures = self.failures
        if self._ids_with_failures is None:
            ids = failures.search().select(["id"]).limit(None).to_arrow().column("id").to_pylist()
            self._ids_with_failures = set(ids)
        known = self._ids_with_failures
        stale = [row_id for row_id in dict.fromkeys(done_ids) if row_id in known]
        for start in range(0, len(stale), DELETE_CHUNK):
            chunk = stale[start : start + DELETE_CHUNK]
            where = (
                sql_in("id", chunk)
                if stages is None
                else f"{sql_in('id', chunk)} AND {sql_in('stage', stages)}"
            )
            failures.delete(where)
            self.wrote = True
        known.difference_update(stale)
        if records:
            failures.add(failures_table(records))
            known.update(r.id for r in records)
            self.wrote = True

    def prune(self, root: str, seen: SeenIds) -> int:
        """Delete rows under `root` whose ids were not seen by a complete listing."""
        removed = 0
        for table in (self.images, self.failures):
            doomed: list[str] = []
            for batch in table.search().select(["id", "uri"]).limit(None).to_batches(65536):
                uris = batch.column("uri").to_pylist()
                missing = seen.missing(batch.column("id"))
                doomed.extend(
                    row_id
                    for row_id, uri, gone in zip(batch.column("id").to_pylist(), uris, missing, strict=True)
                    if gone and uri.startswith(root)
                )
            for start in range(0, len(doomed), DELETE_CHUNK):
                table.delete(sql_in("id", doomed[start : start + DELETE_CHUNK]))
            if table is self.images:
                removed = len(set(doomed))
            if doomed:
                self.wrote = True
        return removed


class RowBuffer:
    """Buffers a run's rows and failure records; flushes every `flush_seconds` or `flush_rows` rows.

    `stages`: which earlier failure rows of the processed items a flush replaces (None: all of them,
    for items processed from scratch). `partial`: rows carry only some columns and update existing
    rows instead of upserting whole rows: "captions" (a caption backfill: human captions are never
    overwritten) or "columns" (any other backfill, e.g. thumbnails).
    """

    def __init__(
        self,
        writer: TableWriter,
        *,
        flush_rows: int = FLUSH_ROWS,
        flush_seconds: float = FLUSH_SECONDS,
        stages: Sequence[str] | None = None,
        partial: str | None = None,
    ):
        if partial not in (None, "captions", "columns"):
            raise ValueError(f"partial must be None, 'captions' or 'columns', not {partial!r}")
        self.writer = writer
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.stages = tuple(stages) if stages is not None else None
        self.partial = partial
        self._rows: list[pa.Table] = []
        self._row_count = 0
        self._failures: list[FailureRecord] = []
        self._done: list[str] = []
        self._last_flush = time.monotonic()

    def write(
        self, rows: pa.Table | None, failures: Sequence[FailureRecord], done_ids: Sequence[str]
    ) -> None:
        if rows is not None and rows.num_rows:
            self._rows.append(rows)
            self._row_count += rows.num_rows
        self._failures.extend(failures)
        self._done.extend(done_ids)
        if self._row_count >= self.flush_rows or time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Commit in an order a kill at any point leaves recoverable: stale rows of items that now fail
        for good go first, then the failure records, then the rows (see the module docstring)."""
        # a retried write task may hand the same batch twice: keep one record per (id, stage)
        failures = list({(f.id, f.stage): f for f in self._failures}.values())
        if not self.partial:
            broken = [
                f.id
                for f in failures
                if f.stage in ITEM_STAGES and f.severity == SEVERITY_ERROR and not f.retryable
            ]
            if broken:
                self.writer.delete_rows(broken)
        if self._done or failures:
            self.writer.replace_failures(self._done, self.stages, failures)
        if self._rows:
            rows = pa.concat_tables(self._rows, promote_options="permissive")
            if self.partial == "captions":
                self.writer.update_captions(rows)
            elif self.partial == "columns":
                self.writer.update_columns(rows)
            else:
                self.writer.upsert_rows(rows)
        self._rows, self._row_count, self._failures, self._done = [], 0, [], []
        self._last_flush = time.monotonic()


def _last_per_id(rows: pa.Table) -> pa.Table:
    """Keep the last row of each id: an upsert source with a repeated new id would insert it twice."""
    ids = rows.column("id").to_pylist()
    if len(set(ids)) == len(ids):
        return rows
    last = {row_id: index for index, row_id in enumerate(ids)}
    return rows.take(sorted(last.values()))


def conform_rows(rows: pa.Table, schema: pa.Schema) -> pa.Table:
    """Whole rows in the table's column order and types; columns the rows lack (added to the table by
    a migration after they were made) are null."""
    columns = [
        rows.column(field.name).cast(field.type)
        if field.name in rows.column_names
        else pa.nulls(rows.num_rows, field.type)
        for field in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


@contextmanager
def open_writer(store: Store, timeout: float | None = None) -> Iterator[TableWriter]:
    """The table's single writer, for as long as the block runs: waits (up to `timeout` seconds)
    while another run writes the table, then opens fresh handles that start from its result."""
    with write_guard(store.db_uri, store.table_name, timeout) as guard:
        yield TableWriter(store, store.connect(), guard)
