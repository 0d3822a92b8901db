"""The `thumbnails` flow: make the previews a table's rows lack, resumably, with an artifact.
Parameters are ThumbnailJob's fields (mmindex.jobs.spec)."""

from __future__ import annotations

from typing import Any

from mmindex.flows.jobs import job_flow, run_in_flow
from mmindex.jobs.spec import ThumbnailJob


@job_flow(ThumbnailJob, name="mmindex-thumbnails")
def thumbnails(job: ThumbnailJob, progress_bar: bool = False) -> dict[str, Any]:
    """Make the missing thumbnails of a table (rows indexed before thumbnails or without them)."""
    return run_in_flow(job, progress_bar=progress_bar)
