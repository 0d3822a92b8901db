"""Table upkeep: build the indices a table has grown into, compact fragments, fold unindexed rows into
the vector and full-text indices, and delete table versions older than a retention; and table stats.

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

from mmindex.config import RETENTION
from mmindex.errors import ConfigError
from mmindex.report import RunReport
from mmindex.schema import CAPTION_SOURCES, SEVERITY_ERROR
from mmindex.store.generations import generations
from mmindex.store.reader import Store
from mmindex.store.sql import sql_string
from mmindex.store.staging import sweep_staging
from mmindex.store.writer import TableWriter, open_writer

ROWS_PER_PARTITION = 4096
# maintenance holds the write lock, so no run is writing; the hour spares a killed driver's last workers
STAGING_AGE = timedelta(hours=1)
REBUILD_GROWTH = 2.0  # rebuild a vector index once its column holds this many times its training rows
NOT_RECORDED = "not recorded"
META_TRAINED_ROWS = "mmindex.index_trained_rows"  # field metadata of an indexed vector column
META_PARTITIONS = "mmindex.index_partitions"

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
        unindexed = {index.name: unindexed_rows(table, index.name) for index in table.list_indices()}
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
    store: Store, retention: timedelta | None = None, *, lock_timeout: float | None = None
) -> MaintenanceReport:
    """Compact, fold or build indices, and clean up versions older than `retention`, under the table's
    write lock (it waits for a running index or caption run to finish). Default retention: 7 days."""
    retention = parse_retention(RETENTION) if retention is None else retention
    if retention < timedelta(0):
        raise ConfigError("retention cannot be negative")
    report = MaintenanceReport(store.describe(), retention)
    started = time.perf_counter()
    with open_writer(store, lock_timeout) as writer:
        tables = {"images": writer.images, "failures": writer.failures}
        report.actions += writer.migrations
        report.before = {name: TableHealth.of(table) for name, table in tables.items()}
        report.actions += refresh_indices(writer, cleanup_older_than=retention)
        writer.failures.optimize(cleanup_older_than=retention)
        swept = sweep_staging(store.db_uri, store.table_name, store.storage_options or None, STAGING_AGE)
        if swept:
            report.actions.append(f"removed the staging data of {swept} interrupted sharded runs")
        report.after = {name: TableHealth.of(table) for name, table in tables.items()}
    report.seconds = time.perf_counter() - started
    return report


def finish_run(writer: TableWriter, report: RunReport, *, embed_mode: str | None = None) -> None:
    """After a run that wrote something: refresh indices so new rows are searched well, and say so
    when rows embedded in `embed_mode` now sit beside rows embedded in another mode."""
    report.notes.extend(writer.migrations)
    if not writer.wrote:
        return
    if embed_mode:
        other_modes = f"embed_mode IS NOT NULL AND embed_mode != {sql_string(embed_mode)}"
        others = writer.images.count_rows(other_modes)
        if others:
            report.notes.append(
                f"this run embedded in {embed_mode}, but {others} rows of the table were embedded in another "
                "mode (mmindex stats lists them); their vectors differ slightly: pass --precision to match"
            )
    with report.timed("write", 0):
        report.notes.extend(refresh_indices(writer))


def refresh_indices(writer: TableWriter, *, cleanup_older_than: timedelta | None = None) -> list[str]:
    """Create the indices a table of this size benefits from, rebuild a vector index the table has
    outgrown, and fold new rows into the others. Returns what it did.

    Full-text index on captions: always (FTS needs it). Vector indices (`vector_index_config`) from
    the store's `vector_index_min_rows` rows on; smaller tables are searched exactly. Folding rows into
    an IVF index does not retrain its partitions, so an index is rebuilt once its column holds
    REBUILD_GROWTH times the rows it was trained on.
    """
    from lancedb.index import FTS

    table = writer.images
    actions: list[str] = []
    existing = {index.columns[0]: index for index in table.list_indices()}
    rows = table.count_rows()
    if "caption" not in existing and table.count_rows("caption IS NOT NULL") > 0:
        table.create_index("caption", config=FTS())
        actions.append("created full-text index on caption")
    for column in vector_columns(table.schema):
        filled = rows if column == "image_embedding" else table.count_rows(f"{column} IS NOT NULL")
        if filled < writer.store.vector_index_min_rows:
            continue
        trained = trained_rows(table.schema, column)
        if column in existing and (trained is None or filled < REBUILD_GROWTH * trained):
            continue
        config = vector_index_config(filled)
        # a rebuild replaces the column's own index by name: after `mmindex activate` renamed the columns,
        # the column's index may carry another column's default name
        name = existing[column].name if column in existing else None
        table.create_index(column, config=config, replace=True, name=name)
        table.update_field_metadata(
            {
                "path": column,
                "metadata": {META_TRAINED_ROWS: str(filled), META_PARTITIONS: str(config.num_partitions)},
            }
        )
        verb = "rebuilt" if column in existing else "created"
        actions.append(f"{verb} IVF_RQ index on {column} ({filled} rows, {config.num_partitions} partitions)")
    fragments = table.stats()["fragment_stats"]["num_fragments"]
    unindexed = sum(unindexed_rows(table, index.name) for index in table.list_indices())
    if fragments > 16 or unindexed > 0 or cleanup_older_than is not None:
        table.optimize(cleanup_older_than=cleanup_older_than)
        actions.append(f"optimized: compacted {fragments} fragments, folded {unindexed} unindexed rows")
    return actions


def vector_columns(schema: Any) -> list[str]:
    """The vector columns of every generation that is not retired, the active one's first."""
    return [
        column
        for generation in generations(schema)
        if generation.state != "retired"
        for column in (generation.image_column, generation.text_column)
        if column in schema.names
    ]


