"""Relevance controls of a search: a score cutoff (`min_score`) and an order by a column (`order_by`).

- `min_score` keeps the hits whose cosine score is at least that much. Scores fall along the ranking,
  so the cutoff only shortens the last page.
- `order_by` ("COLUMN", "COLUMN asc" or "COLUMN desc") orders the relevant hits by a column:
  - with `min_score`, every hit at or above the cutoff (the best ORDERED_SET_LIMIT of them) is ordered,
    and `offset`/`k` page through that order;
  - without it, each page of the ranking (`offset`, `k`) is ordered by the column.
  Rows without a value come last; equal values keep their score order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from mmindex.errors import ConfigError

ORDERED_SET_LIMIT = 2_000  # hits ordered at most when order_by and min_score are combined
DIRECTIONS = {"asc": "ascending", "desc": "descending"}
UNORDERABLE = ("image_embedding", "text_embedding", "thumbnail")


@dataclass(frozen=True)
class Order:
    column: str
    descending: bool = False

    def __str__(self) -> str:
        return f"{self.column} {'desc' if self.descending else 'asc'}"


@dataclass(frozen=True)
class Relevance:
    """How a ranking becomes a page beyond `offset` and `k` (hashable: concurrent queries that share
    it can share one engine query)."""

    min_score: float | None = None
    order_by: Order | None = None

    @property
    def orders_whole_set(self) -> bool:
        return self.min_score is not None and self.order_by is not None

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns the hits must carry to be ordered."""
        return (self.order_by.column,) if self.order_by is not None else ()

    def depth(self, offset: int, k: int) -> int:
        """How many of the best hits the page is made from."""
        return ORDERED_SET_LIMIT if self.orders_whole_set else offset + k

    def max_distance(self) -> float | None:
        """The engine-side cosine distance bound that keeps at least every hit above the cutoff."""
        return 1.0 - self.min_score + 1e-4 if self.orders_whole_set and self.min_score is not None else None

    def page(self, ranked: pa.Table, offset: int, k: int) -> pa.Table:
        """The page of `ranked` (best first, with a `score` column)."""
        if self.min_score is not None:
            ranked = ranked.filter(pc.greater_equal(ranked.column("score"), self.min_score))
        if self.order_by is None:
            return ranked.slice(offset, k)
        if self.orders_whole_set:
            return _ordered(ranked, self.order_by).slice(offset, k)
        return _ordered(ranked.slice(offset, k), self.order_by)


ANY = Relevance()  # the plain ranking


def _ordered(table: pa.Table, order: Order) -> pa.Table:
    if table.num_rows == 0:
        return table
    by_score = pa.array(range(table.num_rows), pa.int64())  # ties keep the score order
    keyed = table.append_column("__rank", by_score)
    direction = "descending" if order.descending else "ascending"
    keys = [(order.column, direction, "at_end"), ("__rank", "ascending", "at_end")]
    return keyed.take(pc.sort_indices(keyed, sort_keys=keys)).drop_columns(["__rank"])


def relevance(min_score: float | None, order_by: str | None, schema: Callable[[], pa.Schema]) -> Relevance:
    """The relevance controls of a checked SearchRequest (mmindex.query.request checks `min_score`)
    for the table whose schema `schema()` reads (only for an `order_by`: a plain query reads no
    schema for them). ConfigError for a column that cannot order the hits."""
    return Relevance(min_score, parse_order(order_by, schema()) if order_by else None)


def parse_order(text: str, schema: pa.Schema) -> Order:
    """'COLUMN', 'COLUMN asc' or 'COLUMN desc', for a column of `schema` that has an order."""
    parts = text.split()
    if not 1 <= len(parts) <= 2 or (len(parts) == 2 and parts[1].lower() not in DIRECTIONS):
        raise ConfigError(f"order_by is 'COLUMN', 'COLUMN asc' or 'COLUMN desc', got {text!r}")
    column = parts[0]
    orderable = [
        field.name
        for field in schema
        if field.name not in UNORDERABLE
        and not pa.types.is_nested(field.type)
        and not pa.types.is_binary(field.type)
    ]
    if column not in orderable:
        raise ConfigError(f"cannot order by {column!r}; columns with an order: {', '.join(orderable)}")
    return Order(column, len(parts) == 2 and parts[1].lower() == "desc")
