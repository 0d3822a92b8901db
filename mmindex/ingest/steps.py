"""The per-batch stage functions: load (read + decode + preprocess), caption, embed, and the rows they
make. Each takes and returns plain objects, so notebooks call them directly and the Prefect flows wrap
each in a task. Per-item problems come back as FailureRecords, never as exceptions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import numpy as np
import pyarrow as pa

from mmindex.decode import decode, inspect
from mmindex.errors import ItemError
from mmindex.ingest.sources.base import SourceItem
from mmindex.ingest.sources.sidecar import Provenance, parse_sidecar
from mmindex.ingest.thumbnail import THUMBNAIL_ROLE
from mmindex.report import RunReport
from mmindex.schema import CAPTION_GENERATED, CAPTION_HUMAN, CAPTION_PROMPT, SEVERITY_WARNING, FailureRecord

_TIMESTAMP = pa.timestamp("us", tz="UTC")


class Preprocessor(Protocol):
    """Turns an upright RGB image into a model's input array."""

    @property
    def min_side(self) -> int: ...

    def __call__(self, image: object) -> np.ndarray: ...


@dataclass(frozen=True)
class EncodedJpeg:
    """The embed role for an embedder that decodes JPEGs on its own device, in batches
    (`embed_encoded`; see mmindex.models.device_decode): a JPEG reaches it still encoded, with only
    its header read here. Other formats are decoded here and preprocessed as usual."""

    preprocess: Preprocessor

    @property
    def min_side(self) -> int:
        return self.preprocess.min_side

    def __call__(self, image: object) -> np.ndarray:
        return self.preprocess(image)


def embed_role(embedder: Embedder, *, alone: bool) -> Preprocessor:
    """The embed role's preprocessor. JPEGs stay encoded for an embedder that decodes them on its
    device, when no other role (thumbnails, a captioner) needs their pixels decoded here."""
    if alone and getattr(embedder, "device_decoder", None) is not None:
        return EncodedJpeg(embedder.preprocess)
    return embedder.preprocess


class Embedder(Protocol):
    @property
    def model_id(self) -> str: ...

    @property
    def embed_mode(self) -> str: ...

    @property
    def compute(self) -> str: ...

    @property
    def dim(self) -> int: ...

    @property
    def preprocess(self) -> Preprocessor: ...

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray: ...

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...


class CaptionModel(Protocol):
    @property
    def model_id(self) -> str: ...

    @property
    def compute(self) -> str: ...

    @property
    def preprocess(self) -> Preprocessor: ...

    def caption_pixels(self, pixels: np.ndarray) -> list[str | None]: ...


class Reader(Protocol):
    """What loading needs from a source: the bytes of an item and of its caption sidecar."""

    def read(self, item: SourceItem) -> bytes: ...

    def read_sidecar(self, item: SourceItem) -> bytes: ...


@dataclass
class LoadedItem:
    item: SourceItem
    pixels: dict[str, np.ndarray]
    width: int
    height: int
    format: str
    sha256: str
    caption: str | None
    thumbnail: bytes | None = None
    caption_source: str | None = None
    caption_model: str | None = None
    captioned_at: datetime | None = None
    provenance: Provenance | None = None  # set for an image a text-to-image model made
    problems: list[FailureRecord] = field(default_factory=list)  # recorded, but the item is indexed


@dataclass
class LoadedBatch:
    items: list[LoadedItem]
    failures: list[FailureRecord]


@dataclass
class EmbeddedBatch:
    rows: pa.Table | None
    failures: list[FailureRecord]
    done_ids: list[str]


@dataclass(frozen=True)
class Fetched:
    """An item's bytes, and its caption sidecar's (or why the sidecar could not be read)."""

    data: bytes
    sidecar: bytes | None = None
    sidecar_error: str | None = None


def fetch_item(source: Reader, item: SourceItem) -> Fetched:
    """The bytes of an item (raises FetchError) and of its sidecar. A sidecar that cannot be read
    does not cost the image its place: the image is indexed without it and retried next run."""
    data = source.read(item)
    if not item.sidecar or item.caption is not None:  # a manifest caption wins over the sidecar
        return Fetched(data)
    try:
        return Fetched(data, source.read_sidecar(item))
    except Exception as exc:  # any reason the sidecar is unreadable is the sidecar's problem only
        return Fetched(data, sidecar_error=f"cannot read caption sidecar: {exc}")


