"""The `maintain` flow: compaction, index upkeep and version cleanup of one table, with an artifact.
Parameters are MaintainJob's fields (mmindex.jobs.spec)."""

from __future__ import annotations

from typing import Any

from mmindex.flows.jobs import job_flow, run_in_flow
from mmindex.jobs.spec import MaintainJob


@job_flow(MaintainJob, name="mmindex-maintain")
def maintain(job: MaintainJob, progress_bar: bool = False) -> dict[str, Any]:
    """Compact the table, fold new rows into its indices and delete versions older than `retention`."""
    return run_in_flow(job, progress_bar=progress_bar)
