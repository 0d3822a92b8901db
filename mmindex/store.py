"""The single writer of an images table and its failures table, plus their indices and upkeep.

Every write of a run goes through one `StoreWriter` (LanceDB duplicates rows when two writers upsert
the same new key at once). A writer flushes buffered rows every few seconds: first it deletes the old
rows of items that changed and now fail for good, then it replaces failure records, then it upserts
images, so a crash between any two steps can only make the next run redo work, never lose or
duplicate it: an item is skipped only if its row, or its permanent failure, is on record. The
embedding model is written into the table's schema metadata on creation, and a table is never filled
from another model.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import pyarrow as pa

from mmindex.config import Settings
from mmindex.errors import ConfigError, StoreError, TableError
from mmindex.locks import TableLock, lock_path
from mmindex.report import RunReport
from mmindex.schema import (
    CAPTION_HUMAN,
    FAILURES_SCHEMA,
    META_DIM,
    META_MODEL,
    SEVERITY_ERROR,
    failures_table_name,
    images_schema,
)
from mmindex.state import ITEM_STAGES, FailureRecord, IndexedState, SeenIds, failures_table

log = logging.getLogger(__name__)

os.environ.setdefault("LANCEDB_LOG", "error")  # lance prints a WARN per query that omits _distance

VECTOR_INDEX_MIN_ROWS = 50_000
FLUSH_ROWS = 4096
FLUSH_SECONDS = 5.0
DELETE_CHUNK = 1000


def sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def sql_in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(sql_string(v) for v in values)})"


@dataclass(frozen=True)
class TableInfo:
    rows: int
    model: str | None
    dim: int | None


class Store:
    """An images table (default `images`) and its `<table>_failures` companion in one LanceDB."""

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        """The store Settings name; an `s3://` database is reached with the sources' S3 settings."""
        options = None
        if settings.db.startswith("s3://"):
            from mmindex.sources.s3 import S3Config, lance_storage_options

            options = lance_storage_options(S3Config.from_settings(settings))
        return cls(settings.db, settings.table, storage_options=options)

    def __init__(self, db: str, table: str = "images", *, storage_options: dict[str, str] | None = None):
        self.db_uri = db
        self.table_name = table
        self.storage_options = storage_options or {}
        self._connection: Any = None
        self._table: Any = None
        self._failures: Any = None
        self._ids_with_failures: set[str] = set()
        self.vector_index_min_rows = VECTOR_INDEX_MIN_ROWS
        self._wrote = False

    # -- connection and tables -------------------------------------------------------------------

    def describe(self) -> str:
        return f"{self.db_uri}#{self.table_name}"

    @property
    def connection(self) -> Any:
        if self._connection is None:
            import lancedb

            try:
                self._connection = lancedb.connect(self.db_uri, storage_options=self.storage_options or None)
            except (ValueError, OSError, RuntimeError) as exc:
                raise ConfigError(f"cannot open database {self.db_uri}: {_explain_connect(exc)}") from None
        return self._connection

    def _open(self, name: str) -> Any | None:
        try:
            return self.connection.open_table(name)
        except ValueError as exc:
            if "not found" in str(exc) or "does not exist" in str(exc):
                return None
            raise StoreError(f"cannot open table {name} in {self.db_uri}: {_short(exc)}") from None
        except FileNotFoundError:
            return None

    @property
    def table(self) -> Any:
        """The images table; TableError if it does not exist."""
        if self._table is None:
            self._table = self._open(self.table_name)
            if self._table is None:
                raise TableError(
                    f"no table {self.table_name!r} in {self.db_uri}; build it with `mmindex index SOURCE`"
                )
        return self._table

    @property
    def failures(self) -> Any | None:
        if self._failures is None:
            self._failures = self._open(failures_table_name(self.table_name))
        return self._failures

    def exists(self) -> bool:
        try:
            _ = self.table
        except TableError:
            return False
        return True

    def info(self) -> TableInfo:
        metadata = self.table.schema.metadata or {}
        dim = metadata.get(META_DIM)
        model = metadata.get(META_MODEL)
        return TableInfo(
            rows=self.table.count_rows(),
            model=model.decode() if model else None,
            dim=int(dim) if dim else None,
        )

    def recorded_model(self) -> str | None:
        """The embedding model recorded in the table, or None when the table does not exist yet."""
        return self.info().model if self.exists() else None

    def check_model(self, model_id: str) -> None:
        recorded = self.recorded_model()
        if recorded is not None and recorded != model_id:
            raise TableError(
                f"table {self.table_name!r} in {self.db_uri} was built with model {recorded!r}, not "
                f"{model_id!r}; leave out --model to use it, or pass --table NAME to build a new table"
            )

    def prepare(self, model_id: str, dim: int) -> None:
        """Create the tables if needed; refuse a table built with another model or dimension."""
        if self.exists():
            self.check_model(model_id)
            recorded_dim = self.info().dim
            if recorded_dim is not None and recorded_dim != dim:
                raise TableError(
                    f"table {self.table_name!r} holds {recorded_dim}-d vectors, the model makes {dim}-d"
                )
        else:
            table = self.connection.create_table(
                self.table_name, schema=images_schema(dim, model_id), exist_ok=True
            )
            self.check_model(model_id)  # someone else may have created it first
            try:
                table.set_unenforced_primary_key("id")
            except (ValueError, RuntimeError) as exc:  # already set by a concurrent creator
                log.debug("primary key not set: %s", exc)
            self._table = table
        if self.failures is None:
            self._failures = self.connection.create_table(
                failures_table_name(self.table_name), schema=FAILURES_SCHEMA, exist_ok=True
            )

    @contextmanager
    def lock(self, timeout: float | None = None) -> Iterator[TableLock]:
        """Exclusive write access to this table for a whole run (see mmindex.locks).

        Once it is held, table handles opened before are dropped: a LanceDB handle never sees commits
        that other processes make after it was opened, and a run that waited for another must start
        from that run's finished state, not from what the table held when this one began.
        """
        with TableLock(lock_path(self.db_uri, self.table_name), self.table_name, timeout=timeout) as held:
            self._table = self._failures = None
            yield held

    # -- reading state ---------------------------------------------------------------------------

    def load_state(self) -> IndexedState:
        """What is indexed already (id -> fingerprint) and which items failed permanently."""
        if not self.exists():
            return IndexedState.empty()
        rows = self.table.search().select(["id", "fingerprint"]).limit(None).to_batches(65536)
        return IndexedState.from_tables(rows, self.load_failures())

    def load_failures(self) -> list[pa.RecordBatch]:
        """The failures table's bookkeeping columns; also tells the writer which ids have rows there."""
        failures: list[pa.RecordBatch] = []
        if self.failures is not None:
            columns = ["id", "fingerprint", "retryable", "severity", "stage", "error"]
            failures = list(self.failures.search().select(columns).limit(None).to_batches(65536))
        self._ids_with_failures = {row_id for batch in failures for row_id in batch.column("id").to_pylist()}
        return failures

    def generated_captions(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Generated captions (with fingerprint, model and time) of these ids, for reuse by a new table."""
        if not ids or not self.exists():
            return {}
        columns = ["id", "fingerprint", "caption", "caption_model", "captioned_at"]
        where = f"caption_source = 'generated' AND {sql_in('id', list(ids))}"
        rows = self.table.search().where(where).select(columns).limit(None).to_arrow().to_pylist()
        return {row["id"]: row for row in rows}

    def iter_column_batches(self, columns: list[str], where: str | None = None) -> Iterator[pa.RecordBatch]:
        query = self.table.search().select(columns)
        if where:
            query = query.where(where)
        yield from query.limit(None).to_batches(65536)

    # -- writing ---------------------------------------------------------------------------------

    @contextmanager
    def writer(
        self,
        *,
        flush_rows: int = FLUSH_ROWS,
        flush_seconds: float = FLUSH_SECONDS,
        stages: Sequence[str] | None = None,
        partial: bool = False,
    ) -> Iterator[StoreWriter]:
        """The run's single writer; whatever it still buffers is flushed on exit, even on an error."""
        writer = StoreWriter(
            self, flush_rows=flush_rows, flush_seconds=flush_seconds, stages=stages, partial=partial
        )
        try:
            yield writer
        finally:
            writer.flush()

    def upsert_rows(self, rows: pa.Table) -> None:
        rows = _last_per_id(rows)
        ordered = rows.select(self.table.schema.names).cast(self.table.schema)
        (
            self.table.merge_insert("id")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute(ordered, on_bad_vectors="null")
        )
        self._wrote = True

    def update_captions(self, rows: pa.Table) -> None:
        """Write generated captions into existing rows (matched by id). Rows whose caption is human are
        never updated, whatever selected them; ids no longer in the table are ignored."""
        schema = self.table.schema
        ordered = rows.select([n for n in schema.names if n in rows.column_names])
        ordered = ordered.cast(pa.schema([schema.field(n) for n in ordered.column_names]))
        not_human = f"target.caption_source IS NULL OR target.caption_source <> '{CAPTION_HUMAN}'"
        builder = self.table.merge_insert("id").when_matched_update_all(where=not_human)
        builder.execute(ordered, on_bad_vectors="null")
        self._wrote = True

    def delete_rows(self, ids: Sequence[str]) -> None:
        """Remove image rows (an item that changed and now fails for good must not keep its old row)."""
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), DELETE_CHUNK):
            where = sql_in("id", unique[start : start + DELETE_CHUNK])
            if self.table.count_rows(where):  # most failing items never had a row: no empty commit
                self.table.delete(where)
                self._wrote = True

    def replace_failures(
        self, done_ids: Sequence[str], stages: Sequence[str] | None, records: Sequence[FailureRecord]
    ) -> None:
        """Drop the failure rows (of `stages`, or all) of items just processed, then add the new ones."""
        failures = self.failures
        if failures is None:
            raise StoreError("failures table missing; call prepare() first")
        stale = [row_id for row_id in dict.fromkeys(done_ids) if row_id in self._ids_with_failures]
        for start in range(0, len(stale), DELETE_CHUNK):
            chunk = stale[start : start + DELETE_CHUNK]
            where = (
                sql_in("id", chunk)
                if stages is None
                else f"{sql_in('id', chunk)} AND {sql_in('stage', stages)}"
            )
            failures.delete(where)
            self._wrote = True
        self._ids_with_failures.difference_update(stale)
        if records:
            failures.add(failures_table(records))
            self._ids_with_failures.update(r.id for r in records)
            self._wrote = True

    def prune(self, root: str, seen: SeenIds) -> int:
        """Delete rows under `root` whose ids were not seen by a complete listing."""
        removed = 0
        for table in (self.table, self.failures):
            if table is None:
                continue
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
            if table is self.table:
                removed = len(set(doomed))
            if doomed:
                self._wrote = True
        return removed

    # -- indices and upkeep ----------------------------------------------------------------------

    def finish(self, report: RunReport) -> None:
        """After a run that wrote something: refresh indices so new rows are searched well."""
        if not self._wrote:
            return
        with report.timed("write", 0):
            actions = self.refresh_indices()
        report.notes.extend(actions)

    def refresh_indices(self, *, cleanup_older_than: timedelta | None = None) -> list[str]:
        """Create the indices a table of this size benefits from and fold new rows into existing ones.

        Full-text index on captions: always (FTS needs it). Vector indices (IVF_HNSW_SQ, cosine):
        from `vector_index_min_rows` rows on; smaller tables are searched exactly. Returns what it did.
        """
        from lancedb.index import FTS, IvfHnswSq

        table = self.table
        actions: list[str] = []
        existing = {index.columns[0]: index for index in table.list_indices()}
        rows = table.count_rows()
        if "caption" not in existing and table.count_rows("caption IS NOT NULL") > 0:
            table.create_index("caption", config=FTS())
            actions.append("created full-text index on caption")
        for column in ("image_embedding", "text_embedding"):
            filled = rows if column == "image_embedding" else table.count_rows(f"{column} IS NOT NULL")
            if column not in existing and filled >= self.vector_index_min_rows:
                partitions = max(1, int(np.sqrt(filled) / 16))
                table.create_index(
                    column, config=IvfHnswSq(distance_type="cosine", num_partitions=partitions)
                )
                actions.append(f"created IVF_HNSW_SQ index on {column} ({filled} rows)")
        stats = table.stats()
        fragments = stats["fragment_stats"]["num_fragments"]
        unindexed = sum(self._unindexed(index.name) for index in table.list_indices())
        if fragments > 16 or unindexed > 0 or cleanup_older_than is not None:
            table.optimize(cleanup_older_than=cleanup_older_than)
            actions.append(f"optimized: compacted {fragments} fragments, folded {unindexed} unindexed rows")
        return actions

    def _unindexed(self, index_name: str) -> int:
        stats = self.table.index_stats(index_name)
        return int(getattr(stats, "num_unindexed_rows", 0) or 0)

    # -- reading for people ----------------------------------------------------------------------

    def failure_rows(self, where: str | None = None) -> list[dict[str, Any]]:
        if self.failures is None:
            return []
        query = self.failures.search().select([f.name for f in FAILURES_SCHEMA]).limit(None)
        if where:
            query = query.where(where)
        rows: list[dict[str, Any]] = (
            query.to_arrow().sort_by([("key", "ascending"), ("stage", "ascending")]).to_pylist()
        )
        return rows

    def stats(self) -> dict[str, Any]:
        info = self.info()
        table = self.table
        by_source = {
            "human": table.count_rows("caption_source = 'human'"),
            "generated": table.count_rows("caption_source = 'generated'"),
            "none": table.count_rows("caption IS NULL"),
        }
        failures = self.failures
        errors = failures.count_rows(f"severity = '{SEVERITY_ERROR}'") if failures is not None else 0
        warnings = failures.count_rows() - errors if failures is not None else 0
        indices = [
            {
                "name": index.name,
                "type": index.index_type,
                "column": index.columns[0],
                "unindexed_rows": self._unindexed(index.name),
            }
            for index in table.list_indices()
        ]
        return {
            "db": self.db_uri,
            "table": self.table_name,
            "rows": info.rows,
            "failures": errors,
            "warnings": warnings,
            "captions": by_source,
            "embed_model": info.model,
            "dim": info.dim,
            "version": table.version,
            "fragments": table.stats()["fragment_stats"]["num_fragments"],
            "indices": indices,
        }


