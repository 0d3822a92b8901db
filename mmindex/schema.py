"""The Arrow schemas of mmindex's LanceDB tables, in one place.

Table `<name>` (default `images`), one row per image uri:

    id               string     stable row id: 32 hex digits of BLAKE2b-128 of the uri
    uri              string     absolute path, or s3://bucket/key
    key              string     path relative to the source root, `/`-separated
    size             int64      bytes of the image file/object
    version          string     change marker: mtime in ns for files, ETag for objects
    fingerprint      int64      digest of version, size and the caption's origin; unchanged -> skipped
    modified_at      timestamp  file mtime / object LastModified (UTC)
    sha256           string     hex SHA-256 of the image bytes
    width, height    int32      pixels of the upright original (after EXIF orientation)
    format           string     Pillow format name: JPEG, PNG, WEBP, ...
    caption          string     the caption, or null
    caption_source   string     `human` (sidecar or manifest), `generated`, `prompt` (the prompt a
                                generated image was made from), or null
    caption_model    string     the captioning model of a generated caption, else null
    captioned_at     timestamp  when a generated caption was written, else null
    thumbnail        binary     a small WebP/JPEG preview (long side ~256 px), or null (schema v2)
    synthetic        bool       true for an image made by a text-to-image model (schema v3)
    generator        string     that model's id or directory, else null (schema v3)
    generation_seed, generation_steps, generation_guidance
                     int64, int32, float32   how it was made, so it can be made again (schema v3)
    image_embedding  float32[d] L2-normalised CLIP image embedding
    text_embedding   float32[d] L2-normalised CLIP embedding of the caption; null without caption
    embed_model      string     the CLIP model id (or absolute directory) that made the embeddings
    embed_mode       string     how that model computed them: `fp32 on cpu`, `bf16 weights on cpu`,
                                `fp16 weights on cuda`, `int8 on cpu`, ...; null for rows written
                                before schema v4
    indexed_at       timestamp  when the row was last written by an index run

Table `<name>_failures`, one row per (id, stage) problem:

    id, uri, key     as above
    stage            scan | fetch | sidecar | decode | thumbnail | embed | caption | reembed
    severity         `error` (the item or its caption is missing) or `warning` (indexed, but degraded)
    error            one line saying what went wrong
    retryable        whether the next run tries the item again without being asked
    fingerprint      the item's fingerprint when it failed (a changed file is always retried)
    failed_at        timestamp

The embedding model and dimension are kept in the field metadata of the vector columns (and, as the
table was created, in its schema metadata), so a table is never filled from two models. Other
models' vectors live beside them as generations (mmindex.store.generations, schema v5).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import pyarrow as pa

SCHEMA_VERSION = "5"
META_MODEL = b"mmindex.embed_model"
META_DIM = b"mmindex.embedding_dim"
META_SCHEMA_VERSION = b"mmindex.schema_version"

CAPTION_HUMAN = "human"
CAPTION_GENERATED = "generated"
CAPTION_PROMPT = "prompt"
CAPTION_SOURCES = (CAPTION_HUMAN, CAPTION_GENERATED, CAPTION_PROMPT)

SEVERITY_ERROR = "error"
SEVERITY_WARNING = "warning"

_TIMESTAMP = pa.timestamp("us", tz="UTC")
THUMBNAIL_FIELD = pa.field("thumbnail", pa.binary())
PROVENANCE_FIELDS = (
    pa.field("synthetic", pa.bool_()),
    pa.field("generator", pa.string()),
    pa.field("generation_seed", pa.int64()),
    pa.field("generation_steps", pa.int32()),
    pa.field("generation_guidance", pa.float32()),
)
EMBED_MODE_FIELD = pa.field("embed_mode", pa.string())


def images_schema(dim: int, model: str) -> pa.Schema:
    vector = pa.list_(pa.float32(), dim)
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("uri", pa.string(), nullable=False),
            pa.field("key", pa.string(), nullable=False),
            pa.field("size", pa.int64()),
            pa.field("version", pa.string()),
            pa.field("fingerprint", pa.int64()),
            pa.field("modified_at", _TIMESTAMP),
            pa.field("sha256", pa.string()),
            pa.field("width", pa.int32()),
            pa.field("height", pa.int32()),
            pa.field("format", pa.string()),
            pa.field("caption", pa.string()),
            pa.field("caption_source", pa.string()),
            pa.field("caption_model", pa.string()),
            pa.field("captioned_at", _TIMESTAMP),
            THUMBNAIL_FIELD,
            *PROVENANCE_FIELDS,
            pa.field("image_embedding", vector, nullable=False),
            pa.field("text_embedding", vector),
            pa.field("embed_model", pa.string()),
            EMBED_MODE_FIELD,
            pa.field("indexed_at", _TIMESTAMP),
        ],
        metadata={
            META_MODEL: model.encode(),
            META_DIM: str(dim).encode(),
            META_SCHEMA_VERSION: SCHEMA_VERSION.encode(),
        },
    )


FAILURES_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("key", pa.string()),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("severity", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("retryable", pa.bool_()),
        pa.field("fingerprint", pa.int64()),
        pa.field("failed_at", _TIMESTAMP),
    ]
)


def failures_table_name(table: str) -> str:
    return f"{table}_failures"


@dataclass(frozen=True)
class FailureRecord:
    """One row of the failures table."""

    id: str
    uri: str
    key: str
    stage: str
    error: str
    severity: str = SEVERITY_ERROR
    retryable: bool = False
    fingerprint: int | None = None
    failed_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @classmethod
    def of(cls, row_id: str, uri: str, key: str, stage: str, error: str, **kwargs: object) -> FailureRecord:
        return cls(row_id, uri, key, stage, error, **kwargs)  # type: ignore[arg-type]

    @classmethod
    def from_item(cls, item: Listed, stage: str, error: str, **kwargs: object) -> FailureRecord:
        return cls(item.id, item.uri, item.key, stage, error, fingerprint=item.fingerprint, **kwargs)  # type: ignore[arg-type]


class Listed(Protocol):
    """What a failure records of a listed item (mmindex.ingest.sources.SourceItem)."""

    @property
    def id(self) -> str: ...
    @property
    def uri(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def fingerprint(self) -> int: ...


def failures_table(records: Iterable[FailureRecord]) -> pa.Table:
    records = list(records)
    return pa.table(
        {
            "id": [r.id for r in records],
            "uri": [r.uri for r in records],
            "key": [r.key for r in records],
            "stage": [r.stage for r in records],
            "severity": [r.severity for r in records],
            "error": [r.error for r in records],
            "retryable": [r.retryable for r in records],
            "fingerprint": [r.fingerprint for r in records],
            "failed_at": [r.failed_at for r in records],
        },
        schema=FAILURES_SCHEMA,
    )


ITEM_STAGES = ("fetch", "decode", "embed")  # a failure at these stages means the item is not indexed
