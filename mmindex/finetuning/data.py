"""Training pairs from a table: its captioned rows, split by image content, streamed in batches.

Rows are read in table order through LanceDB's batch reader and shuffled in a bounded buffer, so a
corpus of any size trains in constant memory. Images are read again from their uris with the same
readers, decoder and per-item failure handling as indexing: an image that cannot be read or decoded
is counted and skipped, never a crash. The split hashes each image's sha256 (its id where the row has
none), so exact copies of one image always land on the same side.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from mmindex.errors import ConfigError, first_line
from mmindex.ingest.sources.base import Source, SourceItem
from mmindex.ingest.steps import Preprocessor, Reader, load_batch
from mmindex.report import RunReport
from mmindex.schema import CAPTION_HUMAN
from mmindex.store.reader import Store

TRAIN, HOLDOUT = "train", "holdout"
_COLUMNS = ["id", "uri", "key", "size", "version", "modified_at", "caption", "sha256"]
_ROLE = "embed"


@dataclass(frozen=True, slots=True)
class Pair:
    """One image (as an item to read again) and its caption (None: from the item's sidecar)."""

    item: SourceItem
    caption: str | None


@dataclass(frozen=True)
class Split:
    """How pairs are divided: `holdout` of the distinct images (by content) are held out."""

    holdout: float
    seed: int = 0

    def side(self, content: str) -> str:
        digest = hashlib.blake2b(f"{self.seed}:{content}".encode(), digest_size=8).digest()
        return HOLDOUT if int.from_bytes(digest, "big") / 2**64 < self.holdout else TRAIN


@dataclass(frozen=True)
class PairQuery:
    """Which rows of a table are training pairs."""

    store: Store
    where: str | None = None
    include_generated: bool = False

    @property
    def condition(self) -> str:
        """Captioned rows; human captions only unless `include_generated` (generated captions and the
        prompts of generated images)."""
        condition = "caption IS NOT NULL AND caption != ''"
        if not self.include_generated:
            condition += f" AND caption_source = '{CAPTION_HUMAN}'"
        return f"{condition} AND ({self.where})" if self.where else condition

    def pin(self) -> int:
        """Read one version of the table from now on, so every epoch sees the same rows even while
        an index run commits new ones; returns that version."""
        table = self.store.lancedb_table()
        version = int(table.version)
        table.checkout(version)
        return version

    def _rows(self, columns: list[str]) -> Iterator[dict[str, object]]:
        table = self.store.lancedb_table()
        if "synthetic" in table.schema.names:
            columns = [*columns, "synthetic"]
        query = table.search().where(self.condition).select(columns).limit(None)
        for record_batch in query.to_batches(1024):
            yield from record_batch.to_pylist()

    def pairs(self, split: Split, side: str) -> Iterator[Pair]:
        """The pairs on one side of the split, in table order, streamed."""
        for row in self._rows(_COLUMNS):
            if _side(split, row) == side:
                yield _pair(row)

    def count(self, split: Split) -> dict[str, int]:
        """Pairs on each side of the split (one pass over the rows' ids and hashes); ConfigError for a
        filter LanceDB cannot parse."""
        counts = {TRAIN: 0, HOLDOUT: 0}
        try:
            for row in self._rows(["id", "sha256"]):
                counts[_side(split, row)] += 1
        except (ValueError, RuntimeError, OSError) as exc:
            if self.where is None:
                raise
            raise ConfigError(f"--where {self.where!r} is not a valid filter: {first_line(exc)}") from exc
        return counts


def _side(split: Split, row: dict[str, object]) -> str:
    """A generated image (with --include-generated) only ever trains: held-out figures measure real
    images."""
    if row.get("synthetic"):
        return TRAIN
    return split.side(str(row["sha256"] or row["id"]))


def _pair(row: dict[str, object]) -> Pair:
    item = SourceItem(
        uri=str(row["uri"]),
        key=str(row["key"]),
        size=int(row["size"] or 0),  # type: ignore[call-overload]
        version=str(row["version"] or ""),
        modified_at=row["modified_at"],  # type: ignore[arg-type]
    )
    return Pair(item, str(row["caption"]))


def shuffled(pairs: Iterator[Pair], buffer: int, rng: random.Random) -> Iterator[Pair]:
    """`pairs` in a random order drawn from a window of `buffer` pairs (memory stays bounded)."""
    window: list[Pair] = []
    for pair in pairs:
        if len(window) < buffer:
            window.append(pair)
            continue
        slot = rng.randrange(buffer)
        yield window[slot]
        window[slot] = pair
    rng.shuffle(window)
    yield from window


def batched(pairs: Iterator[Pair], size: int) -> Iterator[list[Pair]]:
    batch: list[Pair] = []
    for pair in pairs:
        batch.append(pair)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass
class PixelBatch:
    """The pairs of a batch that loaded: their pixels [B, 3, H, W], captions and content hashes."""

    pixels: np.ndarray
    captions: list[str]
    keys: list[str]
    sha256: list[str]

    def __len__(self) -> int:
        return len(self.captions)


def load_pairs(
    reader: Reader,
    batch: list[Pair],
    preprocess: Preprocessor,
    report: RunReport,
    pool: Executor | None = None,
    failed: set[str] | None = None,
) -> PixelBatch:
    """Read, decode and preprocess a batch; failures are left out and recorded in `report` (once per
    item, when `failed` collects the ids already recorded: every epoch meets the same broken file)."""
    captions = {pair.item.id: pair.caption for pair in batch}
    loaded = load_batch(reader, [pair.item for pair in batch], {_ROLE: preprocess}, report, pool)
    for failure in loaded.failures:
        if failed is None or failure.id not in failed:
            report.record_failure(failure.key, failure.stage, failure.error)
        if failed is not None:
            failed.add(failure.id)
    items = [item for item in loaded.items if (captions[item.item.id] or item.caption)]
    pixels = np.stack([item.pixels[_ROLE] for item in items]) if items else np.zeros((0, 3, 1, 1), np.float32)
    return PixelBatch(
        pixels,
        [str(captions[item.item.id] or item.caption) for item in items],
        [item.item.key for item in items],
        [item.sha256 for item in items],
    )


def source_pairs(source: Source) -> Iterator[Pair]:
    """A source's images as pairs (a manifest's captions, or each image's sidecar once it is read);
    images without a caption are left out when they load."""
    for entry in source.scan():
        if isinstance(entry, SourceItem) and (entry.caption or entry.sidecar):
            yield Pair(entry, entry.caption)
