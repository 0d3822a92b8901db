"""Settings, read from MMINDEX_* environment variables when asked for, never at import time.

Precedence everywhere: an explicit argument (CLI flag, function parameter) beats the environment,
which beats the defaults below. A setting left as None means "decide later from context": the model,
for instance, defaults to the one recorded in an existing table before falling back to DEFAULT_MODEL.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from mmindex.errors import ConfigError

DEFAULT_DB = "./mmindex.lancedb"
DEFAULT_TABLE = "images"
DEFAULT_MODEL = "openai/clip-vit-base-patch32"
DEFAULT_CAPTION_MODEL = "Salesforce/blip-image-captioning-base"
# a distilled SD 2.1: 512 px in 1-4 steps; Stability AI's licence for it limits commercial use (model card)
DEFAULT_GENERATOR = "stabilityai/sd-turbo"
DEVICES = ("auto", "cpu", "cuda", "mps")

# Defaults of the jobs' tunables, written once (the job specs, options and models read them here).
CPU_BATCH_SIZE = 32  # images per forward pass; 64 is not faster on CPU
GPU_BATCH_SIZE = 256
CPU_CAPTION_BATCH_SIZE = 16  # images per generate call
GPU_CAPTION_BATCH_SIZE = 64
FINETUNE_EPOCHS = 5
FINETUNE_CPU_BATCH = 64  # pairs per step: each pair's negatives are the batch's other pairs
FINETUNE_GPU_BATCH = 256
MIN_CHUNK_SIZE = 128  # items per step call (one Prefect task run each), at least 4 batches
SHARD_SIZE = 2000  # items per shard of a distributed run: dispatch and commit costs stay under 2%
COMMIT_EVERY = 64  # shards per commit of a distributed run
MAX_NEW_TOKENS = 30  # the longest generated caption, in tokens
NUM_BEAMS = 1  # greedy decoding
WRITE_ROWS = 4096  # a run's writer commits after this many rows ...
CAPTION_WRITE_ROWS = 512  # ... (partial caption rows: sooner, so a killed backfill keeps more)
WRITE_SECONDS = 5.0  # ... or after this many seconds
RETENTION = "7d"  # maintenance keeps table versions younger than this
THUMBNAIL_SIZE = 256  # long side of the stored previews, in pixels
THUMBNAIL_FORMAT = "webp"  # ~1 KB each at quality 75; jpeg is ~4x larger and a little faster
THUMBNAIL_QUALITY = 75

_ENV = {
    "db": "MMINDEX_DB",
    "table": "MMINDEX_TABLE",
    "model": "MMINDEX_MODEL",
    "caption_model": "MMINDEX_CAPTION_MODEL",
    "device": "MMINDEX_DEVICE",
    "batch_size": "MMINDEX_BATCH_SIZE",
    "workers": "MMINDEX_WORKERS",
    "chunk_size": "MMINDEX_CHUNK_SIZE",
    "write_rows": "MMINDEX_WRITE_ROWS",
    "write_seconds": "MMINDEX_WRITE_SECONDS",
    "s3_endpoint": "MMINDEX_S3_ENDPOINT",
    "s3_region": "MMINDEX_S3_REGION",
    "s3_profile": "MMINDEX_S3_PROFILE",
}


@dataclass(frozen=True)
class Settings:
    """Where the index lives and how it is built. Frozen: derive variants with `with_overrides`."""

    db: str = DEFAULT_DB
    table: str = DEFAULT_TABLE
    model: str | None = None
    caption_model: str | None = None
    device: str = "auto"
    batch_size: int | None = None
    workers: int | None = None
    chunk_size: int | None = None
    write_rows: int = WRITE_ROWS
    write_seconds: float = WRITE_SECONDS
    s3_endpoint: str | None = None
    s3_region: str | None = None
    s3_profile: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from MMINDEX_* variables, then `overrides` that are not None on top."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, var in _ENV.items():
            raw = env.get(var)
            if raw is not None and raw.strip() != "":
                values[name] = _parse(name, var, raw.strip())
        return cls(**values).with_overrides(**overrides)

    def with_overrides(self, **overrides: Any) -> Settings:
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown settings: {sorted(unknown)}")
        settings = replace(self, **{k: v for k, v in overrides.items() if v is not None})
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.device not in DEVICES:
            raise ConfigError(f"device {self.device!r} is not one of {', '.join(DEVICES)}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {self.batch_size}")
        if self.write_rows < 1 or self.write_seconds < 0:
            raise ConfigError("MMINDEX_WRITE_ROWS must be at least 1 and MMINDEX_WRITE_SECONDS not negative")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ConfigError(f"MMINDEX_CHUNK_SIZE must be at least 1, got {self.chunk_size}")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"workers must be at least 1, got {self.workers}")
        if not self.table or not all(c.isalnum() or c in "_-." for c in self.table):
            raise ConfigError(
                f"table name {self.table!r} is not valid: use letters, digits, '_', '-' and '.'"
            )


def _parse(name: str, var: str, raw: str) -> Any:
    if name in ("batch_size", "workers", "write_rows", "chunk_size"):
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{var}={raw!r} is not an integer") from None
    if name == "write_seconds":
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{var}={raw!r} is not a number") from None
    return raw
