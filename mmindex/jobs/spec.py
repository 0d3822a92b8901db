"""One typed spec per job: what `mmindex index`, `mmindex caption` and `mmindex maintain` take.

Each field is one option, defined once, with its type, default and help. The command line's options,
the Prefect flows' parameters and the deployments are generated from these classes, and the Python
functions (`mmindex.index`, ...) are checked against them by the tests, so a new option is one field
here (plus its use). None means "from the MMINDEX_* environment, the table, or the default".
"""

from __future__ import annotations

from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from datetime import datetime
from typing import Any, ClassVar

from mmindex.config import (
    COMMIT_EVERY,
    CPU_BATCH_SIZE,
    CPU_CAPTION_BATCH_SIZE,
    DEFAULT_CAPTION_MODEL,
    DEFAULT_DB,
    DEFAULT_GENERATOR,
    DEFAULT_MODEL,
    DEFAULT_TABLE,
    FINETUNE_CPU_BATCH,
    FINETUNE_EPOCHS,
    FINETUNE_GPU_BATCH,
    GPU_BATCH_SIZE,
    GPU_CAPTION_BATCH_SIZE,
    MAX_NEW_TOKENS,
    NUM_BEAMS,
    RETENTION,
    SHARD_SIZE,
    THUMBNAIL_FORMAT,
    THUMBNAIL_SIZE,
    Settings,
)

OPTION = "mmindex.option"


@dataclass(frozen=True)
class Option:
    """How a field appears on the command line: `flag` (default: --field-name), an optional short
    flag, a lower bound, or a positional `argument`. `help` is shared by the CLI, flows and docs."""

    help: str
    flag: str | None = None
    short: str | None = None
    min: float | None = None
    max: float | None = None
    argument: bool = False

    def flags(self, name: str) -> list[str]:
        return [self.flag or "--" + name.replace("_", "-"), *([self.short] if self.short else [])]


def option(default: Any = MISSING, *, help: str, factory: Any = MISSING, **cli: Any) -> Any:
    """A job field with its help text and command-line details."""
    metadata = {OPTION: Option(help=help, **cli)}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def ordered_fields(job_class: type[Job]) -> list[Field[Any]]:
    """A job's fields for people: its own first, then the shared ones (captions, then table and lock)."""
    by_name = {spec_field.name: spec_field for spec_field in fields(job_class)}
    ordered: dict[str, Field[Any]] = {}
    for klass in job_class.__mro__:
        for name in vars(klass).get("__annotations__", {}):
            if name in by_name:
                ordered.setdefault(name, by_name[name])
    return list(ordered.values())


def help_of(job_class: type[Job], name: str) -> str:
    """The help text of one field (for tools that describe a job's options, e.g. deploy.py)."""
    return option_of(next(f for f in fields(job_class) if f.name == name)).help


def option_of(spec_field: Any) -> Option:
    found: Option = spec_field.metadata[OPTION]
    return found


@dataclass(kw_only=True)
class Job:
    """Fields every job has: which table, and how long to wait for another run writing it."""

    kind: ClassVar[str]
    doing: ClassVar[str]  # what a progress bar says, e.g. "indexing"

    db: str | None = option(None, help=f"LanceDB URI [env MMINDEX_DB, default {DEFAULT_DB}]")
    table: str | None = option(None, help=f"table name [env MMINDEX_TABLE, default {DEFAULT_TABLE}]")
    lock_timeout: float | None = option(
        None, min=0, help="seconds to wait while another run writes the table [no limit]"
    )

    def to_params(self) -> dict[str, Any]:
        """The job as flow parameters."""
        return asdict(self)

    def settings(self) -> Settings:
        """Settings for this run: the job's fields where given, else MMINDEX_* and the defaults."""
        names = {f.name for f in fields(Settings)}
        return Settings.from_env(**{f.name: getattr(self, f.name) for f in fields(self) if f.name in names})

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> Job:
        """A job from `values` (e.g. a command's or a flow's arguments): None for list fields means
        empty, and keys that are not fields are ignored."""
        known = {f.name: f for f in fields(cls)}
        chosen: dict[str, Any] = {}
        for name, value in values.items():
            if name in known:
                if value is None and known[name].default_factory is not MISSING:
                    continue
                chosen[name] = list(value) if isinstance(value, tuple) else value
        return cls(**chosen)


