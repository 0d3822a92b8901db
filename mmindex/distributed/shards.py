"""Cutting planned work into shards: a few thousand items each, with ids that depend only on the
work itself, so a retried or replanned shard keeps its id."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from mmindex.ingest.sources.base import SourceItem
from mmindex.schema import FailureRecord
from mmindex.store.state import IndexedState, id_keys


@dataclass(frozen=True)
class Shard:
    """One unit of work: items to load and embed, the ids among them that already have a row (they
    are upserted; the others are appended), and listing problems that ride along as failure rows."""

    id: str
    items: tuple[SourceItem, ...]
    replaces: frozenset[str]
    scan_failures: tuple[FailureRecord, ...] = ()

    @property
    def ids(self) -> frozenset[str]:
        """Every id the shard's result must account for, as a row or a failure."""
        return frozenset(item.id for item in self.items) | {f.id for f in self.scan_failures}

    def __len__(self) -> int:
        return len(self.items) + len(self.scan_failures)


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
        replaces = frozenset(item.id for item in kept if state.fingerprint_of(item.id) is not None)
        return Shard(shard_id(kept, kept_failures), tuple(kept), replaces, tuple(kept_failures))

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
