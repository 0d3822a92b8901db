"""The shard function: load, caption and embed one shard's items, and stage its rows as Lance data
beside the table without touching the table's manifest.

New items become fragments written into the table's data directory (`write_fragments`), committed
later by the driver's Append; items that already have a row go to a small staging dataset, applied
later by one upsert. Either way nothing is visible until the driver commits, and the files of an
attempt that is never committed are unreferenced garbage that maintenance removes.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import pyarrow as pa

from mmindex.distributed.shards import Shard
from mmindex.errors import MMIndexError
from mmindex.ingest.backfill import inherit_captions
from mmindex.ingest.pipeline import load_pools, overlapped
from mmindex.ingest.steps import (
    EmbeddedBatch,
    Preprocessor,
    caption_batch,
    embed_batch,
    embed_role,
    load_batch,
)
from mmindex.ingest.thumbnail import THUMBNAIL_ROLE
from mmindex.jobs.spec import CaptionJob, IndexJob, ReembedJob
from mmindex.models.compiled import Compilable, CompilePolicy
from mmindex.models.precision import detected_cpu_kind
from mmindex.query.search import Searcher
from mmindex.report import RunReport
from mmindex.schema import FailureRecord
from mmindex.store.staging import staging_uri
from mmindex.store.writer import conform_rows

# fault injection for the tests (see _injected_faults)
CRASH_ONCE = "MMINDEX_TEST_CRASH_ONCE"
SHARD_DELAY = "MMINDEX_TEST_SHARD_DELAY"


@dataclass(frozen=True)
class ModelInfo:
    """What the driver needs of the workers' model before it creates the table."""

    model_id: str
    dim: int
    compute: str
    caption_model: str | None = None
    embed_mode: str = ""  # what the rows record (mmindex.schema: embed_mode)
    cpu_kind: str = ""  # the worker's own CPU kind, whatever kind `auto` followed
    notes: list[str] = field(default_factory=list)


@dataclass
class ShardResult:
    """A shard's outcome, small enough to ship to the driver: staged data is referenced, not carried."""

    shard_id: str
    attempt: str
    done_ids: list[str]
    failures: list[FailureRecord]
    fragments: list[dict[str, Any]] = field(default_factory=list)  # lance FragmentMetadata JSON
    appended: int = 0
    upsert_uri: str | None = None  # a staging dataset of rows replacing existing ones
    upserted: int = 0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    stage_items: dict[str, int] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    unexpected: dict[str, int] = field(default_factory=dict)  # "stage: ErrorType" -> items
    notes: list[str] = field(default_factory=list)  # for the run report (say, what torch.compile did)
    seconds: float = 0.0


def table_uri(db_uri: str, table: str) -> str:
    """Where LanceDB keeps a table's dataset."""
    return f"{db_uri.rstrip('/')}/{table}.lance"