def load_item(
    source: Reader,
    item: SourceItem,
    preprocessors: dict[str, Preprocessor],
    report: RunReport,
    fetched: Fetched | None = None,
) -> LoadedItem | FailureRecord:
    """Read (unless already `fetched`), decode and preprocess one item for every model in `preprocessors`."""
    stage = "fetch"
    try:
        with report.timed("read", 1):
            fetched = fetch_item(source, item) if fetched is None else fetched
        stage = "decode"
        with report.timed("decode", 1):
            if _stays_encoded(fetched.data, preprocessors):
                decoded = inspect(fetched.data)
                pixels = {role: np.frombuffer(fetched.data, np.uint8) for role in preprocessors}
            else:
                # the models' needs alone choose the decode scale, so embeddings do not depend on thumbnails
                decoded = decode(fetched.data, min_side=max(p.min_side for p in preprocessors.values()))
                pixels = {
                    role: preprocess(decoded.image)
                    for role, preprocess in preprocessors.items()
                    if role != THUMBNAIL_ROLE
                }
    except ItemError as exc:
        return FailureRecord.from_item(item, exc.stage, str(exc), retryable=exc.retryable)
    except Exception as exc:  # not known to describe the item: recorded as retryable, with its cause logged
        return FailureRecord.from_item(
            item, stage, report.record_unexpected(item.key, stage, exc), retryable=True
        )
    caption, problems, provenance = _caption_of(item, fetched)
    thumbnail = _thumbnail_of(item, decoded.image, preprocessors.get(THUMBNAIL_ROLE), report, problems)
    return LoadedItem(
        item=item,
        pixels=pixels,
        width=decoded.width,
        height=decoded.height,
        format=decoded.format,
        sha256=hashlib.sha256(fetched.data).hexdigest(),
        caption=caption,
        thumbnail=thumbnail,
        caption_source=(CAPTION_PROMPT if provenance else CAPTION_HUMAN) if caption else None,
        provenance=provenance,
        problems=problems,
    )


def _stays_encoded(data: bytes, preprocessors: dict[str, Preprocessor]) -> bool:
    return all(isinstance(p, EncodedJpeg) for p in preprocessors.values()) and data[:3] == b"\xff\xd8\xff"


def _thumbnail_of(
    item: SourceItem,
    image: object,
    thumbnailer: Preprocessor | None,
    report: RunReport,
    problems: list[FailureRecord],
) -> bytes | None:
    """The encoded thumbnail, or None (with a warning: the image is indexed without one)."""
    if thumbnailer is None:
        return None
    try:
        with report.timed("thumbnail", 1):
            return thumbnailer(image).tobytes()
    except Exception as exc:  # an encoder problem costs the preview, never the image
        error = f"cannot make a thumbnail: {type(exc).__name__}: {exc}"
        problems.append(FailureRecord.from_item(item, "thumbnail", error, severity=SEVERITY_WARNING))
        return None


def _caption_of(
    item: SourceItem, fetched: Fetched
) -> tuple[str | None, list[FailureRecord], Provenance | None]:
    """The human caption (manifest, else sidecar), warnings about the sidecar, and the provenance a
    generated image's sidecar records."""
    if fetched.sidecar_error is not None:
        warning = FailureRecord.from_item(
            item, "sidecar", fetched.sidecar_error, severity=SEVERITY_WARNING, retryable=True
        )
        return item.caption, [warning], None
    if item.caption is not None or fetched.sidecar is None or item.sidecar is None:
        return item.caption, [], None
    try:
        parsed = parse_sidecar(fetched.sidecar, item.sidecar)
    except (
        Exception
    ) as exc:  # pathological JSON (huge numbers, deep nesting): the caption is lost, not the image
        return (
            None,
            [FailureRecord.from_item(item, "sidecar", f"unusable sidecar: {exc}", severity=SEVERITY_WARNING)],
            None,
        )
    problems = []
    if parsed.warning:
        problems.append(FailureRecord.from_item(item, "sidecar", parsed.warning, severity=SEVERITY_WARNING))
    return parsed.caption, problems, parsed.provenance


