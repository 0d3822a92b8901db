"""Planning: which listed items need work, given what the table already holds, and their grouping
into the chunks that each step call processes."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from mmindex.ingest.sources.base import NOT_UTF8, ScanProblem, SourceItem, is_utf8, printable
from mmindex.report import RunReport
from mmindex.schema import FailureRecord
from mmindex.store.state import IndexedState


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
            report.listing_incomplete |= entry.hides_items
            if state.known_scan_problem(entry.id, entry.error):
                report.known_failures += 1  # already on record: nothing new to write
                continue
            report.record_failure(entry.key, "scan", entry.error)
            yield FailureRecord.of(entry.id, entry.uri, entry.key, "scan", entry.error, retryable=True)
            continue
        if not all(is_utf8(text) for text in (entry.uri, entry.key, entry.caption or "")):
            problem = ScanProblem(printable(entry.uri), printable(entry.key), NOT_UTF8)
            report.record_failure(problem.key, "scan", problem.error)
            yield FailureRecord.of(problem.id, problem.uri, problem.key, "scan", problem.error)
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