class ShardWorker:
    """Holds the models (loaded once, at construction) and runs shards of one index job."""

    def __init__(self, job: IndexJob, run_id: str) -> None:
        from mmindex.jobs.prepare import prepare_index
        from mmindex.models.choice import load_captioner, load_embedder

        self.run_id = run_id
        self.prepared = prepare_index(job, check=False)
        self.embedder = load_embedder(self.prepared.models)
        self.captioner = load_captioner(self.prepared.models) if self.prepared.caption is not None else None
        alone = self.captioner is None and self.prepared.options.thumbnails is None
        self.preprocessors: dict[str, Preprocessor] = {"embed": embed_role(self.embedder, alone=alone)}
        if self.captioner is not None:
            self.preprocessors["caption"] = self.captioner.preprocess
        if self.prepared.options.thumbnails is not None:
            self.preprocessors[THUMBNAIL_ROLE] = self.prepared.options.thumbnails
        store = self.prepared.store
        self.table_uri = table_uri(store.db_uri, store.table_name)
        self.storage_options = store.storage_options or None
        self._schema: pa.Schema | None = None
        options = self.prepared.options
        # one policy for the worker's life: a compiled image tower serves every shard it runs
        self.compiling = (
            CompilePolicy(options.compile, options.batch_size)
            if hasattr(self.embedder, "compile") and options.compile != "off"
            else None
        )

    def _attach(self, store: Any) -> None:
        """Where this worker stages its results: the store's table."""
        self.table_uri = table_uri(store.db_uri, store.table_name)
        self.storage_options = store.storage_options or None
        self._schema = None

    def _stage_partial(self, store: Any, shard: Shard, rows: pa.Table, result: ShardResult) -> None:
        """Stage partial rows (updates of existing ones) for the driver's commit of the shard's group."""
        import lance

        uri = staging_uri(store.db_uri, store.table_name, self.run_id, f"{shard.id}-{result.attempt}")
        lance.write_dataset(rows, uri, storage_options=self.storage_options)
        result.upsert_uri, result.upserted = uri, rows.num_rows

    def info(self) -> ModelInfo:
        models = [m.compute for m in (self.embedder, self.captioner) if m is not None]
        captioner = self.captioner.model_id if self.captioner is not None else None
        return ModelInfo(
            self.embedder.model_id,
            self.embedder.dim,
            "; ".join(models),
            captioner,
            self.embedder.embed_mode,
            detected_cpu_kind(),
        )

    def schema(self) -> pa.Schema:
        if self._schema is None:  # read once the driver has created the table
            import lance

            self._schema = lance.dataset(self.table_uri, storage_options=self.storage_options).schema
        return self._schema

    def run(self, shard: Shard) -> ShardResult:
        started = time.perf_counter()
        _injected_faults()
        report = RunReport(kind="index")
        embedded = self._embed(shard, report)
        failures = list(shard.scan_failures) + embedded.failures
        done_ids = [f.id for f in shard.scan_failures] + embedded.done_ids
        result = ShardResult(shard.id, uuid.uuid4().hex[:12], done_ids, failures)
        if embedded.rows is not None and embedded.rows.num_rows:
            with report.timed("write", embedded.rows.num_rows):
                self._stage(shard, conform_rows(embedded.rows, self.schema()), result)
        result.stage_seconds, result.stage_items = report.stage_seconds, report.stage_items
        result.counters = dict(report.counters) | {"captioned": report.captioned}
        result.unexpected = dict(report.unexpected)
        if self.compiling is not None:
            result.notes, self.compiling.notes = self.compiling.notes, []
        result.seconds = time.perf_counter() - started
        return result

    def _embed(self, shard: Shard, report: RunReport) -> EmbeddedBatch:
        options, source = self.prepared.options, self.prepared.source
        donor = self.prepared.caption_donor
        size = max(options.batch_size, 1)
        batches = [(start, min(start + size, shard.count)) for start in range(0, shard.count, size)]
        parts: list[EmbeddedBatch] = []
        with load_pools(options.workers, getattr(source, "fetch_concurrency", 1)) as pools:

            def load(bounds: tuple[int, int]) -> Any:
                items = shard.items_in(*bounds)
                return load_batch(source, items, self.preprocessors, report, *pools)

            for _, loaded in overlapped(iter(batches), load, options.prefetch):
                if donor is not None:
                    loaded = inherit_captions(donor, loaded, report)
                if self.captioner is not None:
                    loaded = caption_batch(self.captioner, loaded, report, options.caption_batch_size)
                embed_started = time.perf_counter()
                parts.append(embed_batch(self.embedder, loaded, report, options.batch_size))
                if self.compiling is not None:  # the work left is what this worker knows of: its shard
                    left = shard.count - sum(len(part.done_ids) for part in parts)
                    seconds = time.perf_counter() - embed_started
                    self.compiling.after_batch(
                        cast(Compilable, self.embedder), len(loaded.items), seconds, left
                    )
        tables = [part.rows for part in parts if part.rows is not None]
        return EmbeddedBatch(
            pa.concat_tables(tables, promote_options="permissive") if tables else None,
            [failure for part in parts for failure in part.failures],
            [row_id for part in parts for row_id in part.done_ids],
        )

    def _stage(self, shard: Shard, rows: pa.Table, result: ShardResult) -> None:
        import lance
        from lance.fragment import write_fragments

        rows = null_bad_vectors(rows)
        replacing = np.array([row_id in shard.replaces for row_id in rows.column("id").to_pylist()])
        new_rows, old_rows = rows.filter(pa.array(~replacing)), rows.filter(pa.array(replacing))
        if new_rows.num_rows:
            fragments = write_fragments(
                new_rows, self.table_uri, schema=rows.schema, storage_options=self.storage_options
            )
            result.fragments = [json.loads(json.dumps(f.to_json())) for f in fragments]
            result.appended = new_rows.num_rows
        if old_rows.num_rows:
            store = self.prepared.store
            uri = staging_uri(store.db_uri, store.table_name, self.run_id, f"{shard.id}-{result.attempt}")
            lance.write_dataset(old_rows, uri, storage_options=self.storage_options)
            result.upsert_uri, result.upserted = uri, old_rows.num_rows


