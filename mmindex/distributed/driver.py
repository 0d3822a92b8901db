"""The driver of a sharded run: plan, dispatch shards to an engine, commit groups of results.

Holds the table's write lock for the whole run, like a local run. Memory stays bounded: the listing is
read ahead by at most `lookahead` shards, and only the uncommitted group's results (fragment
metadata and failure records, not rows) are kept.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from datetime import UTC, datetime

from mmindex.distributed.commit import Committer
from mmindex.distributed.engines import Engine, engine_for
from mmindex.distributed.shards import Shard, cut_shards
from mmindex.distributed.worker import ShardResult
from mmindex.errors import TableError
from mmindex.ingest.backfill import caption_targets, stage_failures
from mmindex.ingest.pipeline import ReadAhead, _is_partial, _timed_scan
from mmindex.ingest.plan import plan
from mmindex.ingest.reembed import (
    REEMBED_STAGE,
    failed_ids,
    finish_generation,
    generation_name,
    start_generation,
    targets,
)
from mmindex.ingest.sources.base import SourceItem
from mmindex.jobs.prepare import PreparedCaption, PreparedIndex, PreparedReembed
from mmindex.jobs.spec import CaptionJob, IndexJob, ReembedJob
from mmindex.models.resolve import resolve_model
from mmindex.report import ProgressUpdate, RunReport, UnexpectedErrors
from mmindex.schema import SEVERITY_ERROR
from mmindex.store.generations import Generation, generations
from mmindex.store.staging import RUN_ID_TIME
from mmindex.store.state import SeenIds
from mmindex.store.upkeep import finish_run
from mmindex.store.writer import open_writer

LOOKAHEAD_SHARDS = 8


def new_run_id() -> str:
    """The run's start time (maintenance reads it to sweep a crashed run's staging) and a nonce."""
    return datetime.now(UTC).strftime(RUN_ID_TIME) + "-" + uuid.uuid4().hex[:8]


def resolved(job: IndexJob, prepared: PreparedIndex) -> IndexJob:
    """The job as workers must see it: the database, table and model the driver resolved, so a
    worker's own environment cannot point it elsewhere."""
    settings = job.settings()
    return replace(job, db=settings.db, table=settings.table, model=prepared.models.embed_model)


def run_sharded(
    job: IndexJob,
    prepared: PreparedIndex,
    *,
    engine: Engine | None = None,
    progress: Callable[[ProgressUpdate], None] | None = None,
) -> RunReport:
    """Index `prepared.source` through shards run by `engine` (default: the one `job.runner` names)."""
    run_id = new_run_id()
    store, options = prepared.store, prepared.options
    report = RunReport(kind="index", source=prepared.source.describe(), table=store.describe())
    started = time.perf_counter()
    engine = engine or engine_for(resolved(job, prepared), run_id)
    try:
        with report.timed("start", 0):
            info = engine.start()
        report.models = info.compute
        report.notes.extend(info.notes)
        with open_writer(store, options.lock_timeout) as writer:
            writer.prepare(info.model_id, info.dim)
            with report.timed("list", 0):
                state = store.load_state()
            seen = SeenIds() if options.prune else None
            planned = plan(
                _timed_scan(prepared.source, report),
                state,
                report,
                retry_failed=options.retry_failed,
                seen=seen.add if seen is not None else None,
            )
            committer = Committer(writer, run_id)
            shards = cut_shards(planned, state, job.shard_size)
            _dispatch(
                engine, shards, committer, report, job.commit_every, UnexpectedErrors(state.retried), progress
            )
            if options.prune and seen is not None:
                if report.listing_incomplete or _is_partial(prepared.source):
                    report.notes.append(
                        "prune skipped: the listing was filtered or had errors, so absence proves nothing"
                    )
                else:
                    with report.timed("write", 0):
                        report.pruned = writer.prune(prepared.source.root, seen)
            committer.close()
            finish_run(writer, report, embed_mode=info.embed_mode)
    finally:
        engine.close()
    report.notes.append(f"run id {run_id}")
    report.seconds = time.perf_counter() - started
    return report


def run_sharded_captions(
    job: CaptionJob,
    prepared: PreparedCaption,
    *,
    engine: Engine | None = None,
    progress: Callable[[ProgressUpdate], None] | None = None,
) -> RunReport:
    """A caption backfill through shards: the driver selects the rows (as a local backfill does) and
    commits; workers read, caption and embed."""
    run_id = new_run_id()
    store, options = prepared.store, prepared.options
    report = RunReport(kind="caption", source=store.describe(), table=store.describe())
    started = time.perf_counter()
    settings = job.settings()
    engine = engine or engine_for(replace(job, db=settings.db, table=settings.table), run_id)
    try:
        with report.timed("start", 0):
            info = engine.start()
        report.models = info.compute
        with open_writer(store, options.lock_timeout) as writer:
            if store.info().model != info.model_id:
                raise TableError(
                    f"table {store.describe()} was built with {store.info().model!r}, not {info.model_id!r}"
                )
            targets = caption_targets(store, info.caption_model or "", options)
            shards = (
                Shard.of(items, frozenset(item.id for item in items))
                for items in _regrouped(targets, job.shard_size, report)
            )
            committer = Committer(writer, run_id, partial="captions")
            guard = UnexpectedErrors(stage_failures(store, "caption")[1])
            _dispatch(engine, shards, committer, report, job.commit_every, guard, progress)
            committer.close()
            finish_run(writer, report)
    finally:
        engine.close()
    report.notes.append(f"captions by {info.caption_model}; run id {run_id}")
    report.seconds = time.perf_counter() - started
    return report


