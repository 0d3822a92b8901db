"""The indexing loop: list -> plan -> load (read + decode + preprocess) -> embed -> write.

Each stage is a plain function of one batch, so a notebook can call them one by one and the Prefect
flow can wrap each in a task (see `Stages`). `run_index` chains them with one batch being loaded in a
background thread while the model embeds the previous one, and all writes go through one writer.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Generic, Protocol, TypeVar

import numpy as np
import pyarrow as pa

from mmindex.errors import ItemError
from mmindex.images import decode
from mmindex.report import RunReport
from mmindex.schema import CAPTION_HUMAN, SEVERITY_ERROR, SEVERITY_WARNING
from mmindex.sources.base import ScanFilter, ScanProblem, Source, SourceItem
from mmindex.sources.sidecar import parse_sidecar
from mmindex.state import FailureRecord, IndexedState, SeenIds


class Preprocessor(Protocol):
    """Turns an upright RGB image into a model's input array."""

    @property
    def min_side(self) -> int: ...

    def __call__(self, image: object) -> np.ndarray: ...


class Embedder(Protocol):
    @property
    def model_id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    @property
    def preprocess(self) -> Preprocessor: ...

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray: ...

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...


class Writer(Protocol):
    def write(
        self,
        rows: pa.Table | None,
        failures: Sequence[FailureRecord],
        done_ids: Sequence[str],
        stages: Sequence[str],
    ) -> None: ...


@dataclass
class LoadedItem:
    item: SourceItem
    pixels: dict[str, np.ndarray]
    width: int
    height: int
    format: str
    sha256: str
    caption: str | None
    warnings: list[FailureRecord] = field(default_factory=list)


@dataclass
class LoadedBatch:
    items: list[LoadedItem]
    failures: list[FailureRecord]


@dataclass
class EmbeddedBatch:
    rows: pa.Table | None
    failures: list[FailureRecord]
    done_ids: list[str]


@dataclass
class IndexOptions:
    batch_size: int = 32
    workers: int = 1
    prefetch: int = 2
    prune: bool = False
    retry_failed: bool = False
    lookahead: int = 50_000
    write_rows: int = 4096
    write_seconds: float = 5.0


T = TypeVar("T")

INDEX_STAGES = ("scan", "fetch", "sidecar", "decode", "embed")


def plan(
    scanned: Iterable[SourceItem | ScanProblem],
    state: IndexedState,
    report: RunReport,
    *,
    retry_failed: bool = False,
    seen: Callable[[str], None] | None = None,
) -> Iterator[SourceItem | FailureRecord]:
    """Yield the items that need work (new or changed) and scan problems as failure records;
    count the rest in `report`. `seen` is told every listed id (for pruning)."""
    for entry in scanned:
        report.scanned += 1
        if seen is not None:
            seen(entry.id)
        if isinstance(entry, ScanProblem):
            report.record_failure(entry.key, "scan", entry.error)
            yield FailureRecord.of(entry.id, entry.uri, entry.key, "scan", entry.error, retryable=True)
            continue
        status = state.status(entry.id, entry.fingerprint)
        if status == "unchanged":
            report.unchanged += 1
        elif status == "known_failure" and not retry_failed:
            report.known_failures += 1
        else:
            if status == "changed":
                report.changed += 1
            else:
                report.new += 1
            yield entry


def load_item(
    source: Source, item: SourceItem, preprocessors: dict[str, Preprocessor], report: RunReport
) -> LoadedItem | FailureRecord:
    """Read, decode and preprocess one item; any per-item problem comes back as a FailureRecord."""
    stage = "fetch"
    try:
        with report.timed("read", 1):
            data = source.read(item)
            sidecar_bytes = source.read_sidecar(item) if item.sidecar else None
        stage = "decode"
        with report.timed("decode", 1):
            min_side = max(p.min_side for p in preprocessors.values())
            decoded = decode(data, min_side=min_side)
            pixels = {role: preprocess(decoded.image) for role, preprocess in preprocessors.items()}
    except ItemError as exc:
        return FailureRecord.from_item(item, exc.stage, str(exc), retryable=exc.retryable)
    except Exception as exc:  # anything else one item can raise must not stop the run
        return FailureRecord.from_item(
            item, stage, f"{type(exc).__name__}: {exc}", retryable=stage == "fetch"
        )
    caption, warnings = item.caption, []
    if caption is None and sidecar_bytes is not None and item.sidecar is not None:
        parsed = parse_sidecar(sidecar_bytes, item.sidecar)
        caption = parsed.caption
        if parsed.warning:
            warnings.append(
                FailureRecord.from_item(item, "sidecar", parsed.warning, severity=SEVERITY_WARNING)
            )
    return LoadedItem(
        item=item,
        pixels=pixels,
        width=decoded.width,
        height=decoded.height,
        format=decoded.format,
        sha256=hashlib.sha256(data).hexdigest(),
        caption=caption,
        warnings=warnings,
    )