class CaptionShardWorker(ShardWorker):
    """Runs shards of a caption backfill: each item (an indexed row) is read again by uri, captioned,
    and its caption embedded; the partial rows (caption, provenance, text embedding) are staged for
    the driver's one update per group."""

    def __init__(self, job: CaptionJob, run_id: str) -> None:
        from mmindex.jobs.prepare import prepare_caption
        from mmindex.models.choice import load_captioner, load_embedder

        self.run_id = run_id
        self.caption = prepare_caption(job, check=False)
        self.embedder = load_embedder(self.caption.models)
        self.captioner = load_captioner(self.caption.models)
        self.preprocessors = {"caption": self.captioner.preprocess}
        self._attach(self.caption.store)

    def run(self, shard: Shard) -> ShardResult:
        from mmindex.ingest.backfill import embed_caption_rows

        started = time.perf_counter()
        _injected_faults()
        report = RunReport(kind="caption")
        options, reader = self.caption.options, self.caption.reader
        assert self.captioner is not None
        parts: list[EmbeddedBatch] = []
        size = max(options.batch_size, 1)
        batches = [(start, min(start + size, shard.count)) for start in range(0, shard.count, size)]
        with load_pools(options.workers, getattr(reader, "fetch_concurrency", 1)) as pools:

            def load(bounds: tuple[int, int]) -> Any:
                return load_batch(reader, shard.items_in(*bounds), self.preprocessors, report, *pools)

            for _, loaded in overlapped(iter(batches), load, options.prefetch):
                captioned = caption_batch(self.captioner, loaded, report)
                parts.append(embed_caption_rows(self.embedder, captioned, report))
        tables = [part.rows for part in parts if part.rows is not None]
        done = [row_id for part in parts for row_id in part.done_ids]
        result = ShardResult(shard.id, uuid.uuid4().hex[:12], done, [f for p in parts for f in p.failures])
        if tables:
            rows = pa.concat_tables(tables)
            with report.timed("write", rows.num_rows):
                self._stage_partial(self.caption.store, shard, null_bad_vectors(rows), result)
        result.stage_seconds, result.stage_items = report.stage_seconds, report.stage_items
        result.counters = dict(report.counters) | {"captioned": report.captioned}
        result.unexpected = dict(report.unexpected)
        result.seconds = time.perf_counter() - started
        return result


def null_bad_vectors(rows: pa.Table) -> pa.Table:
    """Vectors with NaN or infinite values become null (as LanceDB's on_bad_vectors="null" does)."""
    for name in ("image_embedding", "text_embedding"):
        if name not in rows.column_names:
            continue
        column = rows.column(name).combine_chunks()
        dim = column.type.list_size
        values = column.values.to_numpy(zero_copy_only=False).reshape(-1, dim)
        valid = np.asarray(column.is_valid(), dtype=bool)
        bad = valid & ~np.isfinite(values).all(axis=1)
        if bad.any():
            fixed = pa.FixedSizeListArray.from_arrays(column.values, dim, mask=pa.array(~(valid & ~bad)))
            rows = rows.set_column(rows.schema.get_field_index(name), rows.schema.field(name), fixed)
    return rows


