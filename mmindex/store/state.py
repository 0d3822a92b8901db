"""What a table already holds, compact enough to compare a huge listing against without queries.

Row ids are 128-bit hex digests; their first 64 bits serve as sorted numpy keys, so the state of a
table costs 16 bytes a row (key + fingerprint) and a lookup is a binary search.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmindex.schema import ITEM_STAGES, SEVERITY_ERROR

_HEX_VALUES = np.zeros(256, dtype=np.uint64)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX_VALUES[_c] = _i
_HEX_VALUES[ord("A") : ord("F") + 1] = np.arange(10, 16, dtype=np.uint64)
_SHIFTS = np.arange(60, -4, -4, dtype=np.uint64)


def id_key(row_id: str) -> int:
    """The 64-bit lookup key of a row id."""
    return int(row_id[:16], 16)


def id_keys(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Vectorised `id_key` over an Arrow string array of row ids."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks() if ids.num_chunks else pa.array([], pa.string())
    if len(ids) == 0:
        return np.zeros(0, dtype=np.uint64)
    prefixes = pc.utf8_slice_codeunits(ids, 0, 16).cast(pa.large_binary())
    offsets = np.frombuffer(prefixes.buffers()[1], dtype=np.int64)[
        prefixes.offset : prefixes.offset + len(prefixes) + 1
    ]
    if not np.all(np.diff(offsets) == 16):
        return np.fromiter((id_key(value) for value in ids.to_pylist()), dtype=np.uint64, count=len(ids))
    data = np.frombuffer(prefixes.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]].reshape(-1, 16)
    keys: np.ndarray = np.bitwise_or.reduce(_HEX_VALUES[data] << _SHIFTS, axis=1)
    return keys


class IndexedState:
    """What a run compares its listing against: the (id, fingerprint) pairs of the images table, the
    items that failed permanently at this version, the listing problems already on record, and the
    items whose caption sidecar could not be read (retried even when unchanged)."""

    def __init__(
        self,
        keys: np.ndarray,
        fingerprints: np.ndarray,
        permanent_failures: dict[str, int | None] | None = None,
        scan_problems: dict[str, str] | None = None,
        recheck: set[str] | None = None,
        retried: set[str] | None = None,
    ):
        order = np.argsort(keys, kind="stable")
        self._keys = keys[order]
        self._fingerprints = fingerprints[order]
        self._failures = permanent_failures or {}
        self._scan_problems = scan_problems or {}
        self._recheck = recheck or set()
        self.retried: frozenset[str] = frozenset(retried or ())  # items with a failure that is retried

    @classmethod
    def empty(cls) -> IndexedState:
        return cls(np.zeros(0, np.uint64), np.zeros(0, np.int64))

    @classmethod
    def from_tables(cls, rows: Iterable[pa.RecordBatch], failures: Iterable[pa.RecordBatch]) -> IndexedState:
        """From batches of images rows (id, fingerprint) and of failures rows (id, fingerprint,
        retryable, severity, stage, error)."""
        keys, fingerprints = [], []
        for batch in rows:
            keys.append(id_keys(batch.column("id")))
            column = batch.column("fingerprint").fill_null(0)
            fingerprints.append(column.to_numpy(zero_copy_only=False).astype(np.int64, copy=False))
        permanent: dict[str, int | None] = {}
        scan_problems: dict[str, str] = {}
        recheck: set[str] = set()
        retried: set[str] = set()
        for batch in failures:
            for row in batch.to_pylist():
                if row["stage"] == "scan":
                    scan_problems[row["id"]] = row["error"]
                elif row["stage"] == "sidecar" and row["retryable"]:
                    recheck.add(row["id"])
                elif (
                    row["stage"] in ITEM_STAGES and row["severity"] == SEVERITY_ERROR and not row["retryable"]
                ):
                    permanent[row["id"]] = row["fingerprint"]
                elif row["retryable"]:
                    retried.add(row["id"])
        return cls(
            np.concatenate(keys) if keys else np.zeros(0, np.uint64),
            np.concatenate(fingerprints) if fingerprints else np.zeros(0, np.int64),
            permanent,
            scan_problems,
            recheck,
            retried,
        )

    def __len__(self) -> int:
        return len(self._keys)

    def fingerprint_of(self, row_id: str) -> int | None:
        if not len(self._keys):
            return None
        key = np.uint64(id_key(row_id))
        position = int(np.searchsorted(self._keys, key))
        if position < len(self._keys) and self._keys[position] == key:
            return int(self._fingerprints[position])
        return None

    def has_rows(self, ids: list[str]) -> np.ndarray:
        """A mask over `ids`: True where the table holds a row of that id (one vectorised search)."""
        if not ids or not len(self._keys):
            return np.zeros(len(ids), dtype=bool)
        keys = id_keys(pa.array(ids, pa.string()))
        positions = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
        found: np.ndarray = self._keys[positions] == keys
        return found

    def status(self, row_id: str, fingerprint: int) -> str:
        """`unchanged`, `changed`, `known_failure` (same bytes failed before, permanently) or `new`."""
        stored = self.fingerprint_of(row_id)
        if stored == fingerprint and row_id not in self._recheck:
            return "unchanged"
        if row_id in self._failures and self._failures[row_id] == fingerprint:
            return "known_failure"
        return "new" if stored is None else "changed"

    def known_scan_problem(self, row_id: str, error: str) -> bool:
        """True when the same listing problem is already on record (nothing to write again)."""
        return self._scan_problems.get(row_id) == error


class SeenIds:
    """The ids a listing produced, as 64-bit keys (8 bytes each), for pruning what was not seen."""

    def __init__(self) -> None:
        self._chunks: list[np.ndarray] = []
        self._pending: list[int] = []
        self._sorted = False

    def add(self, row_id: str) -> None:
        self._pending.append(id_key(row_id))
        if len(self._pending) >= 65536:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._chunks.append(np.array(self._pending, dtype=np.uint64))
            self._pending = []
            self._sorted = False

    def sorted_keys(self) -> np.ndarray:
        """The seen keys, sorted and unique (sorted once; later calls reuse the result)."""
        if self._pending or len(self._chunks) != 1 or not self._sorted:
            self._flush()
            keys = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.uint64)
            self._chunks = [np.unique(keys)]
            self._sorted = True
        return self._chunks[0]

    def missing(self, ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """A boolean mask over `ids`: True where the id was not seen (a binary search per id)."""
        seen = self.sorted_keys()
        keys = id_keys(ids)
        positions = np.minimum(np.searchsorted(seen, keys), max(len(seen) - 1, 0))
        found: np.ndarray = seen[positions] == keys if len(seen) else np.zeros(len(keys), dtype=bool)
        return ~found