def vector_index_config(rows: int) -> Any:
    """IVF_RQ (RaBitQ, 4 bits per dimension), cosine, about ROWS_PER_PARTITION rows per partition.

    Chosen by bench/ann.py on clustered 512-d data (bench/results/ann.md): with the query settings in
    `mmindex.query.search` (nprobes from the partition count, refine 10) it keeps recall@10 >= 0.95
    for image-like, text-like (out-of-distribution) and 1-5% filtered queries at 100k and 1M rows, and
    builds 1M rows in under 1.5 minutes on 2 cores; IVF_HNSW_SQ took 2.6 minutes for 100k rows and
    over 6 for 1M, and 1-bit RaBitQ lost text-like queries (0.83)."""
    from lancedb.index import IvfRq

    return IvfRq(distance_type="cosine", num_partitions=max(1, rows // ROWS_PER_PARTITION), num_bits=4)


def trained_rows(schema: Any, column: str) -> int | None:
    """The rows a column's vector index was trained on, if mmindex built it."""
    return _field_number(schema, column, META_TRAINED_ROWS)


def trained_partitions(schema: Any, column: str) -> int | None:
    """The IVF partitions of a column's vector index, if mmindex built it."""
    return _field_number(schema, column, META_PARTITIONS)


def _field_number(schema: Any, column: str, key: str) -> int | None:
    if column not in schema.names:
        return None
    raw = (schema.field(column).metadata or {}).get(key.encode())
    try:
        return int(raw) if raw else None
    except ValueError:
        return None


def unindexed_rows(table: Any, index_name: str) -> int:
    """Rows written since the index was last built or folded (searched by brute force until then)."""
    return int(getattr(table.index_stats(index_name), "num_unindexed_rows", 0) or 0)


def table_stats(store: Store) -> dict[str, Any]:
    """What `mmindex stats` shows: rows, failures, captions by source, model, version, indices."""
    info = store.info()
    table = store.lancedb_table()
    by_source = {source: table.count_rows(f"caption_source = '{source}'") for source in CAPTION_SOURCES}
    by_source["none"] = table.count_rows("caption IS NULL")
    failures = store.lancedb_table(failures=True)
    errors = failures.count_rows(f"severity = '{SEVERITY_ERROR}'") if failures is not None else 0
    warnings = failures.count_rows() - errors if failures is not None else 0
    indices = [
        {
            "name": index.name,
            "type": index.index_type,
            "column": index.columns[0],
            "unindexed_rows": unindexed_rows(table, index.name),
        }
        for index in table.list_indices()
    ]
    return {
        "db": store.db_uri,
        "table": store.table_name,
        "rows": info.rows,
        "failures": errors,
        "warnings": warnings,
        "captions": by_source,
        "embed_model": info.model,
        "embed_modes": embed_modes(table),
        "dim": info.dim,
        "version": table.version,
        "fragments": table.stats()["fragment_stats"]["num_fragments"],
        "indices": indices,
    }


def embed_modes(table: Any) -> dict[str, int]:
    """Rows per embedding mode (`fp32 on cpu`: 1200, ...), most first; `not recorded` for rows written
    before schema v4 recorded it."""
    import pyarrow.compute as pc

    if "embed_mode" not in table.schema.names:
        return {NOT_RECORDED: table.count_rows()}
    counts: dict[str, int] = {}
    for batch in table.search().select(["embed_mode"]).limit(None).to_batches(65536):
        for entry in pc.value_counts(batch.column(0)).to_pylist():
            mode = entry["values"] or NOT_RECORDED
            counts[mode] = counts.get(mode, 0) + entry["counts"]
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


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