@dataclass(kw_only=True)
class CaptionSpec:
    """How captions are generated (shared by `index --caption-missing` and `caption`)."""

    caption_model: str | None = option(
        None,
        help="captioning model id or directory (BLIP, GIT, VisionEncoderDecoder) "
        f"[MMINDEX_CAPTION_MODEL; default {DEFAULT_CAPTION_MODEL}]",
    )
    max_new_tokens: int = option(MAX_NEW_TOKENS, min=1, help="longest caption, in tokens")
    num_beams: int = option(NUM_BEAMS, min=1, help="beam search width (1: greedy)")
    prompt: str | None = option(None, help='caption prefix that steers the model, e.g. "a photograph of"')


@dataclass(kw_only=True)
class ThumbnailSpec:
    """How thumbnails are made (shared by `index` and `thumbnails`)."""

    thumbnail_size: int = option(
        THUMBNAIL_SIZE, min=16, max=2048, help="long side of the previews, in pixels"
    )
    thumbnail_format: str = option(THUMBNAIL_FORMAT, help="webp (smaller) or jpeg (faster)")


@dataclass(kw_only=True)
class ScaleSpec:
    """Where a run's shards go (shared by `index`, `caption` and `reembed`)."""

    runner: str = option(
        "local",
        help="local (this process, committing as it goes), ray (shards on a Ray cluster, one commit per "
        "group of shards) or sharded (the ray runner's shards and commits, in this process)",
    )
    ray_address: str | None = option(
        None,
        help="Ray cluster to join: auto or ray://HEAD:10001 [env MMINDEX_RAY_ADDRESS; default: a local Ray]",
    )
    ray_workers: int | None = option(None, min=1, help="model actors on the cluster [one per GPU, else 1]")
    shard_size: int = option(SHARD_SIZE, min=1, help="items per shard (ray and sharded runners)")
    commit_every: int = option(
        COMMIT_EVERY, min=1, help="shards per commit: a crashed run loses at most this many shards' work"
    )
    max_attempts: int = option(
        3, min=1, help="tries per shard before the run stops (ray and sharded runners)"
    )


PRECISION_HELP = "auto (bf16/fp16 on CUDA, bf16 on a CPU with fast native bf16, else fp32), fp32, bf16, fp16"
DEVICE_HELP = "auto, cpu, cuda or mps"


@dataclass(kw_only=True)
class IndexJob(CaptionSpec, ThumbnailSpec, ScaleSpec, Job):
    """Index images (and their captions) into a LanceDB table of CLIP embeddings."""

    kind: ClassVar[str] = "index"
    doing: ClassVar[str] = "indexing"

    source: str = option(
        help="directory, manifest (.csv/.jsonl/.parquet) or s3://bucket/prefix", argument=True
    )
    model: str | None = option(
        None, help=f"CLIP model id or directory [MMINDEX_MODEL; default: the table's, else {DEFAULT_MODEL}]"
    )
    batch_size: int | None = option(
        None, min=1, help=f"images per forward pass [{CPU_BATCH_SIZE} on CPU, {GPU_BATCH_SIZE} on CUDA]"
    )
    device: str | None = option(None, help=DEVICE_HELP)
    prune: bool = option(False, help="delete rows whose files are gone")
    format: str = option(
        "auto",
        help="files, or webdataset (.tar shards of KEY.jpg + KEY.txt/.json); auto: webdataset "
        "when the source holds only .tar files",
    )
    captions: str | None = option(None, help="manifest with captions for a directory's images")
    path_column: str | None = option(None, help="manifest column holding image paths")
    caption_column: str | None = option(None, help="manifest column holding captions")
    include: list[str] = option(factory=list, help="glob on keys to include (repeatable)")
    exclude: list[str] = option(factory=list, help="glob on keys to exclude (repeatable)")
    prefix: str = option("", help="only keys starting with this")
    since: datetime | None = option(None, help="only items modified at or after (UTC)")
    until: datetime | None = option(None, help="only items modified before (UTC)")
    workers: int | None = option(None, min=1, help="decode threads [1 on CPU, cores-1 on GPU]")
    precision: str = option("auto", help=PRECISION_HELP)
    quantize: str | None = option(None, help="int8: dynamic int8 linear layers (CPU)")
    compile: str = option(
        "auto",
        help="torch.compile the image tower: auto (once minutes of work are left, kept only if "
        "measured faster), on, off",
    )
    retry_failed: bool = option(False, help="retry items that failed before, unchanged")
    caption_missing: bool = option(False, help="generate captions for images that have none")
    new_table: str | None = option(
        None, help="build this table with --model NEW; the current table stays as it is"
    )
    thumbnails: bool = option(
        True, flag="--thumbnails/--no-thumbnails", help="store a small preview of each image in the table"
    )


