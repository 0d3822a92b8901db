"""How each kind of job is prepared and run: the registry `JOB_KINDS`, and `run_job(job)`, the one way
a job runs in this process.

Each `JobKind` holds a job's spec, how it is validated (`prepare`) and run, its Prefect flow and its
Python function. The command line (mmindex.cli), the flows (mmindex.flows.jobs), the deployments and
the Python functions (mmindex.api, generated from this registry by scripts/generate_api.py) all come
from here, so a new kind of job is one entry (plus its tests) and a new option is one field of its spec.

The Prefect flows call `run_job` with `RunHooks` whose parts are Prefect tasks (model loading and the
per-chunk steps), so a flow run and a notebook run share every line of a run's body. A run that
writes a table holds the table's write lock (see mmindex.store.lock) for as long as it writes.
Importing this module is cheap (the command line reads the registry to build its commands): the
bodies import what they run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from mmindex.errors import ConfigError
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

if TYPE_CHECKING:
    from mmindex.finetuning.report import FinetuneReport
    from mmindex.ingest.backfill import CaptionSteps
    from mmindex.ingest.pipeline import Steps
    from mmindex.jobs.prepare import PreparedIndex
    from mmindex.models.captioner import Captioner
    from mmindex.models.choice import ModelChoice
    from mmindex.models.clip import ClipEmbedder
    from mmindex.report import ProgressUpdate, RunReport
    from mmindex.store.upkeep import MaintenanceReport

    Report = RunReport | MaintenanceReport | FinetuneReport

Progress = Callable[["ProgressUpdate"], None]


@dataclass
class RunHooks:
    """The parts of a run an orchestrator may wrap (the Prefect flows pass task versions); None means
    the plain function."""

    load_embedder: Callable[[ModelChoice], ClipEmbedder] | None = None
    load_captioner: Callable[[ModelChoice], Captioner] | None = None
    index_steps: Steps | None = None
    caption_steps: CaptionSteps | None = None
    maintain: Callable[..., MaintenanceReport] | None = None

    def embedder(self, models: ModelChoice) -> ClipEmbedder:
        from mmindex.models.choice import load_embedder

        return (self.load_embedder or load_embedder)(models)

    def captioner(self, models: ModelChoice) -> Captioner:
        from mmindex.models.choice import load_captioner

        return (self.load_captioner or load_captioner)(models)


@dataclass(frozen=True)
class JobKind:
    """One kind of job: its spec, how it is prepared and run, its Prefect flow and its Python function.

    `prepare(job)` validates cheaply (ConfigError with one line, before any model loads) and returns
    the prepared parts; `run(job, prepared, hooks, progress)` does the work. The command and the
    Python function are named after `spec.kind`; `about` opens the function's docstring.
    """

    spec: type[Job]
    prepare: Callable[[Any], Any]
    run: Callable[[Any, Any, RunHooks, Progress | None], Any]
    report: str  # the report's class name, as the Python function returns it
    flow: str  # the Prefect flow's name
    flow_function: str  # the flow's name in mmindex.flows.jobs (a deployment's entrypoint)
    about: str
    progress: bool = True  # it reports progress (a bar on a terminal, a flow's progress artifact)
    deployed: bool = False  # deployments/deploy.py schedules it

    @property
    def name(self) -> str:
        return self.spec.kind


def run_job(job: Job, *, hooks: RunHooks | None = None, progress: Progress | None = None) -> Report:
    """Validate `job` (ConfigError with one line when it cannot run), then run it here."""
    kind = kind_of(job)
    report: Report = kind.run(job, kind.prepare(job), hooks or RunHooks(), progress)
    return report


def validate(job: Job) -> Any:
    """Check a job without running it (what the CLI does before it starts a flow): its prepared parts."""
    return kind_of(job).prepare(job)


def kind_of(job: Job | type[Job]) -> JobKind:
    """The registry entry of a job (or spec class); an unknown kind is an error, never a fallback."""
    name = getattr(job, "kind", None)
    kind = JOB_KINDS.get(name) if isinstance(name, str) else None
    if kind is None or (not isinstance(job, kind.spec) and job is not kind.spec):
        raise ConfigError(f"not a kind of mmindex job: {job!r}; the kinds: {', '.join(JOB_KINDS)}")
    return kind


def _prepare(name: str) -> Callable[[Any], Any]:
    def prepare(job: Job) -> Any:
        from mmindex.jobs import prepare as preparing

        return getattr(preparing, name)(job)

    prepare.__name__ = name
    return prepare


def _reembed(job: ReembedJob, made: Any, hooks: RunHooks, progress: Progress | None) -> RunReport:
    from mmindex.ingest.reembed import coverage, run_reembed

    if job.runner != "local":
        from mmindex.distributed.driver import run_sharded_reembed

        report, built = run_sharded_reembed(job, made, progress=progress)
    else:
        embedder = hooks.embedder(made.models)
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


def _index(job: IndexJob, prepared: PreparedIndex, hooks: RunHooks, progress: Progress | None) -> RunReport:
    if job.runner != "local":  # the workers load the models; the driver plans and commits
        from mmindex.distributed.driver import run_sharded

        report = run_sharded(job, prepared, progress=progress)
        if prepared.caption is not None:
            report.notes.append(
                "rows indexed before this run were not captioned: `mmindex caption` captions them"
            )
        return report
    embedder = hooks.embedder(prepared.models)
    captioner = hooks.captioner(prepared.models) if prepared.caption is not None else None
    return run_prepared_index(
        job,
        prepared,
        embedder,
        captioner,
        steps=hooks.index_steps,
        caption_steps=hooks.caption_steps,
        progress=progress,
    )


def _caption(job: CaptionJob, prepared: Any, hooks: RunHooks, progress: Progress | None) -> RunReport:
    from mmindex.ingest.backfill import run_caption

    if job.runner != "local":
        from mmindex.distributed.driver import run_sharded_captions

        return run_sharded_captions(job, prepared, progress=progress)
    embedder = hooks.embedder(prepared.models)
    captioner = hooks.captioner(prepared.models)
    return run_caption(
        prepared.store,
        captioner,
        embedder,
        prepared.options,
        reader=prepared.reader,
        steps=hooks.caption_steps,
        progress=progress,
    )


def _finetune(job: FinetuneJob, prepared: Any, hooks: RunHooks, progress: Progress | None) -> FinetuneReport:
    from mmindex.finetuning.card import write_card
    from mmindex.finetuning.data import source_pairs
    from mmindex.finetuning.trainer import EvalSet, Finetune

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


def _generate(job: GenerateJob, prepared: Any, hooks: RunHooks, progress: Progress | None) -> RunReport:
    """Make the images (the ones a previous run made are kept), then index the output location."""
    from mmindex.ingest.synthetic import Output, plan_images, run_generate
    from mmindex.jobs.prepare import prepare_index
    from mmindex.models.generator import load_generator

    generator = load_generator(prepared.model, device=job.device or "auto", precision=job.precision)
    output = Output(prepared.output_location, prepared.s3_config)
    planned = plan_images(prepared.prompts, job.n, job.seed)
    report = run_generate(
        generator, planned, prepared.settings, output, batch_size=job.batch_size, progress=progress
    )
    if prepared.index_job is not None:
        del generator  # the diffusion model's memory goes back before CLIP loads
        indexed = _index(prepared.index_job, prepare_index(prepared.index_job), hooks, None)
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
    from mmindex.ingest.backfill import inherit_captions, run_caption
    from mmindex.ingest.pipeline import run_index
    from mmindex.ingest.sources.uri import UriReader

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


def _maintain(
    job: MaintainJob, prepared: Any, hooks: RunHooks, progress: Progress | None
) -> MaintenanceReport:
    from mmindex.store.upkeep import maintain

    report: MaintenanceReport = (hooks.maintain or maintain)(
        prepared.store, prepared.retention, lock_timeout=job.lock_timeout
    )
    return report


def _thumbnails(job: ThumbnailJob, made: Any, hooks: RunHooks, progress: Progress | None) -> RunReport:
    from mmindex.ingest.thumbnail_backfill import run_thumbnails

    return run_thumbnails(made.store, made.options, reader=made.reader, progress=progress)


JOB_KINDS: dict[str, JobKind] = {
    kind.name: kind
    for kind in (
        JobKind(
            IndexJob,
            _prepare("prepare_index"),
            _index,
            report="RunReport",
            flow="mmindex-index",
            flow_function="index",
            deployed=True,
            about="""Index `source` (a directory, a manifest or an s3:// prefix) into a table, here.

`db`/`table` say where (default ./mmindex.lancedb, table images), `model` which CLIP (default: the
table's), `include`, `exclude`, `prefix`, `since` and `until` select part of the source,
`caption_missing` captions images without one, `prune` drops rows of deleted files,
`thumbnails=False` stores no previews, `runner="ray"` runs shards on a Ray cluster (`ray_address`)
with one commit per `commit_every` shards.""",
        ),
        JobKind(
            CaptionJob,
            _prepare("prepare_caption"),
            _caption,
            report="RunReport",
            flow="mmindex-caption-missing",
            flow_function="caption_missing",
            deployed=True,
            about="""Generate the captions a table is missing, in this process.

`where` narrows the rows (SQL), `limit` caps how many, `recaption` also replaces captions another
captioning model made; human captions are never touched. Resumable: a rerun continues.
`runner="ray"` (or "sharded") runs the backfill in shards, as `index` does.""",
        ),
        JobKind(
            MaintainJob,
            _prepare("prepare_maintain"),
            _maintain,
            report="MaintenanceReport",
            flow="mmindex-maintain",
            flow_function="maintain",
            progress=False,
            deployed=True,
            about="""Compact the table, fold new rows into (or build) its indices, delete old versions.

Versions older than `retention` ("7d", "12h", "30m") go; runs in this process.""",
        ),
        JobKind(
            ThumbnailJob,
            _prepare("prepare_thumbnails"),
            _thumbnails,
            report="RunReport",
            flow="mmindex-thumbnails",
            flow_function="thumbnails",
            about="""Make the thumbnails a table's rows lack (rows indexed before thumbnails existed or with
`thumbnails=False`), in this process; resumable.""",
        ),
        JobKind(
            ReembedJob,
            _prepare("prepare_reembed"),
            _reembed,
            report="RunReport",
            flow="mmindex-reembed",
            flow_function="reembed",
            deployed=True,
            about="""Build an embedding generation of `model` beside the table's active one, in this process.

Resumable, and rows indexed meanwhile are caught up. The report's `generation` says its name, state
and coverage; `mmindex.connect().compare("active", name)` measures it, and `mmindex activate NAME`
switches to it. `runner="ray"` (or "sharded") runs it in shards, as `index` does.""",
        ),
        JobKind(
            FinetuneJob,
            _prepare("prepare_finetune"),
            _finetune,
            report="FinetuneReport",
            flow="mmindex-finetune",
            flow_function="finetune",
            about="""Fine-tune the table's CLIP model on its human-captioned rows and save it to `out`.

The report holds held-out recall for the base and the fine-tuned model (`report.metric_rows()`);
`out` loads with from_pretrained, and `mmindex reembed --model OUT` puts its vectors beside the
table's. `wise_alpha="auto"` picks the interpolation with the base that keeps what the base
answered well. A killed run resumes when called again.""",
        ),
        JobKind(
            GenerateJob,
            _prepare("prepare_generate"),
            _generate,
            report="RunReport",
            flow="mmindex-generate",
            flow_function="generate",
            about="""Generate `n` images per prompt with a text-to-image model into `out`, then index them.

The model is sd-turbo by default, or any diffusers pipeline id or directory, or "toy-generator".
Each image gets a JSON sidecar holding its prompt and provenance, and is indexed unless
`index=False`. Image i of a run gets seed + i, so every image can be made again on its own; a rerun
makes only the images `out` lacks.""",
        ),
    )
}
