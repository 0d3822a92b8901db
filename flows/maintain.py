"""The `maintain` flow: compaction, index upkeep and version cleanup of one table, with an artifact."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from mmindex.config import Settings
from mmindex.flows.reporting import artifact_key
from mmindex.store import upkeep as maintenance
from mmindex.store.reader import Store

maintain_table = task(name="maintain-table", retries=1, retry_delay_seconds=30.0, cache_policy=NO_CACHE)(
    maintenance.maintain
)


@flow(name="mmindex-maintain")
def maintain(
    db: str | None = None, table: str | None = None, retention: str = "7d", lock_timeout: float | None = None
) -> dict[str, Any]:
    """Compact the table, fold new rows into (or build) its indices, and delete versions older than
    `retention` (e.g. "7d", "12h"; default seven days of time travel)."""
    settings = Settings.from_env(db=db, table=table)
    keep = maintenance.parse_retention(retention)
    store = Store.from_settings(settings)
    _ = store.lancedb_table()  # a missing table is a configuration error, before any slot is taken
    report = maintain_table(store, keep, lock_timeout=lock_timeout)
    for line in report.summary_lines():
        get_run_logger().info(line)
    create_markdown_artifact(
        report.to_markdown(),
        key=artifact_key(f"maintain-{store.describe()}"),
        description="mmindex maintenance",
    )
    return report.to_dict()


def maintain_flow_for_cli(**params: Any) -> dict[str, Any]:
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        result: dict[str, Any] = maintain(**params)
        return result