@dataclass(kw_only=True)
class CaptionJob(CaptionSpec, ScaleSpec, Job):
    """Generate captions for indexed images that have none; resumable; human captions are never touched."""

    kind: ClassVar[str] = "caption"
    doing: ClassVar[str] = "captioning"

    limit: int | None = option(None, min=1, help="caption at most N rows")
    where: str | None = option(None, help="SQL filter choosing rows, e.g. \"key LIKE 'a/%'\"")
    recaption: bool = option(False, help="also regenerate captions made by another captioning model")
    retry_failed: bool = option(False, help="retry images the model failed on")
    batch_size: int | None = option(
        None,
        min=1,
        help=f"images per generate call [{CPU_CAPTION_BATCH_SIZE} on CPU, {GPU_CAPTION_BATCH_SIZE} on CUDA]",
    )
    device: str | None = option(None, help=DEVICE_HELP)
    precision: str = option("auto", help=PRECISION_HELP)


@dataclass(kw_only=True)
class MaintainJob(Job):
    """Compact a table, fold new rows into its indices (or build them) and delete old versions."""

    kind: ClassVar[str] = "maintain"
    doing: ClassVar[str] = "maintaining"

    retention: str = option(
        RETENTION, help=f"keep table versions younger than this: 7d, 12h, 30m [{RETENTION}]"
    )


@dataclass(kw_only=True)
class ThumbnailJob(ThumbnailSpec, Job):
    """Make the thumbnails a table's rows lack (indexed before thumbnails or with --no-thumbnails)."""

    kind: ClassVar[str] = "thumbnails"
    doing: ClassVar[str] = "making thumbnails"

    limit: int | None = option(None, min=1, help="make at most N thumbnails")
    where: str | None = option(None, help="SQL filter choosing rows, e.g. \"key LIKE 'a/%'\"")
    retry_failed: bool = option(False, help="retry images that could not be read or decoded before")
    workers: int | None = option(None, min=1, help="decode threads [1]")


@dataclass(kw_only=True)
class ReembedJob(ScaleSpec, Job):
    """Build an embedding generation of another model beside the active one (which keeps answering)."""

    kind: ClassVar[str] = "reembed"
    doing: ClassVar[str] = "re-embedding"

    model: str = option(help="the embedding model: a hub id, a directory or a toy name")
    name: str | None = option(None, help="the generation's name [derived from the model]")
    from_: str = option(
        "source", flag="--from", help="read the images from their source, or from the stored thumbnails"
    )
    limit: int | None = option(None, min=1, help="embed at most N rows in this run")
    batch_size: int = option(64, min=1, help="images per forward pass")
    workers: int | None = option(None, min=1, help="decode threads [1]")
    device: str | None = option(None, help=DEVICE_HELP)
    precision: str = option("auto", help=PRECISION_HELP)


