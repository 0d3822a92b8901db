"""The one way a job runs: `run_job(job)` validates it, loads its models and runs it in this process.

The Prefect flows call the same function with `RunHooks` whose parts are Prefect tasks (model loading
and the per-chunk steps), so a flow run and a notebook run share every line of a run's body. A run
that writes a table holds the table's write lock (see mmindex.store.lock) for as long as it writes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any

from mmindex.finetuning.report import FinetuneReport
from mmindex.ingest.backfill import CaptionSteps, inherit_captions, run_caption
from mmindex.ingest.pipeline import Steps, run_index
from mmindex.ingest.reembed import coverage, run_reembed
from mmindex.ingest.sources.uri import UriReader
from mmindex.ingest.thumbnail_backfill import run_thumbnails
from mmindex.jobs.prepare import (
    PreparedIndex,
    prepare_caption,
    prepare_finetune,
    prepare_generate,
    prepare_index,
    prepare_maintain,
    prepare_reembed,
    prepare_thumbnails,
)
from mmindex.jobs.spec import (
    CaptionJob,
    FinetuneJob,
    GenerateJob,
    IndexJob,
    Job,
    MaintainJob,
    ReembedJob,
    ThumbnailJob,
)
from mmindex.models.captioner import Captioner
from mmindex.models.choice import ModelChoice, load_captioner, load_embedder
from mmindex.models.clip import ClipEmbedder
from mmindex.report import ProgressUpdate, RunReport
from mmindex.store.upkeep import MaintenanceReport, maintain

Progress = Callable[[ProgressUpdate], None]


@dataclass
class RunHooks:
    """The parts of a run an orchestrator may wrap (the Prefect flows pass task versions)."""

    load_embedder: Callable[[ModelChoice], ClipEmbedder] = load_embedder
    load_captioner: Callable[[ModelChoice], Captioner] = load_captioner
    index_steps: Steps = field(default_factory=Steps)
    caption_steps: CaptionSteps = field(default_factory=CaptionSteps)
    maintain: Callable[..., MaintenanceReport] = maintain


Report = RunReport | MaintenanceReport | FinetuneReport


def run_job(job: Job, *, hooks: RunHooks | None = None, progress: Progress | None = None) -> Report:
    """Validate `job` (ConfigError with one line when it cannot run), then run it here."""
    hooks = hooks or RunHooks()
    if isinstance(job, IndexJob):
        return _index(job, hooks, progress)
    if isinstance(job, CaptionJob):
        return _caption(job, hooks, progress)
    if isinstance(job, MaintainJob):
        prepared = prepare_maintain(job)
        return hooks.maintain(prepared.store, prepared.retention, lock_timeout=job.lock_timeout)
    if isinstance(job, ThumbnailJob):
        made = prepare_thumbnails(job)
        return run_thumbnails(made.store, made.options, reader=made.reader, progress=progress)
    if isinstance(job, ReembedJob):
        return _reembed(job, hooks, progress)
    if isinstance(job, FinetuneJob):
        return _finetune(job, progress)
    if isinstance(job, GenerateJob):
        return _generate(job, hooks, progress)
    raise TypeError(f"not an mmindex job: {job!r}")


def _reembed(job: ReembedJob, hooks: RunHooks, progress: Progress | None) -> RunReport:
    made = prepare_reembed(job)
    if job.runner != "local":
        from mmindex.distributed.driver import run_sharded_reembed

        report, built = run_sharded_reembed(job, made, progress=progress)
    else:
        embedder = hooks.load_embedder(made.models)
        report, built = run_reembed(made.store, embedder, made.options, reader=made.reader, progress=progress)
        report.models = embedder.compute
    embedded, rows = coverage(made.store, built)
    report.generation = {**built.to_dict(), "rows_embedded": embedded, "rows": rows}
    if built.state == "ready":
        report.notes.append(
            f"next: `mmindex compare active {built.name}`, then `mmindex activate {built.name}`"
        )
    else:
        report.notes.append("rows are still missing: the same command continues (see `mmindex failures`)")
    return report


def _index(job: IndexJob, hooks: RunHooks, progress: Progress | None) -> RunReport:
    prepared = prepare_index(job)
    if job.runner != "local":  # the workers load the models; the driver plans and commits
        from mmindex.distributed.driver import run_sharded

        report = run_sharded(job, prepared, progress=progress)
        if prepared.caption is not None:
            report.notes.append(
                "rows indexed before this run were not captioned: `mmindex caption` captions them"
            )
        return report
    embedder = hooks.load_embedder(prepared.models)
    captioner = hooks.load_captioner(prepared.models) if prepared.caption is not None else None
    return run_prepared_index(
        job,
        prepared,
        embedder,
        captioner,
        steps=hooks.index_steps,
        caption_steps=hooks.caption_steps,
        progress=progress,
    )


def _caption(job: CaptionJob, hooks: RunHooks, progress: Progress | None) -> RunReport:
    prepared = prepare_caption(job)
    if job.runner != "local":
        from mmindex.distributed.driver import run_sharded_captions

        return run_sharded_captions(job, prepared, progress=progress)
    embedder = hooks.load_embedder(prepared.models)
    captioner = hooks.load_captioner(prepared.models)
    return run_caption(
        prepared.store,
        captioner,
        embedder,
        prepared.options,
        reader=prepared.reader,
        steps=hooks.caption_steps,
        progress=progress,
    )


def _finetune(job: FinetuneJob, progress: Progress | None) -> FinetuneReport:
    from mmindex.finetuning.card import write_card
    from mmindex.finetuning.data import source_pairs
    from mmindex.finetuning.trainer import EvalSet, Finetune

    prepared = prepare_finetune(job)
    control = prepared.control
    control_set = EvalSet("control", lambda: source_pairs(control), control) if control is not None else None
    report = Finetune(
        prepared.model,
        prepared.query,
        prepared.split,
        prepared.settings,
        prepared.reader,
        counts=prepared.counts,
        control=control_set,
        progress=progress,
    ).run()
    report.table_version = prepared.table_version
    write_card(report, prepared.settings.out, db=prepared.db)
    return report


def _generate(job: GenerateJob, hooks: RunHooks, progress: Progress | None) -> RunReport:
    """Make the images (the ones a previous run made are kept), then index the output location."""
    from mmindex.ingest.synthetic import Output, plan_images, run_generate
    from mmindex.models.generator import load_generator

    prepared = prepare_generate(job)
    generator = load_generator(prepared.model, device=job.device or "auto", precision=job.precision)
    output = Output(prepared.output_location, prepared.s3_config)
    planned = plan_images(prepared.prompts, job.n, job.seed)
    report = run_generate(
        generator, planned, prepared.settings, output, batch_size=job.batch_size, progress=progress
    )
    if prepared.index_job is not None:
        del generator  # the diffusion model's memory goes back before CLIP loads
        indexed = _index(prepared.index_job, hooks, None)
        report.table, report.indexed, report.failed = (
            indexed.table,
            indexed.indexed,
            report.failed + indexed.failed,
        )
        report.notes.append(
            f"indexed {indexed.indexed} images ({indexed.unchanged} already in the table) "
            f"with {indexed.models}"
        )
    return report


def validate(job: Job) -> Any:
    """Check a job without running it: what the CLI does before it starts a flow."""
    if isinstance(job, IndexJob):
        return prepare_index(job)
    if isinstance(job, CaptionJob):
        return prepare_caption(job)
    if isinstance(job, MaintainJob):
        return prepare_maintain(job)
    if isinstance(job, ThumbnailJob):
        return prepare_thumbnails(job)
    if isinstance(job, ReembedJob):
        return prepare_reembed(job)
    if isinstance(job, FinetuneJob):
        return prepare_finetune(job)
    if isinstance(job, GenerateJob):
        return prepare_generate(job)
    raise TypeError(f"not an mmindex job: {job!r}")


def run_prepared_index(
    job: IndexJob,
    prepared: PreparedIndex,
    embedder: ClipEmbedder,
    captioner: Captioner | None = None,
    *,
    steps: Steps | None = None,
    caption_steps: CaptionSteps | None = None,
    progress: Callable[[ProgressUpdate], None] | None = None,
) -> RunReport:
    """Run a prepared index job: index the source (captioning new images when asked), then caption the
    source's older rows that still lack one, and say where a --new-table build left things."""
    donor = prepared.caption_donor
    started = datetime.now(UTC)
    report = run_index(
        prepared.source,
        embedder,
        prepared.store,
        prepared.options,
        captioner=captioner,
        caption_donor=partial(inherit_captions, donor) if donor is not None else None,
        steps=steps,
        progress=progress,
    )
    if captioner is not None and prepared.caption is not None:
        # the source's older rows: rows this run wrote were captioned (or failed) a moment ago
        leftover = replace(prepared.caption, uri_prefix=prepared.source.root, indexed_before=started)
        reader = UriReader(job.settings())
        report.absorb_captions(
            run_caption(prepared.store, captioner, embedder, leftover, reader=reader, steps=caption_steps)
        )
    if donor is not None:
        report.notes.append(
            f"built {prepared.store.describe()} with {prepared.models.embed_model}; {donor.describe()} is "
            f"untouched. Search the new table with --table {prepared.store.table_name}"
        )
    return report
