"""The read handle of an images table (default `images`) and its `<table>_failures` companion.

`Store` answers what a table holds (info, the state a run plans against, failures, stats) and hands
out the table's only writer (`open_writer`), which exists only while the table's write lock is held.
Its LanceDB handles check for new versions on every read, so they always see what other processes
have committed. Raw LanceDB tables are reachable through one escape hatch, `lancedb_table()`, for
reads mmindex does not wrap (search, a notebook's own queries).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from mmindex.config import Settings
from mmindex.errors import TableError
from mmindex.schema import FAILURES_SCHEMA, failures_table_name
from mmindex.store.connection import connect, open_table, storage_options_for
from mmindex.store.generations import active_generation
from mmindex.store.migrate import check_readable
from mmindex.store.sql import sql_in
from mmindex.store.state import IndexedState

log = logging.getLogger(__name__)

VECTOR_INDEX_MIN_ROWS = 50_000


@dataclass(frozen=True)
class TableInfo:
    rows: int
    model: str | None
    dim: int | None


class Store:
    """Where an images table lives, and the read handle of it and of its failures table."""

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        """The store Settings name; an `s3://` database is reached with the sources' S3 settings."""
        return cls(settings.db, settings.table, storage_options=storage_options_for(settings))

    def __init__(self, db: str, table: str = "images", *, storage_options: dict[str, str] | None = None):
        self.db_uri = db
        self.table_name = table
        self.storage_options = storage_options or {}
        self.vector_index_min_rows = VECTOR_INDEX_MIN_ROWS
        self._connection: Any = None
        self._tables: dict[str, Any] = {}

    def describe(self) -> str:
        return f"{self.db_uri}#{self.table_name}"

    # -- handles ---------------------------------------------------------------------------------

    def connect(self) -> Any:
        """A new LanceDB connection to this store's database (the writer opens its own)."""
        return connect(self.db_uri, self.storage_options or None)

    def _handle(self, name: str) -> Any | None:
        if name not in self._tables:
            if self._connection is None:
                self._connection = self.connect()
            table = open_table(self._connection, self.db_uri, name)
            if table is None:
                return None  # not cached: it may be created later
            if name == self.table_name:
                check_readable(table.schema, self.describe())
            self._tables[name] = table
        return self._tables[name]

    def lancedb_table(self, *, failures: bool = False) -> Any:
        """Escape hatch: the raw LanceDB images table (or failures table; None if it does not exist),
        for reads mmindex does not wrap. Write only through `mmindex.store.writer.open_writer`: LanceDB
        duplicates rows when two writers upsert at once, and the writer keeps the commit order that makes runs
        resumable."""
        if failures:
            return self._handle(failures_table_name(self.table_name))
        table = self._handle(self.table_name)
        if table is None:
            raise TableError(
                f"no table {self.table_name!r} in {self.db_uri}; build it with `mmindex index SOURCE`"
            )
        return table

    def exists(self) -> bool:
        return self._handle(self.table_name) is not None

    # -- what the table holds --------------------------------------------------------------------

    def info(self) -> TableInfo:
        """Rows, and the model and dimension of the active generation's vectors."""
        table = self.lancedb_table()
        active = active_generation(table.schema)
        return TableInfo(rows=table.count_rows(), model=active.model, dim=active.dim or None)

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

    def load_state(self) -> IndexedState:
        """What is indexed already (id -> fingerprint) and which items failed permanently."""
        if not self.exists():
            return IndexedState.empty()
        rows = self.lancedb_table().search().select(["id", "fingerprint"]).limit(None).to_batches(65536)
        return IndexedState.from_tables(rows, self.load_failures())

    def load_failures(self) -> list[pa.RecordBatch]:
        """The failures table's bookkeeping columns (id, fingerprint, retryable, severity, stage, error)."""
        failures = self.lancedb_table(failures=True)
        if failures is None:
            return []
        columns = ["id", "fingerprint", "retryable", "severity", "stage", "error"]
        return list(failures.search().select(columns).limit(None).to_batches(65536))

    def generated_captions(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Generated captions (with fingerprint, model and time) of these ids, for reuse by a new table."""
        if not ids or not self.exists():
            return {}
        columns = ["id", "fingerprint", "caption", "caption_model", "captioned_at"]
        where = f"caption_source = 'generated' AND {sql_in('id', list(ids))}"
        query = self.lancedb_table().search().where(where).select(columns).limit(None)
        return {row["id"]: row for row in query.to_arrow().to_pylist()}

    def failure_rows(self, where: str | None = None) -> list[dict[str, Any]]:
        failures = self.lancedb_table(failures=True)
        if failures is None:
            return []
        query = failures.search().select([f.name for f in FAILURES_SCHEMA]).limit(None)
        if where:
            query = query.where(where)
        rows: list[dict[str, Any]] = (
            query.to_arrow().sort_by([("key", "ascending"), ("stage", "ascending")]).to_pylist()
        )
        return rows
