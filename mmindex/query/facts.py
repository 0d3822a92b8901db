"""What a query needs to know of a table (its columns, model, dimension, indices and their
partitions, and the hit columns that hold one value in every row), read once per table version
instead of once per query.

Each query asks the store's always-current handle for the version (one check), and the schema and
index list are read again only when it has moved, from a handle opened at that version that never
moves: the query reads the rows its facts describe, and makes no checks of its own.

Constant columns are worth knowing because Lance stores a page whose values are all alike as one
value, and a point read from such a page decodes the whole page: 4-7 ms per column per query at 1M
rows, where a varied column costs 0.5 ms (`synthetic` is False, `format` JPEG, `caption_source` human
in every row of many corpora). A searcher that answers more than one query at a version learns them
in the background and stops reading them; the hits carry the same values.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa

from mmindex.errors import ConfigError
from mmindex.store import aio
from mmindex.store.connection import connect, open_table_at
from mmindex.store.generations import Generation, active_generation, generation_named
from mmindex.store.reader import Store
from mmindex.store.sql import sql_literal
from mmindex.store.upkeep import trained_partitions

log = logging.getLogger(__name__)

VECTOR_COLUMNS = ("image_embedding", "text_embedding")
LARGE_COLUMNS = (*VECTOR_COLUMNS, "thumbnail")  # and every generation's `image_embedding__NAME`, ...
# What a hit shows (mmindex.query.results.Hit). Each further column costs a point read per query, and
# Lance decodes a whole page for a column whose values are all alike (2-3 ms at 1M rows): bookkeeping
# columns (fingerprint, embed_mode, indexed_at, ...) are read only when asked for (`columns=`).
HIT_COLUMNS = ("id", "uri", "key", "caption", "caption_source", "width", "height", "format", "synthetic")
REFINE_FACTOR = 10  # exact re-ranking of REFINE_FACTOR x k candidates (quantised distances lose recall)
MIN_NPROBES = 20  # IVF partitions probed per query: at least this many, ...
NPROBE_SHARE = 1 / 12  # ... or this share of them (21 of 244 at 1M rows) ...
FILTERED_NPROBE_SHARE = 1 / 6  # ... or, with a filter, this share (41 of 244), see bench/ann.py
# Below this many rows a point read of a constant page costs less than 1 ms: not worth a scan to learn.
CONSTANTS_MIN_ROWS = 100_000


@dataclass(frozen=True)
class TableFacts:
    version: int
    schema: Any  # pa.Schema
    indexed: frozenset[str]  # columns that lead an index
    constants: Mapping[str, Any] = field(default_factory=dict)  # hit columns with one value in every row

    @property
    def names(self) -> list[str]:
        return list(self.schema.names)

    @property
    def small_columns(self) -> list[str]:
        """Every stored column except the embeddings and the thumbnail: what filters may name."""
        return [name for name in self.schema.names if not name.startswith(LARGE_COLUMNS)]

    def result_columns(self, columns: Sequence[str] = ()) -> list[str]:
        """What results carry: the hit's columns the table has and `columns` ("*": every small
        column; "thumbnail": the preview bytes). ConfigError for a column the table lacks."""
        names = self.schema.names
        wanted = self.small_columns if "*" in columns else [c for c in HIT_COLUMNS if c in names]
        unknown = [c for c in columns if c != "*" and (c not in names or c.startswith(VECTOR_COLUMNS))]
        if unknown:
            known = ", ".join(self.small_columns)
            raise ConfigError(f"no column {', '.join(map(repr, unknown))} to return; columns: {known}")
        return list(dict.fromkeys([*wanted, *(c for c in columns if c != "*")]))

    def stored_columns(self, columns: Sequence[str]) -> list[str]:
        """The result columns a query reads from the table: all but the known constants."""
        return [c for c in columns if c not in self.constants]

    def with_constants(self, result: pa.Table, columns: Sequence[str]) -> pa.Table:
        """A result read with `stored_columns(columns)`, completed with the constant columns, in the
        order of `columns` (then the result's other columns, such as scores)."""
        missing = [c for c in columns if c in self.constants and c not in result.column_names]
        if not missing:
            return result
        for name in missing:
            kind = self.schema.field(name).type
            result = result.append_column(
                pa.field(name, kind), pa.repeat(pa.scalar(self.constants[name], kind), result.num_rows)
            )
        rest = [c for c in result.column_names if c not in columns]
        return result.select([*columns, *rest])

    @property
    def dim(self) -> int | None:
        return active_generation(self.schema).dim or None

    @property
    def model(self) -> str | None:
        return active_generation(self.schema).model

    def generation(self, name: str | None) -> Generation:
        """The generation a query names (None: the active one)."""
        return active_generation(self.schema) if name is None else generation_named(self.schema, name)

    def query_settings(self, column: str, *, filtered: bool) -> dict[str, int]:
        """LanceDB settings for a vector query on `column`: none for an exact search of an
        unindexed column; else the partitions probed and the refine factor (bench/ann.py: recall@10
        >= 0.95 for image-like, text-like and 1-5% filtered queries at 100k and 1M rows)."""
        if column not in self.indexed:
            return {}
        settings = {"refine_factor": REFINE_FACTOR}
        partitions = trained_partitions(self.schema, column)
        if partitions:
            share = FILTERED_NPROBE_SHARE if filtered else NPROBE_SHARE
            settings["nprobes"] = min(partitions, max(MIN_NPROBES, math.ceil(partitions * share)))
        return settings


@dataclass(frozen=True)
class Snapshot:
    """One version of a table: handles that read exactly it, and its facts."""

    table: Any  # a LanceDB Table (full-text, hybrid and scans)
    reads: Any  # the same version as a LanceDB AsyncTable (vector queries, mmindex.store.aio)
    facts: TableFacts


class FactsCache:
    """The current TableFacts of a store's table, refreshed when its version changes, with handles
    that read exactly the version they describe."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._snapshot: Snapshot | None = None  # replaced whole
        self._connection: Any = None  # never checks for new versions: its handles stay where opened
        self._lock = threading.Lock()
        self._queries = 0  # queries answered at the current version
        self._learner: threading.Thread | None = None

    def current(self) -> Snapshot:
        """The table at its latest version: handles of that version and its facts.

        The version is checked once (on the store's always-current handle); the handles returned
        never move, so a query on them reads the rows the facts describe even when a commit lands
        meanwhile, and it skips the checks that an always-current handle makes on each read."""
        version = self.store.lancedb_table().version
        snapshot = self._snapshot
        if snapshot is None or snapshot.facts.version != version:
            with self._lock:
                snapshot = self._snapshot
                if snapshot is None or snapshot.facts.version != version:
                    snapshot = self._open_latest()
                    self._snapshot = snapshot
                    self._queries = 0
        return snapshot

    def _open_latest(self) -> Snapshot:
        store = self.store
        if self._connection is None:
            self._connection = connect(store.db_uri, store.storage_options or None, consistency=None)
        table = self._connection.open_table(store.table_name)
        facts = TableFacts(
            version=table.version,
            schema=table.schema,
            indexed=frozenset(index.columns[0] for index in table.list_indices()),
        )
        reads = aio.run(open_table_at(store.db_uri, store.storage_options, store.table_name, facts.version))
        return Snapshot(table, reads, facts)

    def for_query(self) -> Snapshot:
        """`current()` for a query that reads result columns: the second such query at a version
        starts learning its constant columns in the background (a one-query process never pays)."""
        snapshot = self.current()
        with self._lock:
            self._queries += 1
            learn = self._queries == 2 and self._learner is None
            if learn:
                self._learner = threading.Thread(
                    target=self._learn, args=(snapshot,), name="mmindex-constants", daemon=True
                )
        if learn:
            self._learner.start()  # type: ignore[union-attr]
        return snapshot

    def learn(self) -> TableFacts:
        """The current facts with their constant columns learned now, in this thread (a server
        learns them before it takes queries; benchmarks and tests before they measure)."""
        learner = self._learner
        if learner is not None:
            learner.join()
        snapshot = self.current()
        if not snapshot.facts.constants:
            self._learn(snapshot)
        return self.current().facts

    def _learn(self, learnt: Snapshot) -> None:
        try:
            found = constant_columns(learnt.table, learnt.facts)
        except Exception as exc:  # only an optimisation: the columns stay read, the queries go on
            log.debug("could not learn the constant columns: %s", exc)
            found = {}
        with self._lock:
            snapshot = self._snapshot
            if found and snapshot is not None and snapshot.facts.version == learnt.facts.version:
                self._snapshot = replace(snapshot, facts=replace(snapshot.facts, constants=found))
            if self._learner is threading.current_thread():
                self._learner = None


def constant_columns(table: Any, facts: TableFacts) -> dict[str, Any]:
    """The hit columns holding one value (or only nulls) in every row, with that value; none for a
    table under CONSTANTS_MIN_ROWS rows. Each column costs one scan that stops at the first row
    that differs from the first row."""
    candidates = [
        name
        for name in HIT_COLUMNS
        if name != "id" and name in facts.names and _literal_type(facts.schema.field(name).type)
    ]
    if not candidates or table.count_rows() < CONSTANTS_MIN_ROWS:
        return {}
    first = table.search().select(candidates).limit(1).to_arrow().to_pylist()
    if not first:
        return {}
    found = {}
    for name in candidates:
        value = first[0][name]
        differs = (
            f"{name} IS NOT NULL" if value is None else f"{name} IS NULL OR {name} <> {sql_literal(value)}"
        )
        if table.search().where(differs).select(["id"]).limit(1).to_arrow().num_rows == 0:
            found[name] = value
    return found


def _literal_type(kind: Any) -> bool:
    return bool(pa.types.is_string(kind) or pa.types.is_boolean(kind) or pa.types.is_integer(kind))
