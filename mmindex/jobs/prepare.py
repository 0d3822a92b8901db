"""Validation of jobs (mmindex.jobs.spec) into the parts a run needs: source, store, models, options.

The CLI validates a job before it starts a flow (so a bad path or model exits 2 at once), and the
flow validates it again where it runs (a deployment's worker may see another filesystem or
environment). Validation is cheap: it opens nothing heavier than a model's config.json.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmindex.config import (
    CAPTION_WRITE_ROWS,
    CPU_BATCH_SIZE,
    CPU_CAPTION_BATCH_SIZE,
    DEFAULT_CAPTION_MODEL,
    DEFAULT_MODEL,
    FINETUNE_CPU_BATCH,
    FINETUNE_GPU_BATCH,
    GPU_BATCH_SIZE,
    GPU_CAPTION_BATCH_SIZE,
    MIN_CHUNK_SIZE,
    Settings,
)
from mmindex.errors import ConfigError, ModelError
from mmindex.ingest.backfill import CaptionOptions
from mmindex.ingest.pipeline import IndexOptions
from mmindex.ingest.reembed import FROM_CHOICES, ReembedOptions
from mmindex.ingest.sources import ScanFilter, Source, open_source
from mmindex.ingest.sources.uri import UriReader
from mmindex.ingest.thumbnail import Thumbnailer
from mmindex.ingest.thumbnail_backfill import ThumbnailOptions
from mmindex.jobs.spec import (
    CaptionJob,
    CaptionSpec,
    FinetuneJob,
    GenerateJob,
    IndexJob,
    MaintainJob,
    ReembedJob,
    ScaleSpec,
    ThumbnailJob,
)
from mmindex.models.captioner import GenerationSettings, check_caption_config
from mmindex.models.choice import ModelChoice
from mmindex.models.clip import check_embedding_config
from mmindex.models.compiled import check_compile
from mmindex.models.precision import check_precision
from mmindex.models.resolve import resolve_model
from mmindex.store.generations import check_name
from mmindex.store.reader import Store
from mmindex.store.upkeep import parse_retention

if TYPE_CHECKING:
    from mmindex.models.generator import ImageSettings


@dataclass
class PreparedIndex:
    source: Source
    store: Store
    models: ModelChoice
    options: IndexOptions
    caption: CaptionOptions | None
    caption_donor: Store | None = None  # with --new-table: the old table, whose generated captions are reused


@dataclass
class PreparedCaption:
    store: Store
    models: ModelChoice
    options: CaptionOptions
    reader: UriReader


@dataclass
class PreparedMaintain:
    store: Store
    retention: timedelta


@dataclass
class PreparedThumbnails:
    store: Store
    options: ThumbnailOptions
    reader: UriReader


@dataclass
class PreparedReembed:
    store: Store
    models: ModelChoice
    options: ReembedOptions
    reader: UriReader


def generation_of(job: CaptionSpec) -> GenerationSettings:
    settings = GenerationSettings(
        max_new_tokens=job.max_new_tokens, num_beams=job.num_beams, prompt=job.prompt
    )
    settings.validate()
    return settings


def prepare_index(job: IndexJob, *, check: bool = True) -> PreparedIndex:
    """Validate a job into a source, a store and model choices; raises ConfigError subclasses.
    With `check`, also list one key of the source and read the models' configs, so a wrong bucket,
    denied credentials or an unknown model stop the run before any model is loaded."""
    settings = job.settings()
    check_runner(job)
    check_compile(job.compile)
    since, until = _aware(job.since), _aware(job.until)
    if since and until and since >= until:
        raise ConfigError(f"--since {since.isoformat()} is not before --until {until.isoformat()}")
    scan_filter = ScanFilter(tuple(job.include), tuple(job.exclude), job.prefix, since, until)
    s3_config = _s3_config(settings) if job.source.startswith("s3://") else None
    source = open_source(
        job.source,
        captions=job.captions,
        path_column=job.path_column,
        caption_column=job.caption_column,
        scan_filter=scan_filter,
        s3_config=s3_config,
        format=job.format,
    )
    if check:
        source.check()
    store, donor = Store.from_settings(settings), None
    if job.new_table:
        if job.model is None:
            raise ConfigError("--new-table builds a table with another model: name it with --model")
        if job.new_table == settings.table:
            raise ConfigError(f"--new-table {job.new_table!r} is the current table; name a new one")
        donor = store if store.exists() else None
        store = Store.from_settings(settings.with_overrides(table=job.new_table))
    models = ModelChoice(choose_model(settings.model, store), settings.device, job.precision, job.quantize)
    caption = None
    if job.caption_missing:
        models.caption_model = settings.caption_model or DEFAULT_CAPTION_MODEL
        models.generation = generation_of(job)
        caption = CaptionOptions(
            batch_size=settings.batch_size or _default_caption_batch(settings.device),
            retry_failed=job.retry_failed,
            lock_timeout=job.lock_timeout,
        )
    if check:
        check_models(models)
    gpu = _cuda_requested(settings.device)
    batch_size = settings.batch_size or (GPU_BATCH_SIZE if gpu else CPU_BATCH_SIZE)
    options = IndexOptions(
        batch_size=batch_size,
        workers=settings.workers or default_workers(gpu),
        chunk_size=settings.chunk_size or max(MIN_CHUNK_SIZE, 4 * batch_size),
        caption_batch_size=caption.batch_size if caption else CPU_CAPTION_BATCH_SIZE,
        prune=job.prune,
        retry_failed=job.retry_failed,
        write_rows=settings.write_rows,
        write_seconds=settings.write_seconds,
        lock_timeout=job.lock_timeout,
        thumbnails=Thumbnailer(job.thumbnail_size, job.thumbnail_format) if job.thumbnails else None,
        compile=job.compile,
    )
    return PreparedIndex(source, store, models, options, caption, donor)


def prepare_caption(job: CaptionJob, *, check: bool = True) -> PreparedCaption:
    """Validate a caption backfill: the table must exist; its embedding model embeds the captions."""
    settings = job.settings()
    check_runner(job)
    if job.limit is not None and job.limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {job.limit}")
    store = Store.from_settings(settings)
    embed_model = store.info().model  # TableError if the table is missing
    if embed_model is None:
        raise ConfigError(f"table {store.describe()} records no embedding model; was it made by mmindex?")
    models = ModelChoice(
        embed_model,
        settings.device,
        job.precision,
        caption_model=settings.caption_model or DEFAULT_CAPTION_MODEL,
        generation=generation_of(job),
    )
    if check:
        check_models(models)
    options = CaptionOptions(
        batch_size=settings.batch_size or _default_caption_batch(settings.device),
        limit=job.limit,
        where=job.where,
        recaption=job.recaption,
        retry_failed=job.retry_failed,
        write_rows=min(settings.write_rows, CAPTION_WRITE_ROWS),
        write_seconds=settings.write_seconds,
        lock_timeout=job.lock_timeout,
    )
    return PreparedCaption(store, models, options, UriReader(settings))


def prepare_maintain(job: MaintainJob) -> PreparedMaintain:
    """Validate a maintenance run: a retention like 7d, and a table that exists."""
    retention = parse_retention(job.retention)
    store = Store.from_settings(job.settings())
    store.lancedb_table()  # TableError (exit 2) for a missing table, before any lock is taken
    return PreparedMaintain(store, retention)


def prepare_reembed(job: ReembedJob) -> PreparedReembed:
    """Validate a re-embedding: a table that exists, an image-text model, a known --from and name."""
    settings = job.settings()
    store = Store.from_settings(settings)
    store.lancedb_table()  # TableError (exit 2) for a missing table
    if job.from_ not in FROM_CHOICES:
        raise ConfigError(f"--from must be one of {', '.join(FROM_CHOICES)}, got {job.from_!r}")
    if job.name is not None:
        check_name(job.name)
    check_runner(job)
    models = ModelChoice(job.model, device=settings.device, precision=job.precision)
    check_models(models)
    options = ReembedOptions(
        name=job.name,
        from_=job.from_,
        batch_size=job.batch_size,
        limit=job.limit,
        workers=settings.workers or 1,
        write_rows=min(settings.write_rows, CAPTION_WRITE_ROWS),
        write_seconds=settings.write_seconds,
        lock_timeout=job.lock_timeout,
    )
    return PreparedReembed(store, models, options, UriReader(settings))


def prepare_thumbnails(job: ThumbnailJob) -> PreparedThumbnails:
    """Validate a thumbnail backfill: a table that exists, a size and format that can be made."""
    settings = job.settings()
    store = Store.from_settings(settings)
    store.lancedb_table()  # TableError (exit 2) for a missing table
    options = ThumbnailOptions(
        thumbnailer=Thumbnailer(job.thumbnail_size, job.thumbnail_format),
        limit=job.limit,
        where=job.where,
        retry_failed=job.retry_failed,
        workers=settings.workers or 1,
        write_rows=min(settings.write_rows, CAPTION_WRITE_ROWS),
        write_seconds=settings.write_seconds,
        lock_timeout=job.lock_timeout,
    )
    return PreparedThumbnails(store, options, UriReader(settings))


@dataclass
class PreparedFinetune:
    model: Any  # ModelRef of the base model
    query: Any  # mmindex.finetuning.data.PairQuery
    split: Any  # mmindex.finetuning.data.Split
    counts: dict[str, int]
    settings: Any  # mmindex.finetuning.trainer.FinetuneSettings
    reader: UriReader
    control: Source | None
    db: str
    table_version: int


def prepare_finetune(job: FinetuneJob) -> PreparedFinetune:
    """Validate a fine-tune: a table with captioned rows on both sides of the split, a CLIP-like base
    model, a train part that exists, and an output directory that holds no finished model."""
    from pathlib import Path

    from mmindex.finetuning.data import HOLDOUT, TRAIN, PairQuery, Split
    from mmindex.finetuning.objective import TrainPart
    from mmindex.finetuning.trainer import CHECKPOINT, FinetuneSettings

    settings = job.settings()
    part = TrainPart.parse(job.train_part)
    check_precision(job.precision, None)
    if not 0 < job.holdout < 1:
        raise ConfigError(f"--holdout must be between 0 and 1 (a share of the images), got {job.holdout}")
    out = Path(job.out).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {job.out} is a file; give a directory for the model")
    if (out / "metrics.json").is_file() and not (out / CHECKPOINT).is_dir():
        raise ConfigError(f"--out {job.out} already holds a fine-tuned model; choose another directory")
    store = Store.from_settings(settings)
    recorded = store.info().model  # TableError if the table is missing
    base = job.base or recorded
    if base is None:
        raise ConfigError(f"table {store.describe()} records no embedding model; name one with --base")
    ref = resolve_model(base)
    config = check_embedding_config(ref)
    if part.kind == "last":
        for tower in ("vision_config", "text_config"):
            layers = getattr(getattr(config, tower), "num_hidden_layers", None)
            if layers is not None and part.layers > layers:
                name = tower.split("_")[0]
                raise ConfigError(
                    f"--train-part {part}: the {name} tower of {ref.name} has only {layers} layers"
                )
    query = PairQuery(store, job.where, job.include_generated)
    split = Split(job.holdout, job.seed)
    version = query.pin()
    counts = query.count(split)
    kind = "captioned" if job.include_generated else "human-captioned"
    where = f" matching --where {job.where!r}" if job.where else ""
    if not counts[TRAIN] + counts[HOLDOUT]:
        hint = "" if job.include_generated else " (add --include-generated to use generated captions)"
        raise ConfigError(f"table {store.describe()} has no {kind} rows{where} to train on{hint}")
    for side, name in ((TRAIN, "training"), (HOLDOUT, "held-out")):
        if counts[side] < 2:
            raise ConfigError(
                f"--holdout {job.holdout} leaves {counts[side]} {name} pairs of {sum(counts.values())}; "
                "a fine-tune needs at least two on each side"
            )
    control = None
    if job.control:
        control = open_source(
            job.control, s3_config=_s3_config(settings) if job.control.startswith("s3://") else None
        )
        control.check()
    gpu = _cuda_requested(settings.device)
    train = FinetuneSettings(
        out=out,
        epochs=job.epochs,
        lr=job.lr,
        batch_size=job.batch_size or (FINETUNE_GPU_BATCH if gpu else FINETUNE_CPU_BATCH),
        part=part,
        weight_decay=job.weight_decay,
        wise_alpha=parse_wise_alpha(job.wise_alpha),
        device=settings.device,
        precision=job.precision,
        seed=job.seed,
        eval_pairs=job.eval_pairs,
        workers=settings.workers or default_workers(gpu),
    )
    return PreparedFinetune(
        ref, query, split, counts, train, UriReader(settings), control, settings.db, version
    )


def _s3_config(settings: Settings) -> Any:
    from mmindex.ingest.sources.s3 import S3Config  # boto3 is imported only when S3 is used

    return S3Config.from_settings(settings)


def check_models(models: ModelChoice) -> None:
    """Refuse unknown or wrong-kind models before any work (reads config.json files only)."""
    check_embedding_config(resolve_model(models.embed_model))
    if models.caption_model is not None:
        check_caption_config(resolve_model(models.caption_model))


def choose_model(requested: str | None, store: Store) -> str:
    """The requested model, else the table's recorded model, else the default; refuses a mismatch."""
    recorded = store.recorded_model()
    if requested is None:
        return recorded or DEFAULT_MODEL
    name = resolve_model(requested).name
    if recorded is not None and name != recorded:
        store.check_model(name)
    return requested


