"""What a query needs to know of a table (its columns, model, dimension, indices and their
partitions), read once per table version instead of once per query.

Every read of a LanceDB handle checks for a newer version; asking for the version is one such check,
and the schema and index list are read again only when it has moved.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mmindex.errors import ConfigError
from mmindex.store.generations import Generation, active_generation, generation_named
from mmindex.store.reader import Store
from mmindex.store.upkeep import trained_partitions

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


@dataclass(frozen=True)
class TableFacts:
    version: int
    schema: Any  # pa.Schema
    indexed: frozenset[str]  # columns that lead an index

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


class FactsCache:
    """The current TableFacts of a store's table, refreshed when its version changes."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._facts: TableFacts | None = None
        self._lock = threading.Lock()

    def current(self) -> tuple[Any, TableFacts]:
        """The LanceDB table and its facts at its latest version."""
        table = self.store.lancedb_table()
        version = table.version
        facts = self._facts
        if facts is None or facts.version != version:
            with self._lock:
                facts = TableFacts(
                    version=version,
                    schema=table.schema,
                    indexed=frozenset(index.columns[0] for index in table.list_indices()),
                )
                self._facts = facts
        return table, facts
