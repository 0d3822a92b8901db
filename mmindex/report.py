"""What a run did: counts, per-stage seconds and throughput, rendered as JSON, text and markdown."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Container, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from mmindex.errors import RunStopped, first_line

log = logging.getLogger("mmindex")

UNEXPECTED_MIN_ITEMS = 64  # judge only after this many items ...
UNEXPECTED_SHARE = 0.5  # ... whether more than this share failed with one unexpected error
UNEXPECTED_LOGGED = 3  # tracebacks logged per kind of unexpected error

UNEXPECTED = "unexpected"  # how the failure text of an error not known to describe the item begins


@dataclass(frozen=True)
class ProgressUpdate:
    """Items finished so far, of `planned` known to need work; `planned` is final once `listing_done`."""

    done: int
    planned: int
    scanned: int
    listing_done: bool
    note: str = ""  # shown beside the rate, e.g. a training run's epoch and loss


class UnexpectedErrors:
    """Stops a run (RunStopped) once most items failed the same unexpected way: a bug or a broken
    setup, which a row per item would bury. It judges chunks as the run consumes them, and only first
    attempts: an item that failed before (`retried`) and fails again proves nothing new, and the
    retries of many old failures must not stop a run that also brings new items."""

    def __init__(self, retried: Container[str] = frozenset()) -> None:
        self.retried = retried
        self.attempts = 0
        self.counts: Counter[str] = Counter()
        self.example: dict[str, str] = {}

    def judge(self, done_ids: Iterable[str], failures: Iterable[FailureLike]) -> None:
        self.attempts += sum(1 for row_id in done_ids if row_id not in self.retried)
        for failure in failures:
            if failure.id in self.retried or not failure.error.startswith(UNEXPECTED + " "):
                continue
            kind = failure.error[len(UNEXPECTED) + 1 :].split(":", 1)[0]
            signature = f"{failure.stage}: {kind}"
            self.counts[signature] += 1
            self.example.setdefault(signature, f"{failure.key}: {failure.error}")
        if self.attempts < UNEXPECTED_MIN_ITEMS or not self.counts:
            return
        signature, count = self.counts.most_common(1)[0]
        if count > UNEXPECTED_SHARE * self.attempts:
            stage, kind = signature.split(": ", 1)
            raise RunStopped(
                f"stopped: {count} of {self.attempts} items failed at {stage} with the same unexpected "
                f"{kind} (first: {self.example[signature]}); this looks like a bug or a broken "
                "environment, not bad files. The log has the traceback; finished chunks are saved."
            )


class FailureLike(Protocol):
    """What the guard reads of a failure record."""

    @property
    def id(self) -> str: ...

    @property
    def key(self) -> str: ...

    @property
    def stage(self) -> str: ...

    @property
    def error(self) -> str: ...


STAGES = ("start", "list", "generate", "read", "decode", "thumbnail", "caption", "embed", "write", "commit")


@dataclass
class FailureExample:
    key: str
    stage: str
    error: str


@dataclass
class RunReport:
    """Counters of one index or caption run. Stage seconds are summed over threads, so stages that
    overlap can add up to more than the wall time; `items_per_second` uses the wall time."""

    kind: str = "index"
    source: str = ""
    table: str = ""
    models: str = ""  # how the run's models ran, e.g. "toy-clip on cpu in bf16"
    scanned: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    indexed: int = 0
    failed: int = 0
    known_failures: int = 0
    warnings: int = 0
    pruned: int = 0
    captioned: int = 0
    caption_failed: int = 0
    thumbnails: int = 0  # thumbnails made by a thumbnail backfill
    generated: int = 0  # images made by a text-to-image model
    generation: dict[str, Any] = field(default_factory=dict)  # a reembed run's generation, as it ends
    listing_incomplete: bool = False
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    stage_items: dict[str, int] = field(default_factory=dict)
    failures_by_stage: Counter[str] = field(default_factory=Counter)
    failure_examples: list[FailureExample] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    counters: Counter[str] = field(default_factory=Counter)
    unexpected: Counter[str] = field(default_factory=Counter)  # "stage: ErrorType" -> items
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add_time(self, stage: str, seconds: float, items: int) -> None:
        with self._lock:
            self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + seconds
            self.stage_items[stage] = self.stage_items.get(stage, 0) + items

    @contextmanager
    def timed(self, stage: str, items: int) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add_time(stage, time.perf_counter() - start, items)

    def record_failure(self, key: str, stage: str, error: str, *, fatal: bool = True) -> None:
        with self._lock:
            if stage == "caption" and self.kind == "index":
                self.caption_failed += 1  # the image is indexed; only its caption is missing
            elif fatal:
                self.failed += 1
            else:
                self.warnings += 1
            self.failures_by_stage[stage] += 1
            if len(self.failure_examples) < 500:
                self.failure_examples.append(FailureExample(key, stage, error))

    def record_unexpected(self, key: str, stage: str, exc: BaseException) -> str:
        """Count an error that is not known to describe the item (a bug, a broken environment, a
        passing fault); the first few are logged with their traceback. Returns the failure text."""
        text = f"{UNEXPECTED} {type(exc).__name__}: {first_line(exc)} (retried by the next run)"
        signature = f"{stage}: {type(exc).__name__}"
        with self._lock:
            self.unexpected[signature] += 1
            seen = self.unexpected[signature]
        if seen <= UNEXPECTED_LOGGED:
            log.warning("%s failed at %s with an unexpected error", key, stage, exc_info=exc)
        return text

    def notes_count(self, what: str) -> None:
        """Count an occurrence of `what`; shown as "what: N" among the notes."""
        with self._lock:
            self.counters[what] += 1

    def absorb_captions(self, backfill: RunReport) -> None:
        """Fold a caption backfill run into this index report."""
        self.captioned += backfill.captioned
        self.caption_failed += backfill.failed
        for stage, seconds in backfill.stage_seconds.items():
            self.add_time(stage, seconds, backfill.stage_items.get(stage, 0))
        self.failures_by_stage.update(backfill.failures_by_stage)
        self.failure_examples.extend(backfill.failure_examples[: max(0, 500 - len(self.failure_examples))])

    @property
    def items_per_second(self) -> float:
        done = {
            "index": self.indexed,
            "reembed": self.indexed,
            "thumbnails": self.thumbnails,
            "generate": self.generated,
        }.get(self.kind, self.captioned)
        return done / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The `--json` object: integer counts first, then timings."""
        return {
            "scanned": self.scanned,
            "indexed": self.indexed,
            "unchanged": self.unchanged,
            "failed": self.failed,
            "new": self.new,
            "changed": self.changed,
            "known_failures": self.known_failures,
            "warnings": self.warnings,
            "pruned": self.pruned,
            "captioned": self.captioned,
            "caption_failed": self.caption_failed,
            "thumbnails": self.thumbnails,
            "generated": self.generated,
            "unexpected_failures": sum(self.unexpected.values()),
            "seconds": round(self.seconds, 3),
            "items_per_second": round(self.items_per_second, 2),
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
            "stage_items": dict(self.stage_items),
            "failures_by_stage": dict(self.failures_by_stage),
            "source": self.source,
            "table": self.table,
            "kind": self.kind,
            "models": self.models,
            "notes": list(self.notes) + [f"{what}: {n}" for what, n in sorted(self.counters.items())],
            **({"generation": dict(self.generation)} if self.generation else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunReport:
        """Rebuild a report from `to_dict()` output (e.g. a flow's return value)."""
        report = cls()
        for name, value in data.items():
            if name in cls.__dataclass_fields__ and isinstance(value, (int, float, str)):
                setattr(report, name, value)
        report.stage_seconds = dict(data.get("stage_seconds", {}))
        report.stage_items = dict(data.get("stage_items", {}))
        report.failures_by_stage = Counter(data.get("failures_by_stage", {}))
        report.notes = list(data.get("notes", []))
        report.generation = dict(data.get("generation", {}))
        return report

    def stage_rows(self) -> list[tuple[str, float, int, float]]:
        rows = []
        for stage in STAGES:
            if stage in self.stage_seconds:
                seconds, items = self.stage_seconds[stage], self.stage_items.get(stage, 0)
                rows.append((stage, seconds, items, items / seconds if seconds > 0 else 0.0))
        return rows

    def summary_lines(self) -> list[str]:
        """A short human summary for the terminal."""
        if self.kind == "caption":
            lines = [
                f"caption {self.table}",
                f"  rows {self.scanned}  captioned {self.captioned}  failed {self.failed}",
            ]
        elif self.kind == "generate":
            lines = [
                f"generate -> {self.source} -> {self.table}",
                f"  images {self.scanned}  generated {self.generated}  already there {self.unchanged}"
                f"  failed {self.failed}  indexed {self.indexed}",
            ]
        elif self.kind == "reembed":
            built = self.generation
            lines = [
                f"reembed {self.table}: generation {built.get('name')} ({built.get('model')}, "
                f"{built.get('dim')}-d, {built.get('mode')}), state {built.get('state')}",
                f"  rows embedded {built.get('rows_embedded')} of {built.get('rows')}  in this run "
                f"{self.indexed}  failed {self.failed}",
            ]
        elif self.kind == "thumbnails":
            lines = [
                f"thumbnails {self.table}",
                f"  rows {self.scanned}  thumbnails made {self.thumbnails}  failed {self.failed}",
            ]
        else:
            lines = [
                f"{self.kind} {self.source} -> {self.table}",
                f"  scanned {self.scanned}  new {self.new}  changed {self.changed}"
                f"  unchanged {self.unchanged}  failed {self.failed}"
                + (f"  pruned {self.pruned}" if self.pruned else ""),
            ]
        if self.models:
            lines.append(f"  models: {self.models}")
        if self.known_failures:
            lines.append(
                f"  skipped {self.known_failures} known failures (unchanged; --retry-failed retries)"
            )
        if self.kind == "index" and (self.captioned or self.caption_failed):
            lines.append(f"  captioned {self.captioned}, caption failures {self.caption_failed}")
        if self.warnings:
            lines.append(f"  warnings {self.warnings} (see `mmindex failures`)")
        lines.append(f"  {self.seconds:.1f} s, {self.items_per_second:.1f} items/s")
        for stage, seconds, items, rate in self.stage_rows():
            lines.append(f"    {stage:<8}{seconds:8.2f} s  {items:7d} items  {rate:9.1f}/s")
        lines.extend(f"  note: {note}" for note in self.notes)
        lines.extend(f"  {what}: {count}" for what, count in sorted(self.counters.items()))
        return lines

    def to_markdown(self) -> str:
        """The run summary artifact."""
        out = [
            f"# mmindex {self.kind}: {self.table}",
            "",
            f"Source: `{self.source}`",
            "",
            *([f"Models: {self.models}", ""] if self.models else []),
            *([f"Thumbnails made: {self.thumbnails}", ""] if self.kind == "thumbnails" else []),
            "| scanned | new | changed | unchanged | failed | known failures | pruned | captioned | s |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {self.scanned} | {self.new} | {self.changed} | {self.unchanged} | {self.failed} "
            f"| {self.known_failures} | {self.pruned} | {self.captioned} | {self.seconds:.1f} |",
            "",
            "| stage | seconds | items | items/s |",
            "|---|---:|---:|---:|",
        ]
        out += [f"| {s} | {sec:.2f} | {n} | {rate:.1f} |" for s, sec, n, rate in self.stage_rows()]
        if self.failures_by_stage:
            out += ["", "## Failures by stage", "", "| stage | count |", "|---|---:|"]
            out += [f"| {stage} | {count} |" for stage, count in sorted(self.failures_by_stage.items())]
            out += ["", "| key | stage | error |", "|---|---|---|"]
            out += [
                f"| `{e.key}` | {e.stage} | {e.error.replace('|', '/')} |" for e in self.failure_examples[:10]
            ]
        if self.notes:
            out += ["", *[f"- {note}" for note in self.notes]]
        return "\n".join(out) + "\n"