def _injected_faults() -> None:
    """For the tests: MMINDEX_TEST_SHARD_DELAY=SECONDS slows every shard (a run to interrupt), and with
    MMINDEX_TEST_CRASH_ONCE=PATH the first shard run while PATH does not exist creates it and kills
    its worker process, as a lost machine would."""
    time.sleep(float(os.environ.get(SHARD_DELAY) or 0))
    marker = os.environ.get(CRASH_ONCE)
    if marker and not os.path.exists(marker):
        with open(marker, "w") as handle:
            handle.write(str(os.getpid()))
        os._exit(17)


class ReembedShardWorker(ShardWorker):
    """Runs shards of a re-embedding: each item (an indexed row) is read again (by uri, or its stored
    thumbnail), embedded with the new model with its stored caption, and the generation's columns
    are staged for the driver's one conditional update per group (mmindex.ingest.reembed)."""

    def __init__(self, job: ReembedJob, run_id: str) -> None:
        from mmindex.jobs.prepare import prepare_reembed
        from mmindex.models.choice import load_embedder

        self.run_id = run_id
        self.reembed = prepare_reembed(job)
        self.embedder = load_embedder(self.reembed.models)
        self.captioner = None
        self.generation_name = job.name
        self._attach(self.reembed.store)

    def run(self, shard: Shard) -> ShardResult:
        from mmindex.ingest.reembed import TARGET_COLUMNS, embedded_rows, reader_for
        from mmindex.store.generations import generation_named

        started = time.perf_counter()
        _injected_faults()
        report = RunReport(kind="reembed")
        store, options = self.reembed.store, self.reembed.options
        assert self.generation_name is not None, "the driver names the generation"
        generation = generation_named(store.lancedb_table().schema, self.generation_name)
        columns = TARGET_COLUMNS + (["thumbnail"] if options.from_ == "thumbnails" else [])
        parts: list[tuple[pa.Table | None, list[FailureRecord]]] = []
        size = max(options.batch_size, 1)
        preprocessors = {"embed": self.embedder.preprocess}
        with load_pools(options.workers, getattr(self.reembed.reader, "fetch_concurrency", 1)) as pools:
            for start in range(0, shard.count, size):
                items = shard.items_in(start, min(start + size, shard.count))
                stored = {row["id"]: row for row in Searcher(store).rows([i.id for i in items], columns)}
                chunk = [(item, stored[item.id]) for item in items if item.id in stored]
                reader = reader_for(chunk, self.reembed.reader, options.from_)
                loaded = load_batch(reader, [item for item, _ in chunk], preprocessors, report, *pools)  # type: ignore[arg-type]
                parts.append(embedded_rows(self.embedder, chunk, loaded, generation, report))
        tables = [rows for rows, _ in parts if rows is not None]
        result = ShardResult(
            shard.id, uuid.uuid4().hex[:12], sorted(shard.ids), [f for _, fs in parts for f in fs]
        )
        if tables:
            rows = pa.concat_tables(tables)
            with report.timed("write", rows.num_rows):
                self._stage_partial(store, shard, rows, result)
        result.stage_seconds, result.stage_items = report.stage_seconds, report.stage_items
        result.counters = {"embedded": sum(t.num_rows for t in tables)}
        result.unexpected = dict(report.unexpected)
        result.seconds = time.perf_counter() - started
        return result


class ShardFailed(MMIndexError):
    """A shard failed on every attempt (not an item's problem: those are failure rows)."""


def worker_class(job: IndexJob | CaptionJob | ReembedJob) -> type[ShardWorker]:
    """The shard function's holder for a job: indexing, a caption backfill or a re-embedding."""
    if isinstance(job, ReembedJob):
        return ReembedShardWorker
    return CaptionShardWorker if isinstance(job, CaptionJob) else ShardWorker