def load_batch(
    source: Reader,
    items: Sequence[SourceItem],
    preprocessors: dict[str, Preprocessor],
    report: RunReport,
    decode_pool: Executor | None = None,
    fetch_pool: Executor | None = None,
) -> LoadedBatch:
    """Load a batch in order. With `fetch_pool`, all bytes are fetched concurrently first (object
    storage); with `decode_pool`, items are decoded in parallel (many cores feeding a GPU)."""
    prefetched: list[Fetched | None] = [None] * len(items)
    failures: list[FailureRecord] = []
    if fetch_pool is not None:
        fetched = list(fetch_pool.map(lambda item: _fetch(source, item, report), items))
        failures = [f for f in fetched if isinstance(f, FailureRecord)]
        prefetched = [f if isinstance(f, Fetched) else None for f in fetched]
    todo = [
        (item, data)
        for item, data in zip(items, prefetched, strict=True)
        if fetch_pool is None or data is not None
    ]

    def work(pair: tuple[SourceItem, Fetched | None]) -> LoadedItem | FailureRecord:
        return load_item(source, pair[0], preprocessors, report, pair[1])

    results = decode_pool.map(work, todo) if decode_pool is not None else map(work, todo)
    loaded = []
    for result in results:
        if isinstance(result, LoadedItem):
            loaded.append(result)
        else:
            failures.append(result)
    return LoadedBatch(loaded, failures)


def _fetch(source: Reader, item: SourceItem, report: RunReport) -> Fetched | FailureRecord:
    try:
        with report.timed("read", 0):
            return fetch_item(source, item)
    except ItemError as exc:
        return FailureRecord.from_item(item, exc.stage, str(exc), retryable=exc.retryable)
    except Exception as exc:  # a network library's own exception types: one item's retryable failure
        error = report.record_unexpected(item.key, "fetch", exc)
        return FailureRecord.from_item(item, "fetch", error, retryable=True)


def caption_batch(
    captioner: CaptionModel, batch: LoadedBatch, report: RunReport, batch_size: int | None = None
) -> LoadedBatch:
    """Generate captions, `batch_size` images per generate call, for the items that have none. If a
    call fails as a whole, its images are retried one by one so that only the image the model chokes
    on is recorded (stage caption)."""
    missing = [loaded for loaded in batch.items if loaded.caption is None]
    if not missing:
        return batch
    size = batch_size or len(missing)
    captions: list[str | None | FailureRecord] = []
    with report.timed("caption", len(missing)):
        for start in range(0, len(missing), size):
            part = missing[start : start + size]
            try:
                captions += captioner.caption_pixels(np.stack([loaded.pixels["caption"] for loaded in part]))
            except Exception:  # the call failed (e.g. out of memory): retry image by image
                captions += [_caption_one(captioner, loaded, report) for loaded in part]
    now = datetime.now(UTC)
    for loaded, caption in zip(missing, captions, strict=True):
        if isinstance(caption, FailureRecord):
            loaded.problems.append(caption)
            continue
        if caption is None:  # deterministic for this image and model: not retried until either changes
            loaded.problems.append(
                FailureRecord.from_item(loaded.item, "caption", "the model produced an empty caption")
            )
            continue
        loaded.caption, loaded.caption_source = caption, CAPTION_GENERATED
        loaded.caption_model, loaded.captioned_at = captioner.model_id, now
        report.captioned += 1
    return batch


def _caption_one(
    captioner: CaptionModel, loaded: LoadedItem, report: RunReport
) -> str | None | FailureRecord:
    try:
        return captioner.caption_pixels(loaded.pixels["caption"][None])[0]
    except Exception as exc:  # a model error is not known to be the image's fault: retried next run
        error = report.record_unexpected(loaded.item.key, "caption", exc)
        return FailureRecord.from_item(loaded.item, "caption", error, retryable=True)


def embed_batch(
    embedder: Embedder, batch: LoadedBatch, report: RunReport, batch_size: int | None = None
) -> EmbeddedBatch:
    """Embed a loaded batch's images and captions (`batch_size` per forward pass) into rows of the
    images table."""
    failures = list(batch.failures)
    done_ids = [failure.id for failure in batch.failures]
    if not batch.items:
        return EmbeddedBatch(None, failures, done_ids)
    size = batch_size or len(batch.items)
    with report.timed("embed", len(batch.items)):
        image_vectors, undecodable = _embed_images(embedder, batch.items, size)
        items = [loaded for i, loaded in enumerate(batch.items) if i not in undecodable]
        text_vectors = embed_captions(embedder, [loaded.caption for loaded in items], size)
    for i in sorted(undecodable):
        item = batch.items[i].item
        failures.append(FailureRecord.from_item(item, "decode", UNDECODABLE, retryable=False))
        done_ids.append(item.id)
    rows = None
    if items:
        rows = build_rows(items, image_vectors, text_vectors, embedder.model_id, embedder.embed_mode)
    for loaded in items:
        failures.extend(loaded.problems)
        done_ids.append(loaded.item.id)
    return EmbeddedBatch(rows, failures, done_ids)


