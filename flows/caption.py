"""The `caption_missing` flow: generate the captions a table lacks, in resumable chunks. Parameters are
CaptionJob's fields (mmindex.jobs.spec)."""

from __future__ import annotations

from typing import Any

from mmindex.flows.jobs import job_flow, run_in_flow
from mmindex.jobs.spec import CaptionJob


@job_flow(CaptionJob, name="mmindex-caption-missing")
def caption_missing(job: CaptionJob, progress_bar: bool = False) -> dict[str, Any]:
    """Caption rows that have no caption; human captions are never touched."""
    return run_in_flow(job, progress_bar=progress_bar)