def load_batch(
    source: Source,
    items: Sequence[SourceItem],
    preprocessors: dict[str, Preprocessor],
    report: RunReport,
    pool: Executor | None = None,
) -> LoadedBatch:
    """Load a batch, spreading items over `pool` when one is given; keeps the items' order."""
    results = (
        pool.map(lambda it: load_item(source, it, preprocessors, report), items)
        if pool is not None
        else (load_item(source, it, preprocessors, report) for it in items)
    )
    loaded, failures = [], []
    for result in results:
        if isinstance(result, LoadedItem):
            loaded.append(result)
        else:
            failures.append(result)
    return LoadedBatch(loaded, failures)


def embed_batch(embedder: Embedder, batch: LoadedBatch, report: RunReport) -> EmbeddedBatch:
    """Embed a loaded batch's images and captions into rows of the images table."""
    failures = list(batch.failures)
    done_ids = [failure.id for failure in batch.failures]
    if not batch.items:
        return EmbeddedBatch(None, failures, done_ids)
    with report.timed("embed", len(batch.items)):
        image_vectors = embedder.embed_pixels(np.stack([loaded.pixels["embed"] for loaded in batch.items]))
        captioned = [i for i, loaded in enumerate(batch.items) if loaded.caption]
        text_vectors: list[np.ndarray | None] = [None] * len(batch.items)
        if captioned:
            encoded = embedder.embed_texts([batch.items[i].caption or "" for i in captioned])
            for row, i in enumerate(captioned):
                text_vectors[i] = encoded[row]
    rows = build_rows(batch.items, image_vectors, text_vectors, embedder.model_id)
    for loaded in batch.items:
        failures.extend(loaded.warnings)
        done_ids.append(loaded.item.id)
    return EmbeddedBatch(rows, failures, done_ids)


def build_rows(
    items: Sequence[LoadedItem],
    image_vectors: np.ndarray,
    text_vectors: Sequence[np.ndarray | None],
    model_id: str,
) -> pa.Table:
    """Arrow rows for the images table (schema order is applied by the store)."""
    now = datetime.now(UTC)
    dim = image_vectors.shape[1]
    vector_type = pa.list_(pa.float32(), dim)
    flat = np.ascontiguousarray(image_vectors, dtype=np.float32).reshape(-1)
    text_column = pa.array(
        [None if v is None else np.asarray(v, dtype=np.float32) for v in text_vectors], type=vector_type
    )
    return pa.table(
        {
            "id": [x.item.id for x in items],
            "uri": [x.item.uri for x in items],
            "key": [x.item.key for x in items],
            "size": pa.array([x.item.size for x in items], pa.int64()),
            "version": [x.item.version for x in items],
            "fingerprint": pa.array([x.item.fingerprint for x in items], pa.int64()),
            "modified_at": pa.array([x.item.modified_at for x in items], pa.timestamp("us", tz="UTC")),
            "sha256": [x.sha256 for x in items],
            "width": pa.array([x.width for x in items], pa.int32()),
            "height": pa.array([x.height for x in items], pa.int32()),
            "format": [x.format for x in items],
            "caption": [x.caption for x in items],
            "caption_source": [CAPTION_HUMAN if x.caption else None for x in items],
            "caption_model": pa.array([None] * len(items), pa.string()),
            "captioned_at": pa.array([None] * len(items), pa.timestamp("us", tz="UTC")),
            "image_embedding": pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim),
            "text_embedding": text_column,
            "embed_model": [model_id] * len(items),
            "indexed_at": pa.array([now] * len(items), pa.timestamp("us", tz="UTC")),
        }
    )


def write_batch(writer: Writer, batch: EmbeddedBatch, report: RunReport) -> None:
    with report.timed("write", len(batch.done_ids)):
        writer.write(batch.rows, batch.failures, batch.done_ids, INDEX_STAGES)
    report.indexed += 0 if batch.rows is None else batch.rows.num_rows