def default_workers(gpu: bool) -> int:
    """Decode threads: one beside the model on CPU (it overlaps with inference); more to feed a GPU."""
    return max(1, (os.cpu_count() or 1) - 1) if gpu else 1


def _default_caption_batch(device: str) -> int:
    return GPU_CAPTION_BATCH_SIZE if _cuda_requested(device) else CPU_CAPTION_BATCH_SIZE


def _cuda_requested(device: str) -> bool:
    if device == "cuda":
        return True
    if device != "auto":
        return False
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a dependency
        raise ModelError(f"torch is not importable: {exc}") from exc
    return bool(torch.cuda.is_available())


def _aware(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


RUNNERS = ("local", "sharded", "ray")


def check_runner(job: ScaleSpec) -> None:
    """A runner that exists, and for ray, an installed Ray (one line naming the extra otherwise)."""
    if job.runner not in RUNNERS:
        raise ConfigError(f"--runner {job.runner!r} is not one of {', '.join(RUNNERS)}")
    if job.runner == "local":
        return
    from importlib.util import find_spec

    for module, package in (("lance", "pylance"), ("ray", "ray")):
        if find_spec(module) is None and (module == "lance" or job.runner == "ray"):
            raise ConfigError(f'--runner {job.runner} needs {package}: pip install "mmindex[ray]"')


@dataclass
class PreparedGenerate:
    prompts: list[str]
    settings: ImageSettings
    model: str
    output_location: str
    s3_config: Any | None
    index_job: IndexJob | None


def prepare_generate(job: GenerateJob, *, check: bool = True) -> PreparedGenerate:
    """Validate a generation job: prompts, size, the model's pipeline class (exit 2 for a model that
    is not a text-to-image pipeline) and, when the images are indexed, the index job that follows."""
    from mmindex.models.generator import ImageSettings, check_generator, parse_size, resolve_generator

    prompts = [p.strip() for p in job.prompts if p.strip()]
    if job.prompts_file:
        path = Path(job.prompts_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"--prompts {job.prompts_file}: no such file")
        prompts += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ConfigError("give at least one prompt (PROMPT... or --prompts FILE)")
    width, height = parse_size(job.size)
    settings = ImageSettings(job.steps, job.guidance, width, height)
    settings.validate()
    model = resolve_generator(job.model)
    if check:
        check_generator(model)
    s3_config = _s3_config(job.settings()) if job.out.startswith("s3://") else None
    index_job = None
    if job.index:
        index_job = IndexJob(
            source=job.out, db=job.db, table=job.table, model=job.embed_model, device=job.device,
            lock_timeout=job.lock_timeout,
        )  # fmt: skip
    return PreparedGenerate(prompts, settings, model, job.out, s3_config, index_job)


def parse_wise_alpha(value: str | float | None) -> float | str | None:
    """--wise-alpha: a number in [0, 1], "auto", or none."""
    if value is None or value == "auto":
        return value
    try:
        alpha = float(value)
    except ValueError:
        raise ConfigError(f"--wise-alpha must be a number from 0 to 1 or 'auto', got {value!r}") from None
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"--wise-alpha must be a number from 0 to 1 or 'auto', got {value!r}")
    return alpha
