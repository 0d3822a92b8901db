"""Cutting planned work into shards: a few thousand items each, with ids that depend only on the
work itself, so a retried or replanned shard keeps its id."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa

from mmindex.ingest.sources.base import SourceItem
from mmindex.schema import FailureRecord
from mmindex.store.state import IndexedState, id_keys

_LISTED = ("uri", "key", "size", "version", "modified_at", "caption", "sidecar", "sidecar_version")


@dataclass(frozen=True)
class Shard:
    """One unit of work: items to load and embed, the ids among them that already have a row (they
    are upserted; the others are appended), and listing problems that ride along as failure rows.

    The items travel as columns of plain values (`listed`), a few times smaller and faster to ship
    than pickled items; a worker rebuilds them batch by batch (`items_in`) in its loading thread, so
    the rebuilding overlaps with the model's work.
    """

    id: str
    listed: tuple[list[Any], ...]  # one list per name in _LISTED
    replaces: frozenset[str]
    scan_failures: tuple[FailureRecord, ...] = ()

    @classmethod
    def of(
        cls, items: Sequence[SourceItem], replaces: frozenset[str], failures: Sequence[FailureRecord] = ()
    ) -> Shard:
        listed = tuple([getattr(item, name) for item in items] for name in _LISTED)
        shard = cls(shard_id(items, failures), listed, replaces, tuple(failures))
        shard.__dict__["items"] = tuple(items)  # the driver's own copy: nothing to rebuild
        return shard

    @property
    def count(self) -> int:
        """How many items (scan failures aside)."""
        return len(self.listed[0]) if self.listed else 0

    def items_in(self, start: int, stop: int) -> list[SourceItem]:
        if "items" in self.__dict__:
            return list(self.items[start:stop])
        return [SourceItem(*values) for values in zip(*(c[start:stop] for c in self.listed), strict=True)]

    @cached_property
    def items(self) -> tuple[SourceItem, ...]:
        return tuple(self.items_in(0, self.count))

    @cached_property
    def ids(self) -> frozenset[str]:
        """Every id the shard's result must account for, as a row or a failure."""
        return frozenset(item.id for item in self.items) | {f.id for f in self.scan_failures}

    def __len__(self) -> int:
        return self.count + len(self.scan_failures)

    def __reduce__(self) -> tuple[Any, ...]:  # ships the fields, never the caches
        return (Shard, (self.id, self.listed, self.replaces, self.scan_failures))


def shard_id(items: Iterable[SourceItem], failures: Iterable[FailureRecord]) -> str:
    """A digest of the shard's items and versions: the same work always gets the same id."""
    digest = hashlib.blake2b(digest_size=12)
    for item in items:
        digest.update(f"{item.id}:{item.fingerprint}\n".encode())
    for failure in failures:
        digest.update(f"{failure.id}:scan\n".encode())
    return digest.hexdigest()


def cut_shards(
    planned: Iterable[SourceItem | FailureRecord], state: IndexedState, size: int
) -> Iterator[Shard]:
    """Group `plan()`'s output into shards of `size` entries, lazily (a listing of any length costs
    one shard in memory here, plus 8 bytes per planned id); an id listed twice is planned once."""
    items: list[SourceItem] = []
    failures: list[FailureRecord] = []
    planned_keys = PlannedKeys()

    def make() -> Shard | None:
        fresh = planned_keys.first_seen([item.id for item in items] + [f.id for f in failures])
        kept = [item for item, keep in zip(items, fresh, strict=False) if keep]
        kept_failures = [f for f, keep in zip(failures, fresh[len(items) :], strict=True) if keep]
        if not kept and not kept_failures:
            return None
        ids = [item.id for item in kept]
        replaces = frozenset(row_id for row_id, has in zip(ids, state.has_rows(ids), strict=True) if has)
        return Shard.of(kept, replaces, kept_failures)

    for entry in planned:
        if isinstance(entry, FailureRecord):
            failures.append(entry)
        else:
            items.append(entry)
        if len(items) + len(failures) >= size:
            shard = make()
            if shard is not None:
                yield shard
            items, failures = [], []
    shard = make() if items or failures else None
    if shard is not None:
        yield shard


class PlannedKeys:
    """The 64-bit keys of every id planned so far (8 bytes each, in sorted runs merged as they grow),
    so an item listed twice (a manifest repeating a row) is planned once: two shards appending the
    same new id would make two rows."""

    def __init__(self) -> None:
        self._runs: list[np.ndarray] = []

    def first_seen(self, ids: list[str]) -> np.ndarray:
        """A mask over `ids`: True where the id was not seen before (nor earlier in `ids`); adds them."""
        if not ids:
            return np.zeros(0, dtype=bool)
        keys = id_keys(pa.array(ids, pa.string()))
        _, first = np.unique(keys, return_index=True)
        fresh = np.zeros(len(keys), dtype=bool)
        fresh[first] = True
        for run in self._runs:
            positions = np.minimum(np.searchsorted(run, keys), len(run) - 1)
            fresh &= run[positions] != keys
        self._add(np.sort(keys[fresh]))
        return fresh

    def _add(self, keys: np.ndarray) -> None:
        if not len(keys):
            return
        self._runs.append(keys)
        while len(self._runs) > 1 and len(self._runs[-2]) <= 2 * len(self._runs[-1]):
            last = self._runs.pop()
            self._runs[-1] = np.sort(np.concatenate([self._runs[-1], last]))