@dataclass
class Stages:
    """The stage callables `run_index` chains. The Prefect flow passes task-wrapped versions."""

    load: Callable[..., LoadedBatch] = load_batch
    embed: Callable[..., EmbeddedBatch] = embed_batch
    write: Callable[..., None] = write_batch


def chunks(
    entries: Iterable[SourceItem | FailureRecord], size: int
) -> Iterator[tuple[list[SourceItem], list[FailureRecord]]]:
    """Group planned work into batches of `size` items; scan failures ride along with the next batch."""
    items: list[SourceItem] = []
    failures: list[FailureRecord] = []
    for entry in entries:
        if isinstance(entry, FailureRecord):
            failures.append(entry)
        else:
            items.append(entry)
        if len(items) >= size or len(failures) >= size:
            yield items, failures
            items, failures = [], []
    if items or failures:
        yield items, failures


@dataclass(frozen=True)
class ProgressUpdate:
    """Items finished so far, of `planned` known to need work; `planned` is final once `listing_done`."""

    done: int
    planned: int
    scanned: int
    listing_done: bool


def run_index(
    source: Source,
    embedder: Embedder,
    store: IndexTarget,
    options: IndexOptions | None = None,
    *,
    stages: Stages | None = None,
    progress: Callable[[ProgressUpdate], None] | None = None,
    report: RunReport | None = None,
) -> RunReport:
    """Index `source` into `store` with `embedder`; returns the run's report.

    Safe to kill at any moment: finished batches are committed, and the next run skips them.
    """
    options = options or IndexOptions()
    stages = stages or Stages()
    report = report or RunReport(kind="index", source=source.describe(), table=store.describe())
    started = time.perf_counter()
    store.prepare(embedder.model_id, embedder.dim)
    with report.timed("list", 0):
        state = store.load_state()
    seen = SeenIds()
    planned = plan(
        _timed_scan(source, report),
        state,
        report,
        retry_failed=options.retry_failed,
        seen=seen.add if options.prune else None,
    )
    preprocessors: dict[str, Preprocessor] = {"embed": embedder.preprocess}
    done = 0
    with (
        ReadAhead(planned, options.lookahead) as listing,
        store.writer(flush_rows=options.write_rows, flush_seconds=options.write_seconds) as writer,
        ThreadPoolExecutor(options.workers, "mmindex-decode") as decode_pool,
        ThreadPoolExecutor(1, "mmindex-load") as loader,
    ):
        pool = decode_pool if options.workers > 1 else None
        pending: deque[tuple[Future[LoadedBatch], list[FailureRecord]]] = deque()
        batches = chunks(listing, options.batch_size)

        def submit_next() -> bool:
            batch = next(batches, None)
            if batch is None:
                return False
            items, scan_failures = batch
            context = contextvars.copy_context()  # so Prefect links task runs in this thread to the flow
            future = loader.submit(context.run, stages.load, source, items, preprocessors, report, pool)
            pending.append((future, scan_failures))
            return True

        while len(pending) < options.prefetch and submit_next():
            pass
        while pending:
            future, scan_failures = pending.popleft()
            loaded = future.result()
            submit_next()
            loaded.failures.extend(scan_failures)
            embedded = stages.embed(embedder, loaded, report)
            _count_failures(embedded, report)
            stages.write(writer, embedded, report)
            done += len(embedded.done_ids) - len(scan_failures)
            if progress is not None:
                progress(ProgressUpdate(done, report.new + report.changed, report.scanned, listing.finished))
    if options.prune:
        if report.failures_by_stage.get("scan") or _is_partial(source):
            report.notes.append(
                "prune skipped: the listing was filtered or had errors, so absence proves nothing"
            )
        else:
            with report.timed("write", 0):
                report.pruned = store.prune(source.root, seen)
    store.finish(report)
    report.seconds = time.perf_counter() - started
    return report


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


class IndexTarget(Protocol):
    """What `run_index` needs from a store."""

    def describe(self) -> str: ...

    def prepare(self, model_id: str, dim: int) -> None: ...

    def load_state(self) -> IndexedState: ...

    def writer(
        self, *, flush_rows: int, flush_seconds: float
    ) -> contextlib.AbstractContextManager[Writer]: ...

    def prune(self, root: str, seen: SeenIds) -> int: ...

    def finish(self, report: RunReport) -> None: ...
