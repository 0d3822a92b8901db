"""Job descriptions: the JSON-able parameters of a run, and their validation into ready parts.

The CLI validates a job before it starts a flow (so a bad path or model exits 2 at once), and the
flow validates it again where it runs (a deployment's worker may see another filesystem or
environment). Validation is cheap: it opens nothing heavier than a model's config.json.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from mmindex.config import DEFAULT_MODEL, Settings
from mmindex.embed import ClipEmbedder, check_embedding_config
from mmindex.errors import ConfigError, ModelError
from mmindex.models import resolve_model
from mmindex.pipeline import IndexOptions
from mmindex.sources import ScanFilter, Source, open_source
from mmindex.store import Store

CPU_BATCH_SIZE = 32
GPU_BATCH_SIZE = 256


@dataclass
class IndexJob:
    """Everything `mmindex index` takes; None means "from MMINDEX_* or the default"."""

    source: str
    db: str | None = None
    table: str | None = None
    model: str | None = None
    batch_size: int | None = None
    device: str | None = None
    workers: int | None = None
    prune: bool = False
    retry_failed: bool = False
    captions: str | None = None
    path_column: str | None = None
    caption_column: str | None = None
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    prefix: str = ""
    since: datetime | None = None
    until: datetime | None = None
    precision: str = "auto"
    quantize: str | None = None

    def to_params(self) -> dict[str, Any]:
        return asdict(self)

    def settings(self) -> Settings:
        return Settings.from_env(
            db=self.db,
            table=self.table,
            model=self.model,
            device=self.device,
            batch_size=self.batch_size,
            workers=self.workers,
        )


@dataclass
class PreparedIndex:
    source: Source
    store: Store
    model: str
    device: str
    options: IndexOptions
    precision: str
    quantize: str | None

    def load_embedder(self) -> ClipEmbedder:
        return ClipEmbedder.load(
            self.model, device=self.device, precision=self.precision, quantize=self.quantize
        )


def prepare_index(job: IndexJob, *, check_model: bool = True) -> PreparedIndex:
    """Validate a job into a source, a store and a model choice; raises ConfigError subclasses."""
    settings = job.settings()
    since, until = _aware(job.since), _aware(job.until)
    if since and until and since >= until:
        raise ConfigError(f"--since {since.isoformat()} is not before --until {until.isoformat()}")
    scan_filter = ScanFilter(tuple(job.include), tuple(job.exclude), job.prefix, since, until)
    source = open_source(
        job.source,
        captions=job.captions,
        path_column=job.path_column,
        caption_column=job.caption_column,
        scan_filter=scan_filter,
    )
    store = Store(settings.db, settings.table)
    model = choose_model(settings.model, store)
    if check_model:
        check_embedding_config(resolve_model(model))
    device = settings.device
    batch_size = settings.batch_size or (GPU_BATCH_SIZE if _cuda_requested(device) else CPU_BATCH_SIZE)
    options = IndexOptions(
        batch_size=batch_size,
        workers=settings.workers or default_workers(device),
        prune=job.prune,
        retry_failed=job.retry_failed,
        write_rows=settings.write_rows,
        write_seconds=settings.write_seconds,
    )
    return PreparedIndex(source, store, model, device, options, job.precision, job.quantize)


def choose_model(requested: str | None, store: Store) -> str:
    """The requested model, else the table's recorded model, else the default; refuses a mismatch."""
    recorded = store.recorded_model()
    if requested is None:
        return recorded or DEFAULT_MODEL
    name = resolve_model(requested).name
    if recorded is not None and name != recorded:
        store.check_model(name)
    return requested


def default_workers(device: str) -> int:
    """Decode threads: one beside the model on CPU (it overlaps with inference); more to feed a GPU."""
    import os

    cores = os.cpu_count() or 1
    return max(1, cores - 1) if _cuda_requested(device) else 1


def _cuda_requested(device: str) -> bool:
    if device == "cuda":
        return True
    if device != "auto":
        return False
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a dependency
        raise ModelError(f"torch is not importable: {exc}") from None
    return bool(torch.cuda.is_available())


def _aware(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)
