"""The jobs as Python functions, for notebooks and scripts: each builds its job spec and runs it in
this process (no Prefect involved). Their keywords are the spec's fields (mmindex.jobs.spec; a test
keeps the two in step), so the command line's `--batch-size` is `batch_size=` here.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from mmindex.config import (
    COMMIT_EVERY,
    FINETUNE_EPOCHS,
    MAX_NEW_TOKENS,
    NUM_BEAMS,
    RETENTION,
    SHARD_SIZE,
    THUMBNAIL_FORMAT,
    THUMBNAIL_SIZE,
)
from mmindex.finetuning.report import FinetuneReport
from mmindex.jobs.spec import (
    CaptionJob,
    FinetuneJob,
    GenerateJob,
    IndexJob,
    MaintainJob,
    ReembedJob,
    ThumbnailJob,
)
from mmindex.progress import TerminalProgress
from mmindex.query.search import Searcher
from mmindex.report import RunReport
from mmindex.run import run_job
from mmindex.store.reader import Store
from mmindex.store.upkeep import MaintenanceReport


def index(
    source: str,
    *,
    db: str | None = None,
    table: str | None = None,
    model: str | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    workers: int | None = None,
    prune: bool = False,
    retry_failed: bool = False,
    format: str = "auto",
    captions: str | None = None,
    path_column: str | None = None,
    caption_column: str | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    prefix: str = "",
    since: datetime | None = None,
    until: datetime | None = None,
    precision: str = "auto",
    quantize: str | None = None,
    compile: str = "auto",
    caption_missing: bool = False,
    caption_model: str | None = None,
    max_new_tokens: int = MAX_NEW_TOKENS,
    num_beams: int = NUM_BEAMS,
    prompt: str | None = None,
    new_table: str | None = None,
    thumbnails: bool = True,
    thumbnail_size: int = THUMBNAIL_SIZE,
    thumbnail_format: str = THUMBNAIL_FORMAT,
    runner: str = "local",
    ray_address: str | None = None,
    ray_workers: int | None = None,
    shard_size: int = SHARD_SIZE,
    commit_every: int = COMMIT_EVERY,
    max_attempts: int = 3,
    lock_timeout: float | None = None,
    progress: bool | None = None,
) -> RunReport:
    """Index `source` (a directory, a manifest or an s3:// prefix) into a table, in this process.

    The keywords are `mmindex index`'s options (see `mmindex index --help`): `db`/`table` say where
    (default ./mmindex.lancedb, table images), `model` which CLIP (default: the table's), `include`,
    `exclude`, `prefix`, `since` and `until` select part of the source, `caption_missing` captions
    images without one, `prune` drops rows of deleted files, `thumbnails=False` stores no previews,
    `runner="ray"` runs shards on a Ray cluster (`ray_address`) with one commit per `commit_every` shards.
    `progress`: a progress bar on stderr (default: when stderr is a terminal). Returns the run's
    report (`.to_dict()` is the CLI's JSON).
    """
    job = IndexJob(
        source=source,
        db=db,
        table=table,
        model=model,
        batch_size=batch_size,
        device=device,
        workers=workers,
        prune=prune,
        retry_failed=retry_failed,
        format=format,
        captions=captions,
        path_column=path_column,
        caption_column=caption_column,
        include=list(include),
        exclude=list(exclude),
        prefix=prefix,
        since=since,
        until=until,
        precision=precision,
        quantize=quantize,
        compile=compile,
        caption_missing=caption_missing,
        caption_model=caption_model,
        max_new_tokens=max_new_tokens,
        num_beams=num_beams,
        prompt=prompt,
        new_table=new_table,
        thumbnails=thumbnails,
        thumbnail_size=thumbnail_size,
        thumbnail_format=thumbnail_format,
        runner=runner,
        ray_address=ray_address,
        ray_workers=ray_workers,
        shard_size=shard_size,
        commit_every=commit_every,
        max_attempts=max_attempts,
        lock_timeout=lock_timeout,
    )
    with TerminalProgress("indexing", enabled=progress) as bar:
        report = run_job(job, progress=bar)
    assert isinstance(report, RunReport)
    return report


def caption(
    *,
    db: str | None = None,
    table: str | None = None,
    caption_model: str | None = None,
    limit: int | None = None,
    where: str | None = None,
    recaption: bool = False,
    retry_failed: bool = False,
    batch_size: int | None = None,
    device: str | None = None,
    precision: str = "auto",
    max_new_tokens: int = MAX_NEW_TOKENS,
    num_beams: int = NUM_BEAMS,
    prompt: str | None = None,
    runner: str = "local",
    ray_address: str | None = None,
    ray_workers: int | None = None,
    shard_size: int = SHARD_SIZE,
    commit_every: int = COMMIT_EVERY,
    max_attempts: int = 3,
    lock_timeout: float | None = None,
    progress: bool | None = None,
) -> RunReport:
    """Generate the captions a table is missing (see `mmindex caption --help`), in this process.

    `where` narrows the rows (SQL), `limit` caps how many, `recaption` also replaces captions another
    captioning model made; human captions are never touched. Resumable: a rerun continues.
    `runner="ray"` (or "sharded") runs the backfill in shards, as `index` does.
    """
    job = CaptionJob(
        db=db,
        table=table,
        caption_model=caption_model,
        limit=limit,
        where=where,
        recaption=recaption,
        retry_failed=retry_failed,
        batch_size=batch_size,
        device=device,
        precision=precision,
        max_new_tokens=max_new_tokens,
        num_beams=num_beams,
        prompt=prompt,
        runner=runner,
        ray_address=ray_address,
        ray_workers=ray_workers,
        shard_size=shard_size,
        commit_every=commit_every,
        max_attempts=max_attempts,
        lock_timeout=lock_timeout,
    )
    with TerminalProgress("captioning", enabled=progress) as bar:
        report = run_job(job, progress=bar)
    assert isinstance(report, RunReport)
    return report


def maintain(
    *,
    db: str | None = None,
    table: str | None = None,
    retention: str = RETENTION,
    lock_timeout: float | None = None,
) -> MaintenanceReport:
    """Compact the table, fold new rows into (or build) its indices and delete versions older than
    `retention` ("7d", "12h", "30m"), in this process (see `mmindex maintain --help`)."""
    report = run_job(MaintainJob(db=db, table=table, retention=retention, lock_timeout=lock_timeout))
    assert isinstance(report, MaintenanceReport)
    return report


def thumbnails(
    *,
    db: str | None = None,
    table: str | None = None,
    limit: int | None = None,
    where: str | None = None,
    retry_failed: bool = False,
    workers: int | None = None,
    thumbnail_size: int = THUMBNAIL_SIZE,
    thumbnail_format: str = THUMBNAIL_FORMAT,
    lock_timeout: float | None = None,
    progress: bool | None = None,
) -> RunReport:
    """Make the thumbnails a table's rows lack (rows indexed before thumbnails existed or with
    `thumbnails=False`), in this process; resumable (see `mmindex thumbnails --help`)."""
    job = ThumbnailJob(
        db=db,
        table=table,
        limit=limit,
        where=where,
        retry_failed=retry_failed,
        workers=workers,
        thumbnail_size=thumbnail_size,
        thumbnail_format=thumbnail_format,
        lock_timeout=lock_timeout,
    )
    with TerminalProgress(job.doing, enabled=progress) as bar:
        report = run_job(job, progress=bar)
    assert isinstance(report, RunReport)
    return report


def reembed(
    *,
    model: str,
    db: str | None = None,
    table: str | None = None,
    name: str | None = None,
    from_: str = "source",
    limit: int | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    device: str | None = None,
    precision: str = "auto",
    runner: str = "local",
    ray_address: str | None = None,
    ray_workers: int | None = None,
    shard_size: int = SHARD_SIZE,
    commit_every: int = COMMIT_EVERY,
    max_attempts: int = 3,
    lock_timeout: float | None = None,
    progress: bool | None = None,
) -> RunReport:
    """Build an embedding generation of `model` beside the table's active one, in this process;
    resumable, and rows indexed meanwhile are caught up (see `mmindex reembed --help`). The report's
    `generation` says its name, state and coverage; `mmindex.connect().compare("active", name)`
    measures it, and `mmindex activate NAME` switches to it. `runner="ray"` (or "sharded") runs it in
    shards, as `index` does."""
    job = ReembedJob(
        db=db,
        table=table,
        model=model,
        name=name,
        from_=from_,
        limit=limit,
        batch_size=batch_size,
        workers=workers,
        device=device,
        precision=precision,
        runner=runner,
        ray_address=ray_address,
        ray_workers=ray_workers,
        shard_size=shard_size,
        commit_every=commit_every,
        max_attempts=max_attempts,
        lock_timeout=lock_timeout,
    )
    with TerminalProgress(job.doing, enabled=progress) as bar:
        report = run_job(job, progress=bar)
    assert isinstance(report, RunReport)
    return report


def finetune(
    *,
    out: str,
    db: str | None = None,
    table: str | None = None,
    base: str | None = None,
    epochs: int = FINETUNE_EPOCHS,
    lr: float | None = None,
    batch_size: int | None = None,
    train_part: str = "full",
    holdout: float = 0.1,
    where: str | None = None,
    include_generated: bool = False,
    wise_alpha: float | str | None = None,
    control: str | None = None,
    weight_decay: float = 0.1,
    seed: int = 0,
    eval_pairs: int = 5000,
    workers: int | None = None,
    device: str | None = None,
    precision: str = "auto",
    lock_timeout: float | None = None,
    progress: bool | None = None,
) -> FinetuneReport:
    """Fine-tune the table's CLIP model on its human-captioned rows and save it to `out`, in this
    process (see `mmindex finetune --help`). The report holds held-out recall for the base and the
    fine-tuned model (`report.metric_rows()`); `out` loads with from_pretrained, and `mmindex reembed
    --model OUT` puts its vectors beside the table's. `wise_alpha="auto"` picks the interpolation
    with the base that keeps what the base answered well. A killed run resumes when called again."""
    job = FinetuneJob(
        out=out,
        db=db,
        table=table,
        base=base,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        train_part=train_part,
        holdout=holdout,
        where=where,
        include_generated=include_generated,
        wise_alpha=None if wise_alpha is None else str(wise_alpha),
        control=control,
        weight_decay=weight_decay,
        seed=seed,
        eval_pairs=eval_pairs,
        workers=workers,
        device=device,
        precision=precision,
        lock_timeout=lock_timeout,
    )
    with TerminalProgress(job.doing, enabled=progress) as bar:
        report = run_job(job, progress=bar)
    assert isinstance(report, FinetuneReport)
    return report


def open_searcher(db: str | None = None, table: str | None = None, *, device: str = "auto") -> Searcher:
    """A Searcher over a table; the table's own embedding model is loaded on the first query."""
    from mmindex.config import Settings

    settings = Settings.from_env(db=db, table=table)
    return Searcher(Store.from_settings(settings), device=device)


def generate(
    prompts: Sequence[str] = (),
    *,
    out: str,
    prompts_file: str | None = None,
    n: int = 1,
    seed: int = 0,
    model: str | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    size: str = "512x512",
    batch_size: int = 4,
    index: bool = True,
    embed_model: str | None = None,
    device: str | None = None,
    precision: str = "auto",
    db: str | None = None,
    table: str | None = None,
    lock_timeout: float | None = None,
    progress: bool | None = None,
) -> RunReport:
    """Generate `n` images per prompt with a text-to-image model (default: sd-turbo; any diffusers
    pipeline id or directory, or "toy-generator") into `out`, each with a JSON sidecar holding its
    prompt and provenance, then index them (unless `index=False`). Image i of a run gets seed + i,
    so every image can be made again on its own; a rerun makes only the images `out` lacks."""
    job = GenerateJob(
        prompts=list(prompts),
        out=out,
        prompts_file=prompts_file,
        n=n,
        seed=seed,
        model=model,
        steps=steps,
        guidance=guidance,
        size=size,
        batch_size=batch_size,
        index=index,
        embed_model=embed_model,
        device=device,
        precision=precision,
        db=db,
        table=table,
        lock_timeout=lock_timeout,
    )
    with TerminalProgress("generating", enabled=progress) as bar:
        report = run_job(job, progress=bar)
    assert isinstance(report, RunReport)
    return report
