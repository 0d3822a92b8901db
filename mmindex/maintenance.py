"""Table upkeep: compact fragments, fold unindexed rows into the vector and full-text indices (building
them if the table has outgrown exact search), and delete table versions older than a retention.

Every append or upsert adds a fragment and a version; rows written after an index build are searched
by brute force until they are folded in. Maintenance keeps both costs flat. The retention is explicit
(default seven days of time travel): a version younger than it is never deleted.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from mmindex.errors import ConfigError
from mmindex.store import Store

DEFAULT_RETENTION = timedelta(days=7)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks", "": "days"}


def parse_retention(text: str) -> timedelta:
    """'7d', '12h', '30m', '90s', '2w' or a plain number of days."""
    match = _DURATION.match(text.lower())
    if not match:
        raise ConfigError(f"retention {text!r} is not a duration like 7d, 12h, 30m or 90s")
    return timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})


@dataclass
class TableHealth:
    rows: int
    versions: int
    oldest_version: datetime | None
    fragments: int
    unindexed_rows: dict[str, int]

    @classmethod
    def of(cls, table: Any) -> TableHealth:
        versions = table.list_versions()
        timestamps = [v["timestamp"] for v in versions]
        unindexed = {
            index.name: int(getattr(table.index_stats(index.name), "num_unindexed_rows", 0) or 0)
            for index in table.list_indices()
        }
        return cls(
            rows=table.count_rows(),
            versions=len(versions),
            oldest_version=min(timestamps) if timestamps else None,
            fragments=int(table.stats()["fragment_stats"]["num_fragments"]),
            unindexed_rows=unindexed,
        )


@dataclass
class MaintenanceReport:
    table: str
    retention: timedelta
    before: dict[str, TableHealth] = field(default_factory=dict)
    after: dict[str, TableHealth] = field(default_factory=dict)
    actions: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        def health(values: dict[str, TableHealth]) -> dict[str, Any]:
            return {
                name: {**asdict(h), "oldest_version": _iso(h.oldest_version)} for name, h in values.items()
            }

        return {
            "table": self.table,
            "retention_seconds": self.retention.total_seconds(),
            "before": health(self.before),
            "after": health(self.after),
            "actions": list(self.actions),
            "seconds": round(self.seconds, 3),
            "summary": self.summary_lines(),
        }

    def summary_lines(self) -> list[str]:
        lines = [f"maintenance {self.table} (keep {_human(self.retention)} of versions)"]
        for name in self.after:
            b, a = self.before[name], self.after[name]
            unindexed = f"{sum(b.unindexed_rows.values())} -> {sum(a.unindexed_rows.values())}"
            lines.append(
                f"  {name}: rows {a.rows}, fragments {b.fragments} -> {a.fragments}, "
                f"versions {b.versions} -> {a.versions}, unindexed rows {unindexed}"
            )
        lines += [f"  {action}" for action in self.actions]
        lines.append(f"  {self.seconds:.1f} s")
        return lines

    def to_markdown(self) -> str:
        out = [
            f"# mmindex maintenance: {self.table}",
            "",
            f"Retention: versions younger than {_human(self.retention)} are kept.",
            "",
            "| table | rows | fragments | versions | oldest version | unindexed rows |",
            "|---|---:|---:|---:|---|---:|",
        ]
        for name in self.after:
            b, a = self.before[name], self.after[name]
            unindexed = f"{sum(b.unindexed_rows.values())} → {sum(a.unindexed_rows.values())}"
            out.append(
                f"| {name} | {a.rows} | {b.fragments} → {a.fragments} | {b.versions} → {a.versions} | "
                f"{_iso(a.oldest_version)} | {unindexed} |"
            )
        out += ["", *[f"- {action}" for action in self.actions], "", f"{self.seconds:.1f} s"]
        return "\n".join(out) + "\n"


def maintain(
    store: Store, retention: timedelta = DEFAULT_RETENTION, *, lock_timeout: float | None = None
) -> MaintenanceReport:
    """Compact, fold or build indices, and clean up versions older than `retention`, under the table's
    write lock (it waits for a running index or caption run to finish)."""
    if retention < timedelta(0):
        raise ConfigError("retention cannot be negative")
    report = MaintenanceReport(store.describe(), retention)
    started = time.perf_counter()
    with store.lock(lock_timeout):
        tables = {"images": store.table}
        if store.failures is not None:
            tables["failures"] = store.failures
        report.before = {name: TableHealth.of(table) for name, table in tables.items()}
        report.actions += store.refresh_indices(cleanup_older_than=retention)
        if store.failures is not None:
            store.failures.optimize(cleanup_older_than=retention)
        report.after = {name: TableHealth.of(table) for name, table in tables.items()}
    report.seconds = time.perf_counter() - started
    return report


def _iso(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)  # lance reports naive UTC times
    return aware.astimezone(UTC).isoformat(timespec="seconds")


def _human(span: timedelta) -> str:
    seconds = span.total_seconds()
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} seconds"