def run_sharded_reembed(
    job: ReembedJob,
    prepared: PreparedReembed,
    *,
    engine: Engine | None = None,
    progress: Callable[[ProgressUpdate], None] | None = None,
) -> tuple[RunReport, Generation]:
    """A re-embedding through shards: the driver selects the rows still lacking the generation and
    commits (one conditional update per group); workers read and embed. Passes repeat, each under the
    table's lock, until rows indexed meanwhile are caught up (mmindex.ingest.reembed)."""
    run_id = new_run_id()
    store, options = prepared.store, prepared.options
    report = RunReport(kind="reembed", source=f"{store.describe()} ({options.from_})", table=store.describe())
    started = time.perf_counter()
    known = {g.name: g for g in generations(store.lancedb_table().schema)}
    name = generation_name(known, resolve_model(job.model).name, job.name)
    settings = job.settings()
    engine = engine or engine_for(replace(job, db=settings.db, table=settings.table, name=name), run_id)
    skipped: set[str] = set()  # rows that failed: tried once per run
    try:
        with report.timed("start", 0):
            info = engine.start()
        report.models = info.compute
        generation = start_generation(store, info.model_id, info.dim, replace(options, name=name))
        while options.limit is None or report.scanned < options.limit:
            before = report.scanned
            left = None if options.limit is None else options.limit - report.scanned
            with open_writer(store, options.lock_timeout) as writer:
                chunks = (
                    [item for item, _ in chunk]
                    for chunk in targets(store, generation, options, skipped, left)
                )
                shards = (
                    Shard.of(items, frozenset(i.id for i in items))
                    for items in _regrouped(chunks, job.shard_size, report)
                )
                committer = Committer(writer, run_id, partial="reembed")
                guard = UnexpectedErrors(stage_failures(store, REEMBED_STAGE)[1])
                _dispatch(engine, shards, committer, report, job.commit_every, guard, progress)
                committer.close()
            if report.scanned == before:  # a pass found nothing left
                break
            skipped = failed_ids(store)
    finally:
        engine.close()
    generation, actions = finish_generation(store, generation, info.embed_mode)
    report.notes += [*actions, f"run id {run_id}"]
    report.seconds = time.perf_counter() - started
    return report, generation


def _dispatch(
    engine: Engine,
    shards: Iterable[Shard],
    committer: Committer,
    report: RunReport,
    commit_every: int,
    guard: UnexpectedErrors,
    progress: Callable[[ProgressUpdate], None] | None,
) -> None:
    """Map shards through the engine and commit every `commit_every` results (and what is left, even
    when a shard failed for good)."""
    group: list[tuple[Shard, ShardResult]] = []
    number, done = 0, 0

    def commit() -> None:
        nonlocal group, number
        with report.timed("commit", sum(len(shard) for shard, _ in group)):
            outcome = committer.commit(group, number)
        report.counters["commits"] += 1
        if outcome.already_committed:
            report.notes.append(f"group {number} was already committed (a retried commit)")
        group, number = [], number + 1

    with ReadAhead(shards, LOOKAHEAD_SHARDS) as listing:
        try:
            for shard, result in engine.map(_counted(listing, report)):
                _absorb(report, result)
                scanned = {f.id for f in shard.scan_failures}
                guard.judge([i for i in result.done_ids if i not in scanned], result.failures)
                group.append((shard, result))
                done += shard.count
                if len(group) >= commit_every:
                    commit()
                if progress is not None:
                    planned = report.new + report.changed if report.kind == "index" else done
                    progress(ProgressUpdate(done, planned, report.scanned, listing.finished))
        finally:
            if group:
                commit()


def _regrouped(
    batches: Iterable[list[SourceItem]], size: int, report: RunReport
) -> Iterator[list[SourceItem]]:
    """Batches of items regrouped into lists of `size` (the backfill's selection comes in small batches)."""
    pending: list[SourceItem] = []
    for batch in batches:
        report.scanned += len(batch)
        pending.extend(batch)
        while len(pending) >= size:
            yield pending[:size]
            pending = pending[size:]
    if pending:
        yield pending


def _counted(shards: Iterable[Shard], report: RunReport) -> Iterator[Shard]:
    for shard in shards:
        report.counters["shards"] += 1
        yield shard


def _absorb(report: RunReport, result: ShardResult) -> None:
    """Add a shard's figures to the run's report."""
    for stage, seconds in result.stage_seconds.items():
        report.add_time(stage, seconds, result.stage_items.get(stage, 0))
    if report.kind == "index":  # a caption backfill counts captions, not rows
        report.indexed += result.appended + result.upserted
    report.indexed += result.counters.get("embedded", 0)  # a re-embedding counts the rows it embedded
    report.captioned += result.counters.get("captioned", 0)
    report.unexpected.update(result.unexpected)
    report.notes += [note for note in result.notes if note not in report.notes]
    for failure in result.failures:
        if failure.stage != "scan":
            report.record_failure(
                failure.key, failure.stage, failure.error, fatal=failure.severity == SEVERITY_ERROR
            )
