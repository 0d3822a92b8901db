"""The indexing loop: list -> plan -> load (read + decode + preprocess) -> [caption] -> embed -> write.

The steps are plain functions of one batch (mmindex.ingest.steps), so a notebook can call them one by one
and the Prefect flow can wrap each in a task (see `Steps`). `run_index` chains them with the next
batch being loaded in a background thread while the model works on the current one, and every write
goes through one writer.
"""

from __future__ import annotations

import contextlib
import contextvars
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar, cast

import pyarrow as pa

from mmindex.config import CPU_BATCH_SIZE, CPU_CAPTION_BATCH_SIZE, MIN_CHUNK_SIZE, WRITE_ROWS, WRITE_SECONDS
from mmindex.ingest.plan import chunks, plan
from mmindex.ingest.sources.base import (
    ScanFilter,
    ScanProblem,
    Source,
    SourceItem,
)
from mmindex.ingest.steps import (
    CaptionModel,
    EmbeddedBatch,
    Embedder,
    LoadedBatch,
    Preprocessor,
    caption_batch,
    embed_batch,
    embed_role,
    load_batch,
)
from mmindex.ingest.thumbnail import THUMBNAIL_ROLE, Thumbnailer
from mmindex.models.compiled import Compilable, CompilePolicy
from mmindex.report import ProgressUpdate, RunReport, UnexpectedErrors
from mmindex.schema import SEVERITY_ERROR, FailureRecord
from mmindex.store.reader import Store
from mmindex.store.state import SeenIds
from mmindex.store.upkeep import finish_run
from mmindex.store.writer import open_writer

T = TypeVar("T")
B = TypeVar("B")
L = TypeVar("L")


CaptionDonor = Callable[[LoadedBatch, RunReport], LoadedBatch]


class Writer(Protocol):
    def write(
        self, rows: pa.Table | None, failures: Sequence[FailureRecord], done_ids: Sequence[str]
    ) -> None: ...


@dataclass
class IndexOptions:
    batch_size: int = CPU_BATCH_SIZE
    workers: int = 1
    prefetch: int = 1  # chunks loaded ahead while the model works on the current one
    prune: bool = False
    retry_failed: bool = False
    lookahead: int = 50_000
    chunk_size: int = MIN_CHUNK_SIZE  # items per step call (one Prefect task run each)
    caption_batch_size: int = CPU_CAPTION_BATCH_SIZE
    write_rows: int = WRITE_ROWS
    write_seconds: float = WRITE_SECONDS
    lock_timeout: float | None = None  # wait this long for another run writing the table; None: no limit
    thumbnails: Thumbnailer | None = field(default_factory=Thumbnailer)  # None: store no previews
    compile: str = "auto"  # torch.compile the image tower: auto | on | off (mmindex.models.compiled)


def write_batch(writer: Writer, batch: EmbeddedBatch, report: RunReport) -> None:
    """Queue a batch's rows and failures with the run's single writer."""
    with report.timed("write", len(batch.done_ids)):
        writer.write(batch.rows, batch.failures, batch.done_ids)
    report.indexed += 0 if batch.rows is None else batch.rows.num_rows


@dataclass
class Steps:
    """The stage callables `run_index` chains. The Prefect flow passes task-wrapped versions."""

    load: Callable[..., LoadedBatch] = load_batch
    caption: Callable[..., LoadedBatch] = caption_batch
    embed: Callable[..., EmbeddedBatch] = embed_batch
    write: Callable[..., None] = write_batch