UNDECODABLE = "corrupt or truncated image: its header reads, its pixels do not (GPU and Pillow decoders)"


def _embed_images(embedder: Embedder, items: Sequence[LoadedItem], size: int) -> tuple[np.ndarray, set[int]]:
    """Image vectors of the items that decode, and the positions of those that do not (a JPEG kept
    encoded for the embedder's device decoder can turn out corrupt only there)."""
    vectors: list[np.ndarray] = []
    undecodable: set[int] = set()
    for start in range(0, len(items), size):
        inputs = [loaded.pixels["embed"] for loaded in items[start : start + size]]
        if all(array.ndim == 3 for array in inputs):
            vectors.append(embedder.embed_pixels(np.stack(inputs)))
            continue
        encoded_vectors, failed = embedder.embed_encoded(inputs)  # type: ignore[attr-defined]
        vectors.append(encoded_vectors)
        undecodable.update(start + i for i in failed)
    dim = vectors[0].shape[1] if vectors else 0
    return (np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)), undecodable


def embed_captions(
    embedder: Embedder, captions: Sequence[str | None], batch_size: int | None = None
) -> list[np.ndarray | None]:
    """Text embeddings for the captions that exist (`batch_size` per forward pass), None elsewhere."""
    vectors: list[np.ndarray | None] = [None] * len(captions)
    present = [i for i, caption in enumerate(captions) if caption]
    size = batch_size or max(1, len(present))
    for start in range(0, len(present), size):
        part = present[start : start + size]
        encoded = embedder.embed_texts([captions[i] or "" for i in part])
        for row, i in enumerate(part):
            vectors[i] = encoded[row]
    return vectors


def build_rows(
    items: Sequence[LoadedItem],
    image_vectors: np.ndarray,
    text_vectors: Sequence[np.ndarray | None],
    model_id: str,
    embed_mode: str,
) -> pa.Table:
    """Arrow rows for the images table (schema order is applied by the store)."""
    now = datetime.now(UTC)
    dim = image_vectors.shape[1]
    flat = np.ascontiguousarray(image_vectors, dtype=np.float32).reshape(-1)
    return pa.table(
        {
            "id": [x.item.id for x in items],
            "uri": [x.item.uri for x in items],
            "key": [x.item.key for x in items],
            "size": pa.array([x.item.size for x in items], pa.int64()),
            "version": [x.item.version for x in items],
            "fingerprint": pa.array([x.item.fingerprint for x in items], pa.int64()),
            "modified_at": pa.array([x.item.modified_at for x in items], _TIMESTAMP),
            "sha256": [x.sha256 for x in items],
            "width": pa.array([x.width for x in items], pa.int32()),
            "height": pa.array([x.height for x in items], pa.int32()),
            "format": [x.format for x in items],
            "caption": [x.caption for x in items],
            "caption_source": pa.array([x.caption_source for x in items], pa.string()),
            "caption_model": pa.array([x.caption_model for x in items], pa.string()),
            "captioned_at": pa.array([x.captioned_at for x in items], _TIMESTAMP),
            "thumbnail": pa.array([x.thumbnail for x in items], pa.binary()),
            "synthetic": pa.array([x.provenance is not None for x in items], pa.bool_()),
            "generator": pa.array([x.provenance.model if x.provenance else None for x in items], pa.string()),
            "generation_seed": pa.array(
                [x.provenance.seed if x.provenance else None for x in items], pa.int64()
            ),
            "generation_steps": pa.array(
                [x.provenance.steps if x.provenance else None for x in items], pa.int32()
            ),
            "generation_guidance": pa.array(
                [x.provenance.guidance if x.provenance else None for x in items], pa.float32()
            ),
            "image_embedding": pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim),
            "text_embedding": vector_column(text_vectors, dim),
            "embed_model": [model_id] * len(items),
            "embed_mode": [embed_mode] * len(items),
            "indexed_at": pa.array([now] * len(items), _TIMESTAMP),
        }
    )


def vector_column(vectors: Sequence[np.ndarray | None], dim: int) -> pa.Array:
    return pa.array(
        [None if v is None else np.asarray(v, dtype=np.float32) for v in vectors],
        type=pa.list_(pa.float32(), dim),
    )