@dataclass(kw_only=True)
class FinetuneJob(Job):
    """Fine-tune the table's CLIP model on its own captioned rows; report held-out recall before and after."""

    kind: ClassVar[str] = "finetune"
    doing: ClassVar[str] = "fine-tuning"

    out: str = option(help="directory for the fine-tuned model (must not hold a finished one)")
    base: str | None = option(None, help="model to start from (default: the table's own model)")
    epochs: int = option(FINETUNE_EPOCHS, min=1, help="passes over the training pairs")
    lr: float | None = option(
        None, min=0, help="peak learning rate [1e-5; 1e-4 for lora]: low, so pretrained knowledge survives"
    )
    batch_size: int | None = option(
        None,
        min=2,
        help=f"pairs per step [{FINETUNE_CPU_BATCH} on CPU, {FINETUNE_GPU_BATCH} on CUDA]; "
        "larger batches give the contrastive loss more negatives",
    )
    train_part: str = option(
        "full", help="what trains: full, text, vision, last:N (layers per tower) or lora"
    )
    holdout: float = option(0.1, min=0, max=1, help="share of images held out to measure retrieval on")
    where: str | None = option(None, help="SQL filter choosing rows, e.g. \"key LIKE 'shop/%'\"")
    include_generated: bool = option(
        False, help="also train on generated captions (teaches the model its captioner's words)"
    )
    wise_alpha: str | None = option(
        None,
        help="save (1-A)*base + A*fine-tuned (WiSE-FT), which forgets less; both are scored. auto: the "
        "largest A (of 0, 0.1, ..., 1) that keeps held-out recall@5 of the queries the base model "
        "answered within 0.02 of the base, with the gain/loss of every A reported",
    )
    control: str | None = option(
        None,
        help="other captioned images (a folder with caption sidecars or a manifest), scored before and "
        "after to show forgetting",
    )
    weight_decay: float = option(0.1, min=0, help="AdamW weight decay on weight matrices")
    seed: int = option(0, help="seed of the split, the order and the initial adapters")
    eval_pairs: int = option(5000, min=1, help="held-out (and control) pairs scored at most")
    workers: int | None = option(None, min=1, help="decode threads [1 on CPU, cores-1 on GPU]")
    device: str | None = option(None, help=DEVICE_HELP)
    precision: str = option("auto", help=PRECISION_HELP)


@dataclass(kw_only=True)
class GenerateJob(Job):
    """Generate images from text prompts into a folder or prefix, with their provenance, and index them."""

    kind: ClassVar[str] = "generate"
    doing: ClassVar[str] = "generating"

    prompts: list[str] = option(factory=list, help="text prompts (or --prompts FILE)", argument=True)
    out: str = option(help="folder or s3://bucket/prefix the images and their sidecars go to")
    prompts_file: str | None = option(None, flag="--prompts", help="file with one prompt per line")
    n: int = option(1, min=1, help="images per prompt")
    seed: int = option(0, min=0, help="seed of the first image; image i of a run gets seed + i")
    model: str | None = option(
        None, help=f"text-to-image pipeline id or directory, or toy-generator [default {DEFAULT_GENERATOR}]"
    )
    steps: int | None = option(None, min=1, help="denoising steps [the pipeline's default]")
    guidance: float | None = option(
        None, min=0, help="classifier-free guidance scale [the pipeline's default]"
    )
    size: str = option("512x512", help="WIDTHxHEIGHT of the images, multiples of 8")
    batch_size: int = option(4, min=1, help="images per pipeline call")
    index: bool = option(True, flag="--index/--no-index", help="index the images into the table afterwards")
    embed_model: str | None = option(
        None, help="CLIP model for the index run [the table's, else the default]"
    )
    device: str | None = option(None, help=DEVICE_HELP)
    precision: str = option("auto", help="auto (fp16 on CUDA, fp32 on CPU), fp32, bf16, fp16")