def run_index(
    source: Source,
    embedder: Embedder,
    store: Store,
    options: IndexOptions | None = None,
    *,
    captioner: CaptionModel | None = None,
    caption_donor: CaptionDonor | None = None,
    steps: Steps | None = None,
    progress: Callable[[ProgressUpdate], None] | None = None,
    report: RunReport | None = None,
) -> RunReport:
    """Index `source` into `store` with `embedder`; returns the run's report. With a `captioner`,
    images without a caption get a generated one in the same pass (each image is decoded once);
    `caption_donor` can first fill in captions generated earlier (see backfill.inherit_captions).

    Safe to kill at any moment: finished batches are committed, and the next run skips them.
    """
    options = options or IndexOptions()
    steps = steps or Steps()
    report = report or RunReport(kind="index", source=source.describe(), table=store.describe())
    report.models = "; ".join(model.compute for model in (embedder, captioner) if model is not None)
    with open_writer(store, options.lock_timeout) as writer:
        started = time.perf_counter()
        writer.prepare(embedder.model_id, embedder.dim)
        with report.timed("list", 0):
            state = store.load_state()
        seen = SeenIds()
        guard = UnexpectedErrors(state.retried)
        planned = plan(
            _timed_scan(source, report),
            state,
            report,
            retry_failed=options.retry_failed,
            seen=seen.add if options.prune else None,
        )
        alone = captioner is None and options.thumbnails is None
        preprocessors: dict[str, Preprocessor] = {"embed": embed_role(embedder, alone=alone)}
        if captioner is not None:
            preprocessors["caption"] = captioner.preprocess
        if options.thumbnails is not None:
            preprocessors[THUMBNAIL_ROLE] = options.thumbnails
        done = 0
        compiling = (
            CompilePolicy(options.compile, options.batch_size, report.notes)
            if hasattr(embedder, "compile") and options.compile != "off"
            else None
        )
        with (
            ReadAhead(planned, options.lookahead) as listing,
            writer.buffer(flush_rows=options.write_rows, flush_seconds=options.write_seconds) as rows,
            load_pools(options.workers, getattr(source, "fetch_concurrency", 1)) as pools,
        ):

            def load(batch: tuple[list[SourceItem], list[FailureRecord]]) -> LoadedBatch:
                return steps.load(source, batch[0], preprocessors, report, *pools)

            for (_, scan_failures), loaded in overlapped(
                chunks(listing, max(options.chunk_size, options.batch_size)), load, options.prefetch
            ):
                loaded.failures.extend(scan_failures)
                if caption_donor is not None:
                    loaded = caption_donor(loaded, report)
                if captioner is not None:
                    loaded = steps.caption(captioner, loaded, report, options.caption_batch_size)
                embed_started = time.perf_counter()
                embedded = steps.embed(embedder, loaded, report, options.batch_size)
                if compiling is not None:
                    left = report.new + report.changed - done - len(embedded.done_ids)
                    seconds = time.perf_counter() - embed_started
                    compiling.after_batch(cast(Compilable, embedder), len(loaded.items), seconds, left)
                _count_failures(embedded, report)
                steps.write(rows, embedded, report)
                scanned_ids = {failure.id for failure in scan_failures}
                attempted = [row_id for row_id in embedded.done_ids if row_id not in scanned_ids]
                guard.judge(attempted, embedded.failures)
                done += len(embedded.done_ids) - len(scan_failures)
                if progress is not None:
                    progress(
                        ProgressUpdate(done, report.new + report.changed, report.scanned, listing.finished)
                    )
        if options.prune:
            if report.listing_incomplete or _is_partial(source):
                report.notes.append(
                    "prune skipped: the listing was filtered or had errors, so absence proves nothing"
                )
            else:
                with report.timed("write", 0):
                    report.pruned = writer.prune(source.root, seen)
        finish_run(writer, report, embed_mode=embedder.embed_mode)
        report.seconds = time.perf_counter() - started
        return report


@contextlib.contextmanager
def load_pools(decode_workers: int, fetch_threads: int) -> Iterator[tuple[Executor | None, Executor | None]]:
    """(decode pool, fetch pool) for `load_batch`; None where one thread is all that helps."""
    with contextlib.ExitStack() as stack:
        decode_pool = (
            stack.enter_context(ThreadPoolExecutor(decode_workers, "mmindex-decode"))
            if decode_workers > 1
            else None
        )
        fetch_pool = (
            stack.enter_context(ThreadPoolExecutor(fetch_threads, "mmindex-fetch"))
            if fetch_threads > 1
            else None
        )
        yield decode_pool, fetch_pool


def overlapped(batches: Iterator[B], load: Callable[[B], L], prefetch: int = 2) -> Iterator[tuple[B, L]]:
    """Yield `(batch, load(batch))` in order while up to `prefetch` later batches load in a background
    thread, so reading and decoding overlap with the model's work on the current batch."""
    pending: deque[tuple[B, Future[L]]] = deque()
    with ThreadPoolExecutor(1, "mmindex-load") as loader:

        def submit_next() -> None:
            batch = next(batches, None)
            if batch is not None:
                context = contextvars.copy_context()  # Prefect links task runs in that thread to the flow
                pending.append((batch, loader.submit(context.run, load, batch)))

        for _ in range(max(1, prefetch)):
            submit_next()
        while pending:
            batch, future = pending.popleft()
            result = future.result()
            submit_next()
            yield batch, result


class ReadAhead(Generic[T]):
    """Iterate `source` in a background thread, up to `limit` items ahead of the consumer.

    Listing (a directory walk, S3 pages) then overlaps with the work on what was listed, and a
    progress display learns the size of the job early. Exceptions reach the consumer.
    """

    _END = object()

    def __init__(self, source: Iterable[T], limit: int) -> None:
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(1, limit))
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self.finished = False
        self._thread = threading.Thread(
            target=self._produce, args=(source,), name="mmindex-list", daemon=True
        )

    def __enter__(self) -> ReadAhead[T]:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.05)

    def _produce(self, source: Iterable[T]) -> None:
        try:
            for item in source:
                if not self._put(item):
                    return
            self.finished = True
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._error = exc
        self._put(self._END)

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            with contextlib.suppress(queue.Full):
                self._queue.put(item, timeout=0.1)
                return True
        return False

    def __iter__(self) -> Iterator[T]:
        while True:
            item = self._queue.get()
            if item is self._END:
                if self._error is not None:
                    raise self._error
                return
            yield item  # type: ignore[misc]


def _is_partial(source: Source) -> bool:
    scan_filter = getattr(source, "scan_filter", None)
    return isinstance(scan_filter, ScanFilter) and scan_filter.is_partial


def _count_failures(batch: EmbeddedBatch, report: RunReport) -> None:
    for failure in batch.failures:
        if failure.stage != "scan":
            report.record_failure(
                failure.key, failure.stage, failure.error, fatal=failure.severity == SEVERITY_ERROR
            )


def _timed_scan(source: Source, report: RunReport) -> Iterator[SourceItem | ScanProblem]:
    iterator = iter(source.scan())
    while True:
        start = time.perf_counter()
        entry = next(iterator, None)
        report.add_time("list", time.perf_counter() - start, 0 if entry is None else 1)
        if entry is None:
            return
        yield entry