class StoreWriter:
    """Buffers a run's rows and failure records; flushes every `flush_seconds` or `flush_rows` rows.

    `stages`: which earlier failure rows of the processed items a flush replaces (None: all of them,
    for items processed from scratch). `partial`: rows carry only some columns and update existing
    rows (a caption backfill) instead of upserting whole rows.
    """

    def __init__(
        self,
        store: Store,
        *,
        flush_rows: int = FLUSH_ROWS,
        flush_seconds: float = FLUSH_SECONDS,
        stages: Sequence[str] | None = None,
        partial: bool = False,
    ):
        self.store = store
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
                self.store.delete_rows(broken)
        if self._done or failures:
            self.store.replace_failures(self._done, self.stages, failures)
        if self._rows:
            rows = pa.concat_tables(self._rows, promote_options="permissive")
            self.store.update_captions(rows) if self.partial else self.store.upsert_rows(rows)
        self._rows, self._row_count, self._failures, self._done = [], 0, [], []
        self._last_flush = time.monotonic()


def _last_per_id(rows: pa.Table) -> pa.Table:
    """Keep the last row of each id: an upsert source with a repeated new id would insert it twice."""
    ids = rows.column("id").to_pylist()
    if len(set(ids)) == len(ids):
        return rows
    last = {row_id: index for index, row_id in enumerate(ids)}
    return rows.take(sorted(last.values()))


_S3_CODE = re.compile(r"<Code>(\w+)</Code>")
_S3_MEANING = {
    "NoSuchBucket": "the bucket does not exist",
    "InvalidAccessKeyId": "the access key is not valid",
    "SignatureDoesNotMatch": "the secret key does not match the access key",
    "AccessDenied": "access denied",
    "ExpiredToken": "the credentials have expired",
}


def _explain_connect(exc: BaseException) -> str:
    """One line for a failed connect; for object stores, the S3 error code instead of a wall of XML."""
    match = _S3_CODE.search(str(exc))
    if match:
        return f"{_S3_MEANING.get(match.group(1), 'the object store refused')} ({match.group(1)})"
    if "Connect" in str(exc) or "Timeout" in str(exc):
        return "the object store endpoint cannot be reached"
    return _short(exc)


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."
